fn main() {
    // Die quietly when the reader of our output goes away (`ferrite sample |
    // head`), like other Unix tools, instead of panicking on a failed print.
    // SAFETY: setting a signal disposition to the default before any threads exist.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A closed stdout would make the output vanish with exit status 0. Say so instead.
    #[cfg(unix)]
    if stdout_was_closed() {
        eprintln!("error: stdout is closed; redirect it to a file or to /dev/null");
        std::process::exit(1);
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

/// Whether we were started with stdout closed. Rust's runtime reopens a
/// closed standard descriptor as /dev/null, read-write, before `main`; a
/// shell's `> /dev/null` opens it write-only. So: closed, or /dev/null
/// opened read-write.
#[cfg(unix)]
fn stdout_was_closed() -> bool {
    // SAFETY: fcntl and fstat only query descriptors; stat only reads a path.
    unsafe {
        let flags = libc::fcntl(1, libc::F_GETFL);
        if flags == -1 {
            return true;
        }
        if flags & libc::O_ACCMODE != libc::O_RDWR {
            return false;
        }
        let (mut out, mut null) = (std::mem::zeroed::<libc::stat>(), std::mem::zeroed::<libc::stat>());
        libc::fstat(1, &mut out) == 0
            && libc::stat(c"/dev/null".as_ptr(), &mut null) == 0
            && (out.st_mode & libc::S_IFMT) == libc::S_IFCHR
            && out.st_rdev == null.st_rdev
    }
}
