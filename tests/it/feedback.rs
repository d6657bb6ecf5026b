//! `POST /v1/feedback` and the request listing as applications with their own keys meet them
//! (issue 22, item 4): feedback belongs to the key that made the request, its body has the same cap
//! as every other, a value the store cannot hold is a 400, and without an admin key a client key
//! lists only its own requests.

use serde_json::{Value, json};
use tierwise::config::file::{spanned, text};
use tierwise_fake::FakeUpstream;

use crate::util::{Answer, CLIENT_KEY, TestConfig, TestGateway, chat, stored};

const OTHER_KEY: &str = "tw-other-app-key-789";

/// A gateway with two client keys and no admin key, against one fake.
async fn two_keys(change: impl FnOnce(&mut TestConfig)) -> (FakeUpstream, TestGateway) {
    let up = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.api_keys = Some(vec![text("${CLIENT_KEY}"), text(OTHER_KEY)]);
            change(c);
        });
    let gateway = TestGateway::start(&config).await;
    (up, gateway)
}

async fn post_as(gateway: &TestGateway, key: &str, path: &str, body: &Value) -> Answer {
    Answer::of(
        gateway
            .http
            .post(format!("{}{path}", gateway.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A classification request made with `key`, once its row is in the ledger; returns its id.
async fn request_as(gateway: &TestGateway, key: &str) -> String {
    let answer = post_as(
        gateway,
        key,
        "/v1/chat/completions",
        &chat("classification", "x"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let id = answer.header("x-tierwise-request-id").unwrap().to_string();
    stored(&gateway.store().await, &id).await;
    id
}

async fn stored_truths(gateway: &TestGateway) -> Vec<(String, String)> {
    let pool = sqlx::SqlitePool::connect(&gateway.ledger_url)
        .await
        .unwrap();
    sqlx::query_as("SELECT request_id, truth FROM feedback ORDER BY request_id")
        .fetch_all(&pool)
        .await
        .unwrap()
}

/// Another key's request id is answered like an id that does not exist, and its report neither
/// lands nor replaces the owner's; an unknown id stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_taken_only_for_requests_the_same_key_made() {
    let (_up, gateway) = two_keys(|_| {}).await;
    let mine = request_as(&gateway, CLIENT_KEY).await;

    let own = post_as(
        &gateway,
        CLIENT_KEY,
        "/v1/feedback",
        &json!({"request_id": mine, "label": "billing"}),
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.body["status"], "stored");

    let foreign = post_as(
        &gateway,
        OTHER_KEY,
        "/v1/feedback",
        &json!({"request_id": mine, "label": "technical"}),
    )
    .await;
    let message = foreign.error(404, Some("not_found"));
    assert!(message.contains("this API key"), "{message}");

    let unknown = post_as(
        &gateway,
        CLIENT_KEY,
        "/v1/feedback",
        &json!({"request_id": "no-such-request", "correct": true}),
    )
    .await;
    unknown.error(404, Some("not_found"));

    assert_eq!(
        stored_truths(&gateway).await,
        [(mine, r#"{"label":"billing"}"#.to_string())],
        "only the owner's report is stored"
    );
    gateway.shutdown().await;
}

/// The feedback body is read under `server.max_body_bytes`, not the framework's 2 MB default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feedback_body_over_max_body_bytes_is_413() {
    let (_up, gateway) = two_keys(|c| c.0.server.max_body_bytes = Some(spanned(1000))).await;
    let big = json!({"request_id": "r1", "label": "x".repeat(2000)});
    let answer = post_as(&gateway, CLIENT_KEY, "/v1/feedback", &big).await;
    let message = answer.error(413, None);
    assert!(message.contains("server.max_body_bytes"), "{message}");
    gateway.shutdown().await;
}

/// A NUL, which PostgreSQL cannot store, is refused with a 400 before it reaches the writer; the
/// writer goes on storing the next report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_feedback_is_a_400_and_the_next_report_is_stored() {
    let (_up, gateway) = two_keys(|_| {}).await;
    let id = request_as(&gateway, CLIENT_KEY).await;
    for body in [
        json!({"request_id": id, "label": "bill\u{0}ing"}),
        json!({"request_id": id, "value": {"name": "A\u{0}da"}}),
        json!({"request_id": format!("{id}\u{0}"), "correct": true}),
    ] {
        let refused = post_as(&gateway, CLIENT_KEY, "/v1/feedback", &body).await;
        refused.error(400, None);
    }
    let next = post_as(
        &gateway,
        CLIENT_KEY,
        "/v1/feedback",
        &json!({"request_id": id, "correct": true}),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(
        stored_truths(&gateway).await,
        [(id, r#"{"correct":true}"#.to_string())]
    );
    gateway.shutdown().await;
}

/// With no `admin_key`, every client key reads the admin API; the request listing then shows a
/// key only its own requests, whose ids are what feedback names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_a_client_key_lists_only_its_own_requests() {
    let (_up, gateway) = two_keys(|_| {}).await;
    let mine = request_as(&gateway, CLIENT_KEY).await;
    let theirs = request_as(&gateway, OTHER_KEY).await;
    let listed = |key: &'static str| {
        let gateway = &gateway;
        async move {
            let answer = Answer::of(
                gateway
                    .http
                    .get(format!("{}/admin/api/requests", gateway.url))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            answer.body["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(CLIENT_KEY).await, [mine]);
    assert_eq!(listed(OTHER_KEY).await, [theirs]);
    gateway.shutdown().await;
}
