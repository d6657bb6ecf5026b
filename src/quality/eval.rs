//! `tierwise eval`: a dataset run through a route's candidate tier and its reference tier — every
//! line answered by both, the answers scored against each other and against the line's expected
//! answer — so that a prompt or model change can be judged, and gated in CI, before it serves
//! traffic. Calls go straight to the tiers' upstreams (with the route's per-tier prompts), not
//! through a running gateway; each ends as the gateway's own calls end ([`OwnCall`],
//! `purpose = 'eval'`), and `tierwise eval` hands the outcomes to the ledger unless told not to.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::judge;
use super::monitor::{Interval, wilson};
use super::score::{Answer, Score, ScorerKind, Unscorable, score};
use crate::config::{ChainTier, Config, Route, Tier, with_labels};
use crate::ledger::{Picodollars, Pricing, Purpose, Tokens};
use crate::openai::{Endpoint, RequestBody};
use crate::outcome::{Outcome, OwnCall};
use crate::route::contract::match_label;
use crate::upstream::{Reply, UpstreamError, Upstreams};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no route named {0:?} (defined: {1})")]
    Route(String, String),
    #[error(
        "route {0:?} is an embedding route: its answers are vectors, which eval does not score"
    )]
    NotScored(String),
    #[error("no tier named {0:?} (defined: {1})")]
    Tier(String, String),
    #[error(
        "route {0:?} has no reference tier: name one with --reference, or give the route a shadow.reference or a baseline"
    )]
    NoReference(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} line {line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("{0} uses {{labels}} but route {1:?} has no output.labels")]
    Prompt(String, String),
    #[error("cannot build the upstream clients: {0}")]
    Client(String),
}

/// What to run: the route, and the tiers to compare if not its own.
pub struct EvalOptions {
    pub route: String,
    /// Default: the route's first tier.
    pub candidate: Option<String>,
    /// Default: the route's shadow reference, else its baseline, else its last tier.
    pub reference: Option<String>,
    pub concurrency: usize,
    /// System prompt files to try on the candidate tier, each against the same reference answers.
    pub prompts: Vec<std::path::PathBuf>,
}

/// One line of a dataset: the messages a client would send, and optionally the right answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    messages: Value,
    #[serde(default)]
    expected: Option<Value>,
}

/// How one tier did.
#[derive(Debug, Clone, Serialize)]
pub struct TierResult {
    pub tier: String,
    pub model: String,
    /// Agreement with the expected answers, over the lines that have one and that it answered.
    pub accuracy: Option<f64>,
    pub answered: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// What a thousand such calls cost at the tier's price; `None` when its model has no price.
    pub cost_per_1k_usd: Option<String>,
    /// Why the first failed call failed, e.g. `connect_refused`.
    pub first_error: Option<String>,
}

/// A line where the tiers disagree, worst first.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub line: usize,
    pub agreement: f64,
    pub candidate: String,
    pub reference: String,
    pub expected: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub route: String,
    pub scorer: ScorerKind,
    pub lines: usize,
    pub candidate: TierResult,
    pub reference: TierResult,
    /// Agreement between the two tiers over the lines both answered (and the reference's answer
    /// could be scored), with its 95% interval.
    pub agreement: Option<f64>,
    pub interval: Option<Interval>,
    pub compared: usize,
    /// The lines that were not compared, and why.
    pub left_out: LeftOut,
    /// Agreement over every line, a line left out counting as a disagreement, with its 95%
    /// interval: what `--min-agreement` holds the candidate to (the interval's low end), so that
    /// failed calls or a handful of lines can never pass the gate.
    pub agreement_all_lines: Option<f64>,
    pub interval_all_lines: Option<Interval>,
    pub worst: Vec<Disagreement>,
    /// With `--prompt`: each prompt of the candidate tier, best first (agreement, then fewer
    /// contract rewrites, then fewer tokens).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<Variant>,
    /// Every call the run made, priced and ended as the gateway's own calls end
    /// ([`OwnCall`], `purpose = 'eval'`), for the ledger, so that reports show what evaluation
    /// cost beside product traffic.
    #[serde(skip)]
    pub calls: Vec<Outcome>,
}

/// Lines not compared, each counted once, under the first reason that applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    /// The candidate's call failed.
    pub candidate_failed: usize,
    /// The reference's call (or the judge's grading) failed.
    pub reference_failed: usize,
    /// Both answered, but the answers could not be scored (e.g. not JSON for the JSON scorer).
    pub unscorable: usize,
}

impl LeftOut {
    fn total(&self) -> usize {
        self.candidate_failed + self.reference_failed + self.unscorable
    }
}

/// A prompt variant of the candidate tier, as `--prompt` ranks them.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub prompt: String,
    pub agreement: Option<f64>,
    pub accuracy: Option<f64>,
    /// Answers the output contract would have had to rewrite (a label inside a longer answer).
    pub contract_rewrites: usize,
    pub tokens_per_call: f64,
}

/// One tier's answer to one line.
struct Answered {
    answer: Option<Answer>,
    latency_us: u64,
    cost: Option<Picodollars>,
    tokens: u64,
    error: Option<String>,
}

pub async fn run(
    config: &Config,
    dataset: &Path,
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let route = config
        .routes
        .iter()
        .find(|route| route.name == options.route)
        .ok_or_else(|| {
            EvalError::Route(
                options.route.clone(),
                names(config.routes.iter().map(|r| r.name.as_str())),
            )
        })?;
    let scorer = route
        .shadow
        .as_ref()
        .map(|shadow| shadow.scorer)
        .or_else(|| ScorerKind::for_task(route.kind))
        .ok_or_else(|| EvalError::NotScored(route.name.clone()))?;
    let candidate = match &options.candidate {
        Some(name) => step(config, route, name)?,
        None => route.chain[0].clone(),
    };
    let reference = match &options.reference {
        Some(name) => step(config, route, name)?,
        None => default_reference(route)?,
    };
    let variants = options
        .prompts
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|error| EvalError::Read {
                path: path.display().to_string(),
                error,
            })?;
            let prompt = with_labels(&text, route.labels.as_deref())
                .ok_or_else(|| EvalError::Prompt(path.display().to_string(), route.name.clone()))?;
            Ok((
                path.display().to_string(),
                ChainTier {
                    system_prompt: Some(prompt.into()),
                    ..candidate.clone()
                },
            ))
        })
        .collect::<Result<Vec<_>, EvalError>>()?;
    let lines = read_dataset(dataset)?;
    let asker = Asker {
        upstreams: Upstreams::new(config).map_err(|err| EvalError::Client(err.to_string()))?,
        pricing: Pricing::new(config),
        route: &route.name,
        candidate: &candidate.tier.name,
        concurrency: options.concurrency.max(1),
        calls: Mutex::default(),
    };
    let labels = route.labels.clone().unwrap_or_default();
    let expected: Vec<Option<Answer>> = lines
        .iter()
        .map(|line| {
            line.expected.as_ref().map(|expected| match expected {
                Value::String(text) => Answer::text(text.clone()),
                other => Answer::text(other.to_string()),
            })
        })
        .collect();
    let scoring = Scoring {
        scorer,
        labels: &labels,
        expected: &expected,
    };

    let theirs = asker.answers(&reference, &lines).await;
    let mine = asker.answers(&candidate, &lines).await;
    let mut ranked = Vec::new();
    for (prompt, variant) in &variants {
        let answers = asker.answers(variant, &lines).await;
        let grades = asker
            .grades(scorer, &reference, &lines, &answers, &theirs)
            .await;
        let (agreement, _) = scoring.agreement(&answers, &theirs, &grades);
        ranked.push(Variant {
            prompt: prompt.clone(),
            agreement,
            accuracy: scoring.tier(variant, &answers).accuracy,
            contract_rewrites: answers
                .iter()
                .filter_map(|a| a.answer.as_ref())
                .filter(|a| {
                    route.labels.as_deref().is_some_and(|labels| {
                        match_label(&a.text, labels).is_some_and(|(_, rewrite)| rewrite)
                    })
                })
                .count(),
            tokens_per_call: answers.iter().map(|a| a.tokens as f64).sum::<f64>()
                / answers.len().max(1) as f64,
        });
    }
    ranked.sort_by(|a, b| {
        b.agreement
            .unwrap_or(0.0)
            .total_cmp(&a.agreement.unwrap_or(0.0))
            .then(a.contract_rewrites.cmp(&b.contract_rewrites))
            .then(a.tokens_per_call.total_cmp(&b.tokens_per_call))
    });

    let grades = asker
        .grades(scorer, &reference, &lines, &mine, &theirs)
        .await;
    let (agreement, mut compared) = scoring.agreement(&mine, &theirs, &grades);
    let count = compared.len();
    let interval = agreement.map(|a| wilson(a * count as f64, count as u64, 1.96));
    let left_out = left_out(&mine, &theirs, &grades, &compared);
    let agreeing: f64 = compared.iter().map(|d| d.agreement).sum();
    let all = lines.len();
    let agreement_all_lines = (all > 0).then(|| agreeing / all as f64);
    let interval_all_lines = (all > 0).then(|| wilson(agreeing, all as u64, 1.96));
    compared.retain(|d| d.agreement < 1.0);
    compared.sort_by(|a, b| {
        a.agreement
            .total_cmp(&b.agreement)
            .then(a.line.cmp(&b.line))
    });
    compared.truncate(5);
    Ok(EvalReport {
        route: route.name.clone(),
        scorer,
        lines: lines.len(),
        candidate: scoring.tier(&candidate, &mine),
        reference: scoring.tier(&reference, &theirs),
        agreement,
        interval,
        compared: count,
        left_out,
        agreement_all_lines,
        interval_all_lines,
        worst: compared,
        prompts: ranked,
        calls: asker
            .calls
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    })
}

/// Why each line missing from `compared` is missing.
fn left_out(
    mine: &[Answered],
    theirs: &[Answered],
    grades: &[Option<Score>],
    compared: &[Disagreement],
) -> LeftOut {
    let mut out = LeftOut::default();
    for (index, (a, b)) in mine.iter().zip(theirs).enumerate() {
        // `compared` is in line order here.
        if compared
            .binary_search_by_key(&(index + 1), |d| d.line)
            .is_ok()
        {
            continue;
        }
        if a.answer.is_none() {
            out.candidate_failed += 1;
        } else if b.answer.is_none() || grades.get(index).is_some_and(Option::is_none) {
            out.reference_failed += 1;
        } else {
            out.unscorable += 1;
        }
    }
    out
}

/// Sends dataset lines to a tier, a few at a time, answers in line order.
struct Asker<'a> {
    upstreams: Upstreams,
    pricing: Pricing,
    route: &'a str,
    /// The tier on trial, which every call's ledger row names.
    candidate: &'a str,
    concurrency: usize,
    /// Every call made, ended with `purpose = 'eval'`.
    calls: Mutex<Vec<Outcome>>,
}

impl Asker<'_> {
    async fn answers(&self, step: &ChainTier, lines: &[Line]) -> Vec<Answered> {
        futures_util::stream::iter(lines)
            .map(|line| self.ask(step, &line.messages))
            .buffered(self.concurrency)
            .collect()
            .await
    }

    /// With the judge scorer, the reference tier's grade of each line's answer against its own;
    /// nothing for the other scorers, which need no call.
    async fn grades(
        &self,
        scorer: ScorerKind,
        reference: &ChainTier,
        lines: &[Line],
        mine: &[Answered],
        theirs: &[Answered],
    ) -> Vec<Option<Score>> {
        if scorer != ScorerKind::Judge {
            return Vec::new();
        }
        futures_util::stream::iter(lines.iter().zip(mine.iter().zip(theirs)))
            .map(|(line, (a, b))| async move {
                let (Some(a), Some(b)) = (&a.answer, &b.answer) else {
                    return None;
                };
                let asked = serde_json::json!({ "messages": line.messages });
                let rubric = judge::rubric_request(&reference.tier.model, &asked, &a.text, &b.text);
                let body = serde_json::to_vec(&rubric).expect("a JSON value serializes");
                let graded = self.send(&reference.tier, body).await;
                Some(match graded.answer {
                    Some(answer) => judge::grade(&answer.text),
                    None => Err(Unscorable(graded.error.unwrap_or_default())),
                })
            })
            .buffered(self.concurrency)
            .collect()
            .await
    }

    async fn ask(&self, step: &ChainTier, messages: &Value) -> Answered {
        let body =
            serde_json::to_vec(&serde_json::json!({"model": self.route, "messages": messages}))
                .expect("a JSON value serializes");
        match RequestBody::parse(Endpoint::ChatCompletions, &body) {
            Ok(parsed) => self.send(&step.tier, parsed.for_tier(step)).await,
            Err(err) => failed(0, err.to_string()),
        }
    }

    /// Sends a chat body to `tier` for one whole answer. An offline run keeps no health, so a
    /// provider of several servers has its calls spread over them at random.
    async fn send(&self, tier: &Arc<Tier>, body: Vec<u8>) -> Answered {
        let mut own = OwnCall::begin(self.route, tier, Purpose::Eval, self.candidate);
        let started = Instant::now();
        let server = fastrand::usize(..tier.provider.servers.len());
        let sent = self
            .upstreams
            .send(tier, server, Endpoint::ChatCompletions, body, false)
            .await;
        own.replied();
        let latency_us = started.elapsed().as_micros() as u64;
        let (answered, call) = match sent {
            Ok(Reply::Complete { body, usage }) => {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let tokens = usage.map(Tokens::from);
                let call = own.answered(&self.pricing, tokens.as_ref());
                let answered = Answered {
                    answer: Some(Answer::of_completion(&value)),
                    latency_us,
                    cost: call.request.cost_pusd,
                    tokens: tokens.map_or(0, |t| t.input + t.output),
                    error: None,
                };
                (answered, call)
            }
            Ok(Reply::Stream(_)) => {
                let error = UpstreamError::stream_broken("answered with a stream".into());
                (
                    failed(latency_us, "answered with a stream".into()),
                    own.failed(&error),
                )
            }
            Err(err) => (
                failed(latency_us, format!("{}: {}", err.reason(), err.detail)),
                own.failed(&err),
            ),
        };
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(call);
        answered
    }
}

fn failed(latency_us: u64, error: String) -> Answered {
    Answered {
        answer: None,
        latency_us,
        cost: None,
        tokens: 0,
        error: Some(error),
    }
}

/// How answers are scored: the route's scorer and labels, and each line's expected answer.
struct Scoring<'a> {
    scorer: ScorerKind,
    labels: &'a [String],
    expected: &'a [Option<Answer>],
}

impl Scoring<'_> {
    fn tier(&self, step: &ChainTier, answers: &[Answered]) -> TierResult {
        let mut latencies: Vec<u64> = Vec::new();
        let (mut accurate, mut judged) = (0.0, 0usize);
        let mut costs = Vec::new();
        for (answered, expected) in answers.iter().zip(self.expected) {
            let Some(answer) = &answered.answer else {
                continue;
            };
            latencies.push(answered.latency_us);
            costs.push(answered.cost);
            if let Some(expected) = expected
                && let Ok(scored) =
                    score(self.scorer.against_truth(), answer, expected, self.labels)
            {
                accurate += scored.agreement;
                judged += 1;
            }
        }
        latencies.sort_unstable();
        let answered = latencies.len();
        let priced = answered > 0 && costs.iter().all(Option::is_some);
        let total: i128 = costs.iter().flatten().map(|c| i128::from(c.0)).sum();
        TierResult {
            tier: step.tier.name.clone(),
            model: step.tier.model.clone(),
            accuracy: (judged > 0).then(|| accurate / judged as f64),
            answered,
            failed: answers.len() - answered,
            p50_ms: percentile(&latencies, 50),
            p95_ms: percentile(&latencies, 95),
            cost_per_1k_usd: priced
                .then(|| Picodollars::saturating(total * 1000 / answered as i128).to_string()),
            first_error: answers.iter().find_map(|a| a.error.clone()),
        }
    }

    /// Mean agreement of `mine` with `theirs` over the lines both answered and the reference's
    /// answer could be scored, and each such line; `grades` are the judge's, where it grades.
    fn agreement(
        &self,
        mine: &[Answered],
        theirs: &[Answered],
        grades: &[Option<Score>],
    ) -> (Option<f64>, Vec<Disagreement>) {
        let mut lines = Vec::new();
        for (index, (a, b)) in mine.iter().zip(theirs).enumerate() {
            let (Some(a), Some(b)) = (&a.answer, &b.answer) else {
                continue;
            };
            let scored = match grades.get(index) {
                Some(grade) => grade
                    .clone()
                    .unwrap_or_else(|| Err(Unscorable("no grade".into()))),
                None => score(self.scorer, a, b, self.labels),
            };
            if let Ok(scored) = scored {
                lines.push(Disagreement {
                    line: index + 1,
                    agreement: scored.agreement,
                    candidate: shown(a),
                    reference: shown(b),
                    expected: self.expected[index].as_ref().map(|e| e.text.clone()),
                });
            }
        }
        let sum: f64 = lines.iter().map(|d| d.agreement).sum();
        ((!lines.is_empty()).then(|| sum / lines.len() as f64), lines)
    }
}

impl EvalReport {
    /// Whether the candidate passes `--min-agreement bar`: the low end of the interval of its
    /// agreement over every line (a line left out is a disagreement) must reach the bar. `Err`
    /// says why not, with what would change it.
    pub fn gate(&self, bar: f64) -> Result<(), String> {
        let (Some(agreement), Some(interval)) = (self.agreement_all_lines, self.interval_all_lines)
        else {
            return Err(format!(
                "agreement over 0 lines cannot reach --min-agreement {bar}: {}",
                self.why_none()
            ));
        };
        if interval.low >= bar {
            return Ok(());
        }
        let left_out = self.left_out.total();
        Err(format!(
            "agreement {:.1}% over all {} lines ({} compared{}) has a 95% interval from {:.1}%, below --min-agreement {bar}: {}",
            agreement * 100.0,
            self.lines,
            self.compared,
            if left_out > 0 {
                format!(
                    ", {} left out and counted as disagreements: {}",
                    left_out,
                    self.left_out_reasons()
                )
            } else {
                String::new()
            },
            interval.low * 100.0,
            if agreement >= bar {
                "more lines would narrow the interval"
            } else {
                "the candidate disagrees too often"
            }
        ))
    }

    /// Why no line was compared.
    fn why_none(&self) -> String {
        if self.lines == 0 {
            "the dataset has no lines".into()
        } else {
            format!(
                "all {} lines were left out: {}",
                self.lines,
                self.left_out_reasons()
            )
        }
    }

    fn left_out_reasons(&self) -> String {
        let LeftOut {
            candidate_failed,
            reference_failed,
            unscorable,
        } = self.left_out;
        [
            (candidate_failed, "the candidate's call failed"),
            (reference_failed, "the reference's call failed"),
            (unscorable, "the answers could not be scored"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} where {why}"))
        .collect::<Vec<_>>()
        .join(", ")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let percent = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
        let _ = writeln!(
            out,
            "tierwise eval: route {}, {} lines, scorer {}\n",
            self.route,
            self.lines,
            serde_json::to_value(self.scorer)
                .map_or(String::new(), |v| v.as_str().unwrap_or("").to_string())
        );
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:>9} {:>9} {:>7} {:>8} {:>8} {:>12}",
            "", "tier (model)", "accuracy", "answered", "failed", "p50 ms", "p95 ms", "cost / 1k"
        );
        for (role, tier) in [
            ("candidate", &self.candidate),
            ("reference", &self.reference),
        ] {
            let _ = writeln!(
                out,
                "{role:<10} {:<24} {:>9} {:>9} {:>7} {:>8.1} {:>8.1} {:>12}",
                format!("{} ({})", tier.tier, tier.model),
                percent(tier.accuracy),
                tier.answered,
                tier.failed,
                tier.p50_ms,
                tier.p95_ms,
                tier.cost_per_1k_usd
                    .as_ref()
                    .map_or("unpriced".to_string(), |usd| format!("${usd}")),
            );
        }
        for (role, tier) in [
            ("candidate", &self.candidate),
            ("reference", &self.reference),
        ] {
            if let Some(error) = &tier.first_error {
                let _ = writeln!(
                    out,
                    "{role} {}: {} failed, first: {error}",
                    tier.tier, tier.failed
                );
            }
        }
        let _ = writeln!(
            out,
            "\nagreement, candidate with reference: {} over {} lines{}",
            percent(self.agreement),
            self.compared,
            self.interval.map_or(String::new(), |i| format!(
                " (95% interval {:.1}% to {:.1}%)",
                i.low * 100.0,
                i.high * 100.0
            ))
        );
        if self.compared == 0 {
            let _ = writeln!(out, "  no line compared: {}", self.why_none());
        } else if self.left_out.total() > 0 {
            let _ = writeln!(
                out,
                "  {} lines left out ({}); counted as disagreements, agreement over all {} lines is {}",
                self.left_out.total(),
                self.left_out_reasons(),
                self.lines,
                percent(self.agreement_all_lines)
            );
        }
        if !self.prompts.is_empty() {
            let _ = writeln!(out, "\nprompts for {}, best first:", self.candidate.tier);
            for (rank, v) in self.prompts.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {}. {}: agreement {}, accuracy {}, {} contract rewrites, {:.0} tokens a call",
                    rank + 1,
                    v.prompt,
                    percent(v.agreement),
                    percent(v.accuracy),
                    v.contract_rewrites,
                    v.tokens_per_call
                );
            }
        }
        if !self.worst.is_empty() {
            let _ = writeln!(out, "\nworst disagreements:");
            for d in &self.worst {
                let _ = writeln!(
                    out,
                    "  line {}: {:.2} candidate {:?}, reference {:?}{}",
                    d.line,
                    d.agreement,
                    d.candidate,
                    d.reference,
                    d.expected
                        .as_ref()
                        .map_or(String::new(), |e| format!(", expected {e:?}"))
                );
            }
        }
        out
    }
}

/// A tier by name, as the route calls it (with its prompt) when it is in the route's chain.
fn step(config: &Config, route: &Route, name: &str) -> Result<ChainTier, EvalError> {
    if let Some(step) = route.chain.iter().find(|step| step.tier.name == name) {
        return Ok(step.clone());
    }
    let tier: &Arc<Tier> = config
        .tiers
        .iter()
        .find(|tier| tier.name == name)
        .ok_or_else(|| {
            EvalError::Tier(
                name.to_string(),
                names(config.tiers.iter().map(|t| t.name.as_str())),
            )
        })?;
    Ok(ChainTier {
        tier: tier.clone(),
        system_prompt: None,
    })
}

fn default_reference(route: &Route) -> Result<ChainTier, EvalError> {
    let tier = route
        .shadow
        .as_ref()
        .map(|shadow| shadow.reference.clone())
        .or_else(|| route.baseline.clone());
    if let Some(tier) = tier {
        return Ok(route
            .chain
            .iter()
            .find(|step| step.tier.name == tier.name)
            .cloned()
            .unwrap_or(ChainTier {
                tier,
                system_prompt: None,
            }));
    }
    match &route.chain[..] {
        [_, .., last] => Ok(last.clone()),
        _ => Err(EvalError::NoReference(route.name.clone())),
    }
}

fn read_dataset(path: &Path) -> Result<Vec<Line>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|error| EvalError::Read {
        path: path.display().to_string(),
        error,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let problem = |problem: String| EvalError::Line {
                path: path.display().to_string(),
                line: index + 1,
                problem,
            };
            let line: Line = serde_json::from_str(line).map_err(|err| {
                problem(format!(
                    "{err}; each line is {{\"messages\": [...], \"expected\": \"...\"}}"
                ))
            })?;
            if !line.messages.is_array() {
                return Err(problem("'messages' must be an array of messages".into()));
            }
            Ok(line)
        })
        .collect()
}

fn shown(answer: &Answer) -> String {
    let text = if answer.text.is_empty() && !answer.tool_calls.is_empty() {
        answer
            .tool_calls
            .iter()
            .map(|call| format!("{}({})", call.name, call.arguments))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        answer.text.clone()
    };
    text.chars().take(120).collect()
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u64], pct: usize) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (pct * sorted_us.len()).div_ceil(100).max(1);
    sorted_us[rank - 1] as f64 / 1000.0
}
