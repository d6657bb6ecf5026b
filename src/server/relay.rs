//! A stream relayed to the client one event at a time, as it arrives. tierwise always asks the
//! upstream for usage; the usage-only chunk is dropped again here when the client did not ask for it.
//! A stream that breaks after the client has seen data cannot fall back, so it ends with a well-formed
//! SSE error event instead of hanging or stopping mid-line, and the provider's breaker hears of it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::health::Lease;
use crate::upstream::{UpstreamStream, Usage};

const DONE: &str = "[DONE]";

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
    /// Holds the provider's in-flight slot until the stream ends.
    lease: Lease,
    client_wants_usage: bool,
    finished: bool,
    saw_finish_reason: bool,
    /// Where the interruption message names the tier that broke.
    tier: String,
}

impl SseRelay {
    pub fn new(
        upstream: UpstreamStream,
        lease: Lease,
        client_wants_usage: bool,
        tier: &str,
    ) -> SseRelay {
        SseRelay {
            upstream,
            lease,
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
                    self.lease.broke(&err.reason());
                    return Some(self.interrupted(&err.to_string()));
                }
                None => {
                    self.finished = true;
                    // Some servers close without `[DONE]` after the last choice finished; the
                    // answer is whole, so the client gets the terminator it expects.
                    if self.saw_finish_reason {
                        return Some(frame(DONE));
                    }
                    self.lease.broke("stream_broken");
                    return Some(
                        self.interrupted("the stream ended before the answer was complete"),
                    );
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
