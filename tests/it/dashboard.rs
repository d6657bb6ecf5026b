//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) loads `/` from a gateway whose ledger holds known traffic, runs the page's script
//! against the admin API, and the rendered document must show the known figures — the saving,
//! the cost per day by route and tier, agreement and its alert, providers and the latest requests.
//! Without the admin key the page asks for it and shows nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tierwise::config::OnExhausted;
use tierwise::config::file::{RawBudget, RawShadow, spanned, text};
use tierwise::ledger::budget::Month;
use tierwise::ledger::{Picodollars, Purpose, RequestRow, Store};
use tierwise_fake::FakeUpstream;

use crate::util::{Answer, TestConfig, TestGateway, chat};

const ADMIN_KEY: &str = "dash-admin-key-4821";
const DAY_MS: i64 = 86_400_000;

fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        path.exists(),
        "the dashboard test needs Debian's chromium at {} (.ci/run installs it; or set CHROMIUM)",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `extra` arguments, waiting for the page's fetches within
/// a virtual-time budget; returns its stdout. Killed after 90 s rather than hanging the suite.
fn browse(url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("tierwise-chromium-{}", uuid::Uuid::now_v7()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::fs::remove_dir_all(profile).ok();
    out
}

/// Waits until the gateway's latest `requests` are in its ledger, so the browser sees them.
async fn in_the_ledger(gw: &TestGateway, requests: usize) {
    let store = gw.store().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.recent(5, None).await.unwrap().len() < requests {
        assert!(std::time::Instant::now() < deadline, "the ledger lags");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Known traffic two days ago and yesterday: classification on local (free) and api_fast.
async fn write_history(ledger: &str) {
    let now = tierwise::quality::watch::now_ms();
    let today = now / DAY_MS;
    let mut rows = Vec::new();
    for (days_ago, tier, calls, cost) in [
        (2, "local", 30, 0),
        (2, "api_fast", 10, 250_000_000),
        (1, "local", 40, 0),
        (1, "api_fast", 4, 250_000_000),
    ] {
        for i in 0..calls {
            let ts = (today - days_ago) * DAY_MS + 3_600_000 + i * 1000;
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                ts,
                "chat.completions".into(),
            );
            row.route = Some("classification".into());
            row.tier = Some(tier.into());
            row.provider = Some(if tier == "local" { "vllm" } else { "openai" }.into());
            row.model = Some(
                if tier == "local" {
                    "mistral-7b"
                } else {
                    "gpt-4o-mini"
                }
                .into(),
            );
            row.local = tier == "local";
            row.tokens_in = 300;
            row.tokens_out = 5;
            row.latency_us = 80_000;
            row.cost_pusd = Some(Picodollars(cost));
            row.baseline_pusd = Some(Picodollars(1_000_000_000));
            rows.push(row);
        }
    }
    // Yesterday's Responses calls on summarize: $0.0005 each.
    for i in 0..2 {
        let mut row = RequestRow::new(
            uuid::Uuid::now_v7().to_string(),
            (today - 1) * DAY_MS + 5_400_000 + i,
            "responses".into(),
        );
        row.route = Some("summarize".into());
        row.tier = Some("api_fast".into());
        row.provider = Some("openai".into());
        row.model = Some("gpt-4o-mini".into());
        row.tokens_in = 300;
        row.tokens_out = 5;
        row.latency_us = 80_000;
        row.cost_pusd = Some(Picodollars(500_000_000));
        rows.push(row);
    }
    // Yesterday's shadow samples: 19 of 20 agree.
    for i in 0..20 {
        let mut row = RequestRow::new(
            uuid::Uuid::now_v7().to_string(),
            (today - 1) * DAY_MS + 7_200_000 + i,
            "chat.completions".into(),
        );
        row.route = Some("classification".into());
        row.tier = Some("api_frontier".into());
        row.purpose = Purpose::Shadow;
        row.candidate = Some("local".into());
        row.cost_pusd = Some(Picodollars(100_000_000));
        row.agreement_ppm = Some(if i < 19 { 1_000_000 } else { 0 });
        rows.push(row);
    }
    let store = Store::connect(ledger).await.unwrap();
    let refs: Vec<&RequestRow> = rows.iter().collect();
    store.insert(&refs, &[]).await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_ledgers_figures_in_a_real_browser() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.admin_key = Some(text(ADMIN_KEY));
            c.route("classification").shadow = Some(RawShadow::new("api_frontier", 0.0));
        });
    let ledger = config.0.ledger.url.as_ref().unwrap().get_ref().clone();
    write_history(&ledger).await;
    let gw = TestGateway::start(&config).await;
    for i in 0..2 {
        let answer = Answer::of(
            gw.post(
                "/v1/chat/completions",
                &chat("classification", &format!("now {i}")),
            )
            .await,
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    // The two requests are in the ledger before the browser looks.
    in_the_ledger(&gw, 2).await;

    let url = gw.url.clone();
    let dom = tokio::task::spawn_blocking(move || {
        browse(&format!("{url}/#key={ADMIN_KEY}"), &["--dump-dom"])
    })
    .await
    .unwrap();
    let has = |needle: &str| {
        assert!(
            dom.contains(needle),
            "no {needle:?} in the rendered page:\n{dom}"
        )
    };
    has("data-state=\"ready\"");
    // The cost chart: one bar segment per day, route and tier, with its figures; the legend's
    // totals are the ledger's: 14 api_fast calls at $0.00025.
    has("classification / api_fast: $0.0025 for 10 calls");
    has("classification / api_fast: $0.0010 for 4 calls");
    has("classification / api_fast $0.0035");
    has("data-series=\"classification / local\"");
    // The routes table, providers and the latest requests.
    has("<td>classification</td>");
    has("<td>vllm</td>");
    has("<td>openai</td>");
    has("gpt-4o-mini, mistral-7b");
    assert!(
        dom.matches("<td>local</td>").count() >= 2,
        "the two latest requests, served by local:\n{dom}"
    );
    // Calls and API spend by endpoint, the ledger's names, adding up to the totals: 84 chat
    // calls in the history and the 2 just made, 2 Responses calls.
    has("<td>chat.completions</td><td class=\"num\">86</td><td>97.7%</td>");
    has("<td>responses</td><td class=\"num\">2</td><td>2.3%</td>");
    has("<td>$0.0010</td>");
    has("<tfoot><tr><td>all endpoints</td><td>88</td><td>100.0%</td><td>0</td><td>$0.0045</td>");
    // Agreement: 19 of 20 yesterday, the route's 90% bar, no alert.
    has("95.0% over 20 samples");
    has("<td>90.0%</td>");
    has("no alert");
    // No key, no figures: the page asks for one.
    let url = gw.url.clone();
    let locked = tokio::task::spawn_blocking(move || browse(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(locked.contains("data-state=\"login\""), "{locked}");
    assert!(!locked.contains("classification / api_fast"), "{locked}");

    // A screenshot as the docs show it (kept where DASHBOARD_SCREENSHOT says, else a temp file).
    let shot = std::env::var("DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!("tierwise-dashboard-{}.png", uuid::Uuid::now_v7()))
        });
    let url = gw.url.clone();
    let target = shot.clone();
    tokio::task::spawn_blocking(move || {
        browse(
            &format!("{url}/#key={ADMIN_KEY}"),
            &[
                &format!("--screenshot={}", target.display()),
                "--window-size=1280,2000",
                "--hide-scrollbars",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
    if std::env::var("DASHBOARD_SCREENSHOT").is_err() {
        std::fs::remove_file(&shot).ok();
    }
    assert!(Path::new(&shot).parent().is_some());
    gw.shutdown().await;
}

/// A ledger minutes old: the page shows what the window saw, says why nothing is projected, draws
/// its cost per minute (not one bar for the day), and says why the agreement chart is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_ledger_shows_observed_figures_per_minute_and_says_why_nothing_is_projected() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.admin_key = Some(text(ADMIN_KEY));
            c.provider("vllm").fixed_monthly_usd = Some(spanned(0.0));
            c.route("classification").budget = Some(RawBudget::new(1.0, OnExhausted::LocalOnly));
            c.0.budget = Some(RawBudget::new(5.0, OnExhausted::Reject));
        });
    // An eval run a minute ago spent half the route's budget: it counts in the month's spend (not
    // in the product traffic the cost charts show).
    let ledger = config.0.ledger.url.as_ref().unwrap().get_ref().clone();
    let now = tierwise::quality::watch::now_ms();
    let store = Store::connect(&ledger).await.unwrap();
    let evals: Vec<RequestRow> = (0..2)
        .map(|i| {
            let ts = (now - 60_000).max(Month::of(now).start_ms()) + i;
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                ts,
                "chat.completions".into(),
            );
            row.route = Some("classification".into());
            row.tier = Some("api_fast".into());
            row.purpose = Purpose::Eval;
            row.cost_pusd = Some(Picodollars(250_000_000_000));
            row
        })
        .collect();
    store
        .insert(&evals.iter().collect::<Vec<_>>(), &[])
        .await
        .unwrap();
    store.close().await;
    let gw = TestGateway::start(&config).await;
    for i in 0..3 {
        let answer = Answer::of(
            gw.post(
                "/v1/chat/completions",
                &chat("classification", &format!("young {i}")),
            )
            .await,
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    in_the_ledger(&gw, 3).await;
    // The JSON behind the chart: minute buckets for a ledger minutes old, and the same calls per
    // day from the older endpoint.
    let admin = |path: &str| {
        let request = gw
            .http
            .get(format!("{}{path}", gw.url))
            .bearer_auth(ADMIN_KEY);
        async move {
            request
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let calls = |rows: &serde_json::Value| -> u64 {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum()
    };
    let costs = admin("/admin/api/costs?since=14d").await;
    assert_eq!(
        (costs["unit"].as_str(), costs["bucket_ms"].as_i64()),
        (Some("minute"), Some(60_000)),
        "{costs}"
    );
    assert_eq!(calls(&costs["rows"]), 3, "{costs}");
    let daily = admin("/admin/api/daily?days=2").await;
    assert_eq!(calls(&daily["rows"]), 3, "{daily}");
    assert!(
        daily["rows"][0]["day"].as_i64().unwrap() > 20_000,
        "{daily}"
    );
    let url = gw.url.clone();
    let dom = tokio::task::spawn_blocking(move || {
        browse(&format!("{url}/#key={ADMIN_KEY}"), &["--dump-dom"])
    })
    .await
    .unwrap();
    let has = |needle: &str| {
        assert!(
            dom.contains(needle),
            "no {needle:?} in the rendered page:\n{dom}"
        )
    };
    has("data-state=\"ready\"");
    has("of traffic, not projected:");
    has("a projection needs ([report] project_after_hours)");
    has("Cost per minute by route and tier (UTC)");
    has("No route has a shadow check");
    has("<th class=\"volume\">calls</th>");
    // The budgets: the eval run's $0.50 of the route's $1.00, past no alert yet, and no month-end
    // figure from a minute of the month.
    has("<tr><td>route classification</td>");
    has("<td>$0.50</td><td>$1.00</td><td>50.0%</td><td>$0.00</td><td>not projected:");
    has("<td>all API spend</td>");
    has("<td>$5.00</td><td>10.0%</td>");
    has("of the month's traffic is under the 24 hours a projection needs");
    has("<td>reject</td>");
    assert!(
        !dom.contains("/mo"),
        "a projected figure on a young ledger:\n{dom}"
    );
    gw.shutdown().await;
}
