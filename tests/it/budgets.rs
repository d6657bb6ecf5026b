//! Monthly budgets through the gateway (issue 24): a spent route budget passes the API tiers over
//! and serves from local (`api_fast:budget_spent`), or answers 429 `insufficient_quota` where
//! nothing may serve instead (no local tier, a demoted one); alerts fire once a month, across a
//! restart; a restart keeps the month's spend, and a price change does not rewrite it; requests in
//! parallel cannot all pass a budget before any has cost anything; corrections write an audit row
//! and change admission at once; a new month starts from nothing.
//!
//! Every call here is on gpt-4o-mini ($0.15 in, $0.60 out per million tokens), whose fake upstream
//! reports 20 prompt and 100 completion tokens: $0.000063 a call. Each request asks for at most
//! 100 tokens, so what it reserves ([`reservation`]) is its body's bytes as prompt tokens and 100
//! completion tokens — a little more than it costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::file::{RawBudget, RawShadow, spanned, text};
use tierwise::config::{OnExhausted, OnProof, TaskKind};
use tierwise::ledger::budget::Month;
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::{Answer, Hook, TestConfig, TestGateway, stored};

pub const ADMIN_KEY: &str = "tw-admin-key-budgets";
/// Picodollars per token of gpt-4o-mini.
pub const IN: i64 = 150_000;
pub const OUT: i64 = 600_000;
/// What one call costs: 20 prompt and 100 completion tokens.
pub const ACTUAL: i64 = 20 * IN + 100 * OUT;

/// A request of `route` asking for at most 100 tokens.
pub fn ask(route: &str) -> Value {
    json!({
        "model": route,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 100,
    })
}

/// What admission reserves for `body`: every byte of its fields a prompt token, and its
/// `max_tokens`, at gpt-4o-mini's price.
pub fn reservation(body: &Value) -> i64 {
    let bytes: usize = body
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| key.len() + value.to_string().len() + 4)
        .sum();
    bytes as i64 * IN + body["max_tokens"].as_i64().unwrap() * OUT
}

pub fn usd(picodollars: i64) -> f64 {
    picodollars as f64 / 1e12
}

pub async fn fakes() -> (FakeUpstream, FakeUpstream) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    api.update(|b| {
        b.prompt_tokens = 20;
        b.completion_tokens = 100;
    });
    (local, api)
}

/// The two-tier gateway with `local` local (a fixed cost) and an admin key, and `route` over
/// `tiers` with a budget of `monthly` picodollars.
pub fn budgeted(
    local: &FakeUpstream,
    api: &FakeUpstream,
    route: &str,
    tiers: &[&str],
    monthly: i64,
    on_exhausted: OnExhausted,
) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("vllm").fixed_monthly_usd = Some(spanned(0.0));
            c.0.server.admin_key = Some(text(ADMIN_KEY));
            c.add_route(route, TaskKind::Chat, tiers).budget =
                Some(RawBudget::new(usd(monthly), on_exhausted));
        })
}

pub async fn admin_get(gateway: &TestGateway, path: &str) -> Answer {
    let response = gateway
        .http
        .get(format!("{}{path}", gateway.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

pub async fn admin_post(gateway: &TestGateway, path: &str, body: &Value, key: &str) -> Answer {
    let response = gateway
        .http
        .post(format!("{}{path}", gateway.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

/// A budget of `/admin/api/budgets` by its route's name.
pub async fn budget_of(gateway: &TestGateway, route: &str) -> Value {
    let all = admin_get(gateway, "/admin/api/budgets").await;
    assert_eq!(all.status, 200, "{}", all.text);
    all.body["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|budget| budget["name"] == route)
        .unwrap_or_else(|| panic!("no budget of {route} in {}", all.text))
        .clone()
}

/// Waits until nothing is held of the route's budget: every request in flight has settled.
pub async fn settled(gateway: &TestGateway, route: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let budget = budget_of(gateway, route).await;
        if budget["reserved_usd"].as_f64() == Some(0.0) {
            return budget;
        }
        assert!(Instant::now() < until, "still held: {budget}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn send(gateway: &TestGateway, body: &Value) -> Answer {
    Answer::of(gateway.post("/v1/chat/completions", body).await).await
}

/// Two calls fit a budget of 150 µUSD; the third would not: it is served by the local tier, the
/// header and the attempt rows saying why. A route with no local tier answers 429
/// `insufficient_quota`, OpenAI-shaped, not to be retried, and the refusal is in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_route_budget_serves_from_local_and_without_a_local_tier_answers_429() {
    const ROUTE: &str = "budget_local";
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        150_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| {
        c.add_route("budget_api_only", TaskKind::Chat, &["api_fast"])
            .budget = Some(RawBudget::new(0.0, OnExhausted::LocalOnly));
    });
    let gateway = TestGateway::start(&config).await;
    for _ in 0..2 {
        let answer = send(&gateway, &ask(ROUTE)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
        assert_eq!(answer.header("x-tierwise-fallback"), None);
    }
    let moved = send(&gateway, &ask(ROUTE)).await;
    moved.assert_served_by("local", "api_fast:budget_spent");
    assert_eq!(
        api.request_count(),
        2,
        "the API was not called a third time"
    );
    let store = gateway.store().await;
    let id = moved.header("x-tierwise-request-id").unwrap().to_string();
    let row = stored(&store, &id).await;
    assert_eq!(row.fallback.as_deref(), Some("api_fast:budget_spent"));
    assert_eq!(
        store.attempts(&id).await.unwrap(),
        [
            ("api_fast".to_string(), "budget_spent".to_string()),
            ("local".to_string(), "ok".to_string())
        ]
    );
    let budget = settled(&gateway, ROUTE).await;
    assert_eq!(budget["spent_usd"].as_f64(), Some(usd(2 * ACTUAL)));

    let refused = send(&gateway, &ask("budget_api_only")).await;
    let message = refused.error(429, Some("insufficient_quota"));
    assert_eq!(refused.body["error"]["type"], "insufficient_quota");
    assert!(
        message.contains("route budget_api_only")
            && message.contains("no local tier")
            && message.contains("tierwise budget reset|adjust"),
        "{message}"
    );
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    let id = refused.header("x-tierwise-request-id").unwrap();
    let row = stored(&store, id).await;
    assert_eq!(
        (
            row.status,
            row.error_kind.as_deref(),
            row.route.as_deref(),
            row.tier
        ),
        (
            429,
            Some("insufficient_quota"),
            Some("budget_api_only"),
            None
        )
    );
    assert_eq!(api.request_count(), 2);

    // The report counts both, and prices the moved call on the tier it was moved off: the local
    // tier's 20 prompt and 5 completion tokens on gpt-4o-mini.
    let report = admin_get(&gateway, "/admin/api/report?since=1d").await;
    let route = |name: &str| {
        report.body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|route| route["route"] == name)
            .unwrap_or_else(|| panic!("no {name} in {}", report.text))["budget"]
            .clone()
    };
    assert_eq!(
        route(ROUTE),
        json!({
            "moved_to_local": 1,
            "answered_locally": 1,
            "would_have_cost_usd": "0.000006",
            "passed_over": ["api_fast"],
            "refused": 0,
            "budgets": ["route budget_local"],
        })
    );
    assert_eq!(route("budget_api_only")["refused"], 1);
    gateway.shutdown().await;
}

/// A spent budget on a route whose local primary is demoted by its shadow check (here: promoted
/// only once proven, so demoted from the start): `local_only` answers 429 rather than serve a
/// model known to answer worse; `local_any` serves from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_local_tier_serves_a_spent_budget_only_under_local_any() {
    let (local, api) = fakes().await;
    let demoted = |policy| {
        move |c: &mut TestConfig| {
            let route = c.add_route(
                if policy == OnExhausted::LocalAny {
                    "budget_demoted_any"
                } else {
                    "budget_demoted_only"
                },
                TaskKind::Classification,
                &["local", "api_fast"],
            );
            let mut shadow = RawShadow::new("api_frontier", 0.0);
            shadow.on_proof = Some(OnProof::Promote);
            route.shadow = Some(shadow);
            route.budget = Some(RawBudget::new(0.0, policy));
        }
    };
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| c.provider("vllm").fixed_monthly_usd = Some(spanned(0.0)))
        .with(demoted(OnExhausted::LocalOnly))
        .with(demoted(OnExhausted::LocalAny));
    let gateway = TestGateway::start(&config).await;
    let refused = send(&gateway, &ask("budget_demoted_only")).await;
    let message = refused.error(429, Some("insufficient_quota"));
    assert!(message.contains("demoted by its shadow check"), "{message}");
    let served = send(&gateway, &ask("budget_demoted_any")).await;
    assert_eq!(served.status, 200, "{}", served.text);
    assert_eq!(served.header("x-tierwise-tier"), Some("local"));
    assert_eq!(
        served.header("x-tierwise-fallback"),
        Some("api_fast:budget_spent")
    );
    assert_eq!(api.request_count(), 0);
    assert_eq!(local.request_count(), 1);
    gateway.shutdown().await;
}

/// A budget alerts at its `alert_at` share once — not again as the spend grows past it, not again
/// when it is spent, not again from a restarted gateway — and once when it is spent; the webhook
/// hears each once, and the metric counts each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_at_80_percent_fires_once_a_month_across_a_restart() {
    const ROUTE: &str = "budget_alerting";
    let (local, api) = fakes().await;
    let hook = Hook::start().await;
    // Six calls (378 µUSD) fit 400 µUSD; the seventh's reservation would not. 80% is passed by
    // the sixth call (320 µUSD); all API spend's budget passes its own 80% only later.
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        400_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| {
        c.0.alerts.webhook = Some(text(hook.url.clone()));
        c.0.budget = Some(RawBudget::new(0.001, OnExhausted::LocalOnly));
        c.add_route("budget_other", TaskKind::Chat, &["api_fast"]);
    });
    let gateway = TestGateway::start(&config).await;
    for call in 1..=6 {
        let answer = send(&gateway, &ask(ROUTE)).await;
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("api_fast"),
            "call {call}"
        );
        // Each call is settled before the next: the alert is judged on each spend, not once.
        settled(&gateway, ROUTE).await;
    }
    send(&gateway, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    let wait_for = |events: &'static [&'static str]| {
        let hook = &hook;
        async move {
            let until = Instant::now() + Duration::from_secs(10);
            while hook.events() != events {
                assert!(
                    Instant::now() < until,
                    "the webhook heard {:?}, not {events:?}",
                    hook.events()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(&["budget_alert_at", "budget_spent"]).await;
    let notice = hook.received.lock().unwrap()[0].clone();
    assert_eq!(
        (
            &notice["scope"],
            &notice["name"],
            &notice["month"],
            &notice["alert_at"]
        ),
        (
            &json!("route"),
            &json!(ROUTE),
            &json!(Month::of(tierwise::quality::watch::now_ms()).to_string()),
            &json!(0.8)
        )
    );
    assert_eq!(notice["spent_usd"].as_f64(), Some(usd(6 * ACTUAL)));
    let metrics = gateway.metrics().await;
    for level in ["alert_at", "spent"] {
        let series = format!(
            "tierwise_budget_alerts_total{{scope=\"route\",name=\"{ROUTE}\",level=\"{level}\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    gateway.shutdown().await;

    // The same month, restarted: the budget is still spent, and says so to no one again. All API
    // spend passing its 80% on another route is the next thing the webhook hears.
    let restarted = TestGateway::start(&config).await;
    send(&restarted, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    for _ in 0..7 {
        let answer = send(&restarted, &ask("budget_other")).await;
        assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    }
    wait_for(&["budget_alert_at", "budget_spent", "budget_alert_at"]).await;
    let last = hook.received.lock().unwrap()[2].clone();
    assert_eq!(
        (&last["scope"], &last["name"]),
        (&json!("all"), &Value::Null)
    );
    restarted.shutdown().await;
}

/// Waits until the webhook has heard `events`, in order.
async fn heard(hook: &Hook, events: &[&str]) {
    let until = Instant::now() + Duration::from_secs(10);
    while hook.events() != events {
        assert!(
            Instant::now() < until,
            "the webhook heard {:?}, not {events:?}",
            hook.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The spent alert fires at the first request the budget cannot hold, and says how much is really
/// spent — 94.5%, not 100% — with the worst case that no longer fitted. A reset in the month arms
/// both alerts again: the operator who reset a mispriced month hears when the real spend crosses
/// 80% and can no longer hold a request again, told it follows a correction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spent_alert_says_the_true_share_and_a_reset_month_alerts_again() {
    const ROUTE: &str = "budget_rearmed";
    let (local, api) = fakes().await;
    let hook = Hook::start().await;
    // Six calls (378 µUSD) fit 400 µUSD; the seventh's reservation would not.
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        400_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| c.0.alerts.webhook = Some(text(hook.url.clone())));
    let gateway = TestGateway::start(&config).await;
    let store = gateway.store().await;
    let spend_it = || async {
        for _ in 0..6 {
            let answer = send(&gateway, &ask(ROUTE)).await;
            assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
            stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        }
        send(&gateway, &ask(ROUTE))
            .await
            .assert_served_by("local", "api_fast:budget_spent");
    };
    spend_it().await;
    heard(&hook, &["budget_alert_at", "budget_spent"]).await;
    let spent = hook.received.lock().unwrap()[1].clone();
    assert_eq!(spent["share"].as_f64(), Some(6.0 * ACTUAL as f64 / 400e6));
    assert_eq!(spent["spent_usd"].as_f64(), Some(usd(6 * ACTUAL)));
    assert_eq!(
        spent["worst_case_usd"].as_f64(),
        Some(usd(reservation(&ask(ROUTE))))
    );
    assert_eq!(spent["after_corrections"], 0);

    let reset = admin_post(
        &gateway,
        "/admin/api/budgets/adjust",
        &json!({"scope": "route", "name": ROUTE, "reset": true, "reason": "mispriced"}),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    spend_it().await;
    heard(
        &hook,
        &[
            "budget_alert_at",
            "budget_spent",
            "budget_alert_at",
            "budget_spent",
        ],
    )
    .await;
    let again = hook.received.lock().unwrap()[2].clone();
    assert_eq!(
        (
            again["after_corrections"].as_u64(),
            again["spent_usd"].as_f64()
        ),
        (Some(1), Some(usd(6 * ACTUAL))),
        "{again}"
    );
    gateway.shutdown().await;
}

/// A second gateway on the same SQLite ledger starts from the month's spend: the budget the first
/// spent stays spent. It prices gpt-4o-mini at half: the month's spend is what the calls cost when
/// they were made, not a repricing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_months_spend_and_a_price_change_does_not_rewrite_it() {
    const ROUTE: &str = "budget_restart";
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        150_000_000,
        OnExhausted::LocalOnly,
    );
    let ledger = config.0.ledger.url.clone();
    let first = TestGateway::start(&config).await;
    let mut stream = ask(ROUTE);
    stream["stream"] = json!(true);
    let streamed = send(&first, &stream).await;
    assert_eq!(streamed.header("x-tierwise-tier"), Some("api_fast"));
    assert!(streamed.text.contains("data: [DONE]"), "{}", streamed.text);
    send(&first, &ask(ROUTE)).await;
    let spent = settled(&first, ROUTE).await["spent_usd"].as_f64();
    assert_eq!(spent, Some(usd(2 * ACTUAL)), "a stream settles at its end");
    first.shutdown().await;

    let repriced = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        150_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| {
        c.0.ledger.url = ledger;
        c.0.prices.insert(
            text("gpt-4o-mini"),
            tierwise::config::file::RawPrice {
                input: spanned(0.075),
                output: spanned(0.30),
                cached_input: None,
                cache_write: None,
            },
        );
    });
    let second = TestGateway::start(&repriced).await;
    let budget = budget_of(&second, ROUTE).await;
    assert_eq!(budget["spent_usd"].as_f64(), Some(usd(2 * ACTUAL)));
    // 126 µUSD spent and about 42 µUSD reserved at the new price is more than 150.
    send(&second, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    assert_eq!(api.request_count(), 2);
    second.shutdown().await;
}

/// 64 requests at once against a budget that holds ten of their reservations, on an API slow
/// enough that none has ended before the last arrives: ten go to the API, the rest to local, and
/// the month's spend stays within the budget — the overshoot is at most what one reservation
/// under-estimates (here it over-estimates, so none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_at_once_spend_no_more_than_a_budget_of_ten() {
    const ROUTE: &str = "budget_parallel";
    let (local, api) = fakes().await;
    api.update(|b| b.fault = Fault::SlowFirstByte { ms: 500 });
    let held = reservation(&ask(ROUTE));
    let monthly = 10 * held;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        monthly,
        OnExhausted::LocalOnly,
    );
    let gateway = TestGateway::start(&config).await;
    let answers = futures_util::future::join_all(
        (0..64).map(|_| async { send(&gateway, &ask(ROUTE)).await }),
    )
    .await;
    let on_api = answers
        .iter()
        .filter(|answer| answer.header("x-tierwise-tier") == Some("api_fast"))
        .count();
    let moved = answers
        .iter()
        .filter(|answer| answer.header("x-tierwise-fallback") == Some("api_fast:budget_spent"))
        .count();
    assert!(answers.iter().all(|answer| answer.status == 200));
    let budget = settled(&gateway, ROUTE).await;
    let spent = budget["spent_usd"].as_f64().unwrap();
    let over = (spent - usd(monthly)).max(0.0);
    // What one reservation under-estimated the call it held for; negative: it over-estimated.
    let error = ACTUAL - held;
    println!(
        "64 concurrent requests, budget ${} (10 reservations of ${}): {on_api} answered by the API, \
         {moved} moved to local; spent ${spent} of ${}, over by ${over}; one reservation's error \
         ${} (a call costs ${})",
        usd(monthly),
        usd(held),
        usd(monthly),
        usd(error),
        usd(ACTUAL),
    );
    assert_eq!(on_api + moved, 64);
    // Ten reservations fit; an eleventh fits only once ten calls have cost less than they held,
    // for a request that came after they ended.
    assert!((10..=11).contains(&on_api), "{on_api} on the API");
    assert_eq!(api.request_count(), on_api);
    assert!(over <= usd(error.max(0)), "over by ${over}");
    assert_eq!(spent, usd(on_api as i64 * ACTUAL));
    gateway.shutdown().await;
}

/// The month's one spent alert means the month is spent: 64 requests at once against a budget
/// of ten, at $0 settled, refuse 54 saying the budget cannot hold them *now* (what is held, what is
/// spent) and send no spent alert; neither does one request asking for far more than most. Only
/// when the settled spend cannot hold a usual request does the alert go, and the 429 says spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_moment_or_one_oversized_request_is_not_a_spent_month() {
    const ROUTE: &str = "budget_busy";
    let (local, api) = fakes().await;
    // Slow enough that all 64 are asked before any of the ten admitted ends.
    api.update(|b| b.fault = Fault::SlowFirstByte { ms: 1500 });
    let hook = Hook::start().await;
    let held = reservation(&ask(ROUTE));
    let monthly = 10 * held;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast"],
        monthly,
        OnExhausted::Reject,
    )
    .with(|c| c.0.alerts.webhook = Some(text(hook.url.clone())));
    let gateway = TestGateway::start(&config).await;
    let answers = futures_util::future::join_all(
        (0..64).map(|_| async { send(&gateway, &ask(ROUTE)).await }),
    )
    .await;
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(refused.len(), 54, "{} refused", refused.len());
    for answer in &refused {
        answer.error(429, Some("insufficient_quota"));
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("cannot hold this request's worst case")
                && message.contains("held by requests in flight"),
            "{message}"
        );
    }
    settled(&gateway, ROUTE).await;
    api.update(|b| b.fault = Fault::None);
    // One request asking for 100 times the tokens: refused, the month not spent.
    let mut oversized = ask(ROUTE);
    oversized["max_tokens"] = json!(10_000);
    let answer = send(&gateway, &oversized).await;
    answer.error(429, Some("insufficient_quota"));
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot hold this request's worst case"),
        "{}",
        answer.text
    );
    // 10 calls cost 87% of the budget: the 80% alert is heard, and nothing before it.
    let wait_for = |events: &'static [&'static str]| {
        let hook = &hook;
        async move {
            let until = Instant::now() + Duration::from_secs(10);
            while hook.events() != events {
                assert!(
                    Instant::now() < until,
                    "the webhook heard {:?}, not {events:?}",
                    hook.events()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(&["budget_alert_at"]).await;
    // Now it is spent: one more call fits, then a usual request no longer does.
    assert_eq!(send(&gateway, &ask(ROUTE)).await.status, 200);
    settled(&gateway, ROUTE).await;
    let answer = send(&gateway, &ask(ROUTE)).await;
    answer.error(429, Some("insufficient_quota"));
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is spent"),
        "{}",
        answer.text
    );
    wait_for(&["budget_alert_at", "budget_spent"]).await;
    gateway.shutdown().await;
}

/// A correction never takes a month's spend below zero (which would silently raise the budget):
/// it is floored, and its audit row keeps the change made. A correction the admin API cannot read
/// is answered in OpenAI's shape and says what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_is_floored_at_zero_and_a_bad_one_is_told_why() {
    const ROUTE: &str = "budget_floor";
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        100 * ACTUAL,
        OnExhausted::LocalOnly,
    );
    let gateway = TestGateway::start(&config).await;
    let store = gateway.store().await;
    let first = send(&gateway, &ask(ROUTE)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // The floor is the ledger's spend: the call must be there.
    stored(&store, first.header("x-tierwise-request-id").unwrap()).await;
    settled(&gateway, ROUTE).await;
    let path = "/admin/api/budgets/adjust";
    let taken = admin_post(
        &gateway,
        path,
        &json!({"scope": "route", "name": ROUTE, "usd": -1.0, "reason": "mispriced"}),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(taken.status, 200, "{}", taken.text);
    assert_eq!(
        taken.body["adjustment"]["delta_pusd"], -ACTUAL,
        "{}",
        taken.text
    );
    assert_eq!(settled(&gateway, ROUTE).await["spent_usd"], 0.0);

    let no_reason = admin_post(
        &gateway,
        path,
        &json!({"scope": "route", "name": ROUTE, "usd": 1.0}),
        ADMIN_KEY,
    )
    .await;
    no_reason.error(400, None);
    assert!(no_reason.text.contains("reason"), "{}", no_reason.text);
    let absurd = admin_post(
        &gateway,
        path,
        &json!({"scope": "route", "name": ROUTE, "usd": 1e300, "reason": "x"}),
        ADMIN_KEY,
    )
    .await;
    absurd.error(400, None);
    assert!(
        absurd
            .text
            .contains("\\\"usd\\\" must be a number of dollars from -9000000 to 9000000"),
        "{}",
        absurd.text
    );
    gateway.shutdown().await;
}

/// A reset through the admin API writes its audit row and lets the API serve again at once; an
/// adjustment adds spend back and moves requests again. A client key may read the admin API on a
/// gateway without an admin key, but never correct a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_writes_its_audit_row_and_changes_admission() {
    const ROUTE: &str = "budget_corrected";
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        100_000_000,
        OnExhausted::LocalOnly,
    );
    let gateway = TestGateway::start(&config).await;
    let store = gateway.store().await;
    let first = send(&gateway, &ask(ROUTE)).await;
    // A reset takes off what the ledger holds: the call must be there.
    stored(&store, first.header("x-tierwise-request-id").unwrap()).await;
    settled(&gateway, ROUTE).await;
    send(&gateway, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");

    let reset =
        json!({"scope": "route", "name": ROUTE, "reset": true, "reason": "mispriced model"});
    let answer = admin_post(&gateway, "/admin/api/budgets/adjust", &reset, ADMIN_KEY).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let row = &answer.body["adjustment"];
    assert_eq!(
        (
            &row["kind"],
            &row["delta_pusd"],
            &row["spent_before_pusd"],
            &row["reason"]
        ),
        (
            &json!("reset"),
            &json!(-ACTUAL),
            &json!(ACTUAL),
            &json!("mispriced model")
        )
    );
    assert!(row["actor"].as_str().unwrap().starts_with("admin:key-"));
    let answer = send(&gateway, &ask(ROUTE)).await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    settled(&gateway, ROUTE).await;

    let adjust =
        json!({"scope": "route", "name": ROUTE, "usd": 0.0001, "reason": "a bill paid elsewhere"});
    let answer = admin_post(&gateway, "/admin/api/budgets/adjust", &adjust, ADMIN_KEY).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    send(&gateway, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    let listed = admin_get(&gateway, "/admin/api/budgets").await;
    let kinds: Vec<&Value> = listed.body["adjustments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| &row["kind"])
        .collect();
    assert_eq!(kinds, [&json!("reset"), &json!("adjust")]);
    let month = Month::of(tierwise::quality::watch::now_ms());
    assert_eq!(store.adjustments(month).await.unwrap().len(), 2);
    let budget = budget_of(&gateway, ROUTE).await;
    assert_eq!(
        budget["adjusted_usd"].as_f64(),
        Some(usd(100_000_000 - ACTUAL))
    );

    // Mistakes are named; a client key cannot correct.
    let unknown = json!({"scope": "route", "name": "nope", "reset": true, "reason": "x"});
    let answer = admin_post(&gateway, "/admin/api/budgets/adjust", &unknown, ADMIN_KEY).await;
    answer.error(404, Some("not_found"));
    let both = json!({"scope": "route", "name": ROUTE, "reset": true, "usd": 1.0, "reason": "x"});
    let answer = admin_post(&gateway, "/admin/api/budgets/adjust", &both, ADMIN_KEY).await;
    answer.error(400, None);
    let answer = admin_post(
        &gateway,
        "/admin/api/budgets/adjust",
        &reset,
        crate::util::CLIENT_KEY,
    )
    .await;
    answer.error(401, Some("invalid_api_key"));
    gateway.shutdown().await;

    let open = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        100_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| c.0.server.admin_key = None);
    let gateway = TestGateway::start(&open).await;
    let answer = admin_post(
        &gateway,
        "/admin/api/budgets/adjust",
        &reset,
        crate::util::CLIENT_KEY,
    )
    .await;
    let message = answer.error(403, Some("forbidden"));
    assert!(message.contains("server.admin_key"), "{message}");
    gateway.shutdown().await;
}

/// A budget spent on the last minute of January is whole again on the first of February: the
/// gateway's clock is moved across the month's end, nothing sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_month_starts_its_budget_from_nothing() {
    const ROUTE: &str = "budget_monthly";
    // 2030-01-31T23:59:00Z, and a minute later.
    const JANUARY: i64 = 1_896_134_340_000;
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast", "local"],
        100_000_000,
        OnExhausted::LocalOnly,
    );
    let now = Arc::new(AtomicI64::new(JANUARY));
    let gateway = TestGateway::start_with_clock(
        config.config(),
        tierwise::limits::Clock::manual(now.clone()),
    )
    .await;
    send(&gateway, &ask(ROUTE)).await;
    settled(&gateway, ROUTE).await;
    send(&gateway, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    now.store(JANUARY + 60_000, Ordering::Relaxed);
    let answer = send(&gateway, &ask(ROUTE)).await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(answer.header("x-tierwise-fallback"), None);
    let budget = settled(&gateway, ROUTE).await;
    assert_eq!(budget["month"], "2030-02");
    assert_eq!(budget["spent_usd"].as_f64(), Some(usd(ACTUAL)));
    gateway.shutdown().await;
}

/// A named key's budget holds its own calls, whatever route they call, and only its own: another
/// client on the same route is served. Its spend is the ledger's by key name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_budget_holds_that_keys_calls_only() {
    const ROUTE: &str = "budget_keyed";
    const BATCH_KEY: &str = "tw-batch-job-key-31";
    let (local, api) = fakes().await;
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["api_fast"],
        1_000_000_000_000,
        OnExhausted::Reject,
    )
    .with(|c| {
        let mut batch = tierwise::config::file::RawKey::new(BATCH_KEY);
        // One reservation fits; after one call, a second does not.
        batch.budget = Some(RawBudget::new(
            usd(reservation(&ask(ROUTE))),
            OnExhausted::Reject,
        ));
        c.0.keys.insert(text("batch"), batch);
    });
    let gateway = TestGateway::start(&config).await;
    let as_batch = || async {
        let response = gateway
            .http
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(BATCH_KEY)
            .json(&ask(ROUTE))
            .send()
            .await
            .unwrap();
        Answer::of(response).await
    };
    assert_eq!(as_batch().await.status, 200);
    let key = |budgets: &Value| {
        budgets["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|budget| budget["scope"] == "key")
            .cloned()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while key(&admin_get(&gateway, "/admin/api/budgets").await.body)["reserved_usd"] != 0.0 {
        assert!(Instant::now() < until, "the key's call never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = as_batch().await;
    let message = refused.error(429, Some("insufficient_quota"));
    assert!(message.contains("key batch"), "{message}");
    // Another client on the same route is not the batch key.
    assert_eq!(send(&gateway, &ask(ROUTE)).await.status, 200);
    let shown = key(&admin_get(&gateway, "/admin/api/budgets").await.body);
    assert_eq!(
        (&shown["name"], shown["spent_usd"].as_f64()),
        (&json!("batch"), Some(usd(ACTUAL)))
    );
    gateway.shutdown().await;
    // Read back from the ledger by key name, as a restart would.
    let store =
        tierwise::ledger::Store::connect(&config.0.ledger.url.as_ref().unwrap().get_ref().clone())
            .await
            .unwrap();
    let now = tierwise::quality::watch::now_ms();
    let spend = store.month_spend(Month::of(now), now + 1).await.unwrap();
    assert_eq!(
        spend
            .total(&tierwise::config::BudgetScope::Key("batch".into()))
            .0,
        ACTUAL
    );
}

/// Shadow checks are API calls like any other: they count against their route's budget, and stop
/// once it cannot hold another (`budget_spent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_checks_spend_the_routes_budget_and_stop_when_it_is_spent() {
    const ROUTE: &str = "budget_shadowed";
    let (local, api) = fakes().await;
    // A check on gpt-4o (100 tokens at most) holds about $0.0013 and costs $0.00105: one fits
    // $0.002, a second does not.
    let config = budgeted(
        &local,
        &api,
        ROUTE,
        &["local", "api_fast"],
        2_000_000_000,
        OnExhausted::LocalOnly,
    )
    .with(|c| {
        c.route(ROUTE).kind = spanned(TaskKind::Classification);
        c.route(ROUTE).shadow = Some(RawShadow::new("api_frontier", 1.0));
        c.0.tiers.get_mut("api_frontier").unwrap().max_tokens = Some(100);
    });
    let gateway = TestGateway::start(&config).await;
    for i in 0..3 {
        let body = json!({"model": ROUTE, "messages": [{"role": "user", "content": format!("ticket {i}")}]});
        let answer = send(&gateway, &body).await;
        assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    }
    let series =
        format!("tierwise_shadow_skipped_total{{route=\"{ROUTE}\",reason=\"budget_spent\"}} 2");
    gateway
        .wait_for_metrics(|text| text.contains(&series))
        .await;
    assert_eq!(api.request_count(), 1, "one check was sent");
    let budget = settled(&gateway, ROUTE).await;
    assert_eq!(
        budget["spent_usd"].as_f64(),
        Some(usd(20 * 2_500_000 + 100 * 10_000_000))
    );
    gateway.shutdown().await;
}

/// The budget tables and sums read the same on PostgreSQL as on SQLite: a month's spend by route
/// and key, its corrections, an alert stored once, the calls a budget moved and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_sums_read_the_same_on_sqlite_and_postgresql() {
    use tierwise::config::BudgetScope;
    use tierwise::ledger::budget::{AlertLevel, AlertRow, Change, Correction};
    use tierwise::ledger::{AttemptRow, Picodollars, RequestRow, Store};
    for backend in [crate::util::Backend::Sqlite, crate::util::Backend::Postgres] {
        let store = Store::connect(&backend.url().await).await.unwrap();
        let month = Month::parse("2026-12").unwrap();
        let start = month.start_ms();
        let row = |id: &str, route: &str, key: Option<&str>, cost: i64| RequestRow {
            route: Some(route.into()),
            key_name: key.map(str::to_string),
            tier: Some("local".into()),
            cost_pusd: Some(Picodollars(cost)),
            tokens_in: 20,
            tokens_out: 5,
            ..RequestRow::new(id.into(), start + 1, "chat.completions".into())
        };
        let refused = RequestRow {
            status: 429,
            error_kind: Some("insufficient_quota".into()),
            route: Some("r".into()),
            ..RequestRow::new("refused".into(), start + 2, "chat.completions".into())
        };
        let rows = [
            row("a", "r", Some("batch"), 300),
            row("b", "r", None, 0),
            row("c", "s", None, 7),
            refused,
        ];
        let attempt = |seq: i32, tier: &str, outcome: &str| AttemptRow {
            request_id: "b".into(),
            seq,
            tier: tier.into(),
            provider: "p".into(),
            model: "m".into(),
            outcome: outcome.into(),
            latency_us: 0,
            server: None,
            answered: None,
        };
        let attempts = [
            attempt(0, "api_fast", "budget_spent"),
            attempt(1, "api_frontier", "budget_spent"),
            attempt(2, "local", "ok"),
        ];
        store
            .insert(
                &rows.iter().collect::<Vec<_>>(),
                &attempts.iter().collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        let route = BudgetScope::Route("r".into());
        store
            .correct_budget(
                start + 3,
                &Correction {
                    month,
                    scope: &route,
                    change: Change::Add(Picodollars(-100)),
                    reason: "test",
                    actor: "cli:test",
                },
            )
            .await
            .unwrap();
        let spend = store.month_spend(month, i64::MAX).await.unwrap();
        assert_eq!(
            (
                spend.total(&route),
                spend.total(&BudgetScope::Key("batch".into())),
                spend.total(&BudgetScope::All)
            ),
            (Picodollars(200), Picodollars(300), Picodollars(307)),
            "{backend:?}"
        );
        let alert = AlertRow {
            month: month.to_string(),
            scope: "route".into(),
            name: "r".into(),
            level: AlertLevel::AlertAt.as_str().into(),
            ts_ms: start,
            spent_pusd: 1,
            limit_pusd: 2,
            armed_after: 0,
        };
        assert!(store.record_budget_alert(&alert).await.unwrap());
        assert!(!store.record_budget_alert(&alert).await.unwrap());
        // Armed again by a correction: once more, and once only.
        let again = AlertRow {
            armed_after: 1,
            ..alert.clone()
        };
        assert!(store.record_budget_alert(&again).await.unwrap());
        assert!(!store.record_budget_alert(&again).await.unwrap());
        let (moves, refusals) = store
            .budget_effects(start, month.end_ms(), Some("r"))
            .await
            .unwrap();
        assert_eq!(moves.len(), 1, "{backend:?}: {moves:?}");
        assert_eq!(
            (
                moves[0].tier.as_str(),
                moves[0].calls,
                moves[0].answered,
                moves[0].tokens_in
            ),
            ("api_fast", 1, 1, 20),
            "{backend:?}: the tier passed over first"
        );
        assert_eq!(refusals, [(Some("r".to_string()), 1)], "{backend:?}");
        store.close().await;
    }
}
