#!/usr/bin/env python3
"""Opens a `ferrite explain --html` page in headless Chromium with the
network shut off (every host resolves nowhere, every request goes to a
dead proxy) and checks that it is whole by itself: it loads, the console
shows no errors, the page fetched no resource at all, and it holds its
diagrams and one attention map per block. Saves a screenshot of the whole
page.

    python scripts/check_explain_page.py --page explain.html --blocks 2 --shot shot.png

Needs Debian's `chromium` and `chromium-driver` and `pip install selenium`;
`tests/explain.rs` runs it where they are installed (CI installs them).
"""
import argparse
import os
import pathlib
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser():
    opts = webdriver.ChromeOptions()
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(path):
            opts.binary_location = path
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # No network: names resolve nowhere and requests go to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver) if os.path.exists(driver) else None, options=opts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--blocks", type=int, required=True, help="transformer blocks the page shows")
    ap.add_argument("--shot", required=True)
    a = ap.parse_args()
    d = browser()
    d.set_page_load_timeout(60)
    try:
        d.get(pathlib.Path(a.page).resolve().as_uri())
        assert d.execute_script("return document.readyState") == "complete", "the page did not finish loading"
        errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        fetched = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched == [], f"the page fetched resources: {fetched}"
        assert d.find_element(By.TAG_NAME, "h1").text, "no heading"
        # Two diagrams and an attention map per block, each drawn (non-zero size).
        svgs = d.find_elements(By.TAG_NAME, "svg")
        drawn = [s for s in svgs if s.size["width"] > 0 and s.size["height"] > 0]
        assert len(drawn) >= 2 + a.blocks, f"{len(drawn)} drawn SVGs of {len(svgs)}, expected {2 + a.blocks}"
        cells = d.find_elements(By.CSS_SELECTOR, "svg rect title")
        assert cells, "no attention cells"
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1200, min(max(height + 40, 900), 12000))
        d.save_screenshot(a.shot)
        print(f"ok: {len(drawn)} SVGs, {len(cells)} attention cells, nothing fetched, no console errors; {a.shot}")
    finally:
        d.quit()


if __name__ == "__main__":
    sys.exit(main())
