//! The breaker's states through the gateway (issue 31, items 1, 2 and 4; issue 23): only its own
//! trial or its probe closes an open breaker, a failing probe re-opens a half-open one and
//! half-open is not up, one tier's refused warm-up does not keep its provider down, and every
//! change of state is logged. Each test here was seen failing against a break of its fix (the
//! commit that added it says which).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tierwise::config::file::{RawProvider, RawTier, spanned, text};
use tierwise::config::{AllOpen, TaskKind};
use tierwise_fake::{FakeUpstream, Fault, wait_until};

use crate::util::*;

/// The local tiers on a provider named `provider` (a name only one test uses, for its metrics),
/// probes off unless `knobs` sets them, one failure opening its breaker.
fn config(
    local: &FakeUpstream,
    api: &FakeUpstream,
    provider: &str,
    knobs: impl FnOnce(&mut RawProvider),
) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let mut gpu =
            c.0.providers
                .remove("vllm")
                .expect("the test config's vllm");
        gpu.health.enabled = Some(false);
        gpu.breaker.failures = Some(spanned(1));
        knobs(&mut gpu);
        c.0.providers.insert(text(provider), gpu);
        for tier in c.0.tiers.values_mut() {
            if tier.provider.get_ref() == "vllm" {
                tier.provider = text(provider);
            }
        }
    })
}

fn status(code: u16) -> Fault {
    Fault::Status {
        status: code,
        body: None,
        retry_after: None,
    }
}

/// Waits until the provider's cool-down is over (its breaker would let a trial through).
async fn wait_out_cool_down(gw: &TestGateway, provider: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while gw.provider(provider).await["breaker"]["retry_in_ms"] != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the cool-down never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request naming the tier when its breaker is open goes through as the last resort
/// (`when_all_open = "try_primary"`); whatever it meets — an answer, a client error — the
/// breaker stays open until its own trial or probe says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_resort_call_through_an_open_breaker_does_not_close_it() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let knobs = |p: &mut RawProvider| p.breaker.cooldown_ms = Some(60_000);
    let gw = TestGateway::start(&config(&local, &api, "lastresort_gpu", knobs)).await;
    local.set_fault(status(503));
    gw.ask("local")
        .await
        .error(502, Some("upstream_unavailable"));
    assert_eq!(gw.breaker_state("lastresort_gpu").await, "open");

    local.set_fault(Fault::None);
    let answer = gw.ask("local").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(
        gw.breaker_state("lastresort_gpu").await,
        "open",
        "a last-resort success closed the breaker"
    );
    local.set_fault(status(400));
    gw.ask("local").await.error(400, None);
    assert_eq!(gw.breaker_state("lastresort_gpu").await, "open");
    // The route still skips the tier: it was not closed behind the users' back.
    local.set_fault(Fault::None);
    assert_eq!(
        gw.ask("summarize").await.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );
}

/// A stream admitted while the breaker was closed, which ends well after the breaker opened,
/// says nothing about the provider now: the breaker stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_admitted_before_the_breaker_opened_does_not_close_it_when_it_ends() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let knobs = |p: &mut RawProvider| p.breaker.cooldown_ms = Some(60_000);
    let gw = TestGateway::start(&config(&local, &api, "latestream_gpu", knobs)).await;
    let gate = local.hold_streams();
    let held = gw
        .post("/v1/chat/completions", &chat_stream("summarize"))
        .await;
    assert_eq!(held.headers()["x-tierwise-tier"], "local");
    let mut held = held.bytes_stream();
    held.next().await.expect("first chunk").unwrap();

    local.set_fault(status(503));
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-fallback"), Some("local:http_503"));
    assert_eq!(gw.breaker_state("latestream_gpu").await, "open");

    // The stream's lease is settled before its `[DONE]` reaches the client.
    local.set_fault(Fault::None);
    gate.open();
    let mut text = Vec::new();
    while let Some(chunk) = held.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&text).contains("[DONE]"));
    assert_eq!(
        gw.breaker_state("latestream_gpu").await,
        "open",
        "the late stream closed the breaker"
    );
    assert_eq!(
        gw.ask("summarize").await.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );
}

/// The half-open breaker's trial meets a client error: neither the provider's success nor its
/// failure. The breaker stays half-open (not up for `/readyz`, and the provider-down alert
/// covers it) and the next call is the trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_in_the_trial_neither_closes_nor_reopens_the_breaker() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let knobs = |p: &mut RawProvider| p.breaker.cooldown_ms = Some(100);
    let gw = TestGateway::start(&config(&local, &api, "clienterr_gpu", knobs)).await;
    local.set_fault(status(503));
    gw.ask("summarize").await;
    assert_eq!(gw.breaker_state("clienterr_gpu").await, "open");
    wait_out_cool_down(&gw, "clienterr_gpu").await;

    local.set_fault(status(400));
    gw.ask("summarize").await.error(400, None);
    assert_eq!(local.request_count(), 2, "the second call was the trial");
    assert_eq!(
        gw.breaker_state("clienterr_gpu").await,
        "half_open",
        "a client error is no news of the provider"
    );
    let readyz = Answer::of(gw.get("/readyz").await).await;
    assert_eq!(
        readyz.body["routes"]["summarize"]["usable_tiers"],
        json!(["api_fast"]),
        "half-open is not up: {}",
        readyz.text
    );
    let metrics = gw
        .wait_for_metrics(|m| {
            m.contains("tierwise_provider_breaker_open{provider=\"clienterr_gpu\"}")
        })
        .await;
    let gauge = gauge(
        &metrics,
        "tierwise_provider_breaker_open{provider=\"clienterr_gpu\"}",
    );
    assert!(
        provider_down_alert_fires(gauge),
        "the provider-down alert does not cover a half-open breaker (gauge {gauge})"
    );
    assert!(!provider_down_alert_fires(0.0));

    local.set_fault(Fault::None);
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(gw.breaker_state("clienterr_gpu").await, "closed");
}

fn gauge(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether the shipped `TierwiseProviderDown` rule fires for a breaker gauge of `value`: its
/// expression is `tierwise_provider_breaker_open <op> <number>`.
fn provider_down_alert_fires(value: f64) -> bool {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules =
        std::fs::read_to_string(root.join("examples/prometheus/tierwise-alerts.yml")).unwrap();
    let rule = rules
        .split("- alert: ")
        .find(|rule| rule.starts_with("TierwiseProviderDown"))
        .expect("the provider-down alert");
    let expr = rule
        .lines()
        .find_map(|line| line.trim().strip_prefix("expr: "))
        .expect("its expression");
    let words: Vec<&str> = expr.split_whitespace().collect();
    let [series, op, bound] = words[..] else {
        panic!("an expression of another shape: {expr}");
    };
    assert_eq!(series, "tierwise_provider_breaker_open");
    let bound: f64 = bound.parse().unwrap();
    match op {
        "==" => value == bound,
        ">" => value > bound,
        ">=" => value >= bound,
        "!=" => value != bound,
        _ => panic!("an operator this test does not know: {expr}"),
    }
}

/// A provider with a probe and warm-up is brought back by its probe alone. A request after its
/// cool-down, while the probe keeps failing, does not move it to half-open (where it stayed for
/// good, counted as up): it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_provider_stays_open_after_its_cool_down_while_its_probe_fails() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let knobs = |p: &mut RawProvider| {
        p.warmup = true;
        p.health.enabled = Some(true);
        p.health.interval_ms = Some(spanned(50));
        p.health.timeout_ms = Some(300);
        p.breaker.cooldown_ms = Some(100);
    };
    let gw = TestGateway::start(&config(&local, &api, "probed_gpu", knobs)).await;
    wait_until("the first probe", Duration::from_secs(5), || {
        !local.listings().is_empty()
    })
    .await;
    gw.wait_for_breaker("probed_gpu", "closed", Duration::from_secs(5))
        .await;
    local.set_fault(status(503));
    gw.wait_for_breaker("probed_gpu", "open", Duration::from_secs(5))
        .await;
    wait_out_cool_down(&gw, "probed_gpu").await;

    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:breaker_open")
    );
    // Two more failed probes after the request.
    let probes = local.listings().len();
    wait_until("two more probes", Duration::from_secs(5), || {
        local.listings().len() >= probes + 2
    })
    .await;
    let status = gw.provider("probed_gpu").await;
    assert_eq!(status["breaker"]["state"], "open", "{status}");
    assert_eq!(status["up"], false);
}

/// A provider probed without warm-up takes a user's call as its half-open trial; a probe that
/// fails while the trial is out opens it again at once, without waiting for the trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_reopens_a_half_open_breaker() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let knobs = |p: &mut RawProvider| {
        p.health.enabled = Some(true);
        p.health.interval_ms = Some(spanned(50));
        p.health.timeout_ms = Some(300);
        p.breaker.cooldown_ms = Some(100);
        p.timeout.first_byte_ms = Some(20_000);
        p.timeout.total_ms = Some(20_000);
    };
    let gw = TestGateway::start(&config(&local, &api, "reopen_gpu", knobs)).await;
    wait_until("the first probe", Duration::from_secs(5), || {
        !local.listings().is_empty()
    })
    .await;
    // The probe times out against a server that accepts and never answers: open.
    local.set_fault(Fault::Hang);
    gw.wait_for_breaker("reopen_gpu", "open", Duration::from_secs(5))
        .await;
    wait_out_cool_down(&gw, "reopen_gpu").await;
    let gw = std::sync::Arc::new(gw);
    let trial = tokio::spawn({
        let gw = gw.clone();
        async move { gw.ask("local").await }
    });
    wait_until("the trial call", Duration::from_secs(5), || {
        local.request_count() == 1
    })
    .await;
    gw.wait_for_breaker("reopen_gpu", "open", Duration::from_secs(3))
        .await;
    assert!(
        !trial.is_finished(),
        "the probe re-opened it, not the trial's end"
    );
    trial.abort();
}

/// A warm-up refused with a 4xx by one tier (an embedding model its server will not warm) is
/// that tier's note: the provider comes up and its chat tier serves. A tier no route names is
/// warmed with chat and, refused, with embeddings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_refused_at_warm_up_does_not_keep_its_provider_down() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| {
        b.fault = status(400);
        b.fault_model = Some("nomic-embed-text".into());
        b.embedding_models = vec!["bge-small".into()];
    });
    let knobs = |p: &mut RawProvider| {
        p.warmup = true;
        p.health.enabled = Some(true);
        p.health.interval_ms = Some(spanned(50));
        p.health.timeout_ms = Some(300);
    };
    let config = config(&local, &api, "warmup_gpu", knobs).with(|c| {
        c.0.tiers.insert(
            text("embed_direct"),
            RawTier::new("warmup_gpu", "bge-small"),
        );
    });
    let gw = TestGateway::start(&config).await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = gw.provider("warmup_gpu").await;
        if status["up"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the provider never came up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-fallback"), None);

    let calls: Vec<(String, String)> = local
        .requests()
        .iter()
        .filter(|r| r.body["model"] == "bge-small")
        .map(|r| {
            (
                r.path.clone(),
                r.body["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("/v1/chat/completions".to_string(), "bge-small".to_string()),
            ("/v1/embeddings".to_string(), "bge-small".to_string()),
        ],
        "warmed with chat, then with embeddings"
    );
}

/// `tierwise serve`'s log has one line per change of state, with provider, from, to and why:
/// closed → open, open → half-open (the trial), half-open → open (it failed), and again
/// open → half-open → closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_breaker_state_change_is_logged_with_its_reason() {
    let up = FakeUpstream::start().await;
    let dir = std::env::temp_dir().join(format!("tierwise-breaker-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = tierwise::config::file::ConfigFile::default();
    file.server.listen = Some(text("127.0.0.1:0"));
    file.ledger.url = Some(text("sqlite://ledger.db"));
    let mut provider = RawProvider::new(up.base_url());
    provider.health.enabled = Some(false);
    provider.breaker.failures = Some(spanned(1));
    provider.breaker.cooldown_ms = Some(50);
    file.providers.insert(text("logged_gpu"), provider);
    file.tiers
        .insert(text("t"), RawTier::new("logged_gpu", "m"));
    let mut route = tierwise::config::file::RawRoute::new(TaskKind::Chat, &["t"]);
    route.when_all_open = Some(AllOpen::FailFast);
    file.routes.insert(text("r"), route);
    let config = dir.join("tierwise.toml");
    std::fs::write(&config, TestConfig(file).toml()).unwrap();
    let log = dir.join("serve.log");
    let (child, url) =
        crate::proof::serve(&config, &[("TIERWISE_LOG", "tierwise=info")], &log).await;

    let http = reqwest::Client::new();
    let ask = || async {
        http.post(format!("{url}/v1/chat/completions"))
            .json(&chat("r", "hi"))
            .send()
            .await
            .unwrap()
            .status()
    };
    up.set_fault(status(503));
    assert_eq!(ask().await, 502);
    // Asked until the cool-down lets a trial through, which fails.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while up.request_count() < 2 {
        assert!(std::time::Instant::now() < until, "no trial call");
        ask().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    up.set_fault(Fault::None);
    while ask().await != 200 {
        assert!(std::time::Instant::now() < until, "never closed again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crate::proof::signal(&child, "-TERM");
    assert!(crate::proof::exited(child).await.success());

    let text = std::fs::read_to_string(&log).unwrap();
    let changes: Vec<(String, String)> = text
        .lines()
        .filter(|line| line.contains("provider state changed"))
        .map(|line| {
            assert!(line.contains("provider=logged_gpu"), "{line}");
            assert!(line.contains("reason="), "{line}");
            (field(line, "from"), field(line, "to"))
        })
        .collect();
    let expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    .map(|(from, to)| (from.to_string(), to.to_string()));
    assert_eq!(changes, expected, "{text}");
    std::fs::remove_dir_all(dir).ok();
}

/// A field of a text log line, `name=value` or `name="value"`.
fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// llama.cpp's 500 in its own words for a request it cannot take.
fn llama_refusal(message: &str) -> Fault {
    Fault::Status {
        status: 500,
        body: Some(
            json!({"error": {"code": 500, "message": message, "type": "server_error"}}).to_string(),
        ),
        retry_after: None,
    }
}

/// A 5xx about the request is not the server's health (issue 30's hole): llama.cpp answers audio
/// sent to a model without a projector, an unknown `reasoning_format` or an input over its batch
/// with a 500 in its own words, and any server answers 501 for what it does not implement. However
/// many of them one client sends, plain or streamed, they move on to the next tier, reach the
/// client as a 400 where no tier is left, and the breaker every other client depends on stays
/// closed (one failure opens it here); a 500 in other words still opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_shaped_5xx_never_open_the_breaker_but_a_real_500_does() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&local, &api, "refusing_gpu", |_| {})).await;
    let refusals = [
        (
            llama_refusal(
                "audio input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
            ),
            "local:request_refused",
        ),
        (
            llama_refusal("Unknown reasoning format: deep_think"),
            "local:request_refused",
        ),
        (
            llama_refusal(
                "input (3926 tokens) is too large to process. increase the physical batch size (current batch size: 2048)",
            ),
            "local:request_refused",
        ),
        (
            Fault::Status {
                status: 501,
                body: Some(r#"{"error":{"code":501,"message":"The current model does not support audio input.","type":"not_supported_error"}}"#.into()),
                retry_after: None,
            },
            "local:http_501",
        ),
    ];
    for (fault, fallback) in refusals {
        local.set_fault(fault);
        for _ in 0..3 {
            gw.ask("summarize")
                .await
                .assert_served_by("api_fast", fallback);
        }
        gw.ask_stream("summarize")
            .await
            .assert_served_by("api_fast", fallback);
    }
    assert_eq!(gw.breaker_state("refusing_gpu").await, "closed");

    // No tier left: the client's to change, as a 400 its SDK does not retry.
    local.set_fault(llama_refusal("Unknown reasoning format: deep_think"));
    let answer = gw.ask("local").await;
    let message = answer.error(400, Some("request_refused"));
    assert!(message.contains("Unknown reasoning format"), "{message}");
    assert!(
        !message.contains("deep_think"),
        "the server's message is not repeated: {message}"
    );
    assert_eq!(gw.breaker_state("refusing_gpu").await, "closed");

    // The same words quoted inside another failure are that failure.
    local.set_fault(llama_refusal(
        "failed to decode the batch: audio input is not supported",
    ));
    gw.ask("summarize")
        .await
        .assert_served_by("api_fast", "local:http_500");
    assert_eq!(gw.breaker_state("refusing_gpu").await, "open");
}
