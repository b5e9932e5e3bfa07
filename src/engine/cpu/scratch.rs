//! Per-thread scratch memory for kernels that need temporaries per task
//! (attention's `T x T` blocks): allocated once per thread and reused, so a
//! training step makes no allocations for them (at block size 256 each one
//! would otherwise be an mmap/munmap pair).

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch (contents unspecified).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a task inside a task): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}
