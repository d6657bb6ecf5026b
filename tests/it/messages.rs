//! `POST /v1/messages`, Anthropic's Messages API in front: served through chat completions (the
//! request as the chat server gets it, the message and the stream events in Anthropic's shapes),
//! passed through to a tier of Anthropic's format, errors in Anthropic's shape, the key in
//! `x-api-key`, a fallback, a stream cut by the upstream, and `count_tokens`.

use std::time::Duration;

use crate::util::*;
use serde_json::{Value, json};
use tierwise::config::file::{RawClientBetas, RawProvider, RawRouteCache, RawTier, spanned, text};
use tierwise_fake::{FakeToolCall, FakeUpstream, Fault};

/// `local` and `api_fast` behind `summarize`, and `claude` (Anthropic's format) behind `agent`,
/// before `local`.
async fn setup() -> (FakeUpstream, FakeUpstream, FakeUpstream, TestGateway) {
    setup_where(|_| {}).await
}

/// [`setup`]'s gateway with `change` made to its config.
async fn setup_where(
    change: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(tierwise::config::Api::Anthropic);
            provider.api_key = Some(text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("anthropic"), provider);
            let mut claude = RawTier::new("anthropic", "claude-sonnet-4-5");
            claude.temperature = Some(spanned(0.3));
            c.0.tiers.insert(text("claude"), claude);
            c.add_route(
                "agent",
                tierwise::config::TaskKind::Agentic,
                &["claude", "local"],
            );
            let cached = c.add_route(
                "cached_agent",
                tierwise::config::TaskKind::Agentic,
                &["claude"],
            );
            cached.cache = Some(RawRouteCache {
                ttl: text("1h"),
                scope: None,
                nondeterministic: Some(true),
            });
        })
        .with(change);
    let gw = TestGateway::start(&config).await;
    (local, api, anthropic, gw)
}

/// A stream's events, each its `event:` name and its data as JSON, named as its type.
fn events_of(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|event| event.lines().any(|line| line.starts_with("data: ")))
        .map(|event| {
            let mut name = String::new();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    name = rest.to_string();
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data.push_str(rest);
                }
            }
            let data: Value =
                serde_json::from_str(&data).unwrap_or_else(|_| panic!("not JSON: {event}"));
            assert_eq!(data["type"], name.as_str(), "named as its type: {event}");
            (name, data)
        })
        .collect()
}

/// Sends `request` to `path` with the key as Anthropic's SDK sends it.
async fn send(gw: &TestGateway, path: &str, request: &Value) -> Answer {
    let response = gw
        .http
        .post(format!("{}{path}", gw.url))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(request.to_string())
        .send();
    let answer = async { Answer::of(response.await.expect("the gateway answers")).await };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer comes instead of hanging")
}

async fn message(gw: &TestGateway, request: Value) -> Answer {
    send(gw, "/v1/messages", &request).await
}

/// Asserts an Anthropic-shaped error of this status and type, and returns its message.
fn anthropic_error(answer: &Answer, status: u16, kind: &str) -> String {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.body["type"], "error", "{}", answer.text);
    assert_eq!(answer.body["error"]["type"], kind, "{}", answer.text);
    assert!(answer.body.get("code").is_none(), "{}", answer.text);
    answer.body["error"]["message"]
        .as_str()
        .expect("a message")
        .to_string()
}

fn weather_tool() -> Value {
    json!({"name": "weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

/// A plain request, the key in `x-api-key`: the chat server gets the system prompt, the turns, the
/// client's limit, stop sequences and `top_k` (a vLLM server takes it), the user id; the client
/// gets a message with a `msg_` id, a text block, `end_turn` and the usage in Anthropic's words;
/// the ledger names the endpoint.
#[tokio::test]
async fn a_plain_request_is_sent_as_chat_and_answered_as_a_message() {
    let (local, _api, _anthropic, gw) = setup().await;
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": "Hi there"}], "stop_sequences": ["END"],
            "top_k": 5, "metadata": {"user_id": "u-1"}}),
    )
    .await;
    answer.assert_served_by_first("local");
    let body = &answer.body;
    assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Hello from the fake upstream."}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["input_tokens"], 20);
    assert_eq!(body["usage"]["output_tokens"], 5);

    let sent = &local.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])
    );
    assert_eq!(sent.body["max_tokens"], 64);
    assert_eq!(sent.body["stop"], json!(["END"]));
    assert_eq!(sent.body["top_k"], 5);
    assert_eq!(sent.body["user"], "u-1");
    assert_eq!(sent.body["temperature"], 0.1, "the tier's default");
    assert_eq!(sent.body["model"], "mistral-7b");

    let row = stored(
        &gw.store().await,
        answer.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert_eq!(row.endpoint, "messages");
    assert_eq!((row.tokens_in, row.tokens_out), (20, 5));
    gw.shutdown().await;
}

/// A stream: Anthropic's events in its documented order with one message id, the deltas making
/// the text, `message_delta` with the stop reason and the usage; the ledger has the tokens.
#[tokio::test]
async fn a_stream_has_anthropics_events_in_order() {
    let (local, _api, _anthropic, gw) = setup().await;
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    answer.assert_served_by_first("local");
    let events = events_of(&answer.text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas > 1, "{names:?}");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    assert!(
        events[0].1["message"]["id"]
            .as_str()
            .unwrap()
            .starts_with("msg_")
    );
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, event)| {
            assert_eq!(event["index"], 0);
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["input_tokens"], 20);
    assert_eq!(delta["usage"]["output_tokens"], 5);

    let row = stored(
        &gw.store().await,
        answer.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert_eq!(
        (row.endpoint.as_ref(), row.status, row.error_kind.as_deref()),
        ("messages", 200, None)
    );
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (20, 5, false)
    );

    // A server that reports no usage: the gateway's estimate is booked (and flagged), never 0,
    // and the client's final usage says the estimated output.
    local.update(|b| b.stream_without_usage = true);
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let events = events_of(&answer.text);
    let delta = &events[events.len() - 2].1;
    assert!(
        delta["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{delta}"
    );
    let row = stored(
        &gw.store().await,
        answer.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert!(row.tokens_estimated, "{row:?}");
    assert!(row.tokens_in > 0 && row.tokens_out > 0, "{row:?}");
    gw.shutdown().await;
}

/// Tools both ways: a tool definition, an earlier `tool_use` and its `tool_result` go to chat as
/// tools, a tool call and a tool message; the answer's calls come back as `tool_use` blocks with
/// `stop_reason: tool_use`, whole and streamed as `input_json_delta`s.
#[tokio::test]
async fn tools_and_tool_results_translate_both_ways() {
    let (local, _api, _anthropic, gw) = setup().await;
    local.update(|b| {
        b.reply = String::new();
        b.tool_calls = vec![FakeToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }];
    });
    let request = json!({
        "model": "summarize", "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "Weather in Rome and Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_0", "name": "weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": [{"type": "text", "text": "sunny"}]}]},
        ],
        "tools": [weather_tool()],
        "tool_choice": {"type": "tool", "name": "weather"},
    });
    let answer = message(&gw, request.clone()).await;
    answer.assert_served_by_first("local");
    assert_eq!(
        answer.body["content"],
        json!([{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}])
    );
    assert_eq!(answer.body["stop_reason"], "tool_use");
    let sent = &local.requests()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Rome and Paris?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_0", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"},
        ])
    );
    assert_eq!(
        sent["tools"][0],
        json!({"type": "function", "function": {"name": "weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "weather"}})
    );

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let answer = message(&gw, streamed).await;
    let events = events_of(&answer.text);
    assert_eq!(events[1].0, "content_block_start");
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {}})
    );
    let arguments: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, event)| {
            assert_eq!(event["delta"]["type"], "input_json_delta");
            event["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(arguments, r#"{"city": "Paris"}"#);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    gw.shutdown().await;
}

/// Errors in Anthropic's shape with Anthropic's statuses: a missing `max_tokens`, a field that is
/// not Anthropic's, an unknown model, a wrong or missing key, an upstream's own refusal, every tier
/// down; none reaches an upstream but the refusal's.
#[tokio::test]
async fn errors_are_anthropic_shaped() {
    let (local, api, _anthropic, gw) = setup().await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let answer = message(&gw, json!({"model": "summarize", "messages": hi})).await;
    let said = anthropic_error(&answer, 400, "invalid_request_error");
    assert!(said.contains("max_tokens"), "{said}");
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "logprobs": true}),
    )
    .await;
    let said = anthropic_error(&answer, 400, "invalid_request_error");
    assert!(said.contains("logprobs"), "{said}");
    let answer = message(
        &gw,
        json!({"model": "nope", "max_tokens": 9, "messages": hi}),
    )
    .await;
    anthropic_error(&answer, 404, "not_found_error");
    assert_eq!(local.request_count() + api.request_count(), 0);

    let wrong = gw
        .http
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", "sk-wrong")
        .header("content-type", "application/json")
        .body(json!({"model": "summarize", "max_tokens": 9, "messages": hi}).to_string())
        .send()
        .await
        .unwrap();
    anthropic_error(&Answer::of(wrong).await, 401, "authentication_error");
    let missing = gw
        .http
        .post(format!("{}/v1/messages/count_tokens", gw.url))
        .header("content-type", "application/json")
        .body(json!({"model": "summarize", "messages": hi}).to_string())
        .send()
        .await
        .unwrap();
    let said = anthropic_error(&Answer::of(missing).await, 401, "authentication_error");
    assert!(said.contains("x-api-key"), "{said}");
    // Chat's errors stay OpenAI's.
    let chat = json!({"model": "nope", "messages": hi});
    Answer::of(gw.post("/v1/chat/completions", &chat).await)
        .await
        .error(404, Some("model_not_found"));

    local.set_fault(Fault::Status {
        status: 400,
        body: Some(json!({"error": {"message": "bad prompt", "type": "invalid_request_error", "param": null, "code": null}}).to_string()),
        retry_after: None,
    });
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi}),
    )
    .await;
    let said = anthropic_error(&answer, 400, "invalid_request_error");
    assert!(said.contains("bad prompt"), "{said}");

    for fake in [&local, &api] {
        fake.set_fault(Fault::Status {
            status: 503,
            body: None,
            retry_after: None,
        });
    }
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi}),
    )
    .await;
    assert!(answer.status >= 500, "{}", answer.text);
    assert_eq!(answer.body["type"], "error", "{}", answer.text);
    gw.shutdown().await;
}

/// A tier that is down falls back to the next, translated again for it; a stream cut by the
/// upstream after the client saw events ends with Anthropic's `error` event, and the ledger says
/// it broke.
#[tokio::test]
async fn a_fallback_and_a_cut_stream() {
    let (local, api, _anthropic, gw) = setup().await;
    let store = gw.store().await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "top_k": 5}),
    )
    .await;
    answer.assert_served_by("api_fast", "local:http_503");
    assert_eq!(answer.body["type"], "message");
    assert_eq!(api.requests()[0].path, "/v1/chat/completions");
    assert!(
        api.requests()[0].body.get("top_k").is_none(),
        "OpenAI's models take no top_k"
    );

    local.set_fault(Fault::CutAfterChunks { chunks: 3 });
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "message_start");
    let (name, error) = events.last().unwrap();
    assert_eq!(name, "error", "{}", answer.text);
    assert_eq!(error["error"]["type"], "api_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{error}"
    );
    assert!(!answer.text.contains("message_stop"), "{}", answer.text);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref()),
        (200, Some("stream_broken"))
    );
    gw.shutdown().await;
}

/// A tier of Anthropic's format gets the request as the client wrote it (the tier's model and
/// temperature added, Anthropic-only fields kept) and the client its answer as it came, whole and
/// streamed event by event; the usage is read exactly from both. A fallback from it lands on a
/// chat tier, translated.
#[tokio::test]
async fn an_anthropic_tier_gets_messages_passed_through() {
    let (local, _api, anthropic, gw) = setup().await;
    let store = gw.store().await;
    anthropic.update(|b| {
        b.cached_tokens = 4;
    });
    let request = json!({"model": "agent", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}], "service_tier": "auto",
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        // Fields newer than the gateway, which Anthropic takes: passed on as they are.
        "output_config": {"effort": "low"}, "inference_geo": "us",
        "cache_control": {"type": "ephemeral"}});
    let answer = message(&gw, request.clone()).await;
    answer.assert_served_by_first("claude");
    assert_eq!(answer.body["id"], "msg_fake", "the server's own answer");
    assert_eq!(answer.body["usage"]["cache_read_input_tokens"], 4);
    let sent = &anthropic.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    let mut expected = request.clone();
    expected["model"] = json!("claude-sonnet-4-5");
    expected["temperature"] = json!(0.3);
    assert_eq!(sent.body, expected);
    assert_eq!(sent.x_api_key.as_deref(), Some("sk-ant-secret"));
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (20, 5, false)
    );

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let answer = message(&gw, streamed).await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].1["message"]["id"], "msg_fake");
    assert_eq!(events.last().unwrap().0, "message_stop");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (20, 5, false),
        "message_start's input and message_delta's output"
    );

    // Down: the next tier is a chat server, which cannot take enabled thinking; without it, the
    // request is translated.
    anthropic.set_fault(Fault::Status {
        status: 529,
        body: None,
        retry_after: None,
    });
    let answer = message(&gw, request.clone()).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.body["type"], "error");
    assert_eq!(local.request_count(), 0);
    let mut plain = request;
    plain.as_object_mut().unwrap().remove("thinking");
    plain.as_object_mut().unwrap().remove("service_tier");
    plain.as_object_mut().unwrap().remove("cache_control");
    plain.as_object_mut().unwrap().remove("inference_geo");
    let answer = message(&gw, plain.clone()).await;
    let said = anthropic_error(&answer, 400, "invalid_request_error");
    assert!(said.contains("output_config"), "{said}");
    assert_eq!(local.request_count(), 0);
    plain.as_object_mut().unwrap().remove("output_config");
    let answer = message(&gw, plain).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert!(answer.body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(local.requests()[0].path, "/v1/chat/completions");
    gw.shutdown().await;
}

/// `count_tokens` answers the first tier's estimate without calling any upstream; the route's
/// system prompt counts, a body without messages is refused in Anthropic's shape.
#[tokio::test]
async fn count_tokens_estimates_without_calling_upstream() {
    let (local, api, anthropic, gw) = setup().await;
    let short = send(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "summarize", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(short.status, 200, "{}", short.text);
    let short = short.body["input_tokens"].as_u64().unwrap();
    assert!(short > 0);
    let long = send(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "summarize", "system": "You answer questions about the weather in great detail.",
            "messages": [{"role": "user", "content": "Hi"}], "tools": [weather_tool()]}),
    )
    .await;
    assert!(
        long.body["input_tokens"].as_u64().unwrap() > short + 10,
        "{}",
        long.text
    );
    let refused = send(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "summarize"}),
    )
    .await;
    anthropic_error(&refused, 400, "invalid_request_error");
    assert_eq!(
        local.request_count() + api.request_count() + anthropic.request_count(),
        0
    );
    gw.shutdown().await;
}

/// Sends `request` to `/v1/messages` with the key as Anthropic's SDK sends it and these headers
/// besides.
async fn message_with(gw: &TestGateway, request: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut sent = gw
        .http
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", CLIENT_KEY)
        .header("content-type", "application/json");
    for (name, value) in headers {
        sent = sent.header(*name, *value);
    }
    let response = sent.body(request.to_string()).send();
    let answer = async { Answer::of(response.await.expect("the gateway answers")).await };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer comes instead of hanging")
}

/// An Anthropic tier given the request as it came gets the client's `anthropic-beta` headers (a
/// comma-separated list and a repeated header, as they came) and its `anthropic-version` over the
/// provider's; without one, the provider's. Nothing else of the client's headers goes on: the
/// tier gets the provider's key, never the client's. A chat tier gets none of them.
#[tokio::test]
async fn an_anthropic_tier_gets_the_clients_version_and_betas_and_a_chat_tier_none() {
    let (local, _api, anthropic, gw) = setup().await;
    let hi =
        json!({"model": "agent", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]});
    let headers = [
        ("anthropic-version", "2023-01-01"),
        (
            "anthropic-beta",
            "prompt-caching-2024-07-31,context-1m-2025-08-07",
        ),
        ("anthropic-beta", "token-efficient-tools-2025-02-19"),
        ("x-client-secret", "do-not-forward"),
    ];
    let answer = message_with(&gw, &hi, &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = &anthropic.requests()[0];
    assert_eq!(
        sent.anthropic_beta,
        [
            "prompt-caching-2024-07-31,context-1m-2025-08-07",
            "token-efficient-tools-2025-02-19"
        ]
    );
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-01-01"));
    assert_eq!(sent.x_api_key.as_deref(), Some("sk-ant-secret"));
    assert_eq!(sent.authorization, None);

    // Streamed too; and without the client's version, the provider's.
    let mut streamed = hi.clone();
    streamed["stream"] = json!(true);
    let answer = message_with(&gw, &streamed, &headers[1..2]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = &anthropic.requests()[1];
    assert_eq!(
        sent.anthropic_beta,
        ["prompt-caching-2024-07-31,context-1m-2025-08-07"]
    );
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));

    // A chat tier: translated, so the Messages headers mean nothing there.
    let mut chat = hi;
    chat["model"] = json!("summarize");
    let answer = message_with(&gw, &chat, &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = &local.requests()[0];
    assert!(sent.anthropic_beta.is_empty(), "{sent:?}");
    assert_eq!(sent.anthropic_version, None);
    gw.shutdown().await;
}

/// The operator decides what of the client's headers its Anthropic account gets: only the betas
/// `client_betas` names, and `client_version = false` keeps `api_version`. Headers that are not
/// what Anthropic takes (an empty version, two versions, a beta that is not a name, a header over
/// the bounds) are the client's 400, in Anthropic's shape, before any tier is called.
#[tokio::test]
async fn the_operator_chooses_the_betas_and_version_its_account_gets() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(tierwise::config::Api::Anthropic);
            provider.api_key = Some(text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            provider.client_betas = Some(spanned(RawClientBetas::Names(vec![
                "prompt-caching-2024-07-31".into(),
                "token-efficient-tools-2025-02-19".into(),
            ])));
            provider.client_version = Some(spanned(false));
            c.0.providers.insert(text("anthropic"), provider);
            c.0.tiers.insert(
                text("claude"),
                RawTier::new("anthropic", "claude-sonnet-4-5"),
            );
        });
    let gw = TestGateway::start(&config).await;
    let hi = json!({"model": "claude", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]});
    let answer = message_with(
        &gw,
        &hi,
        &[
            ("anthropic-version", "2099-01-01"),
            (
                "anthropic-beta",
                "prompt-caching-2024-07-31, context-1m-2025-08-07",
            ),
            ("anthropic-beta", "files-api-2025-04-14"),
            ("anthropic-beta", "token-efficient-tools-2025-02-19"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = &anthropic.requests()[0];
    assert_eq!(
        sent.anthropic_beta,
        [
            "prompt-caching-2024-07-31",
            "token-efficient-tools-2025-02-19"
        ]
    );
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));

    let long = "a".repeat(2000);
    let many: Vec<(&str, &str)> = std::iter::repeat_n(("anthropic-beta", "b"), 17).collect();
    for headers in [
        vec![("anthropic-version", "")],
        vec![
            ("anthropic-version", "2023-06-01"),
            ("anthropic-version", "2023-01-01"),
        ],
        vec![("anthropic-version", "2023-06-01,2023-01-01")],
        vec![("anthropic-beta", "a beta; with=stuff")],
        vec![("anthropic-beta", " , ")],
        vec![("anthropic-beta", long.as_str())],
        many,
    ] {
        let answer = message_with(&gw, &hi, &headers).await;
        let said = anthropic_error(&answer, 400, "invalid_request_error");
        assert!(said.contains("anthropic-"), "{said}");
    }
    assert_eq!(anthropic.requests().len(), 1, "no tier called");
    gw.shutdown().await;
}

/// Upstreams overloaded — an Anthropic tier's 529, or every tier's 503 — reach a Messages client as
/// Anthropic's 529 `overloaded_error` (the SDK's `OverloadedError`), recorded so in the ledger; the
/// same failure on chat completions keeps the gateway's OpenAI status.
#[tokio::test]
async fn overloaded_upstreams_are_anthropics_529_on_messages_only() {
    let (local, api, anthropic, gw) = setup().await;
    let store = gw.store().await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    anthropic.set_fault(Fault::Status {
        status: 529,
        body: None,
        retry_after: None,
    });
    let answer = message(
        &gw,
        json!({"model": "claude", "max_tokens": 9, "messages": hi}),
    )
    .await;
    let said = anthropic_error(&answer, 529, "overloaded_error");
    assert!(said.contains("claude"), "{said}");
    assert!(said.contains("answered HTTP 529"), "{said}");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.status, 529);

    for fake in [&local, &api] {
        fake.set_fault(Fault::Status {
            status: 503,
            body: None,
            retry_after: None,
        });
    }
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    anthropic_error(&answer, 529, "overloaded_error");

    let chat = gw.ask("claude").await;
    assert_eq!(chat.status, 502, "{}", chat.text);
    assert!(chat.body["error"]["message"].is_string(), "{}", chat.text);
    gw.shutdown().await;
}

/// Anthropic reports an overload in a stream as `message_start` then an `overloaded_error` event:
/// before any content, that is the tier's failure like a 529 — the next tier answers, and from the
/// last one the client gets the 529 — passed through or written from a chat server's stream alike.
/// After content, the stream ends with the error event as before.
#[tokio::test]
async fn an_overload_right_after_message_start_falls_back() {
    let (local, api, anthropic, gw) = setup().await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    anthropic.set_fault(Fault::ErrorMidStream { after: 1 });
    let request = json!({"model": "agent", "max_tokens": 9, "messages": hi, "stream": true});
    let answer = message(&gw, request.clone()).await;
    answer.assert_served_by("local", "claude:http_529");
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "message_start", "{}", answer.text);
    assert!(
        events.iter().all(|(name, _)| name != "error"),
        "{}",
        answer.text
    );
    assert_eq!(events.last().unwrap().0, "message_stop");

    let answer = message(
        &gw,
        json!({"model": "claude", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    anthropic_error(&answer, 529, "overloaded_error");

    // A chat server's error right after its opening chunk, written as Messages' events.
    local.set_fault(Fault::ErrorMidStream { after: 1 });
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("api_fast"),
        "{}",
        answer.text
    );
    assert!(
        answer
            .header("x-tierwise-fallback")
            .is_some_and(|said| said.starts_with("local:")),
        "{:?}",
        answer.header("x-tierwise-fallback")
    );
    drop(api);

    // Content sent: the stream ends with the upstream's error event.
    anthropic.set_fault(Fault::ErrorMidStream { after: 4 });
    let answer = message(&gw, request).await;
    answer.assert_served_by_first("claude");
    assert_eq!(events_of(&answer.text).last().unwrap().0, "error");
    gw.shutdown().await;
}

/// A tier that opens its stream — Anthropic's `message_start`, or a chat server's role-only chunk
/// that the gateway writes as one — and then sends nothing of its answer, only pings and
/// keep-alives or nothing at all, has given the client nothing (the opening is held until the
/// answer begins): `first_byte_ms` bounds the wait for its answer as it bounds the wait for its
/// first event, and the next tier answers, however long `idle_ms` and `total_ms` are.
#[tokio::test]
async fn a_tier_that_opens_its_stream_and_then_stalls_falls_back_at_first_byte_ms() {
    let (local, _api, anthropic, gw) = setup_where(|c| {
        for provider in c.0.providers.values_mut() {
            provider.timeout.first_byte_ms = Some(500);
            provider.timeout.idle_ms = Some(30_000);
            provider.timeout.total_ms = Some(60_000);
        }
    })
    .await;
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let forever = Fault::Heartbeats {
        after: 1,
        every_ms: 100,
        count: None,
    };
    let silent = Fault::Heartbeats {
        after: 1,
        every_ms: 60_000,
        count: Some(1),
    };
    for fault in [forever.clone(), silent] {
        anthropic.set_fault(fault.clone());
        let started = std::time::Instant::now();
        let answer = message(
            &gw,
            json!({"model": "agent", "max_tokens": 9, "messages": hi, "stream": true}),
        )
        .await;
        answer.assert_served_by("local", "claude:timeout_first_byte");
        assert!(started.elapsed() < Duration::from_secs(5), "{fault:?}");
        let events = events_of(&answer.text);
        assert_eq!(events[0].0, "message_start", "{}", answer.text);
        assert_eq!(events.last().unwrap().0, "message_stop", "{}", answer.text);
    }
    anthropic.set_fault(Fault::None);

    // A chat server's role-only chunk, then keep-alives without end.
    local.set_fault(forever);
    let started = std::time::Instant::now();
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    answer.assert_served_by("api_fast", "local:timeout_first_byte");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.shutdown().await;
}

/// Pings while the opening is held are not queued without bound: the client gets one of them
/// before the answer begins, however many the tier sent (a ping flood would otherwise grow the
/// gateway's memory until `first_byte_ms`).
#[tokio::test]
async fn pings_while_the_opening_is_held_are_kept_to_one() {
    let (_local, _api, anthropic, gw) = setup().await;
    anthropic.set_fault(Fault::Heartbeats {
        after: 1,
        every_ms: 1,
        count: Some(40),
    });
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let answer = message(
        &gw,
        json!({"model": "agent", "max_tokens": 9, "messages": hi, "stream": true}),
    )
    .await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "message_start", "{}", answer.text);
    let opening: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_str())
        .take_while(|name| *name != "content_block_start")
        .collect();
    assert_eq!(opening, ["message_start", "ping"], "{}", answer.text);
    assert_eq!(events.last().unwrap().0, "message_stop", "{}", answer.text);
    gw.shutdown().await;
}

/// What a client's SDK assembles from a stream's events: each content block's id (or "text")
/// and its deltas joined; checking on the way that one block is open at a time and that every
/// delta goes to the open block.
fn assembled(events: &[(String, Value)]) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut open = None;
    for (name, data) in events {
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "a block opened over another: {events:?}");
                open = data["index"].as_u64();
                assert_eq!(open, Some(blocks.len() as u64), "{events:?}");
                let id = data["content_block"]["id"].as_str().unwrap_or("text");
                blocks.push((id.to_string(), String::new()));
            }
            "content_block_delta" => {
                assert_eq!(
                    data["index"].as_u64(),
                    open,
                    "a delta to a closed block: {events:?}"
                );
                let delta = &data["delta"];
                let piece = delta["partial_json"].as_str().or(delta["text"].as_str());
                blocks.last_mut().unwrap().1.push_str(piece.unwrap());
            }
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open, "{events:?}");
                open = None;
            }
            _ => {}
        }
    }
    blocks
}

/// A chat server that interleaves parallel tool calls' argument fragments: each call's block
/// holds its own whole arguments, none lost nor sent to a block already stopped.
#[tokio::test]
async fn interleaved_parallel_tool_calls_each_keep_their_arguments() {
    let (local, _api, _anthropic, gw) = setup().await;
    local.update(|b| {
        b.reply = String::new();
        b.interleave_tool_calls = true;
        b.tool_calls = vec![
            FakeToolCall {
                id: "call_a".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Oslo","unit":"celsius"}"#.into(),
            },
            FakeToolCall {
                id: "call_b".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Lima","unit":"fahrenheit"}"#.into(),
            },
        ];
    });
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 64, "stream": true, "tools": [weather_tool()],
            "messages": [{"role": "user", "content": "Weather in Oslo and Lima?"}]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let blocks = assembled(&events_of(&answer.text));
    let blocks: Vec<(&str, Value)> = blocks
        .iter()
        .map(|(id, input)| (id.as_str(), serde_json::from_str(input).unwrap()))
        .collect();
    assert_eq!(
        blocks,
        [
            ("call_a", json!({"city": "Oslo", "unit": "celsius"})),
            ("call_b", json!({"city": "Lima", "unit": "fahrenheit"})),
        ]
    );
    gw.shutdown().await;
}

/// A stream translated from chat: `message_start` says the gateway's estimate of the prompt (as
/// `count_tokens` counts it), `message_delta` the upstream's own counts, and the ledger books the
/// upstream's; without the upstream's usage, the ledger books the gateway's count flagged as
/// estimated, never `message_start`'s figure as exact.
#[tokio::test]
async fn a_translated_stream_says_the_prompts_estimate_first_and_the_upstreams_count_last() {
    let (local, _api, _anthropic, gw) = setup().await;
    let store = gw.store().await;
    let request = json!({"model": "summarize", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "What is the weather like in Oslo in December?"}]});
    let mut counted = request.clone();
    counted.as_object_mut().unwrap().remove("stream");
    counted.as_object_mut().unwrap().remove("max_tokens");
    let estimate = send(&gw, "/v1/messages/count_tokens", &counted).await;
    let estimate = estimate.body["input_tokens"].as_u64().expect("a count");

    let answer = message(&gw, request.clone()).await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "message_start");
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], estimate);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["usage"]["input_tokens"], 20, "{delta}");
    assert_eq!(delta["usage"]["output_tokens"], 5, "{delta}");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (20, 5, false)
    );

    local.update(|b| b.stream_without_usage = true);
    let answer = message(&gw, request.clone()).await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], estimate);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.tokens_estimated, "{row:?}");

    // Only tool calls, no usage: their names and arguments are the output estimated, not 0 — on
    // Messages and on chat completions alike.
    local.update(|b| {
        b.reply = String::new();
        b.tool_calls = vec![FakeToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city": "Paris", "unit": "celsius", "days": 3}"#.into(),
        }];
    });
    let answer = message(&gw, request).await;
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.tokens_estimated && row.tokens_out >= 10, "{row:?}");
    let answer = gw.ask_stream("summarize").await;
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.tokens_estimated && row.tokens_out >= 10, "{row:?}");
    gw.shutdown().await;
}

/// A long prompt's `message_start` says a sampled estimate (pieces of its text spread over it,
/// the rest scaled), not the count of all of it, which a fast upstream's first byte would
/// otherwise wait on (~1.4 s for 1 MB in a debug build): near `count_tokens`' whole count but
/// not it. The time is measured in docs/benchmarks.md, the error on mixed prompts by the unit
/// test `openai::tokens::tests::an_estimate_samples_every_text_of_a_mixed_prompt_at_its_own_density`.
/// A short prompt's is that count exactly (above).
#[tokio::test]
async fn a_long_prompts_message_start_says_a_sampled_estimate_not_the_whole_count() {
    let (_local, _api, _anthropic, gw) =
        setup_where(|c| c.0.server.max_body_bytes = Some(spanned(4_000_000))).await;
    let words = [
        "The",
        "quarterly",
        "report",
        "shows",
        "revenue",
        "grew",
        "12.5%",
        "while",
        "costs",
        "in",
        "the",
        "northern",
        "region",
        "fell;",
        "see",
        "table",
        "4",
        "(page",
        "17).",
        "收入",
    ];
    let text: Vec<&str> = (0..180_000)
        .map(|at| words[(at * 7 + at / 3) % words.len()])
        .collect();
    let text = text.join(" ");
    assert!(text.len() > 1_000_000);
    let messages = json!([{"role": "user", "content": text}]);
    let counted = send(
        &gw,
        "/v1/messages/count_tokens",
        &json!({"model": "summarize", "messages": messages}),
    )
    .await;
    let whole = counted.body["input_tokens"].as_u64().expect("a count");
    let answer = message(
        &gw,
        json!({"model": "summarize", "max_tokens": 16, "stream": true, "messages": messages}),
    )
    .await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "message_start", "{}", answer.text);
    let said = events[0].1["message"]["usage"]["input_tokens"]
        .as_u64()
        .expect("a count");
    assert_ne!(said, whole, "an estimate, not the prompt counted whole");
    assert!(
        said.abs_diff(whole) * 100 < whole,
        "{said} is within a percent of {whole}"
    );
    gw.shutdown().await;
}

/// claude-sonnet-4-5 at $3 input, $0.30 cache reads, $3.75 cache writes and $15 output per
/// million: 700 × 3 + 200 × 0.30 + 100 × 3.75 + 50 × 15 µUSD.
const CACHED_COST_PUSD: i64 =
    (700 * 3_000_000) + (200 * 300_000) + (100 * 3_750_000) + (50 * 15_000_000);

/// A passed-through Anthropic stream whose `message_delta` repeats the input but leaves out the
/// cache's figures, or gives them as `null`: the ledger keeps `message_start`'s cache reads and
/// writes (booking them as uncached or free under-books or over-books the cost). The same holds
/// for a chat client served by the Anthropic tier through the provider's wire.
#[tokio::test]
async fn a_message_delta_without_cache_figures_keeps_message_starts() {
    let (_local, _api, anthropic, gw) = setup().await;
    let store = gw.store().await;
    for delta_usage in [
        json!({"input_tokens": 700, "output_tokens": 50}),
        json!({"input_tokens": 700, "cache_creation_input_tokens": null, "cache_read_input_tokens": null, "output_tokens": 50}),
    ] {
        anthropic.update(|b| {
            b.prompt_tokens = 1000;
            b.cached_tokens = 200;
            b.cache_write_tokens = 100;
            b.completion_tokens = 50;
            b.message_delta_usage = Some(delta_usage.clone());
        });
        let answer = message(
            &gw,
            json!({"model": "agent", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert_eq!(
            (
                row.tokens_in,
                row.tokens_cached,
                row.tokens_cache_write,
                row.tokens_out,
                row.tokens_estimated
            ),
            (1000, 200, 100, 50, false),
            "{delta_usage}"
        );
        assert_eq!(
            row.cost_pusd.map(|c| c.0),
            Some(CACHED_COST_PUSD),
            "{delta_usage}"
        );

        let mut chat = chat("claude", "Hi");
        chat["stream"] = json!(true);
        let answer = Answer::of(gw.post("/v1/chat/completions", &chat).await).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert_eq!(
            (
                row.tokens_in,
                row.tokens_cached,
                row.tokens_cache_write,
                row.tokens_out
            ),
            (1000, 200, 100, 50),
            "{delta_usage}"
        );
        assert_eq!(
            row.cost_pusd.map(|c| c.0),
            Some(CACHED_COST_PUSD),
            "{delta_usage}"
        );
    }
    gw.shutdown().await;
}

/// `GET /v1/models` with the key in `x-api-key` (Anthropic's SDK, Claude-Code-style clients): in
/// Anthropic's list shape where the client sends `anthropic-version`, OpenAI's otherwise; one
/// model too, and an unknown one (or a wrong key) is Anthropic's 404 (401).
#[tokio::test]
async fn models_are_listed_for_anthropics_clients_in_their_shape() {
    let (_local, _api, _anthropic, gw) = setup().await;
    let get = |path: &str, anthropic: bool| {
        let mut request = gw
            .http
            .get(format!("{}{path}", gw.url))
            .header("x-api-key", CLIENT_KEY);
        if anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        async move { Answer::of(request.send().await.expect("the gateway answers")).await }
    };
    let listed = get("/v1/models", true).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let data = listed.body["data"].as_array().expect("a list");
    assert!(!data.is_empty());
    for model in data {
        assert_eq!(model["type"], "model", "{model}");
        assert_eq!(model["display_name"], model["id"], "{model}");
        let created = model["created_at"].as_str().expect("a time");
        assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");
    }
    assert!(data.iter().any(|model| model["id"] == "summarize"));
    assert_eq!(listed.body["has_more"], false);
    assert_eq!(listed.body["first_id"], data[0]["id"]);
    assert_eq!(listed.body["last_id"], data[data.len() - 1]["id"]);

    let openai = get("/v1/models", false).await;
    assert_eq!(openai.status, 200, "{}", openai.text);
    assert_eq!(openai.body["object"], "list");

    let one = get("/v1/models/summarize", true).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["type"], "model");
    assert_eq!(one.body["id"], "summarize");
    let unknown = get("/v1/models/no-such-model", true).await;
    anthropic_error(&unknown, 404, "not_found_error");

    // A wrong key: Anthropic's 401 for its clients, OpenAI's for others.
    for path in ["/v1/models", "/v1/models/summarize"] {
        let wrong = gw
            .http
            .get(format!("{}{path}", gw.url))
            .header("x-api-key", "sk-wrong")
            .header("anthropic-version", "2023-06-01")
            .send();
        let wrong = Answer::of(wrong.await.expect("the gateway answers")).await;
        anthropic_error(&wrong, 401, "authentication_error");
    }
    let wrong = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .header("x-api-key", "sk-wrong")
        .send();
    let wrong = Answer::of(wrong.await.expect("the gateway answers")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body["error"]["code"], "invalid_api_key",
        "{}",
        wrong.text
    );
    gw.shutdown().await;
}

/// Anthropic's paging of `GET /v1/models`: `limit` (20 when absent, 1 to 1000), `after_id` and
/// `before_id`, with `has_more`, `first_id` and `last_id` saying where the page lies. Paging on
/// from each page's `last_id`, or back from each page's `first_id`, lists every model once; a
/// value the query cannot have is Anthropic's 400 `invalid_request_error` naming the parameter.
#[tokio::test]
async fn anthropics_clients_page_through_the_models() {
    let (_local, _api, _anthropic, gw) = setup_where(|c| {
        for n in 0..25 {
            c.add_route(
                &format!("route_{n:02}"),
                tierwise::config::TaskKind::Chat,
                &["local"],
            );
        }
    })
    .await;
    let get = |query: String| {
        let request = gw
            .http
            .get(format!("{}/v1/models?{query}", gw.url))
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01");
        async move { Answer::of(request.send().await.expect("the gateway answers")).await }
    };
    let ids = |page: &Answer| -> Vec<String> {
        assert_eq!(page.status, 200, "{}", page.text);
        page.body["data"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|model| model["id"].as_str().unwrap().to_string())
            .collect()
    };
    let whole = get("limit=1000".into()).await;
    let all = ids(&whole);
    assert!(all.len() > 25, "{all:?}");
    assert_eq!(whole.body["has_more"], false);
    let first = get(String::new()).await;
    assert_eq!(ids(&first), all[..20]);
    assert_eq!(first.body["has_more"], true);
    assert_eq!(first.body["first_id"], all[0].as_str());
    assert_eq!(first.body["last_id"], all[19].as_str());

    let mut forward = Vec::new();
    let mut query = "limit=7".to_string();
    loop {
        let page = get(query).await;
        forward.extend(ids(&page));
        if page.body["has_more"] == false {
            break;
        }
        query = format!(
            "limit=7&after_id={}",
            page.body["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(forward, all);

    let mut back = vec![all.last().unwrap().clone()];
    let mut query = format!("limit=7&before_id={}", all.last().unwrap());
    loop {
        let page = get(query).await;
        back.splice(0..0, ids(&page));
        if page.body["has_more"] == false {
            break;
        }
        query = format!(
            "limit=7&before_id={}",
            page.body["first_id"].as_str().unwrap()
        );
    }
    assert_eq!(back, all);

    let between = get(format!("after_id={}&before_id={}", all[2], all[6])).await;
    assert_eq!(ids(&between), all[3..6]);
    assert_eq!(between.body["has_more"], false);

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after_id=no-such-model", "after_id"),
        ("before_id=no-such-model", "before_id"),
    ] {
        let refused = get(query.into()).await;
        let message = anthropic_error(&refused, 400, "invalid_request_error");
        assert!(message.contains(param), "{query}: {message}");
    }
    gw.shutdown().await;
}

/// On a route that caches, the client's `anthropic-beta` is part of the request: the same body
/// with other betas goes to the tier, the same betas again are answered from the cache.
#[tokio::test]
async fn the_cache_tells_requests_with_other_betas_apart() {
    let (_local, _api, anthropic, gw) = setup().await;
    let hi = json!({"model": "cached_agent", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]});
    let caching = [("anthropic-beta", "prompt-caching-2024-07-31")];
    let long = [("anthropic-beta", "context-1m-2025-08-07")];
    for (headers, calls, cache) in [
        (&caching, 1, "miss"),
        (&caching, 1, "hit"),
        (&long, 2, "miss"),
        (&long, 2, "hit"),
    ] {
        let answer = message_with(&gw, &hi, headers).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(
            answer.header("x-tierwise-cache"),
            Some(cache),
            "{headers:?}"
        );
        assert_eq!(anthropic.request_count(), calls, "{headers:?}");
    }
    assert_eq!(
        anthropic.requests()[1].anthropic_beta,
        ["context-1m-2025-08-07"]
    );
    gw.shutdown().await;
}
