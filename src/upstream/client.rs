//! One server's HTTP client (a provider has one per server): hyper-util's pooled client over rustls, with the provider's key,
//! connect timeout and endpoint URLs resolved once, so that a call builds only its request.
//!
//! This replaced reqwest on the request path. reqwest did, per call, what tierwise never needs:
//! re-parse the URL into a `Uri`, match it against the environment's proxies, merge default
//! headers, arm a redirect policy and box the body twice; without it a non-streamed request costs
//! ~15% less CPU at c=64 (docs/benchmarks.md). What reqwest gave that we keep is here, set as
//! reqwest set it: the platform's certificate verifier (rustls-platform-verifier, aws-lc-rs),
//! HTTP/2 by ALPN, TCP keep-alive, a pool per provider, `connect_ms` over the whole connect, and
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` (resolved with the configuration, see
//! `config::proxy`; a proxied provider is reached through a CONNECT tunnel).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::wire::Wire;
use super::{UpstreamError, UpstreamErrorKind};
use crate::config::{Provider, Tier, UpstreamServer};
use crate::openai::Endpoint;

/// How long an idle pooled connection is kept, as reqwest kept it.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// TCP keep-alive on upstream connections, as reqwest sets it: a connection through a NAT or a
/// load balancer that dropped it is found out before a request waits on it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

static USER_AGENT_VALUE: HeaderValue =
    HeaderValue::from_static(concat!("tierwise/", env!("CARGO_PKG_VERSION")));
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static ANY: HeaderValue = HeaderValue::from_static("*/*");

/// The TLS settings every provider shares. Loading the platform's roots is done once.
static TLS: LazyLock<Result<rustls::ClientConfig, String>> = LazyLock::new(|| {
    use rustls_platform_verifier::BuilderVerifierExt;
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| builder.with_platform_verifier())
    .map(|builder| builder.with_no_client_auth())
    .map_err(|err| format!("TLS could not be set up with the platform's certificates: {err}"))
});

pub(super) struct ProviderClient {
    http: Client<Connector, Full<Bytes>>,
    /// The provider's wire format.
    pub(super) wire: Wire,
    /// The headers every call carries (the key, marked sensitive so that no debug output shows
    /// it), built once.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The endpoint URLs in [`Endpoint::ALL`] order, parsed once rather than on every request;
    /// `None` for an endpoint the provider's format does not serve.
    urls: Vec<Option<Uri>>,
    /// Azure OpenAI's: each deployment's endpoint URLs, in the same order.
    deployments: HashMap<String, Vec<Option<Uri>>>,
    /// Where the provider's format counts a prompt's tokens (Anthropic's `count_tokens`).
    pub(super) count_url: Option<Uri>,
}

impl ProviderClient {
    /// The client of `provider`'s `server`, which serves the Azure `deployments` its tiers name.
    pub(super) fn new<'a>(
        provider: &Provider,
        server: &UpstreamServer,
        deployments: impl Iterator<Item = &'a str>,
    ) -> Result<ProviderClient, UpstreamError> {
        let wire = Wire::new(provider);
        let headers = wire.headers(provider);
        let base = &server.base_url;
        let urls = wire.urls(provider, base)?;
        let count_url = wire.count_url(base)?;
        let deployments = deployments
            .map(|name| {
                Ok((
                    name.to_string(),
                    wire.deployment_urls(provider, base, name)?,
                ))
            })
            .collect::<Result<_, UpstreamError>>()?;
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(Connector::new(provider, server)?);
        Ok(ProviderClient {
            http,
            wire,
            headers,
            urls,
            deployments,
            count_url,
        })
    }

    /// The URL of one of the provider's endpoints for `tier`, where its format serves it.
    pub(super) fn url(&self, endpoint: Endpoint, tier: &Tier) -> Option<&Uri> {
        let urls = match &tier.deployment {
            Some(deployment) => self.deployments.get(deployment)?,
            None => &self.urls,
        };
        urls[endpoint as usize].as_ref()
    }

    /// `POST`s a JSON body to one of the provider's endpoints, with the call's trace context and
    /// the client's headers its endpoint passes on (grouped by name): a client's value replaces
    /// the provider's, and a repeated header goes on repeated.
    pub(super) fn post(
        &self,
        uri: &Uri,
        body: Vec<u8>,
        trace: Option<&crate::traces::Propagation>,
        passed: &[(HeaderName, HeaderValue)],
    ) -> Call {
        let mut request = self.request(Method::POST, uri.clone(), body);
        if let Some(trace) = trace {
            trace.insert_into(request.headers_mut());
        }
        let headers = request.headers_mut();
        let mut last: Option<&HeaderName> = None;
        for (name, value) in passed {
            if last == Some(name) {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
                last = Some(name);
            }
        }
        Call(self.http.request(request))
    }

    /// `POST`s a JSON body to any URL of the provider (a server's own API beside OpenAI's).
    pub(super) fn post_to(&self, url: &url::Url, body: Vec<u8>) -> Result<Call, UpstreamError> {
        let request = self.request(Method::POST, uri(url, "")?, body);
        Ok(Call(self.http.request(request)))
    }

    pub(super) fn get(&self, url: &url::Url) -> Result<Call, UpstreamError> {
        let request = self.request(Method::GET, uri(url, "")?, Vec::new());
        Ok(Call(self.http.request(request)))
    }

    fn request(&self, method: Method, uri: Uri, body: Vec<u8>) -> Request<Full<Bytes>> {
        let has_body = method == Method::POST;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(USER_AGENT, USER_AGENT_VALUE.clone());
        headers.insert(ACCEPT, ANY.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, JSON.clone());
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// The TLS a provider is called with: the platform's roots, or as its `tls` says — its own CA beside
/// them (or instead of them) and its client certificate for mutual TLS. Built once per provider,
/// at start; a certificate and key that cannot be used together fail the start, naming the files.
fn tls_config(provider: &Provider) -> Result<rustls::ClientConfig, UpstreamError> {
    let failed = |detail: String| UpstreamError::new_detail(UpstreamErrorKind::Connect, detail);
    let Some(tls) = &provider.tls else {
        return TLS.clone().map_err(failed);
    };
    let key = format!("providers.{}.tls", provider.name);
    let crypto = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(crypto.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| failed(format!("{key}: TLS could not be set up: {err}")))?;
    let builder = if tls.system_roots {
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(tls.roots.clone(), crypto)
                .map_err(|err| failed(format!("{key}.ca_file cannot be trusted: {err}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for root in &tls.roots {
            roots.add(root.clone()).map_err(|err| {
                failed(format!(
                    "{key}.ca_file holds a certificate that is not a CA's: {err}"
                ))
            })?;
        }
        builder.with_root_certificates(roots)
    };
    match &tls.client {
        None => Ok(builder.with_no_client_auth()),
        Some(client) => builder
            .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
            .map_err(|err| {
                failed(format!(
                    "{key}: the client certificate {} and the key {} cannot be used together: {err}",
                    client.cert_file, client.key_file
                ))
            }),
    }
}

/// A call under way: its answer's head, or the failure classified.
pub(super) struct Call(ResponseFuture);

impl Future for Call {
    type Output = Result<Response<Incoming>, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map_err(UpstreamError::from_client)
    }
}

/// `base` joined with `path`, as the `Uri` hyper sends.
pub(super) fn uri(base: &url::Url, path: &str) -> Result<Uri, UpstreamError> {
    let joined = base.join(path).map_err(|err| {
        UpstreamError::new_detail(UpstreamErrorKind::Connect, format!("bad URL: {err}"))
    })?;
    Uri::try_from(joined.as_str()).map_err(|err| {
        UpstreamError::new_detail(UpstreamErrorKind::Connect, format!("bad URL: {err}"))
    })
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A provider's connector: straight to the host, or through its proxy's CONNECT tunnel; either
/// way `connect_ms` bounds all of it (TCP, the proxy's answer, the TLS handshake), as it did
/// with reqwest. A connection is made once per pooled connection, so the one box per connect
/// costs nothing per request.
#[derive(Clone)]
struct Connector {
    route: Route,
    timeout: Duration,
}

#[derive(Clone)]
enum Route {
    Direct(HttpsConnector<HttpConnector>),
    Tunnel(HttpsConnector<Tunnel<HttpConnector>>),
}

impl Connector {
    fn new(provider: &Provider, server: &UpstreamServer) -> Result<Connector, UpstreamError> {
        let mut tcp = HttpConnector::new();
        // hyper-rustls does TLS on top; this connector must let `https` through.
        tcp.enforce_http(false);
        // A local model server runs on the same host; Nagle's algorithm meeting delayed ACKs
        // would add ~40 ms to every keep-alive request.
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        tcp.set_connect_timeout(Some(provider.timeouts.connect));
        let tls = tls_config(provider)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2();
        let route = match &server.proxy {
            None => Route::Direct(https.wrap_connector(tcp)),
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri.clone(), tcp);
                if let Some(auth) = &proxy.auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Route::Tunnel(https.wrap_connector(tunnel))
            }
        };
        Ok(Connector {
            route,
            timeout: provider.timeouts.connect,
        })
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.route {
            Route::Direct(connector) => connector.poll_ready(cx),
            Route::Tunnel(connector) => connector.poll_ready(cx),
        }
    }

    fn call(&mut self, destination: Uri) -> Connecting {
        let connecting: Connecting = match &mut self.route {
            Route::Direct(connector) => Box::pin(connector.call(destination)),
            Route::Tunnel(connector) => Box::pin(connector.call(destination)),
        };
        let limit = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within connect_ms ({} ms)", limit.as_millis()),
                )) as BoxError),
            }
        })
    }
}
