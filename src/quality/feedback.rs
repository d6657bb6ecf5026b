//! Ground truth from the application: `POST /v1/feedback` names a request the gateway answered and
//! what the right answer was — a label, a JSON value, a score, or simply correct/incorrect — so that
//! reports can show accuracy against the truth beside agreement with the reference tier.
//!
//! Feedback belongs to the key that made the request. The handler never touches the database: it
//! hands the report to the writer task, which stores it only if the ledger holds a product request
//! of that id made with that key (one statement, see [`Store::record_feedback`]) and tells the
//! handler what became of it, so that the application hears 404 for a request that is not its
//! own, 400 for a value the database refuses and 503 while the database is away — each report is
//! tried once, never retried by the writer, so a report the database cannot take holds up no other.
//! A label or JSON value is judged against the answer the gateway gave, which the ledger
//! holds only with `ledger.store_content = true`; without it such feedback is counted as unjudged.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::score::{Answer, ScorerKind, score};
use crate::ledger::Store;
use crate::ledger::quality::Feedback;

/// Feedback waiting to be written; more is refused with 503 until the database catches up.
pub const QUEUE: usize = 4096;
/// How long one report may take to store before the application is told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the application says the right answer was.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    /// The right label (classification, moderation).
    Label(String),
    /// The right JSON value (extraction).
    Value(Value),
    /// A grade from 0 to 1.
    Score(f64),
    /// Whether the answer was right.
    Correct(bool),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TruthError {
    #[error("`request_id` must be the x-tierwise-request-id of an answered request")]
    RequestId,
    #[error("`{0}` must not hold a NUL character (\\u0000)")]
    Nul(&'static str),
    #[error("give exactly one of `label`, `value`, `score` or `correct` (found {0})")]
    Kinds(usize),
    #[error("`{0}` must be {1}")]
    Type(&'static str, &'static str),
}

impl Truth {
    /// The request id and the truth of a feedback body.
    pub fn parse(body: &Value) -> Result<(String, Truth), TruthError> {
        // Ids are the gateway's own UUIDs: anything else names no request, and a NUL is a value
        // PostgreSQL refuses to store.
        let id = body["request_id"]
            .as_str()
            .filter(|id| !id.is_empty() && id.len() <= 64)
            .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(TruthError::RequestId)?;
        let given: Vec<&str> = ["label", "value", "score", "correct"]
            .into_iter()
            .filter(|key| body.get(key).is_some())
            .collect();
        let [kind] = given[..] else {
            return Err(TruthError::Kinds(given.len()));
        };
        let truth = match kind {
            "label" => Truth::Label(
                body["label"]
                    .as_str()
                    .ok_or(TruthError::Type("label", "a string"))?
                    .to_string(),
            ),
            "value" => Truth::Value(body["value"].clone()),
            "score" => Truth::Score(
                body["score"]
                    .as_f64()
                    .filter(|score| (0.0..=1.0).contains(score))
                    .ok_or(TruthError::Type("score", "a number from 0 to 1"))?,
            ),
            _ => Truth::Correct(
                body["correct"]
                    .as_bool()
                    .ok_or(TruthError::Type("correct", "true or false"))?,
            ),
        };
        match &truth {
            Truth::Label(label) if label.contains('\0') => return Err(TruthError::Nul("label")),
            Truth::Value(value) if holds_nul(value) => return Err(TruthError::Nul("value")),
            _ => {}
        }
        Ok((id.to_string(), truth))
    }

    pub fn from_stored(text: &str) -> Option<Truth> {
        let value: Value = serde_json::from_str(text).ok()?;
        let (kind, inner) = value.as_object()?.iter().next()?;
        Some(match kind.as_str() {
            "label" => Truth::Label(inner.as_str()?.to_string()),
            "value" => Truth::Value(inner.clone()),
            "score" => Truth::Score(inner.as_f64()?),
            "correct" => Truth::Correct(inner.as_bool()?),
            _ => return None,
        })
    }

    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a truth always serializes")
    }

    /// How right the answer was, 0 to 1; `None` when it cannot be told (a label or value, and the
    /// answer was not stored, or the answer cannot be scored).
    pub fn judge(
        &self,
        answer: Option<&Answer>,
        scorer: ScorerKind,
        labels: &[String],
    ) -> Option<f64> {
        match self {
            Truth::Correct(correct) => Some(if *correct { 1.0 } else { 0.0 }),
            Truth::Score(score) => Some(*score),
            Truth::Label(label) => score(scorer, answer?, &Answer::text(label.clone()), labels)
                .ok()
                .map(|s| s.agreement),
            Truth::Value(value) => {
                let expected = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                score(scorer, answer?, &Answer::text(expected), labels)
                    .ok()
                    .map(|s| s.agreement)
            }
        }
    }
}

/// Whether any string in `value`, key or value, holds a NUL.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

/// What became of one report.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Stored,
    /// The ledger holds no product request of that id made with the caller's key.
    NoSuchRequest,
    /// The database refused the value; sending it again cannot succeed.
    Refused(String),
    /// The database is away or slow; the same report may succeed later.
    Unavailable(String),
}

/// A report on its way to the writer, with the key it came with and where the verdict goes.
struct Submission {
    feedback: Feedback,
    client_key: Option<String>,
    verdict: oneshot::Sender<Verdict>,
}

/// The handler's side of the queue.
#[derive(Clone)]
pub struct FeedbackQueue(mpsc::Sender<Submission>);

impl FeedbackQueue {
    /// Queues a report made with `client_key` (the key's id); `None` when the queue is full, else
    /// where the writer's verdict will come.
    pub fn submit(
        &self,
        feedback: Feedback,
        client_key: Option<String>,
    ) -> Option<oneshot::Receiver<Verdict>> {
        let (verdict, receiver) = oneshot::channel();
        self.0
            .try_send(Submission {
                feedback,
                client_key,
                verdict,
            })
            .ok()?;
        Some(receiver)
    }
}

/// The task that writes feedback, and the means to stop it.
pub struct FeedbackWriter {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

impl FeedbackWriter {
    pub fn spawn(store: Store) -> (FeedbackQueue, FeedbackWriter) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(write(store, receiver, closed));
        (FeedbackQueue(sender), FeedbackWriter { task, close })
    }

    /// Writes what is queued, at most `deadline`.
    pub async fn finish(self, deadline: Duration) {
        let _ = self.close.send(());
        let mut task = self.task;
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("the feedback writer failed at shutdown: {err}"),
            Err(_) => {
                tracing::error!(
                    "feedback still queued at shutdown could not be written; it is lost"
                );
                task.abort();
            }
        }
    }
}

async fn write(
    store: Store,
    mut queue: mpsc::Receiver<Submission>,
    mut closed: oneshot::Receiver<()>,
) {
    // A finished oneshot must not be polled again: once closing, only the queue is read.
    let mut closing = false;
    loop {
        let feedback = tokio::select! {
            feedback = queue.recv() => feedback,
            _ = &mut closed, if !closing => {
                closing = true;
                queue.close();
                continue;
            }
        };
        let Some(Submission {
            feedback,
            client_key,
            verdict,
        }) = feedback
        else {
            break;
        };
        let stored = tokio::time::timeout(
            WRITE_TIMEOUT,
            store.record_feedback(&feedback, client_key.as_deref()),
        )
        .await;
        let outcome = match stored {
            Ok(Ok(true)) => Verdict::Stored,
            Ok(Ok(false)) => Verdict::NoSuchRequest,
            Ok(Err(err)) if err.is_refusal() => Verdict::Refused(err.to_string()),
            Ok(Err(err)) => {
                tracing::warn!(request_id = %feedback.request_id, "cannot store feedback: {err}");
                Verdict::Unavailable(err.to_string())
            }
            Err(_) => Verdict::Unavailable(format!(
                "the ledger did not answer within {} s",
                WRITE_TIMEOUT.as_secs()
            )),
        };
        // The handler may have stopped waiting; the report is stored all the same.
        let _ = verdict.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ledger::RequestRow;

    /// Feedback still queued when the gateway stops is written, all of it. The writer once polled
    /// its finished close signal again and panicked halfway through the queue.
    #[tokio::test]
    async fn feedback_queued_at_shutdown_is_all_written() {
        let path =
            std::env::temp_dir().join(format!("tierwise-feedback-{}.db", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = Store::connect(&url).await.unwrap();
        let rows: Vec<RequestRow> = (0..200)
            .map(|n| RequestRow::new(format!("r{n}"), n, "chat.completions".into()))
            .collect();
        store
            .insert(&rows.iter().collect::<Vec<_>>(), &[])
            .await
            .unwrap();
        let (queue, writer) = FeedbackWriter::spawn(store);
        for n in 0..200 {
            let feedback = Feedback {
                request_id: format!("r{n}"),
                ts_ms: n,
                truth: r#"{"label": "billing"}"#.into(),
            };
            assert!(queue.submit(feedback, None).is_some());
        }
        writer.finish(Duration::from_secs(30)).await;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM feedback")
            .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(count, 200);
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn feedback_bodies_parse_into_one_truth_or_say_what_is_wrong() {
        let parse = |body: Value| Truth::parse(&body);
        assert_eq!(
            parse(json!({"request_id": "r1", "label": "billing"})),
            Ok(("r1".into(), Truth::Label("billing".into())))
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "correct": false})),
            Ok(("r1".into(), Truth::Correct(false)))
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "score": 0.5})),
            Ok(("r1".into(), Truth::Score(0.5)))
        );
        assert_eq!(
            parse(json!({"label": "billing"})),
            Err(TruthError::RequestId)
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "label": "a", "correct": true})),
            Err(TruthError::Kinds(2))
        );
        assert_eq!(
            parse(json!({"request_id": "r1"})),
            Err(TruthError::Kinds(0))
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "score": 2})),
            Err(TruthError::Type("score", "a number from 0 to 1"))
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "correct": "yes"})),
            Err(TruthError::Type("correct", "true or false"))
        );
        assert_eq!(
            parse(json!({"request_id": "r\u{0}1", "correct": true})),
            Err(TruthError::RequestId)
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "label": "bill\u{0}ing"})),
            Err(TruthError::Nul("label"))
        );
        assert_eq!(
            parse(json!({"request_id": "r1", "value": {"a": ["x\u{0}"]}})),
            Err(TruthError::Nul("value"))
        );
        for truth in [
            Truth::Label("billing".into()),
            Truth::Value(json!({"a": 1})),
            Truth::Score(0.25),
            Truth::Correct(true),
        ] {
            assert_eq!(Truth::from_stored(&truth.to_stored()), Some(truth));
        }
    }

    #[test]
    fn a_label_is_judged_against_the_stored_answer_and_unjudged_without_it() {
        let labels = ["billing".to_string(), "technical".to_string()];
        let truth = Truth::Label("billing".into());
        let right = Answer::text("Billing.");
        let wrong = Answer::text("technical");
        assert_eq!(
            truth.judge(Some(&right), ScorerKind::Label, &labels),
            Some(1.0)
        );
        assert_eq!(
            truth.judge(Some(&wrong), ScorerKind::Label, &labels),
            Some(0.0)
        );
        assert_eq!(truth.judge(None, ScorerKind::Label, &labels), None);
        assert_eq!(
            Truth::Correct(false).judge(None, ScorerKind::Label, &labels),
            Some(0.0)
        );
        let value = Truth::Value(json!({"name": "Ada", "city": "Paris"}));
        let half = Answer::text(r#"{"name": "Ada", "city": "Rome"}"#);
        assert_eq!(value.judge(Some(&half), ScorerKind::Json, &[]), Some(0.5));
    }
}
