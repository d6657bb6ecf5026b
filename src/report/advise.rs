//! `tierwise advise`: for each route, move-to-local, keep-on-API or needs-evidence, from the traffic
//! the ledger saw (calls a day, prompt size, latency), the route's declared profile (task kind,
//! quality bar, latency tolerance, tool calling, how often it changes) and its shadow agreement,
//! by the rules of thumb in docs/design.md: well-defined tasks with a "good enough" bar, latency tolerance
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
    /// What the verdict took as given because the route's profile does not say it: defaults, not
    /// facts about the route.
    pub assumed: Vec<String>,
    /// `None` when the window is too short to project ([`Report::projected`]).
    pub calls_per_day: Option<f64>,
    /// Share of its answers already served locally.
    pub local_share: f64,
    /// What moving (or having moved) the route to its local tier saves a month at the traffic seen:
    /// its API spend on calls a local tier could take, or the saving already made. `None` for a
    /// route kept on the API (no saving), or when the window is too short to project.
    pub monthly_saving_usd: Option<f64>,
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
    /// Why calls a day and savings are not projected, when they are not.
    pub not_projected_because: Option<String>,
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
                    report.not_projected_because.as_deref(),
                    live.get(&route.name),
                )
            })
            .collect();
        Advise {
            days: report.days,
            not_projected_because: report.not_projected_because.clone(),
            routes,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("advice always serializes")
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let held = std::time::Duration::from_secs_f64(self.days * 86_400.0);
        let _ = writeln!(
            out,
            "tierwise advise: over {} of traffic",
            super::span_of(held)
        );
        if let Some(why) = &self.not_projected_because {
            let _ = writeln!(out, "volumes and savings are not projected: {why}");
        }
        let _ = writeln!(out);
        for advice in &self.routes {
            let volume = advice
                .calls_per_day
                .map_or("calls/day not known".to_string(), |calls| {
                    format!("{calls:.1} calls/day")
                });
            let saving = match (advice.verdict, advice.monthly_saving_usd) {
                (Verdict::KeepOnApi, _) => "no saving".to_string(),
                (_, Some(saving)) => format!("saving {}/mo", usd(saving)),
                (_, None) => "saving not projected".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<15} {volume}  {saving}  break-even {}",
                advice.route,
                advice.verdict.as_str(),
                advice
                    .break_even_calls_per_day
                    .map_or("-".to_string(), |calls| format!("{calls:.0} calls/day")),
            );
            for reason in &advice.reasons {
                let _ = writeln!(out, "    - {reason}");
            }
            for assumed in &advice.assumed {
                let _ = writeln!(out, "    - assumed: {assumed}");
            }
        }
        out
    }
}

/// The evidence a route that could move still lacks, when nothing has compared it with the API.
const NO_AGREEMENT: &str = "no shadow agreement yet: add a shadow check to the route, or run tierwise eval on a labelled dataset";

fn advise(
    config: &Config,
    rules: &AdviseRules,
    route: &Route,
    traffic: Option<&RouteReport>,
    not_projected: Option<&str>,
    live: Option<&Live>,
) -> Advice {
    let mut against = Vec::new();
    let mut for_local = Vec::new();
    let mut assumed = Vec::new();
    // Evidence that is missing rather than against the move: not enough traffic to know the volume.
    let mut unknown = Vec::new();
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
    let declared = profile.declared;
    let key = format!("routes.{}.profile", route.name);
    if profile.quality == QualityBar::Frontier {
        against.push("its quality bar is frontier".into());
    } else if !declared.quality {
        assumed.push(format!("a good-enough quality bar (declare {key}.quality)"));
    }
    if profile.tool_calling == ToolCalling::Critical {
        against.push("it depends on calling tools right".into());
    } else if !declared.tool_calling {
        assumed.push(format!(
            "it does not depend on calling tools (declare {key}.tool_calling)"
        ));
    }
    if profile.changes == Changes::Often {
        against.push(
            "it changes often, and each change would need the local prompt re-tuned and re-validated"
                .into(),
        );
    } else if !declared.changes {
        assumed.push(format!("it rarely changes (declare {key}.changes)"));
    }
    let tolerance = profile.latency_tolerance.as_millis();
    if profile.latency_tolerance < rules.min_latency_tolerance {
        against.push(format!(
            "it must answer within {tolerance} ms (under {} ms)",
            rules.min_latency_tolerance.as_millis()
        ));
    } else if declared.latency_tolerance {
        for_local.push(format!("it declares a latency tolerance of {tolerance} ms"));
    } else {
        assumed.push(format!(
            "it tolerates {tolerance} ms, the default (declare {key}.latency_tolerance_ms)"
        ));
    }

    let calls_per_day = traffic.and_then(|t| t.calls_per_day);
    match traffic {
        None => against.push("no traffic in the window".into()),
        Some(t) => {
            match t.calls_per_day {
                None => unknown.push(format!(
                    "{} so far: too little traffic to judge its volume ({})",
                    super::plural(t.calls, "call", "calls"),
                    not_projected.unwrap_or("the window is too short to project")
                )),
                Some(per_day) if per_day < rules.min_calls_per_day => against.push(format!(
                    "{per_day:.1} calls a day is under {:.0}: a local server would not pay for itself",
                    rules.min_calls_per_day
                )),
                Some(per_day) => for_local.push(format!("{per_day:.0} calls a day")),
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
    } else if !unknown.is_empty() {
        for_local.append(&mut unknown);
        if interval.is_none() {
            for_local.push(NO_AGREEMENT.into());
        }
        Verdict::NeedsEvidence
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
                for_local.push(NO_AGREEMENT.into());
                Verdict::NeedsEvidence
            }
        }
    };

    let (monthly_saving_usd, break_even) = money(config, route, traffic);
    if verdict != Verdict::KeepOnApi
        && let Some(break_even) = break_even
        && let Some(calls_per_day) = calls_per_day
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
        assumed,
        calls_per_day,
        local_share: traffic.map_or(0.0, |t| t.local_share),
        monthly_saving_usd: monthly_saving_usd.filter(|_| verdict != Verdict::KeepOnApi),
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
fn money(
    config: &Config,
    route: &Route,
    traffic: Option<&RouteReport>,
) -> (Option<f64>, Option<f64>) {
    let Some(t) = traffic else {
        return (None, None);
    };
    let (Some(calls_per_day), Some(monthly_cost), Some(monthly_baseline)) =
        (t.calls_per_day, t.monthly_cost_usd, t.monthly_baseline_usd)
    else {
        return (None, None);
    };
    // Already local: the saving made against the all-API baseline. Not yet: what its API calls
    // that a local tier could take cost a month.
    let saving = if t.local_share >= 0.5 {
        (monthly_baseline - monthly_cost).max(0.0)
    } else {
        monthly_cost * (1.0 - t.local_share)
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
    let monthly_calls = calls_per_day * DAYS_PER_MONTH;
    let api_per_call = (monthly_calls > 0.0).then(|| monthly_baseline / monthly_calls);
    let break_even = match (fixed, api_per_call) {
        (Some(fixed), Some(per_call)) if per_call > 0.0 => {
            Some(fixed / (DAYS_PER_MONTH * per_call))
        }
        _ => None,
    };
    (Some(saving), break_even)
}
