//! The configuration file exactly as written: serde structs that mirror the TOML, with spans kept on
//! every value that is checked later, so that an error can point at its line. The gateway never runs
//! on these types: [`super::Config::parse`] resolves them into the ones it does. They serialize too,
//! so tests build configurations from typed values, and a renamed key breaks their build rather
//! than leaving a test silently untested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::kinds::{
    Affinity, AllOpen, Api, CacheScope, Changes, KeyHeader, OnDrift, OnExhausted, OnProof,
    QualityBar, ScorerKind, TaskKind, ToolCalling,
};

pub type Text = Spanned<String>;

/// A spanned string for a file built in code (its span is meaningless until it is written out).
pub fn text(value: impl Into<String>) -> Text {
    Spanned::new(0..0, value.into())
}

/// A spanned value for a file built in code.
pub fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub providers: BTreeMap<Text, RawProvider>,
    #[serde(default)]
    pub tiers: BTreeMap<Text, RawTier>,
    #[serde(default)]
    pub routes: BTreeMap<Text, RawRoute>,
    #[serde(default)]
    pub prices: BTreeMap<Text, RawPrice>,
    #[serde(default)]
    pub alerts: RawAlerts,
    #[serde(default)]
    pub advise: RawAdvise,
    #[serde(default)]
    pub report: RawReport,
    /// All API spend, whatever route or key it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawBudget>,
    /// `[keys.NAME]`: named client keys.
    #[serde(default)]
    pub keys: BTreeMap<Text, RawKey>,
    #[serde(default)]
    pub limits: RawLimits,
    /// `[cache]`: where the routes' cached answers are kept.
    #[serde(default)]
    pub cache: RawCache,
    /// `[telemetry]`: where traces are exported.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[responses]`: whether Responses API answers are kept for their next turn.
    #[serde(default)]
    pub responses: RawResponses,
}

/// `[telemetry]`: traces of every request over OTLP, when an endpoint is set.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// The collector's URL; no traces when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<Text>,
    /// `"grpc"` or `"http"` (protobuf over HTTP); by the endpoint's port when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Sent with every export (a collector's token): never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_headers: Option<BTreeMap<Text, Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Text>,
    /// The share of requests traced, 0 to 1, where the client sent no sampled parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<Spanned<f64>>,
    /// Prompts and answers in the spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_content: Option<bool>,
}

/// How traces travel to the collector (`telemetry.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Grpc,
    /// Protobuf over HTTP (`/v1/traces`).
    Http,
}

/// `[responses]`: Responses API answers kept in the ledger's database for `previous_response_id`
/// and `GET /v1/responses/{id}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    /// Keep responses (unless a request says `store: false`); off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// How long a kept response lasts: `"30d"`, `"12h"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Text>,
    /// How long a request waits for the database to find the response it continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup_timeout_ms: Option<Spanned<u64>>,
    /// The most earlier turns a request continued by `previous_response_id` may carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<Spanned<u64>>,
}

/// `[keys.NAME]`: a client key with a name the ledger and reports show, the routes it may call and
/// its own rate limits.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub key: Text,
    /// The routes this key may call; every route (and tier) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Spanned<u64>>,
    /// What the key's calls may cost a month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawBudget>,
}

impl RawKey {
    pub fn new(key: impl Into<String>) -> RawKey {
        RawKey {
            key: text(key),
            routes: None,
            rpm: None,
            tpm: None,
            budget: None,
        }
    }
}

/// `[cache]`: where cached answers are kept, for the routes that opt in with `routes.NAME.cache`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// The most this process keeps in memory, in bytes of answers; least recently used first out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Spanned<u64>>,
    /// `redis://…`: answers shared by every replica; in this process's memory when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<Text>,
    /// How long a lookup waits for the store before it counts as a miss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<Spanned<u64>>,
}

/// `routes.NAME.cache`: the route's answers are kept and given again to identical requests.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// How long an answer is given again: `"1h"`, `"10m"`, `"30s"`.
    pub ttl: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
    /// Also cache requests that sample (`temperature` > 0, `n` > 1): their answers differ from call
    /// to call, so a hit gives one of them again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nondeterministic: Option<bool>,
}

/// `[limits]`: where the rate-limit counters live.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `redis://…`: counters shared by every replica; in this process's memory when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<Text>,
    /// How long admission waits for the store before it judges from this replica's memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<Text>,
    /// Without any key configured, `/admin` is closed unless this is set.
    #[serde(default)]
    pub open_admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_key: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_answer_bytes: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout_ms: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_timeout_ms: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Spanned<u32>>,
    /// Host names `/v1` and `/admin/api` answer to (DNS rebinding); `"*"` for any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout_ms: Option<Spanned<u64>>,
    /// Reload the file when it changes, as `SIGHUP` does.
    #[serde(default)]
    pub watch_config: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Text>,
    #[serde(default)]
    pub store_content: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_log: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_max_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "SpannedTimeouts")]
pub struct RawTimeouts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Where each value was written, for errors. Kept beside the plain numbers rather than in
    /// them, so that code building a file sets `total_ms = Some(300)` as before.
    #[serde(skip)]
    pub at: TimeoutSpans,
}

/// The byte offset of each timeout in the file, where it was read from one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutSpans {
    pub connect_ms: Option<usize>,
    pub first_byte_ms: Option<usize>,
    pub total_ms: Option<usize>,
    pub idle_ms: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedTimeouts {
    connect_ms: Option<Spanned<u64>>,
    first_byte_ms: Option<Spanned<u64>>,
    total_ms: Option<Spanned<u64>>,
    idle_ms: Option<Spanned<u64>>,
}

impl From<SpannedTimeouts> for RawTimeouts {
    fn from(raw: SpannedTimeouts) -> RawTimeouts {
        let value = |v: &Option<Spanned<u64>>| v.as_ref().map(|v| *v.get_ref());
        let at = |v: &Option<Spanned<u64>>| v.as_ref().map(|v| v.span().start);
        RawTimeouts {
            connect_ms: value(&raw.connect_ms),
            first_byte_ms: value(&raw.first_byte_ms),
            total_ms: value(&raw.total_ms),
            idle_ms: value(&raw.idle_ms),
            at: TimeoutSpans {
                connect_ms: at(&raw.connect_ms),
                first_byte_ms: at(&raw.first_byte_ms),
                total_ms: at(&raw.total_ms),
                idle_ms: at(&raw.idle_ms),
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// One server; `servers` for several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<Text>,
    /// Several servers behind the provider, each with its own health and load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Spanned<Vec<RawUpstreamServer>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<Text>,
    /// Its server serves OpenAI's Responses API (`/responses`) itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responses: Option<Spanned<bool>>,
    /// Which of a Messages client's `anthropic-beta` flags reach an Anthropic provider:
    /// `"all"`, `"none"` or a list of names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_betas: Option<Spanned<RawClientBetas>>,
    /// Whether a Messages client's `anthropic-version` replaces `api_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<Spanned<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<KeyHeader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_monthly_usd: Option<Spanned<f64>>,
    #[serde(default)]
    pub warmup: bool,
    /// `"prefix"`: calls whose prompts begin alike go to the same server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How many bytes of the prompt make the prefix `affinity` keys on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_prefix_bytes: Option<Spanned<u32>>,
    #[serde(default)]
    pub timeout: RawTimeouts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_429_max_wait_ms: Option<u64>,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default)]
    pub health: RawHealth,
}

/// One entry of `providers.<name>.servers`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamServer {
    pub url: Text,
    /// Its share of the load relative to the others' (its capacity): 1 unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Spanned<u32>>,
    /// How the header, the ledger and the metrics name it; `PROVIDER@host:port` unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text>,
}

impl RawUpstreamServer {
    pub fn new(url: impl Into<String>) -> RawUpstreamServer {
        RawUpstreamServer {
            url: text(url),
            weight: None,
            name: None,
        }
    }
}

/// `providers.<name>.tls`: PEM files, relative to the config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_roots: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(from = "SpannedHealth")]
pub struct RawHealth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether each server's queue is read from its vLLM metrics (`GET /metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<bool>,
    /// Where `timeout_ms` was written, for errors (kept apart, as [`RawTimeouts::at`] is).
    #[serde(skip)]
    pub timeout_at: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpannedHealth {
    enabled: Option<bool>,
    path: Option<Text>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    metrics: Option<bool>,
}

impl From<SpannedHealth> for RawHealth {
    fn from(raw: SpannedHealth) -> RawHealth {
        RawHealth {
            enabled: raw.enabled,
            path: raw.path,
            interval_ms: raw.interval_ms,
            timeout_ms: raw.timeout_ms.as_ref().map(|t| *t.get_ref()),
            metrics: raw.metrics,
            timeout_at: raw.timeout_ms.as_ref().map(|t| t.span().start),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub provider: Text,
    pub model: Text,
    /// Azure OpenAI: the deployment that serves `model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Text>,
    /// The model the tier is priced as and known by, where `model` names something else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Spanned<f64>>,
    /// The model's context window in tokens (prompt and answer), where the server has one smaller
    /// than its requests may need, e.g. vLLM's `--max-model-len`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<Spanned<u32>>,
    /// Whether the model can call tools (`tools` in a request); unset means it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// Whether the server honours `response_format` of type `json_schema`; unset means it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<bool>,
    /// Whether the model reads images in messages; unset means it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    #[serde(default)]
    pub timeout: RawTimeouts,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub kind: Spanned<TaskKind>,
    pub tiers: Spanned<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Text>,
    #[serde(default)]
    pub prompts: BTreeMap<Text, Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<RawOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RawShadow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<RawProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_all_open: Option<AllOpen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawBudget>,
    /// Requests per minute to this route, over every key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<Spanned<u64>>,
    /// Tokens (prompt and completion) per minute to this route, over every key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Spanned<u64>>,
    /// Answers kept for identical requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<RawRouteCache>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Spanned<Vec<Text>>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub reference: Text,
    pub sample_rate: Spanned<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scorer: Option<ScorerKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_drift: Option<OnDrift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_proof: Option<OnProof>,
}

impl RawShadow {
    pub fn new(reference: impl Into<String>, sample_rate: f64) -> RawShadow {
        RawShadow {
            reference: text(reference),
            sample_rate: spanned(sample_rate),
            min_agreement: None,
            scorer: None,
            concurrency: None,
            daily_budget_usd: None,
            window: None,
            min_samples: None,
            on_drift: None,
            on_proof: None,
        }
    }
}

/// Dollars a calendar month (UTC) of API spend: `[budget]`, `routes.<name>.budget`, and a named
/// key's `budget`, all of one shape.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub monthly_usd: Spanned<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<Spanned<OnExhausted>>,
    /// The share of the budget at which the first alert fires; the second fires at 100%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_at: Option<Spanned<f64>>,
}

impl RawBudget {
    pub fn new(monthly_usd: f64, on_exhausted: OnExhausted) -> RawBudget {
        RawBudget {
            monthly_usd: spanned(monthly_usd),
            on_exhausted: Some(spanned(on_exhausted)),
            alert_at: None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Where a quality alert is POSTed as JSON, once per episode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Text>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityBar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_tolerance_ms: Option<u64>,
    /// How much the task depends on calling tools right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calling: Option<ToolCalling>,
    /// How often the task's prompt or expected output changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// `[advise]`: the thresholds of `tierwise advise`'s rules of thumb.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdvise {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_calls_per_day: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_context_tokens: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_latency_tolerance_ms: Option<u64>,
}

/// `[report]`: how reports, `advise` and the dashboard turn the ledger into figures.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    /// Hours of traffic a window must span before its figures are projected to a month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_after_hours: Option<Spanned<f64>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Spanned<f64>,
    pub output: Spanned<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Spanned<f64>>,
}

/// `client_betas`: a word (`"all"`, `"none"`) or the beta names let through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawClientBetas {
    Word(String),
    Names(Vec<String>),
}

impl RawProvider {
    pub fn new(base_url: impl Into<String>) -> RawProvider {
        RawProvider {
            base_url: Some(text(base_url)),
            servers: None,
            api: None,
            api_version: None,
            responses: None,
            client_betas: None,
            client_version: None,
            auth: None,
            tls: None,
            api_key: None,
            proxy: None,
            fixed_monthly_usd: None,
            warmup: false,
            affinity: None,
            affinity_prefix_bytes: None,
            timeout: RawTimeouts::default(),
            max_in_flight: None,
            retry_429_max_wait_ms: None,
            breaker: RawBreaker::default(),
            health: RawHealth::default(),
        }
    }
}

impl RawTier {
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> RawTier {
        RawTier {
            provider: text(provider),
            model: text(model),
            deployment: None,
            base_model: None,
            max_tokens: None,
            temperature: None,
            context_tokens: None,
            tools: None,
            json_schema: None,
            vision: None,
            timeout: RawTimeouts::default(),
        }
    }
}

impl RawRoute {
    pub fn new(kind: TaskKind, tiers: &[&str]) -> RawRoute {
        RawRoute {
            kind: spanned(kind),
            tiers: spanned(tiers.iter().map(|t| text(*t)).collect()),
            baseline: None,
            prompts: BTreeMap::new(),
            output: None,
            shadow: None,
            profile: None,
            when_all_open: None,
            budget: None,
            rpm: None,
            tpm: None,
            cache: None,
        }
    }
}
