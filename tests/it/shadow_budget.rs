//! A shadow check's daily budget holds (issue 22, item 6): each call's worst case (its prompt's
//! bytes as tokens, and the answer's bounded length, at the model's price) is reserved before it
//! is sent and settled after, so concurrent checks cannot all pass a check made before any of them
//! has cost anything; replicas read the day's spend from the ledger before they reserve; the
//! client's `n` and token limit do not reach the reference; an unpriced reference is refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::TaskKind;
use tierwise::config::file::{RawShadow, spanned, text};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::{Answer, TestConfig, TestGateway, env};

/// A route of its own: the metrics are the test binary's, shared with every other test, and the
/// drift tests count the alerts of `classification`.
const ROUTE: &str = "budgeted";

/// Each gpt-4o check costs $0.00125 (100 tokens in, 100 out) and reserves about $0.0013 (100
/// tokens out, and a prompt of about 95 bytes at $2.50 per million): $0.0048 a day takes three
/// checks, and a fourth would not fit.
const BUDGET: f64 = 0.0048;
const SPENT: &str = "0.00375";

async fn fakes() -> (FakeUpstream, FakeUpstream) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    api.update(|b| {
        b.prompt_tokens = 100;
        b.completion_tokens = 100;
    });
    (local, api)
}

fn budgeted(local: &FakeUpstream, api: &FakeUpstream) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.daily_budget_usd = Some(spanned(BUDGET));
            shadow.concurrency = Some(spanned(32));
            c.add_route(ROUTE, TaskKind::Classification, &["local", "api_fast"])
                .shadow = Some(shadow);
            c.0.tiers.get_mut("api_frontier").unwrap().max_tokens = Some(100);
        })
}

/// A classification request asking for three choices of up to 50,000 tokens.
fn greedy(i: usize) -> Value {
    json!({
        "model": ROUTE,
        "messages": [{"role": "user", "content": format!("ticket {i:03} [[billing]]")}],
        "n": 3,
        "max_tokens": 50_000,
    })
}

async fn spent_today(gateway: &TestGateway) -> String {
    let all = Answer::of(gateway.get("/admin/api/quality").await).await;
    all.body["routes"][0]["spent_today_usd"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_for_spent(gateway: &TestGateway, spent: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = spent_today(gateway).await;
        if now == spent {
            return;
        }
        assert!(
            Instant::now() < until,
            "spent today: {now}, waited for {spent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Twenty samples at once against a slow reference: three worst cases fit the budget, so three
/// checks are sent; the others are skipped rather than all sent on a budget nothing has spent yet.
/// Each check asks for one answer of the reference's length, not the client's three of 50,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_never_spend_past_the_daily_budget() {
    let (local, api) = fakes().await;
    api.update(|b| b.fault = Fault::SlowFirstByte { ms: 300 });
    let gateway = TestGateway::start(&budgeted(&local, &api)).await;
    let sent = futures_util::future::join_all((0..20).map(|i| {
        let gateway = &gateway;
        async move { Answer::of(gateway.post("/v1/chat/completions", &greedy(i)).await).await }
    }))
    .await;
    assert!(sent.iter().all(|answer| answer.status == 200));
    wait_for_spent(&gateway, SPENT).await;
    // Later samples find the budget spent too.
    for i in 20..25 {
        let answer = Answer::of(gateway.post("/v1/chat/completions", &greedy(i)).await).await;
        assert_eq!(answer.status, 200);
    }
    let calls = api.requests();
    assert_eq!(calls.len(), 3, "three worst cases fit the budget");
    for call in &calls {
        assert!(call.body.get("n").is_none(), "{}", call.body);
        assert_eq!(call.body["max_tokens"], 100, "{}", call.body);
    }
    assert_eq!(spent_today(&gateway).await, SPENT);
    gateway.shutdown().await;
}

/// Two replicas on one ledger: once one has spent the day's budget, the other reads that spend
/// from the ledger before its next check and makes none, without waiting for its periodic resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_ledger_share_the_shadow_budget() {
    let (local, api) = fakes().await;
    let first = budgeted(&local, &api);
    let ledger = first.0.ledger.url.clone();
    let second = budgeted(&local, &api).with(|c| c.0.ledger.url = ledger);
    let one = TestGateway::start(&first).await;
    let two = TestGateway::start(&second).await;
    for i in 0..6 {
        let answer = Answer::of(one.post("/v1/chat/completions", &greedy(i)).await).await;
        assert_eq!(answer.status, 200);
    }
    wait_for_spent(&one, SPENT).await;
    let store = one.store().await;
    let until = Instant::now() + Duration::from_secs(10);
    while store
        .summary(0, i64::MAX, Some(ROUTE))
        .await
        .unwrap()
        .checks
        .first()
        .is_none_or(|checks| checks.calls < 3)
    {
        assert!(
            Instant::now() < until,
            "the checks never reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 6..12 {
        let answer = Answer::of(two.post("/v1/chat/completions", &greedy(i)).await).await;
        assert_eq!(answer.status, 200);
    }
    // The second replica's samples have been taken up once its own spend reads the ledger's.
    wait_for_spent(&two, SPENT).await;
    assert_eq!(
        api.request_count(),
        3,
        "the second replica spent a budget the first had spent"
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// `tierwise check` (and start-up) refuse a shadow check whose reference is a paid model without
/// a price, naming the key and line; a `[prices."model"]` table lets it through.
#[test]
fn an_unpriced_shadow_reference_is_refused_until_it_is_priced() {
    let config = TestConfig::two_tier("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1").with(|c| {
        c.add_route(ROUTE, TaskKind::Classification, &["local", "api_fast"])
            .shadow = Some(RawShadow::new("api_frontier", 0.1));
        c.0.tiers.get_mut("api_frontier").unwrap().model = text("acme-large");
    });
    let path = std::path::Path::new("tierwise.toml");
    let toml = config.toml();
    let err = tierwise::config::Config::parse(&toml, path, &env)
        .expect_err("an unpriced reference is refused")
        .to_string();
    assert!(
        err.contains("routes.budgeted.shadow.reference")
            && err.contains("line")
            && err.contains("[prices.\"acme-large\"]"),
        "{err}"
    );
    let priced = format!("{toml}\n[prices.\"acme-large\"]\ninput = 1.0\noutput = 2.0\n");
    tierwise::config::Config::parse(&priced, path, &env).expect("a priced reference loads");
}
