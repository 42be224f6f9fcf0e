//! The `flownexus` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    flownexus::cli::main()
}
