#![forbid(unsafe_code)]

/// mimalloc: allocation and release were about a fifth of the server's CPU under glibc's
/// allocator at 32 concurrent exchanges (issue 18's flame graph, `_int_malloc` and `free`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ephemera::cli::main()
}
