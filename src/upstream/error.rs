//! What went wrong in one call to one tier, classified into the reasons the fallback header and the
//! ledger show (`connect_refused`, `timeout_first_byte`, `http_503` …) and into retryable or not.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

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
    /// A 400 that says the request does not fit the model's context window: the request's size,
    /// not the provider's health, and a tier with a larger window may take it.
    ContextTooLong,
    /// Not called: the request needs what the tier's model lacks (tools, a JSON schema, images).
    Lacks(Lack),
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
}

/// What a request needed that a tier lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    Tools,
    JsonSchema,
    Vision,
}

impl Lack {
    /// The request parameter that needs it, for the error a client gets when no tier has it.
    pub fn param(self) -> &'static str {
        match self {
            Lack::Tools => "tools",
            Lack::JsonSchema => "response_format",
            Lack::Vision => "messages",
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
            UpstreamErrorKind::ContextTooLong => "context_too_long".into(),
            UpstreamErrorKind::Lacks(Lack::Tools) => "no_tools".into(),
            UpstreamErrorKind::Lacks(Lack::JsonSchema) => "no_json_schema".into(),
            UpstreamErrorKind::Lacks(Lack::Vision) => "no_vision".into(),
            UpstreamErrorKind::MalformedJson => "malformed_json".into(),
            UpstreamErrorKind::AnswerTooLarge => "answer_too_large".into(),
            UpstreamErrorKind::StreamBroken => "stream_broken".into(),
            UpstreamErrorKind::Transport => "transport".into(),
            UpstreamErrorKind::BreakerOpen => "breaker_open".into(),
            UpstreamErrorKind::Saturated => "saturated".into(),
            UpstreamErrorKind::RateLimited => "rate_limited".into(),
            UpstreamErrorKind::Demoted => "quality_demoted".into(),
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
            _ => true,
        }
    }

    /// Whether the provider is to blame, so that its breaker hears of it: a retryable failure,
    /// but not a rate limit (the tier rests instead) nor a request too long for its window.
    pub fn counts_against_provider(&self) -> bool {
        self.is_retryable()
            && !self.is_rate_limit()
            && !matches!(
                self.kind,
                UpstreamErrorKind::ContextTooLong
                    | UpstreamErrorKind::Lacks(_)
                    | UpstreamErrorKind::Demoted
            )
    }

    /// The context window a too-long refusal names: vLLM's and OpenAI's "maximum context length
    /// is N tokens", llama.cpp's "available context size (N tokens)" or its `n_ctx`.
    pub fn context_limit(&self) -> Option<u32> {
        if self.kind != UpstreamErrorKind::ContextTooLong {
            return None;
        }
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(2048)]).to_lowercase();
        [
            "maximum context length is ",
            "available context size (",
            "\"n_ctx\": ",
            "\"n_ctx\":",
        ]
        .iter()
        .find_map(|lead| {
            let (_, after) = text.split_once(lead)?;
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().filter(|tokens| *tokens > 0)
        })
    }

    /// The upstream answered 429.
    pub fn is_rate_limit(&self) -> bool {
        self.kind == UpstreamErrorKind::Status(StatusCode::TOO_MANY_REQUESTS)
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

/// How servers say a request does not fit the context window, lower-cased: OpenAI's error code,
/// llama.cpp's error type and messages, vLLM's and OpenAI's message, Ollama's.
const CONTEXT_TOO_LONG: [&str; 5] = [
    "context_length_exceeded",
    "exceed_context_size_error",
    "maximum context length is",
    "exceeds the available context size",
    "input length exceeds the context length",
];

/// Whether a 400's body says the request was too long for the model; only the start of a body is
/// read, where every server puts its message.
fn says_context_too_long(body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_lowercase();
    CONTEXT_TOO_LONG.iter().any(|words| head.contains(words))
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
            // llama.cpp server, newer and older
            r#"{"error": {"code": 400, "message": "request (4476 tokens) exceeds the available context size (4096 tokens)", "type": "exceed_context_size_error", "n_prompt_tokens": 4476, "n_ctx": 4096}}"#,
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
        let limits: Vec<Option<u32>> = bodies
            .iter()
            .map(|body| {
                UpstreamError::status(StatusCode::BAD_REQUEST, (*body).into(), None).context_limit()
            })
            .collect();
        assert_eq!(
            limits,
            [
                Some(128_000),
                Some(8192),
                Some(4096),
                Some(4096),
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
