//! Counting a request's input tokens without answering it (`/v1/messages/count_tokens`, and any
//! endpoint whose spec can count), in this order:
//!
//! 1. read the body (bounded) and, cheaply, its top-level `model`; resolve what it names (a key
//!    limited to some routes may count only for those);
//! 2. admit it against the key's own window of counts a minute ([`Limits::admit_count`]): a 429
//!    `rate_limit_error` over it, the `x-ratelimit-*-token-counts` headers either way;
//! 3. on the blocking pool for a large body: check the prompt as sending it would
//!    ([`crate::openai::EndpointSpec::check_prompt`], which counting shares but for the fields
//!    only sending needs), find the first tier that can take it as the chain would
//!    ([`chain::first_able`]: a request no tier can carry, images to a route without a vision
//!    tier, is refused as sending it would be), and estimate it as that tier would get it;
//! 4. where that tier's provider counts prompts itself (Anthropic's `count_tokens`), ask it, on its
//!    least loaded server whose breaker is closed, within [`PROVIDER_DEADLINE`], with at most
//!    [`crate::health::MAX_COUNTS_IN_FLIGHT`] counts of a provider out at once (past them the
//!    estimate answers at once): its count is the answer, its 400 (the prompt is wrong) the
//!    client's error as it came; its "prompt is too long" is not the request's fault, as the
//!    chain would send it on, so the next tier that can take it gives its estimate (the 400 only
//!    where none can); any other failure leaves the estimate as the answer, with a warning in the
//!    log (at most once a minute a provider). The call takes no `max_in_flight` slot and feeds no
//!    breaker: a count is not the tier's traffic.
//!
//! `x-tierwise-count: provider|estimate` says which answered. Nothing is written to the ledger.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::error::ApiError;
use super::proxy::{Caller, off_the_loop, passed_headers, read_body, set_quota};
use super::{App, Snapshot};
use crate::config::{Api, ChainTier, Tier};
use crate::limits::{Quota, Refusal};
use crate::openai::{Endpoint, RequestBody, RequestError};
use crate::route::chain;
use crate::upstream::ProviderCount;

const COUNT_HEADER: HeaderName = HeaderName::from_static("x-tierwise-count");

/// The most a provider's own count is waited for: a count is asked before a request is sent, and
/// the estimate is close enough to answer with when the provider is slow.
pub const PROVIDER_DEADLINE: Duration = Duration::from_millis(2500);

/// The handler of `endpoint`'s counting route.
pub fn handler(
    endpoint: Endpoint,
) -> impl Fn(State<Arc<App>>, Caller, HeaderMap, Body) -> BoxFuture<'static, Response>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(app), caller, headers, body| {
        Box::pin(async move {
            count(&app, endpoint, caller, &headers, body)
                .await
                .unwrap_or_else(|err| err.on(endpoint).into_response())
        })
    }
}

/// What the estimate found: the tier that would take the request, its estimate, and the body a
/// provider that counts would be asked with.
struct Estimated {
    step: ChainTier,
    /// Where `step` stands in the chain: a tier too short for the prompt passes it on to those
    /// after it.
    position: usize,
    tokens: u64,
    ask: Option<Vec<u8>>,
}

/// What asking the provider gave.
enum Asked {
    /// Its count, or its refusal of the request, as the answer.
    Answered(Response),
    /// Its refusal of a prompt too long for its model, as the answer where no later tier takes it.
    TooLong(Response),
    /// Nothing usable: the estimate answers.
    Nothing,
}

async fn count(
    app: &App,
    endpoint: Endpoint,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let snapshot = app.snapshot();
    let server = &snapshot.config.server;
    let bytes = tokio::time::timeout(
        server.body_timeout,
        read_body(body, headers, server.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::body_timeout(server.body_timeout))??;
    let passed =
        passed_headers(endpoint.spec().passed_headers, headers).map_err(ApiError::bad_body)?;
    let read = bytes.clone();
    let model = off_the_loop(bytes.len(), move || top_level_model(&read)).await??;
    let route_header = headers
        .get("x-tierwise-route")
        .and_then(|value| value.to_str().ok());
    let resolved = snapshot.routes.resolve(&model, route_header)?;
    if let Some(key) = &caller.key
        && let Some(allowed) = &key.terms.routes
        && resolved
            .target
            .route
            .as_ref()
            .is_none_or(|route| allowed.binary_search(&route.name).is_err())
    {
        return Err(ApiError::from(Refusal::NotAllowed {
            key: key.terms.name.clone().unwrap_or_default(),
            asked: model,
            allowed: allowed.clone(),
        }));
    }
    let standing = match snapshot.limits.admit_count(caller.key.as_ref()).await {
        Ok(standing) => standing,
        Err(refusal) => {
            let quota = refusal.quota();
            let mut response = ApiError::from(refusal).on(endpoint).into_response();
            if let Some(quota) = quota {
                set_quota(response.headers_mut(), &quota);
            }
            return Ok(response);
        }
    };
    let spec = endpoint.spec();
    let counter = spec
        .count_tokens
        .expect("the route is registered only for endpoints that count");
    let check = spec.check_prompt;
    let chain = Arc::new(resolved.target.chain.clone());
    let route = resolved.route.map(|route| route.name.clone());
    let upstreams = snapshot.upstreams(app.thread).clone();
    let work = bytes.clone();
    let (whole, able) = (chain.clone(), upstreams.clone());
    let estimated = off_the_loop(bytes.len(), move || -> Result<Estimated, Box<ApiError>> {
        let refused = |err: RequestError| Box::new(ApiError::from(err));
        if let Some(check) = check {
            check(&work).map_err(refused)?;
        }
        let body = RequestBody::read(endpoint, &work).map_err(refused)?;
        let step = chain::first_able(&able, &whole, &body)
            .map_err(|unserved| Box::new(ApiError::unserved(&unserved, route.as_deref())))?;
        // The body to ask with is made here, off the event loop: it parses the whole request.
        // One the provider could not be asked with leaves the estimate as the answer.
        let ask = (step.tier.provider.api == Api::Anthropic)
            .then(|| able.count_request(&step.tier, &body.for_tier(step)))
            .and_then(|made| {
                made.inspect_err(|error| {
                    tracing::debug!(tier = %step.tier.name, %error, "the request cannot be counted by its provider");
                })
                .ok()
            });
        Ok(Estimated {
            tokens: counter(&work, step),
            position: whole
                .iter()
                .position(|tier| std::ptr::eq(tier, step))
                .expect("the tier found is one of the chain's"),
            step: step.clone(),
            ask,
        })
    })
    .await?
    .map_err(|err| *err)?;
    let asked = match estimated.ask {
        Some(ask) => ask_provider(&snapshot, app.thread, &estimated.step.tier, ask, &passed).await,
        None => Asked::Nothing,
    };
    let mut response = match asked {
        Asked::Answered(response) => response,
        Asked::Nothing => answer(json_count(estimated.tokens), "estimate"),
        // Sending it, the chain would go on to the next tier that can take it: that tier's
        // estimate is the count, and only where there is none is the request too long.
        Asked::TooLong(refusal) => {
            let after = estimated.position + 1;
            let later = off_the_loop(bytes.len(), move || {
                let rest = chain.get(after..).filter(|rest| !rest.is_empty())?;
                let body = RequestBody::read(endpoint, &bytes).ok()?;
                let step = chain::first_able(&upstreams, rest, &body).ok()?;
                Some(counter(&bytes, step))
            })
            .await?;
            match later {
                Some(tokens) => answer(json_count(tokens), "estimate"),
                None => refusal,
            }
        }
    };
    if let Some(standing) = standing {
        let quota = Quota {
            token_counts: Some(standing),
            ..Quota::default()
        };
        set_quota(response.headers_mut(), &quota);
    }
    Ok(response)
}

/// The body's top-level `model`, read without the rest of the body kept.
fn top_level_model(bytes: &[u8]) -> Result<String, RequestError> {
    #[derive(Deserialize)]
    struct Model {
        #[serde(default)]
        model: Option<serde_json::Value>,
    }
    // A derived struct takes an array too (`[]` as no model): refused as sending refuses it.
    if !bytes.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(RequestError::not_json)?;
        return Err(RequestError::NotJson("expected a JSON object".into()));
    }
    let model = serde_json::from_slice::<Model>(bytes)
        .map_err(RequestError::not_json)?
        .model;
    match model {
        Some(serde_json::Value::String(model)) => Ok(model),
        None | Some(serde_json::Value::Null) => Err(RequestError::field(
            "model",
            "is required: name a route, a tier or a model id",
        )),
        Some(_) => Err(RequestError::field(
            "model",
            "must be a string: a route, a tier or a model id",
        )),
    }
}

fn json_count(tokens: u64) -> Bytes {
    Bytes::from(serde_json::json!({ "input_tokens": tokens }).to_string())
}

/// `body` as the answer, `x-tierwise-count` saying who counted.
fn answer(body: Bytes, counted_by: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(COUNT_HEADER, HeaderValue::from_static(counted_by));
    response
}

/// The provider's own count of `ask` (the request as the tier gets it), or its refusal of the
/// request as it came; [`Asked::Nothing`] where it gave neither (no server with a closed breaker,
/// an error that is not the request's, no answer in time), and the estimate answers.
async fn ask_provider(
    snapshot: &Snapshot,
    thread: usize,
    tier: &Tier,
    ask: Vec<u8>,
    passed: &[(HeaderName, HeaderValue)],
) -> Asked {
    let health = snapshot.health.of(&tier.provider);
    let Some(_counting) = health.counts.try_enter() else {
        tracing::debug!(tier = %tier.name, "the provider's counts are all out; answering the estimate");
        return Asked::Nothing;
    };
    let Some(server) = health.least_loaded_closed() else {
        tracing::debug!(tier = %tier.name, "no server of the provider is up to count; answering the estimate");
        return Asked::Nothing;
    };
    let deadline = PROVIDER_DEADLINE.min(tier.timeouts.total);
    let counted = snapshot
        .upstreams(thread)
        .count_tokens(tier, server, ask, passed, deadline)
        .await;
    match counted {
        Ok(ProviderCount::Counted(tokens)) => {
            Asked::Answered(answer(json_count(tokens), "provider"))
        }
        Ok(ProviderCount::Refused(body)) => Asked::Answered(refusal(body)),
        Ok(ProviderCount::TooLong(body)) => Asked::TooLong(refusal(body)),
        Err(error) => {
            if health.counts.should_warn() {
                tracing::warn!(
                    tier = %tier.name,
                    provider = %tier.provider.name,
                    reason = %error.reason(),
                    detail = %error.detail,
                    "the provider could not count the prompt; answering the gateway's estimate (warned at most once a minute a provider)"
                );
            } else {
                tracing::debug!(
                    tier = %tier.name,
                    provider = %tier.provider.name,
                    reason = %error.reason(),
                    detail = %error.detail,
                    "the provider could not count the prompt; answering the gateway's estimate"
                );
            }
            Asked::Nothing
        }
    }
}

/// The provider's 400 as it came, as the client's answer.
fn refusal(body: Bytes) -> Response {
    let mut response = (StatusCode::BAD_REQUEST, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(COUNT_HEADER, HeaderValue::from_static("provider"));
    response
}
