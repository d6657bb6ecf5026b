//! An upstream's server-sent events, read one event at a time with the tier's idle timeout between
//! them. A stream counts as answered only once its first event has arrived — and where that event
//! is an opening chunk with only the role, once the next has: until then a failure is the tier's
//! and the chain may try the next one. Anthropic's opening events (`message_start`, then `ping`s),
//! passed through to a Messages client or written by the gateway from chat, are held the same way
//! until an event of the answer: Anthropic reports an overload as an `overloaded_error` event right
//! after `message_start`, which then falls back (and, from the last tier, is answered as the
//! overload it is) rather than ending a stream the client already began.
//!
//! Events are split here rather than by an SSE crate because the relay passes each event on as
//! the bytes the upstream sent (a proxy's cost: no re-framing), and the crates we looked at
//! (eventsource-stream, which this replaced) hand over only the parsed fields. Splitting is the
//! small part of the SSE format: lines end in LF, CRLF or CR, and a blank line ends an event.
//!
//! An event without `data` (a comment such as `: keep-alive`) carries nothing, but says the
//! upstream is alive: after the first event it restarts `idle_ms` and is relayed as it came, so a
//! provider that sends heartbeats while it thinks is not cut. Before the first event it does not
//! count as the first byte: `first_byte_ms` bounds the wait for the first real event, which is what
//! fallback is for (a queued provider that only heartbeats falls back to the next tier), and
//! committing to a tier on a heartbeat would leave a provider that heartbeats forever to `total_ms`
//! with no fallback left.
//!
//! A provider of another wire format has its events translated here, as they are split, into the
//! OpenAI chunks the relay reads ([`super::wire::EventReader`]); an OpenAI-compatible provider's
//! pass as they came.
//!
//! One event is at most [`super::MAX_EVENT_BYTES`], and a line arriving in many reads is searched
//! for its end once, not from its start at every read: a long event costs time and memory in
//! proportion to its length, and one over the limit is the tier's failure.

use std::collections::VecDeque;
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

use super::wire::EventReader;
use super::{UpstreamError, UpstreamErrorKind};

/// One server-sent event: the bytes the upstream sent for it, its name where it has one other
/// than the default `message`, and its data (lines joined with `\n`, as SSE defines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub raw: Bytes,
    pub name: Option<String>,
    pub data: String,
    /// No `data` line: a comment (`: keep-alive`) or fields alone. Passed on as it came; it
    /// carries no answer.
    pub keep_alive: bool,
}

/// Splits a byte stream into events, keeping each event's bytes.
struct Splitter {
    buffer: BytesMut,
    /// Where the next unread line of the event being received starts.
    line_start: usize,
    /// How far that line has been searched for its end.
    scanned: usize,
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
            scanned: 0,
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
                // Nothing searched so far was past the mark, which holds no line ending.
                self.scanned = 0;
            }
        }
    }

    /// The next whole event in what has arrived; `Ok(None)` when more bytes are needed.
    fn next(&mut self) -> Result<Option<SseEvent>, UpstreamError> {
        loop {
            let Some(at) = memchr::memchr2(b'\n', b'\r', &self.buffer[self.scanned..]) else {
                self.scanned = self.buffer.len();
                return self.within_limit(self.buffer.len()).map(|()| None);
            };
            let end = self.scanned + at;
            // A CR at the end of what has arrived may be the first half of a CRLF.
            let terminator = match (self.buffer[end], self.buffer.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) if !self.closed => {
                    self.scanned = end;
                    return self.within_limit(self.buffer.len()).map(|()| None);
                }
                _ => 1,
            };
            let blank = end == self.line_start;
            self.line_start = end + terminator;
            self.scanned = self.line_start;
            if !blank {
                continue;
            }
            // One read may bring a whole event over the limit.
            self.within_limit(self.line_start)?;
            let raw = self.buffer.split_to(self.line_start).freeze();
            self.line_start = 0;
            self.scanned = 0;
            // A blank line with nothing before it ends no event.
            if end > 0 {
                return parse(raw).map(Some);
            }
        }
    }

    /// An event of `len` bytes so far is within the limit.
    fn within_limit(&self, len: usize) -> Result<(), UpstreamError> {
        if len > self.max_event {
            return Err(UpstreamError::new_detail(
                UpstreamErrorKind::AnswerTooLarge,
                format!(
                    "one server-sent event is over {} bytes, the most one event may be",
                    self.max_event
                ),
            ));
        }
        Ok(())
    }
}

/// An event's fields from its bytes.
fn parse(raw: Bytes) -> Result<SseEvent, UpstreamError> {
    let text = std::str::from_utf8(&raw).map_err(|err| {
        UpstreamError::stream_broken(format!(
            "the upstream sent bytes that are not UTF-8 ({err})"
        ))
    })?;
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
    Ok(SseEvent {
        name: name.filter(|name| name != "message"),
        keep_alive: data.is_none(),
        data: data.unwrap_or_default(),
        raw,
    })
}

/// What a translated stream said of its usage before it ended without a usage chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSoFar {
    /// The whole answer's counts.
    Whole(crate::openai::Usage),
    /// Exact input counts (cache reads and writes included); the output is left to count.
    Prompt(crate::openai::Usage),
}

/// An upstream stream that has produced its first event.
pub struct UpstreamStream {
    first: Option<SseEvent>,
    /// The events after a first one that carried nothing of the answer ([`says_nothing_yet`]):
    /// Anthropic's `ping`s and the first event of the answer.
    /// Boxed: a stream without held events (most) pays one pointer, and [`super::Reply`]'s
    /// variants stay close in size.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every stream, the queue in few"
    )]
    then: Option<Box<VecDeque<SseEvent>>>,
    body: Incoming,
    splitter: Splitter,
    idle: Duration,
    /// One timer for the stream's life; it fires at or before `idle_until`.
    timer: Pin<Box<Sleep>>,
    /// When the current wait for an event times out.
    idle_until: Instant,
    /// `total_ms` after the call began: a stream that trickles forever is cut here.
    deadline: Instant,
    /// It has failed: it ends there, however much more is read (an event over the limit would
    /// otherwise be refused again at every read, and the relay reads to the end).
    failed: bool,
    /// Translates another format's events; `None` for OpenAI's, which pass as they came.
    reader: Option<Box<EventReader>>,
}

impl UpstreamStream {
    pub(super) async fn open(
        response: Response<Incoming>,
        first_event_limit: Duration,
        idle: Duration,
        deadline: Instant,
        max_event: usize,
        reader: Option<Box<EventReader>>,
    ) -> Result<UpstreamStream, UpstreamError> {
        let mut stream = UpstreamStream {
            first: None,
            then: None,
            body: response.into_body(),
            splitter: Splitter::new(max_event),
            idle,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            idle_until: deadline,
            deadline,
            failed: false,
            reader,
        };
        // The answer must begin within `first_byte_ms`: its first event, and where that event
        // holds nothing of it, the event that does.
        let answer_due = Instant::now() + first_event_limit;
        // Keep-alives before the first event are not relayed: nothing is committed to this tier
        // until an event with data arrives.
        let first_event = async {
            loop {
                match stream.read_event().await {
                    Some(Ok(event)) if event.keep_alive => {}
                    polled => return polled,
                }
            }
        };
        let first = match tokio::time::timeout_at(answer_due, first_event).await {
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
            Ok(Some(Err(err))) if err.kind == UpstreamErrorKind::StreamBroken => {
                return Err(UpstreamError::stream_broken(format!(
                    "the stream broke before its first event: {}",
                    err.detail
                )));
            }
            Ok(Some(Err(err))) => return Err(err),
            Ok(Some(Ok(event))) => event,
        };
        if first.data != "[DONE]" && serde_json::from_str::<IgnoredAny>(&first.data).is_err() {
            return Err(UpstreamError::malformed(
                "the stream's first event is not valid JSON".into(),
            ));
        }
        if is_error_event(&first.data) {
            return Err(early_error(
                &first.data,
                "the stream's first event is an error",
            ));
        }
        // A first chunk with only the role says nothing of the answer (vLLM and OpenAI send it
        // before the first token; Anthropic's `message_start` becomes one): an error or the end
        // right after it leaves the client with nothing, so the tier is not committed to until
        // the next event shows the answer has begun. Until then the client has had nothing, so
        // the wait is bounded as the first event's is, by `first_byte_ms` (a tier that sends
        // `message_start` and then only pings or keep-alives is as good as one that queues), and
        // by `idle_ms` between events; the bytes pass on as they came.
        let holds_nothing = says_nothing_yet(&first.data) || opens_a_message(&first.data);
        stream.first = Some(first);
        if holds_nothing {
            let answer_begins = async {
                loop {
                    match stream.read_held().await {
                        Some(Ok(event)) if event.keep_alive => {}
                        Some(Ok(event)) if is_error_event(&event.data) => {
                            return Err(early_error(
                                &event.data,
                                "the stream's first event after its opening chunk is an error",
                            ));
                        }
                        // Anthropic's pings say nothing of the answer either: one goes out with
                        // it, the rest are dropped, so that a flood of them while the opening is
                        // held costs no memory (they carry nothing a client reads).
                        Some(Ok(event)) if is_ping(&event.data) => {
                            if stream.then.is_none() {
                                stream.then.get_or_insert_default().push_back(event);
                            }
                        }
                        Some(Ok(event)) => {
                            stream.then.get_or_insert_default().push_back(event);
                            return Ok(());
                        }
                        Some(Err(err)) => return Err(err),
                        None => {
                            return Err(UpstreamError::stream_broken(
                                "the stream ended after its opening chunk, before its answer began"
                                    .into(),
                            ));
                        }
                    }
                }
            };
            match tokio::time::timeout_at(answer_due, answer_begins).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(UpstreamError::new_detail(
                        UpstreamErrorKind::TimeoutFirstByte,
                        "the stream opened, but its answer did not begin within first_byte_ms"
                            .into(),
                    ));
                }
            }
        }
        Ok(stream)
    }

    /// The next event while the first is held: [`UpstreamStream::next_event`] without handing
    /// the first (or the pings held after it) over.
    async fn read_held(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        let first = self.first.take();
        let then = self.then.take();
        let event = self.next_event().await;
        self.first = first;
        self.then = then;
        event
    }

    /// The next event; `None` when the upstream closed the stream.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if let Some(then) = self.then.as_mut().and_then(|then| then.pop_front()) {
            return Some(Ok(then));
        }
        let mut waiting = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(event) = self.poll_event(cx) {
                return Poll::Ready(event);
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

    /// What a translated stream has said of its usage so far; `None` for one passed through,
    /// whose usage is in its own chunks.
    pub fn usage_so_far(&self) -> Option<UsageSoFar> {
        self.reader.as_ref()?.usage_so_far()
    }

    /// Whether the events are the gateway's own, written from a chat stream for the client's
    /// endpoint: the usage they say is what the gateway tells the client, and the upstream's
    /// own is [`UpstreamStream::usage_so_far`].
    pub fn translated(&self) -> bool {
        self.reader
            .as_ref()
            .is_some_and(|reader| reader.translated())
    }

    /// The next event if it has already arrived, without waiting or setting a timer.
    pub fn ready_event(&mut self) -> Option<Option<Result<SseEvent, UpstreamError>>> {
        if let Some(first) = self.first.take() {
            return Some(Some(Ok(first)));
        }
        if let Some(then) = self.then.as_mut().and_then(|then| then.pop_front()) {
            return Some(Some(Ok(then)));
        }
        std::future::poll_fn(|cx| self.poll_event(cx)).now_or_never()
    }

    async fn read_event(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<SseEvent, UpstreamError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        loop {
            if let Some(event) = self.reader.as_mut().and_then(|reader| reader.next()) {
                return Poll::Ready(Some(Ok(event)));
            }
            match self.splitter.next() {
                Ok(Some(event)) => match &mut self.reader {
                    None => return Poll::Ready(Some(Ok(event))),
                    Some(reader) => {
                        if let Err(err) = reader.read(event) {
                            self.failed = true;
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                },
                Err(err) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(err)));
                }
                // What is left of an event without its blank line is discarded, as SSE says.
                Ok(None) if self.splitter.closed => {
                    // A translator may still owe the stream's closing events.
                    let Some(reader) = self.reader.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if let Err(err) = reader.close() {
                        self.failed = true;
                        return Poll::Ready(Some(Err(err)));
                    }
                    return Poll::Ready(reader.next().map(Ok));
                }
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
                Poll::Ready(Some(Err(err))) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(UpstreamError::stream_broken(err.to_string()))));
                }
                Poll::Ready(None) => self.splitter.closed = true,
            }
        }
    }
}

/// Whether a first chunk carries nothing of the answer: every choice's delta only its role, an
/// empty `content` or nulls, no finish, no usage. Only a chunk that names a role is parsed, so
/// the usual first chunk of text costs a scan for `"role"`.
fn says_nothing_yet(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        usage: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        delta: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        finish_reason: Option<IgnoredAny>,
    }
    data.contains("\"role\"")
        && serde_json::from_str::<Chunk>(data).is_ok_and(|chunk| {
            chunk.usage.is_none()
                && !chunk.choices.is_empty()
                && chunk.choices.iter().all(|choice| {
                    choice.finish_reason.is_none()
                        && choice.delta.iter().all(|(key, value)| {
                            key == "role" || value.is_null() || (key == "content" && value == "")
                        })
                })
        })
}

/// Anthropic's `message_start`, as an Anthropic tier sends it to a Messages client or the gateway
/// writes it from chat: the message with nothing of its answer yet. Only an event that names it
/// is parsed.
fn opens_a_message(data: &str) -> bool {
    event_type(data, "\"message_start\"").is_some_and(|kind| kind == "message_start")
}

fn is_ping(data: &str) -> bool {
    event_type(data, "\"ping\"").is_some_and(|kind| kind == "ping")
}

/// An Anthropic event's `type`, read only where the data holds `word`.
fn event_type(data: &str, word: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    if !data.contains(word) {
        return None;
    }
    serde_json::from_str::<Typed>(data)
        .ok()
        .map(|typed| typed.kind)
}

/// An error event before the answer began: the tier's failure. An overload (Anthropic's
/// `overloaded_error`, as its own event or as the chat chunk the gateway wrote of it) is the
/// provider's overload, as the 529 Anthropic answers it with at other times: the next tier is
/// tried, and from the last the client is told of the overload.
fn early_error(data: &str, what: &str) -> UpstreamError {
    #[derive(Deserialize)]
    struct Event {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        code: Option<String>,
    }
    let overloaded = serde_json::from_str::<Event>(data).is_ok_and(|event| {
        [event.error.kind, event.error.code]
            .iter()
            .any(|said| said.as_deref() == Some("overloaded_error"))
    });
    if !overloaded {
        return UpstreamError::stream_broken(what.into());
    }
    UpstreamError {
        kind: UpstreamErrorKind::Status(
            http::StatusCode::from_u16(529).expect("529 is a status code"),
        ),
        detail: format!("{what}: overloaded_error (Anthropic's 529)"),
        body: Bytes::copy_from_slice(data.as_bytes()),
        retry_after: None,
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

    fn split_all(pieces: &[&[u8]]) -> Vec<Result<SseEvent, UpstreamError>> {
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
            assert_eq!(events.len(), 4, "cut at {cut}");
            assert_eq!(&events[0].raw[..], b"data: {\"a\":1}\n\n");
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[0].name, None);
            assert!(!events[0].keep_alive);
            // A comment is a keep-alive, passed on as it came.
            assert!(events[1].keep_alive);
            assert_eq!(&events[1].raw[..], b": keep-alive\n\n");
            assert_eq!(events[2].name.as_deref(), Some("ping"));
            assert_eq!(events[2].data, "x\ny");
            assert_eq!(
                &events[2].raw[..],
                b"event: ping\r\ndata: x\r\ndata:y\r\n\r\n"
            );
            assert_eq!(events[3].data, "z");
        }
    }

    #[test]
    fn bad_bytes_and_endless_events_are_refused() {
        let bad = split_all(&[b"data: \xff\xfe\n\n"]);
        assert!(
            bad[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        let mut splitter = Splitter::new(64);
        splitter.push(&[b'a'; 100]);
        let endless = splitter.next().unwrap_err();
        assert_eq!(endless.kind, UpstreamErrorKind::AnswerTooLarge);
        assert!(endless.to_string().contains("over 64 bytes"), "{endless}");
        // Also when one read brings the whole event.
        let mut splitter = Splitter::new(64);
        splitter.push(format!("data: {}\n\n", "a".repeat(100)).as_bytes());
        assert!(
            splitter
                .next()
                .unwrap_err()
                .to_string()
                .contains("over 64 bytes")
        );
        let bom = split_all(&[b"\xEF\xBB\xBFdata: 1\n\n"]);
        assert_eq!(bom[0].as_ref().unwrap().data, "1");
        // An event cut off by the end of the stream is not one.
        assert_eq!(split_all(&[b"data: 1\n\ndata: 2\n"]).len(), 1);
        // Blank lines alone end no event.
        assert_eq!(split_all(&[b"\n\r\ndata: 1\n\n\n\n"]).len(), 1);
    }

    #[test]
    fn a_line_arriving_in_many_reads_is_searched_once() {
        let mut splitter = Splitter::new(1 << 20);
        splitter.push(b"data: ");
        for _ in 0..1000 {
            splitter.push(b"aaaaaaaa");
            assert_eq!(splitter.next().unwrap(), None);
            // The next search starts where this one stopped, not at the line's start: searching
            // from there at every read made a long event cost its length squared.
            assert_eq!(splitter.scanned, splitter.buffer.len());
        }
        splitter.push(b"\r");
        assert_eq!(splitter.next().unwrap(), None);
        splitter.push(b"\n\r\n");
        let event = splitter.next().unwrap().unwrap();
        assert_eq!(event.data.len(), 8000);
        assert_eq!(splitter.scanned, 0);
    }
}
