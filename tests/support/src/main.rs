//! `tierwise-fake`: the shared fake upstream as a process, for the Python SDK tests and the
//! benchmark. Prints `listening on http://ADDR` on stdout once it accepts connections.
//!
//! `--no-record` stops keeping requests (the benchmark); `--chunk-delay-ms N` paces stream chunks;
//! `--reply-words N` sets the answer's length.

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let listen: SocketAddr = std::env::args()
        .skip_while(|arg| arg != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .expect("--listen takes IP:PORT");
    let flag = |name: &str| std::env::args().skip_while(|arg| arg != name).nth(1);
    let fake = tierwise_fake::FakeUpstream::start_on(listen).await;
    if std::env::args().any(|arg| arg == "--no-record") {
        fake.set_recording(false);
    }
    fake.update(|behavior| {
        if let Some(ms) = flag("--chunk-delay-ms").and_then(|v| v.parse().ok()) {
            behavior.chunk_delay_ms = ms;
        }
        if let Some(words) = flag("--reply-words").and_then(|v| v.parse::<usize>().ok()) {
            behavior.reply = vec!["token"; words].join(" ");
        }
    });
    println!("listening on http://{}", fake.addr);
    let _ = tokio::signal::ctrl_c().await;
    fake.stop().await;
}
