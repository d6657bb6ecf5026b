//! `tierwise-fake`: the shared fake upstream as a process, for the Python SDK tests and the
//! benchmark. Prints `listening on http://ADDR` on stdout once it accepts connections.

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let listen: SocketAddr = std::env::args()
        .skip_while(|arg| arg != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string())
        .parse()
        .expect("--listen takes IP:PORT");
    let fake = tierwise_fake::FakeUpstream::start_on(listen).await;
    println!("listening on http://{}", fake.addr);
    let _ = tokio::signal::ctrl_c().await;
    fake.stop().await;
}
