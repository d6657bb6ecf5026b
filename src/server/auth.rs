//! Client authentication: a bearer key from `server.api_keys` on `/v1`, and `server.admin_key` on
//! `/admin/api` (the client keys when no admin key is set), compared in constant time. With no key
//! configured the gateway is open; start-up warns loudly about it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::App;
use super::error::ApiError;
use crate::config::ClientKey;

pub async fn require_client_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    check(&app.config.server.api_keys, request, next).await
}

pub async fn require_admin_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    match &app.config.server.admin_key {
        Some(key) => check(std::slice::from_ref(key), request, next).await,
        None => check(&app.config.server.api_keys, request, next).await,
    }
}

async fn check(keys: &[ClientKey], mut request: Request, next: Next) -> Response {
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
            "Missing API key: send `Authorization: Bearer <key>` with a key this gateway accepts.",
        )
        .into_response();
    };
    // Every key is compared, so the time taken does not tell which one came close.
    let mut matched = None;
    for key in keys {
        if bool::from(key.secret.expose().as_bytes().ct_eq(presented.as_bytes())) {
            matched = Some(key.id.clone());
        }
    }
    if let Some(id) = matched {
        request.extensions_mut().insert(ClientKeyId(id));
        next.run(request).await
    } else {
        ApiError::unauthorized("Incorrect API key provided.").into_response()
    }
}

/// Which configured key a request came with: its fingerprint, never the key.
#[derive(Debug, Clone)]
pub struct ClientKeyId(pub String);
