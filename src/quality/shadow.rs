//! Shadow checks of live traffic. A request its route sampled ends in [`crate::outcome`] like any
//! other; once its client has the answer, the sample comes here and the tier that did not answer
//! it is asked the same thing as one whole (non-streamed) request: the reference tier when the
//! candidate answered, the candidate when the route has demoted it and serves from the reference
//! (both when the demoted route was served by a third tier). The two answers are scored, the calls
//! priced and written to the ledger as `purpose = 'shadow'`, and the score goes to the route's
//! [`Watch`], whose changes [`super::alert`] announces.
//!
//! A shadow check never touches a client request: samples arrive on a bounded queue the request
//! path only `try_send`s to; each route runs at most `shadow.concurrency` checks and skips a sample
//! that finds them all busy; calls go through the provider's breaker and in-flight cap like any
//! call (a check never pushes a provider past `max_in_flight`); and a route stops sampling once
//! its day's `shadow.daily_budget_usd` is spent. Shadow calls go straight to the upstreams, never
//! through the request path, so they are never sampled themselves.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::alert::Alerts;
use super::judge;
use super::score::{Answer, ScorerKind, score};
use super::watch::{RESYNC, Watch, Watches, now_ms};
use crate::config::{ChainTier, Tier};
use crate::health::Health;
use crate::ledger::quality::{DAY_MS, utc_day};
use crate::ledger::{
    Answer as CountedAnswer, Picodollars, Pricing, Purpose, RequestRow, Store, Tokens, Uncounted,
};
use crate::limits::{BUDGET_SPENT, Budgets, Hold, Used};
use crate::openai::{Endpoint, RequestBody};
use crate::outcome::{Outcome, Outcomes, Sample, SampledAnswer};
use crate::upstream::{Reply, Upstreams};

/// Samples waiting for a check; more are skipped (`queue_full`) rather than held.
pub const QUEUE: usize = 1024;

/// What the checks need, shared by every check task.
pub struct Checker {
    pub watches: Arc<Watches>,
    pub upstreams: Upstreams,
    pub health: Arc<Health>,
    pub pricing: Arc<Pricing>,
    pub outcomes: Outcomes,
    pub store: Store,
    pub alerts: Arc<Alerts>,
    /// The monthly budgets a shadow call counts against: its route's and all API spend's.
    pub budgets: Arc<Budgets>,
}

/// The background task that takes samples and runs their checks.
pub struct ShadowChecks {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl ShadowChecks {
    pub fn spawn(checker: Checker, samples: mpsc::Receiver<Sample>) -> ShadowChecks {
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(run(Arc::new(checker), samples, closed));
        ShadowChecks { task, close }
    }

    /// Takes no more samples and waits for the checks in flight (their calls are paid for and
    /// must reach the ledger), at most `deadline`.
    pub async fn finish(self, deadline: Duration) {
        let _ = self.close.send(());
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(
                "shadow checks still running {} ms after shutdown began were cut off; their calls are not in the ledger",
                deadline.as_millis()
            );
            task.abort();
        }
    }
}

async fn run(
    checker: Arc<Checker>,
    mut samples: mpsc::Receiver<Sample>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut checks = JoinSet::new();
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
    loop {
        tokio::select! {
            sample = samples.recv() => {
                let Some(sample) = sample else { break };
                let Some(watch) = checker.watches.get(&sample.route.name).cloned() else {
                    continue;
                };
                match watch.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        checks.spawn(check(checker.clone(), watch, sample, permit));
                    }
                    Err(_) => crate::metrics::shadow_skipped(&sample.route.name, "busy"),
                }
            }
            Some(_) = checks.join_next(), if !checks.is_empty() => {}
            _ = resync.tick() => {
                for watch in checker.watches.all() {
                    if let Err(err) = watch.resync(&checker.store).await {
                        tracing::warn!(route = %watch.route.name, "cannot read the quality state from the ledger: {err}");
                    }
                }
            }
            _ = &mut closed => break,
        }
    }
    while checks.join_next().await.is_some() {}
}

/// One tier's answer to a sample, and the ledger row of the call that got it (none when it is the
/// answer the client was given).
struct Side {
    answer: Answer,
    row: Option<RequestRow>,
}

async fn check(
    checker: Arc<Checker>,
    watch: Arc<Watch>,
    mut sample: Sample,
    _permit: OwnedSemaphorePermit,
) {
    let shadow = watch.shadow();
    let route = &watch.route.name;
    let served = &sample.served_by;
    let by_candidate = served.name == shadow.candidate.name;
    let by_reference = served.name == shadow.reference.name;
    // A route that fell back for an outage, not a demotion, says nothing about its candidate.
    if !by_candidate && !sample.primary_demoted {
        return;
    }
    // A relayed stream keeps its text, not its tool calls: comparing those would count every
    // streamed tool call as a disagreement.
    if shadow.scorer == ScorerKind::ToolCalls && matches!(sample.answer, SampledAnswer::Text(_)) {
        crate::metrics::shadow_skipped(route, "stream_tool_calls");
        return;
    }
    let endpoint = sample.endpoint;
    let Some(said) = endpoint.spec().said else {
        return;
    };
    let Ok(request) = RequestBody::parse(endpoint, &sample.body) else {
        return;
    };
    // Reading the answer is a parse of up to `server.max_answer_bytes`: off this runtime too.
    let answered = std::mem::replace(&mut sample.answer, SampledAnswer::Text(String::new()));
    let Ok(answer) = tokio::task::spawn_blocking(move || match answered {
        SampledAnswer::Body(body) => {
            Answer::from(said(&serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        SampledAnswer::Text(text) => Answer::text(text),
    })
    .await
    else {
        return;
    };
    let given = Side { answer, row: None };
    let mut rows = Vec::new();
    let ask = async |tier: &Arc<Tier>| -> Result<Side, &'static str> {
        let step = route_step(&watch, tier);
        let cap = tier.max_tokens.map_or(MAX_TOKENS, u64::from);
        let max_tokens = request.max_tokens().map_or(cap, |asked| asked.min(cap));
        let body = request.for_tier_whole(&step, max_tokens);
        call(&checker, &watch, &sample, endpoint, tier, body, max_tokens).await
    };
    let sides = if by_candidate {
        ask(&shadow.reference)
            .await
            .map(|reference| (given, reference))
    } else if by_reference {
        ask(&shadow.candidate)
            .await
            .map(|candidate| (candidate, given))
    } else {
        match ask(&shadow.candidate).await {
            Ok(candidate) => ask(&shadow.reference)
                .await
                .map(|reference| (candidate, reference)),
            Err(skipped) => Err(skipped),
        }
    };
    let (candidate, reference) = match sides {
        Ok(sides) => sides,
        Err(skipped) => {
            crate::metrics::shadow_skipped(route, skipped);
            return;
        }
    };
    let labels = watch.route.labels.as_deref().unwrap_or(&[]);
    let failed = [&candidate, &reference]
        .iter()
        .any(|side| side.row.as_ref().is_some_and(|row| row.status != 200));
    // Scoring is CPU work (ROUGE-L is quadratic up to its cap): on a blocking thread, never on
    // the runtime that runs the ledger writer, the probes and the feedback writer.
    let mut scored = None;
    if !failed && shadow.scorer != ScorerKind::Judge {
        let (kind, labels) = (shadow.scorer, labels.to_vec());
        let (a, b) = (candidate.answer.clone(), reference.answer.clone());
        scored = tokio::task::spawn_blocking(move || score(kind, &a, &b, &labels).ok())
            .await
            .ok()
            .flatten();
    }
    let mut judged = None;
    if !failed && shadow.scorer == ScorerKind::Judge {
        // The judge reads the question as a chat request: an endpoint served through chat is
        // written as one first.
        let asked = match endpoint.spec().via_chat {
            Some(via) => (via.request)(&sample.body, &shadow.reference.model)
                .ok()
                .and_then(|chat| serde_json::from_slice(&chat).ok()),
            None => serde_json::from_slice(&sample.body).ok(),
        }
        .unwrap_or(Value::Null);
        let rubric = judge::rubric_request(
            &shadow.reference.model,
            &asked,
            &candidate.answer.text,
            &reference.answer.text,
        );
        let body = serde_json::to_vec(&rubric).expect("a JSON value serializes");
        match call(
            &checker,
            &watch,
            &sample,
            Endpoint::ChatCompletions,
            &shadow.reference,
            body,
            judge::GRADE_TOKENS,
        )
        .await
        {
            Ok(grading) => {
                if grading.row.as_ref().is_some_and(|row| row.status == 200) {
                    scored = judge::grade(&grading.answer.text).ok();
                }
                judged = grading.row;
            }
            Err(skipped) => crate::metrics::shadow_skipped(route, skipped),
        }
    }
    let mut cost = Picodollars(0);
    let sides = [candidate.row, reference.row, judged];
    for row in sides.into_iter().flatten() {
        cost = Picodollars::saturating(
            i128::from(cost.0) + i128::from(row.cost_pusd.unwrap_or_default().0),
        );
        rows.push(row);
    }
    let outcome = match (&scored, failed) {
        (_, true) => "failed",
        (Some(_), _) => "scored",
        (None, _) => "unscorable",
    };
    crate::metrics::shadow_checked(route, outcome, cost);
    // The score is kept on one row of the check, the last call's, so that a sample counts once.
    if let (Some(scored), Some(last)) = (&scored, rows.last_mut()) {
        last.agreement_ppm = Some((scored.agreement * 1e6).round() as i64);
    }
    for row in rows {
        checker
            .outcomes
            .record(Outcome {
                request: row,
                attempts: Vec::new(),
                to_count: None,
                upstream_us: None,
                hold: Default::default(),
            })
            .await;
    }
    if let Some(scored) = scored {
        for change in watch.record(scored.agreement) {
            checker
                .alerts
                .announce(&checker.store, &watch, &change)
                .await;
        }
    }
}

/// `tier` as the route calls it: with the route's prompt for it, where it is in the chain.
fn route_step(watch: &Watch, tier: &Arc<Tier>) -> ChainTier {
    watch
        .route
        .chain
        .iter()
        .find(|step| step.tier.name == tier.name)
        .cloned()
        .unwrap_or_else(|| ChainTier {
            tier: tier.clone(),
            system_prompt: None,
        })
}

/// What a shadow call asks of a tier that sets no `max_tokens`: the check wants one answer of
/// bounded length, and its cost reserved before it is sent.
pub const MAX_TOKENS: u64 = 4096;
/// How long a check waits for the ledger's sum of the day's shadow spend before it judges the
/// budget by what this replica knows.
const SPEND_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The most a call of `body` to `tier`, answered in at most `max_tokens`, can cost: every token
/// of the prompt is at least one byte of the body. `None` when the tier's model has no price.
fn worst_cost(
    pricing: &Pricing,
    tier: &Tier,
    prompt_bytes: usize,
    max_tokens: u64,
) -> Option<Picodollars> {
    let tokens = Tokens {
        input: prompt_bytes as u64,
        cached: 0,
        cache_write: 0,
        output: max_tokens,
        estimated: false,
    };
    pricing.price(tier, None, &tokens).cost
}

/// Sends `body` to `tier` for one whole answer of at most `max_tokens`, once its worst-case cost
/// is reserved against the route's daily budget: `Err` names why the call was not made.
async fn call(
    checker: &Checker,
    watch: &Arc<Watch>,
    sample: &Sample,
    endpoint: Endpoint,
    tier: &Arc<Tier>,
    body: Vec<u8>,
    max_tokens: u64,
) -> Result<Side, &'static str> {
    let route = &watch.route;
    let pricing = &checker.pricing;
    // Only a primary checked in reverse can be unpriced (start-up refuses such a reference): its
    // calls are recorded without cost, and hold none of the budget.
    let worst = worst_cost(pricing, tier, body.len(), max_tokens).unwrap_or_default();
    let floor = worst_cost(pricing, tier, 0, max_tokens).unwrap_or_default();
    let (_, day_start) = utc_day(now_ms());
    let ledger = tokio::time::timeout(
        SPEND_READ_TIMEOUT,
        checker
            .store
            .spent_between(&route.name, Purpose::Shadow, day_start, day_start + DAY_MS),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let reservation = watch
        .reserve(now_ms(), worst, floor, ledger)
        .ok_or("over_budget")?;
    // A spent monthly budget stops the checks too: they are API calls like any other.
    let Some(held) = checker.budgets.reserve_call(&route.name, worst) else {
        reservation.settle(0);
        return Err(BUDGET_SPENT);
    };
    let mut monthly = Hold::default();
    for reservation in held {
        monthly.add(reservation);
    }
    let Ok(mut lease) = checker.health.of(&tier.provider).admit() else {
        reservation.settle(0);
        monthly.settle(Used::default());
        return Err("provider_unavailable");
    };
    let ts_ms = now_ms();
    let started = Instant::now();
    let sent = checker
        .upstreams
        .send(tier, lease.server_index(), endpoint, body.clone(), false)
        .await;
    let mut row = super::check_row(
        &route.name,
        tier,
        Purpose::Shadow,
        &watch.shadow().candidate.name,
        ts_ms,
        started.elapsed().as_micros() as i64,
    );
    row.sample_of = Some(sample.request_id.clone());
    row.endpoint = Cow::Borrowed(endpoint.spec().ledger_name);
    let answer = match sent {
        Ok(Reply::Complete {
            body: answer,
            usage,
        }) => {
            lease.succeeded();
            let tokens = match usage {
                Some(usage) => Tokens::from(usage),
                None => {
                    Uncounted {
                        endpoint,
                        model: tier.model.clone(),
                        request: Bytes::from(body),
                        answer: CountedAnswer::Body(answer.clone()),
                    }
                    .count_off_loop()
                    .await
                }
            };
            let priced = checker.pricing.price(tier, None, &tokens);
            super::set_answered(&mut row, &tokens, &priced);
            let said = endpoint.spec().said.unwrap_or(crate::openai::chat::said);
            Answer::from(said(
                &serde_json::from_slice(&answer).unwrap_or(Value::Null),
            ))
        }
        Ok(Reply::Stream(_)) => {
            lease.broke("answered a whole request with a stream");
            row.status = 502;
            row.error_kind = Some("stream_broken".into());
            Answer::default()
        }
        Err(error) => {
            lease.failed(&error);
            super::set_failed(&mut row, &error);
            Answer::default()
        }
    };
    let cost = row.cost_pusd.map_or(0, |cost| cost.0.max(0) as u64);
    reservation.settle(cost);
    monthly.settle(Used {
        tokens: 0,
        picodollars: cost,
    });
    Ok(Side {
        answer,
        row: Some(row),
    })
}
