//! Calls to providers: one pooled keep-alive HTTP client per server of each provider (its connect
//! timeout is the provider's), the provider's key injected and the client's never forwarded, the
//! tier's timeouts applied, the provider's wire format spoken ([`wire`]) — an endpoint the
//! provider's server does not serve sent as a chat completion where the endpoint says how — and
//! every failure classified, because the classification decides whether the next tier is tried.

mod client;
mod error;
mod server_info;
mod stream;
mod wire;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::config::{Api, ClientBetas, Config, ProbePolicy, Provider, Tier, models_path};
use crate::openai::{Endpoint, Usage};

use client::{ProviderClient, uri};
pub use error::{ContextRefusal, Lack, QUOTA_REST, UpstreamError, UpstreamErrorKind};
pub use stream::{SseEvent, UpstreamStream, UsageSoFar};

/// What a call carries of the client's request besides its body.
#[derive(Clone, Copy, Default)]
pub struct FromClient<'a> {
    /// The trace context (`traceparent`, `tracestate`).
    pub trace: Option<&'a crate::traces::Propagation>,
    /// The client's headers its endpoint passes on ([`crate::openai::EndpointSpec::passed_headers`]),
    /// for a tier that gets the request as it came; grouped by name.
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
}

/// What the provider's operator lets through of the client's headers: the betas its
/// `client_betas` names (a header left out where none is), the version where `client_version`.
/// The common case — no such header, or all let through — copies nothing.
fn operators_choice<'a>(
    provider: &Provider,
    headers: &'a [(http::HeaderName, http::HeaderValue)],
) -> std::borrow::Cow<'a, [(http::HeaderName, http::HeaderValue)]> {
    if headers.is_empty() || (provider.client_betas == ClientBetas::All && provider.client_version)
    {
        return std::borrow::Cow::Borrowed(headers);
    }
    let kept = headers
        .iter()
        .filter_map(|(name, value)| match name.as_str() {
            "anthropic-version" if !provider.client_version => None,
            "anthropic-beta" => match &provider.client_betas {
                ClientBetas::All => Some((name.clone(), value.clone())),
                ClientBetas::Only(allowed) => {
                    let betas: Vec<&str> = value
                        .to_str()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .filter(|beta| allowed.iter().any(|allowed| allowed == beta))
                        .collect();
                    let value = http::HeaderValue::from_str(&betas.join(",")).ok()?;
                    (!betas.is_empty()).then(|| (name.clone(), value))
                }
            },
            _ => Some((name.clone(), value.clone())),
        })
        .collect();
    std::borrow::Cow::Owned(kept)
}

/// A successful answer from one tier.
pub enum Reply {
    /// A whole JSON body, already checked to be JSON.
    Complete { body: Bytes, usage: Option<Usage> },
    /// A stream whose first event has arrived, so that it is now safe to commit to this tier.
    Stream(UpstreamStream),
}

/// The refusal of a provider whose format has no way to serve `endpoint`.
fn lacks_endpoint(endpoint: Endpoint) -> UpstreamError {
    UpstreamError::new_detail(
        UpstreamErrorKind::Lacks(Lack::Endpoint),
        format!(
            "the provider's API has no {} endpoint",
            endpoint.spec().ledger_name
        ),
    )
}

/// A request as it goes to one tier: where, through chat or not, and its body in the wire's
/// format.
struct Prepared<'a> {
    url: &'a http::Uri,
    /// How the endpoint is served through chat completions, and its request as the tier gets
    /// it, where the provider's server does not serve it.
    via_chat: Option<(crate::openai::ViaChat, Vec<u8>)>,
    /// The endpoint the body is for.
    sent: Endpoint,
    body: Vec<u8>,
}

/// `body` (the endpoint's request as `tier` gets it) as `client`'s server takes it: an endpoint
/// the server does not serve goes as a chat completion where it can, and the body in the
/// provider's wire format; an error where the tier cannot take the request at all.
fn prepare<'a>(
    client: &'a ProviderClient,
    tier: &Tier,
    endpoint: Endpoint,
    body: Vec<u8>,
) -> Result<Prepared<'a>, UpstreamError> {
    let (url, via_chat) = match (client.url(endpoint, tier), endpoint.spec().via_chat) {
        (Some(url), _) => (url, None),
        (None, Some(via)) => match client.url(Endpoint::ChatCompletions, tier) {
            Some(url) => (url, Some((via, body.clone()))),
            None => return Err(lacks_endpoint(endpoint)),
        },
        (None, None) => return Err(lacks_endpoint(endpoint)),
    };
    let body = match &via_chat {
        Some((via, request)) => (via.request)(request, &tier.model).map_err(|err| {
            let param = err.param().unwrap_or("input");
            UpstreamError::new_detail(
                UpstreamErrorKind::Lacks(Lack::Format(param)),
                format!("a chat completions server cannot take it: {err}"),
            )
        })?,
        None => body,
    };
    let sent = if via_chat.is_some() {
        Endpoint::ChatCompletions
    } else {
        endpoint
    };
    let body = client.wire.encode(sent, body)?;
    Ok(Prepared {
        url,
        via_chat,
        sent,
        body,
    })
}

/// What a provider said of a prompt it was asked to count ([`Upstreams::count_tokens`]).
#[derive(Debug)]
pub enum ProviderCount {
    /// Its count (its answer is not passed on as it came: only the number is the client's).
    Counted(u64),
    /// It refused the request itself (a 400): its error as it came, in its own shape.
    Refused(Bytes),
    /// It said the prompt does not fit the model's window: sending it, the chain would go on to
    /// its next tier, so this is not the request's fault. Its error as it came.
    TooLong(Bytes),
}

/// The most of a count's answer read: a number, or an error's few lines.
const COUNT_BODY_BYTES: usize = 64 << 10;

/// The HTTP clients, one per server of each provider (in the provider's order of servers),
/// shared by every request.
pub struct Upstreams {
    clients: HashMap<String, Vec<ProviderClient>>,
    /// The largest non-streamed answer read (`server.max_answer_bytes`).
    max_answer_bytes: usize,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, UpstreamError> {
        let mut clients = HashMap::new();
        for provider in &config.providers {
            let deployments = config
                .tiers
                .iter()
                .filter(|tier| tier.provider.name == provider.name)
                .filter_map(|tier| tier.deployment.as_deref());
            let servers = provider
                .servers
                .iter()
                .map(|server| ProviderClient::new(provider, server, deployments.clone()))
                .collect::<Result<_, _>>()?;
            clients.insert(provider.name.clone(), servers);
        }
        Ok(Upstreams {
            clients,
            max_answer_bytes: config.server.max_answer_bytes,
        })
    }

    /// The client of the provider's server at `server` (its index in `provider.servers`).
    fn client(&self, provider: &Provider, server: usize) -> &ProviderClient {
        &self
            .clients
            .get(&provider.name)
            .expect("a client exists for every configured provider")[server]
    }

    /// Sends `body` to `tier` on its provider's server at `server` and waits for its answer: the whole body, or for a stream its first
    /// event. A failure anywhere before that point is returned, so the caller may try another tier.
    pub async fn send(
        &self,
        tier: &Tier,
        server: usize,
        endpoint: Endpoint,
        body: Vec<u8>,
        stream: bool,
    ) -> Result<Reply, UpstreamError> {
        self.send_traced(tier, server, endpoint, body, stream, FromClient::default())
            .await
    }

    /// [`Upstreams::send`] with what the call carries of the client's request besides its body.
    pub async fn send_traced(
        &self,
        tier: &Tier,
        server: usize,
        endpoint: Endpoint,
        body: Vec<u8>,
        stream: bool,
        from_client: FromClient<'_>,
    ) -> Result<Reply, UpstreamError> {
        let provider = &tier.provider;
        let timeouts = tier.timeouts;
        let started = Instant::now();
        let client = self.client(provider, server);
        let Prepared {
            url,
            via_chat,
            sent,
            body,
        } = prepare(client, tier, endpoint, body)?;
        // The endpoint's own headers mean nothing to a server that gets the request translated.
        let headers = if via_chat.is_none() {
            operators_choice(provider, from_client.headers)
        } else {
            std::borrow::Cow::Borrowed(&[][..])
        };
        let request = client.post(url, body, from_client.trace, &headers);
        // A non-streamed answer's headers come only once the whole answer is generated, so only
        // `total` bounds the wait for them; `first_byte` is the time to a stream's first chunk.
        let head_limit = if stream {
            timeouts.first_byte.min(timeouts.total)
        } else {
            timeouts.total
        };
        // A stream translated for an endpoint whose events say the input first (Messages'
        // `message_start`) opens with the gateway's estimate of the prompt, made while the
        // upstream works on its first byte, in a time bounded whatever the prompt's length: a
        // fast upstream's first byte must not wait on a long prompt counted whole.
        let estimate = async {
            match &via_chat {
                Some((via, request)) if stream && via.prompt_first => {
                    let count = endpoint.spec().count_prompt;
                    let body = request.clone();
                    crate::openai::tokens::estimate_off_the_loop(count, &tier.model, body)
                        .await
                        .unwrap_or(0)
                }
                _ => 0,
            }
        };
        let (response, estimate) =
            tokio::join!(tokio::time::timeout(head_limit, request), estimate);
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(err),
            Err(_) if head_limit == timeouts.total => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutTotal,
                    head_limit,
                ));
            }
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutFirstByte,
                    head_limit,
                ));
            }
        };
        let status = response.status();
        if stream && status.is_success() {
            let left = timeouts.first_byte.saturating_sub(started.elapsed());
            let deadline = tokio::time::Instant::from_std(started + timeouts.total);
            return UpstreamStream::open(
                response,
                left,
                timeouts.idle,
                deadline,
                self.max_answer_bytes.min(MAX_EVENT_BYTES),
                wire::EventReader::of(
                    client.wire.events(sent),
                    via_chat.map(|(via, request)| (via.stream)(&request, estimate)),
                ),
            )
            .await
            .map(Reply::Stream);
        }
        let headers = (!status.is_success()).then(|| response.headers().clone());
        let left = timeouts.total.saturating_sub(started.elapsed());
        let read = read_capped(response, self.max_answer_bytes, "server.max_answer_bytes");
        let body = match tokio::time::timeout(left, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutTotal,
                    timeouts.total,
                ));
            }
        };
        if let Some(headers) = headers {
            return Err(client.wire.refusal(status, body, &headers));
        }
        let Some((via, request)) = via_chat else {
            let (body, usage) = client.wire.answer(endpoint, body)?;
            return Ok(Reply::Complete { body, usage });
        };
        let (chat, usage) = client.wire.answer(Endpoint::ChatCompletions, body)?;
        let body = (via.answer)(&chat, &request).map_err(UpstreamError::malformed)?;
        Ok(Reply::Complete {
            body: Bytes::from(body),
            usage,
        })
    }

    /// Whether `tier` can take `body` (the endpoint's request as the tier gets it) at all — its
    /// provider's format serves the endpoint, or chat completions carry it — found as a call
    /// finds it ([`Upstreams::send`]), without calling.
    pub fn can_take(
        &self,
        tier: &Tier,
        endpoint: Endpoint,
        body: Vec<u8>,
    ) -> Result<(), UpstreamError> {
        prepare(self.client(&tier.provider, 0), tier, endpoint, body).map(drop)
    }

    /// The body `tier`'s provider is asked to count `body` (a Messages request as the tier gets
    /// it) with: its fields that counting takes. A whole parse of the request, for the blocking
    /// pool where the body is large.
    pub fn count_request(&self, tier: &Tier, body: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        self.client(&tier.provider, 0).wire.count_body(body)
    }

    /// The provider's own count of a Messages request's input tokens (Anthropic's `POST
    /// …/messages/count_tokens`), `body` made by [`Upstreams::count_request`], on its server at
    /// `server`, with the provider's key and the
    /// client's headers the operator lets through, within `deadline`: the count as the provider
    /// answered it, or the provider's refusal of the request itself (a 400, not one that says the
    /// account's money is spent) as it came, or its refusal of a prompt too long for the model,
    /// or why there is none of these.
    pub async fn count_tokens(
        &self,
        tier: &Tier,
        server: usize,
        body: Vec<u8>,
        headers: &[(http::HeaderName, http::HeaderValue)],
        deadline: Duration,
    ) -> Result<ProviderCount, UpstreamError> {
        #[derive(Deserialize)]
        struct Counted {
            input_tokens: u64,
        }
        let client = self.client(&tier.provider, server);
        let Some(url) = &client.count_url else {
            return Err(lacks_endpoint(Endpoint::Messages));
        };
        let headers = operators_choice(&tier.provider, headers);
        let call = async {
            let response = client.post(url, body, None, &headers).await?;
            let status = response.status();
            let head = response.headers().clone();
            let body = read_capped(
                response,
                COUNT_BODY_BYTES,
                "the gateway's cap on a count's answer",
            )
            .await?;
            Ok::<_, UpstreamError>((status, head, body))
        };
        let (status, head, body) = tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| UpstreamError::new(UpstreamErrorKind::TimeoutTotal, deadline))??;
        if status.is_success() {
            let counted: Counted = serde_json::from_slice(&body).map_err(|err| {
                UpstreamError::malformed(format!("the count is not Anthropic's: {err}"))
            })?;
            return Ok(ProviderCount::Counted(counted.input_tokens));
        }
        let error = client.wire.refusal(status, body.clone(), &head);
        let readable = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        match error.kind {
            UpstreamErrorKind::Status(http::StatusCode::BAD_REQUEST) if readable => {
                Ok(ProviderCount::Refused(body))
            }
            UpstreamErrorKind::ContextTooLong if readable => Ok(ProviderCount::TooLong(body)),
            _ => Err(error),
        }
    }

    /// The health probe of one server: does it answer, with its key accepted? A 5xx, 429, 401, 403,
    /// 404 or redirect is down (a server without `/models` wants `health.path` set); any other
    /// answer is up, and its body (up to 1 MiB, read within the probe's timeout; empty if it is
    /// not read in time) is returned for what it says of the models.
    pub async fn probe(
        &self,
        provider: &Provider,
        server: usize,
        policy: &ProbePolicy,
    ) -> Result<Bytes, UpstreamError> {
        let url = provider.servers[server]
            .probe_url
            .as_ref()
            .expect("each server of a probed provider has its probe's URL");
        let request = self.client(provider, server).get(url)?;
        let response = match tokio::time::timeout(policy.timeout, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutFirstByte,
                    policy.timeout,
                ));
            }
        };
        let status = response.status();
        if error::provider_fault(status) {
            return Err(UpstreamError::status(status, Bytes::new(), None));
        }
        let read = read_capped(
            response,
            PROBE_BODY_BYTES,
            "the gateway's cap on a probe's answer",
        );
        Ok(match tokio::time::timeout(policy.timeout, read).await {
            Ok(Ok(body)) => body,
            _ => Bytes::new(),
        })
    }

    /// One server's Prometheus metrics page (`GET /metrics` at its host root, as vLLM serves it),
    /// read within `limit` and up to [`METRICS_BODY_BYTES`]. Only an OpenAI-format provider is
    /// asked: the hosted formats have no such page.
    pub async fn server_metrics(
        &self,
        provider: &Provider,
        server: usize,
        limit: Duration,
    ) -> ServerMetrics {
        if provider.api != Api::OpenAi {
            return ServerMetrics::NotServed;
        }
        let url = provider.servers[server]
            .base_url
            .join("/metrics")
            .expect("an absolute path always joins");
        let request = match self.client(provider, server).get(&url) {
            Ok(request) => request,
            Err(err) => return ServerMetrics::Failed(err.reason()),
        };
        let read = async {
            let response = request.await.map_err(|err| err.reason())?;
            let status = response.status();
            if matches!(status.as_u16(), 404 | 405 | 501) {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            read_capped(
                response,
                METRICS_BODY_BYTES,
                "the gateway's cap on a server's metrics",
            )
            .await
            .map(Some)
            .map_err(|err| err.reason())
        };
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(Some(page))) => ServerMetrics::Page(page),
            Ok(Ok(None)) => ServerMetrics::NotServed,
            Ok(Err(reason)) => ServerMetrics::Failed(reason),
            Err(_) => ServerMetrics::Failed(format!("no answer within {} ms", limit.as_millis())),
        }
    }

    /// The context window a local server serves `model` with, where it says so outside OpenAI's
    /// API: Ollama's `/api/show`, then llama.cpp's `/props` (see [`server_info`]). `None` when
    /// neither answers within `limit`, and at once for a provider of another wire format (a
    /// hosted API, which serves neither).
    pub async fn server_window(
        &self,
        provider: &Provider,
        server: usize,
        model: &str,
        limit: Duration,
    ) -> Option<u32> {
        if provider.api != Api::OpenAi {
            return None;
        }
        let client = self.client(provider, server);
        let base = &provider.servers[server].base_url;
        let root = |path: &str| base.join(path).ok();
        let ask = async |request: client::Call| -> Option<Bytes> {
            let response = tokio::time::timeout(limit, request).await.ok()?.ok()?;
            if !response.status().is_success() {
                return None;
            }
            tokio::time::timeout(
                limit,
                read_capped(
                    response,
                    PROBE_BODY_BYTES,
                    "the gateway's cap on a probe's answer",
                ),
            )
            .await
            .ok()?
            .ok()
        };
        let show = serde_json::to_vec(&serde_json::json!({ "model": model }))
            .expect("a JSON value serializes");
        if let Some(url) = root("../api/show")
            && let Ok(request) = client.post_to(&url, show)
            && let Some(body) = ask(request).await
            && let Some(tokens) = server_info::ollama_window(&body)
        {
            return Some(tokens);
        }
        let props = client.get(&root("../props")?).ok()?;
        let body = ask(props).await?;
        server_info::llama_cpp_window(&body)
    }

    /// `GET {base_url}/models` (Azure's `openai/models?api-version=…`): whether one server of
    /// the provider answers, and the models it serves.
    pub async fn list_models(
        &self,
        provider: &Provider,
        server: usize,
    ) -> Result<Vec<ListedModel>, UpstreamError> {
        let request = self.client(provider, server).get(
            &provider.servers[server]
                .base_url
                .join(&models_path(provider.api, provider.api_version.as_deref()))
                .expect("a relative path always joins"),
        )?;
        let limit = provider.timeouts.first_byte.min(Duration::from_secs(10));
        let response = match tokio::time::timeout(limit, request).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamErrorKind::TimeoutFirstByte,
                    limit,
                ));
            }
        };
        let status = response.status();
        let read = read_capped(
            response,
            PROBE_BODY_BYTES,
            "the gateway's cap on a probe's answer",
        );
        let body = match tokio::time::timeout(limit, read).await {
            Ok(body) => body?,
            Err(_) => return Err(UpstreamError::new(UpstreamErrorKind::TimeoutTotal, limit)),
        };
        if !status.is_success() {
            return Err(UpstreamError::status(status, body, None));
        }
        ListedModel::parse(&body)
            .map_err(|err| UpstreamError::malformed(format!("/models answer: {err}")))
    }
}

/// Reads a whole answer, refusing one larger than `limit` (before reading it, where the upstream
/// declared its length). `cap` names that limit (a setting, or which of the gateway's own caps)
/// in the error, so that the log sends no one to the wrong setting.
async fn read_capped(
    response: Response<Incoming>,
    limit: usize,
    cap: &'static str,
) -> Result<Bytes, UpstreamError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    let too_large = || {
        UpstreamError::new_detail(
            UpstreamErrorKind::AnswerTooLarge,
            format!("the answer is larger than {cap} ({limit} bytes)"),
        )
    };
    if hyper::body::Body::size_hint(response.body())
        .exact()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    match Limited::new(response.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => match err.downcast::<hyper::Error>() {
            Ok(err) => Err(UpstreamError::from_body(*err)),
            Err(err) => Err(UpstreamError::new_detail(
                UpstreamErrorKind::Transport,
                err.to_string(),
            )),
        },
    }
}

/// A model as `/v1/models` lists it, with the context window vLLM gives (`max_model_len`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedModel {
    pub id: String,
    #[serde(default)]
    pub max_model_len: Option<u32>,
}

impl ListedModel {
    pub fn parse(body: &[u8]) -> Result<Vec<ListedModel>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Listing {
            data: Vec<ListedModel>,
        }
        Ok(serde_json::from_slice::<Listing>(body)?.data)
    }
}

/// The largest server-sent event read from a stream. A chunk is a few hundred bytes, and a server
/// that sends a whole long answer as one event sends well under a megabyte; an event is buffered
/// whole before it is relayed, so `server.max_answer_bytes` (sized for the largest non-streamed
/// answers) would let one stream hold hundreds of megabytes.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// The most of a probe's answer that is read: a model list, not an answer.
const PROBE_BODY_BYTES: usize = 1 << 20;
/// A vLLM server's metrics page is tens to hundreds of kilobytes (a histogram per model and
/// LoRA adapter); a larger one is not read.
const METRICS_BODY_BYTES: usize = 4 << 20;

/// What one server's `GET /metrics` gave.
pub enum ServerMetrics {
    Page(Bytes),
    /// 404, 405 or 501: it has no such page.
    NotServed,
    /// No answer in time, a refusal, a broken connection or a page too large.
    Failed(String),
}

/// The longest `Retry-After` tierwise believes; an upstream asking for more is told no sooner
/// than this, and a breaker's cool-down caps what it waits anyway.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After` in seconds, as 429 and 503 answers carry it: any number an upstream sends (huge,
/// negative, fractional, not a number) reads without a panic, clamped to a day.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_RETRY_AFTER, |d| d.min(MAX_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    fn retry_after(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        super::retry_after(&headers)
    }

    #[test]
    fn any_retry_after_reads_without_a_panic_and_large_ones_are_clamped() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        let day = Some(super::MAX_RETRY_AFTER);
        for huge in ["1e20", "18446744073709551615", "inf", "1e308"] {
            assert_eq!(retry_after(huge), day, "{huge}");
        }
        for bad in ["-1", "NaN", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
            assert_eq!(retry_after(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Any header value an upstream can send (visible ASCII, as HTTP allows), and any number
        /// written as one: read without a panic, never beyond a day.
        #[test]
        fn retry_after_never_panics(
            text in "[ -~]{0,40}",
            number in proptest::num::f64::ANY,
        ) {
            for value in [text, number.to_string()] {
                if let Some(wait) = retry_after(&value) {
                    proptest::prop_assert!(wait <= super::MAX_RETRY_AFTER, "{value}");
                }
            }
        }
    }
}
