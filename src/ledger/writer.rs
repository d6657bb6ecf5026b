//! The background writer. Requests hand their records to a bounded queue and go on; this task owns
//! the database, writes whatever has queued up as one batch (gathered for a few milliseconds, and
//! growing by themselves while a write is in flight), retries a failed batch until it lands — loudly, in the log and in
//! `tierwise_ledger_write_errors_total` — and at shutdown drains the queue before it returns. A full
//! queue makes requests wait (backpressure) rather than drop records. Streams whose upstream
//! reported no usage reach it uncounted; it counts and prices them on the blocking pool first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::record::{Pricing, RequestRecord};
use super::store::Store;
use crate::config::RequestLog;

const MAX_BATCH: usize = 1000;
/// How long the writer lets records gather unless a full batch is already waiting. Under light load
/// this turns one transaction per request into one per 10 ms (at one request at a time that halved
/// the gateway's CPU per request); under heavy load it makes batches full, so each row costs fewer
/// statements and fewer hand-offs to the database thread. Records wait, requests do not; a backlog
/// of full batches is written back to back. Not longer: at 50 ms each write was a burst of ~400
/// rows on SQLite's thread, which held a core the requests needed (p99 at c=1: 596 µs at 50 ms,
/// 323 µs at 10 ms); not shorter: 5 ms and 2 ms cost more CPU and did not shorten the tail.
const LINGER: Duration = Duration::from_millis(10);

/// The task and the means to stop it.
pub struct LedgerWriter {
    task: JoinHandle<()>,
    close: tokio::sync::oneshot::Sender<()>,
}

impl LedgerWriter {
    pub fn spawn(
        store: Store,
        queue: usize,
        log: Option<RequestLog>,
        pricing: Arc<Pricing>,
    ) -> (mpsc::Sender<RequestRecord>, LedgerWriter) {
        let (sender, receiver) = mpsc::channel(queue);
        let (close, closed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(store, receiver, closed, log, pricing));
        (sender, LedgerWriter { task, close })
    }

    /// Stops taking records, writes everything queued, and returns once it is stored (or after
    /// `deadline`, saying how much could not be written).
    pub async fn finish(self, deadline: Duration) {
        let _ = self.close.send(());
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::error!(
                "the ledger could not write its queued records within {} ms of shutdown; they are lost",
                deadline.as_millis()
            );
            task.abort();
        }
    }
}

async fn run(
    store: Store,
    mut receiver: mpsc::Receiver<RequestRecord>,
    mut closed: tokio::sync::oneshot::Receiver<()>,
    log: Option<RequestLog>,
    pricing: Arc<Pricing>,
) {
    let mut log = RequestLogWriter::open(log).await;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    loop {
        let first = if closing {
            receiver.recv().await
        } else {
            tokio::select! {
                record = receiver.recv() => record,
                _ = &mut closed => {
                    closing = true;
                    // Refuse new records; the ones already queued are still received.
                    receiver.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        drain(&mut receiver, &mut batch);
        if !closing && batch.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            drain(&mut receiver, &mut batch);
        }
        metrics::gauge!("tierwise_ledger_queue_depth").set(receiver.len() as f64);
        if batch.iter().any(|record| record.to_count.is_some()) {
            batch = count_tokens(batch, pricing.clone()).await;
        }
        write(&store, &batch).await;
        account(&batch);
        log.write(&batch).await;
        batch.clear();
    }
    log.flush().await;
    store.close().await;
}

/// Moves whatever is queued into `batch`, up to `MAX_BATCH`, without waiting.
fn drain(receiver: &mut mpsc::Receiver<RequestRecord>, batch: &mut Vec<RequestRecord>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(record) => batch.push(record),
            Err(_) => break,
        }
    }
}

/// Counts and prices the records left uncounted, on the blocking pool: a tokenizer's first load
/// takes ~90 ms, which the runtime this task shares should not wait out.
async fn count_tokens(mut batch: Vec<RequestRecord>, pricing: Arc<Pricing>) -> Vec<RequestRecord> {
    let counted = tokio::task::spawn_blocking(move || {
        for record in &mut batch {
            record.count(&pricing);
        }
        batch
    })
    .await;
    match counted {
        Ok(batch) => batch,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Writes one batch, retrying until it lands: a record the ledger accepted is never dropped.
async fn write(store: &Store, batch: &[RequestRecord]) {
    let mut wait = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        match store.insert(batch).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(
                        failures,
                        records = batch.len(),
                        "ledger write succeeded after retrying"
                    );
                }
                metrics::counter!("tierwise_ledger_records_written_total")
                    .increment(batch.len() as u64);
                return;
            }
            Err(err) => {
                failures += 1;
                metrics::counter!("tierwise_ledger_write_errors_total").increment(1);
                tracing::error!(
                    records = batch.len(),
                    attempt = failures,
                    "LEDGER WRITE FAILED, retrying in {} ms; requests wait once the queue is full: {err}",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Request metrics, counted here rather than on the request path, and once per label set per batch.
fn account(batch: &[RequestRecord]) {
    let mut requests: HashMap<(&str, &str, u16), u64> = HashMap::new();
    let mut fallbacks: HashMap<&str, u64> = HashMap::new();
    let mut cost: HashMap<(&str, &str), u64> = HashMap::new();
    let mut durations: HashMap<&str, Vec<f64>> = HashMap::new();
    for record in batch {
        let route = record.route.as_deref().unwrap_or("-");
        let tier = record.tier.as_deref().unwrap_or("-");
        *requests.entry((route, tier, record.status)).or_default() += 1;
        if record.fallback.is_some() {
            *fallbacks.entry(route).or_default() += 1;
        }
        if let Some(amount) = record.cost {
            *cost.entry((route, tier)).or_default() += amount.0.max(0) as u64;
        }
        durations
            .entry(route)
            .or_default()
            .push(record.latency_us as f64 / 1e6);
    }
    for (route, seconds) in durations {
        let histogram =
            metrics::histogram!("tierwise_request_duration_seconds", "route" => route.to_string());
        for value in seconds {
            histogram.record(value);
        }
    }
    for ((route, tier, status), count) in requests {
        metrics::counter!("tierwise_requests_total", "route" => route.to_string(), "tier" => tier.to_string(), "status" => status.to_string())
            .increment(count);
    }
    for (route, count) in fallbacks {
        metrics::counter!("tierwise_fallbacks_total", "route" => route.to_string())
            .increment(count);
    }
    for ((route, tier), amount) in cost {
        metrics::counter!("tierwise_cost_picodollars_total", "route" => route.to_string(), "tier" => tier.to_string())
            .increment(amount);
    }
}

struct RequestLogWriter {
    out: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
}

impl RequestLogWriter {
    async fn open(log: Option<RequestLog>) -> RequestLogWriter {
        let out: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match log {
            None => None,
            Some(RequestLog::Stderr) => Some(Box::new(tokio::io::stderr())),
            Some(RequestLog::File(path)) => {
                match tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                {
                    Ok(file) => Some(Box::new(file)),
                    Err(err) => {
                        tracing::error!(
                            "cannot open the request log {}: {err}; request lines are not written",
                            path.display()
                        );
                        None
                    }
                }
            }
        };
        RequestLogWriter { out }
    }

    async fn write(&mut self, batch: &[RequestRecord]) {
        let Some(out) = &mut self.out else { return };
        let mut lines = Vec::with_capacity(batch.len() * 300);
        for record in batch {
            let line = serde_json::json!({
                "ts_ms": record.ts_ms,
                "request_id": record.id,
                "route": record.route,
                "tier": record.tier,
                "model": record.model,
                "status": record.status,
                "tokens_in": record.tokens.input,
                "tokens_out": record.tokens.output,
                "tokens_estimated": record.tokens.estimated,
                "duration_ms": record.latency_us as f64 / 1000.0,
                "cost_usd": record.cost.map(|c| c.to_string()),
                "fallback": record.fallback,
            });
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        if let Err(err) = out.write_all(&lines).await {
            tracing::warn!("cannot write the request log: {err}");
        }
    }

    async fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = out.flush().await;
        }
    }
}
