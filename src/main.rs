fn main() {
    // Die quietly when the reader of our output goes away (`ferrite sample |
    // head`), like other Unix tools, instead of panicking on a failed print.
    // SAFETY: setting a signal disposition to the default before any threads exist.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Run everything on a rayon worker thread: a parallel kernel launched
    // from outside the pool must hand its work across threads and wait on a
    // lock (~15 us here), which would dominate the many small kernels of a
    // small model's training step. Inside the pool a fork-join costs almost
    // nothing. RAYON_NUM_THREADS still chooses the thread count.
    let pool = rayon::ThreadPoolBuilder::new().build();
    let result = match pool {
        Ok(pool) => pool.install(ferrite::cli::run),
        Err(_) => ferrite::cli::run(),
    };
    if let Err(e) = result {
        // One line: the error and its causes, outermost first.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
