//! The tier chain: try each tier of the target in order until one answers. A tier whose breaker is
//! open or whose provider is at `max_in_flight` is passed over at once. A retryable failure
//! (connection, timeout, 429, 5xx, malformed body, a stream broken before its first event) moves on to
//! the next tier; a client error goes straight back, because every tier would refuse it alike. A 429
//! with a short `Retry-After` is retried once on the same tier first; after that the tier rests
//! until its `Retry-After` has passed, without its provider's other tiers resting with it. A tier
//! whose provider has several servers is called on the one [`crate::health`] picks; where that
//! server could not be reached, answered 5xx or broke before answering, the tier is tried once more
//! on another of its servers before the chain moves on (a timeout moves on: the tier's time is
//! spent). Every attempt is kept, with the server it went to, for the fallback header and the
//! ledger. Before each call the chain asks whether the client is still there: once it has gone,
//! nothing more is sent upstream for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::config::{Abilities, AllOpen, ChainTier, Tier, UpstreamServer};
use crate::health::{Health, Lease};
use crate::limits::Skips;
use crate::openai::RequestBody;
use crate::traces::{AttemptTrace, RequestTrace};
use crate::upstream::{FromClient, Lack, Reply, UpstreamError, UpstreamErrorKind, Upstreams};

/// One call to one tier while serving a request, or a tier passed over without a call.
#[derive(Debug)]
pub struct Attempt {
    pub tier: Arc<Tier>,
    /// The server called; `None` for a tier passed over without a call.
    pub server: Option<Arc<UpstreamServer>>,
    pub latency: Duration,
    /// `None` when this tier answered.
    pub error: Option<UpstreamError>,
    /// Its span, where the request is traced and the tier was called.
    pub trace: Option<AttemptTrace>,
}

/// A request some tier answered.
pub struct Served {
    pub by: ServedBy,
    pub reply: Reply,
    /// The provider slot, held until a streamed answer ends.
    pub lease: Lease,
}

/// The tier that answered and how it came to.
pub struct ServedBy {
    pub tier: Arc<Tier>,
    /// The server of the tier's provider that answered.
    pub server: Arc<UpstreamServer>,
    /// Every attempt in order; the last one is the tier that answered.
    pub attempts: Vec<Attempt>,
    /// The failed attempts before it, as `x-tierwise-fallback` shows them.
    pub fallback: Option<String>,
}

/// A request no tier answered: the last failure decides what the client is told.
#[derive(Debug)]
pub struct Unserved {
    pub tier: Arc<Tier>,
    pub error: UpstreamError,
    pub attempts: Vec<Attempt>,
    pub fallback: Option<String>,
}

impl Unserved {
    fn new(tier: Arc<Tier>, error: UpstreamError, attempts: Vec<Attempt>) -> Unserved {
        // A refusal passed straight back is the request's answer, not a tier to fall back from.
        let moved_on = match attempts.split_last() {
            Some((_, before)) if !error.is_retryable() => before,
            _ => &attempts[..],
        };
        Unserved {
            tier,
            error,
            fallback: fallback_path(moved_on),
            attempts,
        }
    }
}

/// The tier a request last sent an upstream call to, and the server of its provider that took
/// it, for the record of a request cut off before its end (a shutdown's grace ran out): that call
/// may have been charged for, and the report counts it against that server. Written once per
/// call and read only when a request is cut, so its lock is never contended.
#[derive(Debug, Default)]
pub struct Called(std::sync::Mutex<Option<(Arc<Tier>, Arc<UpstreamServer>)>>);

impl Called {
    fn set(&self, tier: &Arc<Tier>, server: &Arc<UpstreamServer>) {
        if let Ok(mut called) = self.0.lock() {
            *called = Some((tier.clone(), server.clone()));
        }
    }

    pub fn last(&self) -> Option<(Arc<Tier>, Arc<UpstreamServer>)> {
        self.0.lock().ok().and_then(|called| called.clone())
    }
}

/// What the chain needs besides the request: where to send it and what it may skip.
pub struct ChainRun<'a> {
    pub upstreams: &'a Upstreams,
    pub health: &'a Health,
    pub chain: &'a [ChainTier],
    pub when_all_open: AllOpen,
    /// The route's quality monitor demoted its primary: it is tried last, not first.
    pub primary_demoted: bool,
    /// The tiers admission passed over for this request: never called, not even as a last resort.
    pub skips: &'a Skips,
    /// Named in the log when a tier's refusal teaches its context window.
    pub request_id: &'a str,
    pub called: &'a Called,
    /// The request's trace, where it is traced: each call is a span of it, and carries it upstream.
    pub trace: Option<&'a RequestTrace>,
    /// The client's headers the endpoint passes to a tier that takes the request as it came.
    pub client_headers: &'a [(http::HeaderName, http::HeaderValue)],
    /// Whether the client has gone: asked before each call, so that once it has, no tier is
    /// called (nor charged) for it — a stream whose client left before its first byte does not
    /// fall back to the next tier.
    pub client_gone: &'a (dyn Fn() -> bool + Sync),
}

impl ChainRun<'_> {
    pub async fn run(&self, body: &RequestBody<'_>) -> Result<Served, Unserved> {
        let mut attempts = Vec::with_capacity(self.chain.len() + 1);
        for (index, step) in self.chain.iter().enumerate() {
            let demoted = (index == 0 && self.primary_demoted && self.chain.len() > 1).then(|| {
                UpstreamError::new_detail(
                    UpstreamErrorKind::Demoted,
                    "its answers fell below the route's agreement bar; it is tried last".into(),
                )
            });
            let skipped = self.skips.reason(&step.tier).map(|reason| {
                UpstreamError::new_detail(
                    UpstreamErrorKind::Skipped(reason),
                    format!("passed over at admission ({reason})"),
                )
            });
            let skip = match skipped.or(demoted).or_else(|| lacking(step, body)) {
                Some(error) => Some(error),
                None => self.too_long_for(step, body).await,
            };
            if let Some(error) = skip {
                attempts.push(Attempt {
                    tier: step.tier.clone(),
                    server: None,
                    latency: Duration::ZERO,
                    error: Some(error),
                    trace: None,
                });
                continue;
            }
            let admitted = self.health.rate_limit(&step.tier).and_then(|()| {
                self.health
                    .of(&step.tier.provider)
                    .admit_for(prompt(body), None)
            });
            let lease = match admitted {
                Ok(lease) => lease,
                Err(skip) => {
                    attempts.push(Attempt {
                        tier: step.tier.clone(),
                        server: None,
                        latency: Duration::ZERO,
                        error: Some(skip.into_error()),
                        trace: None,
                    });
                    continue;
                }
            };
            match self.call_tier(step, body, lease, &mut attempts).await {
                Ok(served) => return Ok(served),
                Err(error) if !error.is_retryable() => {
                    return Err(Unserved::new(step.tier.clone(), error, attempts));
                }
                Err(_) => {}
            }
        }
        // A demoted primary still answers better than no tier at all.
        if attempts.first().is_some_and(|a| {
            a.error
                .as_ref()
                .is_some_and(|e| e.kind == UpstreamErrorKind::Demoted)
        }) {
            let primary = &self.chain[0];
            let admitted = self.health.rate_limit(&primary.tier).and_then(|()| {
                self.health
                    .of(&primary.tier.provider)
                    .admit_for(prompt(body), None)
            });
            match admitted {
                Ok(lease) => match self.call_tier(primary, body, lease, &mut attempts).await {
                    Ok(served) => return Ok(served),
                    Err(error) if !error.is_retryable() => {
                        return Err(Unserved::new(primary.tier.clone(), error, attempts));
                    }
                    Err(_) => {}
                },
                Err(skip) => attempts.push(Attempt {
                    tier: primary.tier.clone(),
                    server: None,
                    latency: Duration::ZERO,
                    error: Some(skip.into_error()),
                    trace: None,
                }),
            }
        }
        // Only open breakers justify the last resort: a saturated provider stays capped.
        let all_open = attempts.iter().all(|a| {
            a.error
                .as_ref()
                .is_some_and(|e| e.kind == UpstreamErrorKind::BreakerOpen)
        });
        let primary = &self.chain[0];
        if all_open && self.when_all_open == AllOpen::TryPrimary {
            // Every breaker is open: the primary may have recovered, and failing costs one call.
            let lease = self.health.of(&primary.tier.provider).force();
            return match self.call(primary, body, lease, &mut attempts).await {
                Ok(served) => Ok(served),
                Err(error) => Err(Unserved::new(primary.tier.clone(), error, attempts)),
            };
        }
        let last = attempts.last().expect("a chain is never empty");
        let (tier, error) = (
            last.tier.clone(),
            last.error.clone().expect("every attempt failed"),
        );
        Err(Unserved::new(tier, error, attempts))
    }

    /// The refusal a tier with a known context window would give, without calling it: the prompt
    /// and the answer budget (the client's, else the tier's) do not fit. Most requests are far from
    /// any window and are judged by their length in bytes alone; only one near it is counted, and
    /// a long one on the blocking pool (a 100k-token prompt takes ~7 ms to count, which the other
    /// requests of this serving thread should not wait out).
    async fn too_long_for(
        &self,
        step: &ChainTier,
        body: &RequestBody<'_>,
    ) -> Option<UpstreamError> {
        let limit = u64::from(self.health.context_limit(&step.tier)?);
        let budget = body
            .max_tokens()
            .or(step.tier.max_tokens.map(u64::from))
            .unwrap_or(0);
        // A client may ask for up to u64::MAX tokens: the sums saturate rather than wrap past
        // the window.
        if (body.byte_len() as u64).saturating_add(budget) <= limit {
            return None;
        }
        // A count that cannot finish leaves the tier to judge the request itself.
        let prompt = count_prompt(step, body).await?;
        let needed = prompt.saturating_add(budget);
        (needed > limit).then(|| {
            UpstreamError::new_detail(
                UpstreamErrorKind::ContextTooLong,
                format!(
                    "needs about {needed} tokens ({prompt} prompt, {budget} answer); the tier holds {limit}"
                ),
            )
        })
    }

    /// Calls one tier on the server `lease` holds; where that server failed in a way another of
    /// the provider's servers may not, once more on another that may be called now.
    async fn call_tier(
        &self,
        step: &ChainTier,
        body: &RequestBody<'_>,
        lease: Lease,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Served, UpstreamError> {
        let tried = lease.server_index();
        match self.call(step, body, lease, attempts).await {
            Err(error) if error.another_server_may_answer() => {
                match self
                    .health
                    .of(&step.tier.provider)
                    .admit_for(prompt(body), Some(tried))
                {
                    Ok(lease) => self.call(step, body, lease, attempts).await,
                    Err(_) => Err(error),
                }
            }
            answered_or_not => answered_or_not,
        }
    }

    /// Calls one tier on the server `lease` holds, retrying once after a short `Retry-After` on
    /// 429.
    async fn call(
        &self,
        step: &ChainTier,
        body: &RequestBody<'_>,
        mut lease: Lease,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Served, UpstreamError> {
        let mut retried = false;
        loop {
            if (self.client_gone)() {
                lease.unused();
                let error = UpstreamError::new_detail(
                    UpstreamErrorKind::ClientLeft,
                    "the client had gone; nothing was sent".into(),
                );
                attempts.push(Attempt {
                    tier: step.tier.clone(),
                    server: None,
                    latency: Duration::ZERO,
                    error: Some(error.clone()),
                    trace: None,
                });
                return Err(error);
            }
            self.called.set(&step.tier, lease.server());
            let trace = self.trace.map(RequestTrace::attempt);
            let started = Instant::now();
            let result = self
                .upstreams
                .send_traced(
                    &step.tier,
                    lease.server_index(),
                    body.endpoint(),
                    body.for_tier(step),
                    body.stream,
                    FromClient {
                        trace: trace.as_ref().map(|(_, propagation)| propagation),
                        headers: self.client_headers,
                    },
                )
                .await;
            let trace = trace.map(|(attempt, _)| attempt);
            let latency = started.elapsed();
            match result {
                Ok(reply) => {
                    // A stream's outcome is known only at its end: the relay settles its lease
                    // then, so a provider that breaks every stream midway opens its breaker.
                    if !matches!(reply, Reply::Stream(_)) {
                        lease.succeeded();
                    }
                    if let Reply::Complete {
                        usage: Some(usage), ..
                    } = &reply
                    {
                        lease.served_tokens(
                            &step.tier.name,
                            usage.prompt_tokens + usage.completion_tokens,
                        );
                    }
                    attempts.push(Attempt {
                        tier: step.tier.clone(),
                        server: Some(lease.server().clone()),
                        latency,
                        error: None,
                        trace,
                    });
                    let attempts = std::mem::take(attempts);
                    return Ok(Served {
                        by: ServedBy {
                            tier: step.tier.clone(),
                            server: lease.server().clone(),
                            fallback: fallback_path(&attempts),
                            attempts,
                        },
                        reply,
                        lease,
                    });
                }
                Err(error) => {
                    tracing::debug!(tier = %step.tier.name, reason = %error, "attempt failed");
                    attempts.push(Attempt {
                        tier: step.tier.clone(),
                        server: Some(lease.server().clone()),
                        latency,
                        error: Some(error.clone()),
                        trace,
                    });
                    let wait = error
                        .retry_after
                        .filter(|wait| *wait <= step.tier.provider.retry_429_max_wait);
                    match wait {
                        Some(wait)
                            if !retried
                                && error.kind
                                    == UpstreamErrorKind::Status(StatusCode::TOO_MANY_REQUESTS) =>
                        {
                            retried = true;
                            lease.answered_before_retry();
                            tokio::time::sleep(wait).await;
                        }
                        _ => {
                            if error.is_rate_limit() {
                                self.health.rate_limited(&step.tier, error.retry_after);
                            }
                            if let Some(refusal) = error.context_refusal()
                                && let Some(counted) = count_prompt(step, body).await
                            {
                                lease.learned_context_window(
                                    &step.tier.name,
                                    refusal,
                                    counted,
                                    self.request_id,
                                );
                            }
                            lease.failed(&error);
                            return Err(error);
                        }
                    }
                }
            }
        }
    }
}

/// The request's prompt in tokens as tierwise counts it for `step`: where the request runs when it
/// is short, on the blocking pool when it is long; `None` if the count could not finish.
async fn count_prompt(step: &ChainTier, body: &RequestBody<'_>) -> Option<u64> {
    let count = body.endpoint().spec().count_prompt;
    crate::openai::tokens::count_off_the_loop(count, &step.tier.model, body.for_tier(step)).await
}

/// What prefix affinity keys on: the request's messages (chat) or input (embeddings) as the
/// client sent them; bytes, not tokens, as counting would cost the hot path a tokenizer run and
/// a prompt whose bytes begin alike begins with the same tokens.
fn prompt<'a>(body: &RequestBody<'a>) -> Option<&'a [u8]> {
    body.field("messages")
        .or_else(|| body.field("input"))
        .map(|raw| raw.get().as_bytes())
}

/// The first tier of `chain` that can take `body` as the request stands — one the chain would not
/// pass over for the request itself: its model has what the request needs ([`lacking`]) and its
/// provider's format carries it (the preparation a call makes, [`Upstreams::can_take`]) — found
/// without calling any tier; where none can, the failure a request to the chain would end with.
/// Health is not judged (breakers, caps and rests change by the moment): this answers for the
/// request, as `…/count_tokens` asks.
pub fn first_able<'a>(
    upstreams: &Upstreams,
    chain: &'a [ChainTier],
    body: &RequestBody<'_>,
) -> Result<&'a ChainTier, Box<Unserved>> {
    let mut attempts = Vec::with_capacity(chain.len());
    for step in chain {
        let refused = lacking(step, body).or_else(|| {
            upstreams
                .can_take(&step.tier, body.endpoint(), body.for_tier(step))
                .err()
        });
        let Some(error) = refused else {
            return Ok(step);
        };
        attempts.push(Attempt {
            tier: step.tier.clone(),
            server: None,
            latency: Duration::ZERO,
            error: Some(error),
            trace: None,
        });
    }
    let last = attempts.last().expect("a chain is never empty");
    let (tier, error) = (
        last.tier.clone(),
        last.error.clone().expect("every step was refused"),
    );
    Err(Box::new(Unserved::new(tier, error, attempts)))
}

/// The refusal a tier would give a request that needs what its model lacks, without calling it.
fn lacking(step: &ChainTier, body: &RequestBody<'_>) -> Option<UpstreamError> {
    let has = step.tier.abilities;
    if has == Abilities::ALL {
        return None;
    }
    let needs = body.needs();
    let lack = if needs.tools && !has.tools {
        Lack::Tools
    } else if needs.json_schema && !has.json_schema {
        Lack::JsonSchema
    } else if needs.vision && !has.vision {
        Lack::Vision
    } else {
        return None;
    };
    Some(UpstreamError::new_detail(
        UpstreamErrorKind::Lacks(lack),
        format!(
            "the request needs {}, which the tier's model lacks",
            lack.param()
        ),
    ))
}

/// `local:connect_refused,api_fast:http_503`: the tiers that failed before the one that answered,
/// as the `x-tierwise-fallback` header shows them, each once with how it last failed (a primary
/// skipped while open and then called as the last resort is named once). A tier that answered in
/// the end is not among them.
fn fallback_path(attempts: &[Attempt]) -> Option<String> {
    let mut failed: Vec<(&str, String)> = Vec::new();
    for attempt in attempts {
        let name = attempt.tier.name.as_str();
        failed.retain(|(tier, _)| *tier != name);
        if let Some(error) = &attempt.error {
            failed.push((name, error.reason()));
        }
    }
    let path: Vec<String> = failed
        .into_iter()
        .map(|(tier, reason)| format!("{tier}:{reason}"))
        .collect();
    (!path.is_empty()).then(|| path.join(","))
}
