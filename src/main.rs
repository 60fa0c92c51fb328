#![forbid(unsafe_code)]

/// mimalloc instead of glibc malloc: many small, short-lived allocations on
/// several threads (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
