//! Provider health: a circuit breaker and an in-flight cap per provider, the active probes that
//! feed the breakers, and warm-up. The tier chain asks here before each attempt whether a provider
//! may be called now; the answer is a [`Lease`] that records the attempt's outcome.

mod breaker;
mod probe;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Provider, Tier};
use crate::upstream::{UpstreamError, UpstreamErrorKind};

pub use breaker::{Admission, Breaker, BreakerSnapshot, BreakerState, Ticket, Transition};
pub use probe::spawn_probes;

pub struct ProviderHealth {
    pub provider: Arc<Provider>,
    breaker: Breaker,
    in_flight: Option<Arc<Semaphore>>,
    /// The probe has answered at least once (always true without a probe): until then the
    /// provider is not counted as up by `/readyz`.
    seen_up: AtomicBool,
    /// A provider with a probe and warm-up is brought back by its probe, which warms it up first;
    /// a user's request is never its half-open trial call, which would meet a cold model.
    probe_recovers: bool,
    /// Per tier of this provider: its model, its context window in tokens (0 while unknown) as
    /// configured, discovered by the probe (vLLM's `max_model_len`) or learned from a refusal, and
    /// whether the config set it (a discovery does not override the config).
    context_windows: HashMap<String, (String, AtomicU32, bool)>,
}

/// Why a tier was passed over without calling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    BreakerOpen {
        retry_in: Duration,
    },
    Saturated,
    /// The tier's model was rate limited (429) and its `Retry-After` has not passed.
    RateLimited {
        retry_in: Duration,
    },
}

impl Skip {
    pub fn into_error(self) -> UpstreamError {
        match self {
            Skip::BreakerOpen { retry_in } => UpstreamError::skipped(
                UpstreamErrorKind::BreakerOpen,
                "circuit breaker is open".into(),
                retry_in,
            ),
            Skip::Saturated => UpstreamError::skipped(
                UpstreamErrorKind::Saturated,
                "max_in_flight reached".into(),
                Duration::from_secs(1),
            ),
            Skip::RateLimited { retry_in } => UpstreamError::skipped(
                UpstreamErrorKind::RateLimited,
                "the model is rate limited".into(),
                retry_in,
            ),
        }
    }
}

impl ProviderHealth {
    fn new(provider: Arc<Provider>, tiers: &[Arc<Tier>]) -> ProviderHealth {
        let context_windows = tiers
            .iter()
            .filter(|tier| tier.provider.name == provider.name)
            .map(|tier| {
                let configured = tier.context_tokens;
                let window = AtomicU32::new(configured.unwrap_or(0));
                (
                    tier.name.clone(),
                    (tier.model.clone(), window, configured.is_some()),
                )
            })
            .collect();
        ProviderHealth {
            context_windows,
            breaker: Breaker::new(provider.breaker),
            in_flight: provider
                .max_in_flight
                .map(|limit| Arc::new(Semaphore::new(limit as usize))),
            seen_up: AtomicBool::new(provider.probe.is_none()),
            probe_recovers: provider.probe.is_some() && provider.warmup,
            provider,
        }
    }

    /// The context window of tier `tier`, if configured, discovered or learned.
    pub fn context_window(&self, tier: &str) -> Option<u32> {
        let (_, window, _) = self.context_windows.get(tier)?;
        let tokens = window.load(Ordering::Relaxed);
        (tokens > 0).then_some(tokens)
    }

    /// The server refused a request as too long for a window of `tokens`: that is its window.
    pub fn learned_context_window(&self, tier: &str, tokens: u32) {
        if let Some((_, window, _)) = self.context_windows.get(tier)
            && window.swap(tokens, Ordering::Relaxed) != tokens
        {
            tracing::info!(
                tier,
                tokens,
                "learned the tier's context window from its refusal"
            );
        }
    }

    /// The server lists `model` with a window of `tokens` (vLLM's `max_model_len`): the window of
    /// each tier on that model, unless the config says otherwise.
    pub fn discovered_context_window(&self, model: &str, tokens: u32) {
        for (tier, (tier_model, window, configured)) in &self.context_windows {
            if tier_model == model
                && !configured
                && tokens > 0
                && window.swap(tokens, Ordering::Relaxed) != tokens
            {
                tracing::info!(tier = %tier, tokens, "discovered the tier's context window");
            }
        }
    }

    /// The models of this provider's tiers whose window is neither configured nor discovered.
    pub fn models_without_window(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .context_windows
            .values()
            .filter(|(_, window, configured)| !configured && window.load(Ordering::Relaxed) == 0)
            .map(|(model, _, _)| model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// May this provider be called now? Skips at once rather than queueing: a saturated or dead
    /// local server should degrade to the next tier, not to slow answers.
    pub fn admit(self: &Arc<Self>) -> Result<Lease, Skip> {
        let (admission, opening) = self.breaker.admit(!self.probe_recovers);
        self.report(opening);
        let ticket = match admission {
            Admission::Call(ticket) => ticket,
            Admission::Skip { retry_in } if retry_in.is_zero() && self.probe_recovers => {
                let retry_in = self
                    .provider
                    .probe
                    .as_ref()
                    .map_or(Duration::from_secs(1), |probe| probe.interval);
                return Err(Skip::BreakerOpen { retry_in });
            }
            Admission::Skip { retry_in } => return Err(Skip::BreakerOpen { retry_in }),
        };
        let permit = match &self.in_flight {
            None => None,
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.breaker.trial_abandoned(ticket);
                    return Err(Skip::Saturated);
                }
            },
        };
        Ok(Lease {
            health: self.clone(),
            ticket,
            settled: false,
            _permit: permit,
        })
    }

    /// A lease that ignores the breaker and the cap: the last resort when every tier is open. Its
    /// outcome is the open breaker's business no more than any other call's: it cannot close it.
    pub fn force(self: &Arc<Self>) -> Lease {
        Lease {
            health: self.clone(),
            ticket: self.breaker.bypass(),
            settled: false,
            _permit: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Up for `/readyz`: probed at least once and closed. Half-open is not up: the trial that
    /// would say so has not answered yet.
    pub fn is_up(&self) -> bool {
        self.seen_up.load(Ordering::Acquire) && self.breaker.state() == BreakerState::Closed
    }

    pub fn status(&self) -> ProviderStatus {
        let snapshot = self.breaker.snapshot();
        ProviderStatus {
            name: self.provider.name.clone(),
            up: self.is_up(),
            probed: self.seen_up.load(Ordering::Acquire),
            in_flight: self.in_flight.as_ref().map(|semaphore| {
                self.provider.max_in_flight.unwrap_or(0) as usize - semaphore.available_permits()
            }),
            max_in_flight: self.provider.max_in_flight,
            breaker: snapshot,
        }
    }

    fn report(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            crate::metrics::breaker_state(&self.provider.name, t.to.as_str(), true);
            let (from, to) = (t.from.as_str(), t.to.as_str());
            if t.to != BreakerState::Open {
                tracing::info!(provider = %self.provider.name, from, to, reason = %t.reason, "provider state changed");
            } else {
                tracing::warn!(provider = %self.provider.name, from, to, reason = %t.reason, "provider state changed");
            }
        }
    }
}

/// The right to call a provider once. Its outcome feeds the breaker; dropping it unsettled (the
/// client went away mid-call) is not counted as the provider's failure.
pub struct Lease {
    health: Arc<ProviderHealth>,
    ticket: Ticket,
    settled: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    pub fn succeeded(&mut self) {
        self.settled = true;
        self.health
            .report(self.health.breaker.on_success(self.ticket));
    }

    /// Records a failed call. A client error is the request's fault and a 429 the tier's (the
    /// tier's own rest takes care of it): neither is the provider's failure, nor its success, so
    /// the breaker does not hear of them, and a trial that met one frees its slot.
    pub fn failed(&mut self, error: &UpstreamError) {
        self.settled = true;
        if error.counts_against_provider() {
            self.health
                .report(self.health.breaker.on_failure(self.ticket, &error.reason()));
        } else {
            self.health.breaker.trial_abandoned(self.ticket);
        }
    }

    /// A stream that broke after it had started: the provider's failure, recorded at its end.
    pub fn broke(&mut self, reason: &str) {
        self.settled = true;
        self.health
            .report(self.health.breaker.on_failure(self.ticket, reason));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            self.health.breaker.trial_abandoned(self.ticket);
        }
    }
}

/// What `/admin/api/providers` and `/readyz` show of one provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub up: bool,
    pub probed: bool,
    pub in_flight: Option<usize>,
    pub max_in_flight: Option<u32>,
    pub breaker: BreakerSnapshot,
}

/// Every provider's health, keyed by provider name, and each tier's rate limit. Rate limits are
/// per model, so a 429 cools down the tier that met it, not every tier of its provider: the
/// provider's breaker does not count it.
pub struct Health {
    providers: HashMap<String, Arc<ProviderHealth>>,
    /// Per tier: until when (milliseconds after `epoch`) it is rate limited.
    rate_limited_until: HashMap<String, AtomicU64>,
    epoch: Instant,
}

/// How long a tier rests after a 429 that gave no `Retry-After`.
const DEFAULT_RATE_LIMIT_REST: Duration = Duration::from_secs(1);

impl Health {
    pub fn new(config: &Config) -> Health {
        Health {
            providers: config
                .providers
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        Arc::new(ProviderHealth::new(p.clone(), &config.tiers)),
                    )
                })
                .collect(),
            rate_limited_until: config
                .tiers
                .iter()
                .map(|tier| (tier.name.clone(), AtomicU64::new(0)))
                .collect(),
            epoch: Instant::now(),
        }
    }

    /// Whether `tier` may be called now, as far as its rate limit goes.
    pub fn rate_limit(&self, tier: &Tier) -> Result<(), Skip> {
        let Some(until) = self.rate_limited_until.get(&tier.name) else {
            return Ok(());
        };
        let until = until.load(Ordering::Relaxed);
        // Nearly every tier has never been rate limited: no clock read for those.
        if until == 0 {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < until {
            return Err(Skip::RateLimited {
                retry_in: Duration::from_millis(until - now),
            });
        }
        Ok(())
    }

    /// `tier` answered 429: it rests for `retry_after` (or a second).
    pub fn rate_limited(&self, tier: &Tier, retry_after: Option<Duration>) {
        if let Some(until) = self.rate_limited_until.get(&tier.name) {
            let rest = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_REST);
            let at = (self.epoch.elapsed() + rest).as_millis() as u64;
            until.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// `tier`'s context window in tokens, if configured, discovered or learned.
    pub fn context_limit(&self, tier: &Tier) -> Option<u32> {
        self.of(&tier.provider).context_window(&tier.name)
    }

    /// `tier`'s server said its context window is `tokens`: later requests that cannot fit skip
    /// it without a call.
    pub fn learned_context_limit(&self, tier: &Tier, tokens: u32) {
        self.of(&tier.provider)
            .learned_context_window(&tier.name, tokens);
    }

    pub fn of(&self, provider: &Provider) -> &Arc<ProviderHealth> {
        self.providers
            .get(&provider.name)
            .expect("health exists for every configured provider")
    }

    pub fn statuses(&self) -> Vec<ProviderStatus> {
        let mut statuses: Vec<ProviderStatus> =
            self.providers.values().map(|p| p.status()).collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }
}
