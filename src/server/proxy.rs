//! The request path for `/v1/chat/completions` and `/v1/embeddings`, in the order DESIGN.md gives it:
//! read the body (bounded) → read what routing needs → resolve the route → run the tier chain →
//! answer, normalized to the route's output contract where it has one → hand the record to the
//! ledger. Authentication has already happened in a layer in front.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::auth::ClientKeyId;
use super::error::ApiError;
use super::relay::{SseRelay, StreamAccount};
use super::{App, RequestId};
use crate::config::AllOpen;
use crate::ledger::tokens::{Answer, Uncounted};
use crate::ledger::{Draft, Tokens};
use crate::route::Resolved;
use crate::route::chain::{ChainRun, Served};
use crate::route::contract;
use crate::route::request::{Endpoint, RequestBody};
use crate::upstream::{Reply, Usage};

const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tierwise-route");
const TIER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-tier");
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-provider");
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-tierwise-fallback");
const CONTRACT_HEADER: HeaderName = HeaderName::from_static("x-tierwise-contract");
const COST_HEADER: HeaderName = HeaderName::from_static("x-tierwise-cost-usd");

/// Who is calling: the request id and the key's fingerprint, set by the layers in front.
pub struct Caller {
    id: RequestId,
    key: Option<ClientKeyId>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate),
            key: parts.extensions.get::<ClientKeyId>().cloned(),
        })
    }
}

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(&app, Endpoint::ChatCompletions, caller, &headers, body).await
}

pub async fn embeddings(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(&app, Endpoint::Embeddings, caller, &headers, body).await
}

async fn proxy(
    app: &App,
    endpoint: Endpoint,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(body, headers, app.config.server.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(err) => return err.into_response(),
    };
    let request = match RequestBody::parse(endpoint, &bytes) {
        Ok(request) => request,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let route_header = headers.get(&ROUTE_HEADER).and_then(|v| v.to_str().ok());
    let resolved = match app.routes.resolve(&request.model, route_header) {
        Ok(resolved) => resolved,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let route_name = resolved.route.map(|route| route.name.as_str());
    let mut draft = Draft::new(caller.id.0, endpoint, request.stream);
    draft.route = route_name.map(str::to_string);
    draft.client_key = caller.key.map(|key| key.0);
    if app.ledger.store_content {
        draft.prompt = Some(String::from_utf8_lossy(&bytes).into_owned());
    }

    let run = ChainRun {
        upstreams: &app.upstreams,
        health: &app.health,
        chain: &resolved.target.chain,
        when_all_open: resolved
            .target
            .route
            .as_ref()
            .map_or(AllOpen::TryPrimary, |route| route.when_all_open),
    };
    match run.run(&request).await {
        Ok(served) => answer(app, served, resolved, &request, bytes.clone(), draft).await,
        Err(unserved) => {
            let mut response = ApiError::unserved(&unserved, route_name).into_response();
            let mut record = draft.record(response.status().as_u16(), &unserved.attempts);
            record.error_kind = Some(unserved.error.reason());
            record.cost = Some(Default::default());
            let headers = response.headers_mut();
            set(headers, ROUTE_HEADER, route_name);
            set(headers, FALLBACK_HEADER, record.fallback.as_deref());
            set(headers, COST_HEADER, Some("0"));
            app.ledger.record(record).await;
            response
        }
    }
}

async fn answer(
    app: &App,
    served: Served,
    resolved: Resolved<'_>,
    request: &RequestBody<'_>,
    request_bytes: Bytes,
    draft: Draft,
) -> Response {
    let Served {
        tier,
        reply,
        lease,
        attempts,
    } = served;
    let route = resolved.route.map(|route| route.as_ref());
    let mut record = draft.record(200, &attempts);
    record.tier = Some(tier.name.clone());
    record.provider = Some(tier.provider.name.clone());
    record.model = Some(tier.model.clone());
    record.local = crate::ledger::record::is_local(&tier);
    // Taken before the record moves to the ledger (or, for a stream, to its relay).
    let fallback = record.fallback.clone();
    let mut response = match reply {
        Reply::Complete { body, usage } => {
            let tokens = match usage {
                Some(usage) => tokens_of(&usage),
                None => {
                    Uncounted {
                        endpoint: request.endpoint(),
                        model: tier.model.clone(),
                        request: request_bytes.clone(),
                        answer: Answer::Body(body.clone()),
                    }
                    .count_off_loop()
                    .await
                }
            };
            let labels = resolved
                .target
                .route
                .as_ref()
                .and_then(|route| route.labels.as_deref())
                .filter(|_| request.endpoint() == Endpoint::ChatCompletions);
            let body = match labels {
                Some(labels) => {
                    let (body, outcome) = contract::apply(body, labels);
                    record.contract = Some(outcome.as_str());
                    body
                }
                None => body,
            };
            record.tokens = tokens;
            record.cost = app.ledger.pricing.cost(&tier, &tokens);
            record.baseline = app.ledger.pricing.baseline(route, &tokens);
            record.ttfb_us = Some(record.latency_us);
            if app.ledger.store_content {
                record.answer = Some(String::from_utf8_lossy(&body).into_owned());
            }
            let mut response = (StatusCode::OK, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            set(
                headers,
                COST_HEADER,
                record.cost.map(|cost| cost.to_string()).as_deref(),
            );
            set(headers, CONTRACT_HEADER, record.contract);
            app.ledger.record(record).await;
            response
        }
        Reply::Stream(stream) => {
            record.ttfb_us = Some(record.latency_us);
            let account = StreamAccount {
                ledger: app.ledger.clone(),
                record,
                tier: tier.clone(),
                baseline: route.and_then(|route| route.baseline.clone()),
                request: request_bytes,
                started: draft.started,
            };
            let relay = SseRelay::new(stream, lease, request.client_wants_usage, account);
            let mut response = Response::new(Body::from_stream(relay.into_body()));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    };
    let headers = response.headers_mut();
    set(
        headers,
        ROUTE_HEADER,
        route.map(|route| route.name.as_str()),
    );
    set(headers, TIER_HEADER, Some(&tier.name));
    set(headers, PROVIDER_HEADER, Some(&tier.provider.name));
    set(headers, FALLBACK_HEADER, fallback.as_deref());
    response
}

pub fn tokens_of(usage: &Usage) -> Tokens {
    Tokens {
        input: usage.prompt_tokens,
        cached: usage.cached_tokens(),
        output: usage.completion_tokens,
        estimated: false,
    }
}

/// Reads the whole body, refusing more than `limit` bytes before reading them where the client
/// declared its length.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(err) => Err(ApiError::bad_body(format!(
            "could not read the request body: {err}"
        ))),
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: Option<&str>) {
    if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(name, value);
    }
}
