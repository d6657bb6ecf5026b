//! The serving threads' own guards: clients that stop reading, the names the API answers to, and
//! what shutdown waits for.

use std::time::Duration;

use tierwise::config::file::{RawProvider, spanned, text};
use tierwise_fake::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// Fresh fakes and a gateway without probes; `knobs` changes the local (vllm) provider, `server`
/// the whole configuration.
async fn gateway(
    knobs: impl FnOnce(&mut RawProvider),
    server: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| knobs(c.provider("vllm")))
        .with(server);
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

fn addr_of(gw: &TestGateway) -> String {
    gw.url.trim_start_matches("http://").to_string()
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a fresh
/// connection and reads the whole answer (the request asks to close), at most 5 s.
async fn raw_exchange(gw: &TestGateway, head: &str, body: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr_of(gw)).await.unwrap();
    let request = format!(
        "{head}\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_loses_its_slot_within_write_timeout_ms() {
    let (local, _api, gw) = gateway(
        |p| {
            p.max_in_flight = Some(spanned(1));
            // Only the write timeout can free the slot within the test's bound.
            p.timeout.total_ms = Some(60_000);
            p.timeout.idle_ms = Some(60_000);
        },
        |c| {
            c.0.server.write_timeout_ms = Some(spanned(300));
            c.0.server.max_answer_bytes = Some(spanned(1024 * 1024));
        },
    )
    .await;
    // 12 MB of stream: more than the kernel buffers between the gateway and a client that
    // reads nothing (4 MB of send buffer at most here, 4 kB of receive buffer).
    let word = "w".repeat(4000);
    local.update(|b| b.reply = vec![word.as_str(); 3000].join(" "));

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr_of(&gw).parse().unwrap()).await.unwrap();
    let body = chat_stream("summarize").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    tierwise_fake::wait_until("the stream to start", Duration::from_secs(5), || {
        local.request_count() == 1
    })
    .await;
    // The stream's frames are made; the next answers are short again.
    local.update(|b| b.reply = tierwise_fake::Behavior::default().reply);

    // While the stream holds the slot the next requests spill to the API; within the write
    // timeout (and a margin for a loaded machine) the slot is back and the local tier answers.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    loop {
        let answer = gw.ask("summarize").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        if answer.header("x-tierwise-tier") == Some("local") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the stream of a client that reads nothing still holds the local slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_rebound_to_a_loopback_gateway_is_refused_and_addresses_are_served() {
    let (_local, _api, gw) = gateway(|_| {}, |_| {}).await;
    let port = gw.url.rsplit(':').next().unwrap().to_string();
    // A page on the attacker's name, rebound to 127.0.0.1: "same origin" to the browser.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        "localhost.evil.example".to_string(),
    ] {
        for (head, body) in [
            (
                format!("GET /v1/models HTTP/1.1\r\nHost: {host}"),
                String::new(),
            ),
            (
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}"
                ),
                chat("summarize", "x").to_string(),
            ),
            (
                format!("GET /admin/api/providers HTTP/1.1\r\nHost: {host}"),
                String::new(),
            ),
        ] {
            let answer = raw_exchange(&gw, &head, &body).await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{head}: {answer}");
            assert!(
                answer.contains("server.allowed_hosts") && answer.contains("permission_error"),
                "{answer}"
            );
        }
    }
    // The names a loopback gateway is reached by: loopback, its addresses with and without a
    // port, IPv6 literals, and no Host at all or an empty one (HTTP/1.0 or a script, never a
    // browser).
    for host in [
        String::new(),
        format!("localhost:{port}"),
        "LocalHost.".to_string(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
    ] {
        let answer =
            raw_exchange(&gw, &format!("GET /v1/models HTTP/1.1\r\nHost: {host}"), "").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    let answer = raw_exchange(&gw, "GET /v1/models HTTP/1.0", "").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    // Probes and scrapers reach /healthz and /metrics by whatever name.
    let answer = raw_exchange(&gw, "GET /healthz HTTP/1.1\r\nHost: evil.example", "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_lists_the_names_the_api_answers_to() {
    let (_local, _api, gw) = gateway(
        |_| {},
        |c| c.0.server.allowed_hosts = Some(vec![text("Gateway.Internal")]),
    )
    .await;
    for (host, status) in [
        ("gateway.internal:4000", "200"),
        ("GATEWAY.INTERNAL.", "200"),
        ("10.1.2.3:4000", "200"),
        // The list replaces the default: a loopback name is one more name to list.
        ("localhost", "403"),
        ("evil.example", "403"),
    ] {
        let answer =
            raw_exchange(&gw, &format!("GET /v1/models HTTP/1.1\r\nHost: {host}"), "").await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{host}: {answer}"
        );
    }
    let (_local, _api, gw) =
        gateway(|_| {}, |c| c.0.server.allowed_hosts = Some(vec![text("*")])).await;
    let answer = raw_exchange(&gw, "GET /v1/models HTTP/1.1\r\nHost: evil.example", "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_is_given_the_shutdown_grace_and_recorded() {
    let (_local, api, gw) = gateway(|_| {}, |c| c.0.server.shutdown_grace_ms = Some(5_000)).await;
    api.update(|b| {
        b.fault = tierwise_fake::Fault::SlowFirstByte { ms: 800 };
        b.prompt_tokens = 1000;
        b.completion_tokens = 500;
    });
    let store = gw.store().await;
    let since = give_up_on_api_fast(&gw).await;
    // Stopped while the upstream still works on the answer the client left: the call is paid
    // for, so it runs to its end within the grace and is recorded.
    gw.shutdown().await;
    let rows = store.requests(since, i64::MAX, None).await.unwrap();
    let row = rows
        .first()
        .expect("the abandoned request was recorded before the gateway stopped");
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (499, Some("client_closed"), Some("api_fast"))
    );
    assert_eq!((row.tokens_in, row.tokens_out), (1000, 500));
}

/// Asks `api_fast` and gives up after 100 ms, before its answer; returns when it was asked (ms).
async fn give_up_on_api_fast(gw: &TestGateway) -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let gave_up = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("api_fast", "x"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to give up");
    since
}

#[tokio::test]
async fn a_request_whose_client_left_and_cut_at_the_end_of_the_grace_is_recorded_as_cut() {
    let (_local, api, gw) = gateway(|_| {}, |c| c.0.server.shutdown_grace_ms = Some(300)).await;
    // The upstream answers long after the grace: the call is cut off, paid for or not.
    api.update(|b| b.fault = tierwise_fake::Fault::SlowFirstByte { ms: 10_000 });
    let store = gw.store().await;
    let since = give_up_on_api_fast(&gw).await;
    tierwise_fake::wait_until(
        "the upstream call to be made",
        Duration::from_secs(5),
        || api.request_count() == 1,
    )
    .await;
    gw.shutdown().await;
    let rows = store.requests(since, i64::MAX, None).await.unwrap();
    let [row] = &rows[..] else {
        panic!("one row for the request cut at the end of the grace: {rows:?}")
    };
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (499, Some("cut_at_shutdown"), Some("api_fast"))
    );
    // The server it was cut on is named, as an answered request's is.
    assert_eq!(row.server.as_deref(), Some("openai"));
    // The upstream may have charged for a call nobody saw end: unknown, not zero.
    assert_eq!(row.cost_pusd, None);
    assert!(row.latency_us >= 300_000, "{}", row.latency_us);
}

#[tokio::test]
async fn a_stream_still_relayed_when_the_grace_ends_is_recorded_as_cut_not_as_left() {
    use futures_util::StreamExt;
    let (_local, api, gw) = gateway(|_| {}, |c| c.0.server.shutdown_grace_ms = Some(300)).await;
    // A chunk every 10 s: the stream outlasts the grace while its client reads on.
    api.update(|b| b.chunk_delay_ms = 10_000);
    let store = gw.store().await;
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&crate::util::chat_stream("api_fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response
        .headers()
        .get("x-tierwise-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the first chunk arrives");
    gw.shutdown().await;
    let row = store
        .request(&id)
        .await
        .unwrap()
        .expect("the stream cut at the end of the grace is in the ledger");
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.stream),
        (499, Some("cut_at_shutdown"), true)
    );
    drop(body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_grace_while_a_token_count_runs() {
    let up = FakeUpstream::start().await;
    // An answer without usage whose count (parsing 62 MB, counting its first 4 MiB) keeps the
    // blocking pool busy ~3.5 s in a debug build: past the bound below, which must stay under
    // that work for the test to see a shutdown that waits for it.
    up.update(|b| {
        b.fault = tierwise_fake::Fault::NoUsage;
        b.reply = "Tokens are counted here one by one, 42 times over. ".repeat(1_200_000);
    });
    let dir = std::env::temp_dir().join(format!("tierwise-serving-grace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes();
    config.0.server.api_keys = None;
    config.0.server.shutdown_grace_ms = Some(500);
    config.0.ledger.url = Some(text("sqlite://ledger.db"));
    let path = dir.join("tierwise.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let (mut child, url) =
        crate::proof::serve(&path, &[("LOCAL_KEY", "k")], &dir.join("log")).await;
    let asked = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("local", "x"))
            .send()
            .await
    });
    tierwise_fake::wait_until("the answer to be asked for", Duration::from_secs(5), || {
        up.request_count() == 1
    })
    .await;
    let terminated = std::time::Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the gateway exits")
    .unwrap();
    let took = terminated.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_millis(500 + 1_500),
        "SIGTERM took {took:?} with a grace of 500 ms; log: {}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    asked.abort();
    std::fs::remove_dir_all(dir).ok();
}
