//! `GET` and `DELETE /v1/responses/{id}`: a kept response as OpenAI returns it, and its deletion,
//! in the scope of the client key that asks (another key's response is a 404, as OpenAI answers
//! another project's). What is kept is [`crate::stored`]'s.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::auth::CallerKey;
use super::{ApiError, App};

/// The scope a key's responses are kept in: its fingerprint; one scope without client keys.
pub(super) fn scope(key: Option<&CallerKey>) -> &str {
    key.map_or("", |key| key.0.id.as_str())
}

pub async fn get(
    State(app): State<Arc<App>>,
    key: Option<axum::Extension<CallerKey>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let body = app.stored.response(scope(key.as_deref()), &id).await?;
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    key: Option<axum::Extension<CallerKey>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.stored.forget(scope(key.as_deref()), &id).await?;
    let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
    Ok(axum::Json(body).into_response())
}
