//! The allocator's one setting that matters for a long-running server: how long pages it has
//! freed stay committed to the process.
//!
//! mimalloc (v3) keeps a freed page for 1 s before returning it to the OS. Under load that is
//! memory a server holds for nothing: at 256 concurrent streams, 10 ms (v2's default) cut
//! tierwise's RSS from ~43 to ~37 MB at no measurable CPU cost, where returning pages at once
//! (0) cost ~12% CPU on non-streamed requests (docs/benchmarks.md). mimalloc reads its options
//! from the environment as the process loads, before `main`, and setting one from Rust takes
//! `unsafe` (an FFI call or `set_var`), which this crate forbids. So `serve` executes itself
//! once more with the option set; a value the operator gave is kept.

use std::os::unix::process::CommandExt;

const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";
const PURGE_DELAY_MS: &str = "10";

/// Replaces this process with itself, the option set, unless it is set already. Returns only if
/// that cannot be done (the binary is gone from disk after an upgrade, say): the gateway then
/// serves with mimalloc's defaults.
pub fn tune_for_serving() {
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(binary) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(binary);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let _ = command.args(args).env(PURGE_DELAY, PURGE_DELAY_MS).exec();
}
