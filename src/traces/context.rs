//! The W3C trace context: the `traceparent` (and `tracestate`) a client sends, which makes the
//! request's span its child, and the one each upstream call carries, naming the call's span as the
//! upstream's parent. A malformed `traceparent` is ignored: the request starts a trace of its own.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceId};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The W3C limit on what a `tracestate` may hold; a longer one is not passed on.
const MAX_TRACESTATE: usize = 512;

/// The trace a request is part of, from its start: built only where traces are exported.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The client's span, where it sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// The request's own span (kind SERVER).
    pub span_id: SpanId,
    /// Its spans are exported; otherwise the context is only passed on upstream.
    pub sampled: bool,
    /// Prompts and answers go into its spans (`telemetry.capture_content`).
    pub capture_content: bool,
    /// The client's `tracestate`, passed on as it came.
    state: Option<HeaderValue>,
    pub started: SystemTime,
    /// The `model` the client asked for, once the body is read.
    pub requested_model: String,
}

/// One upstream call's span: its id, and when it started.
#[derive(Debug, Clone, Copy)]
pub struct AttemptTrace {
    pub span_id: SpanId,
    pub started: SystemTime,
}

/// The headers an upstream call carries.
pub struct Propagation {
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
}

impl Propagation {
    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

impl RequestTrace {
    /// The trace of a request that came with `headers`: the client's, where its `traceparent` is
    /// valid (and sampled as it says), else a new one, sampled at `sample_ratio`.
    pub fn begin(headers: &HeaderMap, sample_ratio: f64, capture_content: bool) -> RequestTrace {
        let started = SystemTime::now();
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|value| parse(value.as_bytes()));
        let (trace_id, parent, sampled, state) = match parent {
            Some(parent) => {
                let state = headers
                    .get(TRACESTATE)
                    .filter(|state| state.len() <= MAX_TRACESTATE)
                    .cloned();
                (parent.trace_id, Some(parent.span_id), parent.sampled, state)
            }
            None => {
                let trace_id = TraceId::from(fastrand::u128(1..));
                (trace_id, None, ratio_sampled(trace_id, sample_ratio), None)
            }
        };
        RequestTrace {
            trace_id,
            parent,
            span_id: new_span_id(),
            sampled,
            capture_content,
            state,
            started,
            requested_model: String::new(),
        }
    }

    /// A new upstream call's span, and the headers that make it the upstream's parent.
    pub fn attempt(&self) -> (AttemptTrace, Propagation) {
        let span_id = new_span_id();
        let flags = if self.sampled { "01" } else { "00" };
        let value = format!("00-{}-{}-{flags}", self.trace_id, span_id);
        let propagation = Propagation {
            traceparent: HeaderValue::from_str(&value).expect("hex digits and dashes"),
            tracestate: self.state.clone(),
        };
        let attempt = AttemptTrace {
            span_id,
            started: SystemTime::now(),
        };
        (attempt, propagation)
    }
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// The decision OpenTelemetry's `TraceIdRatioBased` sampler makes, so that every service sampling
/// by ratio keeps the same traces: the trace id's lower 63 bits against the ratio.
fn ratio_sampled(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")) >> 1;
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    low < bound
}

struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// `version-traceid-parentid-flags` as W3C Trace Context level 1 reads it: version `00` is exactly
/// 55 characters; a later version may add fields after a dash; `ff`, all-zero ids and anything
/// not lowercase hex are invalid.
fn parse(value: &[u8]) -> Option<Parent> {
    let value = std::str::from_utf8(value).ok()?;
    let version = value.get(0..2)?;
    let valid_version = lower_hex(version) && version != "ff";
    let length_ok = match version {
        "00" => value.len() == 55,
        _ => value.len() == 55 || (value.len() > 55 && value.as_bytes()[55] == b'-'),
    };
    if !valid_version || !length_ok {
        return None;
    }
    let fields = value.get(2..55)?;
    let (trace, rest) = fields.strip_prefix('-')?.split_at_checked(32)?;
    let (span, rest) = rest.strip_prefix('-')?.split_at_checked(16)?;
    let flags = rest.strip_prefix('-')?;
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags) && flags.len() == 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|id| *id != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|id| *id != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(traceparent: &str) -> RequestTrace {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        RequestTrace::begin(&headers, 1.0, false)
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_makes_the_request_its_child() {
        let trace = with(VALID);
        assert_eq!(
            trace.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            trace.parent,
            Some(SpanId::from_hex("00f067aa0ba902b7").unwrap())
        );
        assert!(trace.sampled);
        let (attempt, propagation) = trace.attempt();
        assert_eq!(
            propagation.traceparent.to_str().unwrap(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", attempt.span_id)
        );
        assert_eq!(propagation.tracestate.unwrap(), "vendor=1");
    }

    #[test]
    fn a_parent_that_did_not_sample_is_followed() {
        let trace = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!trace.sampled);
        assert!(
            trace
                .attempt()
                .1
                .traceparent
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_and_a_trace_begins() {
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let trace = with(bad);
            assert_eq!(trace.parent, None, "{bad:?}");
            assert!(
                trace.state.is_none(),
                "{bad:?}: no tracestate without its parent"
            );
            assert_ne!(trace.trace_id, TraceId::INVALID);
        }
        // A later version may add fields.
        assert!(with(&format!("01{}-more", &VALID[2..])).parent.is_some());
    }

    #[test]
    fn the_ratio_keeps_about_its_share_of_new_traces() {
        let kept = (0..10_000)
            .filter(|_| RequestTrace::begin(&HeaderMap::new(), 0.25, false).sampled)
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
        assert!(!RequestTrace::begin(&HeaderMap::new(), 0.0, false).sampled);
    }
}
