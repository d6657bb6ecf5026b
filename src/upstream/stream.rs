//! Streams: an upstream's server-sent events relayed to the client one event at a time, as they
//! arrive. tierwise always asks the upstream for usage; the usage-only chunk is dropped again here
//! when the client did not ask for it. A stream that breaks after the client has seen data cannot
//! fall back, so it ends with a well-formed SSE error event instead of hanging or stopping mid-line.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{UpstreamError, UpstreamErrorKind, Usage};

type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

const DONE: &str = "[DONE]";

/// An upstream stream that has produced its first event.
pub struct UpstreamStream {
    first: Option<String>,
    events: Events,
    idle: Duration,
}

impl UpstreamStream {
    pub(super) async fn open(
        response: reqwest::Response,
        first_event_limit: Duration,
        idle: Duration,
    ) -> Result<UpstreamStream, UpstreamError> {
        let mut events: Events = Box::pin(response.bytes_stream().eventsource());
        let first = match tokio::time::timeout(first_event_limit, events.next()).await {
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutFirstByte,
                    first_event_limit,
                ));
            }
            Ok(None) => {
                return Err(UpstreamError::stream_broken(
                    "the stream ended before its first event".into(),
                ));
            }
            Ok(Some(Err(err))) => {
                return Err(UpstreamError::stream_broken(format!(
                    "the stream broke before its first event: {err}"
                )));
            }
            Ok(Some(Ok(event))) => event.data,
        };
        if is_error_event(&first) {
            return Err(UpstreamError::stream_broken(
                "the stream's first event is an error".into(),
            ));
        }
        Ok(UpstreamStream {
            first: Some(first),
            events,
            idle,
        })
    }

    async fn next_data(&mut self) -> Option<Result<String, UpstreamError>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        match tokio::time::timeout(self.idle, self.events.next()).await {
            Err(_) => Some(Err(UpstreamError::new(
                UpstreamErrorKind::TimeoutIdle,
                self.idle,
            ))),
            Ok(None) => None,
            Ok(Some(Err(err))) => Some(Err(UpstreamError::stream_broken(err.to_string()))),
            Ok(Some(Ok(event))) => Some(Ok(event.data)),
        }
    }
}

fn is_error_event(data: &str) -> bool {
    #[derive(Deserialize)]
    struct ErrorProbe {
        error: Option<IgnoredAny>,
    }
    serde_json::from_str::<ErrorProbe>(data).is_ok_and(|probe| probe.error.is_some())
}

/// What tierwise reads from each chunk: its usage and whether a choice has finished.
#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    finish_reason: Option<IgnoredAny>,
}

/// Turns an upstream stream into the SSE frames the client receives.
pub struct SseRelay {
    upstream: UpstreamStream,
    client_wants_usage: bool,
    finished: bool,
    saw_finish_reason: bool,
    /// Where the interruption message names the tier that broke.
    tier: String,
}

impl SseRelay {
    pub fn new(upstream: UpstreamStream, client_wants_usage: bool, tier: &str) -> SseRelay {
        SseRelay {
            upstream,
            client_wants_usage,
            finished: false,
            saw_finish_reason: false,
            tier: tier.to_string(),
        }
    }

    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut relay| async move {
            let frame = relay.next_frame().await?;
            Some((Ok(frame), relay))
        })
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let data = match self.upstream.next_data().await {
                Some(Ok(data)) => data,
                Some(Err(err)) => {
                    self.finished = true;
                    return Some(self.interrupted(&err.to_string()));
                }
                None => {
                    self.finished = true;
                    // Some servers close without `[DONE]` after the last choice finished; the
                    // answer is whole, so the client gets the terminator it expects.
                    return Some(if self.saw_finish_reason {
                        frame(DONE)
                    } else {
                        self.interrupted("the stream ended before the answer was complete")
                    });
                }
            };
            if data == DONE {
                self.finished = true;
                return Some(frame(DONE));
            }
            if let Ok(probe) = serde_json::from_str::<ChunkProbe>(&data) {
                if probe.choices.iter().any(|c| c.finish_reason.is_some()) {
                    self.saw_finish_reason = true;
                }
                if !self.client_wants_usage && probe.choices.is_empty() && probe.usage.is_some() {
                    continue;
                }
            }
            return Some(frame(&data));
        }
    }

    fn interrupted(&self, why: &str) -> Bytes {
        let error = serde_json::json!({
            "error": {
                "message": format!("the stream from tier '{}' was interrupted: {why}", self.tier),
                "type": "upstream_error",
                "param": null,
                "code": "stream_interrupted",
            }
        });
        frame(&error.to_string())
    }
}

fn frame(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}
