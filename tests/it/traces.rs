//! Traces over OTLP: a real receiver in the test (HTTP/protobuf, decoded with the OpenTelemetry
//! protos) sees each request's span and its calls' spans with the GenAI attributes; the client's
//! `traceparent` makes the request its child and reaches the upstream; a collector that is down
//! costs spans (counted), not requests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use tierwise::config::file::text;
use tierwise_fake::{FakeUpstream, Fault, unused_addr, wait_until};

use crate::util::*;

/// An OTLP/HTTP receiver: every span it was sent, with its resource's `service.name`, and the
/// `authorization` header of the exports.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (kept, seen) = (spans.clone(), auth.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |headers: http::HeaderMap, body: Bytes| {
                let (kept, seen) = (kept.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(
                        headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| string(kv.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            spans,
            auth,
            task,
        }
    }

    /// The spans of request `id` (its span and its calls'), once all `count` have arrived.
    async fn trace_of(&self, id: &str, count: usize) -> Trace {
        let mut trace = Trace::default();
        wait_until(
            &format!("{count} spans of request {id}"),
            Duration::from_secs(10),
            || {
                let spans = self.spans.lock().unwrap();
                let Some((service, request)) = spans
                    .iter()
                    .find(|(_, span)| attr(span, "tierwise.request_id") == Some(json!(id)))
                else {
                    return false;
                };
                let calls: Vec<Span> = spans
                    .iter()
                    .filter(|(_, span)| span.parent_span_id == request.span_id)
                    .map(|(_, span)| span.clone())
                    .collect();
                trace = Trace {
                    service: service.clone(),
                    request: Some(request.clone()),
                    calls,
                };
                1 + trace.calls.len() >= count
            },
        )
        .await;
        trace.calls.sort_by_key(|span| span.start_time_unix_nano);
        trace
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Trace {
    service: String,
    request: Option<Span>,
    calls: Vec<Span>,
}

impl Trace {
    fn request(&self) -> &Span {
        self.request.as_ref().unwrap()
    }
}

fn string(value: &Any) -> Option<String> {
    match value {
        Any::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

/// An attribute's value as JSON, for comparing.
fn attr(span: &Span, key: &str) -> Option<serde_json::Value> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Any::StringValue(text) => json!(text),
        Any::IntValue(n) => json!(n),
        Any::DoubleValue(x) => json!(x),
        Any::BoolValue(b) => json!(b),
        Any::ArrayValue(array) => array
            .values
            .iter()
            .filter_map(|v| v.value.as_ref().and_then(string))
            .collect(),
        other => json!(format!("{other:?}")),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Two fakes and a gateway exporting to `endpoint` with a bearer token.
async fn setup(endpoint: &str) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        c.provider("vllm").health.enabled = Some(false);
        c.provider("openai").health.enabled = Some(false);
        let telemetry = &mut c.0.telemetry;
        telemetry.otlp_endpoint = Some(text(endpoint));
        telemetry.service_name = Some(text("gateway-under-test"));
        telemetry.otlp_headers =
            Some([(text("Authorization"), text("Bearer collector-token"))].into());
    });
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

fn id_of(answer: &Answer) -> String {
    answer.header("x-tierwise-request-id").unwrap().to_string()
}

#[tokio::test]
async fn a_request_is_a_server_span_with_a_client_span_for_its_call() {
    let receiver = Receiver::start().await;
    let (local, api, gw) = setup(&receiver.url).await;
    let answer = gw.ask("summarize").await;
    answer.assert_served_by_first("local");
    let trace = receiver.trace_of(&id_of(&answer), 2).await;
    assert_eq!(trace.service, "gateway-under-test");
    assert_eq!(
        receiver.auth.lock().unwrap()[0].as_deref(),
        Some("Bearer collector-token")
    );

    let request = trace.request();
    assert_eq!(request.name, "chat summarize");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert!(request.parent_span_id.is_empty(), "no parent was sent");
    for (key, value) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.request.model", json!("summarize")),
        ("gen_ai.provider.name", json!("vllm")),
        ("gen_ai.response.model", answer.body["model"].clone()),
        ("gen_ai.response.id", answer.body["id"].clone()),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        (
            "gen_ai.usage.input_tokens",
            answer.body["usage"]["prompt_tokens"].clone(),
        ),
        (
            "gen_ai.usage.output_tokens",
            answer.body["usage"]["completion_tokens"].clone(),
        ),
        ("tierwise.route", json!("summarize")),
        ("tierwise.tier", json!("local")),
        // The route keeps no answers: its cache was not read, said as the header says it.
        ("tierwise.cache", json!("bypass")),
    ] {
        assert_eq!(attr(request, key), Some(value), "{key}");
    }
    assert_eq!(
        attr(request, "tierwise.cost_usd"),
        None,
        "the local tier has no price"
    );
    assert_eq!(attr(request, "error.type"), None);
    assert_eq!(
        attr(request, "gen_ai.input.messages"),
        None,
        "content is off by default"
    );

    let [call] = &trace.calls[..] else {
        panic!("one call: {:?}", trace.calls)
    };
    assert_eq!(call.name, "chat mistral-7b");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.trace_id, request.trace_id);
    assert_eq!(
        attr(call, "gen_ai.request.model"),
        Some(json!("mistral-7b"))
    );
    assert_eq!(attr(call, "server.address"), Some(json!("127.0.0.1")));
    assert_eq!(attr(call, "server.port"), Some(json!(local.addr.port())));
    assert!(call.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= request.end_time_unix_nano);

    // The upstream was told its parent is the call's span.
    let sent = local.requests()[0].traceparent.clone();
    assert_eq!(
        sent,
        Some(format!(
            "00-{}-{}-01",
            hex(&request.trace_id),
            hex(&call.span_id)
        ))
    );
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_clients_traceparent_is_the_parent_and_reaches_the_upstream() {
    let receiver = Receiver::start().await;
    let (local, api, gw) = setup(&receiver.url).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&chat("summarize", "x"))
        .send()
        .await
        .unwrap();
    let answer = Answer::of(response).await;
    answer.assert_served_by_first("local");
    let trace = receiver.trace_of(&id_of(&answer), 2).await;
    let request = trace.request();
    assert_eq!(hex(&request.trace_id), client_trace);
    assert_eq!(hex(&request.parent_span_id), client_span);
    let sent = &local.requests()[0];
    assert_eq!(
        sent.traceparent,
        Some(format!(
            "00-{client_trace}-{}-01",
            hex(&trace.calls[0].span_id)
        ))
    );
    assert_eq!(sent.tracestate.as_deref(), Some("vendor=opaque"));

    // A malformed traceparent is no error: the request starts a trace of its own.
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", "00-not-a-trace-01")
        .json(&chat("summarize", "x"))
        .send()
        .await
        .unwrap();
    let answer = Answer::of(response).await;
    answer.assert_served_by_first("local");
    let trace = receiver.trace_of(&id_of(&answer), 2).await;
    assert!(trace.request().parent_span_id.is_empty());
    assert_ne!(hex(&trace.request().trace_id), client_trace);
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_streams_spans_end_when_the_stream_ends() {
    let receiver = Receiver::start().await;
    let (local, api, gw) = setup(&receiver.url).await;
    local.update(|b| {
        b.reply = "one two three four five".into();
        b.chunk_delay_ms = 50;
    });
    let response = gw
        .post("/v1/chat/completions", &chat_stream("summarize"))
        .await;
    let first_byte = SystemTime::now();
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.text.contains("[DONE]"));
    let trace = receiver.trace_of(&id_of(&answer), 2).await;
    // Five words, 50 ms apart: the last chunk left at least 200 ms after the first.
    let last_chunk = unix_nanos(first_byte) + 190_000_000;
    let request = trace.request();
    assert!(
        request.end_time_unix_nano >= last_chunk,
        "the request span ends after the last chunk"
    );
    assert!(
        trace.calls[0].end_time_unix_nano >= last_chunk,
        "the streamed call's span ends after the last chunk, not at its first"
    );
    assert_eq!(attr(request, "tierwise.stream"), Some(json!(true)));
    assert_eq!(attr(request, "tierwise.tier"), Some(json!("local")));
    assert!(attr(request, "gen_ai.usage.output_tokens").is_some());
    // What the stream's events said of the answer, on the request's span and the call's.
    for span in [request, &trace.calls[0]] {
        assert_eq!(
            attr(span, "gen_ai.response.id"),
            Some(json!("chatcmpl-fake"))
        );
        assert_eq!(
            attr(span, "gen_ai.response.model"),
            attr(&trace.calls[0], "gen_ai.request.model")
        );
        assert_eq!(
            attr(span, "gen_ai.response.finish_reasons"),
            Some(json!(["stop"]))
        );
    }
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_fallback_is_two_call_spans_the_first_failed() {
    let receiver = Receiver::start().await;
    let (local, api, gw) = setup(&receiver.url).await;
    local.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    let trace = receiver.trace_of(&id_of(&answer), 3).await;
    let [failed, served] = &trace.calls[..] else {
        panic!("two calls: {:?}", trace.calls)
    };
    assert_eq!(attr(failed, "tierwise.tier"), Some(json!("local")));
    assert!(attr(failed, "error.type").is_some(), "{failed:?}");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(2),
        "status error"
    );
    assert_eq!(attr(served, "tierwise.tier"), Some(json!("api_fast")));
    assert_eq!(attr(served, "error.type"), None);
    assert_eq!(attr(served, "server.port"), Some(json!(api.addr.port())));
    let request = trace.request();
    assert_eq!(attr(request, "tierwise.tier"), Some(json!("api_fast")));
    assert_eq!(
        attr(request, "tierwise.fallback_reason"),
        answer.header("x-tierwise-fallback").map(|f| json!(f))
    );
    assert_eq!(
        attr(request, "error.type"),
        None,
        "the request was answered"
    );
    let cost: f64 = answer
        .header("x-tierwise-cost-usd")
        .unwrap()
        .parse()
        .unwrap();
    let traced = attr(request, "tierwise.cost_usd")
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        cost > 0.0 && (traced - cost).abs() < 1e-12,
        "{traced} vs {cost}"
    );
    // Each call carried its own span as the upstream's parent.
    let parent = |fake: &FakeUpstream| fake.requests()[0].traceparent.clone().unwrap();
    assert!(parent(&local).contains(&hex(&failed.span_id)));
    assert!(parent(&api).contains(&hex(&served.span_id)));
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn content_is_in_the_spans_only_when_configured() {
    let receiver = Receiver::start().await;
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        c.provider("vllm").health.enabled = Some(false);
        c.0.telemetry.otlp_endpoint = Some(text(&receiver.url));
        c.0.telemetry.capture_content = Some(true);
    });
    let gw = TestGateway::start(&config).await;
    let answer = gw
        .post(
            "/v1/chat/completions",
            &chat("summarize", "the secret prompt"),
        )
        .await;
    let answer = Answer::of(answer).await;
    let trace = receiver.trace_of(&id_of(&answer), 2).await;
    let input: serde_json::Value = serde_json::from_str(
        attr(trace.request(), "gen_ai.input.messages")
            .unwrap()
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        input,
        json!([{"role": "user", "parts": [{"type": "text", "content": "the secret prompt"}]}])
    );
    let output: serde_json::Value = serde_json::from_str(
        attr(trace.request(), "gen_ai.output.messages")
            .unwrap()
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        output[0]["parts"][0]["content"],
        answer.body["choices"][0]["message"]["content"]
    );
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

/// The dropped-span counter's value for `reason`, 0 before its first drop.
fn dropped(metrics: &str, reason: &str) -> f64 {
    let series = format!("tierwise_trace_spans_dropped_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let down = unused_addr().await;
    let (local, api, gw) = setup(&format!("http://{down}")).await;
    let before = dropped(&gw.metrics().await, "export_failed");
    for _ in 0..3 {
        gw.ask("summarize").await.assert_served_by_first("local");
    }
    gw.wait_for_metrics(|m| dropped(m, "export_failed") >= before + 6.0)
        .await;
    // Shutdown is not held up by the spans it cannot send.
    let started = std::time::Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(8));
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_or_passed_on() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .with(|c| c.provider("vllm").health.enabled = Some(false));
    let gw = TestGateway::start(&config).await;
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&chat("summarize", "x"))
        .send()
        .await
        .unwrap();
    Answer::of(response).await.assert_served_by_first("local");
    assert_eq!(local.requests()[0].traceparent, None);
    gw.shutdown().await;
    local.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_request_cut_at_shutdown_is_a_span_too() {
    let receiver = Receiver::start().await;
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        c.provider("vllm").health.enabled = Some(false);
        c.provider("openai").health.enabled = Some(false);
        c.0.telemetry.otlp_endpoint = Some(text(&receiver.url));
        c.0.server.shutdown_grace_ms = Some(300);
    });
    let gw = TestGateway::start(&config).await;
    // The upstream answers long after the grace: the request is cut off at shutdown.
    local.update(|b| b.fault = Fault::SlowFirstByte { ms: 10_000 });
    let asked = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("summarize", "x"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(asked.is_err(), "the client was meant to give up");
    wait_until("the upstream call", Duration::from_secs(5), || {
        local.request_count() == 1
    })
    .await;
    gw.shutdown().await;
    wait_until("the cut request's span", Duration::from_secs(10), || {
        receiver.spans.lock().unwrap().iter().any(|(_, span)| {
            attr(span, "error.type") == Some(json!("cut_at_shutdown"))
                && attr(span, "http.response.status_code") == Some(json!(499))
                && attr(span, "tierwise.tier") == Some(json!("local"))
        })
    })
    .await;
    local.stop().await;
    api.stop().await;
}
