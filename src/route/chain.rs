//! The tier chain: try each tier of the target in order until one answers. A retryable failure
//! (connection, timeout, 429, 5xx, malformed body, a stream broken before its first event) moves on to
//! the next tier; a client error goes straight back, because every tier would refuse it alike. Every
//! attempt is kept, for the fallback header and the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ChainTier, Tier};
use crate::route::request::RequestBody;
use crate::upstream::{Reply, UpstreamError, Upstreams};

/// One call to one tier while serving a request.
#[derive(Debug)]
pub struct Attempt {
    pub tier: Arc<Tier>,
    pub latency: Duration,
    /// `None` when this tier answered.
    pub error: Option<UpstreamError>,
}

/// A request some tier answered.
pub struct Served {
    pub tier: Arc<Tier>,
    pub reply: Reply,
    /// Every attempt in order; the last one is the tier that answered.
    pub attempts: Vec<Attempt>,
}

/// A request no tier answered: the last failure decides what the client is told.
#[derive(Debug)]
pub struct Unserved {
    pub tier: Arc<Tier>,
    pub error: UpstreamError,
    pub attempts: Vec<Attempt>,
}

pub async fn run(
    upstreams: &Upstreams,
    chain: &[ChainTier],
    body: &RequestBody<'_>,
) -> Result<Served, Unserved> {
    let mut attempts = Vec::with_capacity(chain.len());
    let last = chain.len().saturating_sub(1);
    for (index, step) in chain.iter().enumerate() {
        let started = Instant::now();
        let result = upstreams
            .send(
                &step.tier,
                body.endpoint(),
                body.for_tier(step),
                body.stream,
            )
            .await;
        let latency = started.elapsed();
        match result {
            Ok(reply) => {
                attempts.push(Attempt {
                    tier: step.tier.clone(),
                    latency,
                    error: None,
                });
                return Ok(Served {
                    tier: step.tier.clone(),
                    reply,
                    attempts,
                });
            }
            Err(error) => {
                tracing::debug!(tier = %step.tier.name, reason = %error, "attempt failed");
                attempts.push(Attempt {
                    tier: step.tier.clone(),
                    latency,
                    error: Some(error.clone()),
                });
                if !error.is_retryable() || index == last {
                    return Err(Unserved {
                        tier: step.tier.clone(),
                        error,
                        attempts,
                    });
                }
            }
        }
    }
    unreachable!("a resolved chain is never empty")
}

/// `local:connect_refused,api_fast:http_503`: the failed attempts before the one that answered, as
/// the `x-tierwise-fallback` header shows them.
pub fn fallback_path(attempts: &[Attempt]) -> Option<String> {
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|attempt| {
            let error = attempt.error.as_ref()?;
            Some(format!("{}:{}", attempt.tier.name, error.reason()))
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join(","))
}
