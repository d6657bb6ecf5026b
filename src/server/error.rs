//! The one place where failures become what the client sees: OpenAI's error shape
//! (`{"error": {"message", "type", "param", "code"}}`) with the status that makes an OpenAI SDK raise
//! the matching exception, or the shape of the endpoint the error is [`ApiError::on`] where it has
//! its own (Anthropic's, on `/v1/messages`). Messages name the tier and the reason, never a URL
//! with credentials or a key.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::limits::{Measure, Refusal};
use crate::openai::{Endpoint, ErrorReply, RequestError};
use crate::route::ResolveError;
use crate::route::chain::Unserved;
use crate::stored::StateError;
use crate::upstream::UpstreamErrorKind;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<Cow<'static, str>>,
    code: Option<&'static str>,
    /// An upstream's own 4xx body, passed back as it came.
    upstream_body: Option<Bytes>,
    retry_after: Option<u64>,
    /// `x-should-retry: false`: retrying cannot help, and OpenAI's SDKs read this header before
    /// the status that would have them retry.
    final_answer: bool,
    /// The endpoint whose shape the error is written in; OpenAI's where none.
    endpoint: Option<Endpoint>,
    /// The upstreams were overloaded: the endpoint's own status for it, where it has one
    /// ([`crate::openai::EndpointSpec::overloaded_status`]).
    overloaded: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            upstream_body: None,
            retry_after: None,
            final_answer: false,
            endpoint: None,
            overloaded: false,
        }
    }

    /// The error as `endpoint`'s clients read it.
    pub fn on(mut self, endpoint: Endpoint) -> ApiError {
        self.endpoint = Some(endpoint);
        self
    }

    fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub(super) fn param(mut self, param: Option<&'static str>) -> ApiError {
        self.param = param.map(Cow::Borrowed);
        self
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than this gateway accepts ({limit} bytes; server.max_body_bytes)."),
        )
        .code("request_too_large")
    }

    pub fn body_timeout(limit: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body did not arrive within {} ms (server.body_timeout_ms).",
                limit.as_millis()
            ),
        )
        .code("request_timeout")
    }

    pub fn forbidden(message: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).code("forbidden")
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "Send the request body as JSON with Content-Type: application/json.",
        )
        .code("unsupported_media_type")
    }

    pub fn bad_body(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    /// 503 with `Retry-After: 1`: a queue of the gateway's own is full.
    pub fn busy(message: String) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .code("gateway_busy");
        error.retry_after = Some(1);
        error
    }

    /// A reload refused: the new config's errors, each with its key and line; the old one serves.
    pub fn reload_refused(message: String) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            format!("{message}\nThe configuration that served before still serves; fix the file and reload again."),
        )
        .code("config_invalid")
    }

    pub fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "This method is not allowed on this path.",
        )
    }

    /// What the client is told when no tier of the chain answered.
    pub fn unserved(failure: &Unserved, route: Option<&str>) -> ApiError {
        let error = &failure.error;
        if let UpstreamErrorKind::Status(status) = error.kind
            && status.is_client_error()
            && !error.is_retryable()
        {
            let mut passed = ApiError::new(
                status,
                "invalid_request_error",
                format!(
                    "tier '{}' refused the request: {}",
                    failure.tier.name, error.detail
                ),
            );
            if serde_json::from_slice::<serde_json::Value>(&error.body).is_ok() {
                passed.upstream_body = Some(error.body.clone());
            }
            return passed;
        }
        let tried: Vec<String> = failure
            .attempts
            .iter()
            .filter_map(|attempt| {
                let error = attempt.error.as_ref()?;
                Some(format!("{}: {error}", attempt.tier.name))
            })
            .collect();
        let message = match route {
            Some(route) => format!(
                "No tier of route '{route}' could answer. {}",
                tried.join("; ")
            ),
            None => format!("No tier could answer. {}", tried.join("; ")),
        };
        let (status, kind, code) = match error.kind {
            // The last tier tried could not fit it either: the request's size, in OpenAI's words.
            UpstreamErrorKind::ContextTooLong => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
            ),
            UpstreamErrorKind::Lacks(lack) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
                    .code("unsupported_parameter")
                    .param(Some(lack.param()));
            }
            // The last tier's server refused the request itself, in a 500: the client's to
            // change, and a 5xx would have the SDKs send it again, to the same refusal.
            UpstreamErrorKind::RequestRefused(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "request_refused",
            ),
            UpstreamErrorKind::BreakerOpen | UpstreamErrorKind::Saturated => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "tiers_unavailable",
            ),
            UpstreamErrorKind::Status(StatusCode::TOO_MANY_REQUESTS)
            | UpstreamErrorKind::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "upstream_rate_limited",
            ),
            _ if error.is_timeout() => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
            ),
        };
        let mut api = ApiError::new(status, kind, message).code(code);
        api.retry_after = error.retry_after.map(|d| d.as_secs().max(1));
        // A 503, an Anthropic tier's own 529, or a provider at its `max_in_flight`.
        api.overloaded = match error.kind {
            UpstreamErrorKind::Status(status) => matches!(status.as_u16(), 503 | 529),
            UpstreamErrorKind::Saturated => true,
            _ => false,
        };
        api
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::NotAllowed {
                key,
                asked,
                allowed,
            } => ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!(
                    "The key '{key}' may not call '{asked}'. It may call the routes: {}. Ask the gateway's operator to add the route to keys.{key}.routes, or use a key that may call it.",
                    allowed.join(", ")
                ),
            )
            .param(Some("model"))
            .code("route_not_allowed"),
            // OpenAI's words and type, so that clients that read them (the SDKs' retry logic,
            // dashboards) read these alike.
            Refusal::RateLimited(limited) => {
                let per = match limited.measure {
                    Measure::Requests => "requests per min (RPM)",
                    Measure::Tokens => "tokens per min (TPM)",
                    Measure::TokenCounts => "token counts per min",
                };
                let wait = limited.retry_after;
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    limited.measure.as_str(),
                    format!(
                        "Rate limit reached for {} on {per}: Limit {}, Used {}, Requested {}. Please try again in {:.3}s.",
                        limited.scope,
                        limited.limit,
                        limited.used,
                        limited.requested,
                        wait.as_secs_f64()
                    ),
                )
                .code("rate_limit_exceeded");
                // Whole seconds, rounded up: a client that waits this long finds room.
                error.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
                error
            }
            // OpenAI's own answer to an exhausted quota: 429 with type and code
            // `insufficient_quota`, which its SDKs raise as RateLimitError and must not retry.
            Refusal::BudgetSpent(spent) => {
                let why = if spent.why.is_empty() {
                    String::new()
                } else {
                    format!(", and {}", spent.why)
                };
                let message = if spent.month_spent {
                    format!(
                        "The budget of {} (${} for {}) is spent: ${} so far (on_exhausted = {}){why}. It starts again with the next month (UTC), or when an operator corrects it (tierwise budget reset|adjust).",
                        spent.scope,
                        spent.budget.monthly_usd,
                        spent.month,
                        spent.spent,
                        spent.budget.on_exhausted.as_str(),
                    )
                } else {
                    // Not spent: full for now, or this request asks for more than most.
                    format!(
                        "The budget of {} (${} for {}) cannot hold this request's worst case (${}): ${} spent, ${} held by requests in flight (on_exhausted = {}){why}. Retry when requests in flight have finished, or ask for fewer tokens (max_tokens).",
                        spent.scope,
                        spent.budget.monthly_usd,
                        spent.month,
                        spent.worst,
                        spent.spent,
                        spent.held,
                        spent.budget.on_exhausted.as_str(),
                    )
                };
                let mut error =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
                .code("insufficient_quota");
                error.final_answer = true;
                error
            }
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> ApiError {
        let mut error = ApiError::bad_body(err.to_string());
        error.param = err.param_named();
        error
    }
}

impl From<StateError> for ApiError {
    fn from(err: StateError) -> ApiError {
        let message = err.to_string();
        match err {
            // OpenAI answers an unknown id, and another project's, with this 404.
            StateError::NotFound(_) | StateError::NotKept(_) | StateError::Broken { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
            }
            // OpenAI's answer to a `previous_response_id` it does not keep; clients start over on
            // its code.
            StateError::PreviousNotFound(_) | StateError::PreviousBroken { .. } => {
                ApiError::bad_body(message)
                    .param(Some("previous_response_id"))
                    .code("previous_response_not_found")
            }
            StateError::TooManyTurns(_) => {
                ApiError::bad_body(message).param(Some("previous_response_id"))
            }
            StateError::TooManyTurnsToList { .. } => ApiError::bad_body(message),
            StateError::Off(param) => ApiError::bad_body(message).param(Some(param)),
            StateError::TooLong { .. } => {
                ApiError::bad_body(message).param(Some("previous_response_id"))
            }
            StateError::Request(err) => err.into(),
            StateError::Timeout(_) | StateError::Unavailable => {
                let mut error =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                        .code("state_unavailable");
                error.retry_after = Some(1);
                error
            }
            StateError::Unreadable(_) => ApiError::internal(message),
        }
    }
}

impl From<ResolveError> for ApiError {
    fn from(err: ResolveError) -> ApiError {
        match err {
            ResolveError::UnknownModel { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                err.to_string(),
            )
            .param(Some("model"))
            .code("model_not_found"),
            ResolveError::UnknownRoute(..) => {
                ApiError::bad_body(err.to_string()).param(Some("x-tierwise-route"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let spec = self.endpoint.map(Endpoint::spec);
        let write: fn(ErrorReply<'_>) -> Bytes =
            spec.map_or(crate::openai::openai_error, |spec| spec.error_body);
        let status = spec
            .and_then(|spec| spec.overloaded_status)
            .filter(|_| self.overloaded)
            .and_then(|status| StatusCode::from_u16(status).ok())
            .unwrap_or(self.status);
        let body = write(ErrorReply {
            status: status.as_u16(),
            kind: self.kind,
            message: &self.message,
            param: self.param.as_deref(),
            code: self.code,
            upstream_body: self.upstream_body.as_ref(),
        });
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.final_answer {
            headers.insert(
                http::HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        response
    }
}
