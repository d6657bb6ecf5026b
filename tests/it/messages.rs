//! `POST /v1/messages`, Anthropic's Messages API in front: served through chat completions (the
//! request as the chat server gets it, the message and the stream events in Anthropic's shapes),
//! passed through to a tier of Anthropic's format, errors in Anthropic's shape, the key in
//! `x-api-key`, a fallback, a stream cut by the upstream, and `count_tokens`.

use std::time::Duration;

use crate::util::*;
use serde_json::{Value, json};
use tierwise::config::file::{RawProvider, RawTier, spanned, text};
use tierwise_fake::{FakeToolCall, FakeUpstream, Fault};

/// `local` and `api_fast` behind `summarize`, and `claude` (Anthropic's format) behind `agent`,
/// before `local`.
async fn setup() -> (FakeUpstream, FakeUpstream, FakeUpstream, TestGateway) {
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
        });
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
