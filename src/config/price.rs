//! `[prices."model"]`: USD per million tokens that extend and override the built-in price table
//! ([`crate::ledger::price`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::file::{RawPrice, Text};
use super::resolver::Resolver;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input served from the provider's prompt cache; the input price where none is given.
    pub cached_input: Option<f64>,
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
            prices.insert(
                model.get_ref().clone(),
                Price {
                    input,
                    output,
                    cached_input,
                },
            );
        }
        prices
    }
}
