//! The background side of a request's end. Outcomes queue on a bounded channel; this task takes
//! whatever has queued up as one batch (gathered for a few milliseconds, and growing by itself
//! while a write is in flight), counts the tokens of streams whose upstream gave no usage, writes
//! the batch to the ledger — retrying a failed write until it lands, loudly, in the log and in
//! `tierwise_ledger_write_errors_total` — records the request metrics, and at shutdown drains the
//! queue before it returns. A full queue makes requests wait (backpressure) rather than drop
//! records.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Outcome;
use crate::ledger::{AttemptRow, LedgerWriter, Pricing, RequestRow};

const MAX_BATCH: usize = 1000;
/// How long outcomes gather unless a full batch is already waiting. Under light load this turns
/// one transaction per request into one per 10 ms (at one request at a time that halved the
/// gateway's CPU per request); under heavy load it makes batches full, so each row costs fewer
/// statements and fewer hand-offs to the database thread. Outcomes wait, requests do not; a
/// backlog of full batches is written back to back. Not longer: at 50 ms each write was a burst of
/// ~400 rows on SQLite's thread, which held a core the requests needed (p99 at c=1: 596 µs at
/// 50 ms, 323 µs at 10 ms); not shorter: 5 ms and 2 ms cost more CPU and did not shorten the tail.
const LINGER: Duration = Duration::from_millis(10);

/// The task and the means to stop it.
pub struct Dispatcher {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl Dispatcher {
    pub fn spawn(
        writer: LedgerWriter,
        queue: usize,
        pricing: Arc<Pricing>,
    ) -> (mpsc::Sender<Outcome>, Dispatcher) {
        let (sender, receiver) = mpsc::channel(queue);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run(writer, receiver, closed, pricing));
        (sender, Dispatcher { task, close })
    }

    /// Stops taking outcomes, writes everything queued, and returns once it is stored (or after
    /// `deadline`, saying so).
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
    mut writer: LedgerWriter,
    mut receiver: mpsc::Receiver<Outcome>,
    mut closed: oneshot::Receiver<()>,
    pricing: Arc<Pricing>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    loop {
        let first = if closing {
            receiver.recv().await
        } else {
            tokio::select! {
                outcome = receiver.recv() => outcome,
                _ = &mut closed => {
                    closing = true;
                    // Refuse new outcomes; the ones already queued are still received.
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
        crate::metrics::ledger_queue_depth(receiver.len());
        if batch.iter().any(|outcome| outcome.to_count.is_some()) {
            batch = count_tokens(batch, pricing.clone()).await;
        }
        let requests: Vec<&RequestRow> = batch.iter().map(|o| &o.request).collect();
        let attempts: Vec<&AttemptRow> = batch.iter().flat_map(|o| &o.attempts).collect();
        store_batch(&writer, &requests, &attempts).await;
        writer.log(&requests).await;
        crate::metrics::requests_finished(&requests);
        batch.clear();
    }
    writer.close().await;
}

/// Writes one batch, retrying until it lands: an outcome the queue accepted is never dropped.
async fn store_batch(writer: &LedgerWriter, requests: &[&RequestRow], attempts: &[&AttemptRow]) {
    let mut wait = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        match writer.insert(requests, attempts).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(
                        failures,
                        records = requests.len(),
                        "ledger write succeeded after retrying"
                    );
                }
                crate::metrics::ledger_written(requests.len());
                return;
            }
            Err(err) => {
                failures += 1;
                crate::metrics::ledger_write_failed();
                tracing::error!(
                    records = requests.len(),
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

/// Moves whatever is queued into `batch`, up to `MAX_BATCH`, without waiting.
fn drain(receiver: &mut mpsc::Receiver<Outcome>, batch: &mut Vec<Outcome>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(outcome) => batch.push(outcome),
            Err(_) => break,
        }
    }
}

/// Counts and prices the outcomes left uncounted, on the blocking pool: a tokenizer's first load
/// takes ~90 ms, which the runtime this task shares should not wait out.
async fn count_tokens(mut batch: Vec<Outcome>, pricing: Arc<Pricing>) -> Vec<Outcome> {
    let counted = tokio::task::spawn_blocking(move || {
        for outcome in &mut batch {
            outcome.count(&pricing);
        }
        batch
    })
    .await;
    match counted {
        Ok(batch) => batch,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}
