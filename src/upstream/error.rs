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

    pub fn from_reqwest(err: reqwest::Error) -> UpstreamError {
        let err = err.without_url();
        let kind = if err.is_timeout() && err.is_connect() {
            UpstreamErrorKind::TimeoutConnect
        } else if err.is_timeout() {
            UpstreamErrorKind::TimeoutTotal
        } else if err.is_connect() {
            connect_kind(&err)
        } else if io_kind(&err).is_some_and(|k| k == std::io::ErrorKind::ConnectionReset) {
            UpstreamErrorKind::ConnectReset
        } else {
            UpstreamErrorKind::Transport
        };
        UpstreamError {
            kind,
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
            UpstreamErrorKind::MalformedJson => "malformed_json".into(),
            UpstreamErrorKind::AnswerTooLarge => "answer_too_large".into(),
            UpstreamErrorKind::StreamBroken => "stream_broken".into(),
            UpstreamErrorKind::Transport => "transport".into(),
            UpstreamErrorKind::BreakerOpen => "breaker_open".into(),
            UpstreamErrorKind::Saturated => "saturated".into(),
            UpstreamErrorKind::RateLimited => "rate_limited".into(),
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

fn connect_kind(err: &reqwest::Error) -> UpstreamErrorKind {
    match io_kind(err) {
        Some(std::io::ErrorKind::ConnectionRefused) => UpstreamErrorKind::ConnectRefused,
        Some(std::io::ErrorKind::ConnectionReset) => UpstreamErrorKind::ConnectReset,
        _ if chain(err).contains("dns error") => UpstreamErrorKind::Dns,
        _ => UpstreamErrorKind::Connect,
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
