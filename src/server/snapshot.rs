//! What the config decides, as one immutable value: the config itself, the route table, each
//! provider's health pool, the limits, how finished requests are priced, and the upstream clients.
//! A request loads the snapshot once where it starts and holds it to its end — a stream to its last
//! chunk — so it never sees half of one config and half of another. A reload builds a new snapshot
//! beside the old and swaps it whole ([`super::reload`]); what lives for the process (the ledger
//! writer, the metrics, the quality watches, the cache's memory) stays on [`super::App`], and what
//! a snapshot must share with the one before it (breakers, in-flight counts, learned windows,
//! rate-limit counters, budgets) it takes from it by provider, server, key and route name.

use std::sync::Arc;

use crate::config::Config;
use crate::health::Health;
use crate::limits::Limits;
use crate::outcome::Outcomes;
use crate::route::RouteTable;
use crate::upstream::{UpstreamError, Upstreams};

pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub health: Arc<Health>,
    /// Admission's limits; their counters and budgets outlive the snapshot.
    pub limits: Arc<Limits>,
    /// Where requests end up once finished, priced at this config's prices.
    pub outcomes: Outcomes,
    /// One set of upstream clients per serving thread (each thread keeps its own connections), and
    /// one more, the last, for the probes.
    upstreams: Vec<Arc<Upstreams>>,
    /// Which config this is, as the log and `/admin/api/config` name it.
    pub version: Version,
}

/// A config's place in the process's history of reloads.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1 for the config the process started with, one more for each reload that took.
    pub number: u64,
    /// The first 12 hex digits of the SHA-256 of the file as it was read, so that two replicas, or
    /// the file on disk, can be compared with what serves.
    pub hash: String,
    /// When it began to serve, seconds since the epoch.
    pub loaded_unix: u64,
}

impl Snapshot {
    /// `config` on `threads` serving threads: `base` outcomes (the process's queue and
    /// consumers) priced at its prices, with the cache fill where a route caches.
    pub fn new(
        config: Arc<Config>,
        health: Arc<Health>,
        limits: Arc<Limits>,
        base: &Outcomes,
        threads: usize,
        version: Version,
    ) -> Result<Snapshot, UpstreamError> {
        let pricing = Arc::new(crate::ledger::Pricing::new(&config));
        let outcomes = base.clone().with_pricing(pricing);
        let outcomes = if config.routes.iter().any(|route| route.cache.is_some()) {
            outcomes.with_consumer(Arc::new(crate::outcome::CacheFill))
        } else {
            outcomes
        };
        let upstreams = (0..=threads.max(1))
            .map(|_| Upstreams::new(&config).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Snapshot {
            routes: Arc::new(RouteTable::new(&config)),
            health,
            limits,
            outcomes,
            upstreams,
            version,
            config,
        })
    }

    /// The upstream clients of serving thread `thread`.
    pub fn upstreams(&self, thread: usize) -> &Arc<Upstreams> {
        &self.upstreams[thread.min(self.upstreams.len() - 1)]
    }

    /// The upstream clients the probes and warm-ups call with.
    pub fn probe_upstreams(&self) -> &Arc<Upstreams> {
        self.upstreams.last().expect("a snapshot has clients")
    }
}
