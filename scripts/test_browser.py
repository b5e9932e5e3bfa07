#!/usr/bin/env python3
"""A real browser against a running `ferrite serve`: headless Chromium via
Selenium (Debian's `chromium` and `chromium-driver`, `pip install selenium`).

    python scripts/test_browser.py --url http://127.0.0.1:PORT --shots DIR [--runs]

Chat page (`/`): types a message, sends it, watches the answer's text
change several times while it streams, and checks the final answer equals
what `/v1/chat/completions` gives for the same settings and seed. With
`--runs`, the dashboard (`/runs`) while a training run writes: the loss
curve must gain points. Screenshots go to DIR. Bounded waits everywhere.
`tests/serve.rs` runs it where Chromium, its driver and Selenium are
installed (CI installs them).
"""
import argparse
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser():
    opts = webdriver.ChromeOptions()
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(path):
            opts.binary_location = path
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        opts.add_argument(arg)
    driver = "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver) if os.path.exists(driver) else None, options=opts)


def wait(what, check, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def chat(d, url, shots):
    d.get(url + "/")
    wait("the model list", lambda: d.find_elements(By.CSS_SELECTOR, "#model option"))
    settings = {"temperature": "0.8", "top_k": "40", "top_p": "0.95", "max_tokens": "120", "seed": "7"}
    for k, v in settings.items():
        el = d.find_element(By.ID, k)
        el.clear()
        el.send_keys(v)
    # Count every change to the answer's text while it streams.
    d.execute_script("""
        window.__changes = [];
        new MutationObserver((records) => {
          for (const r of records) {
            const msg = r.target.nodeType === 3 ? r.target.parentElement : r.target;
            if (msg && msg.classList && msg.classList.contains('assistant')) window.__changes.push(msg.textContent.length);
          }
        }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
    """)
    question = "the lord"
    d.find_element(By.ID, "input").send_keys(question)
    d.find_element(By.ID, "send").click()
    answer = wait("the answer to finish", lambda: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]"))[0]
    d.save_screenshot(os.path.join(shots, "chat.png"))
    text = d.execute_script("return arguments[0].textContent", answer)
    changes = d.execute_script("return window.__changes")
    assert len([c for c in changes if c > 0]) >= 2, f"the answer did not stream: {changes}"
    body = {
        "model": d.find_element(By.ID, "model").get_attribute("value"),
        "messages": [{"role": "user", "content": question}],
        "temperature": 0.8, "top_k": 40, "top_p": 0.95, "max_tokens": 120, "seed": 7,
    }
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    api = json.loads(urllib.request.urlopen(req, timeout=60).read())["choices"][0]["message"]["content"]
    assert text == api, f"page {text!r} != API {api!r}"
    stats = d.find_element(By.ID, "last-stats").text
    assert "tokens/s" in stats, stats
    # A phone-sized screen.
    d.set_window_size(390, 800)
    d.save_screenshot(os.path.join(shots, "chat-phone.png"))
    d.set_window_size(1100, 800)
    print(f"chat page: streamed in {len(changes)} changes, {stats}, equal to the API's answer")


def runs(d, url, shots):
    d.get(url + "/runs")
    # Read in the page: the charts are redrawn (replaced) every poll.
    points = lambda: d.execute_script(
        "return Math.max(0, ...[...document.querySelectorAll(\"svg[data-label='loss']\")].map(s => +(s.dataset.points || 0)))")
    first = wait("a loss curve", points)
    later = wait("the curve to grow", lambda: points() > first and points())
    d.save_screenshot(os.path.join(shots, "runs.png"))
    print(f"runs page: loss curve grew from {first} to {later} points while training")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--shots", required=True)
    ap.add_argument("--runs", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.shots, exist_ok=True)
    d = browser()
    try:
        chat(d, a.url, a.shots)
        if a.runs:
            runs(d, a.url, a.shots)
    finally:
        d.quit()
    print("browser: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
