//! The configuration the gateway runs on: the TOML file read once at start-up and resolved into
//! types where a route holds its tiers, a tier holds its provider, every `${ENV}` has been read and
//! every name checked. Code outside this module never sees an unresolved name.

mod env;
mod error;
mod raw;
mod resolve;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

pub use error::{ConfigError, ConfigIssue};

/// The commented starter configuration that `tierwise init` writes; the same file is shipped as
/// `examples/tierwise.toml`, so the example and the command can never drift apart.
pub const STARTER: &str = include_str!("../../examples/tierwise.toml");

/// Where to look up `${VAR}` values; the process environment in production, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub ledger: LedgerConfig,
    pub providers: Vec<Arc<Provider>>,
    pub tiers: Vec<Arc<Tier>>,
    pub routes: Vec<Arc<Route>>,
    pub prices: BTreeMap<String, Price>,
    /// Things that are allowed but probably not meant (no client auth, an empty upstream key);
    /// logged at start-up and printed by `tierwise check`.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and resolves the file at `path`, taking `${VAR}` values from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Resolves configuration text; `path` names the file in messages and anchors relative prompt
    /// paths.
    pub fn parse(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().to_string(),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        resolve::Resolver::new(text, &base_dir, env)
            .resolve(raw)
            .map_err(|issues| ConfigError::Invalid {
                path: path.to_path_buf(),
                issues,
            })
    }
}

/// A value that must never be printed: upstream API keys and client keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A key clients present, with the id the ledger records instead of the key.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub secret: Secret,
    /// `key-` and the first 12 hex digits of the key's SHA-256.
    pub id: String,
}

impl ClientKey {
    pub fn new(secret: Secret) -> ClientKey {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(secret.expose().as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        ClientKey {
            secret,
            id: format!("key-{hex}"),
        }
    }
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Keys clients must present as `Authorization: Bearer`; empty means the gateway is open.
    pub api_keys: Vec<ClientKey>,
    pub admin_key: Option<ClientKey>,
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Serving threads, each with its own event loop and upstream connections (default: one per
    /// core).
    pub threads: usize,
}

#[derive(Debug)]
pub struct LedgerConfig {
    pub url: String,
    pub store_content: bool,
    /// Where one JSON line per completed request goes, if anywhere.
    pub request_log: Option<RequestLog>,
    /// Records that may wait for the writer before requests wait for it.
    pub queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestLog {
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
    /// Longest silence allowed between two chunks of a stream.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            first_byte: Duration::from_secs(30),
            total: Duration::from_secs(120),
            idle: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Always ends in `/`, so that `join("chat/completions")` keeps the path prefix (`/v1/`).
    pub base_url: Url,
    pub api_key: Option<Secret>,
    pub fixed_monthly_usd: Option<f64>,
    pub warmup: bool,
    pub timeouts: Timeouts,
    /// Requests over this many at once spill to the next tier instead of queueing.
    pub max_in_flight: Option<u32>,
    /// A 429 whose `Retry-After` is at most this long is retried once on the same tier.
    pub retry_429_max_wait: Duration,
    pub breaker: BreakerPolicy,
    /// `None` when active probing is switched off.
    pub probe: Option<ProbePolicy>,
}

/// When a provider's circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive retryable failures that open the breaker.
    pub failures: u32,
    /// Share of failed calls in `window` that opens it, once `min_requests` calls were seen.
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// First cool-down; it doubles on each failed trial, up to `max_cooldown`.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// The active health probe of a provider.
#[derive(Debug, Clone)]
pub struct ProbePolicy {
    /// `{base_url}/models` by default; a path starting with `/` is taken from the host root
    /// (vLLM's `/health`).
    pub url: Url,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub provider: Arc<Provider>,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// The provider's timeouts with this tier's overrides applied.
    pub timeouts: Timeouts,
}

/// What a route does, which decides its scorer and whether it may move to a local model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Classification,
    Extraction,
    Summarization,
    Moderation,
    Embedding,
    Chat,
    Agentic,
    Reasoning,
}

impl TaskKind {
    pub const ALL: [(&'static str, TaskKind); 8] = [
        ("classification", TaskKind::Classification),
        ("extraction", TaskKind::Extraction),
        ("summarization", TaskKind::Summarization),
        ("moderation", TaskKind::Moderation),
        ("embedding", TaskKind::Embedding),
        ("chat", TaskKind::Chat),
        ("agentic", TaskKind::Agentic),
        ("reasoning", TaskKind::Reasoning),
    ];

    pub fn as_str(self) -> &'static str {
        TaskKind::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map(|(name, _)| *name)
            .unwrap_or("chat")
    }
}

/// One tier in a route's chain, with what the route changes about calls to it.
#[derive(Debug, Clone)]
pub struct ChainTier {
    pub tier: Arc<Tier>,
    /// Replaces the client's system message on this tier (`{labels}` already filled in).
    pub system_prompt: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub kind: TaskKind,
    /// Never empty: the first is the primary, the rest are fallbacks in order.
    pub chain: Vec<ChainTier>,
    pub baseline: Option<Arc<Tier>>,
    /// Allowed labels, lower-cased, when the route declares an output contract.
    pub labels: Option<Vec<String>>,
    pub shadow: Option<Shadow>,
    pub profile: Profile,
    pub when_all_open: AllOpen,
}

/// What a route does when every tier's breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllOpen {
    /// Call the primary anyway: it may have recovered, and a failure costs one request.
    TryPrimary,
    /// Answer 503 at once with `Retry-After`.
    FailFast,
}

#[derive(Debug)]
pub struct Shadow {
    pub reference: Arc<Tier>,
    pub sample_rate: f64,
    pub min_agreement: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityBar {
    GoodEnough,
    Frontier,
}

#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub quality: QualityBar,
    pub latency_tolerance: Duration,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

/// The path `tierwise serve` and `tierwise check` read when none is given.
pub fn default_path() -> PathBuf {
    PathBuf::from("tierwise.toml")
}
