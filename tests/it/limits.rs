//! What one request can cost the gateway and how long a live upstream may take, bounded: token
//! counts of pathological texts (issue 22 item 2), long server-sent events (issue 31 item 7),
//! heartbeats (item 8), and answer budgets near `u64::MAX` (item 12). Each test failed against a
//! deliberate break of its fix (the commit that added it says which).

use std::time::Duration;

use serde_json::json;
use tierwise::config::file::{RawProvider, spanned};
use tierwise::upstream::MAX_EVENT_BYTES;
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::*;

/// Fresh fakes and a gateway without probes; `change` adjusts its configuration.
async fn gateway(
    change: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(change);
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

fn vllm(change: impl FnOnce(&mut RawProvider)) -> impl FnOnce(&mut TestConfig) {
    move |c| change(c.provider("vllm"))
}

/// The answer to `request` within `limit`: a bound on failure (a count or a stream that does not
/// end), far above what the answer takes.
async fn answer_within(gw: &TestGateway, request: &serde_json::Value, limit: Duration) -> Answer {
    let answer = async { Answer::of(gw.post("/v1/chat/completions", request).await).await };
    tokio::time::timeout(limit, answer)
        .await
        .expect("the gateway answers instead of counting or waiting without end")
}

/// Two megabytes of one letter are one piece of the tokenizer's pattern; merging it the way
/// tiktoken does took ~20 minutes of CPU. A prompt near the tier's window is counted to decide
/// whether it fits, and the answer of a stream without usage is counted for the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_and_an_answer_of_one_long_run_of_letters_are_counted_in_bounded_time() {
    let (local, _api, gw) = gateway(|c| {
        c.0.tiers.get_mut("local").unwrap().context_tokens = Some(spanned(500_000));
    })
    .await;
    // Over the window in bytes, so it is counted: about 188k tokens, which fit (the fake takes
    // bodies up to 2 MB).
    let prompt = "a".repeat(1_500_000);
    let answer = answer_within(&gw, &chat("summarize", &prompt), Duration::from_secs(60)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-fallback"), None);

    local.update(|b| {
        b.fault = Fault::NoUsage;
        b.reply = "a".repeat(2 << 20);
    });
    let mut request = chat("summarize", "x");
    request["stream"] = json!(true);
    let answer = answer_within(&gw, &request, Duration::from_secs(60)).await;
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
    let id = answer.header("x-tierwise-request-id").unwrap().to_string();
    let store = gw.store().await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let row = loop {
        if let Some(row) = store.request(&id).await.unwrap() {
            break row;
        }
        assert!(
            std::time::Instant::now() < until,
            "the stream's tokens were never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(row.tokens_estimated);
    // cl100k (mistral-7b counts as cl100k): eight letters a token.
    assert_eq!(row.tokens_out, 262_144);
}

/// One event is buffered whole before it is relayed: an event over the limit is the tier's
/// failure like an answer over `server.max_answer_bytes`, not hundreds of megabytes held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_event_over_the_limit_falls_back_before_the_first_byte_and_ends_the_stream_after() {
    let (local, api, gw) = gateway(|_| {}).await;
    let huge = MAX_EVENT_BYTES + 1;
    local.set_fault(Fault::HugeEvent {
        after: 0,
        bytes: huge,
    });
    let answer = gw.ask_stream("summarize").await;
    answer.assert_served_by("api_fast", "local:answer_too_large");
    assert!(answer.text.ends_with("data: [DONE]\n\n"));

    local.set_fault(Fault::HugeEvent {
        after: 2,
        bytes: huge,
    });
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(
        answer.text.contains("stream_interrupted"),
        "{}",
        answer.text
    );
    assert!(
        answer
            .text
            .contains(&format!("over {MAX_EVENT_BYTES} bytes")),
        "{}",
        answer.text
    );
    assert!(answer.text.len() < 10_000, "the long event was not relayed");
    assert_eq!(api.request_count(), 1);

    // An event of a megabyte is an event like any other.
    local.set_fault(Fault::HugeEvent {
        after: 2,
        bytes: 1 << 20,
    });
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(answer.text.contains(&"a".repeat(1 << 20)));
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
}

/// A provider that sends `: keep-alive` while its model thinks is alive: each comment restarts
/// `idle_ms` and reaches the client as it came, and the stream is not counted against the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_stream_past_idle_ms_and_reach_the_client() {
    let (local, api, gw) = gateway(vllm(|p| {
        p.timeout.idle_ms = Some(300);
        p.timeout.total_ms = Some(10_000);
        p.breaker.failures = Some(spanned(1));
    }))
    .await;
    local.set_fault(Fault::Heartbeats {
        after: 2,
        every_ms: 100,
        count: Some(8),
    });
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(
        !answer.text.contains("stream_interrupted"),
        "{}",
        answer.text
    );
    assert_eq!(answer.text.matches(": keep-alive\n\n").count(), 8);
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
    assert_eq!(gw.breaker_state("vllm").await, "closed");
    assert_eq!(api.request_count(), 0);
}

/// Heartbeats alone are not a first byte: a provider that only heartbeats falls back at
/// `first_byte_ms`, while there is still a tier to fall back to. Once the stream has begun, one
/// that heartbeats without end is cut at `total_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_alone_fall_back_at_first_byte_ms_and_without_end_are_cut_at_total_ms() {
    let (local, _api, gw) = gateway(vllm(|p| {
        p.timeout.first_byte_ms = Some(300);
        p.timeout.idle_ms = Some(300);
        p.timeout.total_ms = Some(1500);
    }))
    .await;
    local.set_fault(Fault::Heartbeats {
        after: 0,
        every_ms: 50,
        count: None,
    });
    let answer = gw.ask_stream("summarize").await;
    answer.assert_served_by("api_fast", "local:timeout_first_byte");
    assert!(!answer.text.contains("keep-alive"));

    local.set_fault(Fault::Heartbeats {
        after: 2,
        every_ms: 50,
        count: None,
    });
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(answer.text.contains(": keep-alive\n\n"));
    assert!(
        answer.text.contains("stream_interrupted"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("timeout_total"), "{}", answer.text);
}

/// An answer budget near `u64::MAX` is checked against a tier's window without overflowing: a
/// tier that knows its window refuses it as too long (never a panic in a debug build, never a sum
/// wrapped past the window in a release one). Budgets that are not whole tokens are a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_tokens_near_u64_max_is_too_long_for_every_window_and_never_a_panic() {
    let (local, api, gw) = gateway(|c| {
        c.0.tiers.get_mut("local").unwrap().context_tokens = Some(spanned(8192));
    })
    .await;
    for field in ["max_tokens", "max_completion_tokens"] {
        for budget in [u64::MAX, u64::MAX - 1, u64::MAX - 9000, 1 << 63] {
            let mut request = chat("summarize", "x");
            request[field] = json!(budget);
            let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
            let message = answer.error(400, Some("context_length_exceeded"));
            assert!(message.contains(&budget.to_string()), "{message}");
        }
    }
    assert_eq!(local.request_count() + api.request_count(), 0);
    for bad in [
        "18446744073709551616",
        "1e30",
        "1.5",
        "-1",
        "-9223372036854775808",
    ] {
        let body = format!(
            r#"{{"model": "summarize", "messages": [{{"role": "user", "content": "x"}}], "max_tokens": {bad}}}"#
        );
        let answer = Answer::of(gw.post_raw("/v1/chat/completions", body.into_bytes()).await).await;
        let message = answer.error(400, None);
        assert!(message.contains("max_tokens"), "{bad}: {message}");
    }
    // The serving threads are all still there.
    for _ in 0..4 {
        assert_eq!(gw.ask("summarize").await.status, 200);
    }
}
