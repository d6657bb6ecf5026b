//! What went wrong in one call to one tier, classified into the reasons the fallback header and the
//! ledger show (`connect_refused`, `timeout_first_byte`, `http_503` …) and into retryable or not.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

/// How long a tier rests after its provider said its account's money is spent: long enough that
/// a busy route does not spend a call per request on the same refusal, short enough that traffic
/// returns soon after someone tops the account up.
pub const QUOTA_REST: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    ConnectRefused,
    ConnectReset,
    Dns,
    Connect,
    TimeoutConnect,
    TimeoutFirstByte,
    TimeoutTotal,
    TimeoutIdle,
    /// The upstream answered with a non-2xx status.
    Status(StatusCode),
    /// The provider account's credit or spend limit is used up ([`UpstreamError::quota_exhausted`]).
    QuotaExhausted,
    /// A 400 that says the request does not fit the model's context window: the request's size,
    /// not the provider's health, and a tier with a larger window may take it.
    ContextTooLong,
    /// Not called: the request needs what the tier's model lacks (tools, a JSON schema, images).
    Lacks(Lack),
    /// A 500 in one of the wordings a server uses for a request it cannot take, not for its own
    /// failure ([`REQUEST_SHAPED_500`]): the wording matched, a constant, never the server's
    /// message, which may quote the request.
    RequestRefused(&'static str),
    /// A 2xx answer whose body is not the JSON it should be.
    MalformedJson,
    /// An answer larger than `server.max_answer_bytes`.
    AnswerTooLarge,
    /// A stream that ended or broke before its first event.
    StreamBroken,
    /// Anything else the HTTP client reports (a TLS failure, a body that stopped mid-way).
    Transport,
    /// Not called: the provider's circuit breaker is open.
    BreakerOpen,
    /// Not called: the provider already has `max_in_flight` calls running.
    Saturated,
    /// Not called: the tier's model answered 429 and its `Retry-After` has not passed.
    RateLimited,
    /// Not called first: the route's quality monitor demoted this tier (`shadow.on_drift`).
    Demoted,
    /// Not called: admission passed over it for this request, for the reason given
    /// (`budget_spent`); see [`crate::limits::Skips`].
    Skipped(&'static str),
    /// Not called: the client had gone, and a call nobody waits for would still be charged. It
    /// ends the chain: no later tier is called either.
    ClientLeft,
}

/// What a request needed that a tier lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    Tools,
    JsonSchema,
    Vision,
    /// The tier's wire format has no such endpoint (Anthropic's has no embeddings).
    Endpoint,
    /// The tier's wire format cannot carry this parameter of the request.
    Format(&'static str),
}

impl Lack {
    /// The request parameter that needs it, for the error a client gets when no tier has it.
    pub fn param(self) -> &'static str {
        match self {
            Lack::Tools => "tools",
            Lack::JsonSchema => "response_format",
            Lack::Vision => "messages",
            Lack::Endpoint => "model",
            Lack::Format(param) => param,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    /// Human-readable detail without URLs or keys.
    pub detail: String,
    /// The upstream's body for `Status`, passed back to the client on a 4xx.
    pub body: Bytes,
    pub retry_after: Option<Duration>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, limit: Duration) -> UpstreamError {
        UpstreamError {
            kind,
            detail: format!("no answer within {} ms", limit.as_millis()),
            body: Bytes::new(),
            retry_after: None,
        }
    }

    pub fn status(status: StatusCode, body: Bytes, retry_after: Option<Duration>) -> UpstreamError {
        if status == StatusCode::BAD_REQUEST && says_context_too_long(&body) {
            return UpstreamError {
                kind: UpstreamErrorKind::ContextTooLong,
                detail: "answered HTTP 400: the request does not fit the model's context window"
                    .into(),
                body,
                retry_after,
            };
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR && says_no_images(&body) {
            return UpstreamError {
                kind: UpstreamErrorKind::Lacks(Lack::Vision),
                detail: "answered HTTP 500: the model does not read images".into(),
                body,
                retry_after,
            };
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR
            && let Some(wording) = request_shaped(&body)
        {
            return UpstreamError {
                kind: UpstreamErrorKind::RequestRefused(wording),
                detail: format!(
                    "answered HTTP 500 in words that refuse the request, not report a failure: \"{wording}…\""
                ),
                body,
                retry_after,
            };
        }
        UpstreamError {
            kind: UpstreamErrorKind::Status(status),
            detail: format!("answered HTTP {}", status.as_u16()),
            body,
            retry_after,
        }
    }

    pub fn new_detail(kind: UpstreamErrorKind, detail: String) -> UpstreamError {
        UpstreamError {
            kind,
            detail,
            body: Bytes::new(),
            retry_after: None,
        }
    }

    /// The provider refused because its account has no credit left or reached its spend limit
    /// (a 402; OpenAI's 429 `insufficient_quota`; Anthropic's billing errors). Neither the client
    /// nor the request can change that, and the servers are healthy: another tier answers, and
    /// the tier rests as after a 429 — but for [`QUOTA_REST`] at least, since only a person
    /// topping up the account ends it — rather than open its breaker, whose probes would find the
    /// servers up and close it again.
    pub fn quota_exhausted(
        status: StatusCode,
        body: Bytes,
        retry_after: Option<Duration>,
    ) -> UpstreamError {
        UpstreamError {
            kind: UpstreamErrorKind::QuotaExhausted,
            detail: format!(
                "answered HTTP {}: the provider account's credit or spend limit is used up",
                status.as_u16()
            ),
            body,
            retry_after: Some(retry_after.map_or(QUOTA_REST, |wait| wait.max(QUOTA_REST))),
        }
    }

    pub fn malformed(detail: String) -> UpstreamError {
        UpstreamError {
            kind: UpstreamErrorKind::MalformedJson,
            detail,
            body: Bytes::new(),
            retry_after: None,
        }
    }

    /// A tier passed over without a call; `retry_in` is when it may be tried again.
    pub fn skipped(kind: UpstreamErrorKind, detail: String, retry_in: Duration) -> UpstreamError {
        UpstreamError {
            kind,
            detail,
            body: Bytes::new(),
            retry_after: Some(retry_in),
        }
    }

    pub fn stream_broken(detail: String) -> UpstreamError {
        UpstreamError {
            kind: UpstreamErrorKind::StreamBroken,
            detail,
            body: Bytes::new(),
            retry_after: None,
        }
    }

    /// A failure of the HTTP client: the connection, the TLS handshake, or the exchange on it.
    pub fn from_client(err: hyper_util::client::legacy::Error) -> UpstreamError {
        let kind = if err.is_connect() {
            connect_kind(&err)
        } else {
            exchange_kind(&err)
        };
        UpstreamError {
            kind,
            detail: chain(&err),
            body: Bytes::new(),
            retry_after: None,
        }
    }

    /// A failure while reading an answer's body, after its head arrived.
    pub fn from_body(err: hyper::Error) -> UpstreamError {
        UpstreamError {
            kind: exchange_kind(&err),
            detail: chain(&err),
            body: Bytes::new(),
            retry_after: None,
        }
    }

    /// The short reason shown in `x-tierwise-fallback` and kept in the ledger.
    pub fn reason(&self) -> String {
        match self.kind {
            UpstreamErrorKind::ConnectRefused => "connect_refused".into(),
            UpstreamErrorKind::ConnectReset => "connect_reset".into(),
            UpstreamErrorKind::Dns => "dns".into(),
            UpstreamErrorKind::Connect => "connect_error".into(),
            UpstreamErrorKind::TimeoutConnect => "timeout_connect".into(),
            UpstreamErrorKind::TimeoutFirstByte => "timeout_first_byte".into(),
            UpstreamErrorKind::TimeoutTotal => "timeout_total".into(),
            UpstreamErrorKind::TimeoutIdle => "timeout_idle".into(),
            UpstreamErrorKind::Status(status) => format!("http_{}", status.as_u16()),
            UpstreamErrorKind::QuotaExhausted => "quota_exhausted".into(),
            UpstreamErrorKind::ContextTooLong => "context_too_long".into(),
            UpstreamErrorKind::Lacks(Lack::Tools) => "no_tools".into(),
            UpstreamErrorKind::Lacks(Lack::JsonSchema) => "no_json_schema".into(),
            UpstreamErrorKind::Lacks(Lack::Vision) => "no_vision".into(),
            UpstreamErrorKind::Lacks(Lack::Endpoint) => "no_endpoint".into(),
            UpstreamErrorKind::Lacks(Lack::Format(_)) => "untranslatable".into(),
            UpstreamErrorKind::RequestRefused(_) => "request_refused".into(),
            UpstreamErrorKind::MalformedJson => "malformed_json".into(),
            UpstreamErrorKind::AnswerTooLarge => "answer_too_large".into(),
            UpstreamErrorKind::StreamBroken => "stream_broken".into(),
            UpstreamErrorKind::Transport => "transport".into(),
            UpstreamErrorKind::BreakerOpen => "breaker_open".into(),
            UpstreamErrorKind::Saturated => "saturated".into(),
            UpstreamErrorKind::RateLimited => "rate_limited".into(),
            UpstreamErrorKind::Demoted => "quality_demoted".into(),
            UpstreamErrorKind::Skipped(reason) => reason.into(),
            // As the ledger names a request whose client went away (`outcome::CLIENT_CLOSED`).
            UpstreamErrorKind::ClientLeft => "client_closed".into(),
        }
    }

    /// Whether another tier may answer where this one failed. Most 4xx are the request's own fault:
    /// every tier would refuse it the same way, so it goes straight back to the client. A 429 is
    /// the tier's load; 401 and 403 (a revoked or wrong provider key), 404 (a wrong base URL or
    /// model) and any redirect (a misconfigured endpoint) are the gateway's configuration, which the
    /// client can neither see nor fix: the next tier is tried and the breaker hears of it.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            UpstreamErrorKind::Status(status) => provider_fault(status),
            UpstreamErrorKind::ClientLeft => false,
            _ => true,
        }
    }

    /// Whether the provider is to blame, so that its breaker hears of it: a retryable failure,
    /// but not a rate limit (the tier rests instead), nor an answer about the request rather than
    /// the server ([`UpstreamError::is_the_requests`]), nor a request too long for its window.
    pub fn counts_against_provider(&self) -> bool {
        self.is_retryable()
            && !self.is_rate_limit()
            && !self.is_the_requests()
            && !matches!(
                self.kind,
                UpstreamErrorKind::ContextTooLong
                    | UpstreamErrorKind::Lacks(_)
                    | UpstreamErrorKind::Demoted
                    | UpstreamErrorKind::Skipped(_)
            )
    }

    /// Whether another server of the same provider may answer what this one could not: it could
    /// not be reached, answered 5xx, or broke before answering. Not a timeout: the tier's time is
    /// spent, and a second wait as long would double what the client waits before the next tier;
    /// nor anything about the request or the model, which every server would answer alike.
    pub fn another_server_may_answer(&self) -> bool {
        match self.kind {
            UpstreamErrorKind::ConnectRefused
            | UpstreamErrorKind::ConnectReset
            | UpstreamErrorKind::Dns
            | UpstreamErrorKind::Connect
            | UpstreamErrorKind::TimeoutConnect
            | UpstreamErrorKind::StreamBroken
            | UpstreamErrorKind::Transport
            | UpstreamErrorKind::MalformedJson => true,
            UpstreamErrorKind::Status(status) => status.is_server_error() && !self.is_not_served(),
            _ => false,
        }
    }

    /// What a too-long refusal says of the server's window and of the request it refused, in the
    /// server's own words only (see [`ContextRefusal`]); `None` for a refusal that states no sizes.
    pub fn context_refusal(&self) -> Option<ContextRefusal> {
        if self.kind != UpstreamErrorKind::ContextTooLong {
            return None;
        }
        ContextRefusal::read(&self.body)
    }

    /// The upstream answered 429, or its account's money is spent: the tier rests, its breaker
    /// hears nothing.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::Status(StatusCode::TOO_MANY_REQUESTS)
                | UpstreamErrorKind::QuotaExhausted
        )
    }

    /// The upstream answered 501: it is up and says it does not serve this endpoint, as
    /// llama.cpp's server answers embeddings when started without `--embeddings`. Another tier
    /// may serve it (the request falls back), but the provider has not failed: its breaker would
    /// otherwise open on one client's requests for an endpoint it was never meant to serve, and
    /// take its other tiers down with it.
    pub fn is_not_served(&self) -> bool {
        self.kind == UpstreamErrorKind::Status(StatusCode::NOT_IMPLEMENTED)
    }

    /// A 5xx that speaks of the request, not of the server's health. The rule: a 501 is always
    /// the request's (the server is up and does not implement what this request asks: an
    /// endpoint, a parameter — llama.cpp's `not_supported_error`, vLLM's `NotImplementedError`);
    /// a 500 is the server's failure unless its message begins with one of the wordings servers
    /// use when they refuse a request ([`REQUEST_SHAPED_500`]). Such an answer moves the request
    /// on to the next tier, which may take it (an API reads audio, a larger batch fits the
    /// input), and is never counted by the breaker: one client sending what a local server
    /// cannot take must not take the server down for every other client.
    pub fn is_the_requests(&self) -> bool {
        self.is_not_served() || matches!(self.kind, UpstreamErrorKind::RequestRefused(_))
    }

    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            UpstreamErrorKind::TimeoutConnect
                | UpstreamErrorKind::TimeoutFirstByte
                | UpstreamErrorKind::TimeoutTotal
                | UpstreamErrorKind::TimeoutIdle
        )
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.detail)
    }
}

impl std::error::Error for UpstreamError {}

/// An HTTP status that says the provider (or tierwise's configuration of it) failed, not the request.
pub fn provider_fault(status: StatusCode) -> bool {
    status.is_server_error()
        || status.is_redirection()
        || matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
        )
}

/// A server's refusal of a request too long for its window, as the server itself worded it: its
/// window and the size of the request it counted. Only a message that *begins* with one of the
/// wordings below is read, and llama.cpp's typed fields: servers quote a client's bad values back
/// in their errors (OpenAI and vLLM do, mid-message), so a phrase found anywhere in a body may be a
/// client's words. The stated size is what lets the caller check the refusal against the request
/// it actually sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextRefusal {
    pub window: u32,
    /// The request's prompt, as the server counted it.
    pub prompt: u64,
    /// The answer budget the server counted on top of the prompt, where its words say one.
    pub completion: u64,
}

/// The wordings of a too-long refusal that state both sizes, each anchored at the start of the
/// error's message: vLLM's and OpenAI's chat and completion wordings (prompt and completion, or the
/// messages alone), vLLM's for inputs without a budget and for embeddings, vLLM's newer budget
/// wording, and llama.cpp's message (its typed fields are read first).
const CONTEXT_REFUSALS: [&str; 7] = [
    r"^This model's maximum context length is (?<window>\d+) tokens[.,] however,? you requested (?<total>\d+) tokens \((?<prompt>\d+) in (?:the messages|your prompt)[,;] (?<completion>\d+) (?:in|for) the completion\)",
    r"^This model's maximum context length is (?<window>\d+) tokens[.,] however,? your messages resulted in (?<prompt>\d+) tokens",
    r"^This model's maximum context length is (?<window>\d+) tokens[.,] however,? your request has (?<prompt>\d+) input tokens",
    r"^This model's maximum context length is (?<window>\d+) tokens[.,] however,? you requested (?<prompt>\d+) tokens in the input",
    r"^'max_tokens' or 'max_completion_tokens' is too large: (?<completion>\d+)\. This model's maximum context length is (?<window>\d+) tokens and your request has (?<prompt>\d+) input tokens",
    r"^request \((?<prompt>\d+) tokens\) exceeds the available context size \((?<window>\d+) tokens\)",
    r"^prompt is too long: (?<prompt>\d+) tokens > (?<window>\d+) maximum",
];

impl ContextRefusal {
    fn read(body: &[u8]) -> Option<ContextRefusal> {
        static WORDINGS: OnceLock<Vec<fancy_regex::Regex>> = OnceLock::new();
        let body: serde_json::Value = serde_json::from_slice(body).ok()?;
        // OpenAI and llama.cpp nest the error; vLLM's older answers are the error object itself.
        let error = body.get("error").filter(|e| e.is_object()).unwrap_or(&body);
        if error.get("type").and_then(serde_json::Value::as_str)
            == Some("exceed_context_size_error")
            && let (Some(window), Some(prompt)) = (
                error.get("n_ctx").and_then(serde_json::Value::as_u64),
                error
                    .get("n_prompt_tokens")
                    .and_then(serde_json::Value::as_u64),
            )
        {
            return Some(ContextRefusal {
                window: u32::try_from(window).ok()?,
                prompt,
                completion: 0,
            });
        }
        let message = error.get("message")?.as_str()?;
        let wordings = WORDINGS.get_or_init(|| {
            CONTEXT_REFUSALS
                .iter()
                .map(|pattern| {
                    fancy_regex::Regex::new(&format!("(?i){pattern}"))
                        .expect("the refusal wordings are valid patterns")
                })
                .collect()
        });
        wordings.iter().find_map(|wording| {
            let found = wording.captures(message).ok()??;
            let number = |name: &str| -> Option<u64> { found.name(name)?.as_str().parse().ok() };
            let refusal = ContextRefusal {
                window: u32::try_from(number("window")?).ok()?,
                prompt: number("prompt")?,
                completion: number("completion").unwrap_or(0),
            };
            // A total that is not its parts' sum is not a server's arithmetic.
            match number("total") {
                Some(total) if total != refusal.prompt + refusal.completion => None,
                _ => Some(refusal),
            }
        })
    }
}

/// How servers say a request does not fit the context window, lower-cased: OpenAI's error code,
/// llama.cpp's error type and messages, vLLM's and OpenAI's message, Ollama's, Anthropic's.
const CONTEXT_TOO_LONG: [&str; 6] = [
    "context_length_exceeded",
    "exceed_context_size_error",
    "maximum context length is",
    "exceeds the available context size",
    "input length exceeds the context length",
    "prompt is too long",
];

/// Whether a 400's body says the request was too long for the model; only the start of a body is
/// read, where every server puts its message.
fn says_context_too_long(body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_lowercase();
    CONTEXT_TOO_LONG.iter().any(|words| head.contains(words))
}

/// Whether a 500's body is llama.cpp's server saying its model reads no images (a text model, or
/// one served without its `--mmproj`): the request's need, like a tier configured `vision =
/// false`, not the server's failure, so that one client's images cannot open the breaker of a
/// text model every other client uses. Only the start of the server's own message is read.
fn says_no_images(body: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    body["error"]["message"]
        .as_str()
        .is_some_and(|message| message.starts_with("image input is not supported"))
}

/// How llama.cpp's server words a request it refuses with a 500 (it answers any exception but
/// `std::invalid_argument` with 500 and `server_error`), each a pattern anchored at the start of
/// the error's message, as written in the vendored sources of llama-cpp-python 0.3.36
/// (`tools/server/server-common.cpp`, `server-context.cpp`, `common/chat.cpp`): media the model
/// has no projector for; an unknown `reasoning_format`; an input longer than the physical batch
/// (embeddings and reranking cannot split one); `tools` without `--jinja`; a schema or grammar it
/// cannot use; bad image data; a field of the wrong JSON type (nlohmann's exception, thrown while
/// the request is read); a prompt that needs more context than the slot with context shift off.
/// The image wording is read first, as the tier's lack of vision ([`says_no_images`]). vLLM
/// answers a client's mistake with 400 (`ValueError`, `TypeError`, a template error) and what it
/// does not implement with 501 (vLLM's `create_error_response`): its 500s are its own failures,
/// so none of its wordings are here.
pub const REQUEST_SHAPED_500: [&str; 14] = [
    "audio input is not supported",
    "video input is not supported",
    "Multimodal data provided, but model does not support multimodal requests",
    "Unknown reasoning format",
    "input (N tokens) is too large to process",
    "input is too large to process",
    "tools param requires --jinja flag",
    "tool_choice param requires --jinja flag",
    "Cannot use both json_schema and grammar",
    "\"json_schema\": ",
    "Invalid base64 value",
    "Failed to load image or audio file",
    "[json.exception.",
    "context shift is disabled",
];

/// The wording of [`REQUEST_SHAPED_500`] a 500's message begins with, if any. Only the message of
/// the server's own error object is read, from its start: a wording found further in may be the
/// client's words quoted back.
fn request_shaped(body: &[u8]) -> Option<&'static str> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = body["error"]["message"].as_str()?;
    REQUEST_SHAPED_500.iter().copied().find(|wording| {
        match wording.strip_prefix("input (N tokens)") {
            // The count varies: "input (4391 tokens) is too large to process. …".
            Some(rest) => message
                .strip_prefix("input (")
                .and_then(|after| after.split_once(" tokens)"))
                .is_some_and(|(count, tail)| {
                    !count.is_empty()
                        && count.bytes().all(|b| b.is_ascii_digit())
                        && tail.starts_with(rest)
                }),
            None => message.starts_with(wording),
        }
    })
}

/// Why a connection could not be made. The connector's own timeout (`connect_ms`) shows as an
/// I/O error of kind `TimedOut` beneath the connect error.
fn connect_kind(err: &(dyn std::error::Error + 'static)) -> UpstreamErrorKind {
    match io_kind(err) {
        Some(std::io::ErrorKind::TimedOut) => UpstreamErrorKind::TimeoutConnect,
        Some(std::io::ErrorKind::ConnectionRefused) => UpstreamErrorKind::ConnectRefused,
        Some(std::io::ErrorKind::ConnectionReset) => UpstreamErrorKind::ConnectReset,
        _ if chain(err).contains("dns error") => UpstreamErrorKind::Dns,
        _ => UpstreamErrorKind::Connect,
    }
}

/// A failure on a connection that was made: a reset is named, anything else is transport.
fn exchange_kind(err: &(dyn std::error::Error + 'static)) -> UpstreamErrorKind {
    match io_kind(err) {
        Some(std::io::ErrorKind::ConnectionReset) => UpstreamErrorKind::ConnectReset,
        _ => UpstreamErrorKind::Transport,
    }
}

fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = current.source();
    }
    None
}

/// The error and its causes on one line, e.g. "error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)".
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        let text = current.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = current.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt;

    /// An error that shows its cause in its own message, or does not.
    #[derive(Debug)]
    struct Wrapped {
        quotes_cause: bool,
        cause: std::io::Error,
    }

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.quotes_cause {
                write!(f, "client error: {}", self.cause)
            } else {
                f.write_str("client error")
            }
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.cause)
        }
    }

    /// Each server's own words for a request too long for the model; and a 400 that is not one.
    #[test]
    fn context_too_long_is_read_in_each_servers_words() {
        use super::{UpstreamError, UpstreamErrorKind};
        use http::StatusCode;
        let bodies = [
            // OpenAI
            r#"{"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens. Please reduce the length of the messages.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#,
            // vLLM
            r#"{"object": "error", "message": "This model's maximum context length is 8192 tokens. However, you requested 12000 tokens (11000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.", "type": "BadRequestError", "param": null, "code": 400}"#,
            r#"{"error": {"message": "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is 4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None", "type": "BadRequestError", "param": null, "code": 400}}"#,
            // llama.cpp server, newer (byte for byte as llama-server of llama-cpp-python 0.3.36
            // answers, tests/it/llama.rs) and older
            r#"{"error":{"code":400,"message":"request (4476 tokens) exceeds the available context size (4096 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":4476,"n_ctx":4096}}"#,
            r#"{"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it", "type": "invalid_request_error"}}"#,
            // Ollama
            r#"{"error": {"message": "the input length exceeds the context length", "type": "api_error", "param": null, "code": null}}"#,
        ];
        for body in bodies {
            let error = UpstreamError::status(StatusCode::BAD_REQUEST, body.into(), None);
            assert_eq!(error.kind, UpstreamErrorKind::ContextTooLong, "{body}");
            assert_eq!(error.reason(), "context_too_long");
            assert!(error.is_retryable() && !error.counts_against_provider());
        }
        let refusals: Vec<Option<(u32, u64, u64)>> = bodies
            .iter()
            .map(|body| {
                UpstreamError::status(StatusCode::BAD_REQUEST, (*body).into(), None)
                    .context_refusal()
                    .map(|r| (r.window, r.prompt, r.completion))
            })
            .collect();
        assert_eq!(
            refusals,
            [
                Some((128_000, 130_512, 0)),
                Some((8192, 11_000, 1000)),
                Some((4096, 2778, 8000)),
                Some((4096, 4476, 0)),
                None,
                None
            ]
        );
        let other = UpstreamError::status(
            StatusCode::BAD_REQUEST,
            r#"{"error": {"message": "'messages' must contain at least one message"}}"#.into(),
            None,
        );
        assert_eq!(
            other.kind,
            UpstreamErrorKind::Status(StatusCode::BAD_REQUEST)
        );
        assert!(!other.is_retryable());
        let server_error =
            UpstreamError::status(StatusCode::INTERNAL_SERVER_ERROR, bodies[0].into(), None);
        assert!(
            server_error.counts_against_provider(),
            "only a 400 is the request's size"
        );
    }

    /// A 501 is a server that is up saying it does not serve the endpoint (llama.cpp's words, as
    /// it answers embeddings without `--embeddings`): another tier may, but the provider has not
    /// failed. Any other 5xx has.
    #[test]
    fn an_endpoint_the_server_does_not_serve_falls_back_without_counting_against_it() {
        use super::UpstreamError;
        use http::StatusCode;
        let body = r#"{"error":{"code":501,"message":"This server does not support embeddings. Start it with `--embeddings`","type":"not_supported_error"}}"#;
        let not_served = UpstreamError::status(StatusCode::NOT_IMPLEMENTED, body.into(), None);
        assert_eq!(not_served.reason(), "http_501");
        assert!(not_served.is_retryable() && not_served.is_not_served());
        assert!(!not_served.counts_against_provider());
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            let failed = UpstreamError::status(status, body.into(), None);
            assert!(!failed.is_not_served() && failed.counts_against_provider());
        }
    }

    /// llama.cpp's server answers an image sent to a text model with a 500 in its own words: the
    /// model lacks vision, as a tier configured `vision = false` does; any other 500 is a failure.
    #[test]
    fn a_text_models_refusal_of_images_is_a_lack_not_a_failure() {
        use super::{Lack, UpstreamError, UpstreamErrorKind};
        use http::StatusCode;
        let body = r#"{"error":{"code":500,"message":"image input is not supported - hint: if this is unexpected, you may need to provide the mmproj","type":"server_error"}}"#;
        let refused = UpstreamError::status(StatusCode::INTERNAL_SERVER_ERROR, body.into(), None);
        assert_eq!(refused.kind, UpstreamErrorKind::Lacks(Lack::Vision));
        assert_eq!(refused.reason(), "no_vision");
        assert!(refused.is_retryable() && !refused.counts_against_provider());
        let quoted = r#"{"error":{"code":500,"message":"failed: image input is not supported","type":"server_error"}}"#;
        let failed = UpstreamError::status(StatusCode::INTERNAL_SERVER_ERROR, quoted.into(), None);
        assert!(failed.counts_against_provider());
    }

    /// llama.cpp's 500s that refuse a request, byte for byte as its server writes them, are the
    /// request's: they move on to the next tier and the breaker never hears of them. The same
    /// words quoted mid-message, in another status, or a 500 in other words are failures.
    #[test]
    fn a_500_in_the_words_of_a_refusal_is_the_requests_not_the_servers() {
        use super::{UpstreamError, UpstreamErrorKind};
        use http::StatusCode;
        let llama = |message: &str| {
            serde_json::json!({"error": {"code": 500, "message": message, "type": "server_error"}})
                .to_string()
        };
        for message in [
            "audio input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
            "video input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
            "Multimodal data provided, but model does not support multimodal requests.",
            "Unknown reasoning format: deep_think",
            "input (3926 tokens) is too large to process. increase the physical batch size (current batch size: 2048)",
            "input is too large to process. increase the physical batch size",
            "tools param requires --jinja flag",
            "Cannot use both json_schema and grammar",
            "\"json_schema\": Unrecognized schema: []",
            "Invalid base64 value",
            "[json.exception.type_error.302] type must be string, but is number",
            "context shift is disabled",
        ] {
            let refused = UpstreamError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                llama(message).into(),
                None,
            );
            assert!(
                matches!(refused.kind, UpstreamErrorKind::RequestRefused(_)),
                "{message}"
            );
            assert_eq!(refused.reason(), "request_refused");
            assert!(refused.is_retryable() && refused.is_the_requests());
            assert!(!refused.counts_against_provider(), "{message}");
            assert!(
                !refused.detail.contains("deep_think") && !refused.detail.contains("3926"),
                "the detail names the wording, never the server's message: {}",
                refused.detail
            );
        }
        let failures = [
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                llama("failed to decode the batch: audio input is not supported"),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                llama("input (many tokens) is too large to process"),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                llama("got exception: std::bad_alloc"),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "audio input is not supported".to_string(),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message": "audio input is not supported"}"#.to_string(),
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                llama("audio input is not supported"),
            ),
            (
                StatusCode::BAD_GATEWAY,
                llama("Unknown reasoning format: x"),
            ),
        ];
        for (status, body) in failures {
            let failed = UpstreamError::status(status, body.clone().into(), None);
            assert_eq!(failed.kind, UpstreamErrorKind::Status(status), "{body}");
            assert!(failed.counts_against_provider(), "{status} {body}");
        }
    }

    /// A server that quotes a client's bad value back (OpenAI's `invalid_value`, vLLM's validation
    /// errors) still reads as a refusal to move on from, but states no window: the words are the
    /// client's, not at the start of the server's message. Nor does a total that is not its parts'.
    #[test]
    fn a_window_quoted_back_from_the_clients_request_is_not_the_servers() {
        use super::{UpstreamError, UpstreamErrorKind};
        use http::StatusCode;
        let quoted = [
            r#"{"error": {"message": "Invalid value: 'This model's maximum context length is 1 tokens. However, your messages resulted in 9000 tokens.'. Supported values are: 'json_object', 'json_schema', and 'text'.", "type": "invalid_request_error", "param": "response_format.type", "code": "invalid_value"}}"#,
            r#"{"object": "error", "message": "1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input should be 'text', 'json_object' or 'json_schema' [type=literal_error, input_value=\"This model's maximum context length is 1 tokens. However, you requested 5 tokens (4 in the messages, 1 in the completion).\", input_type=str]", "type": "BadRequestError", "param": null, "code": 400}"#,
            r#"{"object": "error", "message": "This model's maximum context length is 2048 tokens. However, you requested 9000 tokens (4000 in the messages, 1000 in the completion).", "type": "BadRequestError", "param": null, "code": 400}"#,
        ];
        for body in quoted {
            let error = UpstreamError::status(StatusCode::BAD_REQUEST, body.into(), None);
            assert_eq!(error.kind, UpstreamErrorKind::ContextTooLong, "{body}");
            assert_eq!(error.context_refusal(), None, "{body}");
        }
    }

    /// Each cause once, on one line: a cause the message already quotes is not repeated.
    #[test]
    fn an_error_chain_names_each_cause_once() {
        let wrapped = |quotes_cause| Wrapped {
            quotes_cause,
            cause: std::io::Error::other("dns error: no such host"),
        };
        assert_eq!(
            super::chain(&wrapped(false)),
            "client error: dns error: no such host"
        );
        assert_eq!(
            super::chain(&wrapped(true)),
            "client error: dns error: no such host"
        );
    }
}
