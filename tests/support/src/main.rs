//! `tierwise-fake`: the shared fake upstream as a process, for the Python SDK tests and the
//! benchmark. Prints `listening on http://ADDR` on stdout once it accepts connections; its
//! behaviour is changed over HTTP (`POST /_fake/behavior`, `GET /_fake/requests`).

use std::net::SocketAddr;

use clap::Parser;

/// A fake OpenAI-compatible upstream with injectable faults, for tierwise's tests and benchmark.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Do not keep the requests received (the benchmark, where keeping them is the bottleneck).
    #[arg(long)]
    no_record: bool,
    /// Pause between stream chunks, in milliseconds.
    #[arg(long)]
    chunk_delay_ms: Option<u64>,
    /// Length of the answer in words.
    #[arg(long)]
    reply_words: Option<usize>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fake = tierwise_fake::FakeUpstream::start_on(args.listen).await;
    fake.set_recording(!args.no_record);
    fake.update(|behavior| {
        if let Some(ms) = args.chunk_delay_ms {
            behavior.chunk_delay_ms = ms;
        }
        if let Some(words) = args.reply_words {
            behavior.reply = vec!["token"; words].join(" ");
        }
    });
    println!("listening on http://{}", fake.addr);
    let _ = tokio::signal::ctrl_c().await;
    fake.stop().await;
}
