//! `tierwise advise`: for each route, move-to-local, keep-on-API or needs-evidence, from the traffic
//! the ledger saw (calls a day, prompt size, latency), the route's declared profile (task kind,
//! quality bar, latency tolerance, tool calling, how often it changes) and its shadow agreement,
//! by DESIGN.md's rules of thumb: well-defined tasks with a "good enough" bar, latency tolerance
//! over 500 ms, prompts under 32K tokens and more than 100 calls a day move local; agentic and
//! reasoning tasks, critical tool calling, huge prompts, low volume and fast-changing tasks stay on
//! the API. A route the rules would move still needs evidence until shadow checks (or an eval)
//! show the local tier agrees with the API well enough. Each verdict carries its reasons, the
//! monthly saving, and the volume at which a local server's fixed cost is paid back.
//!
//! Quality is judged as the gateway judges it now, not over the report's days: the candidate's
//! current window of scored samples and its live alert and switch, read from the ledger as every
//! replica takes them up ([`Live`]). A month of good samples cannot outvote a drop this week, and a
//! route alerting or demoted now is never told to move.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{DAYS_PER_MONTH, Report, RouteReport, usd};
use crate::config::{
    AdviseRules, Changes, Config, QualityBar, Route, Shadow, TaskKind, ToolCalling,
};
use crate::ledger::quality::EventKind;
use crate::ledger::{LedgerError, Store};
use crate::quality::monitor::{Interval, wilson};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    MoveToLocal,
    #[serde(rename = "keep-on-API")]
    KeepOnApi,
    NeedsEvidence,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::MoveToLocal => "move-to-local",
            Verdict::KeepOnApi => "keep-on-API",
            Verdict::NeedsEvidence => "needs-evidence",
        }
    }
}

/// One route's verdict with its reasons and money.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub route: String,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub calls_per_day: f64,
    /// Share of its answers already served locally.
    pub local_share: f64,
    /// What moving (or having moved) the route to its local tier saves a month at the traffic seen:
    /// its API spend on calls a local tier could take, or the saving already made.
    pub monthly_saving_usd: f64,
    /// Calls a day at which the local server's fixed monthly cost equals what those calls cost on
    /// the API; `None` without a local provider with `fixed_monthly_usd`, or without priced calls.
    pub break_even_calls_per_day: Option<f64>,
    /// Shadow agreement over the candidate's current window, with its 95% interval.
    pub agreement: Option<f64>,
    pub interval: Option<Interval>,
    pub samples: u64,
}

/// A route's quality as the gateway judges it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    /// The tier judged: the shadow check's candidate, or the route's first tier.
    pub candidate: String,
    /// The agreement of each scored sample in the current window, 0 to 1.
    pub scores: Vec<f64>,
    /// The latest episode is an alert that has not cleared.
    pub alerting: bool,
    /// The latest switch demoted the candidate: the route serves from its next tier.
    pub demoted: bool,
}

impl Live {
    /// Each route's live quality, by route name: the window is the route's shadow window (the
    /// default where it has none, for samples an earlier configuration left).
    pub async fn load(
        config: &Config,
        store: &Store,
    ) -> Result<HashMap<String, Live>, LedgerError> {
        let mut live = HashMap::new();
        for route in &config.routes {
            let (candidate, window) = match &route.shadow {
                Some(shadow) => (&shadow.candidate, shadow.window),
                None => match route.chain.first() {
                    Some(step) => (&step.tier, Shadow::DEFAULT_WINDOW),
                    None => continue,
                },
            };
            let scores = store
                .recent_agreement(&route.name, &candidate.name, i64::from(window))
                .await?;
            let state = store.quality_state(&route.name, &candidate.name).await?;
            live.insert(
                route.name.clone(),
                Live {
                    candidate: candidate.name.clone(),
                    scores: scores.iter().map(|ppm| *ppm as f64 / 1e6).collect(),
                    alerting: state.alert == Some(EventKind::AlertFired),
                    demoted: state.switch == Some(EventKind::Demoted),
                },
            );
        }
        Ok(live)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Advise {
    pub days: f64,
    pub routes: Vec<Advice>,
}

impl Advise {
    pub fn build(config: &Config, report: &Report, live: &HashMap<String, Live>) -> Advise {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let traffic = report.routes.iter().find(|r| r.route == route.name);
                advise(
                    config,
                    &config.advise,
                    route,
                    traffic,
                    live.get(&route.name),
                )
            })
            .collect();
        Advise {
            days: report.days,
            routes,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("advice always serializes")
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tierwise advise: over the last {:.1} days of traffic\n",
            self.days
        );
        for advice in &self.routes {
            let _ = writeln!(
                out,
                "{:<16} {:<15} {:>8.1} calls/day  saving {}/mo  break-even {}",
                advice.route,
                advice.verdict.as_str(),
                advice.calls_per_day,
                usd(advice.monthly_saving_usd),
                advice
                    .break_even_calls_per_day
                    .map_or("-".to_string(), |calls| format!("{calls:.0} calls/day")),
            );
            for reason in &advice.reasons {
                let _ = writeln!(out, "    - {reason}");
            }
        }
        out
    }
}

fn advise(
    config: &Config,
    rules: &AdviseRules,
    route: &Route,
    traffic: Option<&RouteReport>,
    live: Option<&Live>,
) -> Advice {
    let mut against = Vec::new();
    let mut for_local = Vec::new();
    match route.kind {
        TaskKind::Agentic | TaskKind::Reasoning => against.push(format!(
            "{} tasks stay on the API",
            serde_json::to_value(route.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )),
        kind => for_local.push(format!(
            "a well-defined task ({})",
            serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )),
    }
    let profile = &route.profile;
    if profile.quality == QualityBar::Frontier {
        against.push("its quality bar is frontier".into());
    }
    if profile.tool_calling == ToolCalling::Critical {
        against.push("it depends on calling tools right".into());
    }
    if profile.changes == Changes::Often {
        against.push(
            "it changes often, and each change would need the local prompt re-tuned and re-validated"
                .into(),
        );
    }
    let tolerance = profile.latency_tolerance.as_millis();
    if profile.latency_tolerance < rules.min_latency_tolerance {
        against.push(format!(
            "it must answer within {tolerance} ms (under {} ms)",
            rules.min_latency_tolerance.as_millis()
        ));
    } else {
        for_local.push(format!("it tolerates {tolerance} ms"));
    }

    let calls_per_day = traffic.map_or(0.0, |t| t.calls_per_day);
    match traffic {
        None => against.push("no traffic in the window".into()),
        Some(t) => {
            if t.calls_per_day < rules.min_calls_per_day {
                against.push(format!(
                    "{:.1} calls a day is under {:.0}: a local server would not pay for itself",
                    t.calls_per_day, rules.min_calls_per_day
                ));
            } else {
                for_local.push(format!("{:.0} calls a day", t.calls_per_day));
            }
            if t.avg_tokens_in > f64::from(rules.max_context_tokens) {
                against.push(format!(
                    "prompts average {:.0} tokens, over {}",
                    t.avg_tokens_in, rules.max_context_tokens
                ));
            } else {
                for_local.push(format!("prompts average {:.0} tokens", t.avg_tokens_in));
            }
            if t.local_share > 0.0 && t.p95_ms > tolerance as f64 {
                against.push(format!(
                    "its p95 latency is {:.0} ms, over its tolerance of {tolerance} ms",
                    t.p95_ms
                ));
            }
        }
    }

    // The candidate's agreement over its current window, where shadow checks measured it.
    let (agreement, interval, samples) =
        live.filter(|live| !live.scores.is_empty())
            .map_or((None, None, 0), |live| {
                let sum: f64 = live.scores.iter().sum();
                let samples = live.scores.len() as u64;
                (
                    Some(sum / samples as f64),
                    Some(wilson(sum, samples, 1.96)),
                    samples,
                )
            });
    if let Some(live) = live {
        if live.alerting {
            against.push(format!(
                "a quality alert on {} is firing now: it no longer agrees with the API well enough",
                live.candidate
            ));
        }
        if live.demoted {
            against.push(format!(
                "{} is demoted now: the route serves from its next tier until agreement is proven again",
                live.candidate
            ));
        }
    }
    let bar = route
        .shadow
        .as_ref()
        .map_or(crate::config::Shadow::DEFAULT_MIN_AGREEMENT, |s| {
            s.min_agreement
        });
    let verdict = if !against.is_empty() {
        Verdict::KeepOnApi
    } else {
        match interval {
            Some(interval) if interval.low >= bar => {
                for_local.push(format!(
                    "the local tier agrees with the API {:.1}% (95% interval from {:.1}%) over {samples} shadow samples, above the {:.0}% bar",
                    agreement.unwrap_or(0.0) * 100.0,
                    interval.low * 100.0,
                    bar * 100.0
                ));
                Verdict::MoveToLocal
            }
            Some(interval) if interval.high < bar => {
                against.push(format!(
                    "the local tier agrees with the API only {:.1}% (95% interval to {:.1}%) over {samples} shadow samples, under the {:.0}% bar",
                    agreement.unwrap_or(0.0) * 100.0,
                    interval.high * 100.0,
                    bar * 100.0
                ));
                Verdict::KeepOnApi
            }
            Some(_) => {
                for_local.push(format!(
                    "{samples} shadow samples cannot yet tell {:.1}% agreement from the {:.0}% bar: keep sampling",
                    agreement.unwrap_or(0.0) * 100.0,
                    bar * 100.0
                ));
                Verdict::NeedsEvidence
            }
            None => {
                for_local.push(
                    "no shadow agreement yet: add a shadow check to the route, or run tierwise eval on a labelled dataset"
                        .into(),
                );
                Verdict::NeedsEvidence
            }
        }
    };

    let (monthly_saving_usd, break_even) = money(config, route, traffic);
    if verdict != Verdict::KeepOnApi
        && let Some(break_even) = break_even
        && calls_per_day < break_even
    {
        for_local.push(format!(
            "on its own it is under the {break_even:.0} calls a day that pay for a local server: worth it on a server other routes share"
        ));
    }
    let mut reasons = match verdict {
        Verdict::KeepOnApi => against,
        _ => for_local,
    };
    if verdict == Verdict::MoveToLocal && !has_local_tier(route) {
        reasons.push("add a local tier to the front of its chain".into());
    }
    Advice {
        route: route.name.clone(),
        verdict,
        reasons,
        calls_per_day,
        local_share: traffic.map_or(0.0, |t| t.local_share),
        monthly_saving_usd,
        break_even_calls_per_day: break_even,
        agreement,
        interval,
        samples,
    }
}

fn has_local_tier(route: &Route) -> bool {
    route.chain.iter().any(|step| step.tier.is_local())
}

/// The monthly saving of serving the route locally, and the calls a day at which the local
/// server's fixed cost is paid back by what those calls cost on the API.
fn money(config: &Config, route: &Route, traffic: Option<&RouteReport>) -> (f64, Option<f64>) {
    let Some(t) = traffic else {
        return (0.0, None);
    };
    // Already local: the saving made against the all-API baseline. Not yet: what its API calls
    // that a local tier could take cost a month.
    let saving = if t.local_share >= 0.5 {
        (t.monthly_baseline_usd - t.monthly_cost_usd).max(0.0)
    } else {
        t.monthly_cost_usd * (1.0 - t.local_share)
    };
    let fixed = route
        .chain
        .iter()
        .find_map(|step| step.tier.provider.fixed_monthly_usd)
        .or_else(|| {
            config
                .providers
                .iter()
                .filter_map(|p| p.fixed_monthly_usd)
                .min_by(f64::total_cmp)
        });
    let monthly_calls = t.calls_per_day * DAYS_PER_MONTH;
    let api_per_call = (monthly_calls > 0.0).then(|| t.monthly_baseline_usd / monthly_calls);
    let break_even = match (fixed, api_per_call) {
        (Some(fixed), Some(per_call)) if per_call > 0.0 => {
            Some(fixed / (DAYS_PER_MONTH * per_call))
        }
        _ => None,
    };
    (saving, break_even)
}
