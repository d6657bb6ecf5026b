//! `POST /v1/messages/count_tokens`: it refuses what `/v1/messages` refuses of a prompt (and what
//! no tier of the route can carry), counts images by their size and PDFs by their pages without
//! fetching anything, has its own window of counts a minute per key, and asks an Anthropic tier
//! for its own count — passing its 400 on, answering the estimate when it fails, never feeding its
//! breaker nor taking its slots. Also: `x-api-key` wins over a Bearer key on the Messages paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tierwise::config::TaskKind;
use tierwise::config::file::{RawKey, RawProvider, RawTier, spanned, text};
use tierwise_fake::{FakeUpstream, Fault, wait_until};

use crate::util::*;

/// `local`/`api_fast` behind `summarize`; `claude` (Anthropic's format) first behind `agent`;
/// `claude_haiku` alone behind `haiku`; `textonly` on a model without vision; key `counter`
/// with 2 requests a minute. The Anthropic provider opens its breaker at one failure, takes one
/// call at a time and waits at most 1 s for an answer.
async fn setup() -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(tierwise::config::Api::Anthropic);
            provider.api_key = Some(text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            provider.breaker.failures = Some(spanned(1));
            provider.max_in_flight = Some(spanned(1));
            provider.timeout.total_ms = Some(1000);
            c.0.providers.insert(text("anthropic"), provider);
            let mut claude = RawTier::new("anthropic", "claude-sonnet-4-5");
            claude.temperature = Some(spanned(0.3));
            c.0.tiers.insert(text("claude"), claude);
            c.0.tiers.insert(
                text("claude_haiku"),
                RawTier::new("anthropic", "claude-haiku-4-5"),
            );
            let mut blind = RawTier::new("vllm", "mistral-7b");
            blind.vision = Some(false);
            c.0.tiers.insert(text("local_text"), blind);
            c.add_route("agent", TaskKind::Agentic, &["claude", "local"]);
            c.add_route("haiku", TaskKind::Agentic, &["claude_haiku"]);
            c.add_route("textonly", TaskKind::Chat, &["local_text"]);
            let mut counter = RawKey::new("tw-counter-key");
            counter.rpm = Some(spanned(2));
            c.0.keys.insert(text("counter"), counter);
        });
    let gw = TestGateway::start(&config).await;
    (local, anthropic, gw)
}

/// POSTs `body` to `path` with `key` in `x-api-key`, as Anthropic's SDK sends it.
async fn send_as(gw: &TestGateway, key: &str, path: &str, body: &Value) -> Answer {
    let response = gw
        .http
        .post(format!("{}{path}", gw.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send();
    tokio::time::timeout(Duration::from_secs(10), async {
        Answer::of(response.await.expect("the gateway answers")).await
    })
    .await
    .expect("the answer comes instead of hanging")
}

async fn count(gw: &TestGateway, body: &Value) -> Answer {
    send_as(gw, CLIENT_KEY, "/v1/messages/count_tokens", body).await
}

async fn message(gw: &TestGateway, body: &Value) -> Answer {
    send_as(gw, CLIENT_KEY, "/v1/messages", body).await
}

/// The count of a 200 answer.
fn tokens(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.body["input_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count: {}", answer.text))
}

fn user(content: Value) -> Value {
    json!([{"role": "user", "content": content}])
}

/// A PNG's signature and IHDR chunk, the bytes that say its size, then `padding` zero bytes.
fn png(width: u32, height: u32, padding: usize) -> String {
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend_from_slice(&width.to_be_bytes());
    png.extend_from_slice(&height.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    png.resize(png.len() + padding, 0);
    STANDARD.encode(png)
}

fn image(data: &str) -> Value {
    json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}})
}

/// Every body `/v1/messages` refuses for its prompt, `count_tokens` refuses alike: the same 400
/// `invalid_request_error` with the same message; nothing reaches an upstream.
#[tokio::test]
async fn count_tokens_refuses_what_messages_refuses() {
    let (local, anthropic, gw) = setup().await;
    let hi = user(json!("Hi"));
    let bad: Vec<(&str, Value)> = vec![
        ("no messages", json!({})),
        ("messages not a list", json!({"messages": "Hi"})),
        ("no message", json!({"messages": []})),
        (
            "a system turn",
            json!({"messages": [{"role": "system", "content": "x"}]}),
        ),
        ("no content", json!({"messages": [{"role": "user"}]})),
        ("content a number", json!({"messages": user(json!(7))})),
        (
            "a block without a type",
            json!({"messages": user(json!([{"text": "x"}]))}),
        ),
        (
            "a text block without text",
            json!({"messages": user(json!([{"type": "text"}]))}),
        ),
        (
            "an image of another type",
            json!({"messages": user(json!([{"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AAAA"}}]))}),
        ),
        (
            "an image from nowhere",
            json!({"messages": user(json!([{"type": "image", "source": {"type": "ftp"}}]))}),
        ),
        (
            "a tool use without an id",
            json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "w", "input": {}}]}]}),
        ),
        (
            "a tool use whose input is text",
            json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": "x"}]}]}),
        ),
        (
            "a tool result without its call",
            json!({"messages": user(json!([{"type": "tool_result", "content": "sunny"}]))}),
        ),
        (
            "a tool result holding a bad block",
            json!({"messages": user(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}]))}),
        ),
        ("a system number", json!({"messages": hi, "system": 5})),
        (
            "a system image",
            json!({"messages": hi, "system": [{"type": "image"}]}),
        ),
        (
            "tools not a list",
            json!({"messages": hi, "tools": {"name": "w"}}),
        ),
        (
            "a tool without a name",
            json!({"messages": hi, "tools": [{"input_schema": {"type": "object"}}]}),
        ),
        (
            "a custom tool without a schema",
            json!({"messages": hi, "tools": [{"name": "w"}]}),
        ),
        (
            "an unknown tool choice",
            json!({"messages": hi, "tool_choice": {"type": "maybe"}}),
        ),
        (
            "a tool choice without the tool",
            json!({"messages": hi, "tool_choice": {"type": "tool"}}),
        ),
    ];
    for model in ["summarize", "agent"] {
        for (what, body) in &bad {
            let mut body = body.clone();
            body["model"] = json!(model);
            let counted = count(&gw, &body).await;
            body["max_tokens"] = json!(16);
            let sent = message(&gw, &body).await;
            for answer in [&counted, &sent] {
                assert_eq!(answer.status, 400, "{model}, {what}: {}", answer.text);
                assert_eq!(answer.body["type"], "error", "{what}: {}", answer.text);
                assert_eq!(
                    answer.body["error"]["type"], "invalid_request_error",
                    "{what}: {}",
                    answer.text
                );
            }
            assert_eq!(
                counted.body["error"]["message"], sent.body["error"]["message"],
                "{model}, {what}"
            );
        }
    }
    // A body that is not an object, refused in the same words.
    for body in [json!([]), json!("hi"), json!(7)] {
        let counted = count(&gw, &body).await;
        let sent = message(&gw, &body).await;
        assert_eq!(counted.status, 400, "{body}: {}", counted.text);
        assert_eq!(
            counted.body["error"]["message"], sent.body["error"]["message"],
            "{body}"
        );
    }
    assert_eq!(local.request_count() + anthropic.request_count(), 0);
    // What both take: a count needs no max_tokens, the message does.
    let good = json!({"model": "summarize", "messages": hi, "system": [{"type": "text", "text": "Be brief."}],
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"}});
    assert!(tokens(&count(&gw, &good).await) > 0);
    let answer = message(&gw, &good).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(answer.text.contains("max_tokens"), "{}", answer.text);
    gw.shutdown().await;
}

/// Images count as Anthropic documents: width × height / 750 from the size read in the data's
/// first bytes (a 5 MB image read no further), the cap for a large one, and the cap for one by
/// URL, which the gateway never fetches.
#[tokio::test]
async fn images_count_by_their_size_and_a_url_is_never_fetched() {
    let (local, _anthropic, gw) = setup().await;
    let counted = |content: Value| {
        let gw = &gw;
        async move {
            tokens(
                &count(
                    gw,
                    &json!({"model": "summarize", "messages": user(content)}),
                )
                .await,
            )
        }
    };
    let none = counted(json!([])).await;
    let landscape = counted(json!([image(&png(1000, 500, 5 << 20))])).await;
    assert_eq!(landscape - none, 667, "1000 × 500 / 750");
    let huge = counted(json!([image(&png(8000, 6000, 0))])).await;
    assert_eq!(huge - none, 1600, "scaled down, then capped");

    // A listener that notes any connection: the image's URL points at it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cat.png", listener.local_addr().unwrap());
    let fetched = Arc::new(AtomicBool::new(false));
    let noted = fetched.clone();
    let watch = tokio::spawn(async move {
        if listener.accept().await.is_ok() {
            noted.store(true, Ordering::SeqCst);
        }
    });
    let by_url = json!([{"type": "image", "source": {"type": "url", "url": url}}]);
    assert_eq!(counted(by_url).await - none, 1600);
    assert!(!fetched.load(Ordering::SeqCst), "the image was fetched");
    watch.abort();
    assert_eq!(local.request_count(), 0);
    gw.shutdown().await;
}

/// What no tier of the route can carry is refused by counting as by sending: images to a route
/// whose only model has no vision, a PDF to a route of chat servers.
#[tokio::test]
async fn what_no_tier_can_carry_is_refused_as_sending_refuses_it() {
    let (local, _anthropic, gw) = setup().await;
    let pdf = json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": STANDARD.encode("%PDF-1.4 /Type /Page")}});
    for (model, content) in [
        ("textonly", json!([image(&png(10, 10, 0))])),
        ("summarize", json!([pdf])),
    ] {
        let mut body = json!({"model": model, "messages": user(content)});
        let counted = count(&gw, &body).await;
        body["max_tokens"] = json!(16);
        let sent = message(&gw, &body).await;
        for answer in [&counted, &sent] {
            assert_eq!(answer.status, 400, "{model}: {}", answer.text);
            assert_eq!(answer.body["error"]["type"], "invalid_request_error");
        }
        assert_eq!(
            counted.body["error"]["message"], sent.body["error"]["message"],
            "{model}"
        );
    }
    assert_eq!(local.request_count(), 0);
    gw.shutdown().await;
}

/// Counting has its own window per key, at the key's rpm: the third count of a key with 2 a
/// minute is a 429 `rate_limit_error` with `retry-after`, the window's headers on every answer;
/// the key's requests are not taken by its counts, and a key without limits is not limited.
#[tokio::test]
async fn counts_have_their_own_window_per_key() {
    let (_local, _anthropic, gw) = setup().await;
    let body = json!({"model": "summarize", "messages": user(json!("Hi"))});
    for left in ["1", "0"] {
        let answer = send_as(&gw, "tw-counter-key", "/v1/messages/count_tokens", &body).await;
        tokens(&answer);
        assert_eq!(answer.header("x-ratelimit-limit-token-counts"), Some("2"));
        assert_eq!(
            answer.header("x-ratelimit-remaining-token-counts"),
            Some(left)
        );
        assert!(answer.header("x-ratelimit-reset-token-counts").is_some());
        assert_eq!(answer.header("x-ratelimit-limit-requests"), None);
    }
    let refused = send_as(&gw, "tw-counter-key", "/v1/messages/count_tokens", &body).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.body["error"]["type"], "rate_limit_error");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key 'counter'"),
        "{}",
        refused.text
    );
    assert_eq!(
        refused.header("x-ratelimit-remaining-token-counts"),
        Some("0")
    );
    // The window resets when one more count fits, which is what retry-after says (in whole
    // seconds, rounded up), not when it is empty a minute later.
    let retry: f64 = refused.header("retry-after").unwrap().parse().unwrap();
    let reset = seconds(refused.header("x-ratelimit-reset-token-counts").unwrap());
    assert!(
        retry - 1.0 <= reset && reset <= retry,
        "reset {reset} s, retry-after {retry} s"
    );
    // Its requests have their own window, untouched by the counts.
    let mut sent = body.clone();
    sent["max_tokens"] = json!(16);
    let answer = send_as(&gw, "tw-counter-key", "/v1/messages", &sent).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("1"));
    for _ in 0..4 {
        let answer = count(&gw, &body).await;
        tokens(&answer);
        assert_eq!(answer.header("x-ratelimit-limit-token-counts"), None);
    }
    gw.shutdown().await;
}

/// A reset header's duration (`1m10.4s`, `30.396s`, `20ms`) in seconds.
fn seconds(text: &str) -> f64 {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let text = text.strip_suffix('s').unwrap();
    match text.split_once('m') {
        Some((minutes, rest)) => {
            minutes.parse::<f64>().unwrap() * 60.0 + rest.parse::<f64>().unwrap()
        }
        None => text.parse().unwrap(),
    }
}

/// A route whose first tier is Anthropic's asks Anthropic's own `count_tokens`, with the
/// provider's key, the request as the tier gets it and only the fields counting takes; its
/// figure is the answer (`x-tierwise-count: provider`), its 400 the client's error as it came.
#[tokio::test]
async fn an_anthropic_tier_is_asked_and_its_refusal_passed_on() {
    let (_local, anthropic, gw) = setup().await;
    anthropic.update(|b| b.prompt_tokens = 4242);
    let body = json!({"model": "agent", "system": "Be brief.", "messages": user(json!("Hi")),
        "tools": [{"name": "w", "input_schema": {"type": "object"}}]});
    let answer = count(&gw, &body).await;
    assert_eq!(tokens(&answer), 4242);
    assert_eq!(answer.header("x-tierwise-count"), Some("provider"));
    let asked = anthropic.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].path, "/v1/messages/count_tokens");
    assert_eq!(asked[0].x_api_key.as_deref(), Some("sk-ant-secret"));
    assert_eq!(asked[0].anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(asked[0].body["model"], "claude-sonnet-4-5");
    assert_eq!(asked[0].body["system"], "Be brief.");
    // The tier's temperature is for sending, which counting does not take.
    assert!(
        asked[0].body.get("temperature").is_none(),
        "{:?}",
        asked[0].body
    );

    let refusal = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "messages.0.content.0: Input tag 'imagee' found using 'type' does not match"}});
    anthropic.set_fault(Fault::Status {
        status: 400,
        body: Some(refusal.to_string()),
        retry_after: None,
    });
    let answer = count(&gw, &body).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.body, refusal);
    assert_eq!(answer.header("x-tierwise-count"), Some("provider"));
    gw.shutdown().await;
}

/// Anthropic's "prompt is too long" is not the request's fault: sending it, the chain goes on to
/// the next tier, so the count is that tier's estimate (`x-tierwise-count: estimate`), as
/// `/v1/messages` serves it there; only where no later tier can take it is the 400 passed on.
#[tokio::test]
async fn a_prompt_too_long_for_anthropic_counts_for_the_next_tier() {
    let (_local, anthropic, gw) = setup().await;
    let too_long = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "prompt is too long: 250000 tokens > 200000 maximum"}});
    anthropic.set_fault(Fault::Status {
        status: 400,
        body: Some(too_long.to_string()),
        retry_after: None,
    });
    let body = json!({"model": "agent", "messages": user(json!("Hi there"))});
    let answer = count(&gw, &body).await;
    assert_eq!(
        answer.header("x-tierwise-count"),
        Some("estimate"),
        "{}",
        answer.text
    );
    let mut as_local = body.clone();
    as_local["model"] = json!("local");
    assert_eq!(tokens(&answer), tokens(&count(&gw, &as_local).await));
    let mut sent = body.clone();
    sent["max_tokens"] = json!(9);
    let served = message(&gw, &sent).await;
    assert_eq!(served.status, 200, "{}", served.text);
    assert_eq!(served.header("x-tierwise-tier"), Some("local"));

    let alone = count(
        &gw,
        &json!({"model": "haiku", "messages": user(json!("Hi"))}),
    )
    .await;
    assert_eq!(alone.status, 400, "{}", alone.text);
    assert_eq!(alone.body, too_long);
    gw.shutdown().await;
}

/// Anthropic failing to count (500, 529, 401, a hang past the deadline) leaves the gateway's
/// estimate as the answer (`x-tierwise-count: estimate`), PDFs counted by their pages; the
/// failures feed no breaker (it opens at one) and a count takes no `max_in_flight` slot (the
/// provider's one slot serves a message while a count hangs).
#[tokio::test]
async fn anthropic_failures_answer_the_estimate_without_the_breaker_or_a_slot() {
    let (_local, anthropic, gw) = setup().await;
    let pdf = |text: &str| json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": STANDARD.encode(text)}}]);
    let two_pages = "%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Type /Page >> endobj\n3 0 obj << /Type /Pages /Count 2 >> endobj\n%%EOF";
    // Pages not visible (compressed object streams): a page a 50 KB.
    let compressed = "x".repeat(150_000);
    let estimated = |content: Value| {
        let gw = &gw;
        async move {
            let answer = count(gw, &json!({"model": "haiku", "messages": user(content)})).await;
            assert_eq!(
                answer.header("x-tierwise-count"),
                Some("estimate"),
                "{}",
                answer.text
            );
            tokens(&answer)
        }
    };
    for status in [500, 529, 401] {
        anthropic.set_fault(Fault::Status {
            status,
            body: None,
            retry_after: None,
        });
        let none = estimated(json!([])).await;
        assert_eq!(estimated(pdf(two_pages)).await - none, 6000, "{status}");
        assert_eq!(estimated(pdf(&compressed)).await - none, 9000, "{status}");
    }
    assert_eq!(gw.breaker_state("anthropic").await, "closed");

    // A count that hangs holds no slot: a message to the same provider is answered meanwhile.
    anthropic.set_behavior(tierwise_fake::Behavior {
        fault: Fault::Hang,
        fault_model: Some("claude-haiku-4-5".into()),
        ..Default::default()
    });
    let asked_before = anthropic.requests().len();
    let hanging = tokio::spawn({
        let url = gw.url.clone();
        let http = gw.http.clone();
        async move {
            let response = http
                .post(format!("{url}/v1/messages/count_tokens"))
                .header("x-api-key", CLIENT_KEY)
                .header("content-type", "application/json")
                .body(json!({"model": "haiku", "messages": user(json!("Hi"))}).to_string())
                .send()
                .await
                .unwrap();
            Answer::of(response).await
        }
    });
    wait_until(
        "the count to reach Anthropic",
        Duration::from_secs(5),
        || anthropic.requests().len() > asked_before,
    )
    .await;
    let answer = message(
        &gw,
        &json!({"model": "claude", "max_tokens": 9, "messages": user(json!("Hi"))}),
    )
    .await;
    answer.assert_served_by_first("claude");
    let hung = hanging.await.unwrap();
    assert_eq!(
        hung.header("x-tierwise-count"),
        Some("estimate"),
        "{}",
        hung.text
    );
    tokens(&hung);
    assert_eq!(gw.breaker_state("anthropic").await, "closed");
    gw.shutdown().await;
}

/// At most four counts of a provider are out at once: with four hanging at Anthropic, a fifth
/// is answered with the estimate without a call.
#[tokio::test]
async fn a_providers_counts_out_at_once_are_capped() {
    let (_local, anthropic, gw) = setup().await;
    anthropic.set_behavior(tierwise_fake::Behavior {
        fault: Fault::Hang,
        fault_model: Some("claude-haiku-4-5".into()),
        ..Default::default()
    });
    let body = json!({"model": "haiku", "messages": user(json!("Hi"))});
    let hanging: Vec<_> = (0..tierwise::health::MAX_COUNTS_IN_FLIGHT)
        .map(|_| {
            let (url, http, body) = (gw.url.clone(), gw.http.clone(), body.to_string());
            tokio::spawn(async move {
                http.post(format!("{url}/v1/messages/count_tokens"))
                    .header("x-api-key", CLIENT_KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
            })
        })
        .collect();
    wait_until(
        "the counts to reach Anthropic",
        Duration::from_secs(5),
        || anthropic.requests().len() == tierwise::health::MAX_COUNTS_IN_FLIGHT,
    )
    .await;
    let answer = count(&gw, &body).await;
    assert_eq!(
        answer.header("x-tierwise-count"),
        Some("estimate"),
        "{}",
        answer.text
    );
    tokens(&answer);
    assert_eq!(
        anthropic.requests().len(),
        tierwise::health::MAX_COUNTS_IN_FLIGHT,
        "the fifth count was sent"
    );
    for hung in hanging {
        hung.await.unwrap().unwrap();
    }
    gw.shutdown().await;
}

/// On the Messages paths the key in `x-api-key` wins over `Authorization: Bearer` when both are
/// sent, as Anthropic's SDKs send their key there.
#[tokio::test]
async fn x_api_key_wins_over_a_bearer_key() {
    let (_local, _anthropic, gw) = setup().await;
    let body = json!({"model": "summarize", "max_tokens": 9, "messages": user(json!("Hi"))});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let response = gw
            .http
            .post(format!("{}{path}", gw.url))
            .header("x-api-key", CLIENT_KEY)
            .bearer_auth("sk-someone-elses")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let answer = Answer::of(response).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        // An empty x-api-key is no key: the Bearer is read.
        let response = gw
            .http
            .post(format!("{}{path}", gw.url))
            .header("x-api-key", "")
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let answer = Answer::of(response).await;
        assert_eq!(
            answer.status, 200,
            "{path}, empty x-api-key: {}",
            answer.text
        );
    }
    gw.shutdown().await;
}
