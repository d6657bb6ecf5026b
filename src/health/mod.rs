//! Provider health: each provider is a pool of servers ([`ProviderHealth`]), each server with its
//! own circuit breaker, in-flight count and cap, probe, warm-up and context windows
//! ([`ServerHealth`]); a provider is down only when every server is. The tier chain asks here
//! before each attempt whether a provider may be called now; the answer is a [`Lease`] on one of
//! its servers ([`pool`] picks which), which records the attempt's outcome.

mod breaker;
mod carry;
mod counts;
mod pool;
mod probe;
mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use counts::{COUNT_WARNING_INTERVAL, CountGate, MAX_COUNTS_IN_FLIGHT};

use crate::config::{Config, Provider, Tier, UpstreamServer};
use crate::upstream::{ContextRefusal, UpstreamError, UpstreamErrorKind};

pub use breaker::{Admission, Breaker, BreakerSnapshot, BreakerState, Ticket, Transition};
pub use pool::{ProviderHealth, ProviderStatus, ServerStatus};
pub use probe::spawn_probes;
pub use queue::QueueDepth;

/// One server of a provider: its breaker, the calls it has in flight, what its probe has seen,
/// and what is known of each tier's context window on it.
pub struct ServerHealth {
    pub provider: Arc<Provider>,
    pub server: Arc<UpstreamServer>,
    /// Its place in `provider.servers`, which the upstream clients share.
    pub index: usize,
    breaker: Breaker,
    /// Calls in flight now: the load the pool compares, and what `max_in_flight` caps.
    in_flight: AtomicU32,
    /// Its calls since start, by how each ended (see [`ServerStatus`]): every call it was sent
    /// is in exactly one of them.
    answered: AtomicU64,
    failures: AtomicU64,
    unfinished: AtomicU64,
    /// The probe has answered at least once (always true without a probe): until then the
    /// server is not counted as up by `/readyz`.
    seen_up: AtomicBool,
    /// A provider with a probe and warm-up is brought back by its probe, which warms it up first;
    /// a user's request is never its half-open trial call, which would meet a cold model.
    probe_recovers: bool,
    /// Per tier of this provider, what is known of its context window on this server.
    context_windows: HashMap<String, TierWindow>,
    /// What the server says it has queued, where it exports vLLM's metrics.
    queue: queue::QueueReading,
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

impl ServerHealth {
    fn new(provider: Arc<Provider>, index: usize, tiers: &[Arc<Tier>]) -> ServerHealth {
        let context_windows = tiers
            .iter()
            .filter(|tier| tier.provider.name == provider.name)
            .map(|tier| (tier.name.clone(), TierWindow::new(tier)))
            .collect();
        ServerHealth {
            context_windows,
            server: provider.servers[index].clone(),
            index,
            breaker: Breaker::new(provider.breaker),
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            unfinished: AtomicU64::new(0),
            seen_up: AtomicBool::new(provider.probe.is_none()),
            probe_recovers: provider.probe.is_some() && provider.warmup,
            queue: queue::QueueReading::default(),
            provider,
        }
    }

    /// The context window of tier `tier` on this server: configured, else as the server states
    /// it, else as a refusal taught it while that lasts.
    pub fn context_window(&self, tier: &str) -> Option<u32> {
        self.context_windows
            .get(tier)?
            .tokens()
            .map(|(tokens, _)| tokens)
    }

    /// This server refused a request of tier `tier` as too long, saying `refusal`;
    /// `counted_prompt` is tierwise's own count of the prompt it was sent. The window is taken
    /// only where the refusal is plausible (see [`TierWindow::judge`]); either way the log says
    /// which request taught it or tried to.
    pub fn learned_context_window(
        &self,
        tier: &str,
        refusal: ContextRefusal,
        counted_prompt: u64,
        request_id: &str,
    ) {
        let Some(window) = self.context_windows.get(tier) else {
            return;
        };
        let server = self.server.name.as_str();
        match window.judge(refusal, counted_prompt) {
            Ok(tokens) => {
                window.learn(tokens, request_id);
                tracing::info!(
                    tier,
                    server,
                    tokens,
                    request_id,
                    expires_in_s = LEARNED_WINDOW_LIFETIME.as_secs(),
                    "learned the tier's context window from its refusal"
                );
            }
            Err(why) => tracing::info!(
                tier,
                server,
                stated = refusal.window,
                request_id,
                "a refusal's context window is not taken: {why}"
            ),
        }
    }

    /// Tier `tier` answered a call of `tokens` (prompt and answer): its window is at least that.
    pub fn served_tokens(&self, tier: &str, tokens: u64) {
        // A read first: every request passes here, and most serve no more than the largest
        // already seen, so the shared line is written only when the figure grows.
        if let Some(window) = self.context_windows.get(tier)
            && window.served.load(Ordering::Relaxed) < tokens
        {
            window.served.fetch_max(tokens, Ordering::Relaxed);
        }
    }

    /// The server states `model`'s window as `tokens` (vLLM's `max_model_len` in its listing,
    /// Ollama's `/api/show`, llama.cpp's `/props`): the window of each tier on that model, unless
    /// the config says otherwise. It replaces whatever a refusal taught.
    pub fn discovered_context_window(&self, model: &str, tokens: u32) {
        for (tier, window) in &self.context_windows {
            if window.model == model
                && window.configured.is_none()
                && tokens > 0
                && window.discovered.swap(tokens, Ordering::Relaxed) != tokens
            {
                tracing::info!(tier = %tier, server = %self.server.name, tokens, "discovered the tier's context window");
            }
        }
    }

    /// The models of this provider's tiers whose window this server should be asked for
    /// (Ollama, llama.cpp): with `everything`, each one the config does not set; otherwise only
    /// those the server stated before (re-read, as a restarted server may serve another window)
    /// or a refusal taught (the server's word replaces it before it expires).
    pub fn models_to_size(&self, everything: bool) -> Vec<String> {
        let mut models: Vec<String> = self
            .context_windows
            .values()
            .filter(|window| {
                window.configured.is_none()
                    && (everything
                        || window.discovered.load(Ordering::Relaxed) > 0
                        || window.learned.load(Ordering::Relaxed) > 0)
            })
            .map(|window| window.model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Each tier's window on this server as `/admin/api/providers` shows it.
    pub fn context_windows(&self) -> Vec<WindowStatus> {
        let mut windows: Vec<WindowStatus> = self
            .context_windows
            .iter()
            .map(|(tier, window)| window.status(tier))
            .collect();
        windows.sort_by(|a, b| a.tier.cmp(&b.tier));
        windows
    }

    /// May this server be called now? Skips at once rather than queueing: a saturated or dead
    /// server should leave the call to another, or degrade to the next tier, not to slow
    /// answers.
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
        // One atomic add claims the slot; a call over the cap gives it back at once.
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if self
            .provider
            .max_in_flight
            .is_some_and(|cap| in_flight > cap)
        {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.breaker.trial_abandoned(ticket);
            return Err(Skip::Saturated);
        }
        Ok(Lease {
            health: self.clone(),
            ticket,
            settled: false,
        })
    }

    /// Whether [`ServerHealth::admit`] would let a call through now: its breaker would, and it is
    /// under its provider's `max_in_flight`. A server that is not is never drawn by the pool.
    pub fn callable(&self) -> bool {
        self.provider
            .max_in_flight
            .is_none_or(|cap| self.in_flight() < cap)
            && self.breaker.would_admit(!self.probe_recovers)
    }

    /// A lease that ignores the breaker and the cap: the last resort when every tier is open. Its
    /// outcome is the open breaker's business no more than any other call's: it cannot close it.
    pub fn force(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease {
            health: self.clone(),
            ticket: self.breaker.bypass(),
            settled: false,
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

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Its load in thousandths of a call: its calls in flight, and what its own metrics say it
    /// has queued (see [`queue`]).
    pub fn load_milli(&self) -> u64 {
        u64::from(self.in_flight()) * 1000 + self.queue.extra_milli()
    }

    pub fn status(&self) -> ServerStatus {
        let answered = self.answered.load(Ordering::Relaxed);
        let failed = self.failures.load(Ordering::Relaxed);
        let unfinished = self.unfinished.load(Ordering::Relaxed);
        let mut url = self.server.base_url.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        ServerStatus {
            name: self.server.name.clone(),
            url: url.to_string(),
            weight: self.server.weight,
            up: self.is_up(),
            probed: self.seen_up.load(Ordering::Acquire),
            in_flight: self.in_flight() as usize,
            queue: self.queue.current(),
            calls: answered + failed + unfinished,
            answered,
            failed,
            unfinished,
            breaker: self.breaker.snapshot(),
            context_windows: self.context_windows(),
        }
    }

    fn report(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            let (provider, server) = (&self.provider.name, &self.server.name);
            crate::metrics::server_breaker_state(provider, server, t.to.as_str(), true);
            let (from, to) = (t.from.as_str(), t.to.as_str());
            if t.to != BreakerState::Open {
                tracing::info!(provider = %provider, server = %server, from, to, reason = %t.reason, "provider state changed");
            } else {
                tracing::warn!(provider = %provider, server = %server, from, to, reason = %t.reason, "provider state changed");
            }
        }
    }
}

/// The right to call one server once. Its outcome feeds the server's breaker and its count of
/// calls: answered, failed through its fault, or unfinished — dropped unsettled, because the
/// call's client went away mid-stream or the call was cut off at shutdown, which is not the
/// server's failure. It holds the server's in-flight slot until it is dropped.
pub struct Lease {
    health: Arc<ServerHealth>,
    ticket: Ticket,
    settled: bool,
}

impl Lease {
    /// The server this lease calls.
    pub fn server(&self) -> &Arc<UpstreamServer> {
        &self.health.server
    }

    /// Its place among its provider's servers, which the upstream clients share.
    pub fn server_index(&self) -> usize {
        self.health.index
    }

    pub fn succeeded(&mut self) {
        self.settled = true;
        self.health.answered.fetch_add(1, Ordering::Relaxed);
        self.health
            .report(self.health.breaker.on_success(self.ticket));
    }

    /// Records a failed call. A client error is the request's fault and a 429 the tier's (the
    /// tier's own rest takes care of it): neither is the server's failure, nor its success, so
    /// the breaker does not hear of them, and a trial that met one frees its slot. The server
    /// answered such a call, and it is counted so.
    pub fn failed(&mut self, error: &UpstreamError) {
        self.settled = true;
        if error.counts_against_provider() {
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            self.health
                .report(self.health.breaker.on_failure(self.ticket, &error.reason()));
        } else {
            self.health.answered.fetch_add(1, Ordering::Relaxed);
            self.health.breaker.trial_abandoned(self.ticket);
        }
    }

    /// The call was answered 429 and is sent again on this lease after its short `Retry-After`:
    /// the first call was the server's answer (about the tier's rate), and is counted so; the
    /// lease settles with the second.
    pub fn answered_before_retry(&self) {
        self.health.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// The lease was never used: its call was not sent (the client had gone). Not a call of the
    /// server's, answered, failed or unfinished; a half-open trial it held is freed.
    pub fn unused(mut self) {
        self.settled = true;
        self.health.breaker.trial_abandoned(self.ticket);
    }

    /// A stream that broke after it had started: the server's failure, recorded at its end.
    pub fn broke(&mut self, reason: &str) {
        self.settled = true;
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        self.health
            .report(self.health.breaker.on_failure(self.ticket, reason));
    }

    /// The call answered `tokens`, prompt and answer, on tier `tier`: its window on this server
    /// is at least that.
    pub fn served_tokens(&self, tier: &str, tokens: u64) {
        self.health.served_tokens(tier, tokens);
    }

    /// This server refused the call as too long for tier `tier`'s window.
    pub fn learned_context_window(
        &self,
        tier: &str,
        refusal: ContextRefusal,
        counted_prompt: u64,
        request_id: &str,
    ) {
        self.health
            .learned_context_window(tier, refusal, counted_prompt, request_id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.settled {
            self.health.unfinished.fetch_add(1, Ordering::Relaxed);
            self.health.breaker.trial_abandoned(self.ticket);
        }
    }
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
                    let servers = (0..p.servers.len())
                        .map(|index| Arc::new(ServerHealth::new(p.clone(), index, &config.tiers)))
                        .collect();
                    (
                        p.name.clone(),
                        Arc::new(ProviderHealth::new(p.clone(), servers)),
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

    /// `tier`'s context window in tokens, if configured, discovered or learned (see
    /// [`ProviderHealth::context_window`] for a provider of several servers).
    pub fn context_limit(&self, tier: &Tier) -> Option<u32> {
        self.of(&tier.provider).context_window(&tier.name)
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

/// The smallest window a refusal may teach. No chat model served today has less, and a window
/// taught wrong shuts the tier to every client: a few tokens of floor cost nothing, a tier closed
/// by one request's refusal costs everyone.
pub const LEARNED_WINDOW_FLOOR: u32 = 1024;
/// How long a window a refusal taught holds. The server's own word (its listing, Ollama's
/// `/api/show`, llama.cpp's `/props`) is re-read by the probe and replaces it; where a server says
/// nothing, the next refusal teaches it again.
pub const LEARNED_WINDOW_LIFETIME: Duration = Duration::from_secs(600);
/// How far a server's count of a prompt may stand from tierwise's own and still be a count of the
/// same request: tierwise counts with OpenAI's tokenizers, a local model with its own (Llama's and
/// Mistral's spend up to ~1.5x the tokens on the same text), and chat templates add their tokens.
const COUNT_RATIO: u64 = 2;
const COUNT_SLACK: u64 = 64;

/// What is known of one tier's context window, and where it came from.
struct TierWindow {
    model: String,
    /// `context_tokens`: always wins.
    configured: Option<u32>,
    /// As the server states it (0 while it has not), re-read by the probe.
    discovered: AtomicU32,
    /// As a plausible refusal taught it (0 while none), until `learned_until_ms` after `epoch`.
    learned: AtomicU32,
    learned_until_ms: AtomicU64,
    /// The request whose refusal taught it; read only by `/admin/api/providers`.
    learned_from: std::sync::Mutex<String>,
    /// The most tokens (prompt and answer) the tier has answered in one call: its window is at
    /// least that.
    served: AtomicU64,
    epoch: Instant,
}

/// Each tier's window as `/admin/api/providers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    pub tier: String,
    pub model: String,
    /// The window in force, if any.
    pub tokens: Option<u32>,
    /// `configured`, `server` or `learned`.
    pub source: Option<&'static str>,
    /// For a learned window: the request whose refusal taught it, and how long it holds.
    pub learned_from: Option<String>,
    pub expires_in_s: Option<u64>,
    /// The most tokens the tier has answered in one call since start.
    pub largest_served: u64,
}

impl TierWindow {
    fn new(tier: &Tier) -> TierWindow {
        TierWindow {
            model: tier.model.clone(),
            configured: tier.context_tokens,
            discovered: AtomicU32::new(0),
            learned: AtomicU32::new(0),
            learned_until_ms: AtomicU64::new(0),
            learned_from: std::sync::Mutex::new(String::new()),
            served: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The window in force and where it came from. Only a tier with a learned window reads the
    /// clock, and a learned window below what the tier has since answered is no longer believed.
    fn tokens(&self) -> Option<(u32, &'static str)> {
        if let Some(tokens) = self.configured {
            return Some((tokens, "configured"));
        }
        let discovered = self.discovered.load(Ordering::Relaxed);
        if discovered > 0 {
            return Some((discovered, "server"));
        }
        let learned = self.learned.load(Ordering::Relaxed);
        (learned > 0
            && self.learned_remaining().is_some()
            && u64::from(learned) >= self.served.load(Ordering::Relaxed))
        .then_some((learned, "learned"))
    }

    fn learned_remaining(&self) -> Option<Duration> {
        let until = Duration::from_millis(self.learned_until_ms.load(Ordering::Relaxed));
        until
            .checked_sub(self.epoch.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// The window a refusal may teach, or why it may not: the config and the server's own word
    /// win; the window is at least the floor and what the tier has answered; the refusal is
    /// consistent (the request it counted does not fit the window it names); and the prompt it
    /// counted is, within the tokenizers' difference, the prompt tierwise sent.
    fn judge(&self, refusal: ContextRefusal, counted_prompt: u64) -> Result<u32, String> {
        let served = self.served.load(Ordering::Relaxed);
        let stated = refusal.window;
        if let Some(configured) = self.configured {
            return Err(format!("the config sets it ({configured} tokens)"));
        }
        if self.discovered.load(Ordering::Relaxed) > 0 {
            return Err("the server states its window itself".into());
        }
        if stated < LEARNED_WINDOW_FLOOR {
            return Err(format!("below the floor of {LEARNED_WINDOW_FLOOR} tokens"));
        }
        if u64::from(stated) < served {
            return Err(format!("the tier has answered a call of {served} tokens"));
        }
        if refusal.prompt + refusal.completion < u64::from(stated) {
            return Err(format!(
                "the request it counted ({} tokens) fits that window",
                refusal.prompt + refusal.completion
            ));
        }
        let (low, high) = (
            (counted_prompt / COUNT_RATIO).saturating_sub(COUNT_SLACK),
            counted_prompt * COUNT_RATIO + COUNT_SLACK,
        );
        if !(low..=high).contains(&refusal.prompt) {
            return Err(format!(
                "it counted a prompt of {} tokens, the request sent had about {counted_prompt}",
                refusal.prompt
            ));
        }
        Ok(stated)
    }

    fn learn(&self, tokens: u32, request_id: &str) {
        let until = self.epoch.elapsed() + LEARNED_WINDOW_LIFETIME;
        if let Ok(mut from) = self.learned_from.lock() {
            request_id.clone_into(&mut from);
        }
        self.learned_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        self.learned.store(tokens, Ordering::Relaxed);
    }

    fn status(&self, tier: &str) -> WindowStatus {
        let in_force = self.tokens();
        let learned = in_force.is_some_and(|(_, source)| source == "learned");
        WindowStatus {
            tier: tier.to_string(),
            model: self.model.clone(),
            tokens: in_force.map(|(tokens, _)| tokens),
            source: in_force.map(|(_, source)| source),
            learned_from: learned
                .then(|| self.learned_from.lock().ok().map(|from| from.clone()))
                .flatten(),
            expires_in_s: learned
                .then(|| self.learned_remaining().map(|left| left.as_secs()))
                .flatten(),
            largest_served: self.served.load(Ordering::Relaxed),
        }
    }
}
