//! Cost and savings read back from the ledger: per route the traffic, the models, how much was served
//! locally, fallbacks, latency and cost; below it the all-API baseline against what was actually
//! spent (API calls plus the fixed cost of local servers, shared among routes by tokens), projected
//! to a month. `tierwise report` prints it; `/admin/api/report` serves the same numbers. The
//! ledger's database does the summing ([`crate::ledger::Summary`]); what is built here is a few
//! numbers per route, whatever the window holds. [`advise`] turns the same numbers into a verdict
//! per route.

pub mod advise;
pub mod simulate;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{Config, ScorerKind};
use crate::ledger::{LedgerError, Picodollars, RouteSums, Store, Summary};
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

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub calls: u64,
    pub calls_per_day: f64,
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
    pub monthly_cost_usd: f64,
    pub monthly_baseline_usd: f64,
    /// Requests the route's first tier did not answer, by why, with what they cost in the end:
    /// "4% of summaries went to the API because they were too long, $12 a month".
    pub moved_off_first_tier: Vec<MovedOff>,
    /// What checking this route's quality cost and found.
    pub quality: QualityReport,
    #[serde(skip)]
    api_cost: Picodollars,
    #[serde(skip)]
    baseline: Picodollars,
}

#[derive(Debug, Clone, Serialize)]
pub struct MovedOff {
    pub reason: String,
    pub calls: u64,
    /// Their share of the route's calls.
    pub share: f64,
    /// What they cost in the window, exact, and over a month.
    pub cost_usd: String,
    pub monthly_cost_usd: f64,
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
    /// Shadow and eval calls, exact, and over a month.
    pub checks_cost_usd: String,
    pub monthly_checks_cost_usd: f64,
    #[serde(skip)]
    checks_cost: Picodollars,
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
    /// The part of the monthly cost that falls in the window, exact.
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
    pub monthly_baseline_usd: f64,
    pub monthly_api_usd: f64,
    pub monthly_fixed_usd: f64,
    pub monthly_checks_usd: f64,
    pub monthly_actual_usd: f64,
    pub monthly_saving_usd: f64,
    /// Saving as a share of the baseline, in percent.
    pub saving_pct: f64,
    pub unpriced_calls: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window: Window,
    pub days: f64,
    /// The window asked for began before the ledger's first record; it starts there instead.
    pub starts_at_first_record: bool,
    pub routes: Vec<RouteReport>,
    pub fixed: Vec<FixedCost>,
    pub totals: Totals,
}

/// Requests with no route (a tier or model id called without `x-tierwise-route`).
const NO_ROUTE: &str = "(no route)";

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
        // A window reaching back before the ledger's first record starts at that record: a month
        // of fixed cost is not charged against minutes of traffic, nor calls per day spread over
        // days with no gateway running.
        let first = store.span().await?.map(|(first, _)| first);
        let (window, clamped) = match first {
            Some(first) if window.from_ms < first && first < window.to_ms => (
                Window {
                    from_ms: first,
                    ..window
                },
                true,
            ),
            _ => (window, false),
        };
        let summary = store.summary(window.from_ms, window.to_ms, route).await?;
        let mut report = Report::build(config, &summary, window);
        report.starts_at_first_record = clamped;
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
        // Fixed costs in the window, shared among routes by the tokens they ran on the provider.
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
            if total > 0 {
                // Shares are rounded down; the remainder goes to the largest user so they sum exactly.
                let mut given = 0;
                for (route, used) in &tokens {
                    let share = window_cost * used / total;
                    given += share;
                    *fixed_share.entry(route).or_default() += share;
                }
                if let Some((route, _)) = tokens.iter().max_by_key(|(_, used)| *used) {
                    *fixed_share.entry(route).or_default() += window_cost - given;
                }
            }
            fixed.push(FixedCost {
                provider: provider.name.clone(),
                monthly_usd: monthly,
                window_usd: Picodollars::saturating(window_cost).to_string(),
                unattributed: total == 0,
                window: Picodollars::saturating(window_cost),
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
                    window,
                );
                report.moved_off_first_tier = summary
                    .moved
                    .iter()
                    .filter(|moved| moved.route == sums.route)
                    .map(|moved| MovedOff {
                        reason: moved.reason.clone(),
                        calls: moved.calls,
                        share: moved.calls as f64 / sums.calls.max(1) as f64,
                        cost_usd: moved.cost.to_string(),
                        monthly_cost_usd: window.monthly(moved.cost),
                    })
                    .collect();
                report.quality = quality(summary, &sums.route, window);
                report
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));

        let sum = |f: fn(&RouteReport) -> Picodollars| {
            Picodollars::saturating(routes.iter().map(|r| f(r).0 as i128).sum())
        };
        let baseline = sum(|r| r.baseline);
        let api = sum(|r| r.api_cost);
        let fixed_total = Picodollars::saturating(fixed.iter().map(|f| f.window.0 as i128).sum());
        let checks = sum(|r| r.quality.checks_cost);
        let actual =
            Picodollars::saturating(api.0 as i128 + fixed_total.0 as i128 + checks.0 as i128);
        let saving = Picodollars::saturating(baseline.0 as i128 - actual.0 as i128);
        let totals = Totals {
            baseline_usd: baseline.to_string(),
            api_usd: api.to_string(),
            fixed_usd: fixed_total.to_string(),
            checks_usd: checks.to_string(),
            actual_usd: actual.to_string(),
            saving_usd: saving.to_string(),
            monthly_baseline_usd: window.monthly(baseline),
            monthly_api_usd: window.monthly(api),
            monthly_fixed_usd: window.monthly(fixed_total),
            monthly_checks_usd: window.monthly(checks),
            monthly_actual_usd: window.monthly(actual),
            monthly_saving_usd: window.monthly(saving),
            saving_pct: if baseline.0 > 0 {
                saving.0 as f64 * 100.0 / baseline.0 as f64
            } else {
                0.0
            },
            unpriced_calls: routes.iter().map(|r| r.unpriced_calls).sum(),
        };
        Report {
            window,
            days: window.days(),
            starts_at_first_record: false,
            routes,
            fixed,
            totals,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "route,calls,calls_per_day,avg_tokens_in,avg_tokens_out,models,local_share,fallbacks,errors,p50_ms,p95_ms,api_cost_usd,fixed_cost_usd,baseline_usd,monthly_cost_usd,monthly_baseline_usd\n",
        );
        for r in &self.routes {
            let _ = writeln!(
                out,
                "{},{},{:.2},{:.1},{:.1},{},{:.4},{},{},{:.1},{:.1},{},{},{},{:.2},{:.2}",
                csv_field(&r.route),
                r.calls,
                r.calls_per_day,
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
                r.monthly_cost_usd,
                r.monthly_baseline_usd
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "TOTAL,,,,,,,,,,,{},{},{},{:.2},{:.2}",
            t.api_usd, t.fixed_usd, t.baseline_usd, t.monthly_actual_usd, t.monthly_baseline_usd
        );
        out
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tierwise report: {} to {} ({}{}); costs projected to a {DAYS_PER_MONTH}-day month\n",
            timestamp(self.window.from_ms),
            timestamp(self.window.to_ms),
            span(self.days),
            if self.starts_at_first_record {
                ", from the ledger's first record"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>15} {:<28} {:>6} {:>9} {:>8} {:>8} {:>12} {:>12}",
            "route",
            "calls/day",
            "avg tok in/out",
            "models",
            "local",
            "fallbacks",
            "p50 ms",
            "p95 ms",
            "cost/mo",
            "baseline/mo"
        );
        if self.routes.is_empty() {
            let _ = writeln!(out, "(no requests in this window)");
        }
        for r in &self.routes {
            let _ = writeln!(
                out,
                "{:<16} {:>9.1} {:>15} {:<28} {:>5.1}% {:>9} {:>8.1} {:>8.1} {:>12} {:>12}",
                r.route,
                r.calls_per_day,
                format!("{:.0} / {:.0}", r.avg_tokens_in, r.avg_tokens_out),
                r.models.join(", "),
                r.local_share * 100.0,
                r.fallbacks,
                r.p50_ms,
                r.p95_ms,
                usd(r.monthly_cost_usd),
                usd(r.monthly_baseline_usd),
            );
        }
        for r in &self.routes {
            for moved in &r.moved_off_first_tier {
                let _ = writeln!(
                    out,
                    "  {}: {} calls ({:.1}%) moved off the first tier for {}, {}/mo",
                    r.route,
                    moved.calls,
                    moved.share * 100.0,
                    moved.reason,
                    usd(moved.monthly_cost_usd)
                );
            }
        }
        for r in &self.routes {
            let q = &r.quality;
            for agreement in &q.agreement {
                let _ = writeln!(
                    out,
                    "  {}: {} agrees with the reference {:.1}% over {} shadow samples",
                    r.route,
                    agreement.tier,
                    agreement.agreement * 100.0,
                    agreement.samples
                );
            }
            for contract in &q.contract {
                let _ = writeln!(
                    out,
                    "  {}: the output contract rewrote {:.1}% of {}'s {} answers ({:.1}% held no allowed label)",
                    r.route,
                    contract.rewritten_share * 100.0,
                    contract.model,
                    contract.answers,
                    contract.violated_share * 100.0
                );
            }
            if let Some(accuracy) = q.accuracy {
                let _ = writeln!(
                    out,
                    "  {}: {:.1}% accurate against ground truth over {} answers with feedback{}",
                    r.route,
                    accuracy * 100.0,
                    q.feedback_judged,
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
                let _ = writeln!(
                    out,
                    "  {}: quality checks {} calls ({} shadow, {} eval), {}/mo",
                    r.route,
                    q.shadow_calls + q.eval_calls,
                    q.shadow_calls,
                    q.eval_calls,
                    usd(q.monthly_checks_cost_usd)
                );
            }
        }
        let t = &self.totals;
        let line = |out: &mut String, label: &str, amount: f64, note: &str| {
            let _ = writeln!(out, "{label:<34} {:>12}/mo{note}", usd(amount));
        };
        let _ = writeln!(out);
        line(
            &mut out,
            "before (all-API baseline)",
            t.monthly_baseline_usd,
            "",
        );
        line(&mut out, "after: API spend", t.monthly_api_usd, "");
        for f in &self.fixed {
            let note = if f.unattributed {
                " (unused in this window)"
            } else {
                ""
            };
            line(
                &mut out,
                &format!("after: fixed, {}", f.provider),
                f.monthly_usd,
                note,
            );
        }
        if t.monthly_checks_usd > 0.0 {
            line(&mut out, "after: quality checks", t.monthly_checks_usd, "");
        }
        line(&mut out, "after: total", t.monthly_actual_usd, "");
        line(
            &mut out,
            "net saving",
            t.monthly_saving_usd,
            &format!(" ({:.1}%)", t.saving_pct),
        );
        if t.unpriced_calls > 0 {
            let _ = writeln!(
                out,
                "\n{} calls used a model with no known price; their cost is not in these sums (add [prices.\"model\"])",
                t.unpriced_calls
            );
        }
        out
    }
}

/// A route's shadow agreement, contract rewrites and checking cost, from the ledger's sums.
fn quality(summary: &Summary, route: &Option<String>, window: Window) -> QualityReport {
    let mut report = QualityReport::default();
    let mut cost = 0i128;
    for checks in summary.checks.iter().filter(|c| &c.route == route) {
        cost += i128::from(checks.cost.0);
        match checks.purpose.as_str() {
            "eval" => report.eval_calls += checks.calls,
            _ => report.shadow_calls += checks.calls,
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
    report.checks_cost_usd = report.checks_cost.to_string();
    report.monthly_checks_cost_usd = window.monthly(report.checks_cost);
    report
}

fn route_name(route: &Option<String>) -> &str {
    route.as_deref().unwrap_or(NO_ROUTE)
}

fn route_report(route: &str, sums: &RouteSums, fixed: Picodollars, window: Window) -> RouteReport {
    let n = sums.calls.max(1) as f64;
    RouteReport {
        route: route.to_string(),
        calls: sums.calls,
        calls_per_day: sums.calls as f64 / window.days(),
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
        monthly_cost_usd: window.monthly(Picodollars::saturating(
            sums.cost.0 as i128 + fixed.0 as i128,
        )),
        monthly_baseline_usd: window.monthly(sums.baseline),
        moved_off_first_tier: Vec::new(),
        quality: QualityReport::default(),
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
    format!("${amount:.2}")
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
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

/// How long a window covers, in the unit a reader would use: `12 minutes`, `5.3 hours`, `3.00 days`.
fn span(days: f64) -> String {
    let minutes = days * 24.0 * 60.0;
    if minutes < 120.0 {
        format!("{minutes:.0} minutes")
    } else if minutes < 48.0 * 60.0 {
        format!("{:.1} hours", minutes / 60.0)
    } else {
        format!("{days:.2} days")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
