//! `[prices."model"]`: USD per million tokens that extend and override the built-in price table
//! ([`crate::ledger::price`]).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Route;
use super::file::{ConfigFile, RawPrice, Text};
use super::resolver::Resolver;
use crate::ledger::price::PriceTable;

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

    /// A shadow check's daily budget holds only if each call's cost is known before it is made:
    /// a shadowed route whose reference is a paid model without a price is refused, with the
    /// price to add. (Its primary, checked in reverse once demoted, is usually a local server;
    /// without a price its calls are recorded without cost, as on the request path.)
    pub(super) fn shadow_prices(
        &mut self,
        file: &ConfigFile,
        routes: &[std::sync::Arc<Route>],
        prices: &BTreeMap<String, Price>,
    ) {
        let table = PriceTable::new(prices);
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
            if !tier.is_local() && table.get(&tier.model).is_none() {
                self.issue_at(
                    raw.reference.span().start,
                    &format!("routes.{}.shadow.reference", route.name),
                    &format!(
                        "tier {} calls model {:?}, which has no known price, so the shadow check's daily_budget_usd cannot be held; add [prices.{:?}] with input and output in USD per million tokens",
                        tier.name, tier.model, tier.model
                    ),
                );
            }
        }
    }
}
