//! A fake OpenAI-compatible upstream (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`) with
//! the faults tests need set as data: down, hanging, slow, 5xx, 429, malformed JSON, a stream cut
//! before or after its first chunk, no usage. The same fake speaks Anthropic's Messages API
//! (`POST /v1/messages`, its stream events, its usage and its error bodies, and
//! `POST /v1/messages/count_tokens`) and Azure OpenAI's
//! deployments (`/openai/deployments/{deployment}/chat/completions` and `…/embeddings`, with
//! `?api-version=…` and an `api-key` header, the first stream chunk carrying only
//! `prompt_filter_results`, Azure's error bodies and content-filter refusal), each as its public
//! API reference documents it; the faults mean the same in every format. Every integration test, the Python SDK tests (through
//! the `tierwise-fake` binary and its `/_fake/*` control endpoints) and the benchmark use this one
//! fake, so what "a fault" means is written down once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// What goes wrong with the next requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    #[default]
    None,
    /// Answer with this status and body (an OpenAI-shaped error when `body` is absent).
    Status {
        status: u16,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Wait this long before sending anything.
    SlowFirstByte { ms: u64 },
    /// 200 with a body that is not JSON (for streams: a first event that is not JSON).
    MalformedJson,
    /// Non-streamed answers: send the headers and half the body, then break the connection, as a
    /// server killed mid-answer does.
    CutMidBody,
    /// Streams: send the headers, then close without any event.
    CutBeforeFirstChunk,
    /// Streams: send this many chunks, then close without `[DONE]`.
    CutAfterChunks { chunks: usize },
    /// Streams: every chunk's JSON pretty-printed over several `data:` lines, and a named
    /// `event: ping` after the first chunk — legal SSE that a relay must not mangle.
    SseQuirks,
    /// Streams: after the first chunk, one more event with an `id:` line, a comment and CRLF line
    /// endings ([`SSE_EXTRAS_EVENT`]), as some servers write them; a relay passing the upstream's
    /// bytes through delivers it byte for byte.
    SseExtras,
    /// Streams: this many chunks, then an `{"error": …}` event, then `[DONE]`.
    ErrorMidStream { after: usize },
    /// Streams: every chunk, the last choice finished, then the connection closed without
    /// `[DONE]`, as some servers end a stream.
    NoDone,
    /// Streams: this many chunks, then an event whose bytes are not UTF-8, then the rest as usual.
    InvalidUtf8MidStream { after: usize },
    /// Streams: this many chunks, then one chunk whose text is `bytes` letters, then the rest.
    HugeEvent { after: usize, bytes: usize },
    /// Streams: this many chunks, then a comment (`: keep-alive`) every `every_ms`, `count` of
    /// them (without end when absent), then the rest, as providers send heartbeats while a model
    /// thinks. Anthropic's format: a `ping` event in place of each comment, as its API sends them.
    Heartbeats {
        after: usize,
        every_ms: u64,
        #[serde(default)]
        count: Option<u64>,
    },
    /// Answer without `usage`, as some local servers do. Anthropic's format: a message whose
    /// usage has no `output_tokens`, a stream whose `message_delta` has no usage.
    NoUsage,
    /// Usage with `null` where numbers and objects belong, and fields OpenAI does not send, as some
    /// servers' usage blocks have.
    UsageWithNulls,
    /// Azure: the prompt is refused by the content filter (400, `content_filter`); elsewhere a 400.
    ContentFilter,
}

/// The event [`Fault::SseExtras`] adds: a chunk that adds no text, with an id and a comment.
pub const SSE_EXTRAS_EVENT: &[u8] =
    b"id: 7\r\n: the fake's comment\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{}}]}\r\n\r\n";

/// How the fake answers: the fault, the text, the usage it reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Behavior {
    pub fault: Fault,
    /// The assistant's answer; streams send it word by word.
    pub reply: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Input read from the prompt cache, counted in `prompt_tokens` (Anthropic's
    /// `cache_read_input_tokens`, which its `input_tokens` leaves out).
    pub cached_tokens: u64,
    /// Input written to the prompt cache, counted in `prompt_tokens` (Anthropic's
    /// `cache_creation_input_tokens`; OpenAI's format has none).
    pub cache_write_tokens: u64,
    /// The answer calls these tools (after `reply`, where it is not empty).
    pub tool_calls: Vec<FakeToolCall>,
    /// Chat streams: the tool calls' argument fragments interleaved (every call's first half,
    /// then every call's second half), as some servers stream parallel calls.
    pub interleave_tool_calls: bool,
    /// Anthropic's streams: `message_delta`'s usage as given, in place of the output count alone
    /// (newer servers repeat the input there, some with the cache's figures left out or null).
    pub message_delta_usage: Option<Value>,
    /// Pause between stream chunks.
    pub chunk_delay_ms: u64,
    /// A stream reports no usage even when asked to, as servers that ignore `stream_options` do.
    pub stream_without_usage: bool,
    /// Responses: a server that keeps no promise — it says `store: true` whatever it was told,
    /// and names the response anew in each event that carries it (`resp_fake_0`, `resp_fake_1`…).
    pub responses_unruly: bool,
    /// Responses: a stream that never says `response.created` (nor `response.in_progress`).
    pub responses_without_created: bool,
    /// Model ids listed by `/v1/models`.
    pub models: Vec<String>,
    /// When set, the fault applies to this many more chat/embedding requests, then clears.
    pub fault_for: Option<u32>,
    /// When set, the fault applies only to requests for this model (rate limits are per model).
    pub fault_model: Option<String>,
    /// A classifier of known accuracy: a last user message holding `[[label]]` is answered with
    /// that label for this share of messages (chosen by a hash of the message, so the same
    /// message always gets the same answer) and with another label for the rest.
    pub label_accuracy: Option<f64>,
    /// Accuracy by prompt: a request whose system message contains one of these texts is
    /// classified with its accuracy instead of `label_accuracy`.
    pub prompt_accuracy: Vec<(String, f64)>,
    /// Listed with each model by `/v1/models`, as vLLM does.
    pub max_model_len: Option<u32>,
    /// Served as Ollama's `POST /api/show` does: the model's trained window in `model_info`
    /// (`llama.context_length`) and, when set, the served `num_ctx` in `parameters`.
    pub ollama_show: Option<OllamaShow>,
    /// Served as llama.cpp's `GET /props` does (`default_generation_settings.n_ctx`), and listed
    /// with each model's `meta.n_ctx` as its `/v1/models` does.
    pub llama_cpp_n_ctx: Option<u32>,
    /// Embedding models: a chat request for one is refused with a 400, as Ollama refuses it
    /// ("does not support chat"); embeddings for it are answered.
    pub embedding_models: Vec<String>,
    /// The answers of choices 1, 2, … of a request for `n` > 1 choices (choice 0 answers
    /// `reply`, as does a choice past the list); streams interleave the choices' chunks word by
    /// word, as OpenAI does.
    pub more_replies: Vec<String>,
    /// What `GET /metrics` (at the host root) answers: vLLM's Prometheus metrics, or not.
    pub metrics: FakeMetrics,
}

/// What the fake's `GET /metrics` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum FakeMetrics {
    /// 404, as a server without Prometheus metrics (Ollama, llama.cpp without `--metrics`).
    #[default]
    NotServed,
    /// vLLM's text exposition of its scheduler gauges, as vLLM 0.10+ writes them (with the
    /// `engine` and `model_name` labels, the current `kv_cache_usage_perc` and the deprecated
    /// `gpu_cache_usage_perc` beside it), among histograms the reader must skip.
    Vllm {
        running: u32,
        waiting: u32,
        kv_cache_usage: f64,
    },
    /// 200 with a body that is no Prometheus text.
    Garbage,
    /// Accept the request and never answer.
    Hang,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FakeToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object, as OpenAI's `arguments` string.
    pub arguments: String,
}

/// What the fake's `/api/show` says of every model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OllamaShow {
    pub context_length: u32,
    pub num_ctx: Option<u32>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            fault: Fault::None,
            reply: "Hello from the fake upstream.".to_string(),
            prompt_tokens: 20,
            completion_tokens: 5,
            cached_tokens: 0,
            cache_write_tokens: 0,
            tool_calls: Vec::new(),
            interleave_tool_calls: false,
            message_delta_usage: None,
            chunk_delay_ms: 0,
            stream_without_usage: false,
            responses_unruly: false,
            responses_without_created: false,
            models: vec!["fake-model".to_string()],
            fault_for: None,
            fault_model: None,
            label_accuracy: None,
            prompt_accuracy: Vec::new(),
            max_model_len: None,
            ollama_show: None,
            llama_cpp_n_ctx: None,
            embedding_models: Vec::new(),
            more_replies: Vec::new(),
            metrics: FakeMetrics::NotServed,
        }
    }
}

/// The labels the fake classifier knows, in the order it picks a wrong one from.
const LABELS: [&str; 3] = ["billing", "technical", "general"];

/// The fake classifier's answer to `body`'s last user message, when it holds `[[label]]`.
fn classified(body: &[u8], behavior: &Behavior) -> Option<String> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let system = request["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let accuracy = behavior
        .prompt_accuracy
        .iter()
        .find(|(marker, _)| system.contains(marker.as_str()))
        .map(|(_, accuracy)| *accuracy)
        .or(behavior.label_accuracy)?;
    let text = request["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?["content"]
        .as_str()?
        .to_string();
    let (_, rest) = text.split_once("[[")?;
    let (label, _) = rest.split_once("]]")?;
    // FNV-1a: the same message, the same verdict, run after run.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    if (hash % 10_000) as f64 / 10_000.0 < accuracy {
        return Some(label.to_string());
    }
    let at = LABELS.iter().position(|l| *l == label).unwrap_or(0);
    Some(LABELS[(at + 1) % LABELS.len()].to_string())
}

/// One request as the fake received it.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub path: String,
    /// The query string, where there was one (Azure's `api-version=…`).
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// Anthropic's `x-api-key` and `anthropic-version`, Azure's `api-key`, where sent.
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    /// Every `anthropic-beta` header's value, as received (repeated headers apart).
    pub anthropic_beta: Vec<String>,
    pub api_key: Option<String>,
    /// The W3C trace context the gateway passed on.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub body: Value,
}

struct Shared {
    /// Read on every request, written only by tests: an `Arc` swapped under a read-mostly lock.
    behavior: RwLock<Arc<Behavior>>,
    /// Off in the benchmark, where keeping every request would be the fake's own bottleneck.
    record: AtomicBool,
    requests: Mutex<Vec<Recorded>>,
    /// `GET /v1/models` calls (health probes, `tierwise check`), kept apart from the work requests.
    listings: Mutex<Vec<Recorded>>,
    /// Streams wait here, after the given number of chunks, while a test holds them.
    gate: Mutex<Option<(Arc<Semaphore>, usize)>>,
}

/// A running fake upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> FakeUpstream {
        FakeUpstream::start_on("127.0.0.1:0".parse().expect("a literal address")).await
    }

    /// Starts on `addr`, e.g. the address of a fake that was stopped, to play a restarted server.
    pub async fn start_on(addr: SocketAddr) -> FakeUpstream {
        let listener = bind_retrying(addr).await;
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            behavior: RwLock::new(Arc::new(Behavior::default())),
            record: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            listings: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            // Like any real server on this host, no Nagle delay on small SSE chunks.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            let _ = server.await;
        });
        FakeUpstream {
            addr,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.update(|behavior| behavior.fault = fault);
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        *self.shared.behavior.write().unwrap() = Arc::new(behavior);
    }

    pub fn update(&self, change: impl FnOnce(&mut Behavior)) {
        let mut behavior = self.shared.behavior.write().unwrap();
        change(Arc::make_mut(&mut behavior));
    }

    /// Whether requests are kept for `requests()`; the benchmark turns it off.
    pub fn set_recording(&self, on: bool) {
        self.shared.record.store(on, Ordering::Relaxed);
    }

    /// Makes streams stop after their first chunk of the answer (the role chunk and the first
    /// word: the gateway holds a role-only chunk until the answer begins) until the returned gate
    /// is opened, so a test can see that the answer reached the client while the upstream had not
    /// finished.
    pub fn hold_streams(&self) -> Gate {
        self.hold_streams_after(2)
    }

    /// Makes streams stop after `chunks` chunks (the first carries only the role; each later one a
    /// word of the reply) until the returned gate is opened.
    pub fn hold_streams_after(&self, chunks: usize) -> Gate {
        let semaphore = Arc::new(Semaphore::new(0));
        *self.shared.gate.lock().unwrap() = Some((semaphore.clone(), chunks));
        Gate(semaphore)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `GET /v1/models` and `GET /health` calls received: health probes and `tierwise check`.
    pub fn listings(&self) -> Vec<Recorded> {
        self.shared.listings.lock().unwrap().clone()
    }

    /// Chat and embedding requests received (model listings are not counted).
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Stops listening and closes every connection: afterwards connections are refused.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Holds streams after their first chunk until opened.
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

/// An address on 127.0.0.1 where nothing listens: a provider that is down. Its port stays bound
/// (but not listening) while this lives, so connections to it are refused and no other test's
/// server, started meanwhile on a free port, can be given it.
pub struct DownAddr {
    pub addr: SocketAddr,
    _held: tokio::net::TcpSocket,
}

impl std::fmt::Display for DownAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub async fn unused_addr() -> DownAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("a literal address"))
        .expect("bind a free port");
    DownAddr {
        addr: socket.local_addr().expect("a bound socket has an address"),
        _held: socket,
    }
}

/// Waits until `condition` holds, polling, or panics with `what` after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    // A port just released by a stopped fake can be briefly busy; a restart must get it back.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) if Instant::now() < until && addr.port() != 0 => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("fake upstream cannot bind {addr}: {err}"),
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/messages/count_tokens", post(anthropic_count_tokens))
        .route("/v1/responses", post(responses))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(azure_embeddings),
        )
        .route("/openai/models", get(models))
        .route("/health", get(health))
        .route("/api/show", post(ollama_show))
        .route("/props", get(llama_cpp_props))
        .route("/metrics", get(prometheus_metrics))
        .route("/_fake/behavior", post(set_behavior).get(get_behavior))
        .route("/_fake/requests", get(list_requests))
        .with_state(shared)
}

/// The behavior for one work request for `model`, counting down `fault_for`.
fn behavior_for_request(shared: &Shared, model: Option<&str>) -> Arc<Behavior> {
    let current = shared.behavior.read().unwrap().clone();
    if current
        .fault_model
        .as_deref()
        .is_some_and(|only| Some(only) != model)
    {
        let mut healthy = (*current).clone();
        healthy.fault = Fault::None;
        return Arc::new(healthy);
    }
    if current.fault_for.is_none() {
        return current;
    }
    let mut behavior = shared.behavior.write().unwrap();
    let current = behavior.clone();
    let next = Arc::make_mut(&mut behavior);
    match next.fault_for {
        Some(left) if left > 1 => next.fault_for = Some(left - 1),
        Some(_) => {
            next.fault = Fault::None;
            next.fault_for = None;
        }
        None => {}
    }
    current
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &[u8]) {
    record_query(shared, path, None, headers, body);
}

fn record_query(
    shared: &Shared,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) {
    if !shared.record.load(Ordering::Relaxed) {
        return;
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // What a server is asked about itself, not work: kept apart from the work requests.
    let log = if matches!(
        path,
        "/v1/models" | "/health" | "/api/show" | "/props" | "/metrics"
    ) {
        &shared.listings
    } else {
        &shared.requests
    };
    log.lock().unwrap().push(Recorded {
        path: path.to_string(),
        query,
        authorization: get("authorization"),
        x_api_key: get("x-api-key"),
        anthropic_version: get("anthropic-version"),
        anthropic_beta: headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_string)
            .collect(),
        api_key: get("api-key"),
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
        body,
    });
}

/// The API a request came in on, which decides the shape of its answers and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Azure,
    Anthropic,
}

/// An error body as each API writes one.
fn error_body(format: Format, status: StatusCode) -> String {
    let message = format!("fake upstream fault: HTTP {}", status.as_u16());
    match format {
        Format::OpenAi => json!({"error": {"message": message, "type": "fake_error", "param": null, "code": null}}),
        // Azure's own errors carry a code and a message, the code often the status itself.
        Format::Azure => json!({"error": {"code": status.as_u16().to_string(), "message": message}}),
        Format::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"})
        }
    }
    .to_string()
}

/// Azure's answer to a prompt its content filter refuses, as its documentation shows it.
const AZURE_CONTENT_FILTER: &str = r#"{"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.", "type": null, "param": "prompt", "code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": false, "severity": "safe"}, "self_harm": {"filtered": false, "severity": "safe"}, "sexual": {"filtered": false, "severity": "safe"}, "violence": {"filtered": true, "severity": "high"}}}}}"#;

/// Applies the faults that happen before any answer; `Some` is the answer to send instead.
async fn before_answer(fault: &Fault) -> Option<Response> {
    before_answer_in(Format::OpenAi, fault).await
}

async fn before_answer_in(format: Format, fault: &Fault) -> Option<Response> {
    match fault {
        Fault::ContentFilter => {
            let body = match format {
                Format::Azure => AZURE_CONTENT_FILTER.to_string(),
                _ => error_body(format, StatusCode::BAD_REQUEST),
            };
            let mut response = (StatusCode::BAD_REQUEST, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            Some(response)
        }
        Fault::Status {
            status,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = body.clone().unwrap_or_else(|| error_body(format, status));
            let mut response = (status, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, (*secs).into());
            }
            Some(response)
        }
        Fault::Hang => {
            std::future::pending::<()>().await;
            None
        }
        Fault::SlowFirstByte { ms } => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            None
        }
        _ => None,
    }
}

/// The fields of a request the fake answers from; the rest is skipped unparsed.
#[derive(Deserialize)]
struct Probe {
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    input: Option<EmbeddingInput>,
    encoding_format: Option<String>,
    /// How many choices a chat request asks for.
    n: Option<usize>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    Many(Vec<serde::de::IgnoredAny>),
    One(serde::de::IgnoredAny),
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_in(
        Format::OpenAi,
        &shared,
        "/v1/chat/completions",
        None,
        &headers,
        body,
    )
    .await
}

/// Azure OpenAI's chat completions: OpenAI's body at a deployment's URL, with its API version in
/// the query, which Azure requires.
async fn azure_chat(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(deployment): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/openai/deployments/{deployment}/chat/completions");
    if !query.as_deref().unwrap_or("").contains("api-version=") {
        record_query(&shared, &path, query, &headers, &body);
        let missing = json!({"error": {"code": "404", "message": "Resource not found"}});
        return (StatusCode::NOT_FOUND, Json(missing)).into_response();
    }
    // Versions before 2024-09-01(-preview) do not know `stream_options`, and say so.
    let version = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("api-version=")))
        .unwrap_or("");
    if version.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && version < "2024-09-01"
        && serde_json::from_slice::<Value>(&body).is_ok_and(|b| b.get("stream_options").is_some())
    {
        record_query(&shared, &path, query, &headers, &body);
        let refused = json!({"error": {"code": null, "message": "Unrecognized request argument supplied: stream_options", "param": null, "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, Json(refused)).into_response();
    }
    chat_in(Format::Azure, &shared, &path, query, &headers, body).await
}

async fn chat_in(
    format: Format,
    shared: &Arc<Shared>,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Probe>(&body) else {
        return (StatusCode::BAD_REQUEST, "fake upstream: body is not JSON").into_response();
    };
    record_query(shared, path, query, headers, &body);
    let behavior = behavior_for_request(shared, request.model.as_deref());
    if let Some(response) = before_answer_in(format, &behavior.fault).await {
        return response;
    }
    let model = request.model.unwrap_or_else(|| "fake-model".into());
    if behavior.embedding_models.contains(&model) {
        let message = format!("\"{model}\" does not support chat");
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": message, "type": "api_error"}})),
        )
            .into_response();
    }
    let classified = classified(&body, &behavior);
    let behavior = match classified {
        Some(label) => {
            let mut answered = (*behavior).clone();
            answered.reply = label;
            Arc::new(answered)
        }
        None => behavior,
    };
    let usage = (behavior.fault != Fault::NoUsage).then(|| usage_json(&behavior));
    let replies: Vec<&str> = (0..request.n.unwrap_or(1).clamp(1, 16))
        .map(|i| {
            i.checked_sub(1)
                .and_then(|more| behavior.more_replies.get(more))
                .unwrap_or(&behavior.reply)
                .as_str()
        })
        .collect();
    if request.stream == Some(true) {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage)
            && !behavior.stream_without_usage;
        let gate = shared.gate.lock().unwrap().clone();
        return stream(
            format,
            &behavior,
            &replies,
            model,
            usage.filter(|_| include_usage),
            gate,
        );
    }
    if behavior.fault == Fault::MalformedJson {
        return json_response(Bytes::from_static(
            b"{\"id\": \"chatcmpl-fake\", \"choices\": [{\"mess",
        ));
    }
    let mut completion = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": replies.iter().enumerate().map(|(index, reply)| {
            let mut message = json!({"role": "assistant", "content": reply});
            if !behavior.tool_calls.is_empty() {
                message["content"] = if reply.is_empty() { Value::Null } else { json!(reply) };
                message["tool_calls"] = behavior.tool_calls.iter().map(|call| json!({
                    "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })).collect();
            }
            json!({
                "index": index,
                "message": message,
                "finish_reason": if behavior.tool_calls.is_empty() { "stop" } else { "tool_calls" },
            })
        }).collect::<Vec<_>>(),
    });
    if let Some(usage) = usage {
        completion["usage"] = usage;
    }
    let body = Bytes::from(completion.to_string());
    if behavior.fault == Fault::CutMidBody {
        return cut_mid_body(body);
    }
    json_response(body)
}

/// Declares the whole body's length, sends half of it, then fails the body: the server closes the
/// connection with the answer cut short.
fn cut_mid_body(body: Bytes) -> Response {
    let half = body.slice(..body.len() / 2);
    let parts: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fake upstream: cut mid-body",
        )),
    ];
    let mut response = Response::new(Body::from_stream(futures_util::stream::iter(parts)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    headers.insert(header::CONTENT_LENGTH, body.len().into());
    response
}

fn usage_json(behavior: &Behavior) -> Value {
    if behavior.fault == Fault::UsageWithNulls {
        return json!({
            "prompt_tokens": behavior.prompt_tokens,
            "completion_tokens": behavior.completion_tokens,
            "total_tokens": null,
            "prompt_tokens_details": {"cached_tokens": null},
            "completion_tokens_details": null,
            "queue_time": 0.01,
        });
    }
    json!({
        "prompt_tokens": behavior.prompt_tokens,
        "completion_tokens": behavior.completion_tokens,
        "total_tokens": behavior.prompt_tokens + behavior.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": behavior.cached_tokens},
    })
}

fn json_response(body: Bytes) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

fn stream(
    format: Format,
    behavior: &Behavior,
    replies: &[&str],
    model: String,
    usage: Option<Value>,
    gate: Option<(Arc<Semaphore>, usize)>,
) -> Response {
    let chunk = |index: usize, delta: Value, finish: Option<&str>| {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    let mut events: Vec<String> = (0..replies.len())
        .map(|index| chunk(index, json!({"role": "assistant", "content": ""}), None))
        .collect();
    let words: Vec<Vec<&str>> = replies
        .iter()
        .map(|reply| reply.split_inclusive(' ').collect())
        .collect();
    let longest = words.iter().map(Vec::len).max().unwrap_or(0);
    for at in 0..longest {
        for (index, words) in words.iter().enumerate() {
            if let Some(word) = words.get(at) {
                events.push(chunk(index, json!({"content": word}), None));
            }
        }
    }
    let halves = |call: &FakeToolCall| {
        let (first, rest) = call.arguments.split_at(call.arguments.len() / 2);
        [first.to_string(), rest.to_string()]
    };
    let fragment = |at: usize, piece: &str| {
        chunk(
            0,
            json!({"tool_calls": [{"index": at, "function": {"arguments": piece}}]}),
            None,
        )
    };
    if behavior.interleave_tool_calls {
        // Every call's start and first half, then every call's second half.
        for (at, call) in behavior.tool_calls.iter().enumerate() {
            events.push(chunk(0, json!({"tool_calls": [{"index": at, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": halves(call)[0]}}]}), None));
        }
        for (at, call) in behavior.tool_calls.iter().enumerate() {
            events.push(fragment(at, &halves(call)[1]));
        }
    } else {
        for (at, call) in behavior.tool_calls.iter().enumerate() {
            events.push(chunk(0, json!({"tool_calls": [{"index": at, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}), None));
            for piece in halves(call) {
                events.push(fragment(at, &piece));
            }
        }
    }
    let finish = if behavior.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    events.extend((0..replies.len()).map(|index| chunk(index, json!({}), Some(finish))));
    if format == Format::Azure {
        // Azure's first chunk carries no choice, only what its filter found in the prompt.
        events.insert(
            0,
            json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}, "self_harm": {"filtered": false, "severity": "safe"}, "sexual": {"filtered": false, "severity": "safe"}, "violence": {"filtered": false, "severity": "safe"}}}]})
                .to_string(),
        );
    }
    if let Some(usage) = usage {
        events.push(
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage})
                .to_string(),
        );
    }
    events.push("[DONE]".to_string());
    match behavior.fault {
        Fault::CutBeforeFirstChunk => events.clear(),
        Fault::CutAfterChunks { chunks } => events.truncate(chunks),
        Fault::NoDone => {
            events.pop();
        }
        Fault::MalformedJson => events.insert(0, "{\"id\": \"chatcmpl-fake\", \"choi".to_string()),
        Fault::HugeEvent { after, bytes } => events.insert(
            after.min(events.len()),
            chunk(0, json!({"content": "a".repeat(bytes)}), None),
        ),
        Fault::ErrorMidStream { after } => {
            events.truncate(after);
            events.push(
                json!({"error": {"message": "fake upstream: the model crashed mid-answer", "type": "server_error", "param": null, "code": null}})
                    .to_string(),
            );
            events.push("[DONE]".to_string());
        }
        _ => {}
    }
    let quirks = behavior.fault == Fault::SseQuirks;
    let mut frames: Vec<Bytes> = events
        .into_iter()
        .map(|event| {
            let data = match serde_json::from_str::<Value>(&event) {
                Ok(value) if quirks => serde_json::to_string_pretty(&value).unwrap(),
                _ => event,
            };
            Bytes::from(
                data.lines()
                    .map(|line| format!("data: {line}\n"))
                    .collect::<String>()
                    + "\n",
            )
        })
        .collect();
    if quirks && frames.len() > 1 {
        frames.insert(1, Bytes::from_static(b"event: ping\ndata: {}\n\n"));
    }
    if behavior.fault == Fault::SseExtras && frames.len() > 1 {
        frames.insert(1, Bytes::from_static(SSE_EXTRAS_EVENT));
    }
    if let Fault::InvalidUtf8MidStream { after } = behavior.fault {
        let at = after.min(frames.len());
        frames.insert(
            at,
            Bytes::from_static(b"data: {\"broken\": \"\xff\xfe\"}\n\n"),
        );
    }
    if let Fault::Heartbeats {
        after,
        every_ms,
        count,
    } = behavior.fault
    {
        let every = Duration::from_millis(every_ms);
        return heartbeats(frames, after, every, count, b": keep-alive\n\n");
    }
    let delay = Duration::from_millis(behavior.chunk_delay_ms);
    let body =
        futures_util::stream::unfold((frames.into_iter(), 0usize), move |(mut rest, sent)| {
            let gate = gate.clone();
            async move {
                let event = rest.next()?;
                if let Some((gate, after)) = &gate
                    && sent == *after
                {
                    let _ = gate.acquire().await.map(|permit| permit.forget());
                }
                if sent > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, std::convert::Infallible>(event), (rest, sent + 1)))
            }
        });
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    response
}

/// `frames` with `count` heartbeats (`beat`; without end when `None`) after the first `after`,
/// one every `every`.
fn heartbeats(
    mut frames: Vec<Bytes>,
    after: usize,
    every: Duration,
    count: Option<u64>,
    beat: &'static [u8],
) -> Response {
    use futures_util::StreamExt;
    let rest = frames.split_off(after.min(frames.len()));
    let beats = futures_util::stream::unfold(0u64, move |sent| async move {
        if count.is_some_and(|count| sent >= count) {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Bytes::from_static(beat), sent + 1))
    });
    let body = futures_util::stream::iter(frames)
        .chain(beats)
        .chain(futures_util::stream::iter(rest))
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    response
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    embeddings_in(
        Format::OpenAi,
        &shared,
        "/v1/embeddings",
        None,
        &headers,
        body,
    )
    .await
}

/// Azure OpenAI's embeddings: OpenAI's body and answer at a deployment's URL, the API version in
/// the query. The deployment decides the model; the body's `model`, where sent, is answered back
/// as Azure does.
async fn azure_embeddings(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(deployment): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/openai/deployments/{deployment}/embeddings");
    if !query.as_deref().unwrap_or("").contains("api-version=") {
        record_query(&shared, &path, query, &headers, &body);
        let missing = json!({"error": {"code": "404", "message": "Resource not found"}});
        return (StatusCode::NOT_FOUND, Json(missing)).into_response();
    }
    embeddings_in(Format::Azure, &shared, &path, query, &headers, body).await
}

async fn embeddings_in(
    format: Format,
    shared: &Arc<Shared>,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Probe>(&body) else {
        return (StatusCode::BAD_REQUEST, "fake upstream: body is not JSON").into_response();
    };
    record_query(shared, path, query, headers, &body);
    let behavior = behavior_for_request(shared, request.model.as_deref());
    if let Some(response) = before_answer_in(format, &behavior.fault).await {
        return response;
    }
    if behavior.fault == Fault::MalformedJson {
        return json_response(Bytes::from_static(b"{\"data\": [{\"embedd"));
    }
    let inputs = match &request.input {
        Some(EmbeddingInput::Many(items)) => items.len(),
        _ => 1,
    };
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|index| {
            let vector = [0.25f32 + index as f32, -0.5, 0.125];
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut answer = json!({
        "object": "list",
        "data": data,
        "model": request.model,
    });
    if behavior.fault != Fault::NoUsage {
        answer["usage"] = json!({"prompt_tokens": behavior.prompt_tokens, "total_tokens": behavior.prompt_tokens});
    }
    json_response(Bytes::from(answer.to_string()))
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "/v1/models", &headers, b"");
    let behavior = shared.behavior.read().unwrap().clone();
    // A fault scoped to one model is not the server's: the listing answers.
    if behavior.fault_model.is_none()
        && let Some(response) = before_answer(&behavior.fault).await
    {
        return response;
    }
    let data: Vec<Value> = behavior
        .models
        .iter()
        .map(|id| {
            let mut model = json!({"id": id, "object": "model", "created": 0, "owned_by": "fake"});
            if let Some(tokens) = behavior.max_model_len {
                model["max_model_len"] = tokens.into();
            }
            // llama-server lists its slot's window too, under `meta`, beside the trained one.
            if let Some(n_ctx) = behavior.llama_cpp_n_ctx {
                model["owned_by"] = "llamacpp".into();
                model["meta"] = json!({"vocab_type": 1, "n_vocab": 32_000, "n_ctx": n_ctx, "n_ctx_train": 32_768, "n_embd": 4096});
            }
            model
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Ollama's model details: 404 unless the behavior sets them, as any other server answers.
async fn ollama_show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, "/api/show", &headers, &body);
    let behavior = shared.behavior.read().unwrap().clone();
    let Some(show) = &behavior.ollama_show else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut parameters = String::from(
        "stop                           \"[INST]\"\ntemperature                    0.8",
    );
    if let Some(num_ctx) = show.num_ctx {
        parameters.push_str(&format!("\nnum_ctx                        {num_ctx}"));
    }
    Json(json!({
        "modelfile": "# Modelfile generated by \"ollama show\"",
        "parameters": parameters,
        "template": "[INST] {{ .Prompt }} [/INST]",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "7.2B", "quantization_level": "Q4_0"},
        "model_info": {
            "general.architecture": "llama",
            "general.parameter_count": 7_248_023_552u64,
            "llama.context_length": show.context_length,
            "llama.embedding_length": 4096,
        },
        "capabilities": ["completion", "tools"],
    }))
    .into_response()
}

/// vLLM's Prometheus metrics, abridged to the scheduler's gauges and one histogram, as
/// `vllm serve` (0.10, V1 engine) writes them.
async fn prometheus_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "/metrics", &headers, b"");
    let behavior = shared.behavior.read().unwrap().clone();
    let (running, waiting, kv) = match &behavior.metrics {
        FakeMetrics::NotServed => return StatusCode::NOT_FOUND.into_response(),
        FakeMetrics::Garbage => {
            return (StatusCode::OK, "<html><body>not metrics {{{ 1e9999 NaN\n").into_response();
        }
        FakeMetrics::Hang => std::future::pending().await,
        FakeMetrics::Vllm {
            running,
            waiting,
            kv_cache_usage,
        } => (*running, *waiting, *kv_cache_usage),
    };
    let model = behavior.models.first().cloned().unwrap_or_default();
    let labels = format!("engine=\"0\",model_name=\"{model}\"");
    let text = format!(
        "# HELP python_gc_objects_collected_total Objects collected during gc\n\
         # TYPE python_gc_objects_collected_total counter\n\
         python_gc_objects_collected_total{{generation=\"0\"}} 12345.0\n\
         # HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{{labels}}} {running}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{{labels}}} {waiting}.0\n\
         # HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\n\
         vllm:gpu_cache_usage_perc{{{labels}}} {kv}\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{{labels}}} {kv}\n\
         # HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
         # TYPE vllm:time_to_first_token_seconds histogram\n\
         vllm:time_to_first_token_seconds_bucket{{{labels},le=\"0.001\"}} 0.0\n\
         vllm:time_to_first_token_seconds_bucket{{{labels},le=\"+Inf\"}} 7.0\n\
         vllm:time_to_first_token_seconds_count{{{labels}}} 7.0\n\
         vllm:time_to_first_token_seconds_sum{{{labels}}} 0.42\n"
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// llama.cpp's server properties: 404 unless the behavior sets its context size.
async fn llama_cpp_props(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "/props", &headers, b"");
    let behavior = shared.behavior.read().unwrap().clone();
    let Some(n_ctx) = behavior.llama_cpp_n_ctx else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The shape llama-server (llama-cpp-python 0.3.36's llama.cpp) answers, abridged: the sampling
    // settings under `params`, the slot's window beside them.
    Json(json!({
        "default_generation_settings": {
            "params": {"seed": 4_294_967_295u32, "temperature": 0.8, "top_k": 40, "n_predict": -1},
            "n_ctx": n_ctx,
        },
        "total_slots": 1,
        "model_alias": "mistral-7b-instruct",
        "model_path": "models/mistral-7b-instruct-v0.2.Q4_K_M.gguf",
        "modalities": {"vision": false, "video": false, "audio": false},
        "endpoint_slots": true,
        "endpoint_props": false,
        "endpoint_metrics": false,
        "chat_template": "",
    }))
    .into_response()
}

/// vLLM's and llama.cpp's health endpoint, at the host root: 200 with an empty body, or the fault.
async fn health(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    record(&shared, "/health", &headers, b"");
    let behavior = shared.behavior.read().unwrap().clone();
    if let Some(response) = before_answer(&behavior.fault).await {
        return response;
    }
    StatusCode::OK.into_response()
}

async fn set_behavior(
    State(shared): State<Arc<Shared>>,
    Json(behavior): Json<Behavior>,
) -> StatusCode {
    *shared.behavior.write().unwrap() = Arc::new(behavior);
    StatusCode::NO_CONTENT
}

async fn get_behavior(State(shared): State<Arc<Shared>>) -> Json<Behavior> {
    Json(shared.behavior.read().unwrap().as_ref().clone())
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> Json<Vec<Recorded>> {
    Json(shared.requests.lock().unwrap().clone())
}

/// Anthropic's Messages API: the answer as a message, or as its stream of named events (a ping
/// among them), usage with the input the prompt cache read and wrote counted apart, as Anthropic's
/// reference documents them. `Fault::ErrorMidStream` ends a stream with Anthropic's
/// `overloaded_error` event, as its API does when it is overloaded mid-answer.
/// Anthropic's `count_tokens`: the faults as on messages; a field counting does not take refused
/// as Anthropic refuses it; otherwise `{"input_tokens": prompt_tokens}`.
async fn anthropic_count_tokens(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "fake upstream: body is not JSON").into_response();
    };
    record(&shared, "/v1/messages/count_tokens", &headers, &body);
    let behavior = behavior_for_request(&shared, request["model"].as_str());
    if let Some(response) = before_answer_in(Format::Anthropic, &behavior.fault).await {
        return response;
    }
    let taken = [
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "speed",
        "mcp_servers",
        "context_management",
    ];
    if let Some(extra) = request
        .as_object()
        .and_then(|fields| fields.keys().find(|name| !taken.contains(&name.as_str())))
    {
        let message = format!("{extra}: Extra inputs are not permitted");
        let error = json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    Json(json!({"input_tokens": behavior.prompt_tokens})).into_response()
}

async fn anthropic_messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "fake upstream: body is not JSON").into_response();
    };
    record(&shared, "/v1/messages", &headers, &body);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-fake")
        .to_string();
    let behavior = behavior_for_request(&shared, Some(&model));
    if let Some(response) = before_answer_in(Format::Anthropic, &behavior.fault).await {
        return response;
    }
    if request["max_tokens"].as_u64().is_none() {
        let error = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    let usage = |output: u64| {
        json!({
            "input_tokens": behavior.prompt_tokens.saturating_sub(behavior.cached_tokens + behavior.cache_write_tokens),
            "cache_creation_input_tokens": behavior.cache_write_tokens,
            "cache_read_input_tokens": behavior.cached_tokens,
            "output_tokens": output,
        })
    };
    let stop_reason = if behavior.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    if request["stream"].as_bool() != Some(true) {
        if behavior.fault == Fault::MalformedJson {
            return json_response(Bytes::from_static(b"{\"id\": \"msg_fake\", \"cont"));
        }
        let mut content = Vec::new();
        if !behavior.reply.is_empty() {
            content.push(json!({"type": "text", "text": behavior.reply}));
        }
        for call in &behavior.tool_calls {
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            content.push(
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
            );
        }
        let mut message = json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage(behavior.completion_tokens),
        });
        if behavior.fault == Fault::NoUsage {
            message["usage"] = json!({"input_tokens": behavior.prompt_tokens});
        }
        let body = Bytes::from(message.to_string());
        if behavior.fault == Fault::CutMidBody {
            return cut_mid_body(body);
        }
        return json_response(body);
    }
    let mut events: Vec<(&str, Value)> = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null, "usage": usage(1)}}),
    )];
    let mut block = 0;
    if !behavior.reply.is_empty() {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        events.push(("ping", json!({"type": "ping"})));
        for word in behavior.reply.split_inclusive(' ') {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        block = 1;
    }
    for call in &behavior.tool_calls {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": block, "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
        ));
        let (first, rest) = call.arguments.split_at(call.arguments.len() / 2);
        for piece in ["", first, rest] {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": block}),
        ));
        block += 1;
    }
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": behavior.completion_tokens}});
    if let Some(usage) = &behavior.message_delta_usage {
        delta["usage"] = usage.clone();
    }
    if behavior.fault == Fault::NoUsage {
        // Only `message_start`'s early count (1) is left, as some Anthropic-compatible servers
        // end a stream.
        delta.as_object_mut().unwrap().remove("usage");
    }
    events.push(("message_delta", delta));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let mut frames: Vec<Bytes> = events
        .into_iter()
        .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        .collect();
    match behavior.fault {
        Fault::CutBeforeFirstChunk => frames.clear(),
        Fault::CutAfterChunks { chunks } => frames.truncate(chunks),
        Fault::MalformedJson => frames.insert(
            0,
            Bytes::from_static(b"event: message_start\ndata: {\"type\": \"message_st\n\n"),
        ),
        Fault::ErrorMidStream { after } => {
            frames.truncate(after);
            frames.push(Bytes::from(format!("event: error\ndata: {overloaded}\n\n")));
        }
        Fault::Heartbeats {
            after,
            every_ms,
            count,
        } => {
            let every = Duration::from_millis(every_ms);
            let ping = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
            return heartbeats(frames, after, every, count, ping);
        }
        _ => {}
    }
    let delay = Duration::from_millis(behavior.chunk_delay_ms);
    let body = futures_util::stream::unfold(
        (frames.into_iter(), 0usize),
        move |(mut rest, sent)| async move {
            let frame = rest.next()?;
            if sent > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, std::convert::Infallible>(frame), (rest, sent + 1)))
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    response
}

/// OpenAI's Responses API, as OpenAI and recent vLLM serve it: the answer as a response (the text
/// as a message item, each tool call as a `function_call` item), or as its stream of named events
/// in the documented order, usage in `response.completed`. `Fault::ErrorMidStream` ends a stream
/// with `response.failed`, as OpenAI ends a response that failed while it was generated.
async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "fake upstream: body is not JSON").into_response();
    };
    record(&shared, "/v1/responses", &headers, &body);
    let model = request["model"]
        .as_str()
        .unwrap_or("fake-model")
        .to_string();
    let behavior = behavior_for_request(&shared, Some(&model));
    if let Some(response) = before_answer(&behavior.fault).await {
        return response;
    }
    let usage = (behavior.fault != Fault::NoUsage).then(|| {
        json!({
            "input_tokens": behavior.prompt_tokens,
            "input_tokens_details": {"cached_tokens": behavior.cached_tokens},
            "output_tokens": behavior.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": behavior.prompt_tokens + behavior.completion_tokens,
        })
    });
    let text_part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let message = |status: &str, content: Vec<Value>| json!({"id": "msg_fake", "type": "message", "status": status, "role": "assistant", "content": content});
    let call_item = |index: usize, call: &FakeToolCall, status: &str, arguments: &str| {
        json!({"id": format!("fc_fake_{index}"), "type": "function_call", "status": status,
            "call_id": call.id, "name": call.name, "arguments": arguments})
    };
    let mut output = Vec::new();
    if !behavior.reply.is_empty() {
        output.push(message("completed", vec![text_part(&behavior.reply)]));
    }
    for (index, call) in behavior.tool_calls.iter().enumerate() {
        output.push(call_item(index, call, "completed", &call.arguments));
    }
    // As OpenAI's: whether it keeps the answer (it does unless told not to), and what it continues.
    let unruly = behavior.responses_unruly;
    let store = unruly || request["store"].as_bool().unwrap_or(true);
    let previous = request["previous_response_id"].clone();
    let named = std::sync::atomic::AtomicUsize::new(0);
    let id = || {
        if unruly {
            let at = named.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("resp_fake_{at}")
        } else {
            "resp_fake".to_string()
        }
    };
    let response = |status: &str, output: Vec<Value>, usage: Option<Value>| {
        json!({"id": id(), "object": "response", "created_at": 1_700_000_000, "status": status,
            "error": null, "incomplete_details": null, "model": model, "output": output, "usage": usage,
            "store": store, "previous_response_id": previous})
    };
    if request["stream"].as_bool() != Some(true) {
        if behavior.fault == Fault::MalformedJson {
            return json_response(Bytes::from_static(b"{\"id\": \"resp_fake\", \"outp"));
        }
        let body = Bytes::from(response("completed", output, usage).to_string());
        if behavior.fault == Fault::CutMidBody {
            return cut_mid_body(body);
        }
        return json_response(body);
    }
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response("in_progress", Vec::new(), None)}),
        json!({"type": "response.in_progress", "response": response("in_progress", Vec::new(), None)}),
    ];
    if behavior.responses_without_created {
        events.clear();
    }
    let mut index = 0;
    if !behavior.reply.is_empty() {
        events.push(json!({"type": "response.output_item.added", "output_index": 0, "item": message("in_progress", Vec::new())}));
        events.push(json!({"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": text_part("")}));
        for word in behavior.reply.split_inclusive(' ') {
            events.push(json!({"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": word}));
        }
        events.push(json!({"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": behavior.reply}));
        events.push(json!({"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": text_part(&behavior.reply)}));
        events.push(
            json!({"type": "response.output_item.done", "output_index": 0, "item": output[0]}),
        );
        index = 1;
    }
    for (call_index, call) in behavior.tool_calls.iter().enumerate() {
        let item_id = format!("fc_fake_{call_index}");
        events.push(json!({"type": "response.output_item.added", "output_index": index, "item": call_item(call_index, call, "in_progress", "")}));
        events.push(json!({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": index, "delta": call.arguments}));
        events.push(json!({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": index, "arguments": call.arguments}));
        events.push(json!({"type": "response.output_item.done", "output_index": index, "item": output[index]}));
        index += 1;
    }
    events.push(
        json!({"type": "response.completed", "response": response("completed", output, usage)}),
    );
    let mut frames: Vec<Bytes> = events
        .into_iter()
        .enumerate()
        .map(|(sequence, mut event)| {
            event["sequence_number"] = sequence.into();
            Bytes::from(format!(
                "event: {}\ndata: {event}\n\n",
                event["type"].as_str().unwrap()
            ))
        })
        .collect();
    match behavior.fault {
        Fault::CutBeforeFirstChunk => frames.clear(),
        Fault::CutAfterChunks { chunks } => frames.truncate(chunks),
        Fault::MalformedJson => frames.insert(
            0,
            Bytes::from_static(b"event: response.created\ndata: {\"type\": \"response.cr\n\n"),
        ),
        Fault::ErrorMidStream { after } => {
            frames.truncate(after);
            let failed = json!({"type": "response.failed", "sequence_number": after, "response": {"id": id(), "object": "response", "status": "failed", "error": {"code": "server_error", "message": "The model failed"}, "output": [], "usage": null, "store": store}});
            frames.push(Bytes::from(format!(
                "event: response.failed\ndata: {failed}\n\n"
            )));
        }
        _ => {}
    }
    let mut response = Response::new(Body::from_stream(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, std::convert::Infallible>),
    )));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    response
}
