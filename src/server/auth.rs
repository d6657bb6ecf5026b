//! Who may call: a bearer key from `server.api_keys` on `/v1` (or in the header the endpoint's
//! clients send it in, `x-api-key` on Anthropic's `/v1/messages`, which wins where both are
//! sent), `server.admin_key` on `/admin/api` (the client keys when no admin key is set; closed
//! when no key at all is, unless opened), an optional `server.metrics_key` on `/metrics`, all
//! compared in constant time; and no browser pages on `/v1`, nor on either of them under a name
//! `server.allowed_hosts` does not list. With no client key configured `/v1` is open; start-up
//! warns loudly about it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::App;
use super::error::ApiError;
use crate::config::{AdminAccess, ClientKey};
use crate::openai::Endpoint;

/// An error in the shape of the endpoint `request` is for; on the model list, which every
/// endpoint's clients read, Anthropic's for a client that sends `anthropic-version`, as the list
/// itself is.
fn shaped(error: ApiError, request: &Request) -> Response {
    let path = request.uri().path();
    let endpoint = Endpoint::at(path).or_else(|| {
        ((path == "/v1/models" || path.starts_with("/v1/models/"))
            && request.headers().contains_key("anthropic-version"))
        .then_some(Endpoint::Messages)
    });
    match endpoint {
        Some(endpoint) => error.on(endpoint).into_response(),
        None => error.into_response(),
    }
}

pub async fn require_client_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    check(&app.snapshot().config.server.api_keys, request, next).await
}

pub async fn require_admin_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    match &app.snapshot().config.server.admin {
        AdminAccess::Key(key) => check(std::slice::from_ref(key), request, next).await,
        AdminAccess::ClientKeys => check(&app.snapshot().config.server.api_keys, request, next).await,
        AdminAccess::Open => next.run(request).await,
        AdminAccess::Closed => ApiError::forbidden(
            "The admin API is closed: no key is configured. Set server.admin_key (or server.open_admin = true on a trusted network).",
        )
        .into_response(),
    }
}

/// A page on `http://evil.example:4000` whose name the attacker's DNS then points at 127.0.0.1
/// reaches a gateway on the user's machine as "same origin": its `Origin` matches its `Host`, and
/// the browser lets it read the answers. Only the name in `Host` gives it away.
pub async fn require_allowed_host(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(http::header::HOST)
        .map(|host| host.to_str().unwrap_or("?"));
    if app.snapshot().config.server.allowed_hosts.allows(host) {
        return next.run(request).await;
    }
    let host: String = host.unwrap_or_default().chars().take(100).collect();
    let error = ApiError::forbidden(&format!(
        "This gateway does not answer to the host name in `Host: {host}` (a guard against DNS \
         rebinding). If clients reach it by that name, add it to server.allowed_hosts."
    ));
    shaped(error, &request)
}

pub async fn require_metrics_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    match &app.snapshot().config.server.metrics_key {
        Some(key) => check(std::slice::from_ref(key), request, next).await,
        None => next.run(request).await,
    }
}

/// The API is for backends, not for web pages: any page a user visits could otherwise POST to a
/// gateway on localhost and spend its provider keys. A browser marks such a request with
/// `Origin` (cross-origin) and can send it without a preflight only with a non-JSON content type;
/// either is refused.
pub async fn refuse_browsers(request: Request, next: Next) -> Response {
    match browser_refusal(&request, true) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// The same for a POST that takes no body (`/admin/api/reload`): it may come without a content
/// type (`curl -X POST`), but one it has must be JSON, and a cross-origin page is refused.
pub async fn refuse_browsers_bodyless(request: Request, next: Next) -> Response {
    match browser_refusal(&request, false) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

fn browser_refusal(request: &Request, content_type_required: bool) -> Option<Response> {
    let headers = request.headers();
    let same_origin = |origin: &str| {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        host.is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host)
        })
    };
    if let Some(origin) = headers.get(http::header::ORIGIN)
        && !origin.to_str().is_ok_and(same_origin)
    {
        let error = ApiError::forbidden(
            "Cross-origin browser requests are refused: call this gateway from your backend.",
        );
        return Some(shaped(error, request));
    }
    if request.method() == http::Method::POST {
        let content_type = headers.get(http::header::CONTENT_TYPE);
        let json = content_type
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json && (content_type_required || content_type.is_some()) {
            return Some(shaped(ApiError::unsupported_media_type(), request));
        }
    }
    None
}

async fn check(keys: &[Arc<ClientKey>], mut request: Request, next: Next) -> Response {
    if keys.is_empty() {
        return next.run(request).await;
    }
    let path = request.uri().path();
    let key_header = match Endpoint::at(path) {
        Some(endpoint) => endpoint.spec().key_header,
        // The model list serves every endpoint's clients: Anthropic's SDK lists models (and
        // Claude-Code-style clients check their key there) with its own header.
        None if path == "/v1/models" || path.starts_with("/v1/models/") => Endpoint::ALL
            .iter()
            .find_map(|endpoint| endpoint.spec().key_header),
        None => None,
    };
    let headers = request.headers();
    // The endpoint's own header wins where both are sent: Anthropic's SDKs send the key in
    // `x-api-key`, and a client may carry an unrelated `Authorization` beside it (a proxy's, an
    // environment's), so that one would be refused as a wrong key. An empty one is no key: a
    // client that clears it (`x-api-key:`) means the Bearer it sends.
    let presented = key_header
        .and_then(|name| headers.get(name))
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.trim().is_empty())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    value
                        .strip_prefix("Bearer ")
                        .or_else(|| value.strip_prefix("bearer "))
                })
        })
        .map(str::trim)
        .map(str::to_owned);
    let Some(presented) = presented else {
        let message = match key_header {
            Some(name) => format!(
                "Missing API key: send `{name}: <key>` or `Authorization: Bearer <key>` with a key this gateway accepts."
            ),
            None => "Missing API key: send `Authorization: Bearer <key>` with a key this gateway accepts.".to_string(),
        };
        return shaped(ApiError::unauthorized(&message), &request);
    };
    // Every key is compared, so the time taken does not tell which one came close.
    let mut matched = None;
    for key in keys {
        if bool::from(key.secret.expose().as_bytes().ct_eq(presented.as_bytes())) {
            matched = Some(key.clone());
        }
    }
    if let Some(key) = matched {
        request.extensions_mut().insert(CallerKey(key));
        next.run(request).await
    } else {
        shaped(
            ApiError::unauthorized("Incorrect API key provided."),
            &request,
        )
    }
}

/// Which configured key a request came with.
#[derive(Debug, Clone)]
pub struct CallerKey(pub Arc<ClientKey>);
