//! The `flownexus` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    // A CLI piped into `head` should end quietly, not panic on EPIPE.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    flownexus::cli::main()
}
