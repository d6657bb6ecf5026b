//! The way out to a provider: TLS with the platform's certificate verifier, and HTTP proxies
//! (CONNECT tunnels) from the configuration or the environment. The upstream client is our own
//! set-up of hyper-util and rustls, so what reqwest gave for free is proven here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tierwise_fake::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::{TestConfig, TestGateway};
use tierwise::config::file::text;

/// A CONNECT proxy that keeps the head of every request it gets and answers it with `reply`;
/// after a 200 it tunnels to the host the request named.
async fn connect_proxy(reply: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                client.write_all(reply.as_bytes()).await.unwrap();
                if !reply.starts_with("HTTP/1.1 200") {
                    return;
                }
                let target = head.split(' ').nth(1).unwrap().to_string();
                let mut upstream = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, heads)
}

/// A TLS front for `target` with a self-signed certificate for `localhost`; returns its address
/// and the certificate (PEM), which no platform trusts unless told to.
async fn tls_front(target: SocketAddr) -> (SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut upstream = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (addr, cert_pem)
}

/// The local provider behind a proxy at `proxy`; the API tier direct.
fn through_proxy(local: &FakeUpstream, api: &FakeUpstream, proxy: &str) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let vllm = c.provider("vllm");
        vllm.health.enabled = Some(false);
        vllm.proxy = Some(text(proxy));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_proxy_is_reached_through_its_tunnel_with_the_credentials() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let (proxy, heads) = connect_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
    let config = through_proxy(&local, &api, &format!("http://tw:s3cret-pw@{proxy}"));
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        let answer = gw.ask("summarize").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    }
    assert_eq!(local.requests().len(), 3);
    let heads = heads.lock().unwrap().clone();
    // One tunnel, kept alive and pooled like a direct connection.
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_lowercase();
    assert!(
        head.starts_with(&format!("connect {} http/1.1\r\n", local.addr)),
        "{head}"
    );
    // base64("tw:s3cret-pw")
    assert!(
        head.contains("proxy-authorization: basic dhc6cznjcmv0lxb3\r\n"),
        "{head}"
    );
    assert!(api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_the_tunnel_is_a_connect_failure_and_the_next_tier_answers() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let (proxy, heads) = connect_proxy("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
    let gw = TestGateway::start(&through_proxy(&local, &api, &format!("http://{proxy}"))).await;
    gw.ask("summarize")
        .await
        .assert_served_by("api_fast", "local:connect_error");
    assert_eq!(heads.lock().unwrap().len(), 1);
    assert!(local.requests().is_empty());
}

/// An HTTPS upstream whose certificate no platform root vouches for is refused during the
/// handshake, before the request (and its key) is sent, and the next tier answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_untrusted_certificate_is_refused_before_the_key_is_sent() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let (front, _) = tls_front(local.addr).await;
    let https = format!("https://localhost:{}/v1", front.port());
    let config = TestConfig::two_tier(&https, &api.base_url()).with(|c| {
        c.provider("vllm").health.enabled = Some(false);
    });
    let gw = TestGateway::start(&config).await;
    gw.ask("summarize")
        .await
        .assert_served_by("api_fast", "local:connect_error");
    // Asked of the local tier alone, the client is told why.
    let alone = gw.ask("local").await;
    assert_eq!(alone.status, 502, "{}", alone.text);
    assert!(
        alone.text.contains("local: connect_error") && alone.text.contains("certificate"),
        "{}",
        alone.text
    );
    assert!(
        local.requests().is_empty(),
        "a request went to an untrusted server"
    );
}

/// The same upstream, trusted through the platform's own means (`SSL_CERT_FILE`, which the
/// platform verifier reads on Linux): the whole request goes over TLS and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_the_platform_trusts_answers_over_tls() {
    let local = FakeUpstream::start().await;
    let (front, cert_pem) = tls_front(local.addr).await;
    let dir = std::env::temp_dir().join(format!("tierwise-tls-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    let config = dir.join("tierwise.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[ledger]
url = "sqlite://{ledger}"
[providers.secure]
base_url = "https://localhost:{port}/v1"
health = {{ enabled = false }}
[tiers]
local = {{ provider = "secure", model = "m" }}
[routes.summarize]
kind = "summarization"
tiers = ["local"]
"#,
            ledger = dir.join("ledger.db").display(),
            port = front.port(),
        ),
    )
    .unwrap();
    let ca = ca.display().to_string();
    let (child, url) =
        crate::proof::serve(&config, &[("SSL_CERT_FILE", &ca)], &dir.join("log")).await;
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "summarize",
            "messages": [{"role": "user", "content": "hello over tls"}]
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let tier = answer.headers().get("x-tierwise-tier").cloned();
    let body = answer.text().await.unwrap();
    crate::proof::signal(&child, "-TERM");
    tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(tier.unwrap(), "local");
    assert_eq!(local.requests().len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

/// A TLS server that takes the connection and never answers the handshake (or a proxy that never
/// answers CONNECT) is given up at `connect_ms`, named as a connect timeout, not left to the much
/// longer first-byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_is_given_up_at_connect_ms() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let api = FakeUpstream::start().await;
    let local = FakeUpstream::start().await;
    for (name, base_url, proxy) in [
        ("tls", format!("https://localhost:{port}/v1"), None),
        (
            "proxy",
            local.base_url(),
            Some(format!("http://127.0.0.1:{port}")),
        ),
    ] {
        let config = TestConfig::two_tier(&base_url, &api.base_url()).with(|c| {
            let vllm = c.provider("vllm");
            vllm.health.enabled = Some(false);
            vllm.proxy = proxy.as_deref().map(text);
            vllm.timeout.connect_ms = Some(300);
            vllm.timeout.first_byte_ms = Some(20_000);
            vllm.timeout.total_ms = Some(30_000);
        });
        let gw = TestGateway::start(&config).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), gw.ask("summarize"))
            .await
            .unwrap_or_else(|_| panic!("{name}: not given up long before first_byte_ms"));
        assert_eq!(answer.status, 200, "{name}: {}", answer.text);
        assert_eq!(
            answer.header("x-tierwise-fallback"),
            Some("local:timeout_connect"),
            "{name}"
        );
    }
    held.abort();
}
