mod cli;
mod memory;

// The request path allocates many small, short-lived buffers across threads; mimalloc's per-thread
// free lists cut the time spent in malloc/free markedly against glibc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.serves() {
        memory::tune_for_serving();
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
