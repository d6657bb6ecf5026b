//! Money as data. Prices are USD per million tokens, from a built-in table of current OpenAI models
//! that `[prices."model"]` extends and overrides. Amounts are whole picodollars (10⁻¹² USD): a price
//! with up to six decimals per million tokens is a whole number of picodollars per token, so the cost
//! of any call is exact — no float ever touches a sum. [`Pricing::price`] is the one place tokens
//! become a request's cost and its baseline cost.

use std::collections::HashMap;
use std::fmt;

use super::tokens::Tokens;
use crate::config::{Config, Price, Tier};

/// Turns tokens into dollars for tiers.
#[derive(Debug, Clone)]
pub struct Pricing {
    table: PriceTable,
}

/// What one request cost and what its route's baseline model would have charged for it; `None`
/// where the model has no known price, never a silent zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priced {
    pub cost: Option<Picodollars>,
    pub baseline: Option<Picodollars>,
}

impl Pricing {
    pub fn new(config: &Config) -> Pricing {
        Pricing {
            table: PriceTable::new(&config.prices),
        }
    }

    /// A warning for each API tier whose model has no price: its calls are recorded with cost null.
    pub fn warnings(&self, config: &Config) -> Vec<String> {
        config
            .tiers
            .iter()
            .filter(|tier| !tier.is_local() && self.table.get(tier.priced_as()).is_none())
            .map(|tier| {
                let model = tier.priced_as();
                format!(
                    "tier {} uses model {model:?}, which has no known price: its calls are recorded with cost null; add [prices.{model:?}] (or fixed_monthly_usd on provider {} if it is not billed per token)",
                    tier.name, tier.provider.name
                )
            })
            .collect()
    }

    /// The cost of `tokens` on `tier`, and on the route's `baseline` tier where it has one.
    pub fn price(&self, tier: &Tier, baseline: Option<&Tier>, tokens: &Tokens) -> Priced {
        Priced {
            cost: self.cost(tier, tokens),
            baseline: baseline.and_then(|baseline| self.cost(baseline, tokens)),
        }
    }

    /// Nothing at the margin on a local tier (its server is a fixed cost), the model's price
    /// otherwise.
    fn cost(&self, tier: &Tier, tokens: &Tokens) -> Option<Picodollars> {
        if tier.is_local() {
            return Some(Picodollars(0));
        }
        let price = self.table.get(tier.priced_as())?;
        Some(price.cost_of(tokens))
    }
}

/// An amount of money in picodollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Picodollars(pub i64);

impl Picodollars {
    pub const PER_USD: i64 = 1_000_000_000_000;

    pub fn from_usd(usd: f64) -> Picodollars {
        Picodollars((usd * Self::PER_USD as f64).round() as i64)
    }

    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / Self::PER_USD as f64
    }
}

impl Picodollars {
    /// The amount, or the largest one representable when it is larger (about $9.2 million).
    pub fn saturating(amount: i128) -> Picodollars {
        Picodollars(amount.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

impl std::iter::Sum for Picodollars {
    /// Summed wide, so that no number of rows wraps around; saturates rather than overflows.
    fn sum<I: Iterator<Item = Picodollars>>(amounts: I) -> Picodollars {
        Picodollars::saturating(amounts.map(|amount| i128::from(amount.0)).sum())
    }
}

impl fmt::Display for Picodollars {
    /// The exact decimal amount in USD, without trailing zeros: `0.0000375`, `12.5`, `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = Self::PER_USD as u64;
        let (whole, frac) = (abs / per, abs % per);
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:012}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Picodollars per token for input, cached input, input written to the cache, and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrice {
    pub input: i64,
    pub cached_input: i64,
    pub cache_write: i64,
    pub output: i64,
}

impl TokenPrice {
    /// From USD per million tokens; cached input and cache writes cost as much as input where no
    /// price is given.
    pub fn from_per_million(price: &Price) -> TokenPrice {
        // USD per million tokens × 10¹² pUSD/USD ÷ 10⁶ tokens = price × 10⁶ pUSD per token.
        let per_token = |usd: f64| (usd * 1_000_000.0).round() as i64;
        TokenPrice {
            input: per_token(price.input),
            cached_input: per_token(price.cached_input.unwrap_or(price.input)),
            cache_write: per_token(price.cache_write.unwrap_or(price.input)),
            output: per_token(price.output),
        }
    }

    /// The cost of a call that wrote nothing to a prompt cache (see [`TokenPrice::cost_of`]).
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> Picodollars {
        self.cost_of(&Tokens {
            input,
            cached,
            cache_write: 0,
            output,
            estimated: false,
        })
    }

    /// The cost of one call: input read from the cache and input written to it each at its own
    /// price, the rest of the input at the input price, and the output.
    pub fn cost_of(&self, tokens: &Tokens) -> Picodollars {
        let cached = tokens.cached.min(tokens.input);
        let written = tokens.cache_write.min(tokens.input - cached);
        let fresh = tokens.input - cached - written;
        // Wide enough for any u64 count at any i64 price; beyond i64 is beyond any real bill.
        let cost = i128::from(fresh) * i128::from(self.input)
            + i128::from(cached) * i128::from(self.cached_input)
            + i128::from(written) * i128::from(self.cache_write)
            + i128::from(tokens.output) * i128::from(self.output);
        Picodollars::saturating(cost)
    }
}

/// The prices in force: built-in defaults with the configuration's overrides on top.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: HashMap<String, TokenPrice>,
}

impl PriceTable {
    pub fn new<'a>(overrides: impl IntoIterator<Item = (&'a String, &'a Price)>) -> PriceTable {
        let mut prices: HashMap<String, TokenPrice> = crate::config::BUILT_IN_PRICES
            .iter()
            .map(|&(model, input, cached_input, cache_write, output)| {
                let price = Price {
                    input,
                    output,
                    cached_input,
                    cache_write,
                };
                (model.to_string(), TokenPrice::from_per_million(&price))
            })
            .collect();
        for (model, price) in overrides {
            prices.insert(model.clone(), TokenPrice::from_per_million(price));
        }
        PriceTable { prices }
    }

    /// The price of `model`; a dated snapshot (`gpt-4o-2024-08-06`) falls back to its family.
    pub fn get(&self, model: &str) -> Option<TokenPrice> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        let undated = crate::config::undated(model)?;
        self.prices.get(undated).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tier billed per token, a local one (fixed cost) and one on a model with no price.
    fn config() -> Config {
        let toml = r#"
[providers.openai]
base_url = "http://127.0.0.1:9/v1"
[providers.gpu]
base_url = "http://127.0.0.1:9/v1"
fixed_monthly_usd = 90.5
[tiers]
mini = { provider = "openai", model = "gpt-4o-mini" }
frontier = { provider = "openai", model = "gpt-4o" }
local = { provider = "gpu", model = "mistral-7b" }
odd = { provider = "openai", model = "my-finetune" }
[routes.r]
kind = "chat"
tiers = ["local", "mini", "odd"]
"#;
        Config::parse(toml, std::path::Path::new("t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn each_tier_is_priced_as_it_is_billed() {
        let config = config();
        let pricing = Pricing::new(&config);
        let tier = |name: &str| config.tiers.iter().find(|t| t.name == name).unwrap();
        let tokens = Tokens {
            input: 1000,
            cached: 0,
            cache_write: 0,
            output: 100,
            estimated: false,
        };
        // 1000 × $0.15 + 100 × $0.60 per million; on gpt-4o, 1000 × $2.50 + 100 × $10.
        let mini = pricing.price(tier("mini"), Some(tier("frontier")), &tokens);
        assert_eq!(mini.cost, Some(Picodollars(210_000_000)));
        assert_eq!(mini.baseline, Some(Picodollars(3_500_000_000)));
        let local = pricing.price(tier("local"), None, &tokens);
        assert_eq!((local.cost, local.baseline), (Some(Picodollars(0)), None));
        assert_eq!(
            pricing.price(tier("odd"), None, &tokens).cost,
            None,
            "unknown, not zero"
        );
        assert_eq!(Picodollars::from_usd(90.5), Picodollars(90_500_000_000_000));
        assert_eq!(Picodollars::from_usd(0.000_000_15), Picodollars(150_000));
        assert_eq!(Picodollars(90_500_000_000_000).as_usd_f64(), 90.5);
    }

    #[test]
    fn only_per_token_tiers_without_a_price_are_warned_about() {
        let config = config();
        let warnings = Pricing::new(&config).warnings(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .starts_with("tier odd uses model \"my-finetune\", which has no known price"),
            "{warnings:?}"
        );
    }

    #[test]
    fn costs_are_exact_in_picodollars() {
        let table = PriceTable::new([]);
        let mini = table.get("gpt-4o-mini").unwrap();
        // 1 token of gpt-4o-mini input is $0.00000015 = 150,000 pUSD.
        assert_eq!(mini.cost(1, 0, 0), Picodollars(150_000));
        let gpt4o = table.get("gpt-4o").unwrap();
        // 1000 in (200 cached) + 500 out = 800×2.5 + 200×1.25 + 500×10 µUSD = 7250 µUSD.
        assert_eq!(gpt4o.cost(1000, 200, 500), Picodollars(7_250_000_000));
        assert_eq!(gpt4o.cost(1000, 200, 500).to_string(), "0.00725");
        assert_eq!(table.get("gpt-4o-2024-08-06"), Some(gpt4o));
        assert_eq!(table.get("mistral-7b"), None);
        // Only a real date is a snapshot suffix.
        for not_dated in [
            "gpt-4o-2024-08-xx",
            "gpt-4o_2024_08_06",
            "-2024-08-06",
            "2024-08-06",
        ] {
            assert_eq!(table.get(not_dated), None, "{not_dated}");
        }
    }

    #[test]
    fn huge_counts_and_sums_never_wrap() {
        let table = PriceTable::new([]);
        let o1 = table.get("o1").unwrap();
        // 10^13 output tokens at $60 per million: far past i64 picodollars, saturated not wrapped.
        assert_eq!(o1.cost(0, 0, 10_000_000_000_000), Picodollars(i64::MAX));
        assert_eq!(o1.cost(u64::MAX, u64::MAX, u64::MAX), Picodollars(i64::MAX));
        let sum: Picodollars = [Picodollars(i64::MAX), Picodollars(1), Picodollars(5)]
            .into_iter()
            .sum();
        assert_eq!(sum, Picodollars(i64::MAX));
        let sum: Picodollars = [Picodollars(i64::MAX), Picodollars(-10)].into_iter().sum();
        assert_eq!(sum, Picodollars(i64::MAX - 10));
    }

    #[test]
    fn overrides_win_and_amounts_print_exactly() {
        let custom = Price {
            input: 0.0375,
            output: 0.075,
            cached_input: None,
            cache_write: None,
        };
        let model = "gpt-4o".to_string();
        let table = PriceTable::new([(&model, &custom)]);
        assert_eq!(
            table.get("gpt-4o").unwrap().cost(3, 3, 1),
            Picodollars(3 * 37_500 + 75_000)
        );
        assert_eq!(Picodollars(187_500).to_string(), "0.0000001875");
        assert_eq!(
            Picodollars(12 * Picodollars::PER_USD + Picodollars::PER_USD / 2).to_string(),
            "12.5"
        );
        assert_eq!(Picodollars(0).to_string(), "0");
        assert_eq!(Picodollars(-1).to_string(), "-0.000000000001");
    }
}
