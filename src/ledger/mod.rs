//! The ledger: the durable record of every request and attempt — tokens, cost, baseline cost,
//! latency, outcome. The request path builds a [`RequestRecord`] and hands it to [`Ledger::record`];
//! a background [`LedgerWriter`] owns the database. Prices and cost live in [`price`] and
//! [`record::Pricing`]; token estimates for upstreams without usage in [`tokens`].

pub mod price;
pub mod record;
pub mod store;
pub mod tokens;
mod writer;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

pub use price::Picodollars;
pub use record::{AttemptRecord, Pricing, RequestRecord, ToCount, Tokens};
pub use store::{LedgerError, Store, StoredRequest};
pub use writer::LedgerWriter;

use crate::route::chain::Attempt;
use crate::route::request::Endpoint;

/// The request path's handle on the ledger: cheap to clone, never touches the database.
#[derive(Clone)]
pub struct Ledger {
    sender: mpsc::Sender<RequestRecord>,
    pub pricing: Arc<Pricing>,
    pub store_content: bool,
}

impl Ledger {
    pub fn new(
        sender: mpsc::Sender<RequestRecord>,
        pricing: Arc<Pricing>,
        store_content: bool,
    ) -> Ledger {
        Ledger {
            sender,
            pricing,
            store_content,
        }
    }

    /// Queues a record; waits only while the queue is full (backpressure).
    pub async fn record(&self, record: RequestRecord) {
        if self.sender.send(record).await.is_err() {
            tracing::error!("the ledger writer has stopped; a request record was lost");
        }
    }

    /// Queues a record from code that cannot wait (a stream dropped by its client).
    pub fn record_detached(&self, record: RequestRecord) {
        let Err(mpsc::error::TrySendError::Full(record)) = self.sender.try_send(record) else {
            return;
        };
        // A full queue: wait for room on a task, if a runtime is still there to run one.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let ledger = self.clone();
                runtime.spawn(async move { ledger.record(record).await });
            }
            Err(_) => tracing::error!(
                request_id = %record.id,
                "the ledger queue is full and the runtime is stopping; a request record was lost"
            ),
        }
    }
}

/// What is known of a request when it starts, completed into a record when it ends.
#[derive(Debug, Clone)]
pub struct Draft {
    pub id: String,
    pub ts_ms: i64,
    pub started: Instant,
    pub endpoint: Endpoint,
    pub route: Option<String>,
    pub stream: bool,
    pub client_key: Option<String>,
    /// The request body, kept only with `ledger.store_content = true`.
    pub prompt: Option<String>,
}

impl Draft {
    pub fn new(id: String, endpoint: Endpoint, stream: bool) -> Draft {
        Draft {
            id,
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            started: Instant::now(),
            endpoint,
            route: None,
            stream,
            client_key: None,
            prompt: None,
        }
    }

    /// A record of this request with nothing answered yet: the fields every outcome shares.
    pub fn record(&self, status: u16, attempts: &[Attempt]) -> RequestRecord {
        RequestRecord {
            id: self.id.clone(),
            ts_ms: self.ts_ms,
            endpoint: match self.endpoint {
                Endpoint::ChatCompletions => "chat.completions",
                Endpoint::Embeddings => "embeddings",
            },
            route: self.route.clone(),
            tier: None,
            provider: None,
            model: None,
            status,
            error_kind: None,
            fallback: crate::route::chain::fallback_path(attempts),
            stream: self.stream,
            tokens: Tokens::default(),
            latency_us: self.started.elapsed().as_micros() as i64,
            ttfb_us: None,
            cost: None,
            baseline: None,
            local: false,
            client_key: self.client_key.clone(),
            contract: None,
            prompt: self.prompt.clone(),
            answer: None,
            to_count: None,
            attempts: if served_first_try(attempts) {
                Vec::new()
            } else {
                attempts.iter().map(attempt_record).collect()
            },
        }
    }
}

/// One tier answered at the first try: the request's own row (tier, provider, model, latency)
/// says all there is, so no attempt rows are kept. That is nearly every request, and the attempt
/// rows were a third of the ledger's cost per request (docs/benchmarks.md).
fn served_first_try(attempts: &[Attempt]) -> bool {
    matches!(attempts, [only] if only.error.is_none())
}

fn attempt_record(attempt: &Attempt) -> AttemptRecord {
    AttemptRecord {
        tier: attempt.tier.name.clone(),
        provider: attempt.tier.provider.name.clone(),
        model: attempt.tier.model.clone(),
        outcome: attempt
            .error
            .as_ref()
            .map_or_else(|| "ok".to_string(), |e| e.reason()),
        latency_us: attempt.latency.as_micros() as i64,
    }
}
