//! Reloading the config while the gateway serves: a stream in flight ends on the config it started
//! with, a bad file is refused while the old config serves every request, a tier added serves the
//! next request, and breakers and rate-limit counts carry over by name.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tierwise::config::file::{RawTier, spanned, text};
use tierwise::config::{Config, TaskKind};
use tierwise_fake::{FakeUpstream, Fault, wait_until};

use crate::util::{Answer, CLIENT_KEY, PROVIDER_KEY, TestConfig, TestGateway, chat};

/// A two-tier config written as a user would, with its keys in the file (a reload reads the
/// process's environment, as `tierwise check` does, not the tests' variables).
fn config(local: &FakeUpstream, api: &FakeUpstream) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.api_keys = Some(vec![text(CLIENT_KEY)]);
            c.provider("vllm").api_key = Some(text(PROVIDER_KEY));
        })
}

/// The config file of one test, rewritten to reload; every version keeps the first one's ledger.
struct File(PathBuf, String);

impl File {
    fn new(config: &TestConfig) -> File {
        let dir = std::env::temp_dir().join(format!("tierwise-reload-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = toml::to_string(&config.0.ledger).unwrap();
        let file = File(dir.join("tierwise.toml"), ledger);
        file.write(&config.toml());
        file
    }

    /// `text`, with the first version's `[ledger]` (each test config is made with a ledger of its
    /// own, which a reload would name as needing a restart).
    fn write(&self, text: &str) {
        let mut file: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(_) => return std::fs::write(&self.0, text).unwrap(),
        };
        file.insert("ledger".into(), toml::Value::Table(self.1.parse().unwrap()));
        std::fs::write(&self.0, toml::to_string(&file).unwrap()).unwrap();
    }

    async fn start(&self) -> TestGateway {
        TestGateway::start_config(Config::load(&self.0).expect("the test config loads")).await
    }
}

async fn reload(gw: &TestGateway) -> Answer {
    Answer::of(gw.post("/admin/api/reload", &json!({})).await).await
}

async fn version(gw: &TestGateway) -> Value {
    Answer::of(gw.get("/admin/api/config").await).await.body
}

#[tokio::test]
async fn a_stream_in_flight_across_a_reload_ends_on_the_config_it_started_with() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let start = config(&local, &api);
    let file = File::new(&start);
    let gw = file.start().await;
    let gate = local.hold_streams();
    let mut stream = gw
        .post(
            "/v1/chat/completions",
            &crate::util::chat_stream("summarize"),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().expect("the first chunk");
    assert!(String::from_utf8_lossy(&first).contains("data:"));

    // The new file drops the route the stream runs on, and its tier's provider.
    file.write(
        &config(&local, &api)
            .with(|c| {
                c.0.routes.remove("summarize");
                c.0.routes.remove("classification");
                c.0.routes.remove("embed");
                c.0.tiers.remove("local");
                c.0.tiers.remove("embed_local");
                c.0.providers.remove("vllm");
                c.add_route("answers", TaskKind::Chat, &["api_fast"]);
            })
            .toml(),
    );
    let reloaded = reload(&gw).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.body["version"], 2);

    gate.open();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    assert!(!rest.contains("error"), "{rest}");

    // The next request reads the new config: the route is gone.
    let gone = Answer::of(
        gw.post("/v1/chat/completions", &chat("summarize", "hi"))
            .await,
    )
    .await;
    gone.error(404, Some("model_not_found"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_with_its_line_and_the_old_one_serves_every_request() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let start = config(&local, &api);
    let file = File::new(&start);
    let gw = Arc::new(file.start().await);

    // Load from eight clients until the refusals are done; each must be answered by the old config.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (gw, stop) = (gw.clone(), stop.clone());
            let (served, failed) = (served.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let response = gw
                        .post("/v1/chat/completions", &chat("summarize", "hi"))
                        .await;
                    if response.status() == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // A tier on a provider that does not exist, and a file cut off halfway (a write the watcher
    // or a signal caught before it ended).
    let bad = config(&local, &api).with(|c| {
        c.0.tiers
            .insert(text("ghost"), RawTier::new("nowhere", "ghost-7b"));
    });
    let whole = start.toml();
    let cut = whole.find("model = \"").unwrap() + 10;
    for (text, says) in [(bad.toml(), "nowhere"), (whole[..cut].to_string(), "line")] {
        file.write(&text);
        let refused = reload(&gw).await;
        assert_eq!(refused.status, 422, "{}", refused.body);
        let message = refused.error(422, Some("config_invalid")).to_string();
        assert!(message.contains(says), "{message}");
        assert!(
            message.contains("line"),
            "the error names its line: {message}"
        );
        assert_eq!(version(&gw).await["version"], 1);
    }
    // Then the whole file: accepted.
    file.write(
        &config(&local, &api)
            .with(|c| c.route("summarize").rpm = Some(spanned(100_000)))
            .toml(),
    );
    let accepted = reload(&gw).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    let at_reload = served.load(Ordering::Relaxed);
    wait_until(
        "requests served after the reload",
        Duration::from_secs(10),
        || served.load(Ordering::Relaxed) >= at_reload + 50,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reloads"
    );
    Arc::try_unwrap(gw).ok().unwrap().shutdown().await;
}

#[tokio::test]
async fn a_tier_added_by_a_reload_serves_the_next_request_and_the_version_moves() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let start = config(&local, &api);
    let file = File::new(&start);
    let gw = file.start().await;
    let before = version(&gw).await;
    assert_eq!(before["version"], 1);
    let unknown = Answer::of(gw.post("/v1/chat/completions", &chat("big", "hi")).await).await;
    unknown.error(404, Some("model_not_found"));

    file.write(
        &config(&local, &api)
            .with(|c| {
                c.0.tiers
                    .insert(text("big"), RawTier::new("openai", "gpt-4.1"));
            })
            .toml(),
    );
    let reloaded = reload(&gw).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let served = Answer::of(gw.post("/v1/chat/completions", &chat("big", "hi")).await).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("x-tierwise-tier"), Some("big"));

    let after = version(&gw).await;
    assert_eq!(after["version"], 2);
    assert_ne!(after["hash"], before["hash"]);
    assert_eq!(after["hash"], reloaded.body["hash"]);
    // Secrets are masked in what the config shows.
    let shown = after["config"].to_string();
    assert!(
        !shown.contains(CLIENT_KEY) && !shown.contains(PROVIDER_KEY),
        "{shown}"
    );
    assert!(!shown.contains("sk-api-key-789"), "{shown}");
    assert!(shown.contains("gpt-4.1"), "{shown}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_providers_open_breaker_carries_over() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let fragile = |c: &mut TestConfig| {
        let breaker = &mut c.provider("vllm").breaker;
        breaker.failures = Some(spanned(1));
        breaker.cooldown_ms = Some(60_000);
        breaker.max_cooldown_ms = Some(60_000);
    };
    let start = config(&local, &api).with(fragile);
    let file = File::new(&start);
    let gw = file.start().await;
    local.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    let fell_back = gw.ask("summarize").await;
    fell_back.assert_served_by("api_fast", "local:http_500");
    gw.wait_for_breaker("vllm", "open", Duration::from_secs(5))
        .await;
    local.set_fault(Fault::None);

    // A route added; the provider is as it was.
    file.write(
        &config(&local, &api)
            .with(fragile)
            .with(|c| {
                c.add_route("answers", TaskKind::Chat, &["local", "api_fast"]);
            })
            .toml(),
    );
    assert_eq!(reload(&gw).await.status, 200);
    assert_eq!(gw.breaker_state("vllm").await, "open");
    let skipped = gw.ask("answers").await;
    skipped.assert_served_by("api_fast", "local:breaker_open");
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limit_counts_carry_over_a_reload() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let limited = |c: &mut TestConfig| c.route("summarize").rpm = Some(spanned(2));
    let start = config(&local, &api).with(limited);
    let file = File::new(&start);
    let gw = file.start().await;
    for _ in 0..2 {
        assert_eq!(gw.ask("summarize").await.status, 200);
    }
    file.write(
        &config(&local, &api)
            .with(limited)
            .with(|c| {
                c.add_route("answers", TaskKind::Chat, &["local"]);
            })
            .toml(),
    );
    assert_eq!(reload(&gw).await.status, 200);
    let limited = gw.ask("summarize").await;
    limited.error(429, Some("rate_limit_exceeded"));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_watch_refuses_a_file_caught_half_written_then_serves_the_whole_one() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let watched = |c: &mut TestConfig| c.0.server.watch_config = true;
    let file = File::new(&config(&local, &api).with(watched));
    let gw = file.start().await;
    let whole = config(&local, &api)
        .with(watched)
        .with(|c| {
            c.0.tiers
                .insert(text("big"), RawTier::new("openai", "gpt-4.1"));
        })
        .toml();
    let cut = whole.find("model = \"").unwrap() + 10;
    std::fs::write(&file.0, &whole[..cut]).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while version(&gw).await["reloads_refused"] != 1 {
        assert!(
            std::time::Instant::now() < until,
            "the half-written file was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown = version(&gw).await;
    assert_eq!(shown["version"], 1);
    assert!(
        shown["last_refusal"].as_str().unwrap().contains("line"),
        "{shown}"
    );

    file.write(&whole);
    while version(&gw).await["version"] != 2 {
        assert!(
            std::time::Instant::now() < until,
            "the whole file was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = gw.ask("big").await;
    assert_eq!(served.status, 200, "{}", served.body);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_setting_that_needs_a_restart_is_named_and_the_rest_applies() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let start = config(&local, &api);
    let file = File::new(&start);
    let gw = file.start().await;
    file.write(
        &config(&local, &api)
            .with(|c| {
                c.0.server.threads = Some(spanned(3));
                c.0.tiers
                    .insert(text("big"), RawTier::new("openai", "gpt-4.1"));
            })
            .toml(),
    );
    let reloaded = reload(&gw).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.body["needs_restart"], json!(["server.threads"]));
    assert_eq!(
        version(&gw).await["needs_restart"],
        json!(["server.threads"])
    );
    let served = gw.ask("big").await;
    assert_eq!(served.status, 200, "{}", served.body);
    gw.shutdown().await;
}
