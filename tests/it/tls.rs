//! A provider behind a private CA, and one that wants a client certificate (mutual TLS): the CA,
//! the server's and the client's certificates are made at test time, and a TLS front for the fake
//! upstream checks them. A TLS mistake in the file is an error at start naming the key and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tierwise::config::file::{RawTls, text};
use tierwise_fake::FakeUpstream;
use tokio::net::{TcpListener, TcpStream};

use crate::util::{TestConfig, TestGateway};

/// A CA made for the test, and files in a directory of the test's own.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("tierwise-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { ca, dir };
        pki.write("ca.pem", &pki.ca.pem());
        pki
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// A certificate signed by the CA, for `localhost` or for a client; (cert DER, key DER).
    fn issue(&self, server: bool) -> (rcgen::Certificate, KeyPair) {
        let names = if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.ca).unwrap(), key)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS front for `target` with a certificate from `pki`'s CA; when `clients` is set it asks for a
/// client certificate and accepts only one from that CA.
async fn tls_front(pki: &Pki, target: SocketAddr, clients: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (cert, key) = pki.issue(true);
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if clients {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(vec![cert.der().clone(), pki.ca.der().clone()], key)
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
    addr
}

/// `vllm` reached over TLS at `front` with `tls`; `summarize` is local then the API.
fn config(front: SocketAddr, api: &FakeUpstream, tls: Option<RawTls>) -> TestConfig {
    TestConfig::two_tier(
        &format!("https://localhost:{}/v1", front.port()),
        &api.base_url(),
    )
    .without_probes()
    .with(|c| c.provider("vllm").tls = tls)
}

fn ca_only(ca: &str) -> RawTls {
    RawTls {
        ca_file: Some(text(ca)),
        ..RawTls::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_a_private_ca_is_trusted_with_its_ca_file_and_not_without() {
    let pki = Pki::new();
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let front = tls_front(&pki, local.addr, false).await;
    let ca = pki.dir.join("ca.pem").display().to_string();

    let gw = TestGateway::start(&config(front, &api, Some(ca_only(&ca)))).await;
    gw.ask("summarize").await.assert_served_by_first("local");
    gw.shutdown().await;

    // Without the CA the platform does not vouch for the server: the tier falls back.
    let gw = TestGateway::start(&config(front, &api, None)).await;
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("api_fast"),
        "{}",
        answer.text
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_the_server_asks_for() {
    let pki = Pki::new();
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let front = tls_front(&pki, local.addr, true).await;
    let ca = pki.dir.join("ca.pem").display().to_string();
    let (cert, key) = pki.issue(false);
    let cert_file = pki.write("client.pem", &cert.pem());
    let key_file = pki.write("client.key", &key.serialize_pem());

    // The CA alone: the server refuses a client without a certificate, and the tier falls back.
    let gw = TestGateway::start(&config(front, &api, Some(ca_only(&ca)))).await;
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("api_fast"),
        "{}",
        answer.text
    );
    gw.shutdown().await;

    let tls = RawTls {
        client_cert: Some(text(&cert_file)),
        client_key: Some(text(&key_file)),
        ..ca_only(&ca)
    };
    let gw = TestGateway::start(&config(front, &api, Some(tls))).await;
    for _ in 0..3 {
        gw.ask("summarize").await.assert_served_by_first("local");
    }
    gw.shutdown().await;
}

/// Each mistake names the key and the file: a file that is not there, one without a certificate,
/// a key that is not a key, half of a client identity, no root left to trust.
#[test]
fn tls_mistakes_are_start_errors_naming_the_key_and_the_file() {
    let pki = Pki::new();
    let not_pem = pki.write("notes.txt", "not a certificate");
    let ca = pki.dir.join("ca.pem").display().to_string();
    let missing = Path::new(&pki.dir).join("absent.pem").display().to_string();
    let cases = [
        (
            ca_only(&missing),
            "providers.vllm.tls.ca_file",
            missing.clone(),
        ),
        (
            ca_only(&not_pem),
            "providers.vllm.tls.ca_file",
            not_pem.clone(),
        ),
        (
            RawTls {
                client_cert: Some(text(&ca)),
                client_key: Some(text(&not_pem)),
                ..RawTls::default()
            },
            "providers.vllm.tls.client_key",
            not_pem.clone(),
        ),
        (
            RawTls {
                client_cert: Some(text(&ca)),
                ..RawTls::default()
            },
            "providers.vllm.tls",
            "client_key".to_string(),
        ),
        (
            RawTls {
                system_roots: Some(false),
                ..RawTls::default()
            },
            "providers.vllm.tls.system_roots",
            "ca_file".to_string(),
        ),
    ];
    for (tls, key, named) in cases {
        let config = TestConfig::two_tier("https://localhost:9/v1", "http://127.0.0.1:9/v1")
            .with(|c| c.provider("vllm").tls = Some(tls));
        let err =
            tierwise::config::Config::parse(&config.toml(), Path::new("t.toml"), &crate::util::env)
                .unwrap_err()
                .to_string();
        assert!(err.contains(key) && err.contains(&named), "{key}: {err}");
    }
}
