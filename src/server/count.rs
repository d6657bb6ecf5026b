//! Counting a request's input tokens without sending it (`/v1/messages/count_tokens` and any
//! endpoint whose spec can count): the route or tier `model` names, its first tier's prompt as
//! that tier would get it, counted with that tier's tokenizer estimate. Nothing is sent upstream,
//! admitted against limits or written to the ledger; a key limited to some routes may count only
//! for those.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::App;
use super::error::ApiError;
use super::proxy::{Caller, read_body};
use crate::limits::Refusal;
use crate::openai::{Endpoint, RequestError};

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
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    let model = serde_json::from_slice::<Model>(&bytes)
        .map_err(|err| RequestError::NotJson(err.to_string()))?
        .model
        .ok_or(RequestError::field(
            "model",
            "is required: name a route, a tier or a model id",
        ))?;
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
    let step = resolved
        .target
        .chain
        .first()
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("'{model}' has no tier to count for")))?;
    let counter = endpoint
        .spec()
        .count_tokens
        .expect("the route is registered only for endpoints that count");
    // A tokenizer over a large body is CPU work the event loop must not wait on.
    let tokens = tokio::task::spawn_blocking(move || counter(&bytes, &step))
        .await
        .map_err(|_| {
            ApiError::internal("counting failed inside the gateway; see its log".into())
        })??;
    let mut response = (
        StatusCode::OK,
        serde_json::json!({"input_tokens": tokens}).to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
