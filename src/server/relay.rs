//! A stream relayed to the client one event at a time, as it arrives. tierwise always asks the
//! upstream for usage; the usage-only chunk is dropped again here when the client did not ask for it,
//! and carries `cost_usd` (the cost the ledger stores) when it did. A stream that breaks after the
//! client has seen data cannot fall back, so it ends with a well-formed SSE error event instead of
//! hanging or stopping mid-line, and the provider's breaker hears of it. When the stream ends — or
//! the client goes away — its record goes to the ledger; where the upstream gave no usage, the
//! ledger writer counts the tokens, off the serving thread.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::proxy::tokens_of;
use crate::config::Tier;
use crate::health::Lease;
use crate::ledger::tokens::{Answer, Uncounted};
use crate::ledger::{Ledger, Picodollars, RequestRecord, ToCount, Tokens};
use crate::route::request::Endpoint;
use crate::upstream::{UpstreamStream, Usage};

const DONE: &str = "[DONE]";

/// What tierwise reads from each chunk: its usage, whether a choice has finished, and the text.
#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    finish_reason: Option<IgnoredAny>,
    delta: Option<DeltaProbe>,
}

#[derive(Deserialize)]
struct DeltaProbe {
    content: Option<String>,
}

/// What the ledger needs to price and record a stream once it has ended.
pub struct StreamAccount {
    pub ledger: Ledger,
    /// The record so far: route, tier, attempts, time to first byte.
    pub record: RequestRecord,
    pub tier: Arc<Tier>,
    pub baseline: Option<Arc<Tier>>,
    /// The client's request body, for counting prompt tokens when the upstream reports none.
    pub request: Bytes,
    pub started: Instant,
}

impl StreamAccount {
    fn price(&self, tokens: &Tokens) -> (Option<Picodollars>, Option<Picodollars>) {
        let pricing = &self.ledger.pricing;
        let cost = pricing.cost(&self.tier, tokens);
        let baseline = self
            .baseline
            .as_ref()
            .and_then(|tier| pricing.cost(tier, tokens));
        (cost, baseline)
    }
}

/// Turns an upstream stream into the SSE frames the client receives.
pub struct SseRelay {
    upstream: UpstreamStream,
    /// Holds the provider's in-flight slot until the stream ends.
    lease: Lease,
    client_wants_usage: bool,
    finished: bool,
    saw_finish_reason: bool,
    usage: Option<Usage>,
    /// The answer's text, for counting output tokens when the upstream reports none.
    text: String,
    interrupted: Option<String>,
    account: Option<StreamAccount>,
}

impl SseRelay {
    pub fn new(
        upstream: UpstreamStream,
        lease: Lease,
        client_wants_usage: bool,
        account: StreamAccount,
    ) -> SseRelay {
        SseRelay {
            upstream,
            lease,
            client_wants_usage,
            finished: false,
            saw_finish_reason: false,
            usage: None,
            text: String::new(),
            interrupted: None,
            account: Some(account),
        }
    }

    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut relay| async move {
            match relay.next_frame().await {
                Some(frame) => Some((Ok(frame), relay)),
                None => {
                    // The client has its last frame; now the ledger gets the record.
                    let ledger = relay.account.as_ref().map(|a| a.ledger.clone());
                    if let (Some(ledger), Some(record)) = (ledger, relay.finish_record(200)) {
                        ledger.record(record).await;
                    }
                    None
                }
            }
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
                    self.lease.broke(&err.reason());
                    return Some(self.interrupt(&err.reason(), &err.to_string()));
                }
                None => {
                    // Some servers close without `[DONE]` after the last choice finished; the
                    // answer is whole, so the client gets the terminator it expects.
                    if self.saw_finish_reason {
                        self.finished = true;
                        return Some(frame(DONE));
                    }
                    self.lease.broke("stream_broken");
                    return Some(self.interrupt(
                        "stream_broken",
                        "the stream ended before the answer was complete",
                    ));
                }
            };
            if data == DONE {
                self.finished = true;
                return Some(frame(DONE));
            }
            let Ok(probe) = serde_json::from_str::<ChunkProbe>(&data) else {
                return Some(frame(&data));
            };
            for choice in &probe.choices {
                self.saw_finish_reason |= choice.finish_reason.is_some();
                if let Some(content) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    self.text.push_str(content);
                }
            }
            let Some(usage) = probe.usage else {
                return Some(frame(&data));
            };
            self.usage = Some(usage);
            if !probe.choices.is_empty() {
                return Some(frame(&data));
            }
            if !self.client_wants_usage {
                continue;
            }
            return Some(frame(&self.with_cost(&data, &usage)));
        }
    }

    /// The usage chunk with `usage.cost_usd` added: the same exact amount the ledger stores.
    fn with_cost(&self, data: &str, usage: &Usage) -> String {
        let Some(account) = &self.account else {
            return data.to_string();
        };
        let (Some(cost), Ok(mut chunk)) = (
            account.price(&tokens_of(usage)).0,
            serde_json::from_str::<Value>(data),
        ) else {
            return data.to_string();
        };
        if let Some(usage) = chunk.get_mut("usage").and_then(Value::as_object_mut)
            && let Ok(amount) = serde_json::from_str::<Value>(&cost.to_string())
        {
            usage.insert("cost_usd".into(), amount);
        }
        chunk.to_string()
    }

    fn interrupt(&mut self, reason: &str, why: &str) -> Bytes {
        self.finished = true;
        self.interrupted = Some(reason.to_string());
        let tier = self.account.as_ref().map_or("?", |a| a.tier.name.as_str());
        let error = serde_json::json!({
            "error": {
                "message": format!("the stream from tier '{tier}' was interrupted: {why}"),
                "type": "upstream_error",
                "param": null,
                "code": "stream_interrupted",
            }
        });
        frame(&error.to_string())
    }

    /// Completes the record once: tokens and cost from the upstream's usage (or, without usage,
    /// left for the ledger writer to count), outcome.
    fn finish_record(&mut self, status: u16) -> Option<RequestRecord> {
        let account = self.account.take()?;
        let text = std::mem::take(&mut self.text);
        let store_content = account.ledger.store_content;
        let latency_us = account.started.elapsed().as_micros() as i64;
        let mut record = match &self.usage {
            Some(usage) => {
                let tokens = tokens_of(usage);
                let (cost, baseline) = account.price(&tokens);
                let mut record = account.record;
                record.tokens = tokens;
                record.cost = cost;
                record.baseline = baseline;
                record.answer = store_content.then_some(text);
                record
            }
            None => {
                let mut record = account.record;
                record.answer = store_content.then(|| text.clone());
                record.to_count = Some(ToCount {
                    uncounted: Uncounted {
                        endpoint: Endpoint::ChatCompletions,
                        model: account.tier.model.clone(),
                        request: account.request,
                        answer: Answer::Text(text),
                    },
                    tier: account.tier,
                    baseline: account.baseline,
                });
                record
            }
        };
        record.status = status;
        record.latency_us = latency_us;
        record.error_kind = self.interrupted.clone();
        Some(record)
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        let Some(ledger) = self.account.as_ref().map(|a| a.ledger.clone()) else {
            return;
        };
        // The client went away mid-stream (499 in nginx's words): record what was relayed.
        let status = if self.finished { 200 } else { 499 };
        if let Some(mut record) = self.finish_record(status) {
            if !self.finished {
                record.error_kind = Some("client_closed".into());
            }
            ledger.record_detached(record);
        }
    }
}

fn frame(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}
