//! Running a third-party parser on bytes from outside: some libraries panic
//! on malformed input instead of returning an error (the fuzzer found the
//! parquet crate doing so on damaged files). [`no_panic`] turns such a
//! panic into an error, without the panic message on stderr.

use anyhow::{anyhow, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it becomes an error saying `what` is malformed.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                default(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(anyhow!("{what} is malformed ({why})"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error() {
        let r: anyhow::Result<()> = super::no_panic("x.parquet", || panic!("index out of bounds"));
        assert_eq!(r.unwrap_err().to_string(), "x.parquet is malformed (index out of bounds)");
        assert_eq!(super::no_panic("y", || Ok(3)).unwrap(), 3);
    }
}
