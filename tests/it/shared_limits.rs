//! Rate limits and budgets shared by replicas through a real Redis (`[limits] store`), started by
//! each test on a free port and killed when the test ends: two gateways enforce one limit and hold
//! one budget between them, and a Redis that dies, hangs, or comes back empty never fails a
//! request; a replica that dies holding reservations does not hold them forever; a correction on
//! one replica is judged by the other at once.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::OnExhausted;
use tierwise::config::file::{spanned, text};
use tierwise::ledger::budget::Month;
use tierwise_fake::{FakeUpstream, Fault};

use crate::budgets::{
    ACTUAL, ADMIN_KEY, admin_post, ask, budget_of, budgeted, fakes, reservation, send, usd,
};
use crate::rate_limits::{key, post_as};
use crate::util::*;

/// A redis-server of the test's own, killed when dropped.
pub(crate) struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    /// A Redis on `port`, empty: as one restarted without persistence comes back.
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let redis = Redis { child, port };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The fields of a budget's month, as the replicas share it.
    async fn budget(&self, route: &str) -> std::collections::HashMap<String, i64> {
        let key = format!(
            "tierwise:budget:route:{route}:{}",
            Month::of(tierwise::quality::watch::now_ms())
        );
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(api: &FakeUpstream, store: &str, rpm: u64) -> TestGateway {
    let store = store.to_string();
    let config = TestConfig::two_tier(&api.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            key(c, "shared_job", Some(rpm), None);
            c.0.limits.store = Some(text(store));
            c.0.limits.store_timeout_ms = Some(spanned(100));
        });
    TestGateway::start(&config).await
}

async fn readyz(gw: &TestGateway) -> Value {
    Answer::of(gw.get("/readyz").await).await.body
}

/// Waits until `/readyz` says the limits store is `status`.
async fn wait_for_store(gw: &TestGateway, status: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = readyz(gw).await;
        if ready["limits_store"] == status {
            return;
        }
        assert!(Instant::now() < until, "limits store not {status}: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit_and_keep_serving_when_it_dies() {
    let redis = Redis::start();
    let api = FakeUpstream::start().await;
    let a = replica(&api, &redis.url(), 20).await;
    let b = replica(&api, &redis.url(), 20).await;
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    let ask = chat("classification", "x");
    // 40 requests, alternating: the two replicas admit 20 between them, not 20 each.
    let mut admitted = [0, 0];
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let answer = post_as(gw, "shared_job", &ask).await;
        match answer.status {
            200 => admitted[i % 2] += 1,
            429 => {
                answer.error(429, Some("rate_limit_exceeded"));
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    eprintln!("admitted by replica: {admitted:?}");
    assert_eq!(admitted[0] + admitted[1], 20, "{admitted:?}");
    let last = post_as(&b, "shared_job", &ask).await;
    assert_eq!(
        last.header("x-ratelimit-remaining-requests"),
        Some("0"),
        "the count both replicas share"
    );

    // Redis dies: neither replica fails a request for it, each judges from its own memory.
    drop(redis);
    for gw in [&a, &b] {
        let started = Instant::now();
        let answer = post_as(gw, "shared_job", &ask).await;
        assert!(
            matches!(answer.status, 200 | 429),
            "{}: {}",
            answer.status,
            answer.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        wait_for_store(gw, "down").await;
    }
    // Each replica has admitted about 10 in its memory: it serves its own remaining ~10.
    for gw in [&a, &b] {
        let mut served = 0;
        for _ in 0..15 {
            let answer = post_as(gw, "shared_job", &ask).await;
            assert!(matches!(answer.status, 200 | 429), "{}", answer.text);
            served += usize::from(answer.status == 200);
        }
        assert!(served >= 1, "a replica kept serving from memory");
    }
    let metrics = a.metrics().await;
    assert!(metrics.contains("tierwise_limits_store_up 0"), "{metrics}");
    a.shutdown().await;
    b.shutdown().await;
}

/// The tokens a key has in Redis, over every minute it counts.
async fn shared_tokens(redis: &Redis, key: &str) -> i64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let minutes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("tierwise:limits:key:{key}:tokens:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut sum = 0;
    for minute in minutes {
        let count: i64 = redis::cmd("GET")
            .arg(minute)
            .query_async(&mut connection)
            .await
            .unwrap();
        sum += count;
    }
    sum
}

/// A tpm limit shared through Redis counts what requests really used, not what they reserved:
/// the settlement reaches Redis (its script loaded first: a fresh Redis knows none), and the other
/// replica's `x-ratelimit-remaining-tokens` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_a_tpm_limit_count_real_usage_not_reservations() {
    let redis = Redis::start();
    let api = FakeUpstream::start().await;
    let replica = |store: String| {
        TestConfig::two_tier(&api.base_url(), &api.base_url())
            .without_probes()
            .with(move |c| {
                key(c, "shared_tpm", None, Some(3000));
                c.0.limits.store = Some(text(store.clone()));
                c.0.limits.store_timeout_ms = Some(spanned(500));
            })
    };
    let a = TestGateway::start(&replica(redis.url())).await;
    let b = TestGateway::start(&replica(redis.url())).await;
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    // The fake reports 20 prompt and 5 completion tokens: 25 a request, ~110 reserved.
    let mut ask = chat("classification", "x");
    ask["max_tokens"] = serde_json::json!(100);
    let remaining = |answer: &Answer| -> i64 {
        answer
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = post_as(&a, "shared_tpm", &ask).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let reserved = 3000 - remaining(&first);
    assert!((100..=120).contains(&reserved), "{reserved}");
    // Settled off the request path: Redis comes to hold the real 25.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let held = shared_tokens(&redis, "shared_tpm").await;
        if held == 25 {
            break;
        }
        assert!(
            Instant::now() < until,
            "Redis holds {held} tokens for the key: the reservation ({reserved}), not the 25 used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other replica counts the first request's 25, not its reservation.
    let second = post_as(&b, "shared_tpm", &ask).await;
    assert_eq!(second.status, 200, "{}", second.text);
    let used = 3000 - remaining(&second);
    assert!(
        used <= 25 + reserved,
        "{used} used: the first request's reservation is still counted"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_holds_no_request_longer_than_its_timeout() {
    // Accepts connections and says nothing, as a hung Redis does.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(64) {
            open.push(stream);
        }
    });
    let api = FakeUpstream::start().await;
    let gw = replica(&api, &format!("redis://127.0.0.1:{port}"), 1000).await;
    let ask = chat("classification", "x");
    for _ in 0..5 {
        let started = Instant::now();
        let answer = post_as(&gw, "shared_job", &ask).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(readyz(&gw).await["limits_store"], "down");
    gw.shutdown().await;
    drop(held);
}

/// A replica of `route` (API tier first, then local) with a budget of `monthly` picodollars,
/// sharing `store`.
fn budget_replica(
    local: &FakeUpstream,
    api: &FakeUpstream,
    route: &str,
    monthly: i64,
    store: &str,
) -> TestConfig {
    let store = store.to_string();
    budgeted(
        local,
        api,
        route,
        &["api_fast", "local"],
        monthly,
        OnExhausted::LocalOnly,
    )
    .with(|c| {
        c.0.limits.store = Some(text(store));
        c.0.limits.store_timeout_ms = Some(spanned(100));
    })
}

/// Two replicas, each with its own ledger, share one budget of ten reservations through Redis: 64
/// requests at once, half to each, send 10 or 11 to the API between them — not 10 each — and the
/// spend stays within the budget (the overshoot, at most one reservation's error, is reported).
/// Redis killed: both keep serving, judging from memory, which mirrors the shared spend (the
/// budget stays spent on both). Redis back, empty: the replicas give it their account before
/// judging in it, so the budget is still spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_hold_one_budget_and_keep_serving_when_it_dies() {
    const ROUTE: &str = "budget_shared";
    let redis = Redis::start();
    let (local, api) = fakes().await;
    api.update(|b| b.fault = Fault::SlowFirstByte { ms: 500 });
    let held = reservation(&ask(ROUTE));
    let monthly = 10 * held;
    let a = TestGateway::start(&budget_replica(&local, &api, ROUTE, monthly, &redis.url())).await;
    let b = TestGateway::start(&budget_replica(&local, &api, ROUTE, monthly, &redis.url())).await;
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    let answers = futures_util::future::join_all((0..64).map(|i| {
        let gateway = if i % 2 == 0 { &a } else { &b };
        async move { send(gateway, &ask(ROUTE)).await }
    }))
    .await;
    assert!(answers.iter().all(|answer| answer.status == 200));
    let on_api = answers
        .iter()
        .filter(|answer| answer.header("x-tierwise-tier") == Some("api_fast"))
        .count();
    let moved = answers
        .iter()
        .filter(|answer| answer.header("x-tierwise-fallback") == Some("api_fast:budget_spent"))
        .count();
    assert_eq!(on_api + moved, 64);
    assert_eq!(api.request_count(), on_api);
    // The shared count once every request has settled.
    let until = Instant::now() + Duration::from_secs(10);
    let shared = loop {
        let fields = redis.budget(ROUTE).await;
        if fields
            .iter()
            .all(|(field, held)| !field.starts_with("held:") || *held == 0)
            && fields.get("calls") == Some(&(on_api as i64 * ACTUAL))
        {
            break fields;
        }
        assert!(Instant::now() < until, "not settled in Redis: {fields:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let spent = shared["calls"];
    let over = (spent - monthly).max(0);
    let error = ACTUAL - held;
    println!(
        "two replicas, one Redis, 64 concurrent requests, budget ${} (10 reservations of ${}): \
         {on_api} answered by the API, {moved} moved to local; spent ${} of ${}, over by ${}; one \
         reservation's error ${} (a call costs ${})",
        usd(monthly),
        usd(held),
        usd(spent),
        usd(monthly),
        usd(over),
        usd(error),
        usd(ACTUAL),
    );
    assert!(
        (10..=11).contains(&on_api),
        "{on_api} on the API: one budget, not one each"
    );
    assert!(over <= error.max(0), "over by ${}", usd(over));

    // What is left of the budget, spent through one replica until it holds no more.
    api.update(|b| b.fault = Fault::None);
    let mut on_api = on_api;
    while send(&a, &ask(ROUTE)).await.header("x-tierwise-tier") == Some("api_fast") {
        on_api += 1;
        assert!(
            on_api <= 11,
            "{on_api} calls on a budget that holds 10 reservations"
        );
    }
    let spent = on_api as i64 * ACTUAL;
    // Each replica's memory takes up the shared count within a heartbeat: both know what both
    // spent.
    for gateway in [&a, &b] {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let live = budget_of(gateway, ROUTE).await;
            if live["spent_usd"].as_f64() == Some(usd(spent)) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the shared spend not mirrored: {live}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Redis dies: no request fails, and each replica still knows the budget is spent.
    let port = redis.port;
    drop(redis);
    for gateway in [&a, &b] {
        let started = Instant::now();
        send(gateway, &ask(ROUTE))
            .await
            .assert_served_by("local", "api_fast:budget_spent");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        wait_for_store(gateway, "down").await;
        send(gateway, &ask(ROUTE))
            .await
            .assert_served_by("local", "api_fast:budget_spent");
    }
    // Back, empty: given the replicas' account before budgets are judged in it.
    let redis = Redis::start_on(port);
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    assert!(
        redis.budget(ROUTE).await["calls"] >= on_api as i64 * ACTUAL,
        "{:?}",
        redis.budget(ROUTE).await
    );
    for gateway in [&a, &b] {
        send(gateway, &ask(ROUTE))
            .await
            .assert_served_by("local", "api_fast:budget_spent");
    }
    assert_eq!(api.request_count(), on_api, "the API was not called again");
    a.shutdown().await;
    b.shutdown().await;
}

/// What a replica that died held is dropped once its lease lapses: a hold under a lapsed lease
/// is not counted (and is deleted), one under a live lease is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_holding_reservations_does_not_hold_them_forever() {
    const ROUTE: &str = "budget_leases";
    let redis = Redis::start();
    let (local, api) = fakes().await;
    let monthly = 10 * reservation(&ask(ROUTE));
    let gateway =
        TestGateway::start(&budget_replica(&local, &api, ROUTE, monthly, &redis.url())).await;
    wait_for_store(&gateway, "shared").await;
    let key = format!(
        "tierwise:budget:route:{ROUTE}:{}",
        Month::of(tierwise::quality::watch::now_ms())
    );
    let mut connection = redis.connection().await;
    let (seconds, micros): (i64, i64) = redis::cmd("TIME")
        .query_async::<(String, String)>(&mut connection)
        .await
        .map(|(s, us)| (s.parse().unwrap(), us.parse().unwrap()))
        .unwrap();
    let now = seconds * 1000 + micros / 1000;
    // A live replica holds the whole budget for a request in flight: nothing else fits.
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg("tierwise:budget:leases")
        .arg(now + 1_500)
        .arg("other:0")
        .cmd("HSET")
        .arg(&key)
        .arg("held:other:0")
        .arg(monthly)
        .query_async(&mut connection)
        .await
        .unwrap();
    send(&gateway, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    // It dies: its lease lapses without a word, and what it held goes with it.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(&gateway, &ask(ROUTE)).await;
        if answer.header("x-tierwise-tier") == Some("api_fast") {
            break;
        }
        answer.assert_served_by("local", "api_fast:budget_spent");
        assert!(
            Instant::now() < until,
            "the dead replica's hold was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !redis.budget(ROUTE).await.contains_key("held:other:0"),
        "{:?}",
        redis.budget(ROUTE).await
    );
    gateway.shutdown().await;
}

/// A reset through one replica's admin API is judged by the other at once, not at its next
/// resync; and a new month starts from nothing in Redis too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_on_one_replica_is_judged_by_the_other_at_once() {
    const ROUTE: &str = "budget_corrected";
    let redis = Redis::start();
    let (local, api) = fakes().await;
    // One reservation fits; after its call, not another.
    let monthly = reservation(&ask(ROUTE)) + ACTUAL - 1;
    let a = TestGateway::start(&budget_replica(&local, &api, ROUTE, monthly, &redis.url())).await;
    let b = TestGateway::start(&budget_replica(&local, &api, ROUTE, monthly, &redis.url())).await;
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    let first = send(&a, &ask(ROUTE)).await;
    assert_eq!(first.header("x-tierwise-tier"), Some("api_fast"));
    // A reset takes off what the ledger holds: the call is in it.
    stored(
        &a.store().await,
        first.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    // Settled in Redis: the next reservation no longer fits, on either replica.
    let until = Instant::now() + Duration::from_secs(10);
    while redis.budget(ROUTE).await.get("calls") != Some(&ACTUAL) {
        assert!(Instant::now() < until, "{:?}", redis.budget(ROUTE).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send(&b, &ask(ROUTE))
        .await
        .assert_served_by("local", "api_fast:budget_spent");
    let reset = admin_post(
        &a,
        "/admin/api/budgets/adjust",
        &json!({"scope": "route", "name": ROUTE, "reset": true, "reason": "mispriced"}),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    let answer = send(&b, &ask(ROUTE)).await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("api_fast"),
        "the other replica judges the reset at once: {:?}",
        answer.header("x-tierwise-fallback")
    );
    assert_eq!(api.request_count(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// Token reservations are settled in Redis with the real usage: a request that reserved its
/// `max_tokens` of 5,000 leaves the minute at the 120 tokens it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_settlements_reach_redis() {
    let redis = Redis::start();
    let api = FakeUpstream::start().await;
    api.update(|b| {
        b.prompt_tokens = 20;
        b.completion_tokens = 100;
    });
    let store = redis.url();
    let config = TestConfig::two_tier(&api.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            key(c, "tokens_job", None, Some(1_000_000));
            c.0.limits.store = Some(text(store));
            c.0.limits.store_timeout_ms = Some(spanned(100));
        });
    let gw = TestGateway::start(&config).await;
    wait_for_store(&gw, "shared").await;
    let mut ask = chat("classification", "x");
    ask["max_tokens"] = json!(5000);
    let answer = post_as(&gw, "tokens_job", &ask).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let mut connection = redis.connection().await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("tierwise:limits:key:tokens_job:tokens:*")
            .query_async(&mut connection)
            .await
            .unwrap();
        let mut counted = 0;
        for key in &keys {
            let count: i64 = redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .unwrap();
            counted += count;
        }
        if counted == 120 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the minute holds {counted} tokens in Redis, not the 120 used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}
