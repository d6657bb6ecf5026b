//! The configuration file exactly as written: serde structs that mirror the TOML, with spans kept on
//! every value that is checked later, so that an error can point at its line. Nothing outside
//! `config` sees these types; `resolve` turns them into the ones the gateway runs on.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Text>,
    pub api_keys: Option<Vec<Text>>,
    pub admin_key: Option<Text>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub shutdown_grace_ms: Option<u64>,
    pub threads: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub url: Option<Text>,
    #[serde(default)]
    pub store_content: bool,
    pub request_log: Option<Text>,
    pub queue: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub base_url: Text,
    pub api_key: Option<Text>,
    pub fixed_monthly_usd: Option<Spanned<f64>>,
    #[serde(default)]
    pub warmup: bool,
    #[serde(default)]
    pub timeout: RawTimeouts,
    pub max_in_flight: Option<Spanned<u32>>,
    pub retry_429_max_wait_ms: Option<u64>,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default)]
    pub health: RawHealth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<Spanned<u32>>,
    pub error_rate: Option<Spanned<f64>>,
    pub min_requests: Option<u32>,
    pub window_ms: Option<u64>,
    pub cooldown_ms: Option<u64>,
    pub max_cooldown_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub enabled: Option<bool>,
    pub path: Option<Text>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub provider: Text,
    pub model: Text,
    pub max_tokens: Option<u32>,
    pub temperature: Option<Spanned<f64>>,
    #[serde(default)]
    pub timeout: RawTimeouts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub kind: Spanned<String>,
    pub tiers: Spanned<Vec<Text>>,
    pub baseline: Option<Text>,
    #[serde(default)]
    pub prompts: BTreeMap<Text, Text>,
    pub output: Option<RawOutput>,
    pub shadow: Option<RawShadow>,
    pub profile: Option<RawProfile>,
    pub when_all_open: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub labels: Option<Spanned<Vec<Text>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub reference: Text,
    pub sample_rate: Spanned<f64>,
    pub min_agreement: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub quality: Option<Text>,
    pub latency_tolerance_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Spanned<f64>,
    pub output: Spanned<f64>,
    pub cached_input: Option<Spanned<f64>>,
}
