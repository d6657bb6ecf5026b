//! The response cache (issue 28): a route that opts in answers a request identical to one it
//! answered before without calling a tier — never across client keys unless the route says so,
//! never for a changed prompt, tool or parameter, not past its ttl, not when the client says
//! `no-cache`/`no-store`, and never with an answer that was cut, refused or an error.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::CacheScope;
use tierwise::config::TaskKind;
use tierwise::config::file::{RawKey, RawRouteCache, spanned, text};
use tierwise::ledger::{Picodollars, Purpose};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::*;

/// The `faq` route: `api_fast` alone (no default temperature), baseline `api_frontier`, cached
/// for `ttl` in `scope`; two named keys `a` and `b` besides the bare client key.
fn faq(ttl: &str, scope: Option<CacheScope>) -> impl FnOnce(&mut TestConfig) {
    let ttl = ttl.to_string();
    move |c| {
        let route = c.add_route("faq", TaskKind::Chat, &["api_fast"]);
        route.baseline = Some(text("api_frontier"));
        route.cache = Some(RawRouteCache {
            ttl: text(ttl),
            scope,
            nondeterministic: None,
        });
        c.0.keys.insert(text("a"), RawKey::new(KEY_A));
        c.0.keys.insert(text("b"), RawKey::new(KEY_B));
    }
}

const KEY_A: &str = "tw-key-a-1111";
const KEY_B: &str = "tw-key-b-2222";

async fn gateway(change: impl FnOnce(&mut TestConfig)) -> (FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(change);
    let gw = TestGateway::start(&config).await;
    (api, gw)
}

/// POSTs `body` to chat completions with `key` and these extra headers; the answer read whole
/// within 10 s.
async fn ask_as(gw: &TestGateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = async { Answer::of(request.send().await.expect("the gateway answers")).await };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer ends instead of hanging")
}

async fn ask(gw: &TestGateway, body: &Value) -> Answer {
    ask_as(gw, CLIENT_KEY, body, &[]).await
}

fn cache_header(answer: &Answer) -> Option<&str> {
    answer.header("x-tierwise-cache")
}

fn question(content: &str) -> Value {
    chat("faq", content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_never_reads_the_answer_another_key_filled() {
    let (api, gw) = gateway(faq("1h", None)).await;
    let body = question("what are your opening hours?");
    let first = ask_as(&gw, KEY_A, &body, &[]).await;
    assert_eq!(cache_header(&first), Some("miss"), "{}", first.text);
    let again = ask_as(&gw, KEY_A, &body, &[]).await;
    assert_eq!(cache_header(&again), Some("hit"));
    let other = ask_as(&gw, KEY_B, &body, &[]).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(
        cache_header(&other),
        Some("miss"),
        "key b read the answer key a filled"
    );
    assert_eq!(api.request_count(), 2);
    gw.shutdown().await;

    // A route that shares its answers among keys says so.
    let (api, gw) = gateway(faq("1h", Some(CacheScope::Route))).await;
    ask_as(&gw, KEY_A, &body, &[]).await;
    let other = ask_as(&gw, KEY_B, &body, &[]).await;
    assert_eq!(cache_header(&other), Some("hit"));
    assert_eq!(api.request_count(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_twice_calls_the_upstream_once_and_the_hit_is_recorded_with_what_it_saved()
{
    let (api, gw) = gateway(faq("1h", None)).await;
    api.update(|b| b.reply = "We open at nine.".into());
    let body = question("when do you open?");
    let first = ask(&gw, &body).await;
    let second = ask(&gw, &body).await;
    assert_eq!(api.request_count(), 1);
    assert_eq!(
        (cache_header(&first), cache_header(&second)),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(
        first.text, second.text,
        "the hit answers as the first call did"
    );
    assert_eq!(second.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(second.header("x-tierwise-cost-usd"), Some("0"));

    let store = gw.store().await;
    let filled = stored(&store, first.header("x-tierwise-request-id").unwrap()).await;
    let hit = stored(&store, second.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(filled.purpose, Purpose::Product);
    let paid = filled.cost_pusd.expect("gpt-4o-mini is priced");
    assert!(paid > Picodollars(0));
    assert_eq!(hit.purpose, Purpose::CacheHit);
    assert_eq!(hit.cost_pusd, Some(Picodollars(0)));
    assert_eq!(
        hit.avoided_pusd,
        Some(paid),
        "a hit saves what the fill paid"
    );
    assert_eq!(
        (hit.tier.as_deref(), hit.tokens_in, hit.tokens_out),
        (Some("api_fast"), filled.tokens_in, filled.tokens_out)
    );

    // Streamed: replayed chunk for chunk, with the usage chunk for a client that asks for it and
    // without it for one that does not.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let first = ask(&gw, &stream).await;
    let second = ask(&gw, &stream).await;
    assert_eq!(api.request_count(), 2);
    assert_eq!(
        (cache_header(&first), cache_header(&second)),
        (Some("miss"), Some("hit"))
    );
    assert!(second.text.ends_with("data: [DONE]\n\n"), "{}", second.text);
    assert!(second.text.contains("\"usage\""), "{}", second.text);
    assert_eq!(
        first.text.replace(&cost_of(&first.text), "0"),
        second.text,
        "the replay is the stream as first relayed, at this request's cost"
    );
    let mut without_usage = stream.clone();
    without_usage["stream_options"] = json!({"include_usage": false});
    let third = ask(&gw, &without_usage).await;
    assert_eq!(cache_header(&third), Some("hit"));
    assert!(!third.text.contains("\"usage\""), "{}", third.text);
    assert!(third.text.contains("nine"), "{}", third.text);
    assert_eq!(api.request_count(), 2);
    let hit = stored(&store, third.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!((hit.purpose, hit.stream), (Purpose::CacheHit, true));
    let streamed = stored(&store, first.header("x-tierwise-request-id").unwrap()).await;
    let saved = Picodollars(paid.0 + 2 * streamed.cost_pusd.unwrap().0);

    // The report shows what the hits saved apart from routing's saving, which counts the two
    // calls that filled the cache only.
    let report = Answer::of(gw.get("/admin/api/report").await).await.body;
    let faq = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "faq")
        .unwrap_or_else(|| panic!("no faq in {report}"));
    assert_eq!(faq["calls"], 2, "{faq}");
    assert_eq!(faq["cache_hits"], 3, "{faq}");
    assert_eq!(faq["saved_by_cache_usd"], saved.to_string(), "{faq}");
    assert_eq!(report["totals"]["cache_hits"], 3);
    assert_eq!(report["totals"]["saved_by_cache_usd"], saved.to_string());
    gw.shutdown().await;
}

/// The `cost_usd` a relayed stream's usage chunk carries, as written.
fn cost_of(text: &str) -> String {
    let at = text
        .find("\"cost_usd\":")
        .expect("a usage chunk with its cost")
        + 11;
    text[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_system_prompt_tool_or_parameter_misses() {
    let (api, gw) = gateway(faq("1h", None)).await;
    let base = json!({
        "model": "faq",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hours?"}
        ],
        "tools": [{"type": "function", "function": {"name": "hours", "parameters": {}}}],
    });
    assert_eq!(cache_header(&ask(&gw, &base).await), Some("miss"));
    assert_eq!(cache_header(&ask(&gw, &base).await), Some("hit"));
    let mut system = base.clone();
    system["messages"][0]["content"] = json!("You are chatty.");
    let mut tool = base.clone();
    tool["tools"][0]["function"]["name"] = json!("opening_hours");
    let mut seed = base.clone();
    seed["seed"] = json!(7);
    for changed in [&system, &tool, &seed] {
        let answer = ask(&gw, changed).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(cache_header(&answer), Some("miss"), "{changed}");
    }
    assert_eq!(api.request_count(), 4);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_not_given_again_past_its_ttl() {
    let (api, gw) = gateway(faq("300ms", None)).await;
    let body = question("ttl?");
    let filled_at = Instant::now();
    assert_eq!(cache_header(&ask(&gw, &body).await), Some("miss"));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask(&gw, &body).await;
        if cache_header(&answer) == Some("miss") {
            break;
        }
        assert_eq!(cache_header(&answer), Some("hit"));
        assert!(Instant::now() < until, "the answer never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(filled_at.elapsed() >= Duration::from_millis(300));
    assert_eq!(api.request_count(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_no_cache_skips_the_read_and_no_store_the_fill_too() {
    let (api, gw) = gateway(faq("1h", None)).await;
    let body = question("fresh?");
    let no_store = [("cache-control", "no-store")];
    // Read, and nothing there: a miss, whose answer is not kept.
    let answer = ask_as(&gw, CLIENT_KEY, &body, &no_store).await;
    assert_eq!(cache_header(&answer), Some("miss"));
    // Nothing was kept.
    assert_eq!(cache_header(&ask(&gw, &body).await), Some("miss"));
    // Not read: a bypass, whose fresh answer is kept.
    let no_cache = [("cache-control", "no-cache")];
    let answer = ask_as(&gw, CLIENT_KEY, &body, &no_cache).await;
    assert_eq!(cache_header(&answer), Some("bypass"));
    assert_eq!(api.request_count(), 3);
    // The fresh answer was kept.
    assert_eq!(cache_header(&ask(&gw, &body).await), Some("hit"));
    assert_eq!(api.request_count(), 3);
    // `no-store` keeps nothing of its own exchange, but a kept answer may answer it (RFC 9111,
    // 5.2.1.5); with `no-cache` too it goes upstream.
    let answer = ask_as(&gw, CLIENT_KEY, &body, &no_store).await;
    assert_eq!(cache_header(&answer), Some("hit"));
    let both = [("cache-control", "no-cache, no-store")];
    let answer = ask_as(&gw, CLIENT_KEY, &body, &both).await;
    assert_eq!(cache_header(&answer), Some("bypass"));
    assert_eq!(api.request_count(), 4);
    // A route without a cache is never read either: a bypass, said as the others say it.
    let answer = ask(&gw, &chat("summarize", "no cache here")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(cache_header(&answer), Some("bypass"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_an_error_or_a_sampling_request_is_not_cached() {
    let (api, gw) = gateway(faq("1h", None)).await;
    let mut stream = question("cut?");
    stream["stream"] = json!(true);
    api.set_fault(Fault::CutAfterChunks { chunks: 2 });
    let cut = ask(&gw, &stream).await;
    assert!(cut.text.contains("stream_interrupted"), "{}", cut.text);
    api.set_fault(Fault::None);
    assert_eq!(cache_header(&ask(&gw, &stream).await), Some("miss"));
    assert_eq!(api.request_count(), 2);

    let body = question("error?");
    api.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    assert_eq!(ask(&gw, &body).await.status, 502);
    api.set_fault(Fault::None);
    assert_eq!(cache_header(&ask(&gw, &body).await), Some("miss"));

    // A request that samples gets a fresh answer each time, unless the route says otherwise.
    let mut sampled = question("a poem?");
    sampled["temperature"] = json!(0.8);
    let calls = api.request_count();
    for _ in 0..2 {
        assert_eq!(cache_header(&ask(&gw, &sampled).await), Some("bypass"));
    }
    assert_eq!(api.request_count(), calls + 2);
    gw.shutdown().await;
}

/// Two replicas share their answers through Redis (`[cache] store`); a Redis that dies makes every
/// lookup a miss, never a failed request, and says so once (`tierwise_cache_store_up` 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_answers_through_redis_and_a_dead_redis_is_a_miss() {
    let redis = crate::shared_limits::Redis::start();
    let api = FakeUpstream::start().await;
    let replica = |url: String| {
        TestConfig::two_tier(&api.base_url(), &api.base_url())
            .without_probes()
            .with(faq("1h", None))
            .with(move |c| c.0.cache.store = Some(text(url)))
    };
    let one = TestGateway::start(&replica(redis.url())).await;
    let two = TestGateway::start(&replica(redis.url())).await;
    let body = question("shared?");
    assert_eq!(cache_header(&ask(&one, &body).await), Some("miss"));
    // The fill is sent off the request path: the other replica sees it shortly.
    let until = Instant::now() + Duration::from_secs(10);
    let hit = loop {
        let answer = ask(&two, &body).await;
        if cache_header(&answer) == Some("hit") {
            break answer;
        }
        assert!(
            Instant::now() < until,
            "replica two never read replica one's answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hit.header("x-tierwise-tier"), Some("api_fast"));
    let row = stored(
        &two.store().await,
        hit.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert_eq!(row.purpose, Purpose::CacheHit);
    assert!(row.avoided_pusd.is_some_and(|saved| saved > Picodollars(0)));

    drop(redis);
    for _ in 0..3 {
        let answer = ask(&one, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(cache_header(&answer), Some("miss"));
    }
    one.wait_for_metrics(|text| text.contains("tierwise_cache_store_up 0"))
        .await;
    one.shutdown().await;
    two.shutdown().await;
}

/// Asks `body` until an answer is a hit (a fill lands after the answer, off the request path),
/// within 10 s.
async fn until_hit(gw: &TestGateway, body: &Value) -> Answer {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask(gw, body).await;
        if cache_header(&answer) == Some("hit") {
            return answer;
        }
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(Instant::now() < until, "the answer was never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream whose upstream reports no usage (a local server's, often) fills once the gateway has
/// counted its tokens: the hit records them, flagged estimated as the ledger flags them, and what
/// they would have cost. Before, such streams were never kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_usage_is_kept_with_the_gateways_count_flagged_estimated() {
    let (api, gw) = gateway(faq("1h", None)).await;
    api.set_fault(Fault::NoUsage);
    api.update(|b| b.reply = "We open at nine every day.".into());
    let mut stream = question("when do you open, streamed?");
    stream["stream"] = json!(true);
    let first = ask(&gw, &stream).await;
    assert_eq!(cache_header(&first), Some("miss"), "{}", first.text);
    // It fills from the background, once counted, before its row goes to the ledger. (Not from
    // /metrics: the recorder is the test process's, shared with other tests' gateways.)
    stored(
        &gw.store().await,
        first.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    let hit = ask(&gw, &stream).await;
    assert_eq!(cache_header(&hit), Some("hit"), "{}", hit.text);
    assert_eq!(api.request_count(), 1);
    assert!(hit.text.contains("nine"), "{}", hit.text);
    let store = gw.store().await;
    let filled = stored(&store, first.header("x-tierwise-request-id").unwrap()).await;
    let row = stored(&store, hit.header("x-tierwise-request-id").unwrap()).await;
    assert!(filled.tokens_estimated);
    assert_eq!(row.purpose, Purpose::CacheHit);
    assert!(
        row.tokens_estimated,
        "the hit's tokens are the gateway's count"
    );
    assert_eq!(
        (row.tokens_in, row.tokens_out),
        (filled.tokens_in, filled.tokens_out)
    );
    assert!(row.tokens_out > 0);
    assert_eq!(row.avoided_pusd, filled.cost_pusd);
    assert!(row.avoided_pusd.is_some_and(|saved| saved > Picodollars(0)));
    gw.shutdown().await;
}

/// An answer larger than an eighth of `cache.max_bytes` is not kept (one answer must not empty the
/// cache), plain or streamed; a small one is, in the same cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_an_eighth_of_max_bytes_is_not_kept() {
    let (api, gw) = gateway(|c| {
        faq("1h", None)(c);
        c.0.cache.max_bytes = Some(spanned(16 * 1024));
    })
    .await;
    api.update(|b| b.reply = "long ".repeat(600));
    let mut stream = question("long, streamed?");
    stream["stream"] = json!(true);
    for body in [question("long?"), stream] {
        for _ in 0..2 {
            let answer = ask(&gw, &body).await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            assert_eq!(cache_header(&answer), Some("miss"));
        }
    }
    assert_eq!(api.request_count(), 4);
    api.update(|b| b.reply = "short".into());
    let short = question("short?");
    ask(&gw, &short).await;
    until_hit(&gw, &short).await;
    gw.shutdown().await;
}

/// Identical plain requests in flight together call the upstream once: the later ones wait for
/// the first one's answer (single-flight). Streams each go upstream (a waiting stream would get
/// nothing until the other ended), and when the first one fails, the others go on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_in_flight_together_call_the_upstream_once() {
    let (api, gw) = gateway(faq("1h", None)).await;
    api.set_fault(Fault::SlowFirstByte { ms: 600 });
    let body = question("together?");
    let answers = futures_util::future::join_all((0..3).map(|_| ask(&gw, &body))).await;
    assert_eq!(
        api.request_count(),
        1,
        "identical requests each went upstream"
    );
    let mut headers: Vec<_> = answers.iter().map(|a| cache_header(a).unwrap()).collect();
    headers.sort();
    assert_eq!(headers, ["hit", "hit", "miss"]);
    assert!(answers.iter().all(|a| a.text == answers[0].text));
    // The requests that waited are recorded with the time they waited, not the microseconds
    // their answer took once it came.
    let store = gw.store().await;
    for answer in &answers {
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert!(
            row.latency_us >= 500_000,
            "{:?} recorded {} us",
            row.purpose,
            row.latency_us
        );
    }

    // The first one fails (an upstream that answers 500 after a while): each other goes upstream.
    api.update(|b| {
        b.fault = Fault::Status {
            status: 500,
            body: None,
            retry_after: None,
        };
        b.fault_for = Some(1);
    });
    let slow = question("failing together?");
    let seen = api.request_count();
    let first = tokio::spawn({
        let (url, http, slow) = (gw.url.clone(), gw.http.clone(), slow.clone());
        async move {
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&slow)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // The failing call must be the first one upstream: the fault is for one request only.
    let until = Instant::now() + Duration::from_secs(10);
    while api.request_count() == seen {
        assert!(
            Instant::now() < until,
            "the first request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = ask(&gw, &slow).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    first.await.unwrap();
    gw.shutdown().await;
}

/// The key is the request as each tier of the route would receive it, so an answer kept under one
/// configuration is not given under another that sends a tier different bytes (here its system
/// prompt) — across replicas, or across a restart, sharing one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_kept_under_one_tier_prompt_is_not_given_under_another() {
    let redis = crate::shared_limits::Redis::start();
    let api = FakeUpstream::start().await;
    let prompt_file =
        std::env::temp_dir().join(format!("tierwise-cache-{}.txt", std::process::id()));
    std::fs::write(&prompt_file, "Answer in French.").unwrap();
    let replica = |url: String, prompt: Option<&std::path::Path>| {
        let prompt = prompt.map(|path| path.display().to_string());
        TestConfig::two_tier(&api.base_url(), &api.base_url())
            .without_probes()
            .with(faq("1h", None))
            .with(move |c| {
                c.0.cache.store = Some(text(url));
                if let Some(prompt) = prompt {
                    let route = c.route("faq");
                    route.prompts.insert(text("api_fast"), text(prompt));
                }
            })
    };
    let body = question("configured?");
    let before = TestGateway::start(&replica(redis.url(), None)).await;
    assert_eq!(cache_header(&ask(&before, &body).await), Some("miss"));
    until_hit(&before, &body).await;
    let calls = api.request_count();
    let after = TestGateway::start(&replica(redis.url(), Some(&prompt_file))).await;
    let answer = ask(&after, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(cache_header(&answer), Some("miss"));
    assert_eq!(api.request_count(), calls + 1);
    before.shutdown().await;
    after.shutdown().await;
    std::fs::remove_file(&prompt_file).ok();
}

/// A Redis that takes the connection and never answers (hung, or a black hole on the network):
/// each request waits at most `cache.store_timeout_ms` for it, then goes on as a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_delays_a_request_by_its_store_timeout_at_most() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", hung.local_addr().unwrap());
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&api.base_url(), &api.base_url())
        .without_probes()
        .with(faq("1h", None))
        .with(move |c| {
            c.0.cache.store = Some(text(url));
            c.0.cache.store_timeout_ms = Some(spanned(100));
        });
    let gw = TestGateway::start(&config).await;
    for n in 0..3 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            ask(&gw, &question(&format!("hung {n}?"))),
        )
        .await
        .expect("a hung cache store held the request up");
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(cache_header(&answer), Some("miss"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    gw.wait_for_metrics(|text| text.contains("tierwise_cache_store_up 0"))
        .await;
    drop(hung);
    gw.shutdown().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// POSTs `body` and gives up after 150 ms, before any answer.
async fn give_up(gw: &TestGateway, body: &Value) {
    let gave_up = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(body)
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to give up");
}

/// Waits for the ledger's row of a request whose client left while it waited on an identical
/// request's answer, since `since`.
async fn left_waiting(gw: &TestGateway, since: i64) -> tierwise::ledger::RequestRow {
    let store = gw.store().await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = store.requests(since, i64::MAX, None).await.unwrap();
        if let Some(row) = rows.into_iter().find(|r| r.purpose == Purpose::CacheWait) {
            return row;
        }
        assert!(Instant::now() < until, "no row of the departed waiter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request waiting on an identical one's answer (the single flight) whose client leaves stops
/// waiting: it is recorded as 499 `client_closed` apart from product traffic (purpose
/// `cache_wait`: no call or error of its route, no cost row with no tier), and nothing is sent
/// upstream for it, even when the request it waited on fails (review F2, F6). Seen failing with
/// the wait not raced against the client's departure (the waiter recorded as a hit, 200, when
/// the leader answered), and, the leader failing, with that and the check after the wait both
/// removed (the waiter recorded as a product request, a call of its route; the chain's own check
/// before each call, `fallback::a_stream_whose_client_left_before_its_first_byte_does_not_fall_back`,
/// kept it from going upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_client_left_is_recorded_apart_and_sends_nothing_upstream() {
    let (api, gw) = gateway(|c| {
        faq("1h", None)(c);
        c.provider("openai").timeout.total_ms = Some(1500);
    })
    .await;
    let store = gw.store().await;
    for leader_fails in [false, true] {
        let since = now_ms();
        api.set_fault(if leader_fails {
            Fault::Hang
        } else {
            Fault::SlowFirstByte { ms: 1000 }
        });
        let body = question(&format!("leaving, leader fails: {leader_fails}?"));
        let seen = api.request_count();
        let leader = tokio::spawn({
            let (url, http, body) = (gw.url.clone(), gw.http.clone(), body.clone());
            async move {
                http.post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(CLIENT_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        tierwise_fake::wait_until("the leader upstream", Duration::from_secs(10), || {
            api.request_count() == seen + 1
        })
        .await;
        give_up(&gw, &body).await;
        let row = left_waiting(&gw, since).await;
        assert_eq!(
            (
                row.status,
                row.error_kind.as_deref(),
                row.tier.as_deref(),
                row.cost_pusd
            ),
            (499, Some("client_closed"), None, Some(Picodollars(0))),
            "{row:?}"
        );
        let status = leader.await.unwrap();
        assert_eq!(status, if leader_fails { 504 } else { 200 });
        // The leader's row is written once it ends; the waiter sent nothing meanwhile or after.
        let until = Instant::now() + Duration::from_secs(10);
        while store.requests(since, i64::MAX, None).await.unwrap().len() < 2 {
            assert!(Instant::now() < until, "the leader's row never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(api.request_count(), seen + 1, "the waiter went upstream");
    }
    api.set_fault(Fault::None);
    // Not a call of the route, nor its error; no cost row without a tier.
    let report = Answer::of(gw.get("/admin/api/report").await).await.body;
    let faq = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "faq")
        .unwrap_or_else(|| panic!("no faq in {report}"))
        .clone();
    assert_eq!(
        (&faq["calls"], &faq["errors"]),
        (&json!(2), &json!(1)),
        "{faq}"
    );
    let costs = Answer::of(gw.get("/admin/api/costs").await).await.body;
    let calls = |no_tier: bool| -> u64 {
        costs["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["route"] == "faq" && (!no_tier || r["tier"].is_null()))
            .map(|r| r["calls"].as_u64().unwrap())
            .sum()
    };
    // The failed leader is the one call without a tier.
    assert_eq!((calls(false), calls(true)), (2, 1), "{costs}");
    gw.shutdown().await;
}
