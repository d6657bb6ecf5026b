//! Never down because a tier is down: the fault matrix, the breaker, probes and recovery, warm-up,
//! readiness, the in-flight cap and the all-open behaviour, each against in-process fakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::util::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tierwise::config::file::{RawProvider, spanned, text};
use tierwise::config::{AllOpen, TaskKind};
use tierwise_fake::{FakeUpstream, Fault, wait_until};

/// `local` on vllm (probed every 50 ms when `probe` is set) before `api_fast`; `knobs` changes the
/// vllm provider.
fn config(local: &str, api: &str, probe: bool, knobs: impl FnOnce(&mut RawProvider)) -> TestConfig {
    TestConfig::two_tier(local, api).with(|c| {
        let vllm = c.provider("vllm");
        if probe {
            vllm.health.interval_ms = Some(spanned(50));
            vllm.health.timeout_ms = Some(300);
        } else {
            vllm.health.enabled = Some(false);
        }
        knobs(vllm);
    })
}

/// Two fresh fakes (local, api) and a gateway in front of them, probes off.
async fn setup(
    knobs: impl FnOnce(&mut RawProvider),
    extra: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = config(&local.base_url(), &api.base_url(), false, knobs).with(extra);
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

/// A local server that is down when the gateway starts, probed and warmed up on recovery (first
/// cool-down 100 ms); `knobs` changes its provider further. Its address, to restart it on, the API
/// fake and the gateway.
async fn down_with_warm_up(
    knobs: impl FnOnce(&mut RawProvider),
) -> (SocketAddr, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let addr = local.addr;
    let api = FakeUpstream::start().await;
    local.stop().await;
    let knobs = |p: &mut RawProvider| {
        p.warmup = true;
        p.breaker.cooldown_ms = Some(100);
        knobs(p);
    };
    let local_url = format!("http://{addr}/v1");
    let gw = TestGateway::start(&config(&local_url, &api.base_url(), true, knobs)).await;
    (addr, api, gw)
}

/// Clears the local fake's fault, waits for its breaker to close, and sees users sent to it again.
async fn back_to_local(local: &FakeUpstream, gw: &TestGateway) {
    local.set_fault(Fault::None);
    gw.wait_for_breaker("vllm", "closed", Duration::from_secs(5))
        .await;
    assert_eq!(
        gw.ask("summarize").await.header("x-tierwise-tier"),
        Some("local")
    );
}

/// Breaker knobs: consecutive failures that open it, and its first cool-down.
fn breaker(failures: u32, cooldown_ms: Option<u64>) -> impl FnOnce(&mut RawProvider) {
    move |p| {
        p.breaker.failures = Some(spanned(failures));
        p.breaker.cooldown_ms = cooldown_ms;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retryable_fault_falls_back_to_the_next_tier() {
    let knobs = |p: &mut RawProvider| {
        p.breaker.failures = Some(spanned(1000));
        p.retry_429_max_wait_ms = Some(0);
        p.timeout.total_ms = Some(3000);
    };
    let (local, api, gw) = setup(knobs, |_| {}).await;
    let cases = [
        (Fault::Hang, false, "local:timeout_total"),
        (
            Fault::SlowFirstByte { ms: 2500 },
            true,
            "local:timeout_first_byte",
        ),
        (
            Fault::Status {
                status: 500,
                body: None,
                retry_after: None,
            },
            false,
            "local:http_500",
        ),
        (
            Fault::Status {
                status: 503,
                body: None,
                retry_after: None,
            },
            false,
            "local:http_503",
        ),
        (Fault::MalformedJson, false, "local:malformed_json"),
        (
            Fault::Status {
                status: 502,
                body: None,
                retry_after: None,
            },
            true,
            "local:http_502",
        ),
        (Fault::CutBeforeFirstChunk, true, "local:stream_broken"),
        (Fault::MalformedJson, true, "local:malformed_json"),
        (Fault::Hang, true, "local:timeout_first_byte"),
        // Last: a 429 rests the tier for its Retry-After (below).
        (
            Fault::Status {
                status: 429,
                body: None,
                retry_after: Some(30),
            },
            false,
            "local:http_429",
        ),
    ];
    for (fault, stream, expected) in cases {
        local.set_fault(fault.clone());
        let request = if stream {
            chat_stream("summarize")
        } else {
            chat("summarize", "x")
        };
        let before = api.request_count();
        let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
        assert_eq!(
            answer.status, 200,
            "{fault:?} stream={stream}: {}",
            answer.text
        );
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("api_fast"),
            "{fault:?}"
        );
        assert_eq!(
            answer.header("x-tierwise-fallback"),
            Some(expected),
            "{fault:?} stream={stream}"
        );
        assert_eq!(api.request_count(), before + 1);
        if stream {
            assert!(answer.text.ends_with("data: [DONE]\n\n"), "{}", answer.text);
            assert!(!answer.text.contains("stream_interrupted"));
        } else {
            assert_eq!(
                answer.body["choices"][0]["message"]["content"],
                "Hello from the fake upstream."
            );
        }
    }

    // Rate limited for 30 s: the tier is skipped without a call until then.
    let calls = local.request_count();
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:rate_limited")
    );
    assert_eq!(local.request_count(), calls);

    // Stopped: refused, or cut (a pooled keep-alive connection the fake had not closed yet).
    local.stop().await;
    let answer = gw.ask("embed").await;
    let message = answer.error(502, Some("upstream_unavailable"));
    assert!(
        message.contains("embed_local: connect_refused")
            || message.contains("embed_local: transport"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_after_the_first_chunk_ends_with_an_error_event_not_a_hang() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = config(&local.base_url(), &api.base_url(), false, |p| {
        p.breaker.failures = Some(spanned(2));
        p.timeout.idle_ms = Some(300);
    });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;

    local.set_fault(Fault::CutAfterChunks { chunks: 3 });
    let answer = gw.ask_stream("summarize").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    let events: Vec<&str> = answer
        .text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(events.len(), 4, "3 chunks and the error: {}", answer.text);
    let error: Value = serde_json::from_str(events[3].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "stream_interrupted");
    assert!(!answer.text.contains("[DONE]"));
    assert_eq!(api.request_count(), 0, "a started stream cannot fall back");
    // The breaker heard of it, and the ledger says how the request ended.
    let vllm = gw.provider("vllm").await;
    assert_eq!(vllm["breaker"]["consecutive_failures"], 1);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (200, Some("stream_broken"), Some("local"))
    );

    // An upstream that goes silent mid-stream is cut at idle_ms.
    local.set_fault(Fault::None);
    let _gate = local.hold_streams();
    let answer = gw.ask_stream("summarize").await;
    assert!(
        answer.text.contains("stream_interrupted") && answer.text.contains("timeout_idle"),
        "{}",
        answer.text
    );
    // The second broken stream in a row opened the breaker.
    assert_eq!(gw.breaker_state("vllm").await, "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_short_retry_after_is_retried_once_on_the_same_tier() {
    let (local, api, gw) = setup(|p| p.retry_429_max_wait_ms = Some(1500), |_| {}).await;
    let rate_limited = |times, retry_after| {
        move |b: &mut tierwise_fake::Behavior| {
            b.fault = Fault::Status {
                status: 429,
                body: None,
                retry_after: Some(retry_after),
            };
            b.fault_for = Some(times);
        }
    };
    local.update(rate_limited(1, 1));
    let started = std::time::Instant::now();
    let answer = gw.ask("summarize").await;
    // The retry waited for Retry-After (a lower bound on behaviour, not a speed figure).
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-fallback"), None, "no other tier");
    let store = gw.store().await;
    let id = answer.header("x-tierwise-request-id").unwrap();
    stored(&store, id).await;
    let attempts = store.attempts(id).await.unwrap();
    let attempts: Vec<(&str, &str)> = attempts
        .iter()
        .map(|(tier, outcome)| (tier.as_str(), outcome.as_str()))
        .collect();
    assert_eq!(attempts, [("local", "http_429"), ("local", "ok")]);
    assert_eq!(local.request_count(), 2);
    assert_eq!(api.request_count(), 0);
    // The servers table counts both calls the server was sent, each answered (a 429 is an answer
    // about the tier's rate, not the server's failure).
    let server = gw.provider("vllm").await["servers"][0].clone();
    assert_eq!(
        (server["calls"].as_u64(), server["answered"].as_u64()),
        (Some(2), Some(2)),
        "{server}"
    );

    // Once, not more: rate limited twice, the request moves on to the next tier. (Retry-After 0,
    // so the tier does not rest afterwards.)
    local.update(rate_limited(2, 0));
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(answer.header("x-tierwise-fallback"), Some("local:http_429"));
    assert_eq!((local.request_count(), api.request_count()), (4, 1));
    local.set_fault(Fault::None);
    let local_before = local.request_count();

    // A long Retry-After is not waited for: the next tier answers now.
    local.set_fault(Fault::Status {
        status: 429,
        body: None,
        retry_after: Some(60),
    });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(local.request_count(), local_before + 1);
    // ... and the tier rests for it, called again only once it has passed.
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:rate_limited")
    );
    assert_eq!(local.request_count(), local_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stops_user_traffic_to_the_failing_provider() {
    let (local, api, gw) = setup(breaker(3, Some(60_000)), |_| {}).await;
    local.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    for i in 0..10 {
        let answer = gw.ask("summarize").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
        let expected = if i < 3 {
            "local:http_500"
        } else {
            "local:breaker_open"
        };
        assert_eq!(
            answer.header("x-tierwise-fallback"),
            Some(expected),
            "request {i}"
        );
    }
    assert_eq!(
        local.request_count(),
        3,
        "the provider saw only the calls that opened the breaker"
    );
    let vllm = gw.provider("vllm").await;
    assert_eq!(vllm["breaker"]["state"], "open");
    assert!(
        vllm["breaker"]["last_error"]
            .as_str()
            .unwrap()
            .contains("http_500")
    );
    assert!(vllm["breaker"]["retry_in_ms"].as_u64().unwrap() > 50_000);
    assert_eq!(gw.breaker_state("openai").await, "closed");

    // Client errors are the request's fault and never open a breaker.
    let healthy = FakeUpstream::start().await;
    let gw2 = TestGateway::start(&config(
        &healthy.base_url(),
        &api.base_url(),
        false,
        breaker(1, None),
    ))
    .await;
    healthy.set_fault(Fault::Status {
        status: 400,
        body: None,
        retry_after: None,
    });
    for _ in 0..3 {
        assert_eq!(
            gw2.post("/v1/chat/completions", &chat("summarize", "x"))
                .await
                .status(),
            400
        );
    }
    assert_eq!(gw2.breaker_state("vllm").await, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_provider_gets_traffic_back_within_a_probe_interval_and_cool_down() {
    let local = FakeUpstream::start().await;
    let addr: SocketAddr = local.addr;
    let api = FakeUpstream::start().await;
    let knobs = breaker(2, Some(300));
    let gw = TestGateway::start(&config(&local.base_url(), &api.base_url(), true, knobs)).await;
    local.stop().await;

    // The probe finds it down before any user does.
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );

    // With no user traffic at all, only the probe can close the breaker: one probe interval
    // (50 ms) after the cool-down (300 ms), with slack for a loaded machine.
    let local = FakeUpstream::start_on(addr).await;
    gw.wait_for_breaker("vllm", "closed", Duration::from_millis(1500))
        .await;
    assert_eq!(
        local.request_count(),
        0,
        "closed by the probe, not by a trial call"
    );
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-fallback"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_runs_at_start_and_after_recovery_and_readyz_waits_for_it() {
    let (addr, _api, gw) = down_with_warm_up(|_| {}).await;
    let ready = |gw: &TestGateway| {
        let url = format!("{}/readyz", gw.url);
        let http = gw.http.clone();
        async move { Answer::of(http.get(url).send().await.unwrap()).await }
    };
    // `embed` has only the local embedding tier: not ready while the local provider is down.
    let answer = ready(&gw).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.body["status"], "not_ready");
    assert_eq!(answer.body["routes"]["embed"]["usable_tiers"], json!([]));
    assert_eq!(
        answer.body["routes"]["summarize"]["usable_tiers"],
        json!(["api_fast"])
    );

    let local = FakeUpstream::start_on(addr).await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if ready(&gw).await.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < until, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warmups = local.requests();
    let chat_warmup = warmups
        .iter()
        .find(|r| r.body["model"] == "mistral-7b")
        .expect("chat tier warmed");
    assert_eq!(chat_warmup.body["max_tokens"], 1);
    let embed_warmup = warmups
        .iter()
        .find(|r| r.body["model"] == "nomic-embed-text")
        .expect("embedding tier warmed");
    assert_eq!(embed_warmup.path, "/v1/embeddings");
    let count = warmups.len();
    assert_eq!(count, 2, "one warm-up per tier of the provider");

    // Down and back: warmed again before traffic returns.
    local.stop().await;
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;
    let local = FakeUpstream::start_on(addr).await;
    gw.wait_for_breaker("vllm", "closed", Duration::from_secs(5))
        .await;
    assert!(
        local.requests().iter().any(|r| r.body["max_tokens"] == 1),
        "no warm-up after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_in_flight_spills_to_the_next_tier_at_once() {
    let (local, _api, gw) = setup(
        |p| p.max_in_flight = Some(spanned(1)),
        |c| {
            c.add_route("only_local", TaskKind::Chat, &["local"]);
        },
    )
    .await;
    let gate = local.hold_streams();
    let held = gw
        .post("/v1/chat/completions", &chat_stream("summarize"))
        .await;
    assert_eq!(held.headers()["x-tierwise-tier"], "local");
    let mut held = held.bytes_stream();
    held.next().await.expect("first chunk").unwrap();

    // Spill-over is immediate: were it queueing, these would wait for the held stream (forever).
    let at_once = Duration::from_secs(3);
    let answer = tokio::time::timeout(at_once, gw.ask("summarize"))
        .await
        .expect("spilled at once, not queued");
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:saturated")
    );
    // A route with nowhere to spill to is told so at once: 503, not a wait.
    let answer = tokio::time::timeout(at_once, gw.ask("only_local"))
        .await
        .expect("refused at once, not queued");
    answer.error(503, Some("tiers_unavailable"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:saturated")
    );
    let vllm = gw.provider("vllm").await;
    assert_eq!(
        (vllm["in_flight"].as_u64(), vllm["max_in_flight"].as_u64()),
        (Some(1), Some(1))
    );

    gate.open();
    while held.next().await.is_some() {}
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("local"),
        "the slot is freed when the stream ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_tier_is_open_a_route_tries_its_primary_or_fails_fast() {
    let (local, _api, gw) = setup(breaker(1, Some(60_000)), |c| {
        c.add_route("local_try", TaskKind::Chat, &["local"]);
        c.add_route("local_fast", TaskKind::Chat, &["local"])
            .when_all_open = Some(AllOpen::FailFast);
    })
    .await;
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let first = gw.ask("local_fast").await;
    first.error(502, Some("upstream_unavailable"));
    assert_eq!(local.request_count(), 1);

    let fast = gw.ask("local_fast").await;
    fast.error(503, Some("tiers_unavailable"));
    let retry_after: u64 = fast.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        local.request_count(),
        1,
        "fail_fast does not call the open provider"
    );

    // The last resort fails too: the primary is named once, with how it failed in the end.
    let tried = gw.ask("local_try").await;
    tried.error(502, Some("upstream_unavailable"));
    assert_eq!(tried.header("x-tierwise-fallback"), Some("local:http_503"));
    assert_eq!(local.request_count(), 2);

    local.set_fault(Fault::None);
    let tried = gw.ask("local_try").await;
    assert_eq!(tried.status, 200, "{}", tried.text);
    assert_eq!(
        tried.header("x-tierwise-fallback"),
        None,
        "the primary answered: nothing was fallen back from"
    );
    assert_eq!(local.request_count(), 3);
    assert_eq!(
        gw.breaker_state("vllm").await,
        "open",
        "a last-resort call cannot close it: only its trial or its probe can (issue 31.1)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_the_local_server_under_load_fails_no_request() {
    const TOTAL: usize = 2000;
    const CONCURRENCY: usize = 32;
    let local = FakeUpstream::start().await;
    let addr = local.addr;
    let api = FakeUpstream::start().await;
    let knobs = breaker(3, Some(100));
    let gw = Arc::new(
        TestGateway::start(&config(&local.base_url(), &api.base_url(), true, knobs)).await,
    );

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let served_local = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (gw, next, done, served_local) =
                (gw.clone(), next.clone(), done.clone(), served_local.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    let response = gw
                        .post("/v1/chat/completions", &chat("summarize", "x"))
                        .await;
                    let status = response.status().as_u16();
                    let tier = response
                        .headers()
                        .get("x-tierwise-tier")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body = response.text().await.unwrap();
                    if status != 200 || !body.contains("Hello from the fake upstream.") {
                        failures.push(format!("{status}: {body}"));
                    } else if tier.as_deref() == Some("local") {
                        served_local.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();

    wait_until("400 requests", Duration::from_secs(60), || {
        done.load(Ordering::Relaxed) >= 400
    })
    .await;
    // Answers cut halfway, as a server being killed cuts the ones in flight.
    local.set_fault(Fault::CutMidBody);
    let cut_from = local.request_count();
    wait_until("500 requests", Duration::from_secs(60), || {
        done.load(Ordering::Relaxed) >= 500
    })
    .await;
    let cut = local.request_count() - cut_from;
    local.stop().await;
    let local_before = served_local.load(Ordering::Relaxed);
    wait_until("1000 requests", Duration::from_secs(60), || {
        done.load(Ordering::Relaxed) >= 1000
    })
    .await;
    let local = FakeUpstream::start_on(addr).await;
    let restarted_at = done.load(Ordering::Relaxed);

    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert_eq!(
        done.load(Ordering::Relaxed),
        TOTAL,
        "every request accounted for"
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        local_before > 0,
        "local served nothing before it was killed"
    );
    assert!(cut > 0, "no answer was cut mid-body");
    assert!(
        restarted_at < TOTAL - 200,
        "the restart came too late to see traffic return ({restarted_at} of {TOTAL} done)"
    );
    // Traffic comes back once the cool-down has passed and a probe or trial has succeeded. On a
    // fast run the last 200 requests can be done before that (a suite run once failed so); then
    // it must come back within a few seconds of further requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while local.request_count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "traffic never returned to the restarted local server"
        );
        assert_eq!(gw.ask("summarize").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_walks_away_never_counts_against_the_provider() {
    // One failure would open this breaker.
    let (local, _api, gw) = setup(breaker(1, Some(60_000)), |_| {}).await;
    let _gate = local.hold_streams_after(2);
    for _ in 0..3 {
        let response = gw
            .post("/v1/chat/completions", &chat_stream("summarize"))
            .await;
        assert_eq!(response.headers()["x-tierwise-tier"], "local");
        let mut body = response.bytes_stream();
        tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a first chunk")
            .expect("a chunk")
            .unwrap();
        drop(body);
    }
    assert_eq!(gw.breaker_state("vllm").await, "closed");
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_fall_back_and_are_priced() {
    let (local, api, gw) = setup(
        |_| {},
        |c| {
            c.0.tiers.insert(
                tierwise::config::file::text("embed_api"),
                tierwise::config::file::RawTier::new("openai", "text-embedding-3-small"),
            );
            c.route("embed").tiers = spanned(
                ["embed_local", "embed_api"]
                    .map(tierwise::config::file::text)
                    .to_vec(),
            );
        },
    )
    .await;
    api.update(|b| b.prompt_tokens = 1000);
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = Answer::of(
        gw.post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ["a document"]}),
        )
        .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("embed_api"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("embed_local:http_503")
    );
    // text-embedding-3-small: 1000 tokens at $0.02 per million.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.00002"));
    assert_eq!(api.requests()[0].body["model"], "text-embedding-3-small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_not_sent_to_a_recovered_provider_until_its_warm_up_is_done() {
    let (addr, _api, gw) = down_with_warm_up(|p| p.timeout.total_ms = Some(5000)).await;
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;

    // Back, answering its probe at once but its model slowly: the warm-up takes 1.5 s.
    let local = FakeUpstream::start_on(addr).await;
    local.update(|b| {
        b.fault = Fault::SlowFirstByte { ms: 1500 };
        b.fault_model = Some("mistral-7b".into());
    });
    wait_until("the warm-up call", Duration::from_secs(5), || {
        local.request_count() > 0
    })
    .await;
    // While it warms up, users go to the next tier without waiting on it.
    let answer = tokio::time::timeout(Duration::from_secs(1), gw.ask("summarize"))
        .await
        .expect("not held by the warm-up");
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );

    // Warmed up, the provider closes and gets users back.
    back_to_local(&local, &gw).await;
}

/// The breaker's error-rate rule through the gateway: with consecutive failures out of reach, it
/// opens once `min_requests` calls in the window have failed at `error_rate`, not before; its
/// gauge says so; failed trials double the cool-down up to `max_cooldown_ms` and no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_its_error_rate_and_caps_its_cool_down() {
    let (local, _api, gw) = setup(
        |p| {
            p.breaker.failures = Some(spanned(1000));
            p.breaker.error_rate = Some(spanned(0.5));
            p.breaker.min_requests = Some(6);
            p.breaker.window_ms = Some(60_000);
            p.breaker.cooldown_ms = Some(200);
            p.breaker.max_cooldown_ms = Some(300);
        },
        |_| {},
    )
    .await;
    let fail_once = || {
        local.update(|b| {
            b.fault = Fault::Status {
                status: 500,
                body: None,
                retry_after: None,
            };
            b.fault_for = Some(1);
        })
    };
    // Five calls, two failed (40%): closed. The sixth fails: 3 of 6, 50% — open.
    for fails in [true, false, true, false, false] {
        if fails {
            fail_once();
        }
        assert_eq!(gw.ask("summarize").await.status, 200);
    }
    assert_eq!(gw.breaker_state("vllm").await, "closed");
    fail_once();
    assert_eq!(gw.ask("summarize").await.status, 200);
    let vllm = gw.provider("vllm").await;
    assert_eq!(vllm["breaker"]["state"], "open", "{vllm}");
    assert_eq!(
        vllm["breaker"]["consecutive_failures"], 1,
        "opened by the rate, not by a run of failures: {vllm}"
    );
    // The gauge is set when the breaker opens. Once the 200 ms cool-down is over the breaker reads
    // half-open and the gauge 0, so on a machine busy enough to delay the first scrape that long
    // the open state can no longer be seen (a run of the suite once failed so). tests/it/metrics.rs
    // checks the gauge on a breaker that stays open.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw
        .metrics()
        .await
        .contains("tierwise_provider_breaker_open{provider=\"vllm\"} 1")
        && gw.provider("vllm").await["breaker"]["state"] == "open"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics never showed the open breaker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Down for good: each trial fails and the cool-down doubles, 200 → 300 (capped, not 400) → 300.
    local.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gw.provider("vllm").await["breaker"]["retry_in_ms"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the cool-down never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            gw.ask("summarize").await.status,
            200,
            "the trial failed over"
        );
        let vllm = gw.provider("vllm").await;
        assert_eq!(vllm["breaker"]["state"], "open", "{vllm}");
        let retry_in = vllm["breaker"]["retry_in_ms"].as_u64().unwrap();
        assert!(
            (200..=300).contains(&retry_in),
            "cool-down {retry_in} ms: {vllm}"
        );
    }
}

/// A provider whose probe passes but whose warm-up fails stays down: users keep going to the next
/// tier, probe after probe, until a warm-up succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_warm_up_keeps_the_provider_down_until_one_succeeds() {
    let (addr, _api, gw) = down_with_warm_up(|_| {}).await;
    let local = FakeUpstream::start_on(addr).await;
    // The listing (the probe) answers; the chat model does not.
    local.update(|b| {
        b.fault = Fault::Status {
            status: 500,
            body: None,
            retry_after: None,
        };
        b.fault_model = Some("mistral-7b".into());
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while local.listings().len() < 5 {
        assert!(std::time::Instant::now() < deadline, "probes stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        local.requests().iter().any(|r| r.body["max_tokens"] == 1),
        "the warm-up was tried"
    );
    assert_ne!(gw.breaker_state("vllm").await, "closed");
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("api_fast"),
        "{}",
        answer.text
    );

    back_to_local(&local, &gw).await;
}

/// A tier's own `timeout.total_ms` overrides its provider's for that tier only: the chat tier gives
/// up at its 300 ms and falls back, while the embedding tier on the same provider waits out the
/// same slow server under the provider's 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_own_timeouts_override_its_providers_for_that_tier_only() {
    let (local, api, gw) = setup(
        |p| p.breaker.failures = Some(spanned(1000)),
        |c| {
            let tier = c.0.tiers.get_mut(&text("local")).unwrap();
            tier.timeout.total_ms = Some(300);
        },
    )
    .await;
    local.set_fault(Fault::SlowFirstByte { ms: 1000 });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert!(
        answer
            .header("x-tierwise-fallback")
            .is_some_and(|f| f.starts_with("local:timeout")),
        "{:?}",
        answer.header("x-tierwise-fallback")
    );
    let embedded = Answer::of(
        gw.post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": "slow but within the provider's 5 s"}),
        )
        .await,
    )
    .await;
    assert_eq!(embedded.status, 200, "{}", embedded.text);
    assert_eq!(embedded.header("x-tierwise-tier"), Some("embed_local"));
    assert_eq!(api.requests().len(), 1, "only the chat call fell back");
}

/// A listener whose queue is full: the kernel drops further SYNs, so a connect to it hangs — a
/// host that does not answer, on loopback. The held connections keep the queue full.
fn unanswering_addr() -> (
    std::net::SocketAddr,
    socket2::Socket,
    Vec<std::net::TcpStream>,
) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Fill the accept queue; a connect that does not complete at once means it is full.
    for _ in 0..8 {
        let stream =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if stream
            .connect_timeout(&addr.into(), Duration::from_millis(200))
            .is_err()
        {
            break;
        }
        held.push(stream.into());
    }
    (addr, socket, held)
}

/// `connect_ms` bounds the connection to a host that does not answer: the call gives up there,
/// falls back, and says it was the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_answer_is_given_up_at_connect_ms() {
    let (addr, _listener, _held) = unanswering_addr();
    let api = FakeUpstream::start().await;
    let config = config(&format!("http://{addr}/v1"), &api.base_url(), false, |p| {
        p.timeout.connect_ms = Some(300);
        p.timeout.first_byte_ms = Some(20_000);
        p.timeout.total_ms = Some(30_000);
    });
    let gw = TestGateway::start(&config).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), gw.ask("summarize"))
        .await
        .expect("given up long before total_ms");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:timeout_connect")
    );
}

/// A server that resets the connection once it has the request (a crashed worker behind a proxy):
/// the call falls back, and says it was a reset, not some other transport failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_before_the_answer_falls_back_and_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            // Read the request's head, then close with RST (linger 0) instead of answering.
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let socket = socket2::Socket::from(stream);
            let _ = socket.set_linger(Some(Duration::ZERO));
            drop(socket);
        }
    });
    let api = FakeUpstream::start().await;
    let config = config(&format!("http://{addr}/v1"), &api.base_url(), false, |_| {});
    let gw = TestGateway::start(&config).await;
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:connect_reset")
    );
}

/// A provider whose host name does not resolve falls back and says so (`dns`), not as some other
/// connection failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_does_not_resolve_falls_back_and_is_named() {
    let api = FakeUpstream::start().await;
    // .invalid never resolves (RFC 2606).
    let config = config(
        "http://tierwise-test.invalid/v1",
        &api.base_url(),
        false,
        |p| {
            p.timeout.connect_ms = Some(5000);
        },
    );
    let gw = TestGateway::start(&config).await;
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-fallback"), Some("local:dns"));
}

/// A tier that answers that the request does not fit its context window (vLLM's own 400) is
/// passed over like a failure, without its breaker hearing of it — the request's size is not the
/// provider's health; when no tier can fit it, the client gets OpenAI's `context_length_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_long_for_a_tier_moves_on_and_is_a_400_when_none_fits() {
    let (local, api, gw) = setup(|_| {}, |_| {}).await;
    let too_long = |max: u32| {
        Fault::Status {
        status: 400,
        body: Some(
            json!({"object": "error", "message": format!("This model's maximum context length is {max} tokens. However, you requested 12000 tokens (11000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."), "type": "BadRequestError", "param": null, "code": 400})
                .to_string(),
        ),
        retry_after: None,
    }
    };
    local.set_fault(too_long(8192));
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(
        gw.provider("vllm").await["breaker"]["consecutive_failures"],
        0
    );

    api.set_fault(too_long(128_000));
    let answer = gw.ask("summarize").await;
    let message = answer.error(400, Some("context_length_exceeded"));
    assert!(
        message.contains("local") && message.contains("api_fast"),
        "{message}"
    );
    assert_eq!(
        gw.provider("openai").await["breaker"]["consecutive_failures"],
        0
    );
}

/// A chat request about `words` words long.
fn long_chat(words: usize) -> Value {
    chat(
        "summarize",
        &"lorem ipsum dolor sit amet ".repeat(words / 5),
    )
}

/// A tier with a known context window is passed over, without a call, by a request that cannot
/// fit it (prompt plus answer budget), and still gets the ones that can; the window is configured
/// here (`context_tokens`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_fit_a_tiers_window_skips_it_without_a_call() {
    let (local, _api, gw) = setup(
        |_| {},
        |c| {
            let tier = c.0.tiers.get_mut(&text("local")).unwrap();
            tier.context_tokens = Some(spanned(2000));
        },
    )
    .await;
    let short = Answer::of(gw.post("/v1/chat/completions", &long_chat(100)).await).await;
    assert_eq!(
        short.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        short.text
    );
    assert_eq!(local.request_count(), 1);

    // ~4,000 tokens of prompt and the tier's 256 of answer: more than 2,000.
    let long = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(long.status, 200, "{}", long.text);
    assert_eq!(long.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        long.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(local.request_count(), 1, "local was not called");
    let store = gw.store().await;
    let id = long.header("x-tierwise-request-id").unwrap();
    stored(&store, id).await;
    let attempts = store.attempts(id).await.unwrap();
    assert_eq!(
        attempts[0],
        ("local".to_string(), "context_too_long".to_string())
    );
}

/// A tier's window is learned from its own refusal (vLLM's 400 names it): the next request that
/// cannot fit skips it without a call, while short ones still go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_window_is_learned_from_its_refusal() {
    let (local, _api, gw) = setup(|_| {}, |_| {}).await;
    local.update(|b| {
        b.fault = Fault::Status {
            status: 400,
            body: Some(
                json!({"object": "error", "message": "This model's maximum context length is 2000 tokens. However, you requested 4256 tokens (4000 in the messages, 256 in the completion). Please reduce the length of the messages or completion.", "type": "BadRequestError", "param": null, "code": 400})
                    .to_string(),
            ),
            retry_after: None,
        };
        b.fault_for = Some(1);
    });
    let first = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(
        first.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(local.request_count(), 1);

    let second = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(second.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        second.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(
        local.request_count(),
        1,
        "skipped without a call once its window is known"
    );

    let short = Answer::of(gw.post("/v1/chat/completions", &long_chat(50)).await).await;
    assert_eq!(
        short.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        short.text
    );
}

/// A tier whose model lacks tools, JSON schemas or vision is passed over, without a call, by a
/// request that needs one, which reaches the next tier byte for byte; other requests still go to
/// it; and a route with no tier able is a 400 naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_needing_what_a_tier_lacks_skip_it_without_a_call() {
    let (local, api, gw) = setup(
        |_| {},
        |c| {
            let tier = c.0.tiers.get_mut(&text("local")).unwrap();
            tier.tools = Some(false);
            tier.json_schema = Some(false);
            tier.vision = Some(false);
            c.add_route("only_local", TaskKind::Chat, &["local"]);
        },
    )
    .await;
    let with = |extra: Value| {
        let mut body = chat("summarize", "What is the weather in Paris?");
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let tools = json!({"tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], "tool_choice": "auto"});
    let schema = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}});
    let image = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    for (extra, reason) in [
        (tools.clone(), "local:no_tools"),
        (schema, "local:no_json_schema"),
        (image, "local:no_vision"),
    ] {
        let body = with(extra);
        let answer = Answer::of(gw.post("/v1/chat/completions", &body).await).await;
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("api_fast"),
            "{}",
            answer.text
        );
        assert_eq!(answer.header("x-tierwise-fallback"), Some(reason));
        let sent = api.requests().last().unwrap().body.clone();
        for key in ["tools", "response_format", "messages"] {
            assert_eq!(sent[key], body[key], "{key} reached the next tier as sent");
        }
    }
    assert_eq!(local.request_count(), 0, "never called for what it lacks");

    let plain = with(json!({"response_format": {"type": "json_object"}}));
    let answer = Answer::of(gw.post("/v1/chat/completions", &plain).await).await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));

    let mut only_local = with(tools);
    only_local["model"] = "only_local".into();
    let refused = Answer::of(gw.post("/v1/chat/completions", &only_local).await).await;
    refused.error(400, Some("unsupported_parameter"));
    assert_eq!(refused.body["error"]["param"], "tools");
    assert_eq!(
        gw.provider("vllm").await["breaker"]["consecutive_failures"],
        0
    );
}

/// vLLM lists each model's `max_model_len` at `/v1/models`, which the probe reads: a request that
/// cannot fit the discovered window skips the tier without a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_window_is_discovered_from_vllms_model_listing() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| {
        b.models = vec!["mistral-7b".into()];
        b.max_model_len = Some(2000);
    });
    let gw = TestGateway::start(&config(&local.base_url(), &api.base_url(), true, |_| {})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Two probes: the first one's listing has been read.
    while local.listings().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no probe arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let long = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(
        long.header("x-tierwise-tier"),
        Some("api_fast"),
        "{}",
        long.text
    );
    assert_eq!(
        long.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(local.request_count(), 0);
    let short = Answer::of(gw.post("/v1/chat/completions", &long_chat(50)).await).await;
    assert_eq!(short.header("x-tierwise-tier"), Some("local"));
}

/// Waits until the probe loop has gone past its first discovery of `path` (the next probe's listing
/// has arrived after it), so that what it read is in force.
async fn wait_past_discovery(local: &FakeUpstream, path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let paths: Vec<String> = local.listings().into_iter().map(|r| r.path).collect();
        if let Some(at) = paths.iter().position(|p| p == path)
            && paths[at..].iter().any(|p| p == "/v1/models")
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no discovery: {paths:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ollama says its model's window at `POST /api/show` (the served `num_ctx`, else the trained
/// length), llama.cpp at `GET /props`: either is read at start-up, and a request that cannot fit
/// skips the local tier without a call while a short one is served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_window_is_discovered_from_ollama_and_from_llama_cpp() {
    for server in ["ollama", "llama.cpp"] {
        let local = FakeUpstream::start().await;
        let api = FakeUpstream::start().await;
        local.update(|b| {
            b.models = vec!["mistral-7b".into()];
            if server == "ollama" {
                b.ollama_show = Some(tierwise_fake::OllamaShow {
                    context_length: 32_768,
                    num_ctx: Some(2000),
                });
            } else {
                b.llama_cpp_n_ctx = Some(2000);
            }
        });
        let gw =
            TestGateway::start(&config(&local.base_url(), &api.base_url(), true, |_| {})).await;
        wait_past_discovery(
            &local,
            if server == "ollama" {
                "/api/show"
            } else {
                "/props"
            },
        )
        .await;
        if server == "ollama" {
            let asked = local
                .listings()
                .into_iter()
                .find(|r| r.path == "/api/show")
                .unwrap();
            assert_eq!(asked.body["model"], "mistral-7b");
        }
        let long = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
        assert_eq!(long.header("x-tierwise-tier"), Some("api_fast"), "{server}");
        assert_eq!(
            long.header("x-tierwise-fallback"),
            Some("local:context_too_long"),
            "{server}"
        );
        assert_eq!(local.request_count(), 0, "{server}");
        let short = Answer::of(gw.post("/v1/chat/completions", &long_chat(50)).await).await;
        assert_eq!(short.header("x-tierwise-tier"), Some("local"), "{server}");
        gw.shutdown().await;
    }
}

/// A stream whose client leaves before its first byte is not sent to the next tier when its tier
/// then fails: once the client has gone nothing more is called, or charged, for it (review F7).
/// Its row is 499 `client_closed` with no tier, and its attempts say where the chain stopped.
/// Seen failing with the chain's check before each call removed (api_fast called, the row's tier
/// api_fast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_left_before_its_first_byte_does_not_fall_back() {
    let (local, api, gw) = setup(|p| p.timeout.first_byte_ms = Some(400), |_| {}).await;
    local.set_fault(Fault::Hang);
    let store = gw.store().await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let gave_up = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_stream("summarize"))
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to give up");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        if let Some(row) = store
            .requests(since, i64::MAX, None)
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            break row;
        }
        assert!(
            std::time::Instant::now() < until,
            "the request was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (499, Some("client_closed"), None),
        "{row:?}"
    );
    assert_eq!(api.request_count(), 0, "the next tier was called");
    assert_eq!(
        store.attempts(&row.id).await.unwrap(),
        [
            ("local".to_string(), "timeout_first_byte".to_string()),
            ("api_fast".to_string(), "client_closed".to_string()),
        ]
    );
    gw.shutdown().await;
}
