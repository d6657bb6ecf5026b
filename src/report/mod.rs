//! Cost and savings read back from the ledger: per route the traffic, the models, how much was served
//! locally, fallbacks, errors, latency and cost; below it the all-API baseline against what was
//! actually spent (API calls plus the fixed cost of local servers, shared among routes by tokens).
//! Figures are what the window observed; they are projected to a month only when the window holds
//! enough traffic to carry it (`[report] project_after_hours`, a day by default), and a projection
//! never exceeds what the config bounds (shadow checks their daily budget). `tierwise report` prints it; `/admin/api/report` serves the same numbers. The
//! ledger's database does the summing ([`crate::ledger::Summary`]); what is built here is a few
//! numbers per route, whatever the window holds. [`advise`] turns the same numbers into a verdict
//! per route. [`budget`] shows each budget's month, and what budgets did to each route's traffic.

pub mod advise;
pub mod budget;
pub mod keys;
pub mod simulate;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{Config, ScorerKind};
use crate::ledger::{LedgerError, NO_ROUTE, Picodollars, RouteSums, ServerLoad, Store, Summary};
use crate::quality::feedback::Truth;
use crate::quality::score::Answer;

/// Reports and simulations reckon a month as 30 days, as the article's own table does.
pub const DAYS_PER_MONTH: f64 = 30.0;
const DAY_MS: i64 = 86_400_000;

/// The time the report covers, in Unix milliseconds, `from` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Window {
    pub fn days(&self) -> f64 {
        (self.to_ms - self.from_ms).max(1) as f64 / DAY_MS as f64
    }

    /// A month over this window: what a cost seen in the window comes to in 30 days.
    fn monthly(&self, amount: Picodollars) -> f64 {
        amount.as_usd_f64() * DAYS_PER_MONTH / self.days()
    }
}

/// A window and whether it holds enough traffic to be projected: every per-day and per-month
/// figure of a report goes through here, so none can be made from a window too short to carry it.
#[derive(Debug, Clone, Copy)]
struct Projection {
    window: Window,
    on: bool,
}

impl Projection {
    fn month(&self, amount: Picodollars) -> Option<f64> {
        self.on.then(|| self.window.monthly(amount))
    }

    fn per_day(&self, count: u64) -> Option<f64> {
        self.on.then(|| count as f64 / self.window.days())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub calls: u64,
    /// `None` when the window is too short to project ([`Report::projected`]).
    pub calls_per_day: Option<f64>,
    pub avg_tokens_in: f64,
    pub avg_tokens_out: f64,
    pub models: Vec<String>,
    /// Share of answered calls served by a local tier.
    pub local_share: f64,
    pub fallbacks: u64,
    pub errors: u64,
    /// Calls whose tokens tierwise counted because the upstream reported none.
    pub estimated_calls: u64,
    /// Calls on a model with no known price: their cost is unknown, not zero.
    pub unpriced_calls: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// API spend in the window, exact.
    pub api_cost_usd: String,
    /// This route's share of local servers' fixed cost in the window.
    pub fixed_cost_usd: String,
    pub baseline_usd: String,
    /// API spend and fixed share over a month; `None` when the window is too short to project.
    pub monthly_cost_usd: Option<f64>,
    pub monthly_baseline_usd: Option<f64>,
    /// Requests the route's first tier did not answer, by why, with what they cost in the end:
    /// "4% of summaries went to the API because they were too long, $12 a month".
    pub moved_off_first_tier: Vec<MovedOff>,
    /// What its budgets did to it: requests moved to local, and refused; `None` where they did
    /// nothing.
    pub budget: Option<budget::BudgetEffects>,
    /// What checking this route's quality cost and found.
    pub quality: QualityReport,
    /// Requests its response cache answered (not among `calls`), and what they did not pay again:
    /// saved by the cache, apart from routing's saving against the baseline.
    pub cache_hits: u64,
    pub saved_by_cache_usd: String,
    pub monthly_saved_by_cache_usd: Option<f64>,
    #[serde(skip)]
    saved_by_cache: Picodollars,
    #[serde(skip)]
    api_cost: Picodollars,
    #[serde(skip)]
    baseline: Picodollars,
}

/// Product calls of one endpoint the clients called (its ledger name), over every route: the
/// same calls and API spend as the routes', cut the other way, so both add up to the totals.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub calls: u64,
    /// Its share of the window's calls.
    pub share: f64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// API spend in the window, exact, and over a month (`None`: not projected).
    pub api_cost_usd: String,
    pub monthly_api_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MovedOff {
    pub reason: String,
    pub calls: u64,
    /// Of `calls`, those a later tier answered (counted in the route's `fallbacks`); the rest
    /// failed (counted in its `errors`).
    pub answered: u64,
    /// Their share of the route's calls.
    pub share: f64,
    /// What they cost in the window, exact, and over a month (`None`: not projected).
    pub cost_usd: String,
    pub monthly_cost_usd: Option<f64>,
}

/// A route's quality in the window: agreement of each candidate tier with the reference (shadow
/// checks), how often the output contract rewrote each model's answers, accuracy against the
/// application's ground truth, and what the checking cost — apart from product traffic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QualityReport {
    pub agreement: Vec<Agreement>,
    pub contract: Vec<ContractReport>,
    /// Mean accuracy of the answers the application sent feedback for; `None` with none judged.
    pub accuracy: Option<f64>,
    pub feedback_judged: u64,
    /// Feedback that could not be judged: a label or value for an answer the ledger does not hold
    /// (`ledger.store_content` off).
    pub feedback_unjudged: u64,
    pub shadow_calls: u64,
    pub eval_calls: u64,
    /// Shadow and eval calls in the window, exact.
    pub checks_cost_usd: String,
    /// Shadow checks over a month, at most the route's shadow `daily_budget_usd` × 30; eval runs
    /// are occasional and not projected. `None` when the window is too short to project.
    pub monthly_checks_cost_usd: Option<f64>,
    /// The projection met the shadow budget and stands at it.
    pub monthly_checks_capped: bool,
    #[serde(skip)]
    checks_cost: Picodollars,
    #[serde(skip)]
    shadow_cost: Picodollars,
}

/// Shadow agreement of one candidate tier with its reference.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub tier: String,
    pub samples: u64,
    pub agreement: f64,
}

/// The output contract's work on one model's answers.
#[derive(Debug, Clone, Serialize)]
pub struct ContractReport {
    pub model: String,
    pub answers: u64,
    /// Share whose label had to be pulled out of a longer answer.
    pub rewritten_share: f64,
    /// Share that held no allowed label (or several).
    pub violated_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FixedCost {
    pub provider: String,
    pub monthly_usd: f64,
    /// The part of the monthly cost that falls in the window, exact; in a report of one route,
    /// that route's share of it.
    pub window_usd: String,
    /// Set when no route used the provider in the window, so no route carries its cost.
    pub unattributed: bool,
    #[serde(skip)]
    window: Picodollars,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub baseline_usd: String,
    pub api_usd: String,
    pub fixed_usd: String,
    /// Shadow and eval calls: what knowing the cheaper tiers are good enough costs.
    pub checks_usd: String,
    pub actual_usd: String,
    pub saving_usd: String,
    /// Calls in the window and those that failed, over every route.
    pub calls: u64,
    pub errors: u64,
    /// Over a month; each `None` when the window is too short to project. `monthly_actual_usd` is
    /// the sum of the three above it, and the saving the baseline less that.
    pub monthly_baseline_usd: Option<f64>,
    pub monthly_api_usd: Option<f64>,
    pub monthly_fixed_usd: Option<f64>,
    pub monthly_checks_usd: Option<f64>,
    pub monthly_actual_usd: Option<f64>,
    pub monthly_saving_usd: Option<f64>,
    /// Saving as a share of the baseline, in percent, over the window.
    pub saving_pct: f64,
    pub unpriced_calls: u64,
    /// Requests the routes' response caches answered, and what they did not pay again: saved by
    /// the cache, beside (not in) the routing saving above, which compares product calls with
    /// their baseline.
    pub cache_hits: u64,
    pub saved_by_cache_usd: String,
    pub monthly_saved_by_cache_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window: Window,
    pub days: f64,
    /// The window asked for began before the ledger's first record; it starts there instead.
    pub starts_at_first_record: bool,
    /// The window asked for ran past the ledger's last record; it ends there instead, so that
    /// hours without traffic do not shrink what the traffic shows.
    pub ends_at_last_record: bool,
    /// Whether per-day and per-month figures are given: only when the window holds at least
    /// `[report] project_after_hours` of traffic.
    pub projected: bool,
    /// Why they are not, when they are not.
    pub not_projected_because: Option<String>,
    pub routes: Vec<RouteReport>,
    /// The same calls by the endpoint called (`chat.completions`, `responses`, `embeddings`…).
    pub endpoints: Vec<EndpointReport>,
    pub fixed: Vec<FixedCost>,
    pub totals: Totals,
    /// Per server of each provider: its calls, answered, failed and unfinished.
    pub servers: Vec<ServerLoad>,
}

/// Feedback reports judged per route and report: the latest in the window. Each is an answer
/// scored, so the work a report asks for is bounded whatever the traffic was.
pub const FEEDBACK_JUDGED: i64 = 10_000;

/// Judges each report against the answer it is about: the sum of the scores, how many were
/// judged, and how many could not be (the answer was not stored).
fn judge_feedback(
    reports: Vec<(Option<String>, String, Option<String>)>,
    scorer: ScorerKind,
    labels: &[String],
) -> (f64, u64, u64) {
    let (mut sum, mut judged, mut unjudged) = (0.0, 0u64, 0u64);
    for (_, truth, answer) in reports {
        // A whole answer is stored as the completion the client got, a stream as its text.
        let answer =
            answer.map(
                |stored| match serde_json::from_str::<serde_json::Value>(&stored) {
                    Ok(value) if value.get("choices").is_some() => Answer::of_completion(&value),
                    _ => Answer::text(stored),
                },
            );
        match Truth::from_stored(&truth)
            .and_then(|truth| truth.judge(answer.as_ref(), scorer, labels))
        {
            Some(score) => {
                sum += score;
                judged += 1;
            }
            None => unjudged += 1,
        }
    }
    (sum, judged, unjudged)
}

impl Report {
    pub async fn load(
        config: &Config,
        store: &Store,
        window: Window,
        route: Option<&str>,
    ) -> Result<Report, LedgerError> {
        // A window reaching back before the ledger's first record starts at that record, and one
        // running past its last record ends there: a month of fixed cost is not charged against
        // minutes of traffic, calls per day are not spread over days with no gateway running, and
        // a projection does not shrink while no traffic arrives.
        let (mut window, mut starts, mut ends) = (window, false, false);
        if let Some((first, last)) = store.span().await? {
            if window.from_ms < first && first < window.to_ms {
                (window.from_ms, starts) = (first, true);
            }
            if window.from_ms <= last && last + 1 < window.to_ms {
                (window.to_ms, ends) = (last + 1, true);
            }
        }
        let mut summary = store.summary(window.from_ms, window.to_ms, route).await?;
        if route.is_some() {
            // A server's fixed cost is shared by every route's tokens on it.
            summary.local_tokens = store
                .summary(window.from_ms, window.to_ms, None)
                .await?
                .local_tokens;
        }
        let mut report = Report::build(config, &summary, window);
        report.servers = store.server_load(window.from_ms, window.to_ms).await?;
        report.starts_at_first_record = starts;
        report.ends_at_last_record = ends;
        let (moves, refused) = store
            .budget_effects(window.from_ms, window.to_ms, route)
            .await?;
        budget::add_effects(config, &mut report.routes, &moves, &refused);
        for route in &mut report.routes {
            let Some(configured) = config.routes.iter().find(|r| r.name == route.route) else {
                continue;
            };
            let Some(scorer) = configured
                .shadow
                .as_ref()
                .map(|shadow| shadow.scorer)
                .or_else(|| ScorerKind::for_task(configured.kind))
            else {
                continue;
            };
            let labels = configured.labels.clone().unwrap_or_default();
            let reports = store
                .feedback(window.from_ms, window.to_ms, &route.route, FEEDBACK_JUDGED)
                .await?;
            // Judging is scoring, CPU work on as many answers as there are reports: on a blocking
            // thread, never the serving thread an admin request arrived on.
            let judging =
                tokio::task::spawn_blocking(move || judge_feedback(reports, scorer, &labels));
            let (sum, judged, unjudged) = judging.await.unwrap_or_default();
            route.quality.accuracy = (judged > 0).then(|| sum / judged as f64);
            route.quality.feedback_judged = judged;
            route.quality.feedback_unjudged = unjudged;
        }
        Ok(report)
    }

    pub fn build(config: &Config, summary: &Summary, window: Window) -> Report {
        let needed = config.report.project_after;
        let held = std::time::Duration::from_millis((window.to_ms - window.from_ms).max(0) as u64);
        let projection = Projection {
            window,
            on: held >= needed && !summary.routes.is_empty(),
        };
        let not_projected_because = (!projection.on).then(|| {
            if summary.routes.is_empty() {
                "the window holds no traffic".to_string()
            } else {
                format!(
                    "{} of traffic is under the {} a projection needs ([report] project_after_hours)",
                    span_of(held),
                    span_of(needed)
                )
            }
        });
        // Fixed costs in the window, shared among routes by the tokens they ran on the provider.
        // A report of one route holds the tokens of every route (see `load`), so its share is its
        // own, not the whole server's; the server's cost counts in full only in a whole report.
        let in_report: std::collections::BTreeSet<&str> = summary
            .routes
            .iter()
            .map(|r| route_name(&r.route))
            .collect();
        let whole = summary
            .local_tokens
            .iter()
            .all(|used| in_report.contains(route_name(&used.route)));
        let mut fixed = Vec::new();
        let mut fixed_share: BTreeMap<&str, i128> = BTreeMap::new();
        for provider in &config.providers {
            let Some(monthly) = provider.fixed_monthly_usd else {
                continue;
            };
            let window_cost = Picodollars::from_usd(monthly).0 as i128
                * (window.to_ms - window.from_ms) as i128
                / (DAYS_PER_MONTH as i128 * DAY_MS as i128);
            let tokens: Vec<(&str, i128)> = summary
                .local_tokens
                .iter()
                .filter(|used| used.provider == provider.name)
                .map(|used| (route_name(&used.route), used.tokens))
                .collect();
            let total: i128 = tokens.iter().map(|(_, used)| used).sum();
            let mut shares: BTreeMap<&str, i128> = BTreeMap::new();
            if total > 0 {
                // Shares are rounded down; the remainder goes to the largest user so they sum exactly.
                let mut given = 0;
                for (route, used) in &tokens {
                    let share = window_cost * used / total;
                    given += share;
                    *shares.entry(route).or_default() += share;
                }
                if let Some((route, _)) = tokens.iter().max_by_key(|(_, used)| *used) {
                    *shares.entry(route).or_default() += window_cost - given;
                }
            }
            let here: i128 = if total == 0 {
                if whole { window_cost } else { 0 }
            } else {
                shares
                    .iter()
                    .filter(|(route, _)| in_report.contains(*route))
                    .map(|(_, share)| share)
                    .sum()
            };
            for (route, share) in shares {
                *fixed_share.entry(route).or_default() += share;
            }
            fixed.push(FixedCost {
                provider: provider.name.clone(),
                monthly_usd: monthly,
                window_usd: Picodollars::saturating(here).to_string(),
                unattributed: total == 0,
                window: Picodollars::saturating(here),
            });
        }

        let mut routes: Vec<RouteReport> = summary
            .routes
            .iter()
            .map(|sums| {
                let route = route_name(&sums.route);
                let mut report = route_report(
                    route,
                    sums,
                    Picodollars::saturating(fixed_share.get(route).copied().unwrap_or(0)),
                    projection,
                );
                report.moved_off_first_tier = summary
                    .moved
                    .iter()
                    .filter(|moved| moved.route == sums.route)
                    .map(|moved| MovedOff {
                        reason: moved.reason.clone(),
                        calls: moved.calls,
                        answered: moved.answered,
                        share: moved.calls as f64 / sums.calls.max(1) as f64,
                        cost_usd: moved.cost.to_string(),
                        monthly_cost_usd: projection.month(moved.cost),
                    })
                    .collect();
                let shadow_budget = config
                    .routes
                    .iter()
                    .find(|r| Some(&r.name) == sums.route.as_ref())
                    .and_then(|r| r.shadow.as_ref())
                    .map(|shadow| shadow.daily_budget_usd);
                report.quality = quality(summary, &sums.route, projection, shadow_budget);
                if let Some(hits) = summary.cache_hits.iter().find(|c| c.route == sums.route) {
                    report.cache_hits = hits.hits;
                    report.saved_by_cache = hits.avoided;
                    report.saved_by_cache_usd = hits.avoided.to_string();
                    report.monthly_saved_by_cache_usd = projection.month(hits.avoided);
                }
                report
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        let all_calls: u64 = summary.endpoints.iter().map(|e| e.calls).sum();
        let endpoints = summary
            .endpoints
            .iter()
            .map(|sums| EndpointReport {
                endpoint: sums.endpoint.clone(),
                calls: sums.calls,
                share: sums.calls as f64 / all_calls.max(1) as f64,
                errors: sums.errors,
                tokens_in: sums.tokens_in,
                tokens_out: sums.tokens_out,
                api_cost_usd: sums.cost.to_string(),
                monthly_api_usd: projection.month(sums.cost),
            })
            .collect();

        let sum = |f: fn(&RouteReport) -> Picodollars| {
            Picodollars::saturating(routes.iter().map(|r| f(r).0 as i128).sum())
        };
        let baseline = sum(|r| r.baseline);
        let api = sum(|r| r.api_cost);
        let fixed_total = Picodollars::saturating(fixed.iter().map(|f| f.window.0 as i128).sum());
        let checks = sum(|r| r.quality.checks_cost);
        let saved_by_cache = sum(|r| r.saved_by_cache);
        let actual =
            Picodollars::saturating(api.0 as i128 + fixed_total.0 as i128 + checks.0 as i128);
        let saving = Picodollars::saturating(baseline.0 as i128 - actual.0 as i128);
        let monthly_baseline = projection.month(baseline);
        let monthly_api = projection.month(api);
        let monthly_fixed = projection.month(fixed_total);
        // Each route's checks are capped by its own budget, so the month's checks are their sum.
        let monthly_checks = projection.on.then(|| {
            routes
                .iter()
                .filter_map(|r| r.quality.monthly_checks_cost_usd)
                .sum::<f64>()
        });
        let monthly_actual = monthly_api
            .zip(monthly_fixed)
            .zip(monthly_checks)
            .map(|((api, fixed), checks)| api + fixed + checks);
        let totals = Totals {
            baseline_usd: baseline.to_string(),
            api_usd: api.to_string(),
            fixed_usd: fixed_total.to_string(),
            checks_usd: checks.to_string(),
            actual_usd: actual.to_string(),
            saving_usd: saving.to_string(),
            calls: routes.iter().map(|r| r.calls).sum(),
            errors: routes.iter().map(|r| r.errors).sum(),
            monthly_baseline_usd: monthly_baseline,
            monthly_api_usd: monthly_api,
            monthly_fixed_usd: monthly_fixed,
            monthly_checks_usd: monthly_checks,
            monthly_actual_usd: monthly_actual,
            monthly_saving_usd: monthly_baseline
                .zip(monthly_actual)
                .map(|(baseline, actual)| baseline - actual),
            saving_pct: if baseline.0 > 0 {
                saving.0 as f64 * 100.0 / baseline.0 as f64
            } else {
                0.0
            },
            unpriced_calls: routes.iter().map(|r| r.unpriced_calls).sum(),
            cache_hits: routes.iter().map(|r| r.cache_hits).sum(),
            saved_by_cache_usd: saved_by_cache.to_string(),
            monthly_saved_by_cache_usd: projection.month(saved_by_cache),
        };
        Report {
            window,
            days: window.days(),
            starts_at_first_record: false,
            ends_at_last_record: false,
            projected: projection.on,
            not_projected_because,
            routes,
            endpoints,
            fixed,
            totals,
            servers: Vec::new(),
        }
    }

    /// The calls and API spend by endpoint, with the totals' line they add up to; nothing where
    /// the window holds no calls.
    fn endpoint_table(&self, out: &mut String, places: usize) {
        if self.endpoints.is_empty() {
            return;
        }
        let width = self
            .endpoints
            .iter()
            .map(|e| e.endpoint.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        let _ = writeln!(
            out,
            "\n{:<width$} {:>9} {:>6} {:>6} {:>19} {:>12}",
            "endpoint", "calls", "share", "errors", "tokens in / out", "API spend",
        );
        for e in &self.endpoints {
            let _ = writeln!(
                out,
                "{:<width$} {:>9} {:>5.1}% {:>6} {:>19} {:>12}",
                e.endpoint,
                e.calls,
                e.share * 100.0,
                e.errors,
                format!("{} / {}", e.tokens_in, e.tokens_out),
                usd_exact(&e.api_cost_usd, "0", places),
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>5.1}% {:>6} {:>19} {:>12}",
            "all endpoints",
            t.calls,
            100.0,
            t.errors,
            "",
            usd_exact(&t.api_usd, "0", places),
        );
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "route,calls,calls_per_day,avg_tokens_in,avg_tokens_out,models,local_share,fallbacks,errors,p50_ms,p95_ms,api_cost_usd,fixed_cost_usd,baseline_usd,monthly_cost_usd,monthly_baseline_usd\n",
        );
        // An empty cell where a figure is not projected: the window cannot carry it.
        let cell = |value: Option<f64>, places: usize| {
            value.map_or(String::new(), |v| format!("{v:.places$}"))
        };
        for r in &self.routes {
            let _ = writeln!(
                out,
                "{},{},{},{:.1},{:.1},{},{:.4},{},{},{:.1},{:.1},{},{},{},{},{}",
                csv_field(&r.route),
                r.calls,
                cell(r.calls_per_day, 2),
                r.avg_tokens_in,
                r.avg_tokens_out,
                csv_field(&r.models.join(" ")),
                r.local_share,
                r.fallbacks,
                r.errors,
                r.p50_ms,
                r.p95_ms,
                r.api_cost_usd,
                r.fixed_cost_usd,
                r.baseline_usd,
                cell(r.monthly_cost_usd, 2),
                cell(r.monthly_baseline_usd, 2)
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "TOTAL,{},,,,,,,{},,,{},{},{},{},{}",
            t.calls,
            t.errors,
            t.api_usd,
            t.fixed_usd,
            t.baseline_usd,
            cell(t.monthly_actual_usd, 2),
            cell(t.monthly_baseline_usd, 2)
        );
        out
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let held = std::time::Duration::from_millis(
            (self.window.to_ms - self.window.from_ms).max(0) as u64,
        );
        let clamped = match (self.starts_at_first_record, self.ends_at_last_record) {
            (true, true) => ", from the ledger's first record to its last",
            (true, false) => ", from the ledger's first record",
            (false, true) => ", to the ledger's last record",
            (false, false) => "",
        };
        let _ = writeln!(
            out,
            "tierwise report: {} to {} ({}{clamped})",
            timestamp(self.window.from_ms),
            timestamp(self.window.to_ms),
            span_of(held),
        );
        match &self.not_projected_because {
            Some(why) => {
                let _ = writeln!(
                    out,
                    "figures are what the window saw, not projected: {why}\n"
                );
            }
            None => {
                let _ = writeln!(out, "costs projected to a {DAYS_PER_MONTH}-day month\n");
            }
        }
        // The route column fits the longest name; models go last, so a long list of them
        // cannot push the other columns out of line.
        let width = self
            .routes
            .iter()
            .map(|r| r.route.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        let t = &self.totals;
        let places = places_for(
            [
                &t.baseline_usd,
                &t.api_usd,
                &t.fixed_usd,
                &t.checks_usd,
                &t.actual_usd,
                &t.saving_usd,
            ]
            .into_iter()
            .chain(
                self.routes
                    .iter()
                    .flat_map(|r| [&r.api_cost_usd, &r.baseline_usd]),
            )
            .map(String::as_str),
        );
        let (volume, cost, baseline) = if self.projected {
            ("calls/day", "cost/mo", "baseline/mo")
        } else {
            ("calls", "cost", "baseline")
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>6} {:>15} {:>6} {:>9} {:>8} {:>8} {:>12} {:>12}  models",
            "route",
            volume,
            "errors",
            "avg tok in/out",
            "local",
            "fallbacks",
            "p50 ms",
            "p95 ms",
            cost,
            baseline,
        );
        if self.routes.is_empty() {
            let _ = writeln!(out, "(no requests in this window)");
        }
        for r in &self.routes {
            let (volume, cost, baseline) =
                match (r.calls_per_day, r.monthly_cost_usd, r.monthly_baseline_usd) {
                    (Some(per_day), Some(cost), Some(baseline)) => {
                        (format!("{per_day:.1}"), usd(cost), usd(baseline))
                    }
                    _ => (
                        r.calls.to_string(),
                        usd_exact(&r.api_cost_usd, &r.fixed_cost_usd, places),
                        usd_exact(&r.baseline_usd, "0", places),
                    ),
                };
            let _ = writeln!(
                out,
                "{:<width$} {:>9} {:>6} {:>15} {:>5.1}% {:>9} {:>8.1} {:>8.1} {:>12} {:>12}  {}",
                r.route,
                volume,
                r.errors,
                format!("{:.0} / {:.0}", r.avg_tokens_in, r.avg_tokens_out),
                r.local_share * 100.0,
                r.fallbacks,
                r.p50_ms,
                r.p95_ms,
                cost,
                baseline,
                r.models.join(", "),
            );
        }
        for r in &self.routes {
            for moved in &r.moved_off_first_tier {
                let failed = moved.calls - moved.answered.min(moved.calls);
                let outcome = match (moved.answered, failed) {
                    (_, 0) => "all answered by a later tier".to_string(),
                    (0, _) => "all failed".to_string(),
                    (answered, failed) => format!(
                        "{} by a later tier, {} failed",
                        plural(answered, "answered", "answered"),
                        failed
                    ),
                };
                let money = match moved.monthly_cost_usd {
                    Some(monthly) => format!("{}/mo", usd(monthly)),
                    None => format!("{} in the window", usd_exact(&moved.cost_usd, "0", places)),
                };
                let _ = writeln!(
                    out,
                    "  {}: {} ({:.1}%) left the first tier for {}: {outcome}; {money}",
                    r.route,
                    plural(moved.calls, "call", "calls"),
                    moved.share * 100.0,
                    moved.reason,
                );
            }
        }
        for r in &self.routes {
            if let Some(effects) = &r.budget {
                let _ = writeln!(out, "  {}: {}", r.route, effects.describe());
            }
        }
        for r in &self.routes {
            let q = &r.quality;
            for agreement in &q.agreement {
                let _ = writeln!(
                    out,
                    "  {}: {} agrees with the reference {:.1}% over {}",
                    r.route,
                    agreement.tier,
                    agreement.agreement * 100.0,
                    plural(agreement.samples, "shadow sample", "shadow samples")
                );
            }
            for contract in &q.contract {
                let _ = writeln!(
                    out,
                    "  {}: the output contract rewrote {:.1}% of {}'s {} ({:.1}% held no allowed label)",
                    r.route,
                    contract.rewritten_share * 100.0,
                    contract.model,
                    plural(contract.answers, "answer", "answers"),
                    contract.violated_share * 100.0
                );
            }
            if let Some(accuracy) = q.accuracy {
                let _ = writeln!(
                    out,
                    "  {}: {:.1}% accurate against ground truth over {} with feedback{}",
                    r.route,
                    accuracy * 100.0,
                    plural(q.feedback_judged, "answer", "answers"),
                    if q.feedback_unjudged > 0 {
                        format!(
                            " ({} more not judged: their answers are not stored)",
                            q.feedback_unjudged
                        )
                    } else {
                        String::new()
                    }
                );
            }
            if q.shadow_calls + q.eval_calls > 0 {
                let money = match q.monthly_checks_cost_usd {
                    Some(monthly) if q.monthly_checks_capped => format!(
                        "{} in the window; shadow checks {}/mo at most (their daily budget)",
                        usd_exact(&q.checks_cost_usd, "0", places),
                        usd(monthly)
                    ),
                    Some(monthly) => format!(
                        "{} in the window; shadow checks {}/mo",
                        usd_exact(&q.checks_cost_usd, "0", places),
                        usd(monthly)
                    ),
                    None => format!(
                        "{} in the window",
                        usd_exact(&q.checks_cost_usd, "0", places)
                    ),
                };
                let _ = writeln!(
                    out,
                    "  {}: quality checks {} ({} shadow, {} eval), {money}",
                    r.route,
                    plural(q.shadow_calls + q.eval_calls, "call", "calls"),
                    q.shadow_calls,
                    q.eval_calls,
                );
            }
        }
        self.endpoint_table(&mut out, places);
        let t = &self.totals;
        let _ = writeln!(out);
        let line = |out: &mut String, label: &str, amount: String, note: &str| {
            let _ = writeln!(out, "{label:<34} {amount:>15}{note}");
        };
        match (
            t.monthly_baseline_usd,
            t.monthly_api_usd,
            t.monthly_fixed_usd,
            t.monthly_checks_usd,
            t.monthly_actual_usd,
            t.monthly_saving_usd,
        ) {
            (Some(baseline), Some(api), Some(_), Some(checks), Some(actual), Some(saving)) => {
                let mo = |amount: f64| format!("{}/mo", usd(amount));
                line(&mut out, "before (all-API baseline)", mo(baseline), "");
                line(&mut out, "after: API spend", mo(api), "");
                for f in &self.fixed {
                    let note = if f.unattributed {
                        " (unused in this window)"
                    } else {
                        ""
                    };
                    line(
                        &mut out,
                        &format!("after: fixed, {}", f.provider),
                        mo(self.window.monthly(f.window)),
                        note,
                    );
                }
                if checks > 0.0 {
                    line(&mut out, "after: quality checks", mo(checks), "");
                }
                line(&mut out, "after: total", mo(actual), "");
                line(
                    &mut out,
                    "net saving",
                    mo(saving),
                    &format!(" ({:.1}%)", t.saving_pct),
                );
            }
            _ => {
                // Observed money only: what the window spent, and what it saved against all-API.
                let _ = writeln!(
                    out,
                    "in {}: {}, {} failed, {} spent, {} saved against all-API ({:.1}%)",
                    span_of(held),
                    plural(t.calls, "call", "calls"),
                    t.errors,
                    usd_exact(&t.actual_usd, "0", places),
                    usd_exact(&t.saving_usd, "0", places),
                    t.saving_pct,
                );
                let exact = |amount: &str| usd_exact(amount, "0", places);
                line(
                    &mut out,
                    "before (all-API baseline)",
                    exact(&t.baseline_usd),
                    "",
                );
                line(&mut out, "after: API spend", exact(&t.api_usd), "");
                for f in &self.fixed {
                    line(
                        &mut out,
                        &format!("after: fixed, {}", f.provider),
                        exact(&f.window_usd),
                        &format!(" (its {} a month, over the window)", usd(f.monthly_usd)),
                    );
                }
                if t.checks_usd != "0" {
                    line(&mut out, "after: quality checks", exact(&t.checks_usd), "");
                }
                line(&mut out, "after: total", exact(&t.actual_usd), "");
                line(
                    &mut out,
                    "net saving",
                    exact(&t.saving_usd),
                    &format!(" ({:.1}%)", t.saving_pct),
                );
            }
        }
        if t.cache_hits > 0 {
            let monthly = t
                .monthly_saved_by_cache_usd
                .map_or(String::new(), |monthly| format!(", {}/mo", usd(monthly)));
            let _ = writeln!(
                out,
                "saved by the cache: {}{monthly} ({} answered from a route's cache, apart from the saving above)",
                usd_exact(&t.saved_by_cache_usd, "0", places),
                plural(t.cache_hits, "request", "requests"),
            );
        }
        if t.unpriced_calls > 0 {
            let _ = writeln!(
                out,
                "\n{} used a model with no known price; their cost is not in these sums (add [prices.\"model\"])",
                plural(t.unpriced_calls, "call", "calls")
            );
        }
        // Only where a provider has several servers: one server's load is its provider's.
        let pooled: Vec<&ServerLoad> = self
            .servers
            .iter()
            .filter(|s| s.server != s.provider)
            .collect();
        if !pooled.is_empty() {
            let _ = writeln!(
                out,
                "\nservers                             calls  answered    failed  unfinished"
            );
            for s in pooled {
                let _ = writeln!(
                    out,
                    "  {:<30} {:>8} {:>9} {:>9} {:>11}",
                    s.server, s.calls, s.answered, s.failed, s.unfinished
                );
            }
        }
        out
    }
}

/// A route's shadow agreement, contract rewrites and checking cost, from the ledger's sums.
fn quality(
    summary: &Summary,
    route: &Option<String>,
    projection: Projection,
    shadow_budget_usd: Option<f64>,
) -> QualityReport {
    let mut report = QualityReport::default();
    let (mut cost, mut shadow) = (0i128, 0i128);
    for checks in summary.checks.iter().filter(|c| &c.route == route) {
        cost += i128::from(checks.cost.0);
        match checks.purpose.as_str() {
            "eval" => report.eval_calls += checks.calls,
            _ => {
                report.shadow_calls += checks.calls;
                shadow += i128::from(checks.cost.0);
            }
        }
        if let (Some(tier), true) = (&checks.candidate, checks.scored > 0) {
            report.agreement.push(Agreement {
                tier: tier.clone(),
                samples: checks.scored,
                agreement: checks.agreement_ppm as f64 / 1e6 / checks.scored as f64,
            });
        }
    }
    report.contract = summary
        .contracts
        .iter()
        .filter(|c| &c.route == route && c.answers > 0)
        .map(|c| ContractReport {
            model: c.model.clone().unwrap_or_default(),
            answers: c.answers,
            rewritten_share: c.normalized as f64 / c.answers as f64,
            violated_share: c.violated as f64 / c.answers as f64,
        })
        .collect();
    report.checks_cost = Picodollars::saturating(cost);
    report.shadow_cost = Picodollars::saturating(shadow);
    report.checks_cost_usd = report.checks_cost.to_string();
    report.monthly_checks_cost_usd = projection.month(report.shadow_cost).map(|monthly| {
        match shadow_budget_usd.map(|daily| daily * DAYS_PER_MONTH) {
            Some(cap) if monthly > cap => {
                report.monthly_checks_capped = true;
                cap
            }
            _ => monthly,
        }
    });
    report
}

/// Why `--route NAME` names nothing: no configured route has that name (and the window holds no
/// traffic of a route since removed). `None` when it is a route.
pub fn unknown_route(config: &Config, name: &str) -> Option<String> {
    if name == NO_ROUTE || config.routes.iter().any(|route| route.name == name) {
        return None;
    }
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    Some(format!(
        "there is no route {name:?} in the config or in this window's traffic; the routes are: {} (and {NO_ROUTE:?} for calls made without one)",
        names.join(", ")
    ))
}

fn route_name(route: &Option<String>) -> &str {
    route.as_deref().unwrap_or(NO_ROUTE)
}

fn route_report(
    route: &str,
    sums: &RouteSums,
    fixed: Picodollars,
    projection: Projection,
) -> RouteReport {
    let n = sums.calls.max(1) as f64;
    RouteReport {
        route: route.to_string(),
        calls: sums.calls,
        calls_per_day: projection.per_day(sums.calls),
        avg_tokens_in: sums.tokens_in as f64 / n,
        avg_tokens_out: sums.tokens_out as f64 / n,
        models: sums.models.clone(),
        local_share: sums.answered_locally as f64 / sums.answered.max(1) as f64,
        // Answered by a later tier; a request no tier answered is an error, not a fallback.
        fallbacks: sums.fallbacks,
        errors: sums.errors,
        estimated_calls: sums.estimated,
        unpriced_calls: sums.unpriced,
        p50_ms: percentile(&sums.latency, 50),
        p95_ms: percentile(&sums.latency, 95),
        api_cost_usd: sums.cost.to_string(),
        fixed_cost_usd: fixed.to_string(),
        baseline_usd: sums.baseline.to_string(),
        monthly_cost_usd: projection.month(Picodollars::saturating(
            sums.cost.0 as i128 + fixed.0 as i128,
        )),
        monthly_baseline_usd: projection.month(sums.baseline),
        moved_off_first_tier: Vec::new(),
        budget: None,
        quality: QualityReport::default(),
        cache_hits: 0,
        saved_by_cache_usd: "0".into(),
        monthly_saved_by_cache_usd: projection.month(Picodollars(0)),
        saved_by_cache: Picodollars(0),
        api_cost: sums.cost,
        baseline: sums.baseline,
    }
}

/// Nearest-rank percentile of a latency histogram (microseconds, ascending), in milliseconds.
fn percentile(histogram: &[(i64, u64)], pct: u64) -> f64 {
    let total: u64 = histogram.iter().map(|(_, calls)| calls).sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (pct * total).div_ceil(100).max(1);
    let mut seen = 0;
    for (latency_us, calls) in histogram {
        seen += calls;
        if seen >= rank {
            return *latency_us as f64 / 1000.0;
        }
    }
    0.0
}

fn usd(amount: f64) -> String {
    usd_at(amount, 2)
}

/// `$1.50`, `-$0.0044`: the sign before the dollar, `places` decimals.
fn usd_at(amount: f64, places: usize) -> String {
    let sign = if amount < 0.0 { "-" } else { "" };
    format!("{sign}${:.places$}", amount.abs())
}

/// One text cell of a CSV row (RFC 4180): quoted where it holds a comma, a quote or a line
/// break. A cell a spreadsheet would run as a formula (one beginning with `=`, `+`, `-`, `@`, a tab
/// or a carriage return) gets a leading `'` and quotes, as OWASP's advice on CSV injection has it.
/// Only names and other text pass through here: the reports write their numbers themselves, so a
/// negative figure such as -1.5 stays a number a spreadsheet can add up.
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || text.contains([',', '"', '\n', '\r']) {
        format!(
            "\"{}{}\"",
            if formula { "'" } else { "" },
            text.replace('"', "\"\"")
        )
    } else {
        text.to_string()
    }
}

fn timestamp(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `30d`, `12h`, `90m` → a window ending now; `--from`/`--to` as RFC 3339 or `YYYY-MM-DD`.
pub fn window(
    since: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    now_ms: i64,
) -> Result<Window, String> {
    let to_ms = match to {
        Some(to) => parse_time(to)?,
        None => now_ms,
    };
    let from_ms = match (from, since) {
        (Some(from), _) => parse_time(from)?,
        (None, Some(since)) => {
            let span = humantime::parse_duration(since)
                .map_err(|err| format!("--since {since:?}: {err}; write e.g. 30d, 12h or 90m"))?;
            to_ms - span.as_millis() as i64
        }
        (None, None) => to_ms - 30 * DAY_MS,
    };
    if from_ms >= to_ms {
        return Err("the window is empty: --from must be before --to".into());
    }
    Ok(Window { from_ms, to_ms })
}

fn parse_time(text: &str) -> Result<i64, String> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let time = humantime::parse_rfc3339_weak(&full).map_err(|err| {
        format!("{text:?} is not a time: {err}; write 2026-11-01 or 2026-11-01T12:00:00Z")
    })?;
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis() as i64)
}

/// How long a window covers, in the unit a reader would use: `20 seconds`, `1 minute`,
/// `5.3 hours`, `3.0 days`.
pub fn span_of(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 120.0 {
        plural(seconds.round() as u64, "second", "seconds")
    } else if seconds < 2.0 * 3600.0 {
        plural((seconds / 60.0).round() as u64, "minute", "minutes")
    } else if seconds < 48.0 * 3600.0 {
        format!("{} hours", tenths(seconds / 3600.0))
    } else {
        format!("{} days", tenths(seconds / 86_400.0))
    }
}

/// A number to a tenth, without a trailing `.0`.
fn tenths(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_string)
}

/// `1 call`, `2 calls`, `0 calls`, with thousands separated.
pub fn plural(count: u64, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(count),
        if count == 1 { one } else { many }
    )
}

fn thousands(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// An exact amount (a ledger sum in dollars, as text) plus another, shown to the cent, or to two
/// significant figures below a cent so a small spend does not read as nothing.
fn usd_exact(amount: &str, plus: &str, places: usize) -> String {
    let value = amount.parse::<f64>().unwrap_or(0.0) + plus.parse::<f64>().unwrap_or(0.0);
    usd_at(value, places)
}

/// Decimals that show the smallest of `amounts` (exact dollar texts) to two significant figures,
/// cents at least: every amount of one table at the same precision, so that they add up.
fn places_for<'a>(amounts: impl IntoIterator<Item = &'a str>) -> usize {
    let smallest = amounts
        .into_iter()
        .filter_map(|amount| amount.parse::<f64>().ok())
        .map(f64::abs)
        .filter(|amount| *amount > 0.0)
        .fold(f64::INFINITY, f64::min);
    if smallest < 0.01 {
        ((-smallest.log10()).ceil() as usize + 1).min(6)
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{LocalTokens, RequestRow};

    /// A report of one route carries its share of a shared server, not the whole server; a
    /// report of every route carries all of it.
    #[test]
    fn a_report_of_one_route_carries_its_share_of_a_shared_server() {
        let config = Config::parse(
            "[providers.gpu]\nbase_url = \"http://127.0.0.1:9/v1\"\nfixed_monthly_usd = 300.0\n\
             [tiers]\nlocal = { provider = \"gpu\", model = \"m\" }\n\
             [routes.a]\nkind = \"classification\"\ntiers = [\"local\"]\n\
             [routes.b]\nkind = \"classification\"\ntiers = [\"local\"]\n",
            std::path::Path::new("t.toml"),
            &|_| None,
        )
        .unwrap();
        let sums = |route: &str| RouteSums {
            route: Some(route.into()),
            calls: 1,
            answered: 1,
            ..RouteSums::default()
        };
        let used = |route: &str, tokens| LocalTokens {
            provider: "gpu".into(),
            route: Some(route.into()),
            tokens,
        };
        let mut summary = Summary {
            endpoints: Vec::new(),
            routes: vec![sums("a"), sums("b")],
            local_tokens: vec![used("a", 1), used("b", 3)],
            moved: Vec::new(),
            checks: Vec::new(),
            contracts: Vec::new(),
            cache_hits: Vec::new(),
        };
        // A day of a $300 month: $10, a quarter of it a's.
        let window = Window {
            from_ms: 0,
            to_ms: DAY_MS,
        };
        let all = Report::build(&config, &summary, window);
        assert_eq!(all.totals.fixed_usd, "10");
        summary.routes.remove(1);
        let one = Report::build(&config, &summary, window);
        assert_eq!(one.routes[0].fixed_cost_usd, "2.5");
        assert_eq!(one.totals.fixed_usd, "2.5");
        assert_eq!(one.fixed[0].window_usd, "2.5");
    }

    /// Calls and API spend by endpoint come from whatever endpoints the ledger names (one no
    /// build knows included), and add up to the totals in the JSON and in the table.
    #[tokio::test]
    async fn calls_and_spend_by_endpoint_add_up_to_the_totals() {
        let config = Config::parse(
            "[providers.api]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\nfast = { provider = \"api\", model = \"gpt-4o-mini\" }\n\
             [routes.a]\nkind = \"classification\"\ntiers = [\"fast\"]\n",
            std::path::Path::new("t.toml"),
            &|_| None,
        )
        .unwrap();
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let mut rows = Vec::new();
        for (i, (endpoint, route, cost, status)) in [
            ("chat.completions", Some("a"), 1_000_000, 200),
            ("chat.completions", None, 3_000_000, 200),
            ("responses", Some("a"), 20_000_000, 200),
            ("responses", Some("a"), 0, 502),
            ("embeddings", None, 7, 200),
            ("messages", Some("a"), 400_000_000, 200),
        ]
        .into_iter()
        .enumerate()
        {
            let mut row = RequestRow::new(format!("r{i}"), 1_000 + i as i64, endpoint.into());
            row.route = route.map(str::to_string);
            row.status = status;
            if status == 200 {
                row.tier = Some("fast".into());
                row.model = Some("gpt-4o-mini".into());
                row.cost_pusd = Some(Picodollars(cost));
            }
            row.tokens_in = 10;
            row.tokens_out = 2;
            rows.push(row);
        }
        let refs: Vec<&RequestRow> = rows.iter().collect();
        store.insert(&refs, &[]).await.unwrap();
        let window = Window {
            from_ms: 0,
            to_ms: 10_000,
        };
        let summary = store.summary(0, 10_000, None).await.unwrap();
        let report = Report::build(&config, &summary, window);
        let by: Vec<(&str, u64, u64, &str)> = report
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.endpoint.as_str(),
                    e.calls,
                    e.errors,
                    e.api_cost_usd.as_str(),
                )
            })
            .collect();
        assert_eq!(
            by,
            [
                ("chat.completions", 2, 0, "0.000004"),
                ("embeddings", 1, 0, "0.000000000007"),
                ("messages", 1, 0, "0.0004"),
                ("responses", 2, 1, "0.00002"),
            ]
        );
        let calls: u64 = report.endpoints.iter().map(|e| e.calls).sum();
        assert_eq!(calls, report.totals.calls);
        let spend: i64 = summary.endpoints.iter().map(|e| e.cost.0).sum();
        assert_eq!(Picodollars(spend).to_string(), report.totals.api_usd);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["endpoints"][3]["endpoint"], "responses");
        assert_eq!(json["endpoints"][3]["calls"], 2);
        let table = report.to_table();
        assert!(
            table.contains("responses                2  33.3%      1"),
            "{table}"
        );
        assert!(
            table.contains("all endpoints            6 100.0%      1"),
            "{table}"
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let one_each: Vec<(i64, u64)> = (1..=100).map(|ms| (ms * 1000, 1)).collect();
        assert_eq!(percentile(&one_each, 50), 50.0);
        assert_eq!(percentile(&one_each, 95), 95.0);
        assert_eq!(percentile(&[(7000, 1)], 95), 7.0);
        // 90 calls at 1 ms, 10 at 40 ms: the 95th percentile is in the slow bucket.
        let skewed = [(1000, 90), (40_000, 10)];
        assert_eq!(percentile(&skewed, 50), 1.0);
        assert_eq!(percentile(&skewed, 95), 40.0);
        assert_eq!(percentile(&[], 95), 0.0);
    }

    #[test]
    fn windows_parse_durations_and_dates() {
        let now = 100 * DAY_MS;
        assert_eq!(
            window(Some("30d"), None, None, now).unwrap(),
            Window {
                from_ms: 70 * DAY_MS,
                to_ms: now
            }
        );
        let w = window(None, Some("2026-11-01"), Some("2026-11-02T00:00:00Z"), now).unwrap();
        assert_eq!(w.to_ms - w.from_ms, DAY_MS);
        assert!(window(Some("lots"), None, None, now).is_err());
        assert!(window(None, Some("2026-11-02"), Some("2026-11-01"), now).is_err());
    }
}
