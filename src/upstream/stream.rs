//! An upstream's server-sent events, read one event at a time with the tier's idle timeout between
//! them. A stream counts as answered only once its first event has arrived: until then a failure is
//! the tier's and the chain may try the next one.
//!
//! Events are split here rather than by an SSE crate because the relay passes each event on as
//! the bytes the upstream sent (a proxy's cost: no re-framing), and the crates we looked at
//! (eventsource-stream, which this replaced) hand over only the parsed fields. Splitting is the
//! small part of the SSE format: lines end in LF, CRLF or CR, a blank line ends an event, and an
//! event without `data` (a comment, a keep-alive) is none.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::Response;
use hyper::body::{Body as _, Incoming};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::time::{Instant, Sleep};

use super::{UpstreamError, UpstreamErrorKind};

/// One server-sent event: the bytes the upstream sent for it, its name where it has one other
/// than the default `message`, and its data (lines joined with `\n`, as SSE defines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: Bytes,
    pub name: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events, keeping each event's bytes.
struct Splitter {
    buffer: BytesMut,
    /// Where the next unread line of the event being received starts.
    line_start: usize,
    /// The upstream's byte-order mark, if it sends one, is not part of the first event.
    started: bool,
    /// An event longer than this is refused rather than buffered without end.
    max_event: usize,
    /// The upstream has closed its body: a CR at the end is a whole line ending.
    closed: bool,
}

impl Splitter {
    fn new(max_event: usize) -> Splitter {
        Splitter {
            buffer: BytesMut::new(),
            line_start: 0,
            started: false,
            max_event,
            closed: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        if !self.started && self.buffer.len() >= 3 {
            self.started = true;
            if self.buffer.starts_with(b"\xEF\xBB\xBF") {
                let _ = self.buffer.split_to(3);
            }
        }
    }

    /// The next whole event in what has arrived; `Ok(None)` when more bytes are needed.
    fn next(&mut self) -> Result<Option<SseEvent>, String> {
        loop {
            let rest = &self.buffer[self.line_start..];
            let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
                return self.within_limit().map(|()| None);
            };
            let end = self.line_start + at;
            // A CR at the end of what has arrived may be the first half of a CRLF.
            let terminator = match (self.buffer[end], self.buffer.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) if !self.closed => return self.within_limit().map(|()| None),
                _ => 1,
            };
            let blank = end == self.line_start;
            self.line_start = end + terminator;
            if !blank {
                continue;
            }
            let raw = self.buffer.split_to(self.line_start).freeze();
            self.line_start = 0;
            if let Some(event) = parse(raw)? {
                return Ok(Some(event));
            }
        }
    }

    fn within_limit(&self) -> Result<(), String> {
        if self.buffer.len() > self.max_event {
            return Err(format!(
                "the upstream sent malformed server-sent events (an event over {} bytes)",
                self.max_event
            ));
        }
        Ok(())
    }
}

/// An event's fields from its bytes; `None` for an event without data.
fn parse(raw: Bytes) -> Result<Option<SseEvent>, String> {
    let text = std::str::from_utf8(&raw)
        .map_err(|err| format!("the upstream sent bytes that are not UTF-8 ({err})"))?;
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => name = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(data.map(|data| SseEvent {
        name: name.filter(|name| name != "message"),
        data,
        raw,
    }))
}

/// An upstream stream that has produced its first event.
pub struct UpstreamStream {
    first: Option<SseEvent>,
    body: Incoming,
    splitter: Splitter,
    idle: Duration,
    /// One timer for the stream's life; it fires at or before `idle_until`.
    timer: Pin<Box<Sleep>>,
    /// When the current wait for an event times out.
    idle_until: Instant,
    /// `total_ms` after the call began: a stream that trickles forever is cut here.
    deadline: Instant,
}

impl UpstreamStream {
    pub(super) async fn open(
        response: Response<Incoming>,
        first_event_limit: Duration,
        idle: Duration,
        deadline: Instant,
        max_event: usize,
    ) -> Result<UpstreamStream, UpstreamError> {
        let mut stream = UpstreamStream {
            first: None,
            body: response.into_body(),
            splitter: Splitter::new(max_event),
            idle,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            idle_until: deadline,
            deadline,
        };
        let first = match tokio::time::timeout(first_event_limit, stream.read_event()).await {
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
            Ok(Some(Err(why))) => {
                return Err(UpstreamError::stream_broken(format!(
                    "the stream broke before its first event: {why}"
                )));
            }
            Ok(Some(Ok(event))) => event,
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
        stream.first = Some(first);
        Ok(stream)
    }

    /// The next event; `None` when the upstream closed the stream.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let mut waiting = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(event) = self.poll_event(cx) {
                return Poll::Ready(event.map(|event| event.map_err(UpstreamError::stream_broken)));
            }
            // Only a real wait moves the idle limit: most events are already here. The timer
            // itself is moved only when it fires early, so a stream of chunks costs the timer
            // wheel one entry per idle period rather than one per chunk.
            if !waiting {
                waiting = true;
                self.idle_until = (Instant::now() + self.idle).min(self.deadline);
                if self.timer.deadline() > self.idle_until {
                    self.timer.as_mut().reset(self.idle_until);
                }
            }
            loop {
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if Instant::now() >= self.idle_until {
                    break;
                }
                let idle_until = self.idle_until;
                self.timer.as_mut().reset(idle_until);
            }
            Poll::Ready(Some(Err(if self.idle_until < self.deadline {
                UpstreamError::new(UpstreamErrorKind::TimeoutIdle, self.idle)
            } else {
                UpstreamError::new_detail(
                    UpstreamErrorKind::TimeoutTotal,
                    "the stream went on past total_ms".into(),
                )
            })))
        })
        .await
    }

    /// The next event if it has already arrived, without waiting or setting a timer.
    pub fn ready_event(&mut self) -> Option<Option<Result<SseEvent, UpstreamError>>> {
        if let Some(first) = self.first.take() {
            return Some(Some(Ok(first)));
        }
        let polled = std::future::poll_fn(|cx| self.poll_event(cx)).now_or_never()?;
        Some(polled.map(|event| event.map_err(UpstreamError::stream_broken)))
    }

    async fn read_event(&mut self) -> Option<Result<SseEvent, String>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<SseEvent, String>>> {
        loop {
            match self.splitter.next() {
                Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                Err(why) => return Poll::Ready(Some(Err(why))),
                // What is left of an event without its blank line is discarded, as SSE says.
                Ok(None) if self.splitter.closed => return Poll::Ready(None),
                Ok(None) => {}
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // An HTTP/2 upstream may end with trailers; they carry no event.
                    if let Some(bytes) = frame.data_ref() {
                        self.splitter.push(bytes);
                    }
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.to_string()))),
                Poll::Ready(None) => self.splitter.closed = true,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&[u8]]) -> Vec<Result<SseEvent, String>> {
        let mut splitter = Splitter::new(1 << 20);
        let mut events = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            splitter.push(piece);
            splitter.closed = n + 1 == pieces.len();
            while let Some(event) = splitter.next().transpose() {
                let failed = event.is_err();
                events.push(event);
                if failed {
                    return events;
                }
            }
        }
        events
    }

    #[test]
    fn events_keep_their_bytes_and_their_fields_whatever_the_line_endings() {
        let stream: &[u8] =
            b"data: {\"a\":1}\n\n: keep-alive\n\nevent: ping\r\ndata: x\r\ndata:y\r\n\r\ndata: z\r\r";
        // Whole, and cut at every byte: the events do not depend on how the reads fell.
        for cut in 0..=stream.len() {
            let events: Vec<SseEvent> = split_all(&[&stream[..cut], &stream[cut..]])
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(events.len(), 3, "cut at {cut}");
            assert_eq!(&events[0].raw[..], b"data: {\"a\":1}\n\n");
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[0].name, None);
            assert_eq!(events[1].name.as_deref(), Some("ping"));
            assert_eq!(events[1].data, "x\ny");
            assert_eq!(
                &events[1].raw[..],
                b"event: ping\r\ndata: x\r\ndata:y\r\n\r\n"
            );
            assert_eq!(events[2].data, "z");
        }
    }

    #[test]
    fn bad_bytes_and_endless_events_are_refused() {
        let bad = split_all(&[b"data: \xff\xfe\n\n"]);
        assert!(bad[0].as_ref().unwrap_err().contains("not UTF-8"));
        let mut splitter = Splitter::new(64);
        splitter.push(&[b'a'; 100]);
        assert!(splitter.next().unwrap_err().contains("over 64 bytes"));
        let bom = split_all(&[b"\xEF\xBB\xBFdata: 1\n\n"]);
        assert_eq!(bom[0].as_ref().unwrap().data, "1");
        // An event cut off by the end of the stream is not one.
        assert_eq!(split_all(&[b"data: 1\n\ndata: 2\n"]).len(), 1);
    }
}
