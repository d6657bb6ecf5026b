//! A stream relayed to the client as it arrives: each event as it came, and the events that
//! arrived together in one write. tierwise always asks the
//! upstream for usage; the usage-only chunk is dropped again here when the client did not ask for
//! it, and carries `cost_usd` (the cost the ledger stores) when it did. A stream that breaks after
//! the client has seen data cannot fall back, so it ends with a well-formed SSE error event instead
//! of hanging or stopping mid-line, and the provider's breaker hears of it. On a route with an
//! output contract the text is relayed as it came (the headers left before it existed) and the
//! contract's verdict on the whole text is recorded when the stream ends.
//!
//! The relay is a state machine: [`Phase::Relaying`] until the upstream ends (or breaks), then
//! [`Phase::Ended`] until the client has the last frame, then the request ends in
//! [`crate::outcome`] and the relay is [`Phase::Closed`]. Dropped before that — the client went
//! away — it ends the request as abandoned (499) with what was relayed.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use crate::config::Route;
use crate::health::Lease;
use crate::ledger::Tokens;
use crate::openai::{AnthropicUsage, ChoiceTexts, Chunk, EndpointSpec, StreamMarks, Usage};
use crate::outcome::{CLIENT_CLOSED, Ended, Ending, Exchange};
use crate::route::chain::ServedBy;
use crate::route::contract;
use crate::stored::Keep;
use crate::traces::StreamFacts;
use crate::upstream::{SseEvent, UpstreamError, UpstreamStream, UsageSoFar};

/// Turns of the thread's queue the relay waits for the upstream's next event before it writes.
/// Measured at c=256: of the events already read, 9 in 10 were handed over in the second turn
/// (hyper's connection task is woken, then polled), almost none later but those of a new read.
const TURNS: u32 = 2;
/// Below saturation a wait for more events is tried once every this many writes.
const WAIT_EVERY: u32 = 4;
/// Events that arrived together are written together up to this much; a fast upstream's events
/// then still reach the client in writes of a useful size rather than one at the very end.
const COALESCE_BYTES: usize = 16 * 1024;
/// How the ledger names a stream the upstream ended with its own error event.
const UPSTREAM_ERROR: &str = "upstream_error_event";

/// Where the relay is in the stream's life.
enum Phase {
    Relaying,
    /// The upstream has ended; `error_kind` says why when it broke.
    Ended {
        error_kind: Option<String>,
    },
    /// The request's outcome has been delivered.
    Closed,
}

/// The request a stream belongs to, until the stream ends it.
struct Pending {
    exchange: Exchange,
    by: ServedBy,
    ttfb_us: i64,
}

/// Turns an upstream stream into the SSE frames the client receives.
pub struct SseRelay {
    upstream: UpstreamStream,
    /// How the endpoint's stream events are read, and how its streams end.
    spec: &'static EndpointSpec,
    /// What the events said of the answer, for the event that ends a broken stream.
    marks: StreamMarks,
    /// Holds the provider's in-flight slot until the stream ends, and tells its breaker how the
    /// stream ended: whole, or broken. A stream its client abandons tells it nothing.
    lease: Lease,
    client_wants_usage: bool,
    phase: Phase,
    /// A choice finished: the answer is whole even if the upstream closes without `[DONE]`.
    finished: bool,
    usage: Option<Usage>,
    /// The usage counts the events gave so far, merged (Anthropic's: the input in
    /// `message_start`, the output in `message_delta`).
    counts: AnthropicUsage,
    /// The events are the gateway's own, translated from chat: their counts are its estimates
    /// for the client, and the upstream's usage is read from the chat stream instead.
    translated: bool,
    /// The answer's text, each choice's apart, for the ledger, the shadow check and counting
    /// output tokens without usage; at most `max_text` bytes of it (`server.max_answer_bytes`):
    /// the stream itself is not cut.
    text: ChoiceTexts,
    max_text: usize,
    /// Every chunk's text fit in `text`.
    text_whole: bool,
    /// The upstream sent an `{"error": …}` event mid-stream.
    upstream_error: bool,
    /// Writes since the relay last waited for more events; see [`SseRelay::with_ready_events`].
    writes_since_wait: u32,
    /// The last wait for more events brought some: the upstream's events are coming in bursts.
    bursts: bool,
    /// The route whose output contract judges the whole text once the stream has ended.
    contract: Option<Arc<Route>>,
    /// The upstream's events, for the route's cache to keep; dropped once past its bound.
    recording: Option<Recording>,
    /// What the events say of the answer, for the request's span, where it is traced.
    facts: Option<StreamFacts>,
    /// Where a stream that ends whole leaves its answer for the next turn, and that answer.
    keep: Option<Keep>,
    answer: Option<Value>,
    /// The upstream's id for a kept answer, which the client never sees.
    upstream_id: Option<String>,
    pending: Option<Pending>,
}

/// What a relay is asked to do besides relaying: the request's terms.
pub struct RelayTerms {
    /// The endpoint whose stream events are relayed.
    pub spec: &'static EndpointSpec,
    /// The client set `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// The most of the answer's text kept (`server.max_answer_bytes`).
    pub max_text: usize,
    /// The route whose output contract judges the whole text once the stream has ended.
    pub contract: Option<Arc<Route>>,
    /// The answer is kept for its next turn, from the whole answer the last event carries.
    pub keep: Option<Keep>,
}

/// A stream's events as they came, up to `max` bytes.
struct Recording {
    events: Vec<Bytes>,
    bytes: usize,
    max: usize,
}

impl SseRelay {
    pub fn new(
        upstream: UpstreamStream,
        lease: Lease,
        terms: RelayTerms,
        exchange: Exchange,
        by: ServedBy,
    ) -> SseRelay {
        let RelayTerms {
            spec,
            client_wants_usage,
            max_text,
            contract,
            keep,
        } = terms;
        let translated = upstream.translated();
        // The gateway's own `response.failed` of a stream cut before `response.created` came
        // still names the response by the id the client is given.
        let marks = StreamMarks {
            response_id: keep.as_ref().map(|keep| keep.id().to_string()),
            ..StreamMarks::default()
        };
        SseRelay {
            upstream,
            spec,
            marks,
            lease,
            client_wants_usage,
            phase: Phase::Relaying,
            finished: false,
            usage: None,
            counts: AnthropicUsage::default(),
            translated,
            text: ChoiceTexts::default(),
            max_text,
            text_whole: true,
            upstream_error: false,
            writes_since_wait: 0,
            bursts: false,
            contract,
            recording: None,
            facts: exchange.trace().map(|_| StreamFacts::default()),
            keep,
            answer: None,
            upstream_id: None,
            pending: Some(Pending {
                ttfb_us: exchange.elapsed_us(),
                exchange,
                by,
            }),
        }
    }

    /// Keeps the upstream's events, up to `max` bytes, for the route's cache.
    pub fn recording(mut self, max: Option<usize>) -> SseRelay {
        self.recording = max.map(|max| Recording {
            events: Vec::new(),
            bytes: 0,
            max,
        });
        self
    }

    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut relay| async move {
            let frame = relay.next_frame().await?;
            Some((Ok(frame), relay))
        })
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Closed => return None,
                Phase::Ended { error_kind } => {
                    // The client has its last frame; now the request ends.
                    let error_kind = error_kind.take();
                    self.phase = Phase::Closed;
                    if let Some(ended) = self.end(200, error_kind) {
                        ended.deliver().await;
                    }
                    return None;
                }
                Phase::Relaying => {}
            }
            let polled = self.upstream.next_event().await;
            let Some(first) = self.relay(polled) else {
                continue;
            };
            let frames = self.with_ready_events(first).await;
            if matches!(self.phase, Phase::Ended { .. }) {
                self.release_upstream().await;
            }
            return Some(frames);
        }
    }

    /// The stream has ended: what of the upstream's body is already here (after `[DONE]`, as a
    /// rule its terminating chunk) is taken so that hyper can put the connection back in its
    /// pool, and the relay steps aside while hyper-util's task does that, before the client sees
    /// the end. A client sends its next request as soon as it has the end; if the connection is
    /// not back by then, that request opens another one, and under load the pools grew to twice
    /// the streams in flight, each spare connection holding ~30 KB (docs/benchmarks.md). Nothing
    /// here waits on the upstream: only what was handed over is read, for two turns at most.
    async fn release_upstream(&mut self) {
        for _ in 0..TURNS {
            while let Some(Some(_)) = self.upstream.ready_event() {}
            step_aside().await;
        }
    }

    /// `first` and the events the upstream sent with it, as one write, the way a plain proxy writes
    /// what one read brought. Those events reach the relay one at a time: hyper's client
    /// connection task hands over one body frame, then decodes the next only when it runs again.
    /// So the relay steps aside for a turn of the thread's queue (no system call) and takes what
    /// was handed over, until [`TURNS`] turns bring nothing. Without this each event was a write of
    /// its own: 23.6 writes per 20-chunk stream against nginx's 8.4 (strace, c=256).
    ///
    /// Stepping aside costs two polls of the connection for nothing when events come one per read,
    /// as they do below saturation; so once a wait has brought nothing, the relay waits again
    /// only every [`WAIT_EVERY`] writes, until a wait finds a burst.
    async fn with_ready_events(&mut self, first: Bytes) -> Bytes {
        if !self.bursts && self.writes_since_wait + 1 < WAIT_EVERY {
            self.writes_since_wait += 1;
            return first;
        }
        self.writes_since_wait = 0;
        self.bursts = false;
        let mut frames: Option<bytes::BytesMut> = None;
        let mut idle_turns = 0;
        while idle_turns < TURNS
            && matches!(self.phase, Phase::Relaying)
            && frames.as_ref().map_or(first.len(), |f| f.len()) < COALESCE_BYTES
        {
            step_aside().await;
            idle_turns += 1;
            while matches!(self.phase, Phase::Relaying) {
                let Some(polled) = self.upstream.ready_event() else {
                    break;
                };
                idle_turns = 0;
                self.bursts = true;
                if let Some(more) = self.relay(polled) {
                    frames
                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&more);
                }
            }
        }
        frames.map_or(first, bytes::BytesMut::freeze)
    }

    /// What the client gets for one upstream event (`None`: the end of the stream), if anything:
    /// the event as it came, the usage chunk with its cost, the terminator, or the error event of a
    /// broken stream. A usage chunk the client did not ask for gives nothing.
    fn relay(&mut self, polled: Option<Result<SseEvent, UpstreamError>>) -> Option<Bytes> {
        let event = match polled {
            Some(Ok(event)) => event,
            Some(Err(err)) => {
                let reason = err.reason();
                self.lease.broke(&reason);
                return Some(self.interrupt(reason, &err.to_string()));
            }
            // The upstream's error event was the stream's last: it has reached the client, and
            // a failed stream ends with its error event, as one cut short does.
            None if self.upstream_error => {
                self.lease.broke(UPSTREAM_ERROR);
                self.phase = Phase::Ended {
                    error_kind: Some(UPSTREAM_ERROR.to_string()),
                };
                return None;
            }
            // Some servers close without `[DONE]` after the last choice finished; the answer is
            // whole, so the client gets the terminator it expects.
            None if self.finished => return self.end_of_answer(),
            None => {
                self.lease.broke("stream_broken");
                return Some(self.interrupt(
                    "stream_broken".into(),
                    "the stream ended before the answer was complete",
                ));
            }
        };
        if event.keep_alive {
            return Some(event.raw);
        }
        if self.spec.done == Some(event.data.as_str()) {
            return self.end_of_answer();
        }
        if let Some(recording) = &mut self.recording {
            recording.bytes += event.raw.len();
            if recording.bytes > recording.max {
                self.recording = None;
            } else {
                recording.events.push(event.raw.clone());
            }
        }
        let Some(chunk) = (self.spec.read_event)(&event.data) else {
            return Some(event.raw);
        };
        if let Some(id) = chunk.response_id {
            self.marks.response_id = Some(match &self.keep {
                // A kept answer goes by the gateway's own id, in every event (`stored`).
                Some(keep) => {
                    self.upstream_id = Some(id);
                    keep.id().to_string()
                }
                None => id,
            });
        }
        let event = self.with_own_id(event);
        let event = match &self.keep {
            // Only the few events that carry the response object are read again.
            Some(keep) if chunk.answer_object => match keep.restate(&event.data) {
                Some(data) => SseEvent {
                    raw: frame(event.name.as_deref(), &data),
                    data,
                    ..event
                },
                None => event,
            },
            _ => event,
        };
        if chunk.sequence.is_some() {
            self.marks.sequence = chunk.sequence;
        }
        if self.keep.is_some() && chunk.answer.is_some() {
            self.answer = chunk.answer;
        }
        // The upstream's own error event goes to the client as it came; the answer failed.
        self.upstream_error |= chunk.error;
        self.finished |= chunk.finished;
        if let Some(facts) = &mut self.facts {
            facts.read(&event.data, chunk.finished);
        }
        self.text.add_tool_text(&chunk.tool_text, self.max_text);
        if !chunk.texts.is_empty() && !self.text.add(chunk.texts, self.max_text) {
            self.text_whole = false;
        }
        if let Some(counts) = chunk.counts.filter(|_| !self.translated) {
            self.counts.update(counts);
            // Only an event that counts the output makes the usage whole: `message_start`'s
            // output is the few tokens written so far.
            if counts.output_tokens.is_some() {
                self.usage = self.counts.usage();
            }
        }
        let Some(usage) = chunk.usage else {
            return Some(event.raw);
        };
        self.usage = Some(usage);
        if chunk.has_choices {
            return Some(event.raw);
        }
        if self.client_wants_usage {
            let data = self.with_cost(&event.data, usage);
            return Some(frame(event.name.as_deref(), &data));
        }
        None
    }

    /// The event with the upstream's response id written as the gateway's, for a kept answer.
    /// The quoted id matches only a JSON string that is the id: inside text a quote is escaped.
    fn with_own_id(&self, event: SseEvent) -> SseEvent {
        let (Some(keep), Some(upstream)) = (&self.keep, &self.upstream_id) else {
            return event;
        };
        let quoted = format!("\"{upstream}\"");
        if upstream == keep.id() || !event.data.contains(&quoted) {
            return event;
        }
        let data = event.data.replace(&quoted, &format!("\"{}\"", keep.id()));
        SseEvent {
            raw: frame(event.name.as_deref(), &data),
            data,
            ..event
        }
    }

    /// `[DONE]`, or a stream closed after its last choice finished: the answer is whole unless the
    /// upstream said otherwise in an error event, and the client gets the terminator it expects,
    /// where its endpoint has one.
    fn end_of_answer(&mut self) -> Option<Bytes> {
        let error_kind = if self.upstream_error {
            self.lease.broke(UPSTREAM_ERROR);
            Some(UPSTREAM_ERROR.to_string())
        } else {
            self.lease.succeeded();
            let usage = match (self.usage, self.upstream.usage_so_far()) {
                (None, Some(UsageSoFar::Whole(usage))) => Some(usage),
                (usage, _) => usage,
            };
            if let (Some(usage), Some(pending)) = (usage, &self.pending) {
                self.lease.served_tokens(
                    &pending.by.tier.name,
                    usage.prompt_tokens + usage.completion_tokens,
                );
            }
            None
        };
        self.phase = Phase::Ended { error_kind };
        self.spec.done.map(|done| frame(None, done))
    }

    /// The usage chunk with `usage.cost_usd` added: the same exact amount the ledger stores.
    fn with_cost(&self, data: &str, usage: Usage) -> String {
        let Some(pending) = &self.pending else {
            return data.to_string();
        };
        let cost = pending
            .exchange
            .price(&pending.by.tier, &Tokens::from(usage))
            .cost;
        let (Some(cost), Ok(mut chunk)) = (cost, serde_json::from_str::<Value>(data)) else {
            return data.to_string();
        };
        if let Some(usage) = chunk.get_mut("usage").and_then(Value::as_object_mut)
            && let Ok(amount) = serde_json::from_str::<Value>(&cost.to_string())
        {
            usage.insert("cost_usd".into(), amount);
        }
        chunk.to_string()
    }

    /// The error event that ends a stream broken after the client saw data.
    fn interrupt(&mut self, reason: String, why: &str) -> Bytes {
        let tier = self
            .pending
            .as_ref()
            .map_or("?", |p| p.by.tier.name.as_str());
        let message = format!("the stream from tier '{tier}' was interrupted: {why}");
        let (name, data) = (self.spec.interrupted)(&self.marks, &message);
        self.phase = Phase::Ended {
            error_kind: Some(reason),
        };
        frame(name, &data)
    }

    /// Ends the request once, with what the stream carried.
    fn end(&mut self, status: u16, error_kind: Option<String>) -> Option<Ended> {
        let Pending {
            exchange,
            by,
            ttfb_us,
        } = self.pending.take()?;
        // Judged only as a whole answer: a broken or cut stream's text is not one.
        let verdict = self
            .contract
            .as_ref()
            .and_then(|route| route.labels.as_deref())
            .filter(|_| status == 200 && error_kind.is_none() && self.text_whole)
            .map(|labels| contract::judge(self.text.each(), labels).as_str());
        // Only a whole answer is kept: a stream cut, broken or abandoned has none to go on from.
        if status == 200
            && error_kind.is_none()
            && let (Some(keep), Some(answer)) = (self.keep.take(), self.answer.take())
        {
            keep.streamed(answer);
        }
        // A translated stream that ended without its usage chunk may still have said what it
        // used (Anthropic's `message_start` gives the input, cache reads and writes exactly).
        let (usage, prompt) = match (self.usage, self.upstream.usage_so_far()) {
            (None, Some(UsageSoFar::Whole(usage))) => (Some(usage), None),
            (None, Some(UsageSoFar::Prompt(prompt))) => (None, Some(prompt)),
            (None, None) => (None, self.counts.prompt()),
            (usage, _) => (usage, None),
        };
        Some(exchange.end(Ending::Streamed {
            by: &by,
            status,
            error_kind,
            usage,
            prompt,
            text: std::mem::take(&mut self.text),
            text_whole: self.text_whole,
            ttfb_us,
            contract: verdict,
            recorded: self.recording.take().map(|recording| recording.events),
            facts: self.facts.take(),
        }))
    }
}

/// Lets the other tasks queued on this thread run once before the caller goes on: the task wakes
/// itself and steps aside, which puts it behind the tasks already woken (tokio's `yield_now`
/// would also wait for the next poll of the I/O driver, a system call).
async fn step_aside() {
    let mut stepped_aside = false;
    std::future::poll_fn(|cx| {
        if stepped_aside {
            return std::task::Poll::Ready(());
        }
        stepped_aside = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        let (status, error_kind) = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Closed => return,
            // Cut off at the end of the shutdown grace: record what was relayed, and why it ended.
            Phase::Relaying if crate::outcome::cut_off() => {
                (499, Some(crate::outcome::CUT_AT_SHUTDOWN.to_string()))
            }
            // The client went away mid-stream (499 in nginx's words): record what was relayed.
            Phase::Relaying => (499, Some(CLIENT_CLOSED.to_string())),
            // The stream had ended; the client left before asking for the end of the body.
            Phase::Ended { error_kind } => (200, error_kind),
        };
        if let Some(ended) = self.end(status, error_kind) {
            ended.deliver_detached();
        }
    }
}

/// A stream the response cache kept, as a client receives it again: each event as it first came,
/// the usage-only chunk only where the client asked for usage (with `cost_usd` 0: a hit costs
/// nothing), then `[DONE]`.
pub(super) fn replay(events: &[Bytes], client_wants_usage: bool) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(events.len() + 1);
    for event in events {
        let usage_only = crate::cache::event_data(event).and_then(|data| {
            let chunk = Chunk::read(&data)?;
            (chunk.usage.is_some() && !chunk.has_choices).then_some(data)
        });
        match usage_only {
            None => frames.push(event.clone()),
            Some(data) if client_wants_usage => {
                let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
                    frames.push(event.clone());
                    continue;
                };
                if let Some(usage) = chunk.get_mut("usage").and_then(Value::as_object_mut) {
                    usage.insert("cost_usd".into(), Value::from(0));
                }
                frames.push(frame(None, &chunk.to_string()));
            }
            Some(_) => {}
        }
    }
    // The cache keeps chat completions only (`cache::fillable`), whose stream ends so.
    frames.push(frame(None, "[DONE]"));
    frames
}

/// An event of tierwise's own making as SSE frames it: its name where it has one, then every line
/// of its data on a `data:` line of its own, then a blank line.
fn frame(name: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use eventsource_stream::Eventsource;
    use futures_util::{FutureExt, StreamExt};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// What the relay frames, an SSE parser reads back as the same event: multi-line data
        /// and event names survive (SSE data holds no carriage returns: they end lines).
        #[test]
        fn framed_events_read_back_unchanged(
            name in proptest::option::of("[a-z_]{1,10}"),
            data in "[^\r]{0,80}",
        ) {
            let name = name.filter(|n| n != "message");
            let framed = frame(name.as_deref(), &data);
            let parsed: Vec<_> = futures_util::stream::iter([Ok::<_, std::io::Error>(framed)])
                .eventsource()
                .collect::<Vec<_>>()
                .now_or_never()
                .unwrap();
            prop_assert_eq!(parsed.len(), 1);
            let read = parsed.into_iter().next().unwrap().unwrap();
            prop_assert_eq!(read.event, name.unwrap_or_else(|| "message".into()));
            prop_assert_eq!(read.data, data);
        }
    }
}
