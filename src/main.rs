#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ephemera::cli::main()
}
