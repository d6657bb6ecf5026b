//! Client authentication: a bearer key from `server.api_keys`, compared in constant time. With no
//! key configured the gateway is open (start-up warns loudly about it).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::App;
use super::error::ApiError;

pub async fn require_client_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let keys = &app.config.server.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized(
            "Missing API key: send `Authorization: Bearer <key>` with one of the gateway's server.api_keys.",
        )
        .into_response();
    };
    let known = keys.iter().fold(false, |found, key| {
        found | bool::from(key.expose().as_bytes().ct_eq(presented.as_bytes()))
    });
    if known {
        next.run(request).await
    } else {
        ApiError::unauthorized(
            "Incorrect API key provided. Use one of the gateway's server.api_keys.",
        )
        .into_response()
    }
}
