fn main() {
    // Die quietly when the reader of our output goes away (`ferrite sample |
    // head`), like other Unix tools, instead of panicking on a failed print.
    // SAFETY: setting a signal disposition to the default before any threads exist.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A closed stdout would make the output vanish with exit status 0. Say so instead.
    if stdout_was_closed() {
        eprintln!("error: stdout is closed; redirect it to a file or to /dev/null");
        std::process::exit(1);
    }
    // Run everything on a rayon worker thread: a parallel kernel launched
    // from outside the pool must hand its work across threads and wait on a
    // lock (~15 us here), which would dominate the many small kernels of a
    // small model's training step. Inside the pool a fork-join costs almost
    // nothing. RAYON_NUM_THREADS still chooses the thread count.
    // The global pool, so threads of our own (the server's batch threads)
    // reach the same workers, each flushing subnormals (see flush_subnormals).
    let pool =
        rayon::ThreadPoolBuilder::new().start_handler(|_| ferrite::engine::fastmath::flush_subnormals()).build_global();
    let result = match pool {
        // Called from outside the pool, `scope` runs its closure on a worker.
        Ok(()) => rayon::scope(|_| ferrite::cli::run()),
        Err(_) => ferrite::cli::run(),
    };
    if let Err(e) = result {
        // One line: the error and its causes, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Whether stdout was closed when the process started. Rust's runtime
/// reopens a closed standard descriptor as /dev/null before `main`, so the
/// descriptor is looked at earlier, from a constructor the loader runs
/// (`.init_array`). Elsewhere than Linux there is no check.
static STDOUT_CLOSED_AT_START: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LOOK_AT_STDOUT: extern "C" fn() = look_at_stdout;

#[cfg(target_os = "linux")]
extern "C" fn look_at_stdout() {
    // SAFETY: F_GETFD only queries the descriptor.
    let closed = unsafe { libc::fcntl(1, libc::F_GETFD) } == -1;
    STDOUT_CLOSED_AT_START.store(closed, std::sync::atomic::Ordering::Relaxed);
}

fn stdout_was_closed() -> bool {
    STDOUT_CLOSED_AT_START.load(std::sync::atomic::Ordering::Relaxed)
}
