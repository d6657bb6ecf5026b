//! Two `tierwise serve` processes on one PostgreSQL ledger, as two replicas behind a load balancer
//! (examples/docker-compose.replicas.yml): one report over both replicas' traffic, a quality alert
//! announced once, and SIGTERM draining a stream on one replica while the other serves.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tierwise::config::file::{RawShadow, spanned, text};
use tierwise_fake::FakeUpstream;

use crate::proof::{KEYS, Served, exited, run_dir, serve, signal};
use crate::util::{CLIENT_KEY, Hook, TestConfig, chat, chat_stream, postgres_url};

const ROUTE: &str = "classification";
const LABELS: [&str; 3] = ["billing", "technical", "general"];

/// A replica on `config`, with a spool of its own in `dir`: its process and base URL.
async fn replica(config: TestConfig, dir: &Path, name: &str) -> (Served, String) {
    let config = config.with(|c| {
        c.0.ledger.spool = Some(text(
            dir.join(format!("{name}.spool")).display().to_string(),
        ));
    });
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.toml()).unwrap();
    serve(&path, &KEYS, &dir.join(format!("{name}.log"))).await
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).bearer_auth(CLIENT_KEY).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// Calls of `route` in a replica's report.
async fn reported_calls(http: &reqwest::Client, replica: &str, route: &str) -> u64 {
    let report = get(http, &format!("{replica}/admin/api/report")).await;
    report["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["route"] == route)
        .map(|r| r["calls"].as_u64().unwrap_or(0))
        .sum()
}

/// Whether a replica's monitor of the classification route is in an alert.
async fn alerting(http: &reqwest::Client, replica: &str) -> bool {
    let quality = get(http, &format!("{replica}/admin/api/quality")).await;
    quality["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["route"] == ROUTE && r["alerting"] == true)
}

/// Waits until `check` holds, asking again every 50 ms.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_report_once_alert_once_and_drain_alone() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    // The local tier answers every ticket wrong, the reference right: the shadow checks of both
    // replicas see the same drop.
    local.update(|b| b.label_accuracy = Some(0.0));
    api.update(|b| b.label_accuracy = Some(1.0));
    let hook = Hook::start().await;
    let ledger = postgres_url().await;
    let dir = run_dir("replicas");
    let config = || {
        TestConfig::two_tier(&local.base_url(), &api.base_url())
            .without_probes()
            .with(|c| {
                let mut shadow = RawShadow::new("api_frontier", 1.0);
                shadow.min_agreement = Some(spanned(0.9));
                shadow.window = Some(spanned(40));
                shadow.min_samples = Some(spanned(10));
                c.route(ROUTE).shadow = Some(shadow);
                c.0.alerts.webhook = Some(text(hook.url.clone()));
                c.0.ledger.url = Some(text(ledger.clone()));
                c.0.server.shutdown_grace_ms = Some(20_000);
            })
    };
    let (mut a_process, a) = replica(config(), &dir, "a").await;
    let (b_process, b) = replica(config(), &dir, "b").await;
    let http = reqwest::Client::new();

    // Traffic spread over both, as a load balancer does.
    for i in 0..60 {
        let at = if i % 2 == 0 { &a } else { &b };
        let label = LABELS[i % LABELS.len()];
        let response = http
            .post(format!("{}/v1/chat/completions", at))
            .bearer_auth(CLIENT_KEY)
            .json(&chat(
                ROUTE,
                &format!("ticket {i} needs routing [[{label}]]"),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // One report: either replica reads both replicas' calls from the ledger.
    until(
        "both replicas' 60 calls in each replica's report",
        async || {
            reported_calls(&http, &a, ROUTE).await == 60
                && reported_calls(&http, &b, ROUTE).await == 60
        },
    )
    .await;

    // Both replicas' monitors are in the alert (each fired it or took it up from the ledger).
    until("both replicas in the alert", async || {
        alerting(&http, &a).await && alerting(&http, &b).await
    })
    .await;
    until("the alert's webhook", async || {
        hook.events().iter().any(|e| e == "alert_fired")
    })
    .await;

    // A stream on replica a, held by its upstream after its first chunks.
    let gate = local.hold_streams_after(2);
    let stream = http
        .post(format!("{}/v1/chat/completions", a))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_stream("summarize"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let id = stream.headers()["x-tierwise-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = stream.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the first chunk arrives");

    // SIGTERM to a: it stops taking requests and drains its stream; b serves on.
    signal(&a_process, "-TERM");
    until("replica a to stop taking requests", async || {
        http.get(format!("{}/readyz", a)).send().await.is_err()
            || http
                .get(format!("{}/readyz", a))
                .send()
                .await
                .is_ok_and(|r| r.status() != 200)
    })
    .await;
    for i in 0..10 {
        let response = http
            .post(format!("{}/v1/chat/completions", b))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", &format!("while a drains {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "b serves while a drains");
    }
    assert!(
        a_process.try_wait().unwrap().is_none(),
        "a exited before its stream ended"
    );
    gate.open();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the drained stream goes on")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("[DONE]"), "the stream ended whole: {text:?}");
    let status = exited(a_process).await;
    assert!(status.success(), "a exited {status:?}");

    // The drained stream is in the ledger as answered, through b's report.
    let store = tierwise::ledger::Store::connect(&ledger).await.unwrap();
    let row = crate::util::stored(&store, &id).await;
    assert_eq!((row.status, row.error_kind.as_deref()), (200, None));
    until("b's report to count the summaries of both", async || {
        reported_calls(&http, &b, "summarize").await == 11
    })
    .await;

    // Announced once: one alert_fired stored, one webhook POST, though both replicas fired or
    // tried to.
    let events = store.quality_events(ROUTE, 50).await.unwrap();
    let fired = events
        .iter()
        .filter(|e| e.event == tierwise::ledger::quality::EventKind::AlertFired)
        .count();
    assert_eq!(fired, 1, "{events:?}");
    let posted = hook.events();
    assert_eq!(
        posted.iter().filter(|e| *e == "alert_fired").count(),
        1,
        "{posted:?}"
    );
    drop(b_process);
}
