//! Time per engine operation, for `ferrite bench --profile`: where a
//! training step spends its time. Backends time their own operations with
//! [`time`] (a GPU backend would use events); while profiling is off it
//! costs one relaxed atomic load per operation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ON: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<String, (Duration, u64)>>> = Mutex::new(None);

/// Starts (or stops) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        *TOTALS.lock().expect("profile lock") = Some(HashMap::new());
    }
    ON.store(on, Ordering::Relaxed);
}

/// Runs `f`, adding its time to operation `name()` while profiling is on.
#[inline]
pub fn time<R>(name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed();
    let mut totals = TOTALS.lock().expect("profile lock");
    let e = totals.get_or_insert_with(HashMap::new).entry(name()).or_default();
    e.0 += dt;
    e.1 += 1;
    r
}

/// `(operation, total time, calls)` since profiling started, slowest first.
pub fn report() -> Vec<(String, Duration, u64)> {
    let totals = TOTALS.lock().expect("profile lock");
    let mut v: Vec<_> = totals.iter().flatten().map(|(k, v)| (k.clone(), v.0, v.1)).collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.1));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_on() {
        time(|| "ignored".into(), || ());
        enable(true);
        let x = time(|| "op".into(), || 41 + 1);
        time(|| "op".into(), || ());
        enable(false);
        time(|| "op".into(), || ());
        assert_eq!(x, 42);
        let r = report();
        assert_eq!(r.iter().map(|r| (r.0.as_str(), r.2)).collect::<Vec<_>>(), vec![("op", 2)]);
    }
}
