//! `[prices."model"]`: USD per million tokens that extend and override the built-in price table
//! ([`crate::ledger::price`]); and what needs a price to be held: a shadow check's reference, a
//! budget's API tiers.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use std::sync::Arc;

use super::file::{ConfigFile, RawPrice, Text};
use super::kinds::OnExhausted;
use super::resolver::Resolver;
use super::{Route, Tier};

/// USD per million tokens of current models: input, input read from the prompt cache, input
/// written to it, output. Where a cache price is `None` it costs as much as input.
///
/// OpenAI's from its pricing page; OpenAI bills no cache writes. Anthropic's from
/// platform.claude.com's pricing and model pages (read 2026-12): a cache write at the 5-minute
/// price (1.25× input; a 1-hour write, 2× input, is reported by Anthropic in the same count and is
/// priced here as a 5-minute one); Sonnet 5.5's cache reads at $0.10 since Anthropic's cut of
/// 2026-10-07. Claude Haiku 5.5 is left out: it is billed at two prices by the prompt's length
/// (five times as much above 100K tokens), which one price per token would state falsely for
/// long prompts; give it a `[prices]` entry knowing that.
pub const BUILT_IN_PRICES: &[BuiltInPrice] = &[
    ("gpt-4o", 2.50, Some(1.25), None, 10.00),
    ("gpt-4o-mini", 0.15, Some(0.075), None, 0.60),
    ("gpt-4.1", 2.00, Some(0.50), None, 8.00),
    ("gpt-4.1-mini", 0.40, Some(0.10), None, 1.60),
    ("gpt-4.1-nano", 0.10, Some(0.025), None, 0.40),
    ("gpt-5", 1.25, Some(0.125), None, 10.00),
    ("gpt-5-mini", 0.25, Some(0.025), None, 2.00),
    ("gpt-5-nano", 0.05, Some(0.005), None, 0.40),
    ("o1", 15.00, Some(7.50), None, 60.00),
    ("o3", 2.00, Some(0.50), None, 8.00),
    ("o3-mini", 1.10, Some(0.55), None, 4.40),
    ("o4-mini", 1.10, Some(0.275), None, 4.40),
    ("gpt-4-turbo", 10.00, None, None, 30.00),
    ("gpt-3.5-turbo", 0.50, None, None, 1.50),
    ("text-embedding-3-small", 0.02, None, None, 0.0),
    ("text-embedding-3-large", 0.13, None, None, 0.0),
    ("text-embedding-ada-002", 0.10, None, None, 0.0),
    ("claude-fable-5-2", 8.00, Some(0.20), Some(10.00), 40.00),
    ("claude-fable-5-1", 10.00, Some(0.25), Some(12.50), 50.00),
    ("claude-fable-5", 10.00, Some(1.00), Some(12.50), 50.00),
    ("claude-opus-5-5", 4.00, Some(0.20), Some(5.00), 20.00),
    ("claude-opus-5", 5.00, Some(0.50), Some(6.25), 25.00),
    ("claude-opus-4-8", 5.00, Some(0.50), Some(6.25), 25.00),
    ("claude-opus-4-7", 5.00, Some(0.50), Some(6.25), 25.00),
    ("claude-opus-4-6", 5.00, Some(0.50), Some(6.25), 25.00),
    ("claude-opus-4-5", 5.00, Some(0.50), Some(6.25), 25.00),
    ("claude-sonnet-5-5", 2.00, Some(0.10), Some(2.50), 10.00),
    ("claude-sonnet-5", 2.00, Some(0.20), Some(2.50), 10.00),
    ("claude-sonnet-4-6", 3.00, Some(0.30), Some(3.75), 15.00),
    ("claude-sonnet-4-5", 3.00, Some(0.30), Some(3.75), 15.00),
    ("claude-haiku-4-5", 1.00, Some(0.10), Some(1.25), 5.00),
];

/// A model and its USD per million tokens: input, cache reads, cache writes, output.
pub type BuiltInPrice = (&'static str, f64, Option<f64>, Option<f64>, f64);

/// Whether `model` has a price: one the file sets or a built-in one, a dated snapshot
/// (`gpt-4o-2024-08-06`) by its family's.
pub fn has_price(model: &str, overrides: &BTreeMap<String, Price>) -> bool {
    let known =
        |name: &str| overrides.contains_key(name) || BUILT_IN_PRICES.iter().any(|p| p.0 == name);
    known(model) || super::undated(model).is_some_and(known)
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input served from the provider's prompt cache; the input price where none is given.
    pub cached_input: Option<f64>,
    /// Input written to the provider's prompt cache (Anthropic's); the input price where none is
    /// given.
    pub cache_write: Option<f64>,
}

impl Resolver<'_> {
    pub(super) fn prices(&mut self, raw: &BTreeMap<Text, RawPrice>) -> BTreeMap<String, Price> {
        let mut prices = BTreeMap::new();
        for (model, price) in raw {
            let key = format!("prices.{:?}", model.get_ref());
            let mut amount = |value: &Spanned<f64>, field: &str| {
                let ok = value.get_ref().is_finite() && *value.get_ref() >= 0.0;
                if !ok {
                    self.issue_at(
                        value.span().start,
                        &format!("{key}.{field}"),
                        "must be USD per million tokens, 0 or more",
                    );
                }
                *value.get_ref()
            };
            let input = amount(&price.input, "input");
            let output = amount(&price.output, "output");
            let cached_input = price
                .cached_input
                .as_ref()
                .map(|c| amount(c, "cached_input"));
            let cache_write = price.cache_write.as_ref().map(|c| amount(c, "cache_write"));
            prices.insert(
                model.get_ref().clone(),
                Price {
                    input,
                    output,
                    cached_input,
                    cache_write,
                },
            );
        }
        prices
    }

    /// A shadow check's daily budget holds only if each call's cost is known before it is made:
    /// a shadowed route whose reference is a paid model without a price is refused, with the
    /// price to add. (Its primary, checked in reverse once demoted, is usually a local server;
    /// without a price its calls are recorded without cost, as on the request path.)
    pub(super) fn shadow_prices(
        &mut self,
        file: &ConfigFile,
        routes: &[Arc<Route>],
        prices: &BTreeMap<String, Price>,
    ) {
        for route in routes {
            let (Some(shadow), Some(raw)) = (
                &route.shadow,
                file.routes
                    .get(route.name.as_str())
                    .and_then(|raw| raw.shadow.as_ref()),
            ) else {
                continue;
            };
            let tier = &shadow.reference;
            if !tier.is_local() && !has_price(tier.priced_as(), prices) {
                self.issue_at(
                    raw.reference.span().start,
                    &format!("routes.{}.shadow.reference", route.name),
                    &format!(
                        "tier {} calls model {:?}, which has no known price, so the shadow check's daily_budget_usd cannot be held; add [prices.{:?}] with input and output in USD per million tokens",
                        tier.name,
                        tier.priced_as(),
                        tier.priced_as()
                    ),
                );
            }
        }
    }

    /// A budget is held by pricing each call: one over a tier whose model has no price could never
    /// be spent. Warns where a route has no local tier to fall back to once its budget is spent.
    pub(super) fn budget_prices(
        &mut self,
        file: &ConfigFile,
        routes: &[Arc<Route>],
        tiers: &[Arc<Tier>],
        prices: &BTreeMap<String, Price>,
    ) {
        let unpriced = |tier: &&Arc<Tier>| !tier.is_local() && !has_price(&tier.model, prices);
        let listed = |tiers: Vec<&Arc<Tier>>| {
            tiers
                .iter()
                .map(|tier| format!("{} ({:?})", tier.name, tier.model))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(raw) = &file.budget {
            let missing: Vec<&Arc<Tier>> = tiers.iter().filter(unpriced).collect();
            if !missing.is_empty() {
                self.issue_at(
                    raw.monthly_usd.span().start,
                    "budget.monthly_usd",
                    &format!(
                        "cannot be held: tiers {} call models with no known price; add [prices.\"<model>\"] for each, or fixed_monthly_usd on their provider if it is not billed per token",
                        listed(missing)
                    ),
                );
            }
        }
        for route in routes {
            let Some(raw) = file
                .routes
                .get(route.name.as_str())
                .and_then(|raw| raw.budget.as_ref())
            else {
                continue;
            };
            let key = format!("routes.{}.budget", route.name);
            let chain: Vec<&Arc<Tier>> = route.chain.iter().map(|step| &step.tier).collect();
            let missing: Vec<&Arc<Tier>> = chain.iter().copied().filter(unpriced).collect();
            if !missing.is_empty() {
                self.issue_at(
                    raw.monthly_usd.span().start,
                    &format!("{key}.monthly_usd"),
                    &format!(
                        "cannot be held: tiers {} call models with no known price; add [prices.\"<model>\"] for each, or fixed_monthly_usd on their provider if it is not billed per token",
                        listed(missing)
                    ),
                );
            }
            if chain.iter().all(|tier| tier.is_local()) {
                self.warnings.push(format!(
                    "{key}: route {} has no API tier, and local calls cost nothing at the margin: this budget never applies; remove it, or add the API tier it is meant to bound",
                    route.name
                ));
                continue;
            }
            let on_exhausted = raw.on_exhausted.as_ref().map(|value| *value.get_ref());
            if on_exhausted != Some(OnExhausted::Reject)
                && !chain.iter().any(|tier| tier.is_local())
            {
                self.warnings.push(format!(
                    "{key}: route {} has no local tier, so once its budget is spent it answers 429 insufficient_quota; add a local tier to its chain to keep serving, or set on_exhausted = \"reject\" to say so",
                    route.name
                ));
            }
        }
    }

    /// A key's budget is held over the tiers the key may reach: its routes' chains, or every tier
    /// where it may call any.
    pub(super) fn key_budget_prices(
        &mut self,
        file: &ConfigFile,
        keys: &[Arc<super::ClientKey>],
        routes: &[Arc<Route>],
        tiers: &[Arc<Tier>],
        prices: &BTreeMap<String, Price>,
    ) {
        for key in keys {
            let (Some(name), Some(_)) = (&key.terms.name, key.terms.budget) else {
                continue;
            };
            let Some(raw) = file
                .keys
                .get(name.as_str())
                .and_then(|raw| raw.budget.as_ref())
            else {
                continue;
            };
            let reached: Vec<&Arc<Tier>> = match &key.terms.routes {
                Some(allowed) => routes
                    .iter()
                    .filter(|route| allowed.contains(&route.name))
                    .flat_map(|route| route.chain.iter().map(|step| &step.tier))
                    .collect(),
                None => tiers.iter().collect(),
            };
            let mut missing: Vec<&Arc<Tier>> = reached
                .into_iter()
                .filter(|tier| !tier.is_local() && !has_price(&tier.model, prices))
                .collect();
            missing.sort_by(|a, b| a.name.cmp(&b.name));
            missing.dedup_by(|a, b| a.name == b.name);
            if !missing.is_empty() {
                let listed: Vec<String> = missing
                    .iter()
                    .map(|tier| format!("{} ({:?})", tier.name, tier.model))
                    .collect();
                self.issue_at(
                    raw.monthly_usd.span().start,
                    &format!("keys.{name}.budget.monthly_usd"),
                    &format!(
                        "cannot be held: tiers {} call models with no known price; add [prices.\"<model>\"] for each, or fixed_monthly_usd on their provider if it is not billed per token",
                        listed.join(", ")
                    ),
                );
            }
        }
    }
}
