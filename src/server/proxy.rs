//! The request path of every endpoint in [`Endpoint::ALL`], in the order docs/design.md gives
//! it: read the body (bounded) → read what routing needs → resolve the route → admission (the
//! limits: refuse, reserve, or pass over tiers; [`crate::limits`]) → run the tier chain →
//! answer (normalized to the route's output contract where it has one) or relay the stream (as it
//! came; the contract's verdict is recorded at its end) → end the request in [`crate::outcome`].
//! Authentication has already happened in a layer in front.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::auth::CallerKey;
use super::detach::{Detachable, Waiting};
use super::error::ApiError;
use super::relay::{RelayTerms, SseRelay};
use super::{App, RequestId, Snapshot};
use crate::cache::{Directives, Entry, Lookup, Stored};
use crate::config::{AllOpen, ClientKey};
use crate::ledger::{Answer, NO_ROUTE, RequestRow, Tokens};
use crate::limits::{Admission, Admitted, Ask, Quota, Refusal};
use crate::openai::{Endpoint, RequestBody};
use crate::outcome::{Ending, Exchange, Start};
use crate::route::Resolved;
use crate::route::chain::{ChainRun, Served, Unserved};
use crate::route::contract;
use crate::stored::Keep;
use crate::traces::RequestTrace;
use crate::upstream::Reply;

const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-tierwise-route");
const TIER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-tier");
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-tierwise-provider");
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-tierwise-fallback");
const CONTRACT_HEADER: HeaderName = HeaderName::from_static("x-tierwise-contract");
const COST_HEADER: HeaderName = HeaderName::from_static("x-tierwise-cost-usd");
const CACHE_HEADER: HeaderName = HeaderName::from_static("x-tierwise-cache");

/// Who is calling: the request id and the key, set by the layers in front.
pub struct Caller {
    id: RequestId,
    pub(super) key: Option<Arc<ClientKey>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            id: parts
                .extensions
                .get::<RequestId>()
                .cloned()
                .unwrap_or_else(RequestId::generate),
            key: parts.extensions.get::<CallerKey>().map(|key| key.0.clone()),
        })
    }
}

/// The handler of `endpoint`'s route: reads the body, then runs the rest of the request; a client
/// that goes away leaves the rest running to its end, recorded as abandoned (499) with its real
/// usage and cost (see [`super::detach`]).
pub fn handler(
    endpoint: Endpoint,
) -> impl Fn(State<Arc<App>>, Caller, HeaderMap, Body) -> BoxFuture<'static, Response>
+ Clone
+ Send
+ Sync
+ 'static {
    move |State(app), caller, headers, body| Box::pin(handle(app, endpoint, caller, headers, body))
}

async fn handle(
    app: Arc<App>,
    endpoint: Endpoint,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The snapshot this request runs on to its end, whatever a reload swaps in meanwhile.
    let snapshot = app.snapshot();
    let server = &snapshot.config.server;
    // The request's span starts as it arrives, before its body is read.
    let trace = app.tracing.map(|tracing| tracing.begin(&headers));
    let read = read_body(body, &headers, server.max_body_bytes);
    let bytes = match tokio::time::timeout(server.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => return err.on(endpoint).into_response(),
        Err(_) => {
            return ApiError::body_timeout(server.body_timeout)
                .on(endpoint)
                .into_response();
        }
    };
    let passed = match passed_headers(endpoint.spec().passed_headers, &headers) {
        Ok(passed) => passed,
        Err(message) => return ApiError::bad_body(message).on(endpoint).into_response(),
    };
    let asks = Asks {
        route: headers
            .get(&ROUTE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        directives: Directives::of(&headers),
        trace,
        passed,
    };
    let rest = Detachable::new(|client| async move {
        proxy(&app, &snapshot, endpoint, caller, asks, bytes, &client)
            .await
            .unwrap_or_else(|err| err.on(endpoint).into_response())
    });
    rest.await.unwrap_or_else(|_| {
        ApiError::internal("the request failed inside the gateway; see its log".into())
            .on(endpoint)
            .into_response()
    })
}

/// The most values one passed header may have, and the most bytes of each: Anthropic's betas are
/// a few short names, and an operator's account is not a place for a client's 60 KB header.
const MAX_PASSED_VALUES: usize = 16;
const MAX_PASSED_BYTES: usize = 1024;

/// The client's headers its endpoint passes to a tier that takes the request as it came, grouped
/// by name; refused when one is not what the upstream takes: empty, not a comma-separated list of
/// names (`2023-06-01`, `context-1m-2025-08-07`), a version given twice, or over the bounds.
pub(super) fn passed_headers(
    names: &[&'static str],
    headers: &HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut passed = Vec::new();
    for name in names {
        let values = headers.get_all(*name);
        let count = values.iter().count();
        for value in values {
            let well_formed = value.len() <= MAX_PASSED_BYTES
                && count <= MAX_PASSED_VALUES
                && !(name.ends_with("-version") && count > 1)
                && value.to_str().is_ok_and(|text| {
                    let mut items = text.split(',').map(str::trim).filter(|i| !i.is_empty());
                    items.clone().next().is_some()
                        && items.all(crate::config::is_beta_name)
                        && !(name.ends_with("-version") && text.contains(','))
                });
            if !well_formed {
                return Err(format!(
                    "The header {name} is not one the upstream takes: give {}, of letters, digits, '-', '_' and '.' (at most {MAX_PASSED_VALUES} headers of at most {MAX_PASSED_BYTES} bytes), or leave it out.",
                    if name.ends_with("-version") {
                        "one version such as 2023-06-01"
                    } else {
                        "a comma-separated list of names such as context-1m-2025-08-07"
                    }
                ));
            }
            passed.push((HeaderName::from_static(name), value.clone()));
        }
    }
    Ok(passed)
}

/// What the client's headers ask of a request besides its body.
struct Asks {
    /// `x-tierwise-route`: the route its cost is attributed to.
    route: Option<String>,
    /// `Cache-Control`, as the route's cache reads it.
    directives: Directives,
    /// The request's trace, where traces are exported: the client's `traceparent` continued.
    trace: Option<Box<RequestTrace>>,
    /// The client's headers its endpoint passes to a tier that takes the request as it came
    /// (Anthropic's version and betas); empty on the other endpoints.
    passed: Vec<(HeaderName, HeaderValue)>,
}

async fn proxy(
    app: &App,
    snapshot: &Arc<Snapshot>,
    endpoint: Endpoint,
    caller: Caller,
    asks: Asks,
    bytes: Bytes,
    client: &Waiting,
) -> Result<Response, ApiError> {
    // A request that waits on an identical one's answer (the cache's single flight) waited from
    // here: its row's time and latency count from its arrival, not from its lookup's end.
    let arrived = (std::time::Instant::now(), std::time::SystemTime::now());
    let Asks {
        route: route_header,
        directives,
        mut trace,
        passed,
    } = asks;
    let parsed = RequestBody::parse(endpoint, &bytes)?;
    if let Some(check) = endpoint.spec().check_prompt {
        let body = bytes.clone();
        off_the_loop(bytes.len(), move || check(&body)).await??;
    }
    // An endpoint with kept state (Responses) may continue an earlier answer: its body is then
    // written anew with the turns before, and read again.
    let scope = caller.key.as_ref().map_or("", |key| key.id.as_str());
    let max_body = snapshot.config.server.max_body_bytes;
    let prepared = app
        .stored
        .prepare(&parsed, &bytes, scope, &caller.id.0, max_body)
        .await?;
    let request = match &prepared.body {
        Some(body) => RequestBody::parse(endpoint, body)?,
        None => parsed,
    };
    let bytes = prepared.body.clone().unwrap_or_else(|| bytes.clone());
    let keep = prepared.keep;
    if let Some(trace) = &mut trace {
        trace.requested_model = request.model.to_string();
    }
    let resolved = snapshot
        .routes
        .resolve(&request.model, route_header.as_deref())?;
    let primary_demoted = resolved
        .target
        .route
        .as_ref()
        .is_some_and(|route| app.watches.demoted(route));
    let admission = snapshot
        .limits
        .admit(&Ask {
            key: caller.key.as_ref(),
            route: resolved.route,
            called: resolved.target.route.as_ref(),
            chain: &resolved.target.chain,
            request: &request,
            primary_demoted,
        })
        .await;
    let (admitted, refusal) = match admission {
        Admission::Admitted(admitted) => (admitted, None),
        Admission::Refused(refusal) => (Admitted::default(), Some(refusal)),
    };
    let Admitted { hold, skips, quota } = admitted;
    // Only a route named by `model` runs its own chain and prompts, which is what its cache keeps.
    let lookup = match (&refusal, &resolved.target.route) {
        // A kept answer is never read from the cache nor fills it: its id is its own, continued by
        // the key that asked; another key's hit would carry an id it cannot continue.
        (None, Some(route)) if keep.as_ref().is_none_or(Keep::cacheable) => Some(
            app.cache
                .lookup(
                    route,
                    caller.key.as_ref().map(|key| key.id.as_str()),
                    &request,
                    &passed,
                    directives,
                    client.left(),
                )
                .await,
        ),
        // Refused at admission: the cache was never a question.
        _ if refusal.is_some() => None,
        _ => Some(Lookup::Bypass(None)),
    };
    // One word for the header, the metric and the trace.
    let cache_word = lookup.as_ref().and_then(Lookup::word);
    if let Some(word) = cache_word {
        let route = resolved.route.map_or(NO_ROUTE, |route| route.name.as_str());
        crate::metrics::cache_lookup(route, word);
    }
    let (hit, ticket, left_waiting) = match lookup {
        Some(Lookup::Hit(entry)) => (Some(entry), None, false),
        Some(Lookup::Miss(ticket) | Lookup::Bypass(ticket)) => (None, ticket, false),
        Some(Lookup::Left) => (None, None, true),
        None => (None, None, false),
    };
    let record = ticket.as_ref().map(|ticket| ticket.max_bytes());
    let mut exchange =
        snapshot.outcomes.begin(Start {
            id: caller.id.0,
            endpoint,
            stream: request.stream,
            route: resolved.route.cloned(),
            client_key: caller.key.as_ref().map(|key| key.id.clone()),
            key_name: caller.key.as_ref().and_then(|key| key.terms.name.clone()),
            body: bytes.clone(),
            // Only a route named by `model` runs its own chain and prompts, which is what is checked.
            // A cache hit is not checked: its answer was, if at all, when it filled the cache.
            sampled: refusal.is_none()
                && hit.is_none()
                && !left_waiting
                && resolved.target.route.as_ref().is_some_and(|route| {
                    endpoint.spec().said.is_some() && app.watches.sampled(route)
                }),
            hold,
            cache: ticket,
            cache_word,
            trace,
        });
    exchange.arrived(arrived);
    if left_waiting {
        // Nobody reads this answer: the client has gone.
        exchange.client_left();
        exchange.end(Ending::LeftWaiting).deliver().await;
        return Ok(client_closed());
    }
    if let Some(refusal) = refusal {
        return Ok(refuse_at_admission(exchange, endpoint, refusal).await);
    }
    if let Some(entry) = hit {
        let mut response = from_cache(exchange, &entry, &request, keep).await;
        if let Some(quota) = quota {
            set_quota(response.headers_mut(), &quota);
        }
        return Ok(response);
    }
    let run = ChainRun {
        upstreams: snapshot.upstreams(app.thread),
        health: &snapshot.health,
        chain: &resolved.target.chain,
        when_all_open: resolved
            .target
            .route
            .as_ref()
            .map_or(AllOpen::TryPrimary, |route| route.when_all_open),
        primary_demoted,
        skips: &skips,
        request_id: exchange.id(),
        called: exchange.called(),
        trace: exchange.trace(),
        client_headers: &passed,
        client_gone: &|| client.gone(),
    };
    let result = run.run(&request).await;
    if client.gone() {
        exchange.client_left();
    }
    let mut response = match result {
        Ok(served) => {
            let max_text = snapshot.config.server.max_answer_bytes;
            let terms = Terms {
                max_text,
                record,
                keep,
            };
            answer(
                exchange,
                served,
                resolved,
                &request,
                terms,
                snapshot.clone(),
            )
            .await
        }
        Err(unserved) => refuse(exchange, endpoint, &unserved).await,
    };
    if let Some(value) = cache_word {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(value));
    }
    if let Some(quota) = quota {
        set_quota(response.headers_mut(), &quota);
    }
    Ok(response)
}

/// What a request whose client has gone answers, for nobody (499 in nginx's words).
fn client_closed() -> Response {
    let mut response = Response::default();
    *response.status_mut() = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
    response
}

/// Admission answered: the client gets the refusal, the ledger a row with its status.
async fn refuse_at_admission(exchange: Exchange, endpoint: Endpoint, refusal: Refusal) -> Response {
    let ended = exchange.end(Ending::Refused {
        status: refusal.status(),
        reason: refusal.reason(),
    });
    let quota = refusal.quota();
    let mut response = ApiError::from(refusal).on(endpoint).into_response();
    if let Some(quota) = quota {
        set_quota(response.headers_mut(), &quota);
    }
    set_headers(response.headers_mut(), Facts::from(&ended.outcome.request));
    ended.deliver().await;
    response
}

/// No tier answered: the client gets the error, the ledger the attempts.
async fn refuse(exchange: Exchange, endpoint: Endpoint, unserved: &Unserved) -> Response {
    let mut response = ApiError::unserved(unserved, exchange.route_name())
        .on(endpoint)
        .into_response();
    let ended = exchange.end(Ending::Unserved {
        status: response.status().as_u16(),
        failure: unserved,
    });
    set_headers(response.headers_mut(), Facts::from(&ended.outcome.request));
    ended.deliver().await;
    response
}

/// What an answer is given besides itself.
struct Terms {
    /// The most of a stream's text kept (`server.max_answer_bytes`).
    max_text: usize,
    /// The most of a stream's events recorded for the route's cache, where it fills it.
    record: Option<usize>,
    /// The answer is kept for its next turn.
    keep: Option<Keep>,
}

async fn answer(
    exchange: Exchange,
    served: Served,
    resolved: Resolved<'_>,
    request: &RequestBody<'_>,
    terms: Terms,
    snapshot: Arc<Snapshot>,
) -> Response {
    let Terms {
        max_text,
        record,
        keep,
    } = terms;
    let Served { by, reply, lease } = served;
    // Only a route named by `model` sets the contract; `x-tierwise-route` attributes cost.
    let texts = request.endpoint().spec().answer_texts;
    // A request that gave its own JSON schema is held to that: its answer is JSON, which a label
    // pulled out of it would break.
    let contract_route =
        resolved.target.route.clone().filter(|route| {
            route.labels.is_some() && texts.is_some() && !request.needs().json_schema
        });
    match reply {
        Reply::Complete { body, usage } => {
            let tokens = match usage {
                Some(usage) => Tokens::from(usage),
                None => {
                    exchange
                        .uncounted(&by.tier, Answer::Body(body.clone()))
                        .count_off_loop()
                        .await
                }
            };
            let labels = contract_route.as_ref().and_then(|r| r.labels.as_deref());
            let (body, contract) = match labels.zip(texts) {
                Some((labels, texts)) => {
                    let (body, outcome) = contract::apply(body, labels, texts);
                    (body, Some(outcome.as_str()))
                }
                None => (body, None),
            };
            let ended = exchange.end(Ending::Answered {
                by: &by,
                tokens,
                contract,
                answer: &body,
            });
            let body = match keep {
                Some(keep) => keep.answered(&body).unwrap_or(body),
                None => body,
            };
            let mut response = (StatusCode::OK, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            set_headers(headers, Facts::from(&ended.outcome.request));
            ended.deliver().await;
            response
        }
        Reply::Stream(stream) => {
            let facts = Facts {
                route: exchange.route_name(),
                tier: Some(&by.tier.name),
                provider: Some(&by.server.name),
                fallback: by.fallback.as_deref(),
                cost: None,
                contract: None,
            };
            let mut headers = HeaderMap::new();
            set_headers(&mut headers, facts);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            let terms = RelayTerms {
                spec: request.endpoint().spec(),
                client_wants_usage: request.client_wants_usage,
                max_text,
                contract: contract_route,
                keep,
            };
            let relay = SseRelay::new(stream, lease, terms, exchange, by).recording(record);
            // A stream ends on the snapshot it started with, however many reloads it outlives.
            let body = relay.into_body().map(move |frame| {
                let _running_on: &Arc<Snapshot> = &snapshot;
                frame
            });
            let mut response = Response::new(Body::from_stream(body));
            *response.headers_mut() = headers;
            response
        }
    }
}

/// The route's cache answered: the answer as it was first given (a response told as this
/// request's, with an id of its own), a stream replayed event by event (its usage chunk only for
/// a client that asked, with this request's cost, 0), and a ledger row that says what the hit
/// saved.
async fn from_cache(
    exchange: Exchange,
    entry: &Entry,
    request: &RequestBody<'_>,
    keep: Option<Keep>,
) -> Response {
    let ended = exchange.end(Ending::CacheHit { entry });
    let mut response = match &entry.answer {
        Stored::Body(body) => {
            let body = match keep {
                Some(keep) => keep.answered(body).unwrap_or_else(|| body.clone()),
                None => body.clone(),
            };
            let mut response = (StatusCode::OK, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Stored::Events(events) => {
            let frames = super::relay::replay(events, request.client_wants_usage);
            let mut response = Response::new(Body::from_stream(futures_util::stream::iter(
                frames.into_iter().map(Ok::<_, std::convert::Infallible>),
            )));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    };
    let headers = response.headers_mut();
    set_headers(headers, Facts::from(&ended.outcome.request));
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    ended.deliver().await;
    response
}

/// What the `x-tierwise-*` headers of a response say.
struct Facts<'a> {
    route: Option<&'a str>,
    tier: Option<&'a str>,
    provider: Option<&'a str>,
    fallback: Option<&'a str>,
    cost: Option<String>,
    contract: Option<&'a str>,
}

impl<'a> From<&'a RequestRow> for Facts<'a> {
    fn from(row: &'a RequestRow) -> Facts<'a> {
        Facts {
            route: row.route.as_deref(),
            tier: row.tier.as_deref(),
            // The server that answered names the provider: the provider's own name where it
            // has one server.
            provider: row.server.as_deref().or(row.provider.as_deref()),
            fallback: row.fallback.as_deref(),
            cost: row.cost_pusd.map(|cost| cost.to_string()),
            contract: row.contract.as_deref(),
        }
    }
}

/// The one place the `x-tierwise-*` headers are written.
fn set_headers(headers: &mut HeaderMap, facts: Facts<'_>) {
    let pairs = [
        (ROUTE_HEADER, facts.route),
        (TIER_HEADER, facts.tier),
        (PROVIDER_HEADER, facts.provider),
        (FALLBACK_HEADER, facts.fallback),
        (COST_HEADER, facts.cost.as_deref()),
        (CONTRACT_HEADER, facts.contract),
    ];
    for (name, value) in pairs {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
}

/// The `x-ratelimit-*` headers as OpenAI sends them: each measure's limit, what is left of it
/// counting this request, and how long until the limit is whole again (`1m30s`, `2.5s`, `20ms`).
pub(super) fn set_quota(headers: &mut HeaderMap, quota: &Quota) {
    for (standing, names) in [
        (
            quota.requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            quota.tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
        (
            quota.token_counts,
            [
                "x-ratelimit-limit-token-counts",
                "x-ratelimit-remaining-token-counts",
                "x-ratelimit-reset-token-counts",
            ],
        ),
    ] {
        let Some(standing) = standing else { continue };
        let values = [
            HeaderValue::from(standing.limit),
            HeaderValue::from(standing.remaining),
            HeaderValue::from_str(&reset_text(standing.reset))
                .unwrap_or(HeaderValue::from_static("0s")),
        ];
        for (name, value) in names.into_iter().zip(values) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// A duration as OpenAI's reset headers write it: `6m0s`, `1s`, `8.64s`, `20ms`.
fn reset_text(wait: std::time::Duration) -> String {
    let ms = wait.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        let text = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", text.trim_end_matches('0'))
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

/// A body up to this long is read through where the request runs (tens of microseconds); a longer
/// one on the blocking pool.
const READ_HERE_BYTES: usize = 16 * 1024;

/// `work` over a body of `len` bytes whose cost grows with it (checking every block of a prompt,
/// estimating its tokens): where the request runs for a short body, on the blocking pool for a
/// long one, so that the event loop's other requests do not wait on it (10 MiB of small blocks
/// took ~300 ms to check).
pub(super) async fn off_the_loop<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if len <= READ_HERE_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(|_| {
        ApiError::internal("reading the request failed inside the gateway; see its log".into())
    })
}

/// Reads the whole body, refusing more than `limit` bytes before reading them where the client
/// declared its length.
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(err) => Err(ApiError::bad_body(format!(
            "could not read the request body: {err}"
        ))),
    }
}
