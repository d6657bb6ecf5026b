//! The request path for `/v1/chat/completions` and `/v1/embeddings`, in the order DESIGN.md gives it:
//! read the body (bounded) → read what routing needs → resolve the route → run the tier chain →
//! answer, normalized to the route's output contract where it has one. Authentication has already
//! happened in a layer in front.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::App;
use super::error::ApiError;
use crate::config::AllOpen;
use crate::route::Resolved;
use crate::route::chain::{self, ChainRun, Served};
use crate::route::contract;
use crate::route::request::{Endpoint, RequestBody};
use crate::upstream::Reply;

use super::relay::SseRelay;

const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tierwise-route");
const TIER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-tier");
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-provider");
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-tierwise-fallback");
const CONTRACT_HEADER: HeaderName = HeaderName::from_static("x-tierwise-contract");

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(&app, Endpoint::ChatCompletions, &headers, body).await
}

pub async fn embeddings(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    proxy(&app, Endpoint::Embeddings, &headers, body).await
}

async fn proxy(app: &App, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Response {
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
        Ok(served) => answer(served, resolved, &request),
        Err(unserved) => {
            let mut response = ApiError::unserved(&unserved, route_name).into_response();
            set(response.headers_mut(), ROUTE_HEADER, route_name);
            set(
                response.headers_mut(),
                FALLBACK_HEADER,
                chain::fallback_path(&unserved.attempts).as_deref(),
            );
            response
        }
    }
}

fn answer(served: Served, resolved: Resolved<'_>, request: &RequestBody<'_>) -> Response {
    let Served {
        tier,
        reply,
        lease,
        attempts,
    } = served;
    let mut contract_outcome = None;
    let mut response = match reply {
        Reply::Complete { body, .. } => {
            let labels = resolved
                .target
                .route
                .as_ref()
                .and_then(|route| route.labels.as_deref())
                .filter(|_| request.endpoint() == Endpoint::ChatCompletions);
            let body = match labels {
                Some(labels) => {
                    let (body, outcome) = contract::apply(body, labels);
                    contract_outcome = Some(outcome);
                    body
                }
                None => body,
            };
            let mut response = (StatusCode::OK, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Reply::Stream(stream) => {
            let relay = SseRelay::new(stream, lease, request.client_wants_usage, &tier.name);
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
        resolved.route.map(|route| route.name.as_str()),
    );
    set(headers, TIER_HEADER, Some(&tier.name));
    set(headers, PROVIDER_HEADER, Some(&tier.provider.name));
    set(
        headers,
        FALLBACK_HEADER,
        chain::fallback_path(&attempts).as_deref(),
    );
    set(
        headers,
        CONTRACT_HEADER,
        contract_outcome.map(|o| o.as_str()),
    );
    response
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
