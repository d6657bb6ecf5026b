//! Budgets: dollars a calendar month (UTC) of API spend — of all API traffic (`[budget]`), of a
//! route (`routes.<name>.budget`) or of a named key — what a request meets once one is spent
//! (`on_exhausted`), and the share at which it first alerts.

use super::file::RawBudget;
use super::kinds::OnExhausted;
use super::resolver::Resolver;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub monthly_usd: f64,
    /// The same in picodollars, as the ledger counts money.
    pub monthly_pusd: i64,
    pub on_exhausted: OnExhausted,
    /// The share of the budget at which the first alert fires; the second fires at 100%.
    pub alert_at: f64,
}

/// What a budget covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BudgetScope {
    /// Every API call (`[budget]`).
    All,
    /// The calls of one route (`routes.<name>.budget`).
    Route(String),
    /// The calls made with one named key (`keys.<name>.budget`).
    Key(String),
}

impl BudgetScope {
    /// `all`, `route` or `key`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetScope::All => "all",
            BudgetScope::Route(_) => "route",
            BudgetScope::Key(_) => "key",
        }
    }

    /// The route's or key's name; empty for all API spend.
    pub fn name(&self) -> &str {
        match self {
            BudgetScope::All => "",
            BudgetScope::Route(name) | BudgetScope::Key(name) => name,
        }
    }

    pub fn from_parts(kind: &str, name: &str) -> Option<BudgetScope> {
        match kind {
            "all" => Some(BudgetScope::All),
            "route" => Some(BudgetScope::Route(name.to_string())),
            "key" => Some(BudgetScope::Key(name.to_string())),
            _ => None,
        }
    }
}

impl std::fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetScope::All => f.write_str("all API spend"),
            BudgetScope::Route(name) => write!(f, "route {name}"),
            BudgetScope::Key(name) => write!(f, "key {name}"),
        }
    }
}

impl Budget {
    pub const DEFAULT_ALERT_AT: f64 = 0.8;
    /// Nine million dollars: about the most a 64-bit count of picodollars holds.
    pub const MAX_USD: f64 = 9_000_000.0;
}

impl super::Config {
    /// Every budget configured: all API spend first, then the routes' and the keys' in order.
    pub fn budgets(&self) -> impl Iterator<Item = (BudgetScope, Budget)> + '_ {
        let all = self.budget.map(|budget| (BudgetScope::All, budget));
        let routes = self.routes.iter().filter_map(|route| {
            route
                .budget
                .map(|budget| (BudgetScope::Route(route.name.clone()), budget))
        });
        let keys =
            self.server.api_keys.iter().filter_map(|key| {
                Some((BudgetScope::Key(key.terms.name.clone()?), key.terms.budget?))
            });
        all.into_iter().chain(routes).chain(keys)
    }
}

impl Resolver<'_> {
    /// A budget at `key` (`budget`, `routes.<name>.budget` …).
    pub(super) fn budget(&mut self, raw: &RawBudget, key: &str) -> Option<Budget> {
        let usd = *raw.monthly_usd.get_ref();
        let monthly_usd = if usd.is_finite() && (0.0..=Budget::MAX_USD).contains(&usd) {
            Some(usd)
        } else {
            self.issue_at(
                raw.monthly_usd.span().start,
                &format!("{key}.monthly_usd"),
                "must be a number of dollars from 0 to 9000000",
            );
            None
        };
        let alert_at = match &raw.alert_at {
            Some(share) if *share.get_ref() > 0.0 && *share.get_ref() <= 1.0 => {
                Some(*share.get_ref())
            }
            Some(share) => {
                self.issue_at(
                    share.span().start,
                    &format!("{key}.alert_at"),
                    "must be a share of the budget above 0 and at most 1 (0.8 alerts at 80%)",
                );
                None
            }
            None => Some(Budget::DEFAULT_ALERT_AT),
        };
        let monthly_usd = monthly_usd?;
        if monthly_usd == 0.0 {
            // Meant at times (API tiers closed to a route), so a warning, not an error.
            self.warnings.push(format!(
                "{key}.monthly_usd = 0: no API call is ever admitted under this budget (each request is moved to a local tier or refused); leave the budget out for no limit"
            ));
        }
        Some(Budget {
            monthly_usd,
            monthly_pusd: (monthly_usd * 1e12).round() as i64,
            on_exhausted: raw
                .on_exhausted
                .as_ref()
                .map_or(OnExhausted::default(), |value| *value.get_ref()),
            alert_at: alert_at?,
        })
    }
}
