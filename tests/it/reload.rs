//! Reloading the config while the gateway serves: a stream in flight ends on the config it started
//! with, a bad file is refused while the old config serves every request, a tier added serves the
//! next request, and breakers and rate-limit counts carry over by name.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tierwise::config::file::{RawBudget, RawPrice, RawProvider, RawTier, RawTls, spanned, text};
use tierwise::config::{Config, OnExhausted, TaskKind};
use tierwise_fake::{FakeUpstream, Fault, wait_until};

use crate::util::{Answer, CLIENT_KEY, PROVIDER_KEY, TestConfig, TestGateway, chat, stored};

/// A two-tier config written as a user would, with its keys in the file (a reload reads the
/// process's environment, as `tierwise check` does, not the tests' variables).
fn config(local: &FakeUpstream, api: &FakeUpstream) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.api_keys = Some(vec![text(CLIENT_KEY)]);
            c.0.server.admin_key = Some(text(ADMIN_KEY));
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

const ADMIN_KEY: &str = "tw-admin-key-reload";

/// `POST /admin/api/reload` as an operator sends it: the admin key, no body, no content type.
async fn reload(gw: &TestGateway) -> Answer {
    let response = gw
        .http
        .post(format!("{}/admin/api/reload", gw.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

async fn admin_get(gw: &TestGateway, path: &str) -> Value {
    let response = gw
        .http
        .get(format!("{}{path}", gw.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body
}

async fn version(gw: &TestGateway) -> Value {
    admin_get(gw, "/admin/api/config").await
}

async fn breaker_state(gw: &TestGateway, provider: &str) -> String {
    let all = admin_get(gw, "/admin/api/providers").await;
    let found = all["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == provider)
        .unwrap_or_else(|| panic!("no provider {provider} in {all}"));
    found["breaker"]["state"].as_str().unwrap().to_string()
}

/// Waits on `condition` over the admin API, at most ten seconds.
async fn wait_for(gw: &TestGateway, what: &str, condition: impl Fn(&Value) -> bool, path: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = admin_get(gw, path).await;
        if condition(&shown) {
            return;
        }
        assert!(std::time::Instant::now() < until, "{what}: {shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        !shown.contains(CLIENT_KEY) && !shown.contains(PROVIDER_KEY) && !shown.contains(ADMIN_KEY),
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
    wait_for(
        &gw,
        "the breaker opens",
        |all| all["providers"].to_string().contains("\"open\""),
        "/admin/api/providers",
    )
    .await;
    assert_eq!(breaker_state(&gw, "vllm").await, "open");
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
    assert_eq!(breaker_state(&gw, "vllm").await, "open");
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

#[tokio::test]
async fn the_watch_reloads_once_per_change_and_never_on_its_own_reads() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let watched = |c: &mut TestConfig| c.0.server.watch_config = true;
    let file = File::new(&config(&local, &api).with(watched));
    let gw = file.start().await;
    std::fs::write(&file.0, "[server\n").unwrap();
    wait_for(
        &gw,
        "the bad file is refused",
        |shown| shown["reloads_refused"] == 1,
        "/admin/api/config",
    )
    .await;
    // An explicit reload reads the file too: a watch that took reads for changes would reload
    // after it, and again after its own read, for ever.
    assert_eq!(reload(&gw).await.status, 422);
    // Absence can only be waited out: five times the watch's settling time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(version(&gw).await["reloads_refused"], 2);

    // The same bytes written again are no change.
    std::fs::write(&file.0, "[server\n").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(version(&gw).await["reloads_refused"], 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_usage_is_priced_at_the_prices_of_the_config_it_ran_on() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    api.set_fault(Fault::NoUsage);
    let file = File::new(&config(&local, &api));
    let gw = file.start().await;
    let price = |input: f64, output: f64| RawPrice {
        input: spanned(input),
        output: spanned(output),
        cached_input: None,
        cache_write: None,
    };
    file.write(
        &config(&local, &api)
            .with(|c| {
                c.0.prices.insert(text("gpt-4o-mini"), price(100.0, 200.0));
                c.0.tiers
                    .insert(text("big"), RawTier::new("openai", "mystery-model-9"));
                c.0.prices.insert(text("mystery-model-9"), price(3.0, 4.0));
            })
            .toml(),
    );
    assert_eq!(reload(&gw).await.status, 200);
    let store = gw.store().await;
    // $1 a million tokens is 1,000,000 picodollars a token.
    for (tier, input, output) in [("api_fast", 100, 200), ("big", 3, 4)] {
        let mut streamed = chat(tier, "Summarize the quarterly report, please.");
        streamed["stream"] = json!(true);
        let answer = Answer::of(gw.post("/v1/chat/completions", &streamed).await).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert!(row.tokens_estimated && row.tokens_out > 0, "{row:?}");
        let expected = (row.tokens_in * input + row.tokens_out * output) as i64 * 1_000_000;
        assert_eq!(
            row.cost_pusd.map(|cost| cost.0),
            Some(expected),
            "{tier} priced at the reloaded prices"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_changed_prompt_file_is_a_changed_config() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let prompted = config(&local, &api).with(|c| {
        c.route("summarize")
            .prompts
            .insert(text("local"), text("summarize.txt"));
    });
    let file = File::new(&prompted);
    std::fs::write(file.0.with_file_name("summarize.txt"), "Be brief.").unwrap();
    let gw = file.start().await;
    let before = version(&gw).await;

    std::fs::write(file.0.with_file_name("summarize.txt"), "Be thorough.").unwrap();
    let reloaded = reload(&gw).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.body["unchanged"], false, "{}", reloaded.body);
    assert_eq!(reloaded.body["version"], 2);
    assert_ne!(reloaded.body["hash"], before["hash"]);
    assert_eq!(gw.ask("summarize").await.status, 200);
    let sent = local.requests().last().unwrap().body["messages"][0]["content"].clone();
    assert_eq!(sent, "Be thorough.");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_config_whose_clients_cannot_be_built_is_refused_and_counted() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let file = File::new(&config(&local, &api));
    let gw = file.start().await;
    // A client certificate with another certificate's key: each file reads, the pair does not.
    let cert = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let (cert_file, key_file) = (
        file.0.with_file_name("client.pem"),
        file.0.with_file_name("client.key"),
    );
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, other.serialize_pem()).unwrap();
    file.write(
        &config(&local, &api)
            .with(|c| {
                c.provider("vllm").tls = Some(RawTls {
                    client_cert: Some(text("client.pem")),
                    client_key: Some(text("client.key")),
                    ..RawTls::default()
                });
            })
            .toml(),
    );
    let refused = reload(&gw).await;
    refused.error(422, Some("config_invalid"));
    let shown = version(&gw).await;
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["reloads_refused"], 1, "{shown}");
    assert!(shown["last_refusal"].is_string(), "{shown}");
    assert_eq!(gw.ask("summarize").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_key_no_client_key_may_reload() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let file = File::new(&config(&local, &api).with(|c| c.0.server.admin_key = None));
    let gw = file.start().await;
    let refused = Answer::of(gw.post("/admin/api/reload", &json!({})).await).await;
    let message = refused.error(403, None).to_string();
    assert!(message.contains("server.admin_key"), "{message}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_kept_server_probes_its_new_path_and_a_reload_probes_only_new_servers() {
    let (local, api, extra) = (
        FakeUpstream::start().await,
        FakeUpstream::start().await,
        FakeUpstream::start().await,
    );
    let probed = |interval: u64, path: Option<&'static str>| {
        move |c: &mut TestConfig| {
            let health = &mut c.provider("vllm").health;
            health.enabled = Some(true);
            health.interval_ms = Some(spanned(interval));
            health.path = path.map(text);
        }
    };
    let with_extra = |c: &mut TestConfig| {
        c.0.providers
            .insert(text("extra"), RawProvider::new(extra.base_url()));
        c.0.tiers
            .insert(text("extra_tier"), RawTier::new("extra", "extra-7b"));
    };
    let file = File::new(&config(&local, &api).with(probed(60_000, None)));
    let gw = file.start().await;
    // A whole probe: the listing, then each of the server's two models sized (`/api/show`, then
    // `/props`); taken at its first request, the rest of it would pass for a second probe.
    let sized = || {
        local
            .listings()
            .iter()
            .filter(|probe| probe.path == "/props")
            .count()
    };
    wait_until("the first whole probe", Duration::from_secs(10), || {
        sized() == 2
    })
    .await;
    let first = local.listings();

    // A provider added: its server is probed at once; the kept one waits its interval.
    file.write(
        &config(&local, &api)
            .with(probed(60_000, None))
            .with(with_extra)
            .toml(),
    );
    assert_eq!(reload(&gw).await.status, 200);
    wait_until("the new server's probe", Duration::from_secs(10), || {
        !extra.listings().is_empty()
    })
    .await;
    // The kept server's probe, had it been started over, ran as soon as the new one's.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(local.listings().len(), first.len(), "{first:?}");

    // The probe's path changed: the kept server is probed there.
    file.write(
        &config(&local, &api)
            .with(probed(100, Some("/health")))
            .with(with_extra)
            .toml(),
    );
    assert_eq!(reload(&gw).await.status, 200);
    wait_until("a probe of the new path", Duration::from_secs(10), || {
        local.listings().iter().any(|probe| probe.path == "/health")
    })
    .await;
    assert_eq!(breaker_state(&gw, "vllm").await, "closed");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_budget_changed_by_a_reload_shows_the_figure_still_enforced() {
    let (local, api) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let budgeted = |usd: f64| {
        move |c: &mut TestConfig| {
            c.provider("vllm").fixed_monthly_usd = Some(spanned(0.0));
            c.route("summarize").budget = Some(RawBudget::new(usd, OnExhausted::LocalOnly));
        }
    };
    let file = File::new(&config(&local, &api).with(budgeted(10.0)));
    let gw = file.start().await;
    file.write(&config(&local, &api).with(budgeted(50.0)).toml());
    let reloaded = reload(&gw).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.body["needs_restart"], json!(["budgets"]));
    let shown = admin_get(&gw, "/admin/api/budgets").await;
    let budget = shown["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|budget| budget["name"] == "summarize")
        .unwrap_or_else(|| panic!("no budget of summarize in {shown}"))
        .clone();
    assert_eq!(budget["monthly_usd"], 10.0, "{budget}");
    gw.shutdown().await;
}
