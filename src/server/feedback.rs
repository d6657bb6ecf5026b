//! `POST /v1/feedback`: the application's ground truth for a request the gateway answered, queued
//! for the ledger (see [`crate::quality::feedback`]); 202 once queued, 503 while the queue is full.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, App};
use crate::ledger::quality::Feedback;
use crate::quality::feedback::Truth;
use crate::quality::watch::now_ms;

pub async fn feedback(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_body(format!("the body is not JSON: {err}")))?;
    let (request_id, truth) =
        Truth::parse(&value).map_err(|err| ApiError::bad_body(err.to_string()))?;
    let queued = app.feedback.push(Feedback {
        request_id: request_id.clone(),
        ts_ms: now_ms(),
        truth: truth.to_stored(),
    });
    if !queued {
        return Err(ApiError::busy(
            "Feedback is arriving faster than the ledger stores it; retry shortly.".into(),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "object": "feedback", "request_id": request_id, "status": "queued" })),
    ))
}
