//! Who is handed a finished request at its end, besides the ledger and the metrics behind the
//! queue: each [`Consumer`] registered on [`super::Outcomes`], in order. A new one (a cache fill,
//! a trace exporter) is one registration, not a field threaded through the request path.
//!
//! Consumers run on the request path, once per request: each takes its part of the [`Ended`]
//! request and returns without waiting (a channel's `try_send`, an atomic).

use tokio::sync::mpsc;

use super::{Ended, Sample};

/// Something that wants every finished request.
pub trait Consumer: Send + Sync {
    /// Takes what it needs of `ended`; never waits.
    fn finished(&self, ended: &mut Ended);
}

/// The limits' side of a request's end: what admission reserved is settled with what the request
/// really used. Where the upstream reported no usage the hold stays with the outcome and is
/// settled once its tokens are counted ([`super::Outcome::count`]); an outcome dropped before
/// either counts its reservations in full.
pub struct Settlement;

impl Consumer for Settlement {
    fn finished(&self, ended: &mut Ended) {
        let outcome = &mut ended.outcome;
        if outcome.hold.is_empty() {
            return;
        }
        if let Some(used) = outcome.used() {
            std::mem::take(&mut outcome.hold).settle(used);
        }
    }
}

/// Hands requests begun with `Start::sampled` that ended answered to the shadow checks. A shadow
/// check never holds a request up: a sample that finds the queue full is skipped.
pub struct Sampling(pub mpsc::Sender<Sample>);

impl Consumer for Sampling {
    fn finished(&self, ended: &mut Ended) {
        let Some(sample) = ended.sample.take() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(sample)) = self.0.try_send(sample) {
            crate::metrics::shadow_skipped(&sample.route.name, "queue_full");
        }
    }
}

/// Keeps the answers of requests that end with a fill (a route's cache missed and the answer was
/// whole): the cache's part of a request's end.
pub struct CacheFill;

impl Consumer for CacheFill {
    fn finished(&self, ended: &mut Ended) {
        if let Some(fill) = ended.fill.take() {
            fill.keep();
        }
    }
}
