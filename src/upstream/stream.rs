//! An upstream's server-sent events, read one event at a time with the tier's idle timeout between
//! them. A stream counts as answered only once its first event has arrived: until then a failure is
//! the tier's and the chain may try the next one.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{UpstreamError, UpstreamErrorKind};

type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// One server-sent event: its name where it has one other than the default `message`, and its
/// data (lines joined with `\n`, as SSE defines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

impl From<eventsource_stream::Event> for SseEvent {
    fn from(event: eventsource_stream::Event) -> SseEvent {
        SseEvent {
            name: (event.event != "message").then_some(event.event),
            data: event.data,
        }
    }
}

/// An upstream stream that has produced its first event.
pub struct UpstreamStream {
    first: Option<SseEvent>,
    events: Events,
    idle: Duration,
    /// `total_ms` after the call began: a stream that trickles forever is cut here.
    deadline: tokio::time::Instant,
}

impl UpstreamStream {
    pub(super) async fn open(
        response: reqwest::Response,
        first_event_limit: Duration,
        idle: Duration,
        deadline: tokio::time::Instant,
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
                    "the stream broke before its first event: {}",
                    broken(&err)
                )));
            }
            Ok(Some(Ok(event))) => SseEvent::from(event),
        };
        if first.data != "[DONE]" && serde_json::from_str::<IgnoredAny>(&first.data).is_err() {
            return Err(UpstreamError::malformed(
                "the stream's first event is not valid JSON".into(),
            ));
        }
        if is_error_event(&first.data) {
            return Err(UpstreamError::stream_broken(
                "the stream's first event is an error".into(),
            ));
        }
        Ok(UpstreamStream {
            first: Some(first),
            events,
            idle,
            deadline,
        })
    }

    /// The next event; `None` when the upstream closed the stream.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let idle_until = tokio::time::Instant::now() + self.idle;
        match tokio::time::timeout_at(idle_until.min(self.deadline), self.events.next()).await {
            Err(_) if idle_until < self.deadline => Some(Err(UpstreamError::new(
                UpstreamErrorKind::TimeoutIdle,
                self.idle,
            ))),
            Err(_) => Some(Err(UpstreamError::new_detail(
                UpstreamErrorKind::TimeoutTotal,
                "the stream went on past total_ms".into(),
            ))),
            Ok(None) => None,
            Ok(Some(Err(err))) => Some(Err(UpstreamError::stream_broken(broken(&err)))),
            Ok(Some(Ok(event))) => Some(Ok(SseEvent::from(event))),
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

/// Why an event stream broke, in words an operator can act on.
fn broken(err: &EventStreamError<reqwest::Error>) -> String {
    match err {
        EventStreamError::Utf8(err) => {
            format!("the upstream sent bytes that are not UTF-8 ({err})")
        }
        EventStreamError::Parser(err) => {
            format!("the upstream sent malformed server-sent events ({err})")
        }
        EventStreamError::Transport(err) => err.to_string(),
    }
}
