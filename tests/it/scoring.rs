//! Scoring is CPU work — ROUGE-L is quadratic in the answers' words — and must never stall a thread
//! that other work waits on (issue 22, items 5 and 7): the shadow checks' scoring runs off the
//! control runtime (the ledger writer, probes and feedback writer), the report's judging of
//! feedback off the serving thread an admin request came on, and both read a bounded part of each
//! answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tierwise::config::TaskKind;
use tierwise::config::file::{RawShadow, spanned};
use tierwise_fake::FakeUpstream;

use crate::util::{Answer, TestConfig, TestGateway, chat};

/// `n` distinct words from `seed`: two texts of different seeds share no word.
fn words(seed: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{seed}{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The longest time, in ms, the current runtime went without running a 5 ms ticker, from now
/// until the returned handle is dropped.
fn longest_stall() -> Arc<AtomicU64> {
    let worst = Arc::new(AtomicU64::new(0));
    let seen = worst.clone();
    tokio::spawn(async move {
        loop {
            let before = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            seen.fetch_max(before.elapsed().as_millis() as u64, Ordering::Relaxed);
            if Arc::strong_count(&seen) == 1 {
                return;
            }
        }
    });
    worst
}

/// A 20,000-word summary and a reference of as many other words: scored while the runtime that
/// started the gateway (here the test's single thread) keeps running its other tasks. Inline,
/// uncapped, this sample held the runtime for seconds.
#[tokio::test(flavor = "current_thread")]
async fn scoring_a_long_summary_leaves_the_control_runtime_free() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| b.reply = words("a", 20_000));
    api.update(|b| b.reply = words("b", 20_000));
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        // A route of its own: the metrics are shared with every test, and the judge test counts
        // `summarize`'s shadow checks.
        .with(|c| {
            c.add_route(
                "long_summary",
                TaskKind::Summarization,
                &["local", "api_fast"],
            )
            .shadow = Some(RawShadow::new("api_frontier", 1.0))
        });
    let gateway = TestGateway::start(&config).await;
    let store = gateway.store().await;
    let stall = longest_stall();
    let answer = Answer::of(
        gateway
            .post("/v1/chat/completions", &chat("long_summary", "the report"))
            .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let until = Instant::now() + Duration::from_secs(60);
    while store
        .recent_agreement("long_summary", "local", 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < until, "the sample was never scored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worst = stall.load(Ordering::Relaxed);
    assert!(
        worst < 1000,
        "the control runtime stood still for {worst} ms while a sample was scored"
    );
    gateway.shutdown().await;
}

/// Feedback on long answers, judged by `GET /admin/api/report` on a gateway with one serving
/// thread: `/healthz` on that same thread answers promptly meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judging_feedback_for_a_report_does_not_stall_the_serving_thread() {
    let up = FakeUpstream::start().await;
    up.update(|b| b.reply = words("a", 3000));
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.threads = Some(spanned(1));
            c.0.ledger.store_content = true;
        });
    let gateway = TestGateway::start(&config).await;
    for i in 0..40 {
        let answer = Answer::of(
            gateway
                .post("/v1/chat/completions", &chat("summarize", "the report"))
                .await,
        )
        .await;
        let id = answer.header("x-tierwise-request-id").unwrap().to_string();
        let truth = json!({"request_id": id, "value": words(&format!("t{i}x"), 3000)});
        let stored = Answer::of(gateway.post("/v1/feedback", &truth).await).await;
        assert_eq!(stored.status, 200, "{}", stored.text);
    }
    let report = {
        let http = gateway.http.clone();
        let url = format!("{}/admin/api/report?since=1h", gateway.url);
        tokio::spawn(async move {
            let response = http
                .get(url)
                .bearer_auth(crate::util::CLIENT_KEY)
                .send()
                .await
                .unwrap();
            Answer::of(response).await
        })
    };
    let mut worst = Duration::ZERO;
    while !report.is_finished() {
        let asked = Instant::now();
        let health = gateway.http.get(format!("{}/healthz", gateway.url)).send();
        assert_eq!(health.await.unwrap().status(), 200);
        worst = worst.max(asked.elapsed());
    }
    let report = report.await.unwrap();
    assert_eq!(report.status, 200, "{}", report.text);
    let route = report.body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "summarize")
        .cloned()
        .unwrap();
    assert_eq!(route["quality"]["feedback_judged"], 40, "{route}");
    assert!(
        worst < Duration::from_secs(1),
        "/healthz waited {worst:?} behind the report on the one serving thread"
    );
    gateway.shutdown().await;
}
