//! `POST /v1/feedback`: the application's ground truth for a request the gateway answered with the
//! same key. The body is read under `server.max_body_bytes` like every other; the report goes to
//! the feedback writer (see [`crate::quality::feedback`]), which owns the database, and the handler
//! answers with its verdict: 200 once stored, 404 for a request this key did not make (another
//! key's is not told apart from none), 400 for a value the store refuses, 503 while the ledger is
//! away or the queue is full.
//!
//! A request's row reaches the ledger a few milliseconds after its answer (later while the database
//! is slow), so feedback sent at once can find no row yet: a request id minted in the last hour is
//! looked for again, for at most [`SETTLE`], before it is called unknown.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::proxy::{Caller, read_body};
use super::{ApiError, App};
use crate::ledger::quality::Feedback;
use crate::quality::feedback::{Truth, Verdict};
use crate::quality::watch::now_ms;

/// How long feedback for a recent request waits for the request's row to reach the ledger.
const SETTLE: Duration = Duration::from_secs(3);
/// How often it looks again meanwhile.
const LOOK_AGAIN: Duration = Duration::from_millis(50);
/// Request ids older than this are not waited for: their rows are written or never will be.
const RECENT_MS: i64 = 3_600_000;

pub async fn feedback(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let snapshot = app.snapshot();
    let server = &snapshot.config.server;
    let read = read_body(body, &headers, server.max_body_bytes);
    let bytes = match tokio::time::timeout(server.body_timeout, read).await {
        Ok(bytes) => bytes?,
        Err(_) => return Err(ApiError::body_timeout(server.body_timeout)),
    };
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_body(format!("the body is not JSON: {err}")))?;
    let (request_id, truth) =
        Truth::parse(&value).map_err(|err| ApiError::bad_body(err.to_string()))?;
    let arrived = tokio::time::Instant::now();
    let recent = minted_ms(&request_id).is_some_and(|ts| (now_ms() - ts).abs() < RECENT_MS);
    let client_key = caller.key.map(|key| key.id.clone());
    loop {
        let feedback = Feedback {
            request_id: request_id.clone(),
            ts_ms: now_ms(),
            truth: truth.to_stored(),
        };
        let verdict = match app.feedback.submit(feedback, client_key.clone()) {
            Some(verdict) => verdict
                .await
                .unwrap_or_else(|_| Verdict::Unavailable("the feedback writer has stopped".into())),
            None => {
                return Err(ApiError::busy(
                    "Feedback is arriving faster than the ledger stores it; retry shortly.".into(),
                ));
            }
        };
        match verdict {
            Verdict::Stored => {
                return Ok((
                    StatusCode::OK,
                    Json(
                        json!({ "object": "feedback", "request_id": request_id, "status": "stored" }),
                    ),
                ));
            }
            Verdict::NoSuchRequest if recent && arrived.elapsed() < SETTLE => {
                tokio::time::sleep(LOOK_AGAIN).await;
            }
            Verdict::NoSuchRequest => {
                return Err(ApiError::not_found(format!(
                    "No request {request_id:?} was answered for this API key; send the x-tierwise-request-id of a chat completion made with the same key."
                )));
            }
            Verdict::Refused(reason) => {
                return Err(ApiError::bad_body(format!(
                    "The ledger cannot store this feedback: {reason}"
                )));
            }
            // The reason is in the gateway's log; a database error has no place in an answer.
            Verdict::Unavailable(_) => {
                return Err(ApiError::busy(
                    "The ledger cannot store feedback now; retry shortly: sending the same report again is harmless."
                        .into(),
                ));
            }
        }
    }
}

/// When a request id was minted, for the gateway's own (UUID v7) ids.
fn minted_ms(request_id: &str) -> Option<i64> {
    let (secs, nanos) = uuid::Uuid::parse_str(request_id)
        .ok()?
        .get_timestamp()?
        .to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}
