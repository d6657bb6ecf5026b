//! Shadow checks of live traffic through the real gateway: a local classifier whose accuracy the
//! test sets, a perfect API reference, and the whole loop — samples scored after the client has
//! its answer, shadow calls priced apart from product traffic, an alert that fires once when the
//! local model drops from 94% to 87%, the webhook, demotion to the next tier with the local tier
//! checked in reverse, and promotion back once it recovers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tierwise::config::file::{RawShadow, spanned, text};
use tierwise::config::{OnDrift, OnProof};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::{Answer, Hook, TestConfig, TestGateway, chat};

const ROUTE: &str = "classification";
const LABELS: [&str; 3] = ["billing", "technical", "general"];

/// A fake local classifier and a fake reference, right on the given shares of tickets.
async fn classifiers(local_accuracy: f64, api_accuracy: f64) -> (FakeUpstream, FakeUpstream) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| b.label_accuracy = Some(local_accuracy));
    api.update(|b| b.label_accuracy = Some(api_accuracy));
    (local, api)
}

/// The drift scenario's gateway: the classification route on `local` then `api_fast`, every
/// request shadowed against `api_frontier`, alerts to `hook`.
fn drift_config(local: &FakeUpstream, api: &FakeUpstream, hook: &Hook) -> TestConfig {
    TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.min_agreement = Some(spanned(0.9));
            shadow.window = Some(spanned(600));
            shadow.min_samples = Some(spanned(100));
            shadow.concurrency = Some(spanned(CONCURRENCY as u32));
            shadow.on_drift = Some(OnDrift::Demote);
            c.route(ROUTE).shadow = Some(shadow);
            c.0.alerts.webhook = Some(text(hook.url.clone()));
        })
}

/// Shadow checks the drift scenario's route runs at once.
const CONCURRENCY: usize = 32;

/// Sends classification requests, each a new ticket whose true label the fake classifier reads,
/// one at a time; returns the tiers that answered.
struct Traffic {
    sent: usize,
}

impl Traffic {
    async fn send(&mut self, gateway: &TestGateway, n: usize) -> Vec<String> {
        let mut tiers = Vec::with_capacity(n);
        for _ in 0..n {
            // Checks beyond `shadow.concurrency` in flight are skipped (`busy`), by design: a
            // machine slower to check than to answer must not make this test lose samples.
            if self.sent > 0 && self.sent.is_multiple_of(CONCURRENCY) {
                wait_for_samples(gateway, self.sent).await;
            }
            self.sent += 1;
            let label = LABELS[self.sent % LABELS.len()];
            let content = format!("ticket {} needs routing [[{label}]]", self.sent);
            let answer = Answer::of(
                gateway
                    .post("/v1/chat/completions", &chat(ROUTE, &content))
                    .await,
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            tiers.push(answer.header("x-tierwise-tier").unwrap_or("").to_string());
        }
        tiers
    }
}

/// The route as `/admin/api/quality` shows it.
async fn standing(gateway: &TestGateway) -> Value {
    let all = Answer::of(gateway.get("/admin/api/quality").await).await;
    assert_eq!(all.status, 200, "{}", all.body);
    all.body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == ROUTE)
        .cloned()
        .unwrap_or_else(|| panic!("no {ROUTE} in {}", all.body))
}

/// Waits until today's scored samples in the ledger reach `n`: every check of the requests sent
/// so far has been scored and stored.
async fn wait_for_samples(gateway: &TestGateway, n: usize) -> Value {
    // Generous: on a loaded machine (the whole suite at once) scoring 1,600 samples on the
    // blocking pool can take tens of seconds; a passing run returns as soon as they are in.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let route = standing(gateway).await;
        let scored: u64 = route["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["samples"].as_u64().unwrap())
            .sum();
        if scored as usize >= n {
            assert_eq!(scored as usize, n, "a request was sampled twice: {route}");
            return route;
        }
        assert!(
            Instant::now() < until,
            "only {scored} of {n} samples were scored: {route}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends traffic in steps of `step` until `done` holds for the route's standing; returns how many
/// requests it took. Fails after `most` requests.
async fn until(
    gateway: &TestGateway,
    traffic: &mut Traffic,
    step: usize,
    most: usize,
    done: impl Fn(&Value) -> bool,
) -> usize {
    let mut sent = 0;
    loop {
        traffic.send(gateway, step).await;
        sent += step;
        let route = wait_for_samples(gateway, traffic.sent).await;
        if done(&route) {
            return sent;
        }
        assert!(sent < most, "not within {most} requests: {route}");
    }
}

/// The scenario, step by step: a steady 94% against a 90% bar raises nothing; a drop to
/// 87% fires once (log, metric, one webhook), demotes the local tier so that traffic moves to
/// `api_fast` while `local` is checked in reverse; back at 94% the alert clears and `local` is
/// promoted. Each step's number of samples is printed and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drop_from_94_to_87_percent_alerts_once_demotes_and_recovery_promotes() {
    let (local, api) = classifiers(0.94, 1.0).await;
    let hook = Hook::start().await;
    let gateway = TestGateway::start(&drift_config(&local, &api, &hook)).await;
    let mut traffic = Traffic { sent: 0 };

    // Steady at 94%: the window fills and stays quiet.
    let tiers = traffic.send(&gateway, 800).await;
    assert!(tiers.iter().all(|t| t == "local"), "{tiers:?}");
    let route = wait_for_samples(&gateway, 800).await;
    assert_eq!(route["alerting"], false, "{route}");
    assert_eq!(route["demoted"], false, "{route}");
    assert_eq!(route["samples"], 600, "the window holds 600 samples");
    let agreement = route["agreement"].as_f64().unwrap();
    assert!((0.91..0.97).contains(&agreement), "{route}");
    assert!(
        hook.events().is_empty(),
        "a false alarm: {:?}",
        hook.events()
    );
    // Each sample cost one call to the reference, kept apart from product traffic.
    let store = gateway.store().await;
    let summary = store.summary(0, i64::MAX, Some(ROUTE)).await.unwrap();
    assert_eq!(
        summary.routes[0].calls, 800,
        "shadow calls are not product calls"
    );
    let [checks] = &summary.checks[..] else {
        panic!("{:?}", summary.checks)
    };
    assert_eq!(
        (checks.purpose.as_str(), checks.calls, checks.scored),
        ("shadow", 800, 800)
    );
    // gpt-4o at 20 prompt and 5 answer tokens: $0.0001 a call.
    assert_eq!(checks.cost.to_string(), "0.08");

    // The model update: 87%.
    local.update(|b| b.label_accuracy = Some(0.87));
    let to_fire = until(&gateway, &mut traffic, 20, 2_000, |r| r["alerting"] == true).await;
    eprintln!("94% → 87%: the alert fired after {to_fire} samples");
    let route = standing(&gateway).await;
    assert_eq!(route["demoted"], true, "{route}");
    wait_until(|| hook.events().len() >= 2).await;
    assert_eq!(hook.events(), ["alert_fired", "demoted"]);
    let fired = hook.received.lock().unwrap()[0].clone();
    assert_eq!(fired["route"], ROUTE);
    assert_eq!(fired["tier"], "local");
    assert_eq!(fired["model"], "mistral-7b");
    assert_eq!(fired["reference"], "api_frontier");
    assert_eq!(fired["window"], 600);
    assert!(fired["samples"].as_u64().unwrap() >= 100, "{fired}");
    assert!(fired["interval"]["high"].as_f64().unwrap() < 0.9, "{fired}");

    // Demoted: traffic goes to the next tier, saying why; `local` is still checked, in reverse.
    let local_calls = local.request_count();
    let answered = Answer::of(
        gateway
            .post("/v1/chat/completions", &chat(ROUTE, "ticket x [[billing]]"))
            .await,
    )
    .await;
    traffic.sent += 1;
    assert_eq!(answered.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        answered.header("x-tierwise-fallback"),
        Some("local:quality_demoted")
    );
    wait_for_samples(&gateway, traffic.sent).await;
    assert_eq!(
        local.request_count(),
        local_calls + 1,
        "the reverse check asks local"
    );
    let tiers = traffic.send(&gateway, 200).await;
    assert!(tiers.iter().all(|t| t == "api_fast"), "{tiers:?}");
    assert_eq!(
        hook.events().len(),
        2,
        "the alert fired once: {:?}",
        hook.events()
    );

    // Recovery: back at 94%, agreement is proven again and local serves.
    local.update(|b| b.label_accuracy = Some(0.94));
    let to_promote = until(&gateway, &mut traffic, 20, 2_000, |r| r["demoted"] == false).await;
    eprintln!("87% → 94%: promoted after {to_promote} samples");
    let route = standing(&gateway).await;
    assert_eq!(route["alerting"], false, "{route}");
    assert!(route["interval"]["low"].as_f64().unwrap() >= 0.9, "{route}");
    wait_until(|| hook.events().len() >= 4).await;
    assert_eq!(
        hook.events(),
        ["alert_fired", "demoted", "alert_cleared", "promoted"]
    );
    let tiers = traffic.send(&gateway, 20).await;
    assert!(tiers.iter().all(|t| t == "local"), "{tiers:?}");
    let events: Vec<&str> = route["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["alert_fired", "demoted", "alert_cleared", "promoted"]
    );
    assert!(
        to_fire <= 1_200 && to_promote <= 1_200,
        "{to_fire} {to_promote}"
    );

    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "tierwise_quality_alerts_total{route=\"classification\",model=\"mistral-7b\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("secret-token-123"),
        "the webhook URL may hold a token"
    );
    gateway.shutdown().await;
}

/// `on_proof = "promote"`: a route starts on its next tier while the local candidate is checked in
/// reverse, and moves to local once agreement is proven; a restarted gateway takes the state up
/// from the ledger instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proof_promotes_a_route_that_starts_on_the_api_and_a_restart_keeps_it() {
    let (local, api) = classifiers(1.0, 1.0).await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_fast", 1.0);
            shadow.min_samples = Some(spanned(40));
            shadow.on_proof = Some(OnProof::Promote);
            c.route(ROUTE).shadow = Some(shadow);
        });
    let gateway = TestGateway::start(&config).await;
    let mut traffic = Traffic { sent: 0 };
    let tiers = traffic.send(&gateway, 39).await;
    assert!(tiers.iter().all(|t| t == "api_fast"), "{tiers:?}");
    let route = wait_for_samples(&gateway, 39).await;
    assert_eq!(
        route["demoted"], true,
        "not proven with 39 samples: {route}"
    );
    traffic.send(&gateway, 1).await;
    let route = wait_for_samples(&gateway, 40).await;
    assert_eq!(route["demoted"], false, "{route}");
    assert_eq!(route["proven"], true, "{route}");
    let tiers = traffic.send(&gateway, 5).await;
    assert!(tiers.iter().all(|t| t == "local"), "{tiers:?}");
    gateway.shutdown().await;

    // The same ledger: the promotion is remembered.
    let restarted = TestGateway::start(&config).await;
    let route = standing(&restarted).await;
    assert_eq!(route["demoted"], false, "{route}");
    assert_eq!(route["samples"], 45, "{route}");
    let tiers = traffic.send(&restarted, 3).await;
    assert!(tiers.iter().all(|t| t == "local"), "{tiers:?}");
    restarted.shutdown().await;
}

/// Streams are shadowed from their assembled text; a day's budget stops sampling once spent;
/// shadow calls never delay or fail a client request, even when the reference is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_shadowed_the_budget_stops_sampling_and_a_down_reference_harms_no_one() {
    let (local, api) = classifiers(1.0, 1.0).await;
    // Each gpt-4o check costs $0.00125 (100 tokens in, 100 out) and reserves its worst case
    // first: $0.001 for its 100 tokens out, and $0.0000025 per byte of its prompt (about 95).
    // $0.0048 takes three, and a fourth would not fit.
    api.update(|b| {
        b.prompt_tokens = 100;
        b.completion_tokens = 100;
    });
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.daily_budget_usd = Some(spanned(0.0048));
            c.route(ROUTE).shadow = Some(shadow);
            c.0.tiers.get_mut("api_frontier").unwrap().max_tokens = Some(100);
        });
    let gateway = TestGateway::start(&config).await;
    let mut request = chat(ROUTE, "my invoice is wrong [[billing]]");
    request["stream"] = true.into();
    let answer = Answer::of(gateway.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200);
    let route = wait_for_samples(&gateway, 1).await;
    assert_eq!(route["agreement"], 1.0, "{route}");
    let shadow_call = api.requests().last().unwrap().body.clone();
    assert_eq!(shadow_call["model"], "gpt-4o");
    assert!(
        shadow_call.get("stream").is_none() && shadow_call.get("stream_options").is_none(),
        "a shadow call asks for one whole answer: {shadow_call}"
    );
    assert_eq!(shadow_call["max_tokens"], 100, "{shadow_call}");

    // The reference goes down: clients are served by local as before, nothing waits on it, and
    // the failed checks score nothing.
    api.update(|b| {
        b.fault = Fault::Status {
            status: 503,
            body: None,
            retry_after: None,
        }
    });
    let before = api.request_count();
    let mut traffic = Traffic { sent: 1 };
    let tiers = traffic.send(&gateway, 3).await;
    assert!(tiers.iter().all(|t| t == "local"), "{tiers:?}");
    // The three checks run after their clients have answers: wait until each has met the 503.
    wait_until(|| api.request_count() == before + 3).await;
    api.update(|b| b.fault = Fault::None);

    // Back up: two more calls spend the day's budget, and sampling stops.
    traffic.send(&gateway, 2).await;
    wait_for_samples(&gateway, 3).await;
    let before = api.request_count();
    traffic.send(&gateway, 5).await;
    let route = standing(&gateway).await;
    assert_eq!(route["spent_today_usd"], "0.00375", "{route}");
    assert_eq!(
        api.request_count(),
        before,
        "the budget is spent: no more shadow calls"
    );
    // The failed checks' rows reach the ledger after their calls: wait for all six.
    let store = gateway.store().await;
    let until = Instant::now() + Duration::from_secs(10);
    let checks = loop {
        let summary = store.summary(0, i64::MAX, Some(ROUTE)).await.unwrap();
        if let [checks] = &summary.checks[..]
            && checks.calls >= 6
        {
            break checks.clone();
        }
        assert!(Instant::now() < until, "{:?}", summary.checks);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((checks.calls, checks.scored), (6, 3), "{checks:?}");
    gateway.shutdown().await;
}

/// Ground truth through `POST /v1/feedback`, and the report's quality section: agreement with the
/// reference, contract rewrites, accuracy against the truth, and what the checks cost, counted in
/// the money actually spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_and_shadow_checks_show_in_the_report_beside_cost() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    // Every answer wrapped in words, so the contract pulls the label out of each.
    local.update(|b| b.reply = "The category is: billing.".into());
    api.update(|b| b.reply = "billing".into());
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.ledger.store_content = true;
            c.route(ROUTE).shadow = Some(RawShadow::new("api_frontier", 1.0));
        });
    let gateway = TestGateway::start(&config).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let answer = Answer::of(
            gateway
                .post("/v1/chat/completions", &chat(ROUTE, &format!("ticket {i}")))
                .await,
        )
        .await;
        assert_eq!(answer.header("x-tierwise-contract"), Some("normalized"));
        ids.push(answer.header("x-tierwise-request-id").unwrap().to_string());
    }
    wait_for_samples(&gateway, 4).await;
    let truths = [
        serde_json::json!({"request_id": ids[0], "label": "billing"}),
        serde_json::json!({"request_id": ids[1], "label": "technical"}),
        serde_json::json!({"request_id": ids[2], "correct": true}),
        serde_json::json!({"request_id": ids[3], "score": 0.5}),
    ];
    for truth in &truths {
        let accepted = Answer::of(gateway.post("/v1/feedback", truth).await).await;
        assert_eq!(accepted.status, 200, "{}", accepted.body);
    }
    let refused = Answer::of(
        gateway
            .post(
                "/v1/feedback",
                &serde_json::json!({"request_id": ids[0], "label": "a", "correct": true}),
            )
            .await,
    )
    .await;
    refused.error(400, None);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exactly one of")
    );

    // Feedback is written in the background: wait until all four are judged.
    let until = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = Answer::of(gateway.get("/admin/api/report?since=1h").await)
            .await
            .body;
        let route = report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == ROUTE)
            .cloned()
            .unwrap();
        if route["quality"]["feedback_judged"] == 4 {
            break report;
        }
        assert!(Instant::now() < until, "feedback never judged: {route}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let route = &report["routes"][0];
    let quality = &route["quality"];
    // billing right (1), technical wrong (0), correct (1), a half score: 2.5 of 4.
    assert_eq!(quality["accuracy"], 0.625, "{quality}");
    assert_eq!(quality["agreement"][0]["tier"], "local");
    assert_eq!(quality["agreement"][0]["samples"], 4);
    assert_eq!(quality["agreement"][0]["agreement"], 1.0);
    assert_eq!(quality["contract"][0]["model"], "mistral-7b");
    assert_eq!(quality["contract"][0]["rewritten_share"], 1.0);
    assert_eq!(quality["shadow_calls"], 4);
    assert_eq!(quality["checks_cost_usd"], "0.0004");
    assert_eq!(route["calls"], 4, "shadow calls are not the route's calls");
    assert_eq!(report["totals"]["checks_usd"], "0.0004");
    assert_eq!(report["totals"]["api_usd"], "0");
    assert_eq!(
        report["totals"]["actual_usd"], "0.0004",
        "checks are money spent"
    );
    gateway.shutdown().await;
}

/// `scorer = "judge"`: the reference tier answers, then grades the candidate's answer against its
/// own; the grade is the sample's agreement, and a reply without a grade scores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_grades_open_answers_and_a_reply_without_a_grade_scores_nothing() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| b.reply = "The sky scatters blue light most.".into());
    api.update(|b| b.reply = "7".into());
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.scorer = Some(tierwise::config::ScorerKind::Judge);
            c.route("summarize").shadow = Some(shadow);
        });
    let gateway = TestGateway::start(&config).await;
    let answer = Answer::of(
        gateway
            .post(
                "/v1/chat/completions",
                &chat("summarize", "Why is the sky blue?"),
            )
            .await,
    )
    .await;
    assert_eq!(answer.status, 200);
    let until = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        let summary = gateway
            .store()
            .await
            .summary(0, i64::MAX, Some("summarize"))
            .await
            .unwrap();
        if summary.checks.first().is_some_and(|c| c.scored == 1) {
            break summary;
        }
        assert!(Instant::now() < until, "{:?}", summary.checks);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let checks = &summary.checks[0];
    assert_eq!(
        (checks.calls, checks.agreement_ppm),
        (2, 700_000),
        "{checks:?}"
    );
    let grading = api.requests().last().unwrap().body.clone();
    let asked = grading["messages"][1]["content"].as_str().unwrap();
    assert!(asked.contains("Request:\nWhy is the sky blue?"), "{asked}");
    assert!(
        asked.contains("Candidate answer:\nThe sky scatters blue light most."),
        "{asked}"
    );
    assert!(asked.contains("Reference answer:\n7"), "{asked}");

    // A judge that answers in words gives no grade: the check is kept, unscored.
    api.update(|b| b.reply = "Excellent answer.".into());
    gateway
        .post("/v1/chat/completions", &chat("summarize", "And sunsets?"))
        .await;
    wait_until(|| api.request_count() == 4).await;
    let metrics = gateway
        .wait_for_metrics(|m| {
            m.contains("tierwise_shadow_checks_total{route=\"summarize\",outcome=\"unscorable\"} 1")
        })
        .await;
    assert!(
        metrics.contains("tierwise_shadow_checks_total{route=\"summarize\",outcome=\"scored\"} 1")
    );
    gateway.shutdown().await;
}

async fn wait_until(done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < until, "the condition never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The webhook client does not follow a redirect: the URL may hold a token, which a followed
/// redirect would hand to another host in `Referer`, with the notice. The 307 is a failed
/// delivery, retried at the webhook's own URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_webhook_does_not_follow_a_redirect() {
    use axum::response::IntoResponse;
    let elsewhere: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = elsewhere.clone();
    let other = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let referer = headers
                .get("referer")
                .map(|r| r.to_str().unwrap_or("").to_string());
            seen.lock().unwrap().push(referer.unwrap_or_default());
            "ok"
        }
    });
    let other_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/collect", other_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(other_listener, other).await });

    // The webhook's host redirects its first POST elsewhere and takes the next one itself.
    let posts = Arc::new(Mutex::new(0usize));
    let counted = posts.clone();
    let hook_app = axum::Router::new().route(
        "/hook/secret-token-123",
        axum::routing::post(move || {
            let counted = counted.clone();
            let other_url = other_url.clone();
            async move {
                let mut posts = counted.lock().unwrap();
                *posts += 1;
                if *posts == 1 {
                    axum::response::Redirect::temporary(&other_url).into_response()
                } else {
                    "ok".into_response()
                }
            }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = Hook {
        url: format!(
            "http://{}/hook/secret-token-123",
            hook_listener.local_addr().unwrap()
        ),
        received: Arc::default(),
    };
    tokio::spawn(async move { axum::serve(hook_listener, hook_app).await });

    let (local, api) = classifiers(0.0, 1.0).await;
    let config = drift_config(&local, &api, &hook).with(|c| {
        let shadow = c.route(ROUTE).shadow.as_mut().unwrap();
        shadow.window = Some(spanned(20));
        shadow.min_samples = Some(spanned(10));
        shadow.on_drift = None;
        // A model of its own: the alert counter is process-wide, and the drift test counts
        // classification's alerts on mistral-7b.
        c.0.tiers.get_mut("local").unwrap().model = text("webhook-7b");
    });
    let gateway = TestGateway::start(&config).await;
    let mut traffic = Traffic { sent: 0 };
    traffic.send(&gateway, 10).await;
    tierwise_fake::wait_until(
        "the alert's delivery, at the webhook or elsewhere",
        Duration::from_secs(15),
        || *posts.lock().unwrap() >= 2 || !elsewhere.lock().unwrap().is_empty(),
    )
    .await;
    assert_eq!(
        *elsewhere.lock().unwrap(),
        Vec::<String>::new(),
        "the redirect was followed, Referer shown"
    );
    assert_eq!(
        *posts.lock().unwrap(),
        2,
        "the 307 was retried at the webhook"
    );
}

/// Two replicas on one ledger: each takes up the same window of scored samples from it, both see
/// the same drop, both try to announce it — and the ledger lets one, so the webhook hears of the
/// episode once. A third replica started afterwards serves from the next tier at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_ledger_share_one_view_and_announce_once() {
    use tierwise::ledger::{Picodollars, Purpose, RequestRow, Store};
    use tierwise::quality::alert::Alerts;
    use tierwise::quality::watch::Watches;
    // A route of its own: the alert counter it raises is process-wide.
    const REPLICATED: &str = "replicated";

    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let hook = Hook::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.window = Some(spanned(100));
            shadow.min_samples = Some(spanned(30));
            shadow.on_drift = Some(OnDrift::Demote);
            c.add_route(
                REPLICATED,
                tierwise::config::TaskKind::Classification,
                &["local", "api_fast"],
            )
            .shadow = Some(shadow);
            c.0.alerts.webhook = Some(text(hook.url.clone()));
        })
        .config();
    let store = Store::connect(&config.ledger.url).await.unwrap();
    // The samples both replicas' checks wrote: 70% agreement.
    let now = tierwise::quality::watch::now_ms();
    let rows: Vec<RequestRow> = (0..100)
        .map(|i| {
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                now - 10_000 + i,
                "chat.completions".into(),
            );
            row.route = Some(REPLICATED.into());
            row.purpose = Purpose::Shadow;
            row.candidate = Some("local".into());
            row.cost_pusd = Some(Picodollars(0));
            row.agreement_ppm = Some(if i % 10 < 7 { 1_000_000 } else { 0 });
            row
        })
        .collect();
    store
        .insert(&rows.iter().collect::<Vec<_>>(), &[])
        .await
        .unwrap();
    let a = Watches::load(&config, &store).await.unwrap();
    let b = Watches::load(&config, &store).await.unwrap();
    let (wa, wb) = (a.get(REPLICATED).unwrap(), b.get(REPLICATED).unwrap());
    for watch in [wa, wb] {
        let standing = watch.standing();
        assert_eq!(standing.samples, 100, "the window is the ledger's");
        assert!(!standing.alerting, "taking a window up announces nothing");
    }
    // The next sample tips both over the bar's interval at once.
    let alerts = Alerts::new(&config);
    let changes_a = wa.record(0.0);
    let changes_b = wb.record(0.0);
    assert_eq!(changes_a, changes_b, "one view, the same changes");
    for change in &changes_a {
        alerts.announce(&store, wa, change).await;
    }
    for change in &changes_b {
        alerts.announce(&store, wb, change).await;
    }
    wait_until(|| hook.events().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.events(), ["alert_fired", "demoted"], "announced once");
    assert!(wa.demoted() && wb.demoted());

    let c = Watches::load(&config, &store).await.unwrap();
    let standing = c.get(REPLICATED).unwrap().standing();
    assert!(standing.demoted && standing.alerting, "{standing:?}");
}

/// A clock that jumped ahead a year and back left rows dated in the future: 20 samples that all
/// agree and a shadow call that cost $10. The window is still the latest 20 samples as stored
/// (which all disagree), not the future-dated ones, and the future call is not today's spend.
/// A resync that finds the stored window unchanged keeps the samples the monitor scored since,
/// and one that finds it changed takes it up.
async fn a_clock_that_jumps_neither_freezes_the_window_nor_spends_the_budget(
    backend: crate::util::Backend,
) {
    use tierwise::ledger::{Picodollars, Purpose, RequestRow, Store};
    use tierwise::quality::watch::{Watches, now_ms};

    let (local, api) = classifiers(0.0, 1.0).await;
    let url = backend.url().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = RawShadow::new("api_frontier", 1.0);
            shadow.window = Some(spanned(20));
            shadow.min_samples = Some(spanned(10));
            // No bar: nothing fires, so only the window decides what a resync does.
            shadow.min_agreement = Some(spanned(0.0));
            c.route(ROUTE).shadow = Some(shadow);
            c.0.ledger.url = Some(text(url));
        });
    let now = now_ms();
    let year = 365 * 86_400_000i64;
    let row = |ts: i64, agreement: Option<i64>, cost: i64| {
        let mut row = RequestRow::new(
            uuid::Uuid::now_v7().to_string(),
            ts,
            "chat.completions".into(),
        );
        row.route = Some(ROUTE.into());
        row.tier = Some("api_frontier".into());
        row.purpose = Purpose::Shadow;
        row.candidate = Some("local".into());
        row.cost_pusd = Some(Picodollars(cost));
        row.agreement_ppm = agreement;
        row
    };
    let store = Store::connect(&config.config().ledger.url).await.unwrap();
    // Written while the clock was a year ahead, then, once it was set right, today's.
    let future: Vec<RequestRow> = (0..20)
        .map(|i| row(now + year + i, Some(1_000_000), 0))
        .chain([row(now + year + 100, None, 10_000_000_000_000)])
        .collect();
    store
        .insert(&future.iter().collect::<Vec<_>>(), &[])
        .await
        .unwrap();
    let today: Vec<RequestRow> = (0..20).map(|i| row(now - 20 + i, Some(0), 0)).collect();
    store
        .insert(&today.iter().collect::<Vec<_>>(), &[])
        .await
        .unwrap();

    let gateway = TestGateway::start(&config).await;
    let route = standing(&gateway).await;
    assert_eq!(route["samples"], 20, "{route}");
    assert_eq!(
        route["agreement"], 0.0,
        "the window is the latest stored: {route}"
    );
    assert_eq!(
        route["spent_today_usd"], "0",
        "a future-dated call is not today's spend: {route}"
    );
    gateway.shutdown().await;

    // The watch itself, as the shadow checks drive it between resyncs.
    let watches = Watches::load(&config.config(), &store).await.unwrap();
    let watch = watches.get(ROUTE).unwrap();
    for _ in 0..5 {
        watch.record(1.0);
    }
    assert_eq!(watch.standing().agreement, Some(0.25));
    watch.resync(&store).await.unwrap();
    assert_eq!(
        watch.standing().agreement,
        Some(0.25),
        "an unchanged stored window replaced the monitor's newer samples"
    );
    store
        .insert(&[&row(now, Some(1_000_000), 0)], &[])
        .await
        .unwrap();
    watch.resync(&store).await.unwrap();
    assert_eq!(
        watch.standing().agreement,
        Some(0.05),
        "a changed stored window is taken up"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_jumps_neither_freezes_the_window_nor_spends_the_budget_sqlite() {
    a_clock_that_jumps_neither_freezes_the_window_nor_spends_the_budget(
        crate::util::Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_jumps_neither_freezes_the_window_nor_spends_the_budget_postgres() {
    a_clock_that_jumps_neither_freezes_the_window_nor_spends_the_budget(
        crate::util::Backend::Postgres,
    )
    .await;
}

/// A route scored by its tool calls does not shadow its streams: the relay keeps a stream's text,
/// not its tool calls, and every streamed call would count as a disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_of_a_tool_calling_route_are_not_scored_without_their_calls() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.add_route(
                "tools_route",
                tierwise::config::TaskKind::Agentic,
                &["local", "api_fast"],
            )
            .shadow = Some(RawShadow::new("api_frontier", 1.0));
        });
    let gateway = TestGateway::start(&config).await;
    let mut request = chat("tools_route", "look up order 1042");
    request["stream"] = true.into();
    let answer = Answer::of(gateway.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200);
    gateway
        .wait_for_metrics(|m| {
            m.contains(
                "tierwise_shadow_skipped_total{route=\"tools_route\",reason=\"stream_tool_calls\"} 1",
            )
        })
        .await;
    assert_eq!(api.request_count(), 0, "no shadow call was made");
    gateway.shutdown().await;
}
