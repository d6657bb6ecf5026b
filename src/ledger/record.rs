//! What the ledger keeps of one request and its attempts, and how a request's tokens become its
//! cost and its baseline cost.

use std::sync::Arc;

use super::price::{Picodollars, PriceTable};
use super::tokens::Uncounted;
use crate::config::{Config, Route, Tier};

/// Token counts of one answered request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    /// Counted by tierwise's tokenizer because the upstream reported no usage.
    pub estimated: bool,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub tier: String,
    pub provider: String,
    pub model: String,
    /// `ok`, or the failure reason (`connect_refused`, `http_503`, `breaker_open` …).
    pub outcome: String,
    pub latency_us: i64,
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub id: String,
    pub ts_ms: i64,
    pub endpoint: &'static str,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub error_kind: Option<String>,
    pub fallback: Option<String>,
    pub stream: bool,
    pub tokens: Tokens,
    pub latency_us: i64,
    pub ttfb_us: Option<i64>,
    /// `None` when the model has no known price: never a silent zero.
    pub cost: Option<Picodollars>,
    pub baseline: Option<Picodollars>,
    pub local: bool,
    pub client_key: Option<String>,
    pub contract: Option<&'static str>,
    pub prompt: Option<String>,
    pub answer: Option<String>,
    /// Every attempt in order when the request was not answered at its first try; empty when it
    /// was, since then its tier, provider and model above say which call served it.
    pub attempts: Vec<AttemptRecord>,
    /// Set when the upstream reported no usage on a stream: the ledger writer counts the tokens
    /// and prices them before storing; until then `tokens`, `cost` and `baseline` are unknown.
    pub to_count: Option<ToCount>,
}

/// A stream's tokens left for the ledger writer to count, and the tiers that price them.
#[derive(Debug, Clone)]
pub struct ToCount {
    pub uncounted: Uncounted,
    pub tier: Arc<Tier>,
    pub baseline: Option<Arc<Tier>>,
}

impl RequestRecord {
    /// Counts and prices the tokens left for the writer, if any.
    pub fn count(&mut self, pricing: &Pricing) {
        let Some(to_count) = self.to_count.take() else {
            return;
        };
        let tokens = to_count.uncounted.count();
        self.tokens = tokens;
        self.cost = pricing.cost(&to_count.tier, &tokens);
        self.baseline = to_count
            .baseline
            .as_ref()
            .and_then(|tier| pricing.cost(tier, &tokens));
    }
}

/// Turns tokens into dollars for tiers and routes.
#[derive(Debug, Clone)]
pub struct Pricing {
    table: PriceTable,
}

impl Pricing {
    /// The price table of `config`, and a warning for each API tier whose model has no price.
    pub fn new(config: &Config) -> (Pricing, Vec<String>) {
        let table = PriceTable::new(&config.prices);
        let warnings = config
            .tiers
            .iter()
            .filter(|tier| !is_local(tier) && table.get(&tier.model).is_none())
            .map(|tier| {
                format!(
                    "tier {} uses model {:?}, which has no known price: its calls are recorded with cost null; add [prices.{:?}] (or fixed_monthly_usd on provider {} if it is not billed per token)",
                    tier.name, tier.model, tier.model, tier.provider.name
                )
            })
            .collect();
        (Pricing { table }, warnings)
    }

    /// What a call to `tier` cost: nothing at the margin on a local tier (its server is a fixed
    /// cost), the model's price otherwise, `None` when that price is unknown.
    pub fn cost(&self, tier: &Tier, tokens: &Tokens) -> Option<Picodollars> {
        if is_local(tier) {
            return Some(Picodollars(0));
        }
        self.model_cost(&tier.model, tokens)
    }

    /// What the route's baseline model would have charged for the same tokens.
    pub fn baseline(&self, route: Option<&Route>, tokens: &Tokens) -> Option<Picodollars> {
        let baseline = route?.baseline.as_ref()?;
        self.cost(baseline, tokens)
    }

    pub fn model_cost(&self, model: &str, tokens: &Tokens) -> Option<Picodollars> {
        let price = self.table.get(model)?;
        Some(price.cost(tokens.input, tokens.cached, tokens.output))
    }
}

/// A tier is local when its provider is paid for as a fixed monthly cost rather than per token.
pub fn is_local(tier: &Tier) -> bool {
    tier.provider.fixed_monthly_usd.is_some()
}
