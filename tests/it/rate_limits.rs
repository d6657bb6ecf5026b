//! Named client keys and rate limits (issue 24): which routes a key may call, requests and tokens
//! per minute per key and per route, OpenAI's 429 and `x-ratelimit-*` headers with true remaining
//! counts, and what one client can do to another. Each test names its own keys and routes: the
//! metrics are process-wide.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::TaskKind;
use tierwise::config::file::{RawKey, spanned, text};
use tierwise_fake::FakeUpstream;

use crate::util::*;

/// Fresh fakes and a gateway without probes; `change` adjusts its configuration.
pub async fn gateway(
    change: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(change);
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

/// `[keys.NAME]` with the key `tw-NAME-key` and the given limits.
pub fn key<'a>(
    c: &'a mut TestConfig,
    name: &str,
    rpm: Option<u64>,
    tpm: Option<u64>,
) -> &'a mut RawKey {
    let mut raw = RawKey::new(format!("tw-{name}-key"));
    raw.rpm = rpm.map(spanned);
    raw.tpm = tpm.map(spanned);
    c.0.keys.insert(text(name), raw);
    c.0.keys.get_mut(name).unwrap()
}

/// POSTs a chat request as the key named `name` (see [`key`]).
pub async fn post_as(gw: &TestGateway, name: &str, body: &Value) -> Answer {
    Answer::of(
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(format!("tw-{name}-key"))
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn header_u64(answer: &Answer, name: &str) -> u64 {
    answer
        .header(name)
        .unwrap_or_else(|| panic!("no {name}: {:?}", answer.headers))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rpm_gets_openais_429_with_retry_after_and_true_remaining_counts() {
    let (_local, _api, gw) = gateway(|c| {
        key(c, "rpm_batch", Some(3), None);
    })
    .await;
    let ask = chat("classification", "ticket [[billing]]");
    for remaining in [2, 1, 0] {
        let answer = post_as(&gw, "rpm_batch", &ask).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(header_u64(&answer, "x-ratelimit-limit-requests"), 3);
        assert_eq!(
            header_u64(&answer, "x-ratelimit-remaining-requests"),
            remaining
        );
        let reset = answer.header("x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
        assert!(answer.header("x-ratelimit-limit-tokens").is_none());
    }
    let refused = post_as(&gw, "rpm_batch", &ask).await;
    let message = refused.error(429, Some("rate_limit_exceeded")).to_string();
    assert_eq!(refused.body["error"]["type"], "requests");
    assert!(
        message.contains("key 'rpm_batch'") && message.contains("Limit 3"),
        "{message}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining-requests"), 0);
    // The refusal is in the ledger, by the key's name, and in the metrics.
    let id = refused.header("x-tierwise-request-id").unwrap().to_string();
    let row = stored(&gw.store().await, &id).await;
    assert_eq!(row.status, 429);
    assert_eq!(row.error_kind.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(row.key_name.as_deref(), Some("rpm_batch"));
    assert!(row.tier.is_none(), "no tier was called");
    gw.wait_for_metrics(|m| {
        m.contains(
            r#"tierwise_rate_limited_total{scope="key",name="rpm_batch",measure="requests"} 1"#,
        )
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_traffic_never_consumes_another_keys_limit_nor_the_routes() {
    let (_local, _api, gw) = gateway(|c| {
        key(c, "noisy", Some(2), None);
        key(c, "quiet", Some(2), None);
        key(c, "roomy", Some(3), None);
        c.add_route("shared_rpm", TaskKind::Chat, &["local"]).rpm = Some(spanned(4));
    })
    .await;
    let ask = chat("shared_rpm", "hi");
    let mut noisy = Vec::new();
    for _ in 0..20 {
        noisy.push(post_as(&gw, "noisy", &ask).await.status);
    }
    assert_eq!(noisy.iter().filter(|s| **s == 200).count(), 2, "{noisy:?}");
    assert!(noisy.iter().all(|s| *s == 200 || *s == 429), "{noisy:?}");
    // Its 18 refusals took nothing from the route's 4: the other key still gets its own 2.
    for _ in 0..2 {
        let answer = post_as(&gw, "quiet", &ask).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let refused = post_as(&gw, "quiet", &ask).await;
    refused.error(429, Some("rate_limit_exceeded"));
    // The route is now full (2 + 2): a third key, with no limit of its own, meets the route's.
    let other = gw.post("/v1/chat/completions", &ask).await;
    let other = Answer::of(other).await;
    let message = other.error(429, Some("rate_limit_exceeded"));
    assert!(message.contains("route 'shared_rpm'"), "{message}");
    // A key with room of its own, refused by the full route, keeps that room for other routes.
    for _ in 0..3 {
        let refused = post_as(&gw, "roomy", &ask).await;
        let message = refused.error(429, Some("rate_limit_exceeded"));
        assert!(message.contains("route 'shared_rpm'"), "{message}");
    }
    for remaining in [2, 1, 0] {
        let answer = post_as(&gw, "roomy", &chat("classification", "x")).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(
            header_u64(&answer, "x-ratelimit-remaining-requests"),
            remaining
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_limit_reserves_the_estimate_and_counts_the_real_usage() {
    // The fake reports 20 prompt and 5 completion tokens: 25 a request.
    let (_local, _api, gw) = gateway(|c| {
        key(c, "tpm_job", None, Some(300));
    })
    .await;
    let mut ask = chat("classification", "x");
    ask["max_tokens"] = json!(100);
    let first = post_as(&gw, "tpm_job", &ask).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // Reserved: the prompt at ~4 bytes a token plus max_tokens, about 110 of 300.
    let reserved = 300 - header_u64(&first, "x-ratelimit-remaining-tokens");
    assert!((100..=120).contains(&reserved), "{reserved}");
    assert_eq!(header_u64(&first, "x-ratelimit-limit-tokens"), 300);
    // Settled with 25 when it ended: the next one sees 25 plus its own reservation.
    let second = post_as(&gw, "tpm_job", &ask).await;
    let used = 300 - header_u64(&second, "x-ratelimit-remaining-tokens");
    assert_eq!(
        used,
        25 + reserved,
        "the first request counts its real usage"
    );
    // A stream settles at its end too.
    let mut stream = chat_stream("classification");
    stream["max_tokens"] = json!(100);
    let streamed = post_as(&gw, "tpm_job", &stream).await;
    assert_eq!(streamed.status, 200);
    let after = post_as(&gw, "tpm_job", &ask).await;
    let used_after = 300 - header_u64(&after, "x-ratelimit-remaining-tokens");
    assert_eq!(
        used_after,
        25 * 3 + reserved,
        "the stream counts its real usage"
    );
    // 100 used. Each request holds ~110 and settles at 25: 4 more fit (200 + 110 ≤ 300), the
    // next does not.
    for _ in 0..4 {
        let answer = post_as(&gw, "tpm_job", &ask).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let refused = post_as(&gw, "tpm_job", &ask).await;
    refused.error(429, Some("rate_limit_exceeded"));
    assert_eq!(refused.body["error"]["type"], "tokens");
    gw.shutdown().await;
}

/// An answer with no limit from the client or the tier is not a free one: tpm holds the default
/// answer budget budgets assume ([`tierwise::limits::budget::DEFAULT_ANSWER_TOKENS`]), and a
/// `"max_tokens": null` is no limit: the tier's applies upstream, and is what tpm held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_holds_an_unbounded_answers_worst_case_and_a_null_limit_gets_the_tiers() {
    let (local, _api, gw) = gateway(|c| {
        key(c, "tpm_unbounded", None, Some(100_000));
    })
    .await;
    // api_frontier sets no max_tokens, nor does the client.
    let unbounded = post_as(&gw, "tpm_unbounded", &chat("api_frontier", "x")).await;
    assert_eq!(unbounded.status, 200, "{}", unbounded.text);
    let held = 100_000 - header_u64(&unbounded, "x-ratelimit-remaining-tokens");
    let default = tierwise::limits::budget::DEFAULT_ANSWER_TOKENS;
    assert!(
        (default..default + 20).contains(&held),
        "{held} held for an answer of unbounded length"
    );
    // The route's first tier, local, answers at most 256: a null limit gets that, upstream too.
    let mut ask = chat("classification", "x");
    ask["max_tokens"] = Value::Null;
    let before = local.request_count();
    let nulled = post_as(&gw, "tpm_unbounded", &ask).await;
    assert_eq!(nulled.status, 200, "{}", nulled.text);
    let sent = &local.requests()[before].body;
    assert_eq!(sent["max_tokens"], 256, "{sent}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_may_call_only_its_routes_and_is_told_which() {
    let (local, _api, gw) = gateway(|c| {
        key(c, "scoped", None, None).routes = Some(vec![text("classification")]);
    })
    .await;
    let allowed = post_as(&gw, "scoped", &chat("classification", "x")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    let calls = local.request_count();
    for model in ["summarize", "local", "mistral-7b"] {
        let refused = post_as(&gw, "scoped", &chat(model, "x")).await;
        let message = refused.error(403, Some("route_not_allowed"));
        assert!(
            message.contains("'scoped'") && message.contains("classification"),
            "{message}"
        );
        assert!(
            !message.contains("tw-scoped-key"),
            "the key itself never shows"
        );
    }
    assert_eq!(
        local.request_count(),
        calls,
        "no refused request reached a tier"
    );
    // The bare server.api_keys key may call anything.
    let bare = Answer::of(
        gw.post("/v1/chat/completions", &chat("summarize", "x"))
            .await,
    )
    .await;
    assert_eq!(bare.status, 200);
    gw.shutdown().await;
}

/// `/v1/models` lists to a key limited to some routes only those routes (it may call no tier nor
/// model id); to a key without `routes`, everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_key_is_listed_only_the_routes_it_may_call() {
    let (_local, _api, gw) = gateway(|c| {
        key(c, "listed", None, None).routes = Some(vec![text("classification")]);
    })
    .await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|model| model["id"].as_str().unwrap().to_string())
            .collect()
    };
    let scoped = Answer::of(
        gw.http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth("tw-listed-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ids(&scoped), ["classification"], "{}", scoped.text);
    let everything = ids(&Answer::of(gw.get("/v1/models").await).await);
    assert!(
        everything.len() > 1 && everything.iter().any(|id| id == "local"),
        "{everything:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_prompt_is_judged_by_its_length_alone_and_refused_at_once() {
    let (api, _, gw) = gateway(|c| {
        key(c, "huge_prompt", None, Some(1_000));
    })
    .await;
    // 1 MB of one letter: counting it token by token would take seconds.
    let ask = chat("local", &"a".repeat(1024 * 1024));
    let first = post_as(&gw, "huge_prompt", &ask).await;
    assert_eq!(
        first.status, 200,
        "admitted into an empty minute: {}",
        first.text
    );
    let calls = api.request_count();
    let started = Instant::now();
    let refused = post_as(&gw, "huge_prompt", &ask).await;
    let took = started.elapsed();
    refused.error(429, Some("rate_limit_exceeded"));
    assert_eq!(api.request_count(), calls);
    assert!(took < Duration::from_secs(2), "{took:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_by_key_names_each_key_and_never_its_value() {
    let (_local, _api, gw) = gateway(|c| {
        key(c, "report_a", Some(1), None);
        key(c, "report_b", None, None);
    })
    .await;
    let ask = chat("classification", "x");
    for _ in 0..2 {
        post_as(&gw, "report_a", &ask).await;
    }
    let last = post_as(&gw, "report_b", &ask).await;
    Answer::of(gw.post("/v1/chat/completions", &ask).await).await;
    let store = gw.store().await;
    stored(&store, last.header("x-tierwise-request-id").unwrap()).await;
    let window = tierwise::report::Window {
        from_ms: 0,
        to_ms: i64::MAX,
    };
    // Every row is written before the report reads: wait for the fourth.
    let until = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = tierwise::report::keys::KeyReport::load(&store, window, None)
            .await
            .unwrap();
        if report.keys.iter().map(|k| k.calls).sum::<u64>() == 4 || Instant::now() > until {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let table = report.to_table();
    let line = |name: &str| report.keys.iter().find(|k| k.key == name).unwrap();
    assert_eq!(
        (line("report_a").calls, line("report_a").rate_limited),
        (2, 1),
        "{table}"
    );
    assert_eq!(line("report_b").calls, 1, "{table}");
    assert_eq!(line("(unnamed)").calls, 1, "{table}");
    assert!(!table.contains("tw-report"), "{table}");
    gw.shutdown().await;
}
