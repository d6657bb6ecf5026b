//! The background side of a request's end. Outcomes queue on a bounded channel; this task takes
//! whatever has queued up as one batch (gathered for a few milliseconds, and growing by itself
//! while a write is in flight), counts the tokens of streams whose upstream gave no usage, and
//! hands the batch to each [`Recorder`] in turn — the ledger ([`super::ledger`]), then the
//! metrics — and at shutdown drains the queue and closes them before it returns.
//!
//! A recorder never holds the queue up for long (the ledger spools what its database does not
//! take within its timeout), so the queue keeps draining, and requests wait only if the spool's
//! own disk is slower than the traffic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::ledger::Ledger;
use super::{Metrics, Outcome, Queue, Recorder};
use crate::ledger::{LedgerHealth, LedgerWriter, Spool};

const MAX_BATCH: usize = 1000;
/// How long outcomes gather unless a full batch is already waiting. Under light load this turns
/// one transaction per request into one per 10 ms (at one request at a time that halved the
/// gateway's CPU per request); under heavy load it makes batches full, so each row costs fewer
/// statements and fewer hand-offs to the database thread. Outcomes wait, requests do not; a
/// backlog of full batches is written back to back. Not longer: at 50 ms each write was a burst of
/// ~400 rows on SQLite's thread, which held a core the requests needed (p99 at c=1: 596 µs at
/// 50 ms, 323 µs at 10 ms); not shorter: 5 ms and 2 ms cost more CPU and did not shorten the tail.
const LINGER: Duration = Duration::from_millis(10);
/// How often each recorder is ticked whatever the traffic (the ledger asks whether its database
/// is back).
const TICK_EVERY: Duration = Duration::from_secs(1);

/// The task and the means to stop it.
pub struct Dispatcher {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl Dispatcher {
    /// Hands finished requests to the ledger, then the metrics.
    pub fn spawn(
        writer: LedgerWriter,
        spool: Spool,
        health: Arc<LedgerHealth>,
        queue: usize,
    ) -> (Queue, Dispatcher) {
        let recorders: Vec<Box<dyn Recorder>> = vec![
            Box::new(Ledger::new(writer, spool, health)),
            Box::new(Metrics),
        ];
        let (sender, receiver) = mpsc::channel(queue);
        let (late, late_receiver) = mpsc::unbounded_channel();
        let (close, closed) = oneshot::channel();
        let queues = Queues {
            receiver,
            late: late_receiver,
        };
        let task = tokio::spawn(run(recorders, queues, closed));
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

async fn run(
    mut recorders: Vec<Box<dyn Recorder>>,
    mut queues: Queues,
    mut closed: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    let mut ticks = tokio::time::interval(TICK_EVERY);
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
                _ = ticks.tick() => {
                    for recorder in &mut recorders {
                        recorder.tick().await;
                    }
                    // A second from the tick's end, not its start: a tick can take the ledger's
                    // write timeout (a replay into a blocked database), and the queue must drain
                    // between two.
                    ticks.reset();
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
        for recorder in &mut recorders {
            recorder.record(&batch).await;
        }
        batch.clear();
    }
    for recorder in recorders {
        recorder.close().await;
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
