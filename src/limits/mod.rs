//! Admission: the step between resolving a request's route and running its tier chain that decides
//! whether the request may go on, and on what terms. [`Limits::admit`] may
//! - refuse it (a key calling a route it may not: 403; a rate limit without room: 429) ([`Admission::Refused`]: the client gets the OpenAI-shaped answer
//!   [`crate::server`] makes of the [`Refusal`], and the ledger a row with that status), or
//! - admit it ([`Admission::Admitted`]) holding part of its limits for it ([`Hold`]: reservations
//!   that travel with the request and are settled with what it really used when it ends), and
//!   with tiers its chain must pass over ([`Skips`]: each shows as a skipped attempt with its
//!   reason, in `x-tierwise-fallback` and the attempt rows).
//!
//! The rate limits (`rpm`, `tpm` of `keys.NAME` and `routes.NAME`) count requests and tokens per
//! minute in [`window`]s: in memory, shared by the serving threads without a lock, and in Redis
//! ([`shared`]) when `limits.store` is set, so that replicas share one count. A request is judged
//! by every limit that applies and takes from all of them or from none; a refused request counts
//! against nothing. Tokens are reserved from an estimate ([`estimate_tokens`]) and settled with
//! the real usage.
//!
//! The monthly budgets ([`budget`]) hold each request's worst-case cost against every budget that
//! applies (its route's, its key's, all API spend's) — in memory, and in Redis
//! ([`shared_budget`]) when `limits.store` is set; one that cannot hold it passes over the API
//! tiers (`budget_spent`) or refuses the request (429 `insufficient_quota`). Budgets are judged
//! before the rate limits, and what they hold is given back if a rate limit then refuses: a
//! refused request counts against nothing.
//!
//! The reservation mechanism ([`Reservation`], [`Meter`]) is the one every limit uses, the shadow
//! checks' daily budget ([`crate::quality::watch`]) included. Limits do not know how a request
//! ends: [`crate::outcome`] settles the hold as one of the consumers of a finished request.

pub mod budget;
mod carry;
mod reservation;
mod shared;
mod shared_budget;
mod window;

pub(crate) use shared::connect as connect_redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ChainTier, ClientKey, Config, Rate, Route, Tier};
use crate::openai::RequestBody;

pub use budget::{Budgets, Clock, Crossing, Spent};
pub use reservation::{Hold, Meter, Reservation, Unit, Used};
pub use window::{Counts, Now, Standing, Window};

use shared::{Judged, Shared, SharedLimit, SharedMeter};

/// The limits' state for the life of the process, shared by every serving thread: each limited
/// key's and route's counters, and the shared store where there is one.
pub struct Limits {
    /// By the key's fingerprint.
    keys: HashMap<String, Scope>,
    routes: HashMap<String, Scope>,
    shared: Option<Arc<Shared>>,
    budgets: Arc<Budgets>,
    /// This config's prices, which a request's worst case is judged at: the budgets outlive a
    /// reload, the prices they judge at are the serving config's.
    pricing: crate::ledger::Pricing,
}

/// A key or a route with limits.
struct Scope {
    kind: &'static str,
    name: String,
    requests: Option<Counter>,
    tokens: Option<Counter>,
    /// A key's counts of prompts' tokens (`…/count_tokens`), judged apart from its requests: at
    /// its `rpm` a minute, as Anthropic limits counting apart from sending.
    counts: Option<Counter>,
}

/// One limit: its count in memory, and in the shared store where there is one.
#[derive(Clone)]
struct Counter {
    window: Arc<Window>,
    shared: Option<(SharedLimit, Arc<SharedMeter>)>,
}

/// What a request is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Requests,
    Tokens,
    /// Counts of a prompt's tokens (`…/count_tokens`).
    TokenCounts,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Requests => "requests",
            Measure::Tokens => "tokens",
            Measure::TokenCounts => "token_counts",
        }
    }
}

/// Where a request's limits stand, as the `x-ratelimit-*` headers tell the client: for each
/// measure, the tightest of the key's and the route's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
    /// A count of a prompt's tokens: its own window's standing.
    pub token_counts: Option<Standing>,
}

impl Quota {
    fn add(&mut self, measure: Measure, standing: Standing) {
        let slot = match measure {
            Measure::Requests => &mut self.requests,
            Measure::Tokens => &mut self.tokens,
            Measure::TokenCounts => &mut self.token_counts,
        };
        if slot.is_none_or(|held| standing.remaining < held.remaining) {
            *slot = Some(standing);
        }
    }
}

/// One limit a request is judged by, and what it would take of it.
struct Judge<'a> {
    scope: &'a Scope,
    measure: Measure,
    counter: &'a Counter,
    cost: u64,
}

impl Limits {
    /// Every limited key and route, counted in memory, and in `limits.store` where it is set.
    /// Starts the store's tasks on the current runtime.
    pub fn new(config: &Config) -> Limits {
        Limits::with_clock(config, Clock::system())
    }

    /// The same, with budgets reading the month from `clock` (a test moves it across a month's
    /// end).
    pub fn with_clock(config: &Config, clock: Clock) -> Limits {
        let shared = config.limits.store.as_ref().and_then(|url| {
            Shared::start(url, config.limits.store_timeout)
                .map_err(|err| tracing::error!("{err}; rate limits and budgets are kept in memory"))
                .ok()
        });
        let budgets = Arc::new(Budgets::new(config, clock, shared.clone()));
        Limits::counting(config, shared, budgets)
    }

    /// `config`'s limited keys and routes, each with a new count, judged in `shared` where it is
    /// set, with `budgets`.
    fn counting(config: &Config, shared: Option<Arc<Shared>>, budgets: Arc<Budgets>) -> Limits {
        let scope = |kind: &'static str, name: &str, rate: Rate| -> Option<Scope> {
            if rate.is_none() {
                return None;
            }
            let counter = |measure: Measure, limit: Option<u64>| {
                let limit = limit?;
                let window = Arc::new(Window::new(limit));
                let shared = shared.as_ref().map(|store| {
                    let suffix = match measure {
                        Measure::TokenCounts => "counts",
                        measure => measure.as_str(),
                    };
                    let limit = SharedLimit {
                        prefix: format!("tierwise:limits:{kind}:{name}:{suffix}"),
                        limit: window.limit(),
                    };
                    let meter = Arc::new(SharedMeter {
                        window: window.clone(),
                        limit: limit.clone(),
                        shared: store.clone(),
                    });
                    (limit, meter)
                });
                Some(Counter { window, shared })
            };
            Some(Scope {
                kind,
                name: name.to_string(),
                requests: counter(Measure::Requests, rate.rpm),
                tokens: counter(Measure::Tokens, rate.tpm),
                counts: counter(Measure::TokenCounts, rate.rpm.filter(|_| kind == "key")),
            })
        };
        let keys = config
            .server
            .api_keys
            .iter()
            .filter_map(|key| {
                let name = key.terms.name.as_deref()?;
                Some((key.id.clone(), scope("key", name, key.terms.rate)?))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .filter_map(|route| {
                Some((route.name.clone(), scope("route", &route.name, route.rate)?))
            })
            .collect();
        Limits {
            keys,
            routes,
            budgets,
            shared,
            pricing: crate::ledger::Pricing::new(config),
        }
    }

    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// Where the counts are judged, as `/readyz` says it: `memory` (no `limits.store`), `shared`,
    /// `syncing` (the store answers, and budgets judge in memory until this replica has given it
    /// the ledger's account), or `down` (the store is unreachable; each replica judges from its
    /// own memory).
    pub fn store_status(&self) -> &'static str {
        match &self.shared {
            None => "memory",
            Some(store) if !store.is_up() => "down",
            Some(_) if !self.budgets.shared_usable() => "syncing",
            Some(_) => "shared",
        }
    }

    /// Decides whether `ask` may go on. Called on the request path once per request: reads and
    /// updates counters without a lock; with a shared store, one round trip to it, bounded by
    /// `limits.store_timeout_ms`.
    pub async fn admit(&self, ask: &Ask<'_>) -> Admission {
        if let Some(key) = ask.key
            && let Some(allowed) = &key.terms.routes
            && ask
                .called
                .is_none_or(|route| allowed.binary_search(&route.name).is_err())
        {
            return Admission::Refused(Refusal::NotAllowed {
                key: key.terms.name.clone().unwrap_or_default(),
                asked: ask.request.model.clone(),
                allowed: allowed.clone(),
            });
        }
        let mut skips = Skips::default();
        let mut held = Vec::new();
        match self
            .budgets
            .admit(&budget::Spending {
                route: ask.route.map(|route| &**route),
                key: ask.key.and_then(|key| key.terms.name.as_deref()),
                chain: ask.chain,
                request: ask.request,
                primary_demoted: ask.primary_demoted,
                pricing: &self.pricing,
            })
            .await
        {
            budget::Verdict::Held(reservations) => held = reservations,
            budget::Verdict::Moved { demoted_too } => {
                skips.add(Skip {
                    which: Which::ApiTiers,
                    reason: BUDGET_SPENT,
                });
                if let (true, Some(primary)) = (demoted_too, ask.chain.first()) {
                    skips.add(Skip {
                        which: Which::Tier(primary.tier.clone()),
                        reason: "quality_demoted",
                    });
                }
            }
            budget::Verdict::Refused(spent) => {
                return Admission::Refused(Refusal::BudgetSpent(spent));
            }
        }
        match self.rates(ask).await {
            Admission::Admitted(mut admitted) => {
                for reservation in held {
                    admitted.hold.add(reservation);
                }
                admitted.skips = skips;
                Admission::Admitted(admitted)
            }
            refused @ Admission::Refused(_) => {
                // Refused by a rate limit: what the budgets held is given back, not counted.
                for reservation in held {
                    reservation.settle(0);
                }
                refused
            }
        }
    }

    /// Admits one count of a prompt's tokens (`…/count_tokens`) by `key`, or refuses it (429).
    /// Anthropic limits counting apart from sending, and so does the gateway: a key with an
    /// `rpm` has a second window of as many counts a minute, which only counts take from (a
    /// count takes nothing of the key's requests or tokens, nor they of its counts). A key
    /// without `rpm`, and a gateway without keys, do not limit counting. Judged in the shared
    /// store where there is one, as requests are. Where the window stands is returned for the
    /// `x-ratelimit-*-token-counts` headers.
    pub async fn admit_count(
        &self,
        key: Option<&Arc<ClientKey>>,
    ) -> Result<Option<Standing>, Refusal> {
        let Some(scope) = key.and_then(|key| self.keys.get(&key.id)) else {
            return Ok(None);
        };
        let Some(counter) = &scope.counts else {
            return Ok(None);
        };
        let judge = [Judge {
            scope,
            measure: Measure::TokenCounts,
            counter,
            cost: 1,
        }];
        let now = Now::read();
        let judged = match &self.shared {
            Some(store) if store.is_up() => shared_judgement(store, now, &judge).await,
            _ => None,
        };
        let (taken, counts) = match judged {
            Some(Judged::Taken(counts)) => {
                // Mirrored in memory, which judges alone while the store is away.
                counter.window.add(now, 1);
                (true, counts)
            }
            Some(Judged::Refused(counts)) => (false, counts),
            None => memory_judgement(now, &judge),
        };
        let limit = counter.window.limit();
        let counts = counts[0];
        let standing = counts.standing(now, limit);
        if taken {
            return Ok(Some(standing));
        }
        crate::metrics::rate_limited(scope.kind, &scope.name, Measure::TokenCounts.as_str());
        Err(Refusal::RateLimited(Box::new(RateLimited {
            scope: format!("{} '{}'", scope.kind, scope.name),
            measure: Measure::TokenCounts,
            limit,
            used: standing.limit - standing.remaining,
            requested: 1,
            retry_after: counts.retry_after(now, 1, limit),
            quota: Quota {
                token_counts: Some(standing),
                ..Quota::default()
            },
        })))
    }

    /// The rate limits' judgement of `ask`: every limit that applies takes from it, or none does.
    async fn rates(&self, ask: &Ask<'_>) -> Admission {
        let key = ask.key.and_then(|key| self.keys.get(&key.id));
        let route = ask.route.and_then(|route| self.routes.get(&route.name));
        if key.is_none() && route.is_none() {
            return Admission::Admitted(Admitted::default());
        }
        let estimate = estimate_tokens(ask);
        let mut judges = Vec::with_capacity(4);
        for scope in [key, route].into_iter().flatten() {
            if let Some(counter) = &scope.requests {
                judges.push(Judge {
                    scope,
                    measure: Measure::Requests,
                    counter,
                    cost: 1,
                });
            }
            if let Some(counter) = &scope.tokens {
                judges.push(Judge {
                    scope,
                    measure: Measure::Tokens,
                    counter,
                    // A request that alone asks for more than the limit is admitted only into an
                    // empty minute, and then fills it: an estimate is no reason to refuse forever.
                    cost: estimate.min(counter.window.limit()),
                });
            }
        }
        let now = Now::read();
        let judged = match &self.shared {
            Some(store) if store.is_up() => shared_judgement(store, now, &judges).await,
            _ => None,
        };
        let shared = matches!(judged, Some(Judged::Taken(_)));
        let (taken, counts) = match judged {
            Some(Judged::Taken(counts)) => {
                // Mirrored in memory, which judges alone while the store is away.
                for (judge, _) in judges.iter().zip(&counts) {
                    judge.counter.window.add(now, judge.cost);
                }
                (true, counts)
            }
            Some(Judged::Refused(counts)) => (false, counts),
            None => memory_judgement(now, &judges),
        };
        let mut quota = Quota::default();
        let mut refused = None;
        for (judge, counts) in judges.iter().zip(&counts) {
            let limit = judge.counter.window.limit();
            quota.add(judge.measure, counts.standing(now, limit));
            if !taken && refused.is_none() && !counts.fits(now, judge.cost, limit) {
                refused = Some((judge, *counts));
            }
        }
        if !taken {
            let (judge, counts) = refused.unwrap_or((&judges[0], counts[0]));
            crate::metrics::rate_limited(
                judge.scope.kind,
                &judge.scope.name,
                judge.measure.as_str(),
            );
            return Admission::Refused(Refusal::RateLimited(Box::new(RateLimited {
                scope: format!("{} '{}'", judge.scope.kind, judge.scope.name),
                measure: judge.measure,
                limit: judge.counter.window.limit(),
                used: {
                    let standing = counts.standing(now, judge.counter.window.limit());
                    standing.limit - standing.remaining
                },
                requested: judge.cost,
                retry_after: counts.retry_after(now, judge.cost, judge.counter.window.limit()),
                quota,
            })));
        }
        let mut hold = Hold::default();
        for judge in judges.iter().filter(|j| j.measure == Measure::Tokens) {
            let meter: Arc<dyn Meter> = match &judge.counter.shared {
                Some((_, meter)) if shared => meter.clone(),
                _ => judge.counter.window.clone(),
            };
            hold.add(Reservation::new(
                meter,
                Unit::Tokens,
                now.minute,
                judge.cost,
            ));
        }
        Admission::Admitted(Admitted {
            hold,
            skips: Skips::default(),
            quota: Some(quota),
        })
    }
}

/// The store's judgement of every limit at once; `None` when it did not answer.
async fn shared_judgement(store: &Shared, now: Now, judges: &[Judge<'_>]) -> Option<Judged> {
    let limits: Vec<(&SharedLimit, u64)> = judges
        .iter()
        .map(|judge| {
            let (limit, _) = judge.counter.shared.as_ref()?;
            Some((limit, judge.cost))
        })
        .collect::<Option<_>>()?;
    store.take(now, &limits).await
}

/// Takes every limit from memory, or none: what one took is given back when a later one refuses.
fn memory_judgement(now: Now, judges: &[Judge<'_>]) -> (bool, Vec<Counts>) {
    let mut counts = Vec::with_capacity(judges.len());
    for (at, judge) in judges.iter().enumerate() {
        match judge.counter.window.take(now, judge.cost) {
            Ok(after) => counts.push(after),
            Err(before) => {
                for taken in &judges[..at] {
                    taken.counter.window.give_back(now.minute, taken.cost);
                }
                // The others as they stand without this request.
                let mut all: Vec<Counts> = judges[..at]
                    .iter()
                    .map(|j| j.counter.window.counts(now))
                    .collect();
                all.push(before);
                all.extend(
                    judges[at + 1..]
                        .iter()
                        .map(|j| j.counter.window.counts(now)),
                );
                return (false, all);
            }
        }
    }
    (true, counts)
}

/// The tokens a request is held to before it runs: its prompt at about four bytes a token (the
/// length of `messages` or `input` as sent, read without parsing it, so that a huge prompt costs
/// no more than a short one to judge), plus the answer budget — the client's `max_tokens`, else
/// the first tier's, else the [`budget::DEFAULT_ANSWER_TOKENS`] budgets assume too (an unbounded
/// answer is not a free one). It is settled with the real usage when the request ends.
fn estimate_tokens(ask: &Ask<'_>) -> u64 {
    let request = ask.request;
    let prompt_bytes = ["messages", "input"]
        .iter()
        .find_map(|field| request.field(field))
        .map_or(0, |raw| raw.get().len() as u64);
    let budget = request.max_tokens().or_else(|| {
        ask.chain
            .first()
            .and_then(|step| step.tier.max_tokens)
            .map(u64::from)
    });
    let answer = if request.endpoint() == crate::openai::Endpoint::Embeddings {
        0
    } else {
        budget.unwrap_or(budget::DEFAULT_ANSWER_TOKENS)
    };
    prompt_bytes.div_ceil(4).saturating_add(answer)
}

/// What admission knows of a request.
pub struct Ask<'a> {
    /// The key the client presented; `None` on a gateway with no client keys.
    pub key: Option<&'a Arc<ClientKey>>,
    /// The route the request's cost is attributed to (named by `model` or `x-tierwise-route`).
    pub route: Option<&'a Arc<Route>>,
    /// The route named by `model`, whose chain runs; `None` when `model` names a tier or a model.
    pub called: Option<&'a Arc<Route>>,
    /// The tiers the chain will try, in order.
    pub chain: &'a [ChainTier],
    pub request: &'a RequestBody<'a>,
    /// The route's shadow check has demoted its primary tier (it is tried last).
    pub primary_demoted: bool,
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
    /// Where its rate limits stand, counting it; `None` when none applies.
    pub quota: Option<Quota>,
}

/// Why a request is answered without running its chain; [`crate::server`] turns each into its
/// OpenAI-shaped error.
#[derive(Debug)]
pub enum Refusal {
    /// The key may not call what the request names: 403.
    NotAllowed {
        /// `keys.NAME`.
        key: String,
        /// The request's `model`.
        asked: String,
        /// The routes the key may call.
        allowed: Vec<String>,
    },
    /// A rate limit has no room for the request: 429 `rate_limit_exceeded`.
    RateLimited(Box<RateLimited>),
    /// A budget cannot hold the request and nothing may serve instead: 429 `insufficient_quota`.
    BudgetSpent(Box<Spent>),
}

/// A request over a rate limit, as the client is told.
#[derive(Debug)]
pub struct RateLimited {
    /// `key 'batch'`, `route 'chat'`.
    pub scope: String,
    pub measure: Measure,
    pub limit: u64,
    /// Of the limit, in the trailing minute.
    pub used: u64,
    pub requested: u64,
    /// Until the request would fit, if nothing more comes.
    pub retry_after: Duration,
    pub quota: Quota,
}

impl Refusal {
    /// The HTTP status the client gets, as the ledger records it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotAllowed { .. } => 403,
            Refusal::RateLimited(_) | Refusal::BudgetSpent(_) => 429,
        }
    }

    /// The short reason the ledger's `error_kind` keeps.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAllowed { .. } => "route_not_allowed",
            Refusal::RateLimited(_) => "rate_limit_exceeded",
            Refusal::BudgetSpent(_) => "insufficient_quota",
        }
    }

    /// Where the request's limits stand, for the `x-ratelimit-*` headers.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            Refusal::NotAllowed { .. } | Refusal::BudgetSpent(_) => None,
            Refusal::RateLimited(limited) => Some(limited.quota),
        }
    }
}

/// Which tiers a [`Skip`] passes over.
#[derive(Debug, Clone)]
pub enum Which {
    /// Every tier that is not local: the ones a provider bills for.
    ApiTiers,
    /// One tier.
    Tier(Arc<Tier>),
}

impl Which {
    fn covers(&self, tier: &Tier) -> bool {
        match self {
            Which::ApiTiers => !tier.is_local(),
            Which::Tier(one) => std::ptr::eq(&**one, tier),
        }
    }
}

/// Why a tier was passed over for a budget, in `x-tierwise-fallback` and the attempt rows.
pub const BUDGET_SPENT: &str = "budget_spent";

/// Tiers passed over and why.
#[derive(Debug, Clone)]
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
