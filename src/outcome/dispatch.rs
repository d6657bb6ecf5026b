//! The background side of a request's end. Outcomes queue on a bounded channel; this task takes
//! whatever has queued up as one batch (gathered for a few milliseconds, and growing by itself
//! while a write is in flight), counts the tokens of streams whose upstream gave no usage, writes
//! the batch to the ledger, records the request metrics, and at shutdown drains the queue before it
//! returns.
//!
//! The database never holds the queue up: a write that fails, or takes longer than
//! `WRITE_TIMEOUT`, puts the batch in the spool (loudly: log, `tierwise_ledger_write_errors_total`,
//! `/readyz`), and while the ledger is degraded every batch goes to the spool behind it; once a
//! second the task checks whether the database answers and, when it does, replays the spool in
//! order, each batch held to `WRITE_TIMEOUT` too (a database that answers its ping but blocks on
//! writes leaves the ledger degraded, not the task waiting). So the queue keeps draining, and requests wait only if the spool's own disk is slower
//! than the traffic. A request the database refuses for what is in it is set aside, and the rest
//! of its batch stored (see [`crate::ledger::LedgerWriter::insert`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::{Outcome, Queue};
use crate::ledger::{AttemptRow, LedgerHealth, LedgerWriter, ReplayError, RequestRow, Spool};

const MAX_BATCH: usize = 1000;
/// How long outcomes gather unless a full batch is already waiting. Under light load this turns
/// one transaction per request into one per 10 ms (at one request at a time that halved the
/// gateway's CPU per request); under heavy load it makes batches full, so each row costs fewer
/// statements and fewer hand-offs to the database thread. Outcomes wait, requests do not; a
/// backlog of full batches is written back to back. Not longer: at 50 ms each write was a burst of
/// ~400 rows on SQLite's thread, which held a core the requests needed (p99 at c=1: 596 µs at
/// 50 ms, 323 µs at 10 ms); not shorter: 5 ms and 2 ms cost more CPU and did not shorten the tail.
const LINGER: Duration = Duration::from_millis(10);
/// How long one write may take before its batch is spooled instead. A write that did land after
/// all is skipped when the spool is replayed (inserts skip rows already stored).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a degraded ledger asks whether its database is back.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The task and the means to stop it.
pub struct Dispatcher {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl Dispatcher {
    pub fn spawn(
        writer: LedgerWriter,
        spool: Spool,
        health: Arc<LedgerHealth>,
        queue: usize,
    ) -> (Queue, Dispatcher) {
        let (sender, receiver) = mpsc::channel(queue);
        let (late, late_receiver) = mpsc::unbounded_channel();
        let (close, closed) = oneshot::channel();
        let sink = Sink {
            writer,
            spool,
            health,
        };
        sink.publish();
        let queues = Queues {
            receiver,
            late: late_receiver,
        };
        let task = tokio::spawn(run(sink, queues, closed));
        (Queue { sender, late }, Dispatcher { task, close })
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

/// The queue and the late queue beside it (see [`Queue`]).
struct Queues {
    receiver: mpsc::Receiver<Outcome>,
    late: mpsc::UnboundedReceiver<Outcome>,
}

async fn run(mut sink: Sink, mut queues: Queues, mut closed: oneshot::Receiver<()>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    let mut next_retry = Instant::now();
    loop {
        let first = if closing {
            // Every serving thread has stopped: what is on the late queue is all there will be.
            match queues.receiver.recv().await {
                Some(outcome) => Some(outcome),
                None => queues.late.try_recv().ok(),
            }
        } else {
            tokio::select! {
                outcome = queues.receiver.recv() => outcome,
                Some(outcome) = queues.late.recv() => Some(outcome),
                _ = &mut closed => {
                    closing = true;
                    // Refuse new outcomes; the ones already queued are still received.
                    queues.receiver.close();
                    continue;
                }
                _ = tokio::time::sleep_until(next_retry), if sink.degraded() => {
                    sink.recover().await;
                    next_retry = Instant::now() + RETRY_EVERY;
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        drain(&mut queues, &mut batch);
        if !closing && batch.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            drain(&mut queues, &mut batch);
        }
        crate::metrics::ledger_queue_depth(queues.receiver.len());
        if batch.iter().any(|outcome| outcome.to_count.is_some()) {
            batch = count_tokens(batch).await;
        }
        let requests: Vec<&RequestRow> = batch.iter().map(|o| &o.request).collect();
        let attempts: Vec<&AttemptRow> = batch.iter().flat_map(|o| &o.attempts).collect();
        sink.store(&requests, &attempts).await;
        sink.writer.log(&requests).await;
        let finished: Vec<crate::metrics::Finished<'_>> = batch
            .iter()
            .map(|outcome| crate::metrics::Finished {
                row: &outcome.request,
                upstream_us: outcome.upstream_us,
            })
            .collect();
        crate::metrics::requests_finished(&finished);
        batch.clear();
    }
    if sink.degraded() {
        sink.recover().await;
    }
    if sink.degraded() {
        tracing::error!(
            records = sink.spool.records(),
            spool = %sink.spool.path().display(),
            "the ledger's database is still away at shutdown: the spooled records stay on disk and are written at the next start"
        );
    }
    sink.writer.close().await;
}

/// The ledger as the dispatcher sees it: the database, and the spool while it is away.
struct Sink {
    writer: LedgerWriter,
    spool: Spool,
    health: Arc<LedgerHealth>,
}

impl Sink {
    fn degraded(&self) -> bool {
        !self.spool.is_empty()
    }

    /// Stores one batch, or spools it: never waits longer than `WRITE_TIMEOUT` on the database.
    async fn store(&mut self, requests: &[&RequestRow], attempts: &[&AttemptRow]) {
        if !self.degraded() {
            let written = timeout(WRITE_TIMEOUT, self.writer.insert(requests, attempts)).await;
            let failure = match written {
                Ok(Ok(refused)) => {
                    crate::metrics::ledger_written(requests.len() - refused.len());
                    self.spool.set_aside(&refused).await;
                    crate::metrics::ledger_refused_total(self.health.refused());
                    return;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {} ms", WRITE_TIMEOUT.as_millis()),
            };
            crate::metrics::ledger_write_failed();
            tracing::error!(
                records = requests.len(),
                spool = %self.spool.path().display(),
                "LEDGER WRITE FAILED ({failure}); spooling until the database answers again"
            );
        }
        match self.spool.append(requests, attempts).await {
            Ok(true) => {}
            Ok(false) => {
                self.drop_batch(requests.len(), "the spool is full (ledger.spool_max_bytes)")
            }
            Err(err) => self.drop_batch(requests.len(), &format!("cannot write the spool: {err}")),
        }
        self.publish();
    }

    fn drop_batch(&self, records: usize, why: &str) {
        self.health.add_dropped(records as u64);
        crate::metrics::ledger_dropped(records);
        tracing::error!(
            records,
            spool = %self.spool.path().display(),
            "LEDGER RECORDS LOST: {why}"
        );
    }

    /// Replays the spool if the database answers again.
    async fn recover(&mut self) {
        if !matches!(timeout(WRITE_TIMEOUT, self.writer.ping()).await, Ok(Ok(()))) {
            return;
        }
        match self.spool.replay(&self.writer, WRITE_TIMEOUT).await {
            Ok(records) => {
                crate::metrics::ledger_written(records as usize);
                tracing::warn!(
                    records,
                    "the ledger's database answers again: every spooled record is written"
                );
            }
            Err(ReplayError::Store(err)) => {
                crate::metrics::ledger_write_failed();
                tracing::warn!("the ledger's database is still refusing writes: {err}");
            }
            Err(ReplayError::Timeout(limit)) => {
                crate::metrics::ledger_write_failed();
                tracing::warn!(
                    "the ledger's database answers but did not store a spooled batch within {} ms; still spooling",
                    limit.as_millis()
                );
            }
            Err(ReplayError::Io(err)) => tracing::error!(
                spool = %self.spool.path().display(),
                "cannot read the spool: {err}"
            ),
        }
        self.publish();
    }

    /// What `/readyz` and `/metrics` show.
    fn publish(&self) {
        self.health.set(self.degraded(), self.spool.records());
        crate::metrics::ledger_spool(self.degraded(), self.spool.records());
        crate::metrics::ledger_refused_total(self.health.refused());
    }
}

/// Moves whatever is queued into `batch`, up to `MAX_BATCH`, without waiting.
fn drain(queues: &mut Queues, batch: &mut Vec<Outcome>) {
    while batch.len() < MAX_BATCH {
        match queues.late.try_recv() {
            Ok(outcome) => batch.push(outcome),
            Err(_) => break,
        }
    }
    while batch.len() < MAX_BATCH {
        match queues.receiver.try_recv() {
            Ok(outcome) => batch.push(outcome),
            Err(_) => break,
        }
    }
}

/// Counts and prices the outcomes left uncounted, on the blocking pool: counting takes ~0.3 ms per
/// 1,000 tokens (and compiling a tokenizer's pattern ~4 ms the first time), which the runtime this
/// task shares should not wait out. A count's work is bounded whatever the text (see
/// [`crate::openai::tokens`]), so a batch, and a shutdown draining the queue, never waits long on
/// one.
async fn count_tokens(mut batch: Vec<Outcome>) -> Vec<Outcome> {
    let counted = tokio::task::spawn_blocking(move || {
        for outcome in &mut batch {
            outcome.count();
        }
        batch
    })
    .await;
    match counted {
        Ok(batch) => batch,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}
