//! Admission: the step between resolving a request's route and running its tier chain that decides
//! whether the request may go on, and on what terms. [`Limits::admit`] may
//! - refuse it ([`Admission::Refused`]: the client gets the OpenAI-shaped answer
//!   [`crate::server`] makes of the [`Refusal`], and the ledger a row with that status), or
//! - admit it ([`Admission::Admitted`]) holding part of its limits for it ([`Hold`]: reservations
//!   that travel with the request and are settled with what it really used when it ends), and
//!   with tiers its chain must pass over ([`Skips`]: each shows as a skipped attempt with its
//!   reason, in `x-tierwise-fallback` and the attempt rows).
//!
//! The reservation mechanism ([`Reservation`], [`Meter`]) is the one every limit uses, the shadow
//! checks' daily budget ([`crate::quality::watch`]) included. Limits do not know how a request
//! ends: [`crate::outcome`] settles the hold as one of the consumers of a finished request.

mod reservation;

use std::sync::Arc;

use crate::config::{ChainTier, ClientKey, Config, Route, Tier};
use crate::openai::RequestBody;

pub use reservation::{Hold, Meter, Reservation, Unit, Used};

/// The limits' state for the life of the process, shared by every serving thread.
#[derive(Debug, Default)]
pub struct Limits {}

impl Limits {
    pub fn new(_config: &Config) -> Limits {
        Limits {}
    }

    /// Decides whether `ask` may go on. Called on the request path once per request: reads and
    /// updates counters, never waits.
    pub fn admit(&self, _ask: &Ask<'_>) -> Admission {
        Admission::Admitted(Admitted::default())
    }
}

/// What admission knows of a request.
pub struct Ask<'a> {
    /// The key the client presented; `None` on a gateway with no client keys.
    pub key: Option<&'a Arc<ClientKey>>,
    /// The route the request's cost is attributed to.
    pub route: Option<&'a Arc<Route>>,
    /// The tiers the chain will try, in order.
    pub chain: &'a [ChainTier],
    pub request: &'a RequestBody<'a>,
}

/// What admission decided.
#[derive(Debug)]
pub enum Admission {
    /// The request goes on to its chain.
    Admitted(Admitted),
    /// The request is answered at once; no tier is called.
    Refused(Refusal),
}

/// The terms a request is admitted on.
#[derive(Debug, Default)]
pub struct Admitted {
    /// What the request holds of its limits until it ends.
    pub hold: Hold,
    /// Tiers its chain passes over.
    pub skips: Skips,
}

/// Why a request is answered without running its chain; [`crate::server`] turns each into its
/// OpenAI-shaped error.
#[derive(Debug)]
pub enum Refusal {}

impl Refusal {
    /// The HTTP status the client gets, as the ledger records it.
    pub fn status(&self) -> u16 {
        match *self {}
    }

    /// The short reason the ledger's `error_kind` keeps.
    pub fn reason(&self) -> &'static str {
        match *self {}
    }
}

/// Which tiers a [`Skip`] passes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every tier that is not local: the ones a provider bills for.
    ApiTiers,
}

impl Which {
    fn covers(self, tier: &Tier) -> bool {
        match self {
            Which::ApiTiers => !tier.is_local(),
        }
    }
}

/// Tiers passed over and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub which: Which,
    /// What the attempt row and `x-tierwise-fallback` show, e.g. `budget_spent`.
    pub reason: &'static str,
}

/// The tiers one request's chain passes over, each with its reason; the first that covers a tier
/// names it. Empty — no allocation — for nearly every request.
#[derive(Debug, Default)]
pub struct Skips(Vec<Skip>);

impl Skips {
    pub fn add(&mut self, skip: Skip) {
        self.0.push(skip);
    }

    /// Why `tier` is passed over, if it is.
    pub fn reason(&self, tier: &Tier) -> Option<&'static str> {
        self.0
            .iter()
            .find(|skip| skip.which.covers(tier))
            .map(|skip| skip.reason)
    }
}
