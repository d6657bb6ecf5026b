//! Budgets as an operator reads them: for each budget configured, this month's spend (its calls and
//! the corrections made to it), its limit and the share spent, what requests in flight hold of it
//! (only the gateway knows), and the month-end spend projected at the rate seen so far — only once
//! the month holds `[report] project_after_hours` of traffic, as reports project, and otherwise no
//! figure but the reason. `tierwise budget show` and `/admin/api/budgets` give the same figures.
//!
//! In a report, each route's [`BudgetEffects`]: the requests a spent budget moved to a local tier
//! and what they would have cost on the API tier passed over, and the requests it refused.

use serde::Serialize;

use super::{RouteReport, plural, span_of};
use crate::config::{BudgetScope, Config};
use crate::ledger::budget::{BudgetMoves, Month, MonthSpend};
use crate::ledger::{NO_ROUTE, Picodollars, Pricing, Tokens};

/// One budget this month.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetFigures {
    /// `all`, `route` or `key`.
    pub scope: &'static str,
    /// The route's or key's name; `null` for all API spend.
    pub name: Option<String>,
    /// `2026-12`.
    pub month: String,
    pub monthly_usd: f64,
    /// The month's spend: its calls and the corrections made to it.
    pub spent_usd: f64,
    /// The corrections alone (`tierwise budget reset|adjust`), already in `spent_usd`.
    pub adjusted_usd: f64,
    /// What requests in flight hold of the budget until they end; `null` where only the ledger
    /// was read (`tierwise budget show`).
    pub reserved_usd: Option<f64>,
    /// `spent_usd / monthly_usd`; `null` for a budget of 0.
    pub share: Option<f64>,
    pub on_exhausted: &'static str,
    pub alert_at: f64,
    /// The spend at the month's end at the rate seen so far; `null` until the month holds enough
    /// traffic, and then `projection` says why.
    pub projected_usd: Option<f64>,
    pub projection: Option<String>,
    /// The day (UTC, `2026-12-04`) the spend reaches the budget at the rate seen so far, where
    /// that is before the month ends: `on_exhausted` stops API spend there, and the projection
    /// stops with it.
    pub spent_on: Option<String>,
}

/// A budget's spend and reservations as the gateway holds them now, where it is the gateway asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub spent: Picodollars,
    pub reserved: Picodollars,
}

/// Every budget of `config` for `month`, from the ledger's `spend`, with what the gateway holds
/// (`live`) where it is asked.
pub fn figures(
    config: &Config,
    month: Month,
    spend: &MonthSpend,
    now_ms: i64,
    live: &dyn Fn(&BudgetScope) -> Option<Live>,
) -> Vec<BudgetFigures> {
    let needed = config.report.project_after;
    // The rate is that of the month's traffic, from its first call: a gateway first started on
    // the 20th has not spent nothing for nineteen days.
    let seen_from = spend.first_ms.unwrap_or(now_ms).max(month.start_ms());
    let seen = std::time::Duration::from_millis((now_ms - seen_from).max(0) as u64);
    let left_ms = (month.end_ms() - now_ms).max(0);
    config
        .budgets()
        .map(|(scope, budget)| {
            let now = live(&scope);
            let spent = now.map_or_else(|| spend.total(&scope), |live| live.spent);
            let calls = spend.calls.of(&scope).as_usd_f64();
            let mut spent_on = None;
            let (projected_usd, projection) = if spend.first_ms.is_none() {
                (None, Some("no call this month yet".to_string()))
            } else if seen < needed || seen.is_zero() {
                (
                    None,
                    Some(format!(
                        "{} of the month's traffic is under the {} a projection needs ([report] project_after_hours)",
                        span_of(seen),
                        span_of(needed)
                    )),
                )
            } else {
                let rate = calls / seen.as_millis() as f64;
                let spent = spent.as_usd_f64();
                let unbounded = spent + rate * left_ms as f64;
                // Every on_exhausted stops API spend at the budget (past it by at most what one
                // reservation under-estimated), so the month ends there, not at the rate's end.
                if unbounded > budget.monthly_usd {
                    let to_go = (budget.monthly_usd - spent).max(0.0);
                    spent_on = Some(day_of(now_ms.saturating_add((to_go / rate) as i64)));
                }
                (Some(unbounded.min(spent.max(budget.monthly_usd))), None)
            };
            BudgetFigures {
                scope: scope.kind(),
                name: (scope != BudgetScope::All).then(|| scope.name().to_string()),
                month: month.to_string(),
                monthly_usd: budget.monthly_usd,
                spent_usd: spent.as_usd_f64(),
                adjusted_usd: spend.adjustments.of(&scope).as_usd_f64(),
                reserved_usd: now.map(|live| live.reserved.as_usd_f64()),
                share: (budget.monthly_pusd > 0)
                    .then(|| spent.0 as f64 / budget.monthly_pusd as f64),
                on_exhausted: budget.on_exhausted.as_str(),
                alert_at: budget.alert_at,
                projected_usd,
                projection,
                spent_on,
            }
        })
        .collect()
}

/// `2026-12-04`: the day (UTC) of `ts_ms`.
fn day_of(ts_ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(ts_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The figures as `tierwise budget show` prints them.
pub fn to_table(figures: &[BudgetFigures]) -> String {
    use std::fmt::Write as _;
    if figures.is_empty() {
        return "no budget is configured ([budget], routes.<name>.budget)\n".to_string();
    }
    let mut out = format!(
        "{:<24} {:>8} {:>12} {:>12} {:>7} {:>14}  {}\n",
        "budget", "month", "spent", "budget", "share", "month-end", "once spent"
    );
    for row in figures {
        let name = match &row.name {
            Some(name) => format!("{} {name}", row.scope),
            None => "all API spend".to_string(),
        };
        let share = row
            .share
            .map_or("-".to_string(), |share| format!("{:.1}%", share * 100.0));
        let projected = row
            .projected_usd
            .map_or("-".to_string(), |usd| format!("${usd:.4}"));
        let _ = writeln!(
            out,
            "{name:<24} {:>8} {:>12} {:>12} {share:>7} {projected:>14}  {}",
            row.month,
            format!("${:.4}", row.spent_usd),
            // As configured: a budget of $0.00072 is not "$0.00".
            format!("${}", row.monthly_usd),
            row.on_exhausted,
        );
        if let Some(day) = &row.spent_on {
            let _ = writeln!(
                out,
                "  spent on {day} at this month's rate; on_exhausted = {} from then",
                row.on_exhausted
            );
        }
        if row.adjusted_usd != 0.0 {
            let _ = writeln!(
                out,
                "  of which corrections: ${:.4} (tierwise budget reset|adjust)",
                row.adjusted_usd
            );
        }
    }
    if let Some(why) = figures.iter().find_map(|row| row.projection.as_ref()) {
        let _ = writeln!(out, "month-end not projected: {why}");
    }
    out
}

/// What budgets did to one route's requests in a report's window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BudgetEffects {
    /// Requests a spent budget moved off the API tiers to a local one.
    pub moved_to_local: u64,
    /// Of those, the ones the local tier answered.
    pub answered_locally: u64,
    /// What the moved requests would have cost on the API tier passed over first, for the tokens
    /// they used, at its model's price today; `null` where that model has no price.
    pub would_have_cost_usd: Option<String>,
    /// The API tiers passed over first.
    pub passed_over: Vec<String>,
    /// Requests a budget refused (429 `insufficient_quota`).
    pub refused: u64,
    /// The budgets over the route's calls, any of which may have been the spent one: the
    /// route's, those of the keys that may call it, all API spend's (`route summarize`, `key
    /// batch`, `all API spend`).
    pub budgets: Vec<String>,
}

impl BudgetEffects {
    /// One line of `tierwise report`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut parts = Vec::new();
        if self.moved_to_local > 0 {
            let cost = match &self.would_have_cost_usd {
                Some(usd) => format!("${usd}"),
                None => "an unknown amount (no price)".to_string(),
            };
            parts.push(format!(
                "a spent budget moved {} to local ({} answered), which would have cost {cost} on {}",
                plural(self.moved_to_local, "call", "calls"),
                self.answered_locally,
                self.passed_over.join(", ")
            ));
        }
        if self.refused > 0 {
            parts.push(format!(
                "a spent budget refused {} (429 insufficient_quota)",
                plural(self.refused, "call", "calls")
            ));
        }
        let mut line = parts.join("; ");
        if !self.budgets.is_empty() {
            let _ = write!(
                line,
                " — budgets over these calls: {}",
                self.budgets.join(", ")
            );
        }
        line
    }
}

/// The budgets over `route`'s calls: its own, those of the keys that may call it, and all API
/// spend's.
fn budgets_over(config: &Config, route: &str) -> Vec<String> {
    config
        .budgets()
        .filter(|(scope, _)| match scope {
            BudgetScope::All => true,
            BudgetScope::Route(name) => name == route,
            BudgetScope::Key(name) => config.server.api_keys.iter().any(|key| {
                key.terms.name.as_deref() == Some(name.as_str())
                    && key
                        .terms
                        .routes
                        .as_ref()
                        .is_none_or(|routes| routes.iter().any(|allowed| allowed == route))
            }),
        })
        .map(|(scope, _)| scope.to_string())
        .collect()
}

/// Sets each route's budget effects from the ledger's sums.
pub fn add_effects(
    config: &Config,
    routes: &mut [RouteReport],
    moves: &[BudgetMoves],
    refused: &[(Option<String>, u64)],
) {
    let pricing = Pricing::new(config);
    for report in routes {
        let named = |route: &Option<String>| route.as_deref().unwrap_or(NO_ROUTE) == report.route;
        let mut effects = BudgetEffects::default();
        let mut cost = Some(Picodollars(0));
        for moved in moves.iter().filter(|moved| named(&moved.route)) {
            effects.moved_to_local += moved.calls;
            effects.answered_locally += moved.answered;
            effects.passed_over.push(moved.tier.clone());
            let tokens = Tokens {
                input: moved.tokens_in,
                cached: moved.tokens_cached,
                output: moved.tokens_out,
                // Served locally: nothing was written to a provider's prompt cache.
                cache_write: 0,
                estimated: false,
            };
            let priced = config
                .tiers
                .iter()
                .find(|tier| tier.name == moved.tier)
                .and_then(|tier| pricing.price(tier, None, &tokens).cost);
            cost = cost
                .zip(priced)
                .map(|(sum, one)| Picodollars::saturating(i128::from(sum.0) + i128::from(one.0)));
        }
        effects.would_have_cost_usd = cost.map(|cost| cost.to_string());
        effects.refused = refused
            .iter()
            .filter(|(route, _)| named(route))
            .map(|(_, calls)| calls)
            .sum();
        if effects.moved_to_local > 0 || effects.refused > 0 {
            effects.budgets = budgets_over(config, &report.route);
            report.budget = Some(effects);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget the rate would pass is projected at the budget, not past it, and says the day
    /// it is spent; one the rate stays under is projected at the rate.
    #[test]
    fn the_month_end_stops_at_the_budget_and_names_the_day_it_is_spent() {
        let config = Config::parse(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\napi = { provider = \"openai\", model = \"gpt-4o-mini\" }\n\
             [routes.r]\nkind = \"chat\"\ntiers = [\"api\"]\n\
             budget = { monthly_usd = 0.01, on_exhausted = \"reject\" }\n\
             [routes.wide]\nkind = \"chat\"\ntiers = [\"api\"]\n\
             budget = { monthly_usd = 100 }\n\
             [report]\nproject_after_hours = 0\n",
            std::path::Path::new("tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        let month = Month::parse("2026-12").unwrap();
        let mut spend = MonthSpend::default();
        // $0.002 on each route in the month's first day: $0.062 at that rate by its end.
        for route in ["r", "wide"] {
            spend
                .calls
                .routes
                .insert(route.to_string(), Picodollars(2_000_000_000));
        }
        spend.first_ms = Some(month.start_ms());
        let now = month.start_ms() + 86_400_000;
        let figures = figures(&config, month, &spend, now, &|_| None);
        let r = figures
            .iter()
            .find(|f| f.name.as_deref() == Some("r"))
            .unwrap();
        assert_eq!(r.projected_usd, Some(0.01), "{r:?}");
        // $0.008 to go at $0.002 a day from the 2nd's first moment: the 6th.
        assert_eq!(r.spent_on.as_deref(), Some("2026-12-06"), "{r:?}");
        assert!(to_table(&figures).contains("spent on 2026-12-06"));
        let wide = figures
            .iter()
            .find(|f| f.name.as_deref() == Some("wide"))
            .unwrap();
        let projected = wide.projected_usd.unwrap();
        assert!((projected - 0.062).abs() < 1e-9, "{wide:?}");
        assert_eq!(wide.spent_on, None);
    }

    /// A report's line names the budgets over a route's calls: a route without a budget of its
    /// own is not said to have one.
    #[test]
    fn a_report_names_the_budgets_over_a_routes_calls() {
        let config = Config::parse(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\napi = { provider = \"openai\", model = \"gpt-4o-mini\" }\n\
             [routes.open]\nkind = \"chat\"\ntiers = [\"api\"]\n\
             [routes.capped]\nkind = \"chat\"\ntiers = [\"api\"]\n\
             budget = { monthly_usd = 1 }\n\
             [keys.kb]\nkey = \"tw-kb-1\"\nbudget = { monthly_usd = 1 }\n\
             [keys.scoped]\nkey = \"tw-scoped-1\"\nroutes = [\"capped\"]\n\
             budget = { monthly_usd = 1 }\n",
            std::path::Path::new("tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        assert_eq!(budgets_over(&config, "open"), ["key kb"]);
        assert_eq!(
            budgets_over(&config, "capped"),
            ["route capped", "key kb", "key scoped"]
        );
        let effects = BudgetEffects {
            refused: 4,
            budgets: budgets_over(&config, "open"),
            ..BudgetEffects::default()
        };
        assert_eq!(
            effects.describe(),
            "a spent budget refused 4 calls (429 insufficient_quota) — budgets over these calls: key kb"
        );
    }
}
