//! `POST /v1/responses` served through chat completions: the request as the chat server gets it,
//! the answer and the stream events in Responses' shapes with one id, tools both ways, the ledger
//! row; and the faults — a stream cut mid-answer, malformed upstream JSON, a fallback mid-route,
//! state the gateway does not keep.

use std::time::Duration;

use crate::util::*;
use serde_json::{Value, json};
use tierwise_fake::{FakeToolCall, FakeUpstream, Fault};

async fn setup() -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).without_probes();
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

/// A stream's events, each its `event:` name and its data as JSON; comments (keep-alives) are
/// passed over, as SSE clients do.
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

async fn respond(gw: &TestGateway, request: Value) -> Answer {
    let answer = async { Answer::of(gw.post("/v1/responses", &request).await).await };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer comes instead of hanging")
}

/// A plain request: the chat server gets the instructions as the system message, the input as
/// the user's, the tier's limit as `max_tokens`; the client gets a response with a `resp_` id, the
/// text as an output message and the usage in Responses' words; the ledger names the endpoint.
#[tokio::test]
async fn a_plain_request_is_sent_as_chat_and_answered_as_a_response() {
    let (local, _api, gw) = setup().await;
    let answer = respond(
        &gw,
        json!({"model": "summarize", "instructions": "Be brief.", "input": "Hi there"}),
    )
    .await;
    answer.assert_served_by_first("local");
    let body = &answer.body;
    assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["instructions"], "Be brief.");
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{body}");
    assert_eq!(output[0]["type"], "message");
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(
        output[0]["content"][0],
        json!({"type": "output_text", "text": "Hello from the fake upstream.", "annotations": [], "logprobs": []})
    );
    assert_eq!(body["usage"]["input_tokens"], 20);
    assert_eq!(body["usage"]["output_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 25);

    let sent = &local.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])
    );
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.body["model"], "mistral-7b");

    let row = stored(
        &gw.store().await,
        answer.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert_eq!(row.endpoint, "responses");
    assert_eq!((row.tokens_in, row.tokens_out), (20, 5));
    assert_eq!(row.tier.as_deref(), Some("local"));
    gw.shutdown().await;
}

/// A stream: the events in the documented order, every one numbered in sequence and naming the
/// same response and item; the deltas make the text; `response.completed` carries the usage.
#[tokio::test]
async fn a_stream_has_the_documented_events_in_order_with_one_id() {
    let (_local, _api, gw) = setup().await;
    let answer = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "stream": true}),
    )
    .await;
    answer.assert_served_by_first("local");
    let events = events_of(&answer.text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "response.output_text.delta")
        .count();
    assert!(deltas > 1, "{names:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (at, (_, event)) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], at as u64, "{event}");
    }
    let id = events[0].1["response"]["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"));
    let item = events[2].1["item"]["id"].as_str().unwrap();
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, event)| {
            assert_eq!(event["item_id"], item);
            event["delta"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["id"], id);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["content"][0]["text"], text);
    assert_eq!(completed["usage"]["input_tokens"], 20);
    assert_eq!(completed["usage"]["output_tokens"], 5);

    let row = stored(
        &gw.store().await,
        answer.header("x-tierwise-request-id").unwrap(),
    )
    .await;
    assert_eq!(
        (row.endpoint.as_ref(), row.status, row.error_kind.as_deref()),
        ("responses", 200, None)
    );
    assert_eq!((row.tokens_in, row.tokens_out), (20, 5));
    gw.shutdown().await;
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}})
}

/// Tools both ways: function tools and an earlier turn's call and output go to chat as chat's
/// tools, tool calls and tool message; the answer's calls come back as `function_call` items,
/// whole and streamed (their arguments as deltas, then done).
#[tokio::test]
async fn tools_and_function_call_items_translate_both_ways() {
    let (local, _api, gw) = setup().await;
    local.update(|b| {
        b.reply = String::new();
        b.tool_calls = vec![FakeToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }];
    });
    let request = json!({
        "model": "summarize",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_0", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
        ],
        "tools": [weather_tool()],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "max_output_tokens": 50,
    });
    let answer = respond(&gw, request.clone()).await;
    answer.assert_served_by_first("local");
    let output = answer.body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{}", answer.text);
    assert_eq!(output[0]["type"], "function_call");
    assert_eq!(output[0]["call_id"], "call_1");
    assert_eq!(output[0]["name"], "weather");
    assert_eq!(output[0]["arguments"], r#"{"city": "Paris"}"#);

    let sent = &local.requests()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        ])
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "weather");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "weather"}})
    );
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}})
    );
    assert_eq!(sent["max_tokens"], 50);

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let answer = respond(&gw, streamed).await;
    let events = events_of(&answer.text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[2], "response.output_item.added");
    assert_eq!(events[2].1["item"]["type"], "function_call");
    let arguments: String = events
        .iter()
        .filter(|(name, _)| name == "response.function_call_arguments.delta")
        .map(|(_, event)| event["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(arguments, r#"{"city": "Paris"}"#);
    let done = names
        .iter()
        .position(|n| *n == "response.function_call_arguments.done")
        .expect("the arguments end");
    assert_eq!(events[done].1["arguments"], arguments);
    assert_eq!(names[done + 1], "response.output_item.done");
    assert_eq!(*names.last().unwrap(), "response.completed");
    gw.shutdown().await;
}

/// Faults: a stream cut after the client saw events ends with `response.failed` naming the same
/// response, and the ledger says it broke; malformed JSON from the first tier falls back, plain
/// and streamed; a tier that is down falls back mid-route.
#[tokio::test]
async fn faults_end_the_stream_with_response_failed_or_fall_back() {
    let (local, api, gw) = setup().await;
    let store = gw.store().await;
    local.set_fault(Fault::CutAfterChunks { chunks: 3 });
    let answer = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "stream": true}),
    )
    .await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    let events = events_of(&answer.text);
    let (name, failed) = events.last().unwrap();
    assert_eq!(name, "response.failed", "{}", answer.text);
    assert_eq!(failed["response"]["id"], events[0].1["response"]["id"]);
    assert_eq!(failed["response"]["status"], "failed");
    assert!(
        failed["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{failed}"
    );
    assert_eq!(
        failed["sequence_number"],
        events[events.len() - 2].1["sequence_number"]
            .as_u64()
            .unwrap()
            + 1
    );
    assert!(
        !answer.text.contains("response.completed"),
        "{}",
        answer.text
    );
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.status, row.error_kind.as_deref()),
        (200, Some("stream_broken"))
    );

    local.set_fault(Fault::MalformedJson);
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    answer.assert_served_by("api_fast", "local:malformed_json");
    assert_eq!(answer.body["object"], "response");
    let answer = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "stream": true}),
    )
    .await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(
        events_of(&answer.text).last().unwrap().0,
        "response.completed"
    );

    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    answer.assert_served_by("api_fast", "local:http_503");
    assert_eq!(api.requests().last().unwrap().path, "/v1/chat/completions");
    gw.shutdown().await;
}

/// State the gateway does not keep is refused with a 400 naming the field, never dropped; so is a
/// body without `input`.
#[tokio::test]
async fn stateful_fields_and_a_missing_input_are_clear_400s() {
    let (local, _api, gw) = setup().await;
    for (field, value) in [
        ("previous_response_id", json!("resp_123")),
        ("store", json!(true)),
        ("background", json!(true)),
        ("conversation", json!("conv_1")),
    ] {
        let mut request = json!({"model": "summarize", "input": "Hi"});
        request[field] = value;
        let answer = respond(&gw, request).await;
        answer.error(400, None);
        assert_eq!(answer.body["error"]["param"], field, "{}", answer.text);
    }
    let answer = respond(&gw, json!({"model": "summarize"})).await;
    answer.error(400, None);
    assert_eq!(answer.body["error"]["param"], "input");
    // `store: false` is what tierwise does anyway.
    let answer = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "store": false}),
    )
    .await;
    answer.assert_served_by_first("local");
    assert_eq!(answer.body["store"], false);
    assert_eq!(local.request_count(), 1);
    gw.shutdown().await;
}

/// Two fakes; `openai` (the API fake) serves Responses itself; `api_first` tries `api_fast`, then
/// `local`.
async fn native_setup() -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("openai").responses = Some(tierwise::config::file::spanned(true));
            c.add_route(
                "api_first",
                tierwise::config::TaskKind::Agentic,
                &["api_fast", "local"],
            );
        });
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

/// A provider whose server serves Responses gets the request as the client wrote it (the tier's
/// model and limit, `store: false`), and the answer as its server wrote it; its usage is read from
/// the answer, and from `response.completed` in a stream relayed event by event. A fallback from
/// it lands on a chat-only tier, translated.
#[tokio::test]
async fn a_server_that_serves_responses_gets_them_passed_through() {
    let (local, api, gw) = native_setup().await;
    let store = gw.store().await;
    let answer = respond(
        &gw,
        json!({"model": "api_first", "input": "Hi", "tools": [weather_tool()]}),
    )
    .await;
    answer.assert_served_by_first("api_fast");
    assert_eq!(
        answer.body["output"][0]["id"], "msg_fake",
        "the server's own answer"
    );
    let id = answer.body["id"].as_str().unwrap();
    assert!(
        id.starts_with("resp_") && id != "resp_fake",
        "the gateway's id: {id}"
    );
    let sent = &api.requests()[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(
        sent.body,
        json!({"model": "gpt-4o-mini", "input": "Hi", "tools": [weather_tool()], "store": false,
            "max_output_tokens": 1024})
    );
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (20, 5, false)
    );
    assert!(row.cost_pusd.is_some_and(|cost| cost.0 > 0), "{row:?}");

    let answer = respond(
        &gw,
        json!({"model": "api_first", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events_of(&answer.text);
    assert_eq!(events[0].0, "response.created");
    assert_ne!(events[0].1["response"]["id"], "resp_fake");
    assert_eq!(events.last().unwrap().0, "response.completed");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.error_kind.as_deref()),
        (20, 5, None)
    );

    // The server's own failure mid-answer reaches the client as it sent it; the ledger says so.
    api.set_fault(Fault::ErrorMidStream { after: 4 });
    let answer = respond(
        &gw,
        json!({"model": "api_first", "input": "Hi", "stream": true}),
    )
    .await;
    assert_eq!(events_of(&answer.text).last().unwrap().0, "response.failed");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("upstream_error_event"));

    // Down: the fallback goes to the chat-only tier, translated.
    api.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = respond(&gw, json!({"model": "api_first", "input": "Hi"})).await;
    answer.assert_served_by("local", "api_fast:http_503");
    assert!(answer.body["id"].as_str().unwrap().starts_with("resp_"));
    assert_ne!(answer.body["id"], "resp_fake");
    assert_eq!(local.requests()[0].path, "/v1/chat/completions");
    gw.shutdown().await;
}

/// OpenAI's own API serves Responses without being told; any other OpenAI-format server only
/// when its provider says so; a provider of another format cannot say so.
#[test]
fn which_providers_serve_responses() {
    let config = parse(
        "[providers.openai]\nbase_url = \"https://api.openai.com/v1\"\n\
         [providers.vllm]\nbase_url = \"http://127.0.0.1:8000/v1\"\n\
         [providers.vllm_new]\nbase_url = \"http://127.0.0.1:8001/v1\"\nresponses = true\n\
         [tiers]\na = { provider = \"openai\", model = \"gpt-4o\" }\n\
         b = { provider = \"vllm\", model = \"m\" }\nc = { provider = \"vllm_new\", model = \"m\" }\n\
         [routes.r]\nkind = \"agentic\"\ntiers = [\"a\", \"b\", \"c\"]\n",
    );
    let serves: Vec<bool> = ["openai", "vllm", "vllm_new"]
        .iter()
        .map(|name| {
            config
                .providers
                .iter()
                .find(|p| p.name == *name)
                .unwrap()
                .serves_responses
        })
        .collect();
    assert_eq!(serves, [true, false, true]);
    let refused = tierwise::config::Config::parse(
        "[providers.claude]\napi = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\nresponses = true\n\
         [tiers]\na = { provider = \"claude\", model = \"claude-sonnet-4-5\" }\n\
         [routes.r]\nkind = \"agentic\"\ntiers = [\"a\"]\n",
        std::path::Path::new("tierwise.toml"),
        &env,
    )
    .expect_err("Anthropic's format cannot pass Responses through");
    assert!(
        refused.to_string().contains("providers.claude.responses"),
        "{refused}"
    );
}

/// A Responses request to an Anthropic tier is translated twice (Responses → chat → Messages) and
/// its answer back twice: text, tool calls and usage, plain and streamed.
#[tokio::test]
async fn an_anthropic_tier_answers_responses_translated_twice() {
    let anthropic = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let down = tierwise_fake::unused_addr().await;
    let config = TestConfig::two_tier(&format!("http://{}/v1", down.addr), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = tierwise::config::file::RawProvider::new(anthropic.base_url());
            provider.api = Some(tierwise::config::Api::Anthropic);
            provider.api_key = Some(tierwise::config::file::text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            c.0.providers
                .insert(tierwise::config::file::text("anthropic"), provider);
            c.0.tiers.insert(
                tierwise::config::file::text("claude"),
                tierwise::config::file::RawTier::new("anthropic", "claude-sonnet-4-5"),
            );
            c.add_route(
                "agent",
                tierwise::config::TaskKind::Agentic,
                &["local", "claude"],
            );
        });
    let gw = TestGateway::start(&config).await;
    anthropic.update(|b| {
        b.tool_calls = vec![FakeToolCall {
            id: "toolu_1".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
    });
    let request = json!({"model": "agent", "instructions": "Be brief.", "input": "Weather?",
        "tools": [weather_tool()], "max_output_tokens": 100});
    let answer = respond(&gw, request.clone()).await;
    answer.assert_served_by("claude", "local:connect_refused");
    let output = answer.body["output"].as_array().unwrap();
    assert_eq!(
        output[0]["content"][0]["text"],
        "Hello from the fake upstream."
    );
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["call_id"], "toolu_1");
    assert_eq!(output[1]["arguments"], r#"{"city":"Paris"}"#);
    assert_eq!(answer.body["usage"]["input_tokens"], 20);
    let sent = &anthropic.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 100);
    assert_eq!(sent.body["tools"][0]["name"], "weather");

    let mut streamed = request;
    streamed["stream"] = json!(true);
    let answer = respond(&gw, streamed).await;
    let events = events_of(&answer.text);
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, event)| event["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    let arguments: String = events
        .iter()
        .filter(|(name, _)| name == "response.function_call_arguments.delta")
        .map(|(_, event)| event["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    let (last, completed) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(completed["response"]["output"][1]["call_id"], "toolu_1");
    assert_eq!(completed["response"]["usage"]["output_tokens"], 5);
    gw.shutdown().await;
}

/// The native setup (`api_first`: `api_fast` passed through, then `local` translated) with
/// `[responses] store = true`, on `ledger`, changed by `change`.
async fn kept_setup(
    ledger: String,
    change: impl FnOnce(&mut TestConfig),
) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.ledger.url = Some(tierwise::config::file::text(ledger));
            c.0.responses.store = Some(true);
            c.provider("openai").responses = Some(tierwise::config::file::spanned(true));
            c.add_route(
                "api_first",
                tierwise::config::TaskKind::Agentic,
                &["api_fast", "local"],
            );
            change(c);
        });
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

/// `method` on `path` with `key`'s bearer and `body` (if any), within a deadline.
async fn call(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = gw
        .http
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = async { Answer::of(request.send().await.expect("the gateway answers")).await };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer comes instead of hanging")
}

/// Waits, within a deadline, until the ledger keeps `n` responses.
async fn wait_for_kept(gw: &TestGateway, n: i64) {
    let store = gw.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kept = store.kept_responses().await.unwrap();
        if kept == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger keeps {kept} responses, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A conversation by `previous_response_id` goes on whichever tier answers each turn: the first
/// passed through to the API's server, the second (streamed) falls back to the local tier
/// translated to chat, the third back on the API. Each tier gets the whole conversation, no
/// upstream gets the gateway's ids or `store: true`, and each answer says what it continues.
#[tokio::test]
async fn a_conversation_goes_on_by_previous_response_id_whichever_tier_answers() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        conversation_across_tiers(backend).await;
    }
}

async fn conversation_across_tiers(backend: Backend) {
    let (local, api, gw) = kept_setup(backend.url().await, |_| {}).await;
    let first = respond(&gw, json!({"model": "api_first", "input": "Hi"})).await;
    first.assert_served_by_first("api_fast");
    let first_id = first.body["id"].as_str().unwrap().to_string();
    assert!(
        first_id.starts_with("resp_") && first_id != "resp_fake",
        "the gateway's own id"
    );
    assert_eq!(
        first.body["store"], true,
        "kept by the gateway: {}",
        first.text
    );
    let sent = &api.requests()[0].body;
    assert_eq!(sent["store"], false, "{backend:?}: {sent}");

    api.set_fault(Fault::Status {
        status: 500,
        body: None,
        retry_after: None,
    });
    let second = respond(
        &gw,
        json!({"model": "api_first", "previous_response_id": first_id, "input": "And then?", "stream": true}),
    )
    .await;
    assert_eq!(
        second.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        second.text
    );
    assert!(second.header("x-tierwise-fallback").is_some());
    let sent = &local.requests()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello from the fake upstream."},
            {"role": "user", "content": "And then?"},
        ]),
        "{backend:?}"
    );
    let events = events_of(&second.text);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    let second_id = last["response"]["id"].as_str().unwrap().to_string();
    assert_eq!(last["response"]["previous_response_id"], first_id.as_str());
    assert_eq!(last["response"]["store"], true);

    api.set_fault(Fault::None);
    let third = respond(
        &gw,
        json!({"model": "api_first", "previous_response_id": second_id, "input": "Last"}),
    )
    .await;
    third.assert_served_by_first("api_fast");
    assert_eq!(third.body["previous_response_id"], second_id.as_str());
    let requests = api.requests();
    let sent = &requests.last().unwrap().body;
    assert!(sent.get("previous_response_id").is_none(), "{sent}");
    assert_eq!(sent["store"], false);
    let input = sent["input"].as_array().unwrap();
    let texts: Vec<(&str, &str)> = input
        .iter()
        .map(|item| {
            (
                item["role"].as_str().unwrap(),
                item["content"][0]["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            ("user", "Hi"),
            ("assistant", "Hello from the fake upstream."),
            ("user", "And then?"),
            ("assistant", "Hello from the fake upstream."),
            ("user", "Last"),
        ],
        "{sent}"
    );
    assert!(
        input.iter().all(|item| item.get("id").is_none()),
        "no server's item ids go upstream: {sent}"
    );

    // The streamed turn, kept from its last event, is read back as its client saw it end.
    let read = call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{second_id}"),
        CLIENT_KEY,
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body, last["response"]);
    // The fake API names every answer `resp_fake`; each turn is kept under its own id.
    wait_for_kept(&gw, 3).await;
    gw.shutdown().await;
}

/// A response kept for one client key is not there for another: reading, deleting or continuing
/// it is OpenAI's 404, and the owner still has it.
#[tokio::test]
async fn one_keys_responses_are_invisible_to_another() {
    const OTHER: &str = "tw-other-key-123";
    let (_local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.api_keys = Some(vec![
            tierwise::config::file::text("${CLIENT_KEY}"),
            tierwise::config::file::text(OTHER),
        ]);
    })
    .await;
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/responses/{id}");
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let refused = call(&gw, method, &path, OTHER, None).await;
        assert_eq!(
            refused.error(404, None),
            format!("Response with id '{id}' not found.")
        );
    }
    let refused = call(
        &gw,
        reqwest::Method::POST,
        "/v1/responses",
        OTHER,
        Some(json!({"model": "summarize", "input": "Go on", "previous_response_id": id})),
    )
    .await;
    refused.error(400, Some("previous_response_not_found"));
    // Once written to the database, too.
    wait_for_kept(&gw, 1).await;
    let refused = call(&gw, reqwest::Method::GET, &path, OTHER, None).await;
    refused.error(404, None);
    let owner = call(&gw, reqwest::Method::GET, &path, CLIENT_KEY, None).await;
    assert_eq!(owner.status, 200, "{}", owner.text);
    assert_eq!(owner.body["id"], id.as_str());
    gw.shutdown().await;
}

/// `GET` gives the response as it was answered; `DELETE` answers OpenAI's shape and the response
/// is gone — from the map and from the database — for reading and for continuing; a request
/// with `store: false` is not kept.
#[tokio::test]
async fn a_kept_response_is_read_and_deleted() {
    let (_local, _api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    assert_eq!(answer.body["store"], true);
    let id = answer.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/responses/{id}");
    let read = call(&gw, reqwest::Method::GET, &path, CLIENT_KEY, None).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, answer.body);

    let deleted = call(&gw, reqwest::Method::DELETE, &path, CLIENT_KEY, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(
        deleted.body,
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        call(&gw, method, &path, CLIENT_KEY, None)
            .await
            .error(404, None);
    }
    let next = respond(
        &gw,
        json!({"model": "summarize", "input": "Go on", "previous_response_id": id}),
    )
    .await;
    // OpenAI's answer to a previous response it does not keep, whose code clients act on.
    next.error(400, Some("previous_response_not_found"));
    assert_eq!(
        next.body["error"],
        json!({"message": format!("Previous response with id '{id}' not found."),
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"})
    );

    let unkept = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "store": false}),
    )
    .await;
    assert_eq!(unkept.body["store"], false);
    let path = format!("/v1/responses/{}", unkept.body["id"].as_str().unwrap());
    call(&gw, reqwest::Method::GET, &path, CLIENT_KEY, None)
        .await
        .error(404, None);
    wait_for_kept(&gw, 0).await;
    gw.shutdown().await;
}

/// A response older than `responses.retention` is deleted in the background and not found.
#[tokio::test]
async fn responses_past_their_retention_are_deleted() {
    let (_local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.responses.retention = Some(tierwise::config::file::text("1s"));
    })
    .await;
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    let id = answer.body["id"].as_str().unwrap().to_string();
    wait_for_kept(&gw, 1).await;
    wait_for_kept(&gw, 0).await;
    call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{id}"),
        CLIENT_KEY,
        None,
    )
    .await
    .error(404, None);
    gw.shutdown().await;
}

/// Without `[responses] store = true` nothing is kept: `store: true` and `previous_response_id`
/// are 400s that name the field and the key to set, a request without `store` is answered with
/// `store: false`, and there is nothing to read: a 404 that names the key.
#[tokio::test]
async fn with_storing_off_state_is_refused_and_nothing_kept() {
    let (_local, _api, gw) = setup().await;
    for (field, value) in [
        ("previous_response_id", json!("resp_123")),
        ("store", json!(true)),
    ] {
        let mut request = json!({"model": "summarize", "input": "Hi"});
        request[field] = value;
        let answer = respond(&gw, request).await;
        let message = answer.error(400, None);
        assert!(message.contains("[responses]"), "{message}");
        assert_eq!(answer.body["error"]["param"], field);
    }
    let answer = respond(&gw, json!({"model": "summarize", "input": "Hi"})).await;
    assert_eq!(answer.body["store"], false);
    let path = format!("/v1/responses/{}", answer.body["id"].as_str().unwrap());
    // Each way of reading a response says which setting keeps none, as the 400s do.
    for (method, path) in [
        (reqwest::Method::GET, path.clone()),
        (reqwest::Method::GET, format!("{path}/input_items")),
        (reqwest::Method::DELETE, path.clone()),
    ] {
        let answer = call(&gw, method.clone(), &path, CLIENT_KEY, None).await;
        let message = answer.error(404, None);
        assert!(
            message.contains("[responses]"),
            "{method} {path}: {message}"
        );
    }
    assert_eq!(gw.store().await.kept_responses().await.unwrap(), 0);
    gw.shutdown().await;
}

/// A conversation is carried whole in each turn, one row read per turn: it may grow until a
/// request carrying it would be larger than `server.max_body_bytes`, and is then refused with a
/// 400 that says so, never sent upstream.
#[tokio::test]
async fn a_conversation_grows_only_to_the_body_limit() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.max_body_bytes = Some(tierwise::config::file::spanned(2048));
    })
    .await;
    let mut previous = Value::Null;
    for turn in 0.. {
        assert!(turn < 50, "the conversation was never refused");
        let answer = respond(
            &gw,
            json!({"model": "summarize", "input": "Tell me more.", "previous_response_id": previous}),
        )
        .await;
        if answer.status == 400 {
            let message = answer.error(400, None);
            assert!(message.contains("server.max_body_bytes"), "{message}");
            assert_eq!(answer.body["error"]["param"], "previous_response_id");
            assert_eq!(local.request_count(), turn, "the refused turn went nowhere");
            assert!(turn > 3, "several turns fit first");
            break;
        }
        answer.assert_served_by_first("local");
        previous = answer.body["id"].clone();
    }
    gw.shutdown().await;
}

/// A stream broken mid-answer has no whole answer to go on from: it is not kept.
#[tokio::test]
async fn a_stream_broken_midway_is_not_kept() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    local.set_fault(Fault::CutAfterChunks { chunks: 2 });
    let answer = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events_of(&answer.text);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed");
    let path = format!("/v1/responses/{}", last["response"]["id"].as_str().unwrap());
    call(&gw, reqwest::Method::GET, &path, CLIENT_KEY, None)
        .await
        .error(404, None);
    local.set_fault(Fault::None);
    let whole = respond(
        &gw,
        json!({"model": "summarize", "input": "Hi", "stream": true}),
    )
    .await;
    assert_eq!(
        events_of(&whole.text).last().unwrap().0,
        "response.completed"
    );
    wait_for_kept(&gw, 1).await;
    gw.shutdown().await;
}

/// An upstream that names every answer alike (`resp_fake`, as a restarted, deterministic or
/// hostile server may) cannot make one key's kept answer another's: each passed-through answer,
/// whole or streamed, goes to its client under the gateway's own id, in every stream event, and
/// a streamed turn is continued at once (read after write) with its own conversation.
#[tokio::test]
async fn passed_through_answers_are_kept_under_the_gateways_own_ids() {
    const OTHER: &str = "tw-other-key-123";
    let (_local, api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.api_keys = Some(vec![
            tierwise::config::file::text("${CLIENT_KEY}"),
            tierwise::config::file::text(OTHER),
        ]);
    })
    .await;
    let post = |key: &'static str, body: Value| {
        call(&gw, reqwest::Method::POST, "/v1/responses", key, Some(body))
    };
    let mine = post(
        CLIENT_KEY,
        json!({"model": "api_first", "input": "Mine", "stream": true}),
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert!(!mine.text.contains("resp_fake"), "{}", mine.text);
    let events = events_of(&mine.text);
    let mine_id = events[0].1["response"]["id"].as_str().unwrap().to_string();
    assert!(mine_id.starts_with("resp_"), "{mine_id}");
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    assert_eq!(last["response"]["id"], mine_id.as_str());
    let theirs = post(OTHER, json!({"model": "api_first", "input": "Theirs"})).await;
    let theirs_id = theirs.body["id"].as_str().unwrap().to_string();
    assert!(
        theirs_id.starts_with("resp_") && theirs_id != mine_id,
        "{}",
        theirs.text
    );

    // At once, before the writer has run: the next turn carries this key's first turn only.
    let next = post(
        CLIENT_KEY,
        json!({"model": "api_first", "input": "Again", "previous_response_id": mine_id}),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.text);
    let requests = api.requests();
    let sent = &requests.last().unwrap().body;
    assert_eq!(sent["input"][0]["content"][0]["text"], "Mine", "{sent}");
    wait_for_kept(&gw, 3).await;
    let read = call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{mine_id}"),
        CLIENT_KEY,
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["id"], mine_id.as_str());
    assert_eq!(read.body["output"], last["response"]["output"]);
    call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{mine_id}"),
        OTHER,
        None,
    )
    .await
    .error(404, None);
    gw.shutdown().await;
}

/// Each response object of a stream (`response.created`, `.in_progress`, `.completed`,
/// `.failed`…): its event's name, its id and its `store`.
fn response_objects(events: &[(String, Value)]) -> Vec<(String, Value, Value)> {
    events
        .iter()
        .filter(|(_, data)| data.get("response").is_some())
        .map(|(name, data)| {
            let response = &data["response"];
            (
                name.clone(),
                response["id"].clone(),
                response["store"].clone(),
            )
        })
        .collect()
}

/// A server that serves Responses but keeps no promise — it says `store: true` though it was told
/// `store: false`, and names the response anew in each event — is told to the client as the
/// gateway's answer: one `resp_…` id of the gateway's in the plain body and in every event that
/// carries the response (`response.created`, `.in_progress`, `.completed`, `.failed`), and
/// `store` as the gateway kept it: `false` where it keeps nothing (`store: false` asked, or no
/// state kept at all, or the response failed), `true` where it kept the answer. A hit of the
/// route's cache gets an id of its own.
#[tokio::test]
async fn passed_through_answers_say_the_gateways_id_and_what_it_kept() {
    let (_local, api, gw) = kept_setup(sqlite_url(), |c| {
        let cached = c.add_route(
            "cached_api",
            tierwise::config::TaskKind::Agentic,
            &["api_fast"],
        );
        cached.cache = Some(tierwise::config::file::RawRouteCache {
            ttl: tierwise::config::file::text("1h"),
            scope: None,
            nondeterministic: Some(true),
        });
    })
    .await;
    api.update(|b| b.responses_unruly = true);
    let post = |body: Value| {
        call(
            &gw,
            reqwest::Method::POST,
            "/v1/responses",
            CLIENT_KEY,
            Some(body),
        )
    };
    let ours = |id: &Value| {
        id.as_str()
            .is_some_and(|id| id.starts_with("resp_") && !id.contains("fake"))
    };

    let plain = post(json!({"model": "api_first", "input": "Hi", "store": false})).await;
    plain.assert_served_by_first("api_fast");
    assert!(ours(&plain.body["id"]), "{}", plain.text);
    assert_eq!(plain.body["store"], false, "{}", plain.text);

    for (store, said) in [(json!(false), false), (Value::Null, true)] {
        let mut request = json!({"model": "api_first", "input": "Hi", "stream": true});
        if !store.is_null() {
            request["store"] = store;
        }
        let streamed = post(request).await;
        streamed.assert_served_by_first("api_fast");
        assert!(!streamed.text.contains("resp_fake"), "{}", streamed.text);
        let objects = response_objects(&events_of(&streamed.text));
        let names: Vec<&str> = objects.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.completed"
            ]
        );
        let id = &objects[0].1;
        assert!(ours(id), "{objects:?}");
        for (name, each, kept) in &objects {
            assert_eq!(each, id, "{name}");
            assert_eq!(kept, &json!(said), "{name}");
        }
    }
    // One kept (the stream without `store`), none of the others.
    wait_for_kept(&gw, 1).await;

    // Failed midway, by the upstream's own `response.failed` or cut (the gateway's): the
    // gateway's id and `store: false`, asked to keep it or not.
    for fault in [
        Fault::ErrorMidStream { after: 4 },
        Fault::CutAfterChunks { chunks: 4 },
    ] {
        api.set_fault(fault.clone());
        for store in [false, true] {
            let failed =
                post(json!({"model": "api_first", "input": "Hi", "stream": true, "store": store}))
                    .await;
            let objects = response_objects(&events_of(&failed.text));
            let (name, id, kept) = objects.last().unwrap();
            assert_eq!(name, "response.failed", "{fault:?}");
            assert_eq!(id, &objects[0].1, "{fault:?}");
            assert!(ours(id), "{fault:?}: {objects:?}");
            assert_eq!(kept, &json!(false), "{fault:?}");
        }
    }
    // Cut before any `response.created` came: the gateway's `response.failed` still names the
    // response by the gateway's id, not `null`.
    api.update(|b| b.responses_without_created = true);
    api.set_fault(Fault::CutAfterChunks { chunks: 3 });
    let failed = post(json!({"model": "api_first", "input": "Hi", "stream": true})).await;
    let objects = response_objects(&events_of(&failed.text));
    let (name, id, _) = objects.last().unwrap();
    assert_eq!(name, "response.failed", "{}", failed.text);
    assert!(ours(id), "{}", failed.text);
    api.update(|b| b.responses_without_created = false);
    api.set_fault(Fault::None);

    // From the route's cache: the answer again, under an id of its own.
    let request = json!({"model": "cached_api", "input": "Hi", "store": false});
    let first = post(request.clone()).await;
    let again = post(request).await;
    assert_eq!(
        again.header("x-tierwise-cache"),
        Some("hit"),
        "{}",
        again.text
    );
    assert!(ours(&again.body["id"]), "{}", again.text);
    assert_ne!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["store"], false, "{}", again.text);
    assert_eq!(again.body["output"], first.body["output"]);
    gw.shutdown().await;

    // No state kept at all: the same, `store: false`.
    let (_local, api, gw) = native_setup().await;
    api.update(|b| b.responses_unruly = true);
    let plain = respond(&gw, json!({"model": "api_first", "input": "Hi"})).await;
    assert!(ours(&plain.body["id"]), "{}", plain.text);
    assert_eq!(plain.body["store"], false, "{}", plain.text);
    let streamed = respond(
        &gw,
        json!({"model": "api_first", "input": "Hi", "stream": true}),
    )
    .await;
    let objects = response_objects(&events_of(&streamed.text));
    assert_eq!(objects.len(), 3, "{}", streamed.text);
    for (name, id, kept) in &objects {
        assert_eq!(id, &objects[0].1, "{name}");
        assert!(ours(id), "{name}: {id}");
        assert_eq!(kept, &json!(false), "{name}");
    }
    gw.shutdown().await;
}

/// The text of a response: its output messages' `output_text` parts joined.
fn output_text(body: &Value) -> String {
    body["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// A labelled route holds Responses answers to its output contract as it holds chat's: a label
/// pulled out of a longer answer is the response's text (translated from chat, or passed through
/// from a server that serves Responses), an exact label leaves the bytes alone, no label is
/// flagged; a stream's verdict is recorded at its end.
#[tokio::test]
async fn a_labelled_route_holds_responses_answers_to_its_contract() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let labels = || {
        Some(tierwise::config::file::RawOutput {
            labels: Some(tierwise::config::file::spanned(
                ["billing", "technical", "general"]
                    .map(tierwise::config::file::text)
                    .to_vec(),
            )),
        })
    };
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("openai").responses = Some(tierwise::config::file::spanned(true));
            let kind = tierwise::config::TaskKind::Classification;
            c.add_route("labelled_responses", kind, &["local"]).output = labels();
            c.add_route("labelled_native", kind, &["api_fast"]).output = labels();
        });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    let ask = |route: &str| json!({"model": route, "input": "My card was charged twice."});

    for (route, fake) in [("labelled_responses", &local), ("labelled_native", &api)] {
        fake.update(|b| b.reply = "The category is: Technical.".into());
        let answer = respond(&gw, ask(route)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(
            output_text(&answer.body),
            "technical",
            "{route}: {}",
            answer.text
        );
        assert_eq!(
            answer.header("x-tierwise-contract"),
            Some("normalized"),
            "{route}"
        );
        assert_eq!(
            answer.body["object"], "response",
            "still a response: {}",
            answer.text
        );

        fake.update(|b| b.reply = "billing".into());
        let answer = respond(&gw, ask(route)).await;
        assert_eq!(output_text(&answer.body), "billing");
        assert_eq!(answer.header("x-tierwise-contract"), Some("ok"), "{route}");

        fake.update(|b| b.reply = "I cannot tell.".into());
        let answer = respond(&gw, ask(route)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(output_text(&answer.body), "I cannot tell.");
        assert_eq!(
            answer.header("x-tierwise-contract"),
            Some("violated"),
            "{route}"
        );
    }

    // A stream is relayed as it came; its verdict is recorded when it ends.
    let mut verdicts = Vec::new();
    for reply in ["general", "It is about billing.", "No idea."] {
        local.update(|b| b.reply = reply.into());
        let mut request = ask("labelled_responses");
        request["stream"] = json!(true);
        let answer = respond(&gw, request).await;
        assert_eq!(answer.header("x-tierwise-contract"), None);
        let events = events_of(&answer.text);
        let completed = &events.last().unwrap().1;
        assert_eq!(output_text(&completed["response"]), reply);
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        verdicts.push(row.contract.map(|c| c.to_string()));
    }
    assert_eq!(
        verdicts,
        [Some("ok"), Some("normalizable"), Some("violated")].map(|v| v.map(String::from))
    );
    gw.shutdown().await;
}

/// A sampled Responses request is shadow-checked as a chat request is: the reference tier gets
/// the same request through the Responses endpoint (passed through here, its server serving
/// Responses) as one whole answer, both answers are read as responses and scored; the check's
/// row says `responses`. A streamed request is checked on its streamed text.
#[tokio::test]
async fn a_sampled_responses_request_is_shadow_checked_against_the_reference() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("openai").responses = Some(tierwise::config::file::spanned(true));
            c.add_route(
                "shadowed_responses",
                tierwise::config::TaskKind::Summarization,
                &["local", "api_fast"],
            )
            .shadow = Some(tierwise::config::file::RawShadow::new("api_frontier", 1.0));
        });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    local.update(|b| b.reply = "alpha beta gamma delta".into());
    // Three words of four in common: the score says both answers were read.
    api.update(|b| b.reply = "alpha beta gamma epsilon".into());

    let scored_checks = async |count: u64| {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let summary = store
                .summary(0, i64::MAX, Some("shadowed_responses"))
                .await
                .unwrap();
            if let [checks] = &summary.checks[..]
                && checks.scored == count
            {
                return checks.clone();
            }
            assert!(std::time::Instant::now() < until, "{:?}", summary.checks);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let answer = respond(
        &gw,
        json!({"model": "shadowed_responses", "input": "Summarize this.", "max_output_tokens": 40}),
    )
    .await;
    answer.assert_served_by_first("local");
    let checks = scored_checks(1).await;
    assert_eq!(checks.agreement_ppm, 750_000, "{checks:?}");
    let sent = api.requests();
    assert_eq!(sent.len(), 1, "one shadow call");
    assert_eq!(sent[0].path, "/v1/responses");
    assert_eq!(sent[0].body["model"], "gpt-4o");
    assert_eq!(sent[0].body["input"], "Summarize this.");
    assert_eq!(sent[0].body["max_output_tokens"], 40);
    assert_eq!(sent[0].body.get("stream"), None);

    let answer = respond(
        &gw,
        json!({"model": "shadowed_responses", "input": "Summarize that.", "stream": true}),
    )
    .await;
    answer.assert_served_by_first("local");
    let checks = scored_checks(2).await;
    assert_eq!(checks.agreement_ppm, 1_500_000, "{checks:?}");
    let sent = api.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].body.get("stream"),
        None,
        "a whole answer: {:?}",
        sent[1].body
    );

    let rows = store
        .requests(0, i64::MAX, Some("shadowed_responses"))
        .await
        .unwrap();
    let shadow: Vec<_> = rows
        .iter()
        .filter(|row| row.purpose == tierwise::ledger::Purpose::Shadow)
        .map(|row| row.endpoint.as_ref())
        .collect();
    assert_eq!(shadow, ["responses", "responses"], "{rows:?}");
    gw.shutdown().await;
}

/// A request with its own JSON schema on a labelled route is held to the schema, not the labels:
/// its JSON answer, which holds a label, is passed on whole (it failed with the contract applied
/// to it: the answer became the bare label).
#[tokio::test]
async fn a_json_schema_request_on_a_labelled_route_keeps_its_json() {
    let (local, _api, gw) = setup().await;
    local.update(|b| b.reply = r#"{"label": "billing"}"#.into());
    let schema = json!({"type": "object", "properties": {"label": {"type": "string"}}});
    let answer = respond(
        &gw,
        json!({"model": "classification", "input": "Charged twice.",
            "text": {"format": {"type": "json_schema", "name": "ticket", "schema": schema}}}),
    )
    .await;
    assert_eq!(output_text(&answer.body), r#"{"label": "billing"}"#);
    assert_eq!(answer.header("x-tierwise-contract"), None);
    gw.shutdown().await;
}

/// Each kept response holds its own turn only: over a 50-turn conversation the rows stay the
/// size of one turn (the sum of the rows grows linearly), while every turn still reaches its
/// tier whole.
#[tokio::test]
async fn a_conversations_kept_bytes_grow_linearly_with_its_turns() {
    const TURNS: usize = 50;
    let (local, _api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    let mut previous = Value::Null;
    for _ in 0..TURNS {
        let answer = respond(
            &gw,
            json!({"model": "summarize", "input": "Tell me more.", "previous_response_id": previous}),
        )
        .await;
        answer.assert_served_by_first("local");
        previous = answer.body["id"].clone();
    }
    let requests = local.requests();
    let sent = &requests.last().unwrap().body;
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        2 * TURNS - 1,
        "the last turn carries the whole conversation"
    );
    wait_for_kept(&gw, TURNS as i64).await;
    let sizes = gw.store().await.kept_response_sizes().await.unwrap();
    let (smallest, largest) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    let total: i64 = sizes.iter().sum();
    assert!(largest < 2 * smallest, "each row keeps one turn: {sizes:?}");
    assert!(
        total <= TURNS as i64 * largest,
        "{total} bytes for {TURNS} turns: {sizes:?}"
    );
    gw.shutdown().await;
}

/// `n` chained rows in `scope` (the first starting the conversation), created now; their ids.
fn chained(scope: &str, n: usize) -> Vec<tierwise::ledger::responses::KeptRow> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let prefix = uuid::Uuid::now_v7().simple().to_string();
    (0..n)
        .map(|turn| tierwise::ledger::responses::KeptRow {
            id: format!("resp_{prefix}_{turn}"),
            scope: scope.into(),
            created_ms: now,
            request_id: format!("r{turn}"),
            previous_id: (turn > 0).then(|| format!("resp_{prefix}_{}", turn - 1)),
            input: json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": format!("turn {turn}")}]}]).to_string(),
            response: json!({"id": format!("resp_{prefix}_{turn}"), "status": "completed", "output": [
                {"id": format!("msg_{turn}"), "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": format!("answer {turn}")}]}
            ]}).to_string(),
        })
        .collect()
}

/// A chain of 200 turns is read back in one query, newest first, on SQLite and PostgreSQL; the
/// walk is bounded by its `max` and stops at a turn of another scope (printed: the time one
/// lookup takes, `-- --nocapture`).
#[tokio::test]
async fn a_chain_of_turns_is_read_in_one_query_on_both_databases() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let store = tierwise::ledger::Store::connect(&backend.url().await)
            .await
            .unwrap();
        let rows = chained("key-a", 200);
        let refs: Vec<_> = rows.iter().collect();
        store.keep_responses(&refs).await.unwrap();
        let head = &rows[199].id;
        let mut took = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let chain = store.kept_chain(head, "key-a", 0, 1000).await.unwrap();
            took.push(started.elapsed());
            assert_eq!(chain.len(), 200, "{backend:?}");
            assert_eq!(chain[0].id, *head);
            assert_eq!(chain[199].id, rows[0].id);
            assert_eq!(chain[199].previous_id, None);
        }
        took.sort();
        eprintln!(
            "{backend:?}: a chain of 200 turns read in {:?} (median of 5; fastest {:?})",
            took[2], took[0]
        );
        let bounded = store.kept_chain(head, "key-a", 0, 10).await.unwrap();
        assert_eq!(bounded.len(), 10);
        assert!(
            store
                .kept_chain(head, "key-b", 0, 1000)
                .await
                .unwrap()
                .is_empty()
        );
        // A turn in the middle kept in another scope ends the walk there.
        let mut mixed = chained("key-a", 3);
        mixed[1].scope = "key-b".into();
        let refs: Vec<_> = mixed.iter().collect();
        store.keep_responses(&refs).await.unwrap();
        let chain = store
            .kept_chain(&mixed[2].id, "key-a", 0, 1000)
            .await
            .unwrap();
        assert_eq!(chain.len(), 1, "{backend:?}");
        assert_eq!(chain[0].previous_id.as_deref(), Some(mixed[1].id.as_str()));
        store.close().await;
    }
}

/// A conversation one of whose earlier turns is gone — deleted, or past its retention — is not
/// continued with a hole in it: OpenAI's 400 `previous_response_not_found`, naming the turn that
/// is gone, and nothing goes upstream; the later turn itself is still read by `GET`, and its
/// input items are a 404.
#[tokio::test]
async fn a_conversation_missing_an_earlier_turn_is_not_continued() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |c| c.0.server.api_keys = None).await;
    let mut ids = Vec::new();
    for input in ["One", "Two", "Three"] {
        let previous = ids.last().cloned().map_or(Value::Null, Value::String);
        let answer = respond(
            &gw,
            json!({"model": "summarize", "input": input, "previous_response_id": previous}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        ids.push(answer.body["id"].as_str().unwrap().to_string());
    }
    let deleted = call(
        &gw,
        reqwest::Method::DELETE,
        &format!("/v1/responses/{}", ids[1]),
        CLIENT_KEY,
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    let sent_before = local.request_count();
    for written in [false, true] {
        if written {
            wait_for_kept(&gw, 2).await;
        }
        let next = respond(
            &gw,
            json!({"model": "summarize", "input": "Four", "previous_response_id": ids[2]}),
        )
        .await;
        let message = next.error(400, Some("previous_response_not_found"));
        assert!(message.contains(&ids[1]), "names the turn gone: {message}");
        assert_eq!(next.body["error"]["param"], "previous_response_id");
        let listed = call(
            &gw,
            reqwest::Method::GET,
            &format!("/v1/responses/{}/input_items", ids[2]),
            CLIENT_KEY,
            None,
        )
        .await;
        listed.error(404, None);
    }
    assert_eq!(local.request_count(), sent_before, "nothing went upstream");
    let read = call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{}", ids[2]),
        CLIENT_KEY,
        None,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text);

    // A first turn past its retention is still carried by a later turn within it: only the
    // response continued must be within retention.
    let store = gw.store().await;
    let mut rows = chained("", 2);
    rows[0].created_ms -= 31 * 24 * 3600 * 1000;
    let refs: Vec<_> = rows.iter().collect();
    store.keep_responses(&refs).await.unwrap();
    let next = respond(
        &gw,
        json!({"model": "summarize", "input": "Again", "previous_response_id": rows[1].id}),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.text);
    let sent = local.requests().last().unwrap().body.clone();
    assert!(sent.to_string().contains("answer 0"), "{sent}");
    gw.shutdown().await;
}

/// The reaper deletes a response past its retention only when no response within it continues
/// it, however many turns later — one query on SQLite and PostgreSQL, a cycle included — and a
/// chain is read back from a young response through its old turns, not from an old one.
#[tokio::test]
async fn old_turns_a_young_one_continues_are_kept_on_both_databases() {
    const DAY: i64 = 24 * 3600 * 1000;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let store = tierwise::ledger::Store::connect(&backend.url().await)
            .await
            .unwrap();
        let mut live = chained("", 3);
        live[0].created_ms -= 40 * DAY;
        live[1].created_ms -= 35 * DAY;
        let mut dead = chained("", 2);
        dead[0].created_ms -= 40 * DAY;
        dead[1].created_ms -= 35 * DAY;
        let mut cycle = chained("", 2);
        cycle[0].previous_id = Some(cycle[1].id.clone());
        for row in &mut cycle {
            row.created_ms -= 40 * DAY;
        }
        let rows: Vec<_> = live.iter().chain(&dead).chain(&cycle).collect();
        store.keep_responses(&rows).await.unwrap();
        let cutoff = live[2].created_ms - 30 * DAY;
        assert_eq!(
            store.forget_responses_before(cutoff).await.unwrap(),
            4,
            "{backend:?}"
        );
        let chain = store
            .kept_chain(&live[2].id, "", cutoff, 1000)
            .await
            .unwrap();
        let ids: Vec<&str> = chain.iter().map(|row| row.id.as_str()).collect();
        let want = [&live[2].id, &live[1].id, &live[0].id];
        assert_eq!(ids, want, "{backend:?}");
        assert!(
            store
                .kept_chain(&live[1].id, "", cutoff, 1000)
                .await
                .unwrap()
                .is_empty(),
            "an old response is not continued itself"
        );
        // Once its newest turn is old too, the conversation goes.
        assert_eq!(
            store
                .forget_responses_before(live[2].created_ms + 1)
                .await
                .unwrap(),
            3,
            "{backend:?}"
        );
        store.close().await;
    }
}

/// An active conversation stays continuable past its first turn's retention: with a retention
/// of 2 s, a first turn continued within it is still carried after the reaper has deleted a lone
/// response as old as it, and the conversation goes on from its newest turn.
#[tokio::test]
async fn an_active_conversation_outlives_its_first_turns_retention() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.api_keys = None;
        c.0.responses.retention = Some(tierwise::config::file::text("2s"));
    })
    .await;
    let started = tokio::time::Instant::now();
    respond(&gw, json!({"model": "summarize", "input": "Alone"})).await;
    let first = respond(&gw, json!({"model": "summarize", "input": "First"})).await;
    wait_for_kept(&gw, 2).await;
    // The second turn comes when the first is near the end of its retention, so that the lone
    // one is deleted (a reaping period, 0.5 s, after it expired) well before the second expires.
    tokio::time::sleep_until(started + Duration::from_millis(1700)).await;
    let second = respond(
        &gw,
        json!({"model": "summarize", "input": "Second", "previous_response_id": first.body["id"]}),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text);
    wait_for_kept(&gw, 3).await;
    // The reaper has run past the first turn's retention once the lone response is gone.
    wait_for_kept(&gw, 2).await;
    assert!(
        started.elapsed() < Duration::from_millis(3600),
        "the second turn is still young"
    );
    let third = respond(
        &gw,
        json!({"model": "summarize", "input": "Third", "previous_response_id": second.body["id"]}),
    )
    .await;
    assert_eq!(third.status, 200, "{}", third.text);
    let sent = local.requests().last().unwrap().body.clone();
    let texts: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|message| message["role"] == "user")
        .map(|message| message["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["First", "Second", "Third"]);
    gw.shutdown().await;
}

/// A row kept before rows were chained holds its whole conversation and no previous id: it is
/// the start of its chain, and a next turn carries all it holds.
#[tokio::test]
async fn a_row_kept_whole_before_chains_still_starts_a_conversation() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |c| c.0.server.api_keys = None).await;
    let mut row = chained("", 1).remove(0);
    row.input = json!([
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "First"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Reply"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Second"}]},
    ])
    .to_string();
    gw.store().await.keep_responses(&[&row]).await.unwrap();
    let next = respond(
        &gw,
        json!({"model": "summarize", "input": "Third", "previous_response_id": row.id}),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.text);
    let sent = &local.requests()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "First"},
            {"role": "assistant", "content": "Reply"},
            {"role": "user", "content": "Second"},
            {"role": "assistant", "content": "answer 0"},
            {"role": "user", "content": "Third"},
        ])
    );
    gw.shutdown().await;
}

/// `GET /v1/responses/{id}/input_items` lists what a response answered — the turns before it,
/// each its input then its output, and its own input — in OpenAI's list shape: newest first by
/// default, `order`, `limit`, `after` to page on; another key's response is a 404.
#[tokio::test]
async fn input_items_list_the_conversation_a_page_at_a_time() {
    const OTHER: &str = "tw-other-key-123";
    let (_local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.api_keys = Some(vec![
            tierwise::config::file::text("${CLIENT_KEY}"),
            tierwise::config::file::text(OTHER),
        ]);
    })
    .await;
    let first = respond(&gw, json!({"model": "summarize", "input": "One"})).await;
    let second = respond(
        &gw,
        json!({"model": "summarize", "input": [{"role": "user", "content": "Two"}], "previous_response_id": first.body["id"]}),
    )
    .await;
    let id = second.body["id"].as_str().unwrap();
    let list = |query: String| {
        let path = format!("/v1/responses/{id}/input_items{query}");
        let gw = &gw;
        async move { call(gw, reqwest::Method::GET, &path, CLIENT_KEY, None).await }
    };
    let text = |item: &Value| item["content"][0]["text"].as_str().unwrap().to_string();
    let all = list("".into()).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["has_more"], false);
    let data = all.body["data"].as_array().unwrap();
    let texts: Vec<String> = data.iter().map(text).collect();
    assert_eq!(
        texts,
        ["Two", "Hello from the fake upstream.", "One"],
        "newest first"
    );
    assert!(
        data.iter()
            .all(|item| item["type"] == "message" && item["id"].is_string())
    );
    assert_eq!(all.body["first_id"], data[0]["id"]);
    assert_eq!(all.body["last_id"], data[2]["id"]);
    assert_eq!(
        data[1]["id"], first.body["output"][0]["id"],
        "an output item keeps its id"
    );

    let page = list("?order=asc&limit=2".into()).await;
    let texts: Vec<String> = page.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(texts, ["One", "Hello from the fake upstream."]);
    assert_eq!(page.body["has_more"], true);
    let after = page.body["last_id"].as_str().unwrap();
    let rest = list(format!("?order=asc&limit=2&after={after}")).await;
    let texts: Vec<String> = rest.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(texts, ["Two"]);
    assert_eq!(rest.body["has_more"], false);
    // The same ids at every listing, once written to the database too.
    wait_for_kept(&gw, 2).await;
    let again = list("?order=asc&limit=2".into()).await;
    assert_eq!(again.body, page.body);

    list("?limit=0".into()).await.error(400, None);
    list("?order=sideways".into()).await.error(400, None);
    call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{id}/input_items"),
        OTHER,
        None,
    )
    .await
    .error(404, None);
    // The turn in the middle of this key's conversation is not another key's to go on from.
    call(
        &gw,
        reqwest::Method::POST,
        "/v1/responses",
        OTHER,
        Some(json!({"model": "summarize", "input": "Mine now", "previous_response_id": first.body["id"]})),
    )
    .await
    .error(400, Some("previous_response_not_found"));
    gw.shutdown().await;
}

/// A stream passed through to a server that serves Responses (which got `store: false` and no
/// `previous_response_id`) is told to its client as the gateway keeps it: every event that
/// carries the response object says the gateway's id, `store: true` and what it continues, as
/// the plain answer and `GET` do.
#[tokio::test]
async fn a_passed_through_stream_says_it_is_kept_under_the_gateways_id() {
    let (_local, api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    let first = respond(&gw, json!({"model": "api_first", "input": "Hi"})).await;
    assert_eq!(first.body["store"], true, "{}", first.text);
    let first_id = first.body["id"].as_str().unwrap();
    let answer = respond(
        &gw,
        json!({"model": "api_first", "input": "More", "stream": true, "previous_response_id": first_id}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let requests = api.requests();
    let sent = &requests.last().unwrap().body;
    assert_eq!(sent["store"], false, "{sent}");
    let events = events_of(&answer.text);
    let objects: Vec<&Value> = events
        .iter()
        .filter_map(|(_, event)| event.get("response"))
        .collect();
    assert_eq!(objects.len(), 3, "created, in_progress, completed");
    let id = objects[0]["id"].as_str().unwrap();
    assert!(id.starts_with("resp_") && id != "resp_fake", "{id}");
    for object in &objects {
        assert_eq!(object["id"], id, "{object}");
        assert_eq!(object["store"], true, "{object}");
        assert_eq!(object["previous_response_id"], first_id, "{object}");
    }
    let read = call(
        &gw,
        reqwest::Method::GET,
        &format!("/v1/responses/{id}"),
        CLIENT_KEY,
        None,
    )
    .await;
    assert_eq!(read.body, *objects[2]);
    gw.shutdown().await;
}

/// A request continuing more than `responses.max_turns` earlier turns is refused: a 400 that
/// names the key, and nothing upstream; the turns within the bound go on, and a response at the
/// bound lists its input items — from the process's map and from the database alike.
#[tokio::test]
async fn a_conversation_past_max_turns_is_refused() {
    let (local, _api, gw) = kept_setup(sqlite_url(), |c| {
        c.0.server.api_keys = None;
        c.0.responses.max_turns = Some(tierwise::config::file::spanned(2));
    })
    .await;
    let mut previous = Value::Null;
    for _ in 0..3 {
        let answer = respond(
            &gw,
            json!({"model": "summarize", "input": "More.", "previous_response_id": previous}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        previous = answer.body["id"].clone();
    }
    let refused = respond(
        &gw,
        json!({"model": "summarize", "input": "More.", "previous_response_id": previous}),
    )
    .await;
    let message = refused.error(400, None);
    assert!(message.contains("responses.max_turns"), "{message}");
    assert_eq!(refused.body["error"]["param"], "previous_response_id");
    assert_eq!(local.request_count(), 3);
    // Reading is not continuing: the response at the bound lists its conversation.
    let items = |id: &str| {
        let path = format!("/v1/responses/{id}/input_items?limit=100");
        let gw = &gw;
        async move { call(gw, reqwest::Method::GET, &path, CLIENT_KEY, None).await }
    };
    let listed = items(previous.as_str().unwrap()).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 5);

    // The same bound on the database's rows (none in the process's map): a response with two
    // turns before it is listed and not continued, one with three is neither, and its listing's
    // error names the key, not a parameter the request has not got.
    let rows = chained("", 4);
    let refs: Vec<_> = rows.iter().collect();
    gw.store().await.keep_responses(&refs).await.unwrap();
    let refused = respond(
        &gw,
        json!({"model": "summarize", "input": "More.", "previous_response_id": rows[2].id}),
    )
    .await;
    let message = refused.error(400, None);
    assert!(message.contains("responses.max_turns"), "{message}");
    let listed = items(&rows[2].id).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 5);
    let listed = items(&rows[3].id).await;
    let message = listed.error(400, None);
    assert!(message.contains("responses.max_turns"), "{message}");
    assert!(!message.contains("previous_response_id"), "{message}");
    assert!(listed.body["error"]["param"].is_null(), "{}", listed.text);
    let fits = respond(
        &gw,
        json!({"model": "summarize", "input": "More.", "previous_response_id": rows[1].id}),
    )
    .await;
    assert_eq!(fits.status, 200, "{}", fits.text);
    gw.shutdown().await;
}

/// Paging a conversation's input items by `after` ends, with every item once, in either order and
/// at any page size, though its ids repeat: the passed-through server names every output item
/// `msg_fake`, and the client sends an item with that id, and one of its own, in every turn.
#[tokio::test]
async fn input_items_page_to_the_end_though_ids_repeat() {
    let (_local, _api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    let mut previous = Value::Null;
    for turn in 0..4 {
        let input = json!([
            {"id": "msg_fake", "type": "message", "role": "user", "content": format!("Turn {turn}")},
            {"id": "msg_mine", "type": "message", "role": "user", "content": "Again"},
        ]);
        let answer = respond(
            &gw,
            json!({"model": "api_first", "input": input, "previous_response_id": previous}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        previous = answer.body["id"].clone();
    }
    let id = previous.as_str().unwrap();
    let list = |query: String| {
        let path = format!("/v1/responses/{id}/input_items{query}");
        let gw = &gw;
        async move { call(gw, reqwest::Method::GET, &path, CLIENT_KEY, None).await }
    };
    let whole = list("?order=asc&limit=100".into()).await;
    let whole: Vec<Value> = whole.body["data"].as_array().unwrap().clone();
    assert_eq!(
        whole.len(),
        3 * 3 + 2,
        "three turns before, each 2 in and 1 out; 2 in"
    );
    let ids: Vec<&str> = whole
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "ids unique within a listing: {ids:?}"
    );
    for order in ["asc", "desc"] {
        for limit in 1..=3 {
            let mut paged = Vec::new();
            let mut after = String::new();
            for _ in 0..=whole.len() {
                let page = list(format!("?order={order}&limit={limit}{after}")).await;
                assert_eq!(page.status, 200, "{}", page.text);
                paged.extend(page.body["data"].as_array().unwrap().iter().cloned());
                if page.body["has_more"] == false {
                    break;
                }
                after = format!("&after={}", page.body["last_id"].as_str().unwrap());
            }
            if order == "desc" {
                paged.reverse();
            }
            assert_eq!(
                paged, whole,
                "order={order} limit={limit} pages to the end, each item once"
            );
        }
    }
    gw.shutdown().await;
}

/// What a client reads of `store` is what happened: a passed-through stream that ends
/// `response.failed` is not kept, and that last event says `store: false`; a request saying
/// `store: false` that continues a response reads `store: false` and the `previous_response_id`
/// it gave, whether passed through (whose server saw neither) or served through chat.
#[tokio::test]
async fn store_and_previous_response_id_read_as_they_are_on_every_tier() {
    let (_local, api, gw) = kept_setup(sqlite_url(), |_| {}).await;
    api.set_fault(Fault::ErrorMidStream { after: 4 });
    let failed = respond(
        &gw,
        json!({"model": "api_first", "input": "Hi", "stream": true}),
    )
    .await;
    let events = events_of(&failed.text);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.failed", "{}", failed.text);
    assert_eq!(last["response"]["store"], false, "{last}");
    let id = last["response"]["id"].as_str().unwrap();
    assert_ne!(id, "resp_fake", "the same id as its earlier events");
    let path = format!("/v1/responses/{id}");
    call(&gw, reqwest::Method::GET, &path, CLIENT_KEY, None)
        .await
        .error(404, None);
    api.set_fault(Fault::None);

    let first = respond(&gw, json!({"model": "api_first", "input": "Hi"})).await;
    let first_id = first.body["id"].as_str().unwrap();
    for model in ["api_first", "summarize"] {
        for stream in [false, true] {
            let answer = respond(
                &gw,
                json!({"model": model, "input": "More", "store": false, "stream": stream, "previous_response_id": first_id}),
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.text);
            let object = match stream {
                false => answer.body.clone(),
                true => events_of(&answer.text).last().unwrap().1["response"].clone(),
            };
            assert_eq!(object["store"], false, "{model} stream={stream}: {object}");
            assert_eq!(
                object["previous_response_id"], first_id,
                "{model} stream={stream}: {object}"
            );
        }
    }
    gw.shutdown().await;
}
