//! Every call recorded and priced: ledger rows, exact costs, the cost header equal to the stored cost,
//! streams with and without upstream usage, reports, on SQLite and on PostgreSQL.

use crate::util::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tierwise::config::TaskKind;
use tierwise::config::file::{RawPrice, RawTier, spanned, text};
use tierwise::ledger::Picodollars;
use tierwise::report::{Report, Window};
use tierwise_fake::{FakeUpstream, Fault};

/// vllm is a local provider ($90/month fixed); classification's baseline is gpt-4o; no probes.
fn priced_config(local: &str, api: &str, ledger: &str) -> TestConfig {
    TestConfig::two_tier(local, api).without_probes().with(|c| {
        c.provider("vllm").fixed_monthly_usd = Some(spanned(90.0));
        c.0.ledger.url = Some(text(ledger));
    })
}

/// Known usage on both fakes: 1000 in (200 cached) and 500 out.
async fn fakes() -> (FakeUpstream, FakeUpstream) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    for fake in [&local, &api] {
        fake.update(|b| {
            b.prompt_tokens = 1000;
            b.cached_tokens = 200;
            b.completion_tokens = 500;
        });
    }
    (local, api)
}

/// Fresh fakes with known usage, a gateway pricing them into a fresh SQLite ledger, and a reader of it.
async fn priced_gateway() -> (
    FakeUpstream,
    FakeUpstream,
    TestGateway,
    tierwise::ledger::Store,
) {
    let (local, api) = fakes().await;
    let gw = TestGateway::start(&priced_config(
        &local.base_url(),
        &api.base_url(),
        &sqlite_url(),
    ))
    .await;
    let store = gw.store().await;
    (local, api, gw, store)
}

fn id_of(answer: &Answer) -> String {
    answer.header("x-tierwise-request-id").unwrap().to_string()
}

fn cost_pusd(answer: &Answer) -> Picodollars {
    let text = answer.header("x-tierwise-cost-usd").expect("a cost header");
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    Picodollars(
        whole.parse::<i64>().unwrap() * 1_000_000_000_000
            + format!("{frac:0<12}").parse::<i64>().unwrap(),
    )
}

async fn rows_and_costs(backend: Backend) {
    let (local, api) = fakes().await;
    let gw = TestGateway::start(&priced_config(
        &local.base_url(),
        &api.base_url(),
        &backend.url().await,
    ))
    .await;
    let store = gw.store().await;

    // Served locally: nothing at the margin; the baseline is gpt-4o for the same tokens:
    // 800 × $2.50 + 200 × $1.25 + 500 × $10 per million = $0.00725.
    let answer = gw.ask("classification").await;
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0"));
    let row = stored(&store, &id_of(&answer)).await;
    assert_eq!(row.route.as_deref(), Some("classification"));
    assert_eq!(
        (
            row.tier.as_deref(),
            row.provider.as_deref(),
            row.model.as_deref()
        ),
        (Some("local"), Some("vllm"), Some("mistral-7b"))
    );
    assert_eq!(
        (
            row.tokens_in,
            row.tokens_cached,
            row.tokens_out,
            row.tokens_estimated
        ),
        (1000, 200, 500, false)
    );
    assert_eq!(row.cost_pusd, Some(Picodollars(0)));
    assert_eq!(row.baseline_pusd, Some(Picodollars(7_250_000_000)));
    assert!(row.local && !row.stream && row.status == 200);
    assert!(row.latency_us > 0 && row.ttfb_us.is_some());
    let key = row.client_key.clone().unwrap();
    assert!(
        key.starts_with("key-") && !key.contains(CLIENT_KEY),
        "{key}"
    );
    assert_eq!(
        (row.prompt.clone(), row.answer.clone()),
        (None, None),
        "content is not stored unless asked"
    );
    assert_eq!(
        store.attempts(&row.id).await.unwrap(),
        vec![("local".to_string(), "ok".to_string())],
        "a first-try answer's one attempt is its own tier"
    );

    // Fallen back to gpt-4o-mini: 800 × $0.15 + 200 × $0.075 + 500 × $0.60 per million = $0.000435.
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = gw.ask("classification").await;
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.000435"));
    let row = stored(&store, &id_of(&answer)).await;
    assert_eq!(
        row.cost_pusd,
        Some(cost_pusd(&answer)),
        "header and ledger agree"
    );
    assert_eq!(row.cost_pusd, Some(Picodollars(435_000_000)));
    assert_eq!(row.fallback.as_deref(), Some("local:http_503"));
    assert!(!row.local);
    assert_eq!(
        store.attempts(&row.id).await.unwrap(),
        vec![
            ("local".to_string(), "http_503".to_string()),
            ("api_fast".to_string(), "ok".to_string())
        ]
    );

    // Nothing answered: recorded with its error, at no cost.
    api.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    let answer = gw.ask("classification").await;
    assert_eq!(answer.status, 502);
    let row = stored(&store, &id_of(&answer)).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.tier.as_deref()),
        (502, Some("http_500"), None)
    );
    assert_eq!(row.cost_pusd, Some(Picodollars(0)));
    assert_eq!(store.attempts(&row.id).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_with_its_exact_cost_on_sqlite() {
    rows_and_costs(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_with_its_exact_cost_on_postgres() {
    rows_and_costs(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_priced_from_their_usage_and_the_client_sees_the_stored_cost() {
    let (_local, _api, gw, store) = priced_gateway().await;
    let mut request = chat("api_fast", "x");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    let usage: Value = answer
        .text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    assert_eq!(usage["completion_tokens"], 500);
    let row = stored(&store, &id_of(&answer)).await;
    assert!(row.stream && !row.tokens_estimated);
    assert_eq!(
        (row.tokens_in, row.tokens_cached, row.tokens_out),
        (1000, 200, 500)
    );
    assert_eq!(row.cost_pusd, Some(Picodollars(435_000_000)));
    assert_eq!(
        usage["cost_usd"].to_string(),
        "0.000435",
        "the usage chunk carries the stored cost"
    );

    // Without asking for usage the client gets none, and the ledger still has it.
    request.as_object_mut().unwrap().remove("stream_options");
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert!(!answer.text.contains("\"usage\":{"));
    let row = stored(&store, &id_of(&answer)).await;
    assert_eq!(
        (row.tokens_out, row.cost_pusd),
        (500, Some(Picodollars(435_000_000)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstream_usage_tokens_are_counted_and_marked_estimated() {
    let (_local, api, gw, store) = priced_gateway().await;
    api.set_fault(Fault::NoUsage);
    let request = chat("api_fast", "Summarize the quarterly report, please.");
    // o200k (gpt-4o family), as tiktoken splits it: "Sum|mar|ize| the| quarterly| report|,| please|."
    // is 9, plus 3 framing the message and 3 priming the answer; "Hello| from| the| fake|
    // upstream|." is 6.
    let (expected_in, expected_out) = (15u64, 6u64);
    // gpt-4o-mini: $0.15 in, $0.60 out per million → 150,000 and 600,000 pUSD per token.
    let expected_cost = Picodollars(expected_in as i64 * 150_000 + expected_out as i64 * 600_000);

    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    let row = stored(&store, &id_of(&answer)).await;
    assert!(row.tokens_estimated);
    assert_eq!((row.tokens_in, row.tokens_out), (expected_in, expected_out));
    assert_eq!(row.cost_pusd, Some(expected_cost));
    assert_eq!(cost_pusd(&answer), expected_cost);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let answer = Answer::of(gw.post("/v1/chat/completions", &streamed).await).await;
    assert!(answer.text.ends_with("data: [DONE]\n\n"));
    let row = stored(&store, &id_of(&answer)).await;
    assert!(row.stream && row.tokens_estimated);
    assert_eq!((row.tokens_in, row.tokens_out), (expected_in, expected_out));
    assert_eq!(
        row.cost_pusd,
        Some(expected_cost),
        "a stream is never recorded at $0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_prices_apply_and_unknown_prices_are_null_not_zero() {
    let (local, api) = fakes().await;
    let config = priced_config(&local.base_url(), &api.base_url(), &sqlite_url())
        .with(|c| {
            c.0.tiers
                .insert(text("mystery"), RawTier::new("openai", "mystery-model-9"));
            c.0.prices.insert(
                text("gpt-4o-mini"),
                RawPrice {
                    input: spanned(1.0),
                    output: spanned(2.0),
                    cached_input: None,
                    cache_write: None,
                },
            );
        })
        .config();
    let warnings = tierwise::ledger::Pricing::new(&config).warnings(&config);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("mystery-model-9") && w.contains("no known price")),
        "{warnings:?}"
    );
    let gw = TestGateway::start_config(config).await;
    let store = gw.store().await;

    let answer = gw.ask("api_fast").await;
    // 800 × $1 + 200 × $1 (cached costs as input without its own price) + 500 × $2 per million.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.002"));
    assert_eq!(
        stored(&store, &id_of(&answer)).await.cost_pusd,
        Some(Picodollars(2_000_000_000))
    );

    let answer = gw.ask("mystery").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-tierwise-cost-usd"), None);
    assert_eq!(stored(&store, &id_of(&answer)).await.cost_pusd, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_stored_only_when_configured() {
    let (local, api) = fakes().await;
    let config = priced_config(&local.base_url(), &api.base_url(), &sqlite_url())
        .with(|c| c.0.ledger.store_content = true);
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    let answer = Answer::of(
        gw.post(
            "/v1/chat/completions",
            &chat("summarize", "the secret plan"),
        )
        .await,
    )
    .await;
    let row = stored(&store, &id_of(&answer)).await;
    assert!(row.prompt.unwrap().contains("the secret plan"));
    assert!(
        row.answer
            .unwrap()
            .contains("Hello from the fake upstream.")
    );
}

async fn report_totals(backend: Backend) {
    let (local, api) = fakes().await;
    let ledger = backend.url().await;
    let config = priced_config(&local.base_url(), &api.base_url(), &ledger);
    // Two gateways sharing one ledger: one report covers both.
    let gw1 = TestGateway::start(&config).await;
    let gw2 = if backend == Backend::Postgres {
        Some(TestGateway::start(&config).await)
    } else {
        None
    };
    let started = now_ms();
    let mut ids = Vec::new();
    for i in 0..6 {
        let gw = match (&gw2, i % 2) {
            (Some(gw2), 1) => gw2,
            _ => &gw1,
        };
        ids.push(id_of(&gw.ask("classification").await));
    }
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    for _ in 0..2 {
        ids.push(id_of(&gw1.ask("classification").await));
    }
    // No tier answers: an error, not a fallback.
    api.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    ids.push(id_of(&gw1.ask("summarize").await));
    let store = gw1.store().await;
    for id in &ids {
        stored(&store, id).await;
    }
    let window = Window {
        from_ms: started - 1000,
        to_ms: now_ms() + 1000,
    };
    let config = config.config();
    let report = Report::load(&config, &store, window, None).await.unwrap();
    // The window asked for began before the first record: the report starts there.
    assert!(report.starts_at_first_record);
    // … and ends at the last record, not at the end asked for.
    assert!(report.ends_at_last_record);
    assert!(report.window.from_ms >= started && report.window.to_ms <= window.to_ms);
    let route = report
        .routes
        .iter()
        .find(|r| r.route == "classification")
        .unwrap();
    assert_eq!(route.calls, 8);
    assert_eq!(route.fallbacks, 2);
    let failed = report
        .routes
        .iter()
        .find(|r| r.route == "summarize")
        .unwrap();
    assert_eq!((failed.calls, failed.fallbacks, failed.errors), (1, 0, 1));
    assert_eq!(route.local_share, 0.75);
    assert_eq!(
        route.models,
        vec!["gpt-4o-mini".to_string(), "mistral-7b".to_string()]
    );
    assert_eq!(route.avg_tokens_in, 1000.0);
    // API: 2 × $0.000435; baseline: 8 × $0.00725 (gpt-4o for the same tokens).
    assert_eq!(route.api_cost_usd, "0.00087");
    assert_eq!(route.baseline_usd, "0.058");
    // Why requests left the first tier, and what they cost: the two local 503s, paid on the API.
    let moved = &route.moved_off_first_tier;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (
            moved[0].reason.as_str(),
            moved[0].calls,
            moved[0].cost_usd.as_str()
        ),
        ("http_503", 2, "0.00087")
    );
    assert_eq!(moved[0].share, 0.25);
    assert_eq!(failed.moved_off_first_tier[0].reason, "http_503");
    // The $90/month server over the window, all of it carried by the only route that used it.
    let fixed = &report.fixed[0];
    let expected_fixed = 90_000_000_000_000i128
        * (report.window.to_ms - report.window.from_ms) as i128
        / (30 * 86_400_000);
    assert_eq!(
        fixed.window_usd,
        tierwise::ledger::Picodollars(expected_fixed as i64).to_string()
    );
    assert_eq!(route.fixed_cost_usd, fixed.window_usd);
    let actual = 870_000_000i128 + expected_fixed;
    assert_eq!(
        report.totals.actual_usd,
        tierwise::ledger::Picodollars(actual as i64).to_string()
    );
    assert_eq!(
        report.totals.saving_usd,
        tierwise::ledger::Picodollars((58_000_000_000 - actual) as i64).to_string()
    );
    assert_eq!(report.totals.api_usd, "0.00087");

    // The same numbers over HTTP.
    let http = Answer::of(
        gw1.get(&format!(
            "/admin/api/report?from={}&to={}",
            rfc3339(window.from_ms),
            rfc3339(window.to_ms)
        ))
        .await,
    )
    .await;
    assert_eq!(http.status, 200, "{}", http.text);
    assert_eq!(http.body["totals"]["baseline_usd"], "0.058");
    assert_eq!(http.body["routes"][0]["calls"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_totals_cost_baseline_and_saving_on_sqlite() {
    report_totals(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_ledger_give_one_report() {
    report_totals(Backend::Postgres).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_retried_loudly_and_loses_nothing() {
    use sqlx::Connection;
    let (local, api) = fakes().await;
    let ledger = postgres_url().await;
    let gw = TestGateway::start(&priced_config(&local.base_url(), &api.base_url(), &ledger)).await;
    let store = gw.store().await;
    let first = id_of(&gw.ask("summarize").await);
    stored(&store, &first).await;

    // Take the table away: every insert fails until it is back.
    let mut admin = sqlx::PgConnection::connect(&ledger).await.unwrap();
    sqlx::query("ALTER TABLE requests RENAME TO requests_away")
        .execute(&mut admin)
        .await
        .unwrap();
    let errors_before = write_errors(&gw).await;
    let second = id_of(&gw.ask("summarize").await);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while write_errors(&gw).await <= errors_before {
        assert!(
            std::time::Instant::now() < until,
            "the failed write was not counted in /metrics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::query("ALTER TABLE requests_away RENAME TO requests")
        .execute(&mut admin)
        .await
        .unwrap();
    let row = stored(&store, &second).await;
    assert_eq!(row.status, 200);
}

async fn write_errors(gw: &TestGateway) -> f64 {
    gw.metrics()
        .await
        .lines()
        .find(|line| line.starts_with("tierwise_ledger_write_errors_total"))
        .and_then(|line| line.split_whitespace().last())
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_goes_to_the_request_log() {
    let (local, api) = fakes().await;
    let log =
        std::env::temp_dir().join(format!("tierwise-requests-{}.jsonl", uuid::Uuid::now_v7()));
    // A route only this test uses, so the metrics it reads are its own in a process-wide recorder.
    let route = "request_log_metrics";
    let config = priced_config(&local.base_url(), &api.base_url(), &sqlite_url()).with(|c| {
        c.0.ledger.request_log = Some(text(log.display().to_string()));
        c.add_route(route, TaskKind::Chat, &["api_fast"]);
    });
    let gw = TestGateway::start(&config).await;
    let mut ids = Vec::new();
    for model in ["classification", "api_fast", route] {
        ids.push(id_of(
            &Answer::of(gw.post("/v1/chat/completions", &chat(model, "x")).await).await,
        ));
    }
    // Metrics are counted once the writer has the batch: wait for them, do not race them.
    let requests =
        format!("tierwise_requests_total{{route=\"{route}\",tier=\"api_fast\",status=\"200\"}} 1");
    let cost = format!("tierwise_cost_usd_total{{route=\"{route}\",tier=\"api_fast\"}} 0.000435");
    gw.wait_for_metrics(|text| text.contains(&requests) && text.contains(&cost))
        .await;
    gw.shutdown().await;
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines
            .iter()
            .map(|l| l["request_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ids
    );
    let api_line = &lines[1];
    assert_eq!(api_line["tier"], "api_fast");
    assert_eq!(api_line["model"], "gpt-4o-mini");
    assert_eq!(
        (
            api_line["tokens_in"].as_u64(),
            api_line["tokens_out"].as_u64()
        ),
        (Some(1000), Some(500))
    );
    assert_eq!(api_line["cost_usd"], "0.000435");
    assert!(api_line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(lines[0]["fallback"].is_null());
    assert_eq!(lines[2]["route"], route);
    std::fs::remove_file(log).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_its_client_abandons_is_recorded_with_what_was_relayed_counted_and_priced() {
    let (_local, api, gw, store) = priced_gateway().await;
    // The client sees the role chunk and the first two words, then hangs up.
    let gate = api.hold_streams_after(3);
    let mut request = chat("api_fast", "Summarize the quarterly report, please.");
    request["stream"] = json!(true);
    let response = gw.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-tierwise-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: {").count() < 3 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
            .await
            .expect("the first chunks arrive while the upstream holds the rest")
            .expect("a chunk")
            .expect("no error");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("\"Hello \"") && seen.contains("\"from \""),
        "{seen}"
    );
    // The upstream never sends its usage.
    drop(body);

    let row = stored(&store, &id).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref(), row.stream),
        (499, Some("client_closed"), true)
    );
    assert!(row.tokens_estimated);
    // As in the test above: 15 prompt tokens; "Hello| from| " is 3 in o200k.
    assert_eq!(
        (row.tokens_in, row.tokens_out),
        (15, 3),
        "the prompt and only the relayed part of the answer are counted"
    );
    // gpt-4o-mini: 150,000 pUSD per input token, 600,000 per output token.
    assert_eq!(row.cost_pusd, Some(Picodollars(15 * 150_000 + 3 * 600_000)));
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_with_a_nul_character_never_blocks_a_postgres_ledger() {
    let (local, api) = fakes().await;
    let ledger = postgres_url().await;
    let config = priced_config(&local.base_url(), &api.base_url(), &ledger)
        .with(|c| c.0.ledger.store_content = true);
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    // A streamed answer's text is decoded: the NUL is a real character, which PostgreSQL refuses.
    local.update(|b| b.reply = "null\u{0}byte".into());
    let mut request = chat("summarize", "x");
    request["stream"] = json!(true);
    let streamed = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    local.update(|b| b.reply = "after".into());
    let after = gw.ask("summarize").await;
    let row = stored(&store, &id_of(&streamed)).await;
    assert_eq!(row.answer.as_deref(), Some("nullbyte"));
    stored(&store, &id_of(&after)).await;
}

/// A USD amount as the report prints it, in picodollars.
fn pusd(text: &str) -> i128 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    whole.parse::<i128>().unwrap() * 1_000_000_000_000
        + format!("{frac:0<12}").parse::<i128>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_servers_fixed_cost_is_shared_among_routes_by_tokens() {
    let (local, api) = fakes().await;
    let config = priced_config(&local.base_url(), &api.base_url(), &sqlite_url());
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    let started = now_ms();
    let mut ids = Vec::new();
    // Both routes run on the local server with the same tokens per call (1,500): 3 calls to 1.
    for model in [
        "classification",
        "classification",
        "classification",
        "summarize",
    ] {
        ids.push(id_of(&gw.ask(model).await));
    }
    for id in &ids {
        stored(&store, id).await;
    }
    let config = config.config();
    // A window whose fixed cost does not split into quarters, so the remainder is there to give:
    // $90 a month over (to - from) ms, as the report computes it.
    let cost_of = |ms: i64| 90_000_000_000_000i128 * ms as i128 / (30 * 86_400_000);
    let (first, _) = store.span().await.unwrap().unwrap();
    assert!(first >= started);
    let mut to_ms = now_ms() + 1000;
    while cost_of(to_ms - first) % 4 == 0 {
        to_ms += 1;
    }
    let window = Window {
        from_ms: first,
        to_ms,
    };
    let report = Report::load(&config, &store, window, None).await.unwrap();
    let whole = pusd(&report.fixed[0].window_usd);
    assert_eq!(whole, cost_of(report.window.to_ms - report.window.from_ms));
    let share = |route: &str| {
        pusd(
            &report
                .routes
                .iter()
                .find(|r| r.route == route)
                .unwrap()
                .fixed_cost_usd,
        )
    };
    assert!(whole > 0);
    assert_eq!(
        share("summarize"),
        whole / 4,
        "a quarter of the tokens, rounded down"
    );
    assert_eq!(
        share("classification"),
        whole - whole / 4,
        "the largest user carries the remainder, so the shares sum exactly"
    );
}

/// PostgreSQL refuses text with a NUL (the gateway strips them before a row reaches the writer; a
/// row written by anything else may still hold one). The writer stores the rest of the batch and
/// hands back only the refused row; a database that is away is never taken for a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_row_and_the_writer_stores_the_rest_of_its_batch() {
    use tierwise::ledger::{LedgerWriter, RequestRow};
    let store = tierwise::ledger::Store::connect(&postgres_url().await)
        .await
        .unwrap();
    let row = |id: &str| RequestRow::new(id.into(), now_ms(), "chat.completions".into());
    let mut poisoned = row("poisoned");
    poisoned.answer = Some("a\0b".into());
    let good = [row("good-1"), row("good-2")];
    let refusal = store.insert(&[&poisoned], &[]).await.unwrap_err();
    assert!(refusal.is_refusal(), "{refusal}");

    let writer = LedgerWriter::open(store.clone(), None).await;
    let refused = writer
        .insert(&[&good[0], &poisoned, &good[1]], &[])
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].request.id, "poisoned");
    for id in ["good-1", "good-2"] {
        assert!(store.request(id).await.unwrap().is_some(), "{id} stored");
    }
    store.close().await;
    let away = store.insert(&[&good[0]], &[]).await.unwrap_err();
    assert!(!away.is_refusal(), "{away}");
}
