//! Holes found by review where the promise "never down because a tier is down, every paid call
//! recorded" broke: each test here failed against the code before its fix.

use std::time::Duration;

use tierwise::config::file::{RawProvider, spanned, text};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::*;

/// One fake behind every provider, and a configuration without probes that `change` adjusts.
async fn one_fake(change: impl FnOnce(&mut TestConfig)) -> (FakeUpstream, TestConfig) {
    let up = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(change);
    (up, config)
}

/// Fresh fakes and a gateway without probes; `knobs` changes the local (vllm) provider.
async fn gateway(
    knobs: impl FnOnce(&mut RawProvider),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| knobs(c.provider("vllm")));
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_non_streamed_answer_is_waited_for_up_to_total_ms_not_first_byte_ms() {
    let (local, api, gw) = gateway(|p| {
        p.timeout.first_byte_ms = Some(300);
        p.timeout.total_ms = Some(10_000);
        p.breaker.failures = Some(spanned(1));
    })
    .await;
    // The whole answer takes longer than first_byte_ms: its headers come only when it is done.
    local.set_fault(Fault::SlowFirstByte { ms: 800 });
    for _ in 0..2 {
        let answer = gw.ask("summarize").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
        assert_eq!(answer.header("x-tierwise-fallback"), None);
    }
    assert_eq!(api.request_count(), 0, "a slow answer is not paid twice");
    // A stream is still held to first_byte_ms.
    let mut request = chat("summarize", "x");
    request["stream"] = serde_json::json!(true);
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:timeout_first_byte")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_is_clamped_and_the_answer_still_arrives() {
    let (local, api, gw) = gateway(|_| {}).await;
    local.set_fault(Fault::Status {
        status: 429,
        body: None,
        retry_after: Some(u64::MAX),
    });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(answer.header("x-tierwise-fallback"), Some("local:http_429"));
    assert_eq!(api.request_count(), 1);
    // The serving thread is still there.
    local.set_fault(Fault::None);
    assert_eq!(gw.ask("summarize").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_with_nulls_is_read_and_never_refuses_a_good_answer() {
    let (local, api, gw) = gateway(|_| {}).await;
    local.update(|b| {
        b.fault = Fault::UsageWithNulls;
        b.prompt_tokens = 40;
        b.completion_tokens = 9;
    });
    let store = gw.store().await;
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(api.request_count(), 0, "the next tier was not paid");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (
            row.tokens_in,
            row.tokens_cached,
            row.tokens_out,
            row.tokens_estimated
        ),
        (40, 0, 9, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_own_auth_and_url_errors_fall_back_and_never_reach_the_client() {
    let (local, api, gw) = gateway(|p| p.breaker.failures = Some(spanned(4))).await;
    let leaky = r#"{"error":{"message":"Incorrect API key provided: sk-proj-********LEAK","type":"invalid_request_error","code":"invalid_api_key"}}"#;
    for status in [401, 403, 404, 301] {
        local.set_fault(Fault::Status {
            status,
            body: Some(leaky.into()),
            retry_after: None,
        });
        let answer = gw.ask("classification").await;
        assert_eq!(answer.status, 200, "{status}: {}", answer.text);
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("api_fast"),
            "{status}"
        );
        assert_eq!(
            answer.header("x-tierwise-fallback"),
            Some(format!("local:http_{status}").as_str())
        );
    }
    // The four of them opened the local breaker: local is skipped without a call.
    let calls = local.request_count();
    let answer = gw.ask("classification").await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );
    assert_eq!(local.request_count(), calls);

    // When the last tier fails the same way, the client gets a 502 naming tier and reason, not
    // the provider's body.
    api.set_fault(Fault::Status {
        status: 401,
        body: Some(leaky.into()),
        retry_after: None,
    });
    let answer = gw.ask("api_fast").await;
    let message = answer.error(502, Some("upstream_unavailable"));
    assert!(
        message.contains("api_fast") && message.contains("http_401"),
        "{message}"
    );
    assert!(!answer.text.contains("LEAK"), "{}", answer.text);

    // A request the provider refuses for its own content still goes straight back.
    api.set_fault(Fault::Status {
        status: 400,
        body: None,
        retry_after: None,
    });
    let answer = gw.ask("api_fast").await;
    assert_eq!(answer.status, 400, "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_answered_401_reports_the_provider_down() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.set_fault(Fault::Status {
        status: 401,
        body: None,
        retry_after: None,
    });
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let vllm = c.provider("vllm");
        vllm.health.interval_ms = Some(spanned(50));
        vllm.health.timeout_ms = Some(300);
    });
    let gw = TestGateway::start(&config).await;
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;
    assert_eq!(gw.provider("vllm").await["up"], false);
}

/// `health.path` is what the probe asks, from the host root when it starts with `/` (vLLM's
/// `/health`); its answer is what marks the provider up or down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_asks_the_configured_path() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let vllm = c.provider("vllm");
        vllm.health.interval_ms = Some(spanned(50));
        vllm.health.timeout_ms = Some(300);
        vllm.health.path = Some(text("/health"));
    });
    let gw = TestGateway::start(&config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while local.listings().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no probe arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Besides the probe, only the one-off questions about the model's window (Ollama, llama.cpp).
    let paths: Vec<String> = local.listings().into_iter().map(|p| p.path).collect();
    assert!(
        paths
            .iter()
            .all(|path| matches!(path.as_str(), "/health" | "/api/show" | "/props")),
        "{paths:?}"
    );
    // Once per model of the provider (mistral-7b, nomic-embed-text), not at every probe.
    assert!(
        paths.iter().filter(|p| *p == "/props").count() <= 2,
        "{paths:?}"
    );
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;
    assert_eq!(gw.provider("vllm").await["up"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implausible_token_count_is_clamped_flagged_and_never_wraps_the_cost() {
    let (_local, api, gw) = gateway(|_| {}).await;
    api.update(|b| {
        b.prompt_tokens = 10;
        b.completion_tokens = 10_000_000_000_000;
    });
    let store = gw.store().await;
    let answer = gw.ask("api_fast").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // gpt-4o-mini: 10 × $0.15 + 10^9 (clamped) × $0.60 per million.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("600.0000015"));
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_out, row.tokens_estimated),
        (tierwise::ledger::tokens::MAX_PLAUSIBLE_TOKENS, true)
    );
}

/// The events of an SSE body: (name, data with its lines joined), as a client reads them.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = Vec::new();
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push(value);
                } else {
                    panic!("a line that is neither event: nor data: {line:?} in {text:?}");
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_events_and_event_names_reach_the_client_intact() {
    let (local, _api, gw) = gateway(|_| {}).await;
    local.set_fault(Fault::SseQuirks);
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.status, 200);
    let events = sse_events(&answer.text);
    assert!(
        events
            .iter()
            .any(|(name, data)| name.as_deref() == Some("ping") && data == "{}"),
        "{events:?}"
    );
    let mut text = String::new();
    for (_, data) in events.iter().filter(|(_, data)| data != "[DONE]") {
        let chunk: serde_json::Value =
            serde_json::from_str(data).expect("each event is whole JSON");
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
    }
    assert_eq!(text, "Hello from the fake upstream.");
    assert_eq!(events.last().unwrap().1, "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_reaches_the_client_byte_for_byte() {
    let (local, _api, gw) = gateway(|_| {}).await;
    local.set_fault(Fault::SseExtras);
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.status, 200);
    // Its id line, its comment and its CRLF endings are the upstream's, not tierwise's framing.
    let extras = std::str::from_utf8(tierwise_fake::SSE_EXTRAS_EVENT).unwrap();
    assert!(answer.text.contains(extras), "{:?}", answer.text);
    assert!(
        answer.text.ends_with("data: [DONE]\n\n"),
        "{:?}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_mid_stream_is_recorded_as_a_failure_even_before_done() {
    let (local, _api, gw) = gateway(|_| {}).await;
    local.set_fault(Fault::ErrorMidStream { after: 3 });
    let store = gw.store().await;
    let answer = gw.ask_stream("summarize").await;
    let events = sse_events(&answer.text);
    assert_eq!(events.len(), 5, "3 chunks, the error, [DONE]: {events:?}");
    assert!(events[3].1.contains("crashed mid-answer"), "{events:?}");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("upstream_error_event"));
    assert_eq!(
        gw.provider("vllm").await["breaker"]["consecutive_failures"],
        1,
        "the breaker heard of it"
    );
}

/// A stream whose last choice finished but that closes without `[DONE]`, as some servers end
/// one, is a whole answer: the client gets the `[DONE]` it expects, and the request and its tier
/// count as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_closed_without_done_is_a_whole_answer() {
    let (local, _api, gw) = gateway(|_| {}).await;
    local.set_fault(Fault::NoDone);
    let store = gw.store().await;
    let answer = gw.ask_stream("summarize").await;
    let events = sse_events(&answer.text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{events:?}");
    assert!(!answer.text.contains("\"error\""), "{}", answer.text);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!((row.status, row.error_kind), (200, None));
    assert_eq!(
        gw.provider("vllm").await["breaker"]["consecutive_failures"],
        0
    );
}

/// Bytes that are not UTF-8 in an upstream's stream end the stream at once with a clear error
/// event (not a stall until the idle timeout), and the request is recorded as a broken stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_mid_stream_ends_the_stream_with_a_clear_error() {
    let (local, _api, gw) = gateway(|p| p.timeout.idle_ms = Some(60_000)).await;
    local.set_fault(Fault::InvalidUtf8MidStream { after: 2 });
    let store = gw.store().await;
    let answer = tokio::time::timeout(Duration::from_secs(10), gw.ask_stream("summarize"))
        .await
        .expect("the stream ends without waiting for the idle timeout");
    let events = sse_events(&answer.text);
    assert_eq!(events.len(), 3, "2 chunks, then the error: {events:?}");
    let error: serde_json::Value = serde_json::from_str(&events[2].1).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{events:?}"
    );
    // Recorded as every stream broken after its 200: that status, and how it ended.
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref()),
        (200, Some("stream_broken"))
    );
}

async fn admin_status(gw: &TestGateway, key: Option<&str>) -> u16 {
    let mut request = gw.http.get(format!("{}/admin/api/providers", gw.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_never_silently_open() {
    let up = FakeUpstream::start().await;
    let base = || TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes();

    // No key at all: closed, and said so at start.
    let config = base().with(|c| c.0.server.api_keys = None).config();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("/admin/api is closed")),
        "{:?}",
        config.warnings
    );
    let gw = TestGateway::start_config(config).await;
    let closed = Answer::of(
        gw.http
            .get(format!("{}/admin/api/providers", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    closed.error(403, Some("forbidden"));
    gw.shutdown().await;

    // Opened on purpose: open, and warned about.
    let config = base()
        .with(|c| {
            c.0.server.api_keys = None;
            c.0.server.open_admin = true;
        })
        .config();
    assert!(config.warnings.iter().any(|w| w.contains("ANYONE")));
    let gw = TestGateway::start_config(config).await;
    assert_eq!(admin_status(&gw, None).await, 200);
    gw.shutdown().await;

    // Client keys but no admin key (here an empty ${VAR:-}): every client key, loudly.
    let config = base()
        .with(|c| c.0.server.admin_key = Some(text("${TIERWISE_ADMIN_KEY_UNSET:-}")))
        .config();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("EVERY client key"))
    );
    let gw = TestGateway::start_config(config).await;
    assert_eq!(admin_status(&gw, Some(CLIENT_KEY)).await, 200);
    assert_eq!(admin_status(&gw, None).await, 401);
    gw.shutdown().await;

    // An admin key: only it.
    let config = base().with(|c| c.0.server.admin_key = Some(text("tw-admin-999")));
    let gw = TestGateway::start(&config).await;
    assert_eq!(admin_status(&gw, Some(CLIENT_KEY)).await, 401);
    assert_eq!(admin_status(&gw, Some("tw-admin-999")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_put_behind_a_key() {
    let (_up, config) = one_fake(|c| c.0.server.metrics_key = Some(text("tw-scrape-1"))).await;
    let gw = TestGateway::start(&config).await;
    let url = format!("{}/metrics", gw.url);
    assert_eq!(gw.http.get(&url).send().await.unwrap().status(), 401);
    let scraped = gw
        .http
        .get(&url)
        .bearer_auth("tw-scrape-1")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_spend_the_gateways_keys() {
    let (local, _api, gw) = gateway(|_| {}).await;
    let body = chat("summarize", "x").to_string();
    let url = format!("{}/v1/chat/completions", gw.url);
    // What a page can send without a CORS preflight: a "simple" text/plain POST.
    let simple = Answer::of(
        gw.http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    simple.error(415, Some("unsupported_media_type"));
    let cross_origin = Answer::of(
        gw.http
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .header("origin", "https://evil.example")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    cross_origin.error(403, Some("forbidden"));
    assert_eq!(local.request_count(), 0, "nothing reached a provider");
    // A backend's JSON (charset included) goes through.
    let ok = gw
        .http
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_port_fails_to_start() {
    let (_up, config) = one_fake(|_| {}).await;
    let first = TestGateway::start(&config).await;
    let port = first.url.rsplit(':').next().unwrap().to_string();
    let second = config
        .with(|c| c.0.server.listen = Some(text(format!("127.0.0.1:{port}"))))
        .config();
    match tierwise::server::Gateway::start(second).await {
        Ok(_) => panic!("a second gateway started on port {port}"),
        Err(err) => assert!(err.to_string().contains("already in use"), "{err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_request_its_client_abandons_is_recorded_with_its_real_cost() {
    let (_local, api, gw) = gateway(|_| {}).await;
    api.update(|b| {
        b.fault = Fault::SlowFirstByte { ms: 600 };
        b.prompt_tokens = 1000;
        b.completion_tokens = 500;
    });
    let store = gw.store().await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The client gives up long before the answer; the upstream still answers, and charges.
    let gave_up = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("api_fast", "x"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to give up");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = store.requests(since, i64::MAX, None).await.unwrap();
        if let Some(row) = rows.into_iter().next() {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned request was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (499, Some("client_closed"), Some("api_fast"))
    );
    // gpt-4o-mini: 1000 × $0.15 + 500 × $0.60 per million.
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.cost_pusd),
        (1000, 500, Some(tierwise::ledger::Picodollars(450_000_000)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_idle_ms_with_short_gaps_is_never_cut() {
    let (local, _api, gw) = gateway(|p| {
        p.timeout.total_ms = Some(10_000);
        p.timeout.idle_ms = Some(300);
    })
    .await;
    // 24 words 50 ms apart: 1.2 s in all, four times idle_ms, but no gap near it. The idle limit
    // is measured from the last event, whatever the timer behind it was set to first.
    local.update(|b| {
        b.reply = vec!["word"; 24].join(" ");
        b.chunk_delay_ms = 50;
    });
    let answer = gw.ask_stream("summarize").await;
    assert!(
        !answer.text.contains("stream_interrupted") && answer.text.contains("[DONE]"),
        "{}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_trickles_on_is_cut_at_total_ms() {
    let (local, _api, gw) = gateway(|p| {
        p.timeout.total_ms = Some(800);
        p.timeout.idle_ms = Some(2000);
    })
    .await;
    // 30 words 150 ms apart: every gap is far under idle_ms, the whole far over total_ms.
    local.update(|b| {
        b.reply = vec!["word"; 30].join(" ");
        b.chunk_delay_ms = 150;
    });
    let answer = gw.ask_stream("summarize").await;
    assert!(
        answer.text.contains("stream_interrupted") && answer.text.contains("timeout_total"),
        "{}",
        answer.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_read_up_to_max_answer_bytes() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.max_answer_bytes = Some(spanned(2000));
            c.0.ledger.store_content = true;
        });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    local.update(|b| b.reply = "x ".repeat(1500));
    // A whole answer over the limit is the tier's failure: the next tier answers.
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:answer_too_large")
    );
    // A stream is relayed whole, but only the limit of its text is kept.
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    // Two-byte words fill the limit exactly.
    let kept = row.answer.unwrap().len();
    assert_eq!(kept, 2000, "{kept} bytes kept");
}

/// Takes the ledger's `requests` table away (every insert fails) or brings it back.
async fn ledger_table(ledger_url: &str, away: bool) {
    ledger_sql(
        ledger_url,
        if away {
            "ALTER TABLE requests RENAME TO requests_away"
        } else {
            "ALTER TABLE requests_away RENAME TO requests"
        },
    )
    .await;
}

/// Runs one statement on the gateway's SQLite ledger from outside the gateway.
async fn ledger_sql(ledger_url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(ledger_url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

/// Asks `n` one-word questions, each bounded by a deadline: a request that waits on the ledger
/// fails the test instead of hanging it.
async fn ask_quickly(gw: &TestGateway, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let answer = tokio::time::timeout(Duration::from_secs(5), gw.ask("summarize"))
            .await
            .expect("a request never waits on the ledger");
        assert_eq!(answer.status, 200, "{}", answer.text);
        ids.push(answer.header("x-tierwise-request-id").unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_never_holds_a_request_and_loses_nothing() {
    // A queue of one: with the database away, the second record would already make requests wait.
    let (_up, config) = one_fake(|c| c.0.ledger.queue = Some(spanned(1))).await;
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    ledger_table(&gw.ledger_url, true).await;
    let ids = ask_quickly(&gw, 30).await;

    let ledger = gw.ledger().await;
    assert_eq!(ledger["status"], "degraded", "{ledger}");
    assert!(ledger["spooled_records"].as_u64().unwrap() > 0, "{ledger}");
    let metrics = gw
        .wait_for_metrics(|text| text.contains("tierwise_ledger_degraded 1"))
        .await;
    assert!(
        metrics.contains("tierwise_ledger_spooled_records"),
        "{metrics}"
    );

    ledger_table(&gw.ledger_url, false).await;
    for id in &ids {
        stored(&store, id).await;
    }
    gw.wait_for_ledger("ok", Duration::from_secs(10)).await;
    let rows = store.requests(0, i64::MAX, None).await.unwrap();
    assert_eq!(rows.len(), 30, "each record exactly once");
}

/// A row the database refuses for what is in it (here a trigger refuses one route's rows, as
/// PostgreSQL refuses a value it cannot hold) is set aside, loudly; the rows of its batch and every
/// row after it are stored, and the ledger is not left degraded behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_set_aside_and_never_blocks_the_rows_behind_it() {
    let (_up, config) = one_fake(|_| {}).await;
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    ledger_sql(
        &gw.ledger_url,
        "CREATE TRIGGER refuse_summaries BEFORE INSERT ON requests WHEN NEW.route = 'summarize' \
         BEGIN SELECT RAISE(ABORT, 'summaries are refused here'); END",
    )
    .await;
    // Asked together, so that the refused row most likely shares its batch with good ones.
    let (first, refused, second) = tokio::join!(
        gw.ask("classification"),
        gw.ask("summarize"),
        gw.ask("classification")
    );
    let id = |answer: &Answer| answer.header("x-tierwise-request-id").unwrap().to_string();
    for answer in [&first, &refused, &second] {
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    stored(&store, &id(&first)).await;
    stored(&store, &id(&second)).await;
    gw.wait_for_metrics(|text| text.contains("tierwise_ledger_records_refused_total 1"))
        .await;
    assert!(store.request(&id(&refused)).await.unwrap().is_none());
    let ledger = gw.ledger().await;
    assert_eq!(ledger["status"], "ok", "{ledger}");
    assert_eq!(ledger["refused_records"], 1, "{ledger}");
    let mut set_aside = config.config().ledger.spool.into_os_string();
    set_aside.push(".refused");
    let set_aside = std::fs::read_to_string(&set_aside).unwrap();
    assert_eq!(set_aside.lines().count(), 1, "{set_aside}");
    assert!(set_aside.contains(&id(&refused)), "{set_aside}");
    assert!(
        set_aside.contains("summaries are refused here"),
        "{set_aside}"
    );

    let after = gw.ask("classification").await;
    stored(&store, &id(&after)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spooled_when_the_gateway_stops_are_written_at_its_next_start() {
    let (_up, config) = one_fake(|_| {}).await;
    let gw = TestGateway::start(&config).await;
    let ledger_url = gw.ledger_url.clone();
    ledger_table(&ledger_url, true).await;
    let ids = ask_quickly(&gw, 5).await;
    gw.shutdown().await;

    ledger_table(&ledger_url, false).await;
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    for id in &ids {
        stored(&store, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_and_counts_records_and_never_holds_a_request() {
    let (_up, config) = one_fake(|c| c.0.ledger.spool_max_bytes = Some(spanned(1))).await;
    let gw = TestGateway::start(&config).await;
    ledger_table(&gw.ledger_url, true).await;
    ask_quickly(&gw, 5).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ledger = gw.ledger().await;
        if ledger["dropped_records"].as_u64().unwrap() == 5 {
            assert_eq!(ledger["spooled_records"], 0, "{ledger}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ledger}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_model_rests_that_tier_not_its_providers_other_tiers() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("openai").breaker.failures = Some(spanned(1));
            c.add_route(
                "api_chain",
                tierwise::config::TaskKind::Chat,
                &["api_fast", "api_frontier"],
            );
        });
    let gw = TestGateway::start(&config).await;
    api.update(|b| {
        b.fault = Fault::Status {
            status: 429,
            body: None,
            retry_after: Some(30),
        };
        b.fault_model = Some("gpt-4o-mini".into());
    });
    let answer = gw.ask("api_chain").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_frontier"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("api_fast:http_429")
    );
    // The provider's breaker (one failure opens it) did not count the 429: its other model is
    // called; the rate-limited tier rests without a call.
    let calls = api.request_count();
    let answer = gw.ask("api_chain").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_frontier"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("api_fast:rate_limited")
    );
    assert_eq!(
        api.request_count(),
        calls + 1,
        "only api_frontier was called"
    );
    // Alone, the resting tier answers 429 with how long it rests.
    let answer = gw.ask("api_fast").await;
    answer.error(429, Some("upstream_rate_limited"));
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((20..=30).contains(&retry_after), "{retry_after}");
}

/// Waits until the server closes `tcp` (a read returns end of file or an error), at most 3 s;
/// returns what it sent before closing.
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open; it sent {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

fn addr_of(gw: &TestGateway) -> String {
    gw.url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_not_held_up() {
    use tokio::io::AsyncWriteExt;
    let (_up, config) = one_fake(|c| {
        c.0.server.header_timeout_ms = Some(spanned(300));
        c.0.server.body_timeout_ms = Some(spanned(300));
    })
    .await;
    let gw = TestGateway::start(&config).await;

    // Headers dribbled and never finished: closed, without an answer, and without a key.
    let mut slow_headers = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // A body promised and never sent: 408 in OpenAI's shape.
    let mut slow_body = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\""
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();

    // Meanwhile a normal client is served.
    assert_eq!(gw.ask("summarize").await.status, 200);

    let sent = closed_by_server(&mut slow_headers).await;
    assert!(!sent.contains("200 OK"), "{sent}");
    let sent = closed_by_server(&mut slow_body).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("request_timeout"), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_once() {
    let (_up, config) = one_fake(|c| {
        c.0.server.threads = Some(spanned(1));
        c.0.server.max_connections = Some(spanned(2));
    })
    .await;
    let gw = TestGateway::start(&config).await;
    let first = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(addr_of(&gw)).await.unwrap();
    closed_by_server(&mut third).await;
    // A slot freed is a slot to use: the client's pool reconnects.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let client = reqwest::Client::new();
        let answered = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", "x"))
            .send()
            .await;
        if answered.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
