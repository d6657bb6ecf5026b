//! Who is handed a finished request at its end. Two kinds of consumer, each a list in order:
//!
//! - a [`Consumer`], registered on [`super::Outcomes`], runs on the request path, once per request:
//!   it takes its part of the [`Ended`] request and returns without waiting (a channel's
//!   `try_send`, an atomic) — the limits' [`Settlement`], shadow [`Sampling`], the [`CacheFill`];
//! - a [`Recorder`] runs in the background task behind the queue ([`super::dispatch`]) and takes
//!   the outcomes in batches once their tokens are counted, where it may wait a moment — the
//!   ledger ([`super::ledger::Ledger`]), then the [`Metrics`].
//!
//! A new consumer (a trace exporter, a limit) is one registration, not a field threaded through
//! the request path.

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Ended, Outcome, Sample};

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

/// Traces, where they are exported: the request's trace queued for the OTLP exporter.
impl Consumer for crate::traces::Traces {
    fn finished(&self, ended: &mut Ended) {
        if let Some(finished) = ended.trace.take() {
            self.queue(finished, &ended.outcome.request);
        }
    }
}

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

/// Something that wants every finished request once its tokens are counted: off the request path,
/// in batches, in the background task. It may wait (a database write), but never long: the queue
/// behind it waits too.
pub trait Recorder: Send {
    /// Takes a batch of outcomes, in the order they ended (near enough: the late queue's first).
    fn record<'a>(&'a mut self, batch: &'a [Outcome]) -> BoxFuture<'a, ()>;

    /// Called about once a second whatever the traffic.
    fn tick(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// At shutdown, after the last batch.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The request series of `/metrics`, recorded a batch at a time once each row is whole (a stream
/// without usage has its tokens counted by then).
pub struct Metrics;

impl Recorder for Metrics {
    fn record<'a>(&'a mut self, batch: &'a [Outcome]) -> BoxFuture<'a, ()> {
        let finished: Vec<crate::metrics::Finished<'_>> = batch
            .iter()
            .map(|outcome| crate::metrics::Finished {
                row: &outcome.request,
                upstream_us: outcome.upstream_us,
            })
            .collect();
        crate::metrics::requests_finished(&finished);
        Box::pin(std::future::ready(()))
    }
}
