//! Providers that speak another wire format, through the gateway: a client speaking OpenAI's
//! format falls back from a local server to Anthropic's Messages API or to Azure OpenAI (each
//! played by the shared fake in that format), plain and streamed, tool calls intact, usage and
//! cost exact (the ledger's == the answer's == tokens × price); and the stream faults of each
//! format (cut before and after the first event, an error event, overload).

use serde_json::{Value, json};
use tierwise::config::Api;
use tierwise::config::file::{RawProvider, RawTier, spanned, text};
use tierwise::config::{KeyHeader, TaskKind};
use tierwise_fake::{Behavior, DownAddr, FakeToolCall, FakeUpstream, Fault, unused_addr};

use crate::util::{Answer, TestConfig, TestGateway, stored};

/// The fake's answer: some text, one tool call, and usage with cache reads and writes.
fn weather_behavior() -> Behavior {
    Behavior {
        reply: "Checking the weather.".into(),
        tool_calls: vec![FakeToolCall {
            id: "toolu_01A".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Paris","unit":"celsius"}"#.into(),
        }],
        prompt_tokens: 1000,
        cached_tokens: 200,
        cache_write_tokens: 100,
        completion_tokens: 50,
        ..Behavior::default()
    }
}

/// claude-sonnet-4-5 at $3 input, $0.30 cache reads, $3.75 cache writes and $15 output per
/// million: 700 × 3 + 200 × 0.30 + 100 × 3.75 + 50 × 15 µUSD.
const WEATHER_COST_PUSD: i64 =
    (700 * 3_000_000) + (200 * 300_000) + (100 * 3_750_000) + (50 * 15_000_000);

/// `local` on a server that is down, then `claude` on an Anthropic-shaped fake; the route `agent`
/// over both, and `claude_first` over `claude` then `api_fast` (OpenAI-shaped).
async fn anthropic_setup() -> (TestGateway, FakeUpstream, FakeUpstream, DownAddr) {
    let down = unused_addr().await;
    let anthropic = FakeUpstream::start().await;
    let openai = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&format!("http://{down}/v1"), &openai.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(Api::Anthropic);
            provider.api_key = Some(text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            // The stream fault tests meet more failures in a row than the default lets through.
            provider.breaker.failures = Some(spanned(100));
            c.0.providers.insert(text("anthropic"), provider);
            c.0.tiers.insert(
                text("claude"),
                RawTier::new("anthropic", "claude-sonnet-4-5"),
            );
            c.add_route("agent", TaskKind::Agentic, &["local", "claude"]);
            c.add_route("claude_first", TaskKind::Agentic, &["claude", "api_fast"]);
            c.add_route("fast_first", TaskKind::Agentic, &["api_fast", "claude"]);
        });
    let gw = TestGateway::start(&config).await;
    (gw, anthropic, openai, down)
}

fn weather_request(model: &str, stream: bool) -> Value {
    let mut request = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You report the weather."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}},
        }}],
        "tool_choice": "auto",
    });
    if stream {
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
    }
    request
}

/// The data of each event of an SSE body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// A streamed chat answer put back together: its text, its tool calls (id, name, arguments), its
/// finish reason, its usage chunk, and whether `[DONE]` ended it.
struct Streamed {
    text: String,
    tools: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
    errors: Vec<Value>,
}

fn streamed(text: &str) -> Streamed {
    let mut out = Streamed {
        text: String::new(),
        tools: Vec::new(),
        finish: None,
        usage: None,
        done: false,
        errors: Vec::new(),
    };
    for data in events(text) {
        assert!(!out.done, "an event after [DONE]: {text}");
        if data == "[DONE]" {
            out.done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap_or_else(|_| panic!("{data}"));
        if chunk.get("error").is_some() {
            out.errors.push(chunk);
            continue;
        }
        assert!(
            out.usage.is_none(),
            "the usage chunk is the last one: {text}"
        );
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(chunk["choices"], json!([]), "{data}");
            out.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().unwrap() {
            let delta = &choice["delta"];
            out.text.push_str(delta["content"].as_str().unwrap_or(""));
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(index, out.tools.len(), "{data}");
                    out.tools.push((
                        id.to_string(),
                        call["function"]["name"].as_str().unwrap().to_string(),
                        String::new(),
                    ));
                }
                out.tools[index]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(finish) = choice["finish_reason"].as_str() {
                out.finish = Some(finish.to_string());
            }
        }
    }
    out
}

/// Usage in OpenAI's terms: every input token in `prompt_tokens`, cache reads and writes apart.
fn assert_weather_usage(usage: &Value) {
    assert_eq!(usage["prompt_tokens"], 1000, "{usage}");
    assert_eq!(usage["completion_tokens"], 50, "{usage}");
    assert_eq!(usage["total_tokens"], 1050, "{usage}");
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 200,
        "{usage}"
    );
    assert_eq!(
        usage["prompt_tokens_details"]["cache_write_tokens"], 100,
        "{usage}"
    );
}

/// The row the ledger keeps of `answer`'s request: its tokens and its cost, which must be the
/// answer's, at the model's prices.
async fn assert_weather_row(gw: &TestGateway, answer: &Answer) {
    let store = gw.store().await;
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (
            row.tokens_in,
            row.tokens_cached,
            row.tokens_cache_write,
            row.tokens_out
        ),
        (1000, 200, 100, 50)
    );
    assert!(!row.tokens_estimated);
    assert_eq!(row.cost_pusd.map(|c| c.0), Some(WEATHER_COST_PUSD));
    assert_eq!(row.tier.as_deref(), Some("claude"));
}

#[tokio::test]
async fn fallback_to_anthropic_keeps_tool_calls_and_prices_cache_reads_and_writes_apart() {
    let (gw, anthropic, _openai, _down) = anthropic_setup().await;
    anthropic.set_behavior(weather_behavior());

    let answer = Answer::of(
        gw.post("/v1/chat/completions", &weather_request("agent", false))
            .await,
    )
    .await;
    answer.assert_served_by("claude", "local:connect_refused");
    let message = &answer.body["choices"][0]["message"];
    assert_eq!(message["content"], "Checking the weather.");
    let call = &message["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris", "unit": "celsius"}));
    assert_eq!(answer.body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(answer.body["object"], "chat.completion");
    assert_weather_usage(&answer.body["usage"]);
    // 0.003285 USD: the header the client gets is the cost the ledger stores.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.003285"));
    assert_weather_row(&gw, &answer).await;

    // What Anthropic was sent: its own shape, its own headers, the key never as a Bearer token.
    let sent = anthropic.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.x_api_key.as_deref(), Some("sk-ant-secret"));
    assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(sent.authorization, None);
    assert_eq!(sent.body["system"], "You report the weather.");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}])
    );
    assert_eq!(sent.body["tool_choice"], json!({"type": "auto"}));
    assert_eq!(sent.body["tools"][0]["name"], "weather");
    assert_eq!(
        sent.body["max_tokens"], 4096,
        "the stated default where none is given"
    );
    assert_eq!(sent.body["model"], "claude-sonnet-4-5");

    // The same, streamed: Anthropic's events come out as OpenAI's chunks, usage last, with the
    // same cost.
    let answer = Answer::of(
        gw.post("/v1/chat/completions", &weather_request("agent", true))
            .await,
    )
    .await;
    answer.assert_served_by("claude", "local:connect_refused");
    let stream = streamed(&answer.text);
    assert!(stream.done && stream.errors.is_empty(), "{}", answer.text);
    assert_eq!(stream.text, "Checking the weather.");
    assert_eq!(
        stream.tools,
        [(
            "toolu_01A".to_string(),
            "weather".to_string(),
            r#"{"city":"Paris","unit":"celsius"}"#.to_string()
        )]
    );
    assert_eq!(stream.finish.as_deref(), Some("tool_calls"));
    let usage = stream.usage.expect("a usage chunk");
    assert_weather_usage(&usage);
    assert_eq!(usage["cost_usd"], json!(0.003285));
    assert_weather_row(&gw, &answer).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tiers_max_tokens_and_the_clients_reach_anthropic_and_bearer_auth_is_honoured() {
    let anthropic = FakeUpstream::start().await;
    let openai = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&openai.base_url(), &openai.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(Api::Anthropic);
            provider.auth = Some(KeyHeader::Bearer);
            provider.api_version = Some(text("2023-06-01"));
            provider.api_key = Some(text("sk-ant-oauth"));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("anthropic"), provider);
            let mut tier = RawTier::new("anthropic", "claude-haiku-4-5-20251001");
            tier.max_tokens = Some(300);
            c.0.tiers.insert(text("claude"), tier);
        });
    let gw = TestGateway::start(&config).await;
    let answer = gw.ask("claude").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // claude-haiku-4-5 is $1 in and $5 out per million, the dated snapshot priced as its family.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.000045"));
    let sent = anthropic.requests().pop().unwrap();
    assert_eq!(sent.body["max_tokens"], 300);
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-ant-oauth"));
    assert_eq!(sent.x_api_key, None);

    let mut request = crate::util::chat("claude", "x");
    request["max_tokens"] = json!(7);
    request["temperature"] = json!(1.7);
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = anthropic.requests().pop().unwrap();
    assert_eq!(
        sent.body["max_tokens"], 7,
        "the client's limit wins over the tier's"
    );
    assert_eq!(sent.body["temperature"], 1.0, "at most Anthropic's ceiling");

    // Anthropic serves no embeddings: the tier passes, and the client is told why.
    let answer = Answer::of(
        gw.post("/v1/embeddings", &json!({"model": "claude", "input": "x"}))
            .await,
    )
    .await;
    answer.error(400, Some("unsupported_parameter"));
    assert!(answer.text.contains("no_endpoint"), "{}", answer.text);
    gw.shutdown().await;
}

#[tokio::test]
async fn anthropic_refusals_reach_the_client_in_openais_shape_and_overload_falls_back() {
    let (gw, anthropic, openai, _down) = anthropic_setup().await;

    // A refusal of the request itself goes straight back, in OpenAI's words and shape.
    anthropic.set_fault(Fault::Status {
        status: 400,
        body: Some(r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.0.content: Input should be a valid list"},"request_id":"req_1"}"#.into()),
        retry_after: None,
    });
    let answer = gw.ask("claude_first").await;
    let message = answer.error(400, Some("invalid_request_error"));
    assert_eq!(message, "messages.0.content: Input should be a valid list");
    assert_eq!(answer.body["error"]["type"], "invalid_request_error");
    assert_eq!(
        openai.request_count(),
        0,
        "a request's own fault is not retried elsewhere"
    );

    // 529 is Anthropic's overload: the provider's failure, as a 503 is, named `http_529`; the next
    // tier answers.
    anthropic.set_fault(Fault::Status {
        status: 529,
        body: None,
        retry_after: None,
    });
    gw.ask("claude_first")
        .await
        .assert_served_by("api_fast", "claude:http_529");
    gw.ask_stream("claude_first")
        .await
        .assert_served_by("api_fast", "claude:http_529");
    gw.shutdown().await;
}

/// A provider whose account's money is spent — Anthropic's 402 `billing_error`, OpenAI's 429
/// `insufficient_quota` — is neither the client's fault nor an outage: the next tier answers,
/// the tier rests (no call until its rest is over) and its breaker hears nothing. (Anthropic's
/// 400 wordings of the same are read in `wire::anthropic`'s unit tests.)
#[tokio::test]
async fn a_spent_provider_account_falls_back_and_rests_the_tier_without_the_breaker() {
    let (gw, anthropic, openai, _down) = anthropic_setup().await;
    anthropic.set_fault(Fault::Status {
        status: 402,
        body: None,
        retry_after: None,
    });
    gw.ask("claude_first")
        .await
        .assert_served_by("api_fast", "claude:quota_exhausted");
    assert_eq!(anthropic.request_count(), 1);
    // Resting: the next request does not call the spent account at all.
    gw.ask_stream("claude_first")
        .await
        .assert_served_by("api_fast", "claude:rate_limited");
    assert_eq!(anthropic.request_count(), 1);
    let status = gw.provider("anthropic").await;
    assert_eq!(status["breaker"]["consecutive_failures"], 0, "{status}");
    assert_eq!(status["breaker"]["state"], "closed", "{status}");

    // OpenAI's own: a 429 that no wait ends, from an OpenAI-compatible upstream.
    openai.set_fault(Fault::Status {
        status: 429,
        body: Some(r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#.into()),
        retry_after: Some(1),
    });
    // `claude` is still resting, so no tier answers; the client is told why.
    let before = openai.request_count();
    let answer = gw.ask("fast_first").await;
    assert!(
        answer.status >= 500 || answer.status == 429,
        "{}",
        answer.text
    );
    assert!(
        answer.text.contains("api_fast: quota_exhausted"),
        "{}",
        answer.text
    );
    assert_eq!(
        openai.request_count(),
        before + 1,
        "not retried after its Retry-After"
    );
    gw.ask("fast_first").await;
    assert_eq!(
        openai.request_count(),
        before + 1,
        "resting past its Retry-After"
    );
    let status = gw.provider("openai").await;
    assert_eq!(status["breaker"]["consecutive_failures"], 0, "{status}");
    gw.shutdown().await;
}

/// Anthropic's stream faults: cut before any event, an error as the first event, and either right
/// after `message_start` (before the answer began) fall back; cut mid-answer and an error event
/// mid-answer end the client's stream with an error, recorded.
#[tokio::test]
async fn anthropic_stream_faults_fall_back_before_the_first_event_and_end_cleanly_after() {
    let (gw, anthropic, openai, _down) = anthropic_setup().await;
    anthropic.set_fault(Fault::CutBeforeFirstChunk);
    gw.ask_stream("claude_first")
        .await
        .assert_served_by("api_fast", "claude:stream_broken");
    // An OpenAI-compatible upstream passed through: its role-only first chunk, then an error,
    // falls back (the role chunk held, not relayed).
    anthropic.set_fault(Fault::None);
    openai.set_fault(Fault::ErrorMidStream { after: 1 });
    gw.ask_stream("fast_first")
        .await
        .assert_served_by("claude", "api_fast:stream_broken");
    openai.set_fault(Fault::None);
    // An error or the end right after `message_start` (before any text or tool call, a ping or
    // an empty text block between): the client has nothing yet, so the next tier answers.
    for fault in [
        Fault::ErrorMidStream { after: 0 },
        Fault::ErrorMidStream { after: 1 },
        Fault::ErrorMidStream { after: 3 },
    ] {
        anthropic.set_fault(fault.clone());
        let answer = gw.ask_stream("claude_first").await;
        // The fake's error is Anthropic's `overloaded_error`: the provider's overload, as its 529.
        answer.assert_served_by("api_fast", "claude:http_529");
        assert_eq!(
            streamed(&answer.text).errors,
            Vec::<Value>::new(),
            "{fault:?}"
        );
    }
    anthropic.set_fault(Fault::None);

    // A whole answer between: the breaker has heard of four failures in a row, one short of
    // opening.
    anthropic.set_fault(Fault::None);
    gw.ask_stream("claude_first")
        .await
        .assert_served_by_first("claude");
    anthropic.set_fault(Fault::CutAfterChunks { chunks: 1 });
    gw.ask_stream("claude_first")
        .await
        .assert_served_by("api_fast", "claude:stream_broken");
    // Overloaded, or cut, right after `message_start` and before the answer began: nothing of it
    // has reached the client, so the request still falls back.
    for (fault, why) in [
        (Fault::ErrorMidStream { after: 1 }, "claude:http_529"),
        (Fault::CutAfterChunks { chunks: 1 }, "claude:stream_broken"),
    ] {
        anthropic.set_fault(fault);
        gw.ask_stream("claude_first")
            .await
            .assert_served_by("api_fast", why);
    }

    let store = gw.store().await;
    // Cut after message_start, a text block's start, a ping and a word: the client has seen data,
    // so its stream ends with the gateway's error event.
    anthropic.set_fault(Fault::CutAfterChunks { chunks: 4 });
    let answer = gw.ask_stream("claude_first").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("claude"));
    let stream = streamed(&answer.text);
    assert_eq!(stream.text, "Hello ");
    assert_eq!(stream.errors.len(), 1, "{}", answer.text);
    assert_eq!(stream.errors[0]["error"]["code"], "stream_interrupted");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("stream_broken"));

    // Overloaded mid-answer: Anthropic's error event reaches the client in OpenAI's shape (the
    // type OpenAI's, Anthropic's own as the code, as in a refusal) and ends the stream, as a cut
    // ends it: no `[DONE]`, no second error; the ledger records the upstream's error.
    anthropic.set_fault(Fault::ErrorMidStream { after: 5 });
    let answer = gw.ask_stream("claude_first").await;
    let stream = streamed(&answer.text);
    assert!(!stream.done, "{}", answer.text);
    assert_eq!(
        stream.errors,
        [
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
        ]
    );
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("upstream_error_event"));
    gw.shutdown().await;
}

/// A stream that fails after Anthropic's `message_start` keeps what it said exactly: the input,
/// the cache reads and the cache writes, priced at their own prices; only the output is counted
/// (and the row says estimated). A whole stream's usage chunk comes once, the last before
/// `[DONE]`.
#[tokio::test]
async fn a_failed_anthropic_stream_keeps_message_starts_exact_input_and_cache_figures() {
    let (gw, anthropic, _openai, _down) = anthropic_setup().await;
    let store = gw.store().await;
    for fault in [
        Fault::CutAfterChunks { chunks: 4 },
        Fault::ErrorMidStream { after: 5 },
    ] {
        anthropic.set_behavior(Behavior {
            fault: fault.clone(),
            ..weather_behavior()
        });
        let answer = gw.ask_stream("claude_first").await;
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("claude"),
            "{fault:?}"
        );
        assert_eq!(streamed(&answer.text).errors.len(), 1, "{}", answer.text);
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert_eq!(
            (row.tokens_in, row.tokens_cached, row.tokens_cache_write),
            (1000, 200, 100),
            "{fault:?}"
        );
        assert!(row.tokens_estimated, "the output was counted: {fault:?}");
        let output = row.tokens_out as i64;
        assert!(output > 0, "{fault:?}");
        assert_eq!(
            row.cost_pusd.map(|c| c.0),
            Some(WEATHER_COST_PUSD - 50 * 15_000_000 + output * 15_000_000),
            "{fault:?}"
        );
    }
    anthropic.set_behavior(weather_behavior());
    let answer = Answer::of(
        gw.post(
            "/v1/chat/completions",
            &weather_request("claude_first", true),
        )
        .await,
    )
    .await;
    let stream = streamed(&answer.text);
    assert!(stream.done);
    assert_weather_usage(stream.usage.as_ref().unwrap());
    gw.shutdown().await;
}

/// `local` on a server that is down, then `azure` (deployment `gpt4o-prod` of gpt-4o) on an
/// Azure-shaped fake; `azure_first` over `azure` then `api_fast` (OpenAI-shaped); the embedding
/// route `vectors` over `embed_local` (down) then `azure_embed` (deployment `embed-prod`, priced as
/// text-embedding-3-large).
async fn azure_setup() -> (TestGateway, FakeUpstream, FakeUpstream, DownAddr) {
    let down = unused_addr().await;
    let azure = FakeUpstream::start().await;
    let openai = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&format!("http://{down}/v1"), &openai.base_url())
        .without_probes()
        .with(|c| {
            // The resource's URL, as Azure's portal gives it.
            let mut provider = RawProvider::new(format!("http://{}", azure.addr));
            provider.api = Some(Api::Azure);
            provider.api_key = Some(text("azure-secret"));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("azure"), provider);
            let mut tier = RawTier::new("azure", "gpt-4o");
            tier.deployment = Some(text("gpt4o-prod"));
            c.0.tiers.insert(text("azure"), tier);
            c.add_route("agent", TaskKind::Agentic, &["local", "azure"]);
            c.add_route("azure_first", TaskKind::Agentic, &["azure", "api_fast"]);
            // An embedding deployment whose name is neither its tier's model nor a priced model.
            let mut embed = RawTier::new("azure", "corp-embedder");
            embed.deployment = Some(text("embed-prod"));
            embed.base_model = Some(text("text-embedding-3-large"));
            c.0.tiers.insert(text("azure_embed"), embed);
            c.add_route(
                "vectors",
                TaskKind::Embedding,
                &["embed_local", "azure_embed"],
            );
        });
    let gw = TestGateway::start(&config).await;
    (gw, azure, openai, down)
}

#[tokio::test]
async fn fallback_to_azure_reaches_the_deployment_and_prices_the_model_not_the_deployment() {
    let (gw, azure, _openai, _down) = azure_setup().await;
    azure.set_behavior(Behavior {
        cache_write_tokens: 0,
        ..weather_behavior()
    });
    // gpt-4o at $2.50 input, $1.25 cached input and $10 output per million: 800 × 2.5 + 200 ×
    // 1.25 + 50 × 10 µUSD = 0.00275 USD.
    let answer = Answer::of(
        gw.post("/v1/chat/completions", &weather_request("agent", false))
            .await,
    )
    .await;
    answer.assert_served_by("azure", "local:connect_refused");
    let call = &answer.body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A");
    assert_eq!(
        call["function"]["arguments"],
        r#"{"city":"Paris","unit":"celsius"}"#
    );
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.00275"));
    let sent = azure.requests().pop().unwrap();
    assert_eq!(sent.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.api_key.as_deref(), Some("azure-secret"));
    assert_eq!(sent.authorization, None);

    // Streamed: Azure's first chunk, which has no choice, never reaches the client.
    let answer = Answer::of(
        gw.post("/v1/chat/completions", &weather_request("agent", true))
            .await,
    )
    .await;
    answer.assert_served_by("azure", "local:connect_refused");
    assert!(
        !answer.text.contains("prompt_filter_results"),
        "{}",
        answer.text
    );
    let stream = streamed(&answer.text);
    assert!(stream.done && stream.errors.is_empty(), "{}", answer.text);
    assert_eq!(stream.text, "Checking the weather.");
    assert_eq!(stream.tools[0].0, "toolu_01A");
    assert_eq!(stream.tools[0].2, r#"{"city":"Paris","unit":"celsius"}"#);
    let usage = stream.usage.expect("a usage chunk");
    assert_eq!(usage["cost_usd"], json!(0.00275));
    let store = gw.store().await;
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_cached, row.tokens_out),
        (1000, 200, 50)
    );
    assert_eq!(row.cost_pusd.map(|c| c.0), Some(2_750_000_000));
    gw.shutdown().await;
}

/// A prompt Azure's content filter refuses is the request's: the client gets Azure's refusal with
/// its findings, no other tier is asked, the breaker hears nothing.
#[tokio::test]
async fn an_azure_content_filter_refusal_is_the_requests_not_the_providers() {
    let (gw, azure, openai, _down) = azure_setup().await;
    azure.set_fault(Fault::ContentFilter);
    for _ in 0..6 {
        let answer = gw.ask("azure_first").await;
        answer.error(400, Some("content_filter"));
        assert_eq!(
            answer.body["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation",
            "{}",
            answer.text
        );
        assert_eq!(answer.header("x-tierwise-fallback"), None);
    }
    assert_eq!(openai.request_count(), 0);
    assert_eq!(gw.breaker_state("azure").await, "closed");
    gw.shutdown().await;
}

/// Azure's stream faults: a stream cut after only its prompt-filter chunk has given no answer and
/// falls back; cut after data, or an error event mid-answer, ends the client's stream cleanly.
#[tokio::test]
async fn azure_stream_faults_fall_back_before_the_first_answer_chunk_and_end_cleanly_after() {
    let (gw, azure, _openai, _down) = azure_setup().await;
    azure.set_fault(Fault::CutAfterChunks { chunks: 1 });
    gw.ask_stream("azure_first")
        .await
        .assert_served_by("api_fast", "azure:stream_broken");
    azure.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    gw.ask_stream("azure_first")
        .await
        .assert_served_by("api_fast", "azure:http_503");

    let store = gw.store().await;
    azure.set_fault(Fault::CutAfterChunks { chunks: 3 });
    let answer = gw.ask_stream("azure_first").await;
    assert_eq!(answer.header("x-tierwise-tier"), Some("azure"));
    let stream = streamed(&answer.text);
    assert_eq!(
        stream.errors[0]["error"]["code"], "stream_interrupted",
        "{}",
        answer.text
    );
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("stream_broken"));

    azure.set_fault(Fault::ErrorMidStream { after: 3 });
    let answer = gw.ask_stream("azure_first").await;
    let stream = streamed(&answer.text);
    assert!(stream.done && stream.errors.len() == 1, "{}", answer.text);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.error_kind.as_deref(), Some("upstream_error_event"));
    gw.shutdown().await;
}

/// An Azure tier must name its deployment, and only an Azure tier may.
/// An Azure API version older than the first that takes `stream_options` (2024-09-01-preview)
/// refuses the field: tierwise leaves it out there, so streams work, and counts their tokens
/// (marked estimated); a newer version gets it and reports exact usage.
#[tokio::test]
async fn an_older_azure_api_version_streams_without_stream_options_and_counts_the_tokens() {
    let down = unused_addr().await;
    let azure = FakeUpstream::start().await;
    let openai = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&format!("http://{down}/v1"), &openai.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(format!("http://{}", azure.addr));
            provider.api = Some(Api::Azure);
            provider.api_key = Some(text("azure-secret"));
            provider.api_version = Some(text("2024-06-01"));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("azure"), provider);
            let mut tier = RawTier::new("azure", "gpt-4o");
            tier.deployment = Some(text("gpt4o-prod"));
            c.0.tiers.insert(text("azure"), tier);
            c.add_route("azure_first", TaskKind::Agentic, &["azure", "api_fast"]);
        });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    let answer = Answer::of(
        gw.post(
            "/v1/chat/completions",
            &weather_request("azure_first", true),
        )
        .await,
    )
    .await;
    answer.assert_served_by_first("azure");
    let stream = streamed(&answer.text);
    assert!(stream.done, "{}", answer.text);
    let sent = azure.requests().pop().unwrap();
    assert!(sent.body.get("stream_options").is_none(), "{}", sent.body);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.tokens_estimated && row.tokens_out > 0);
    gw.shutdown().await;
}

#[test]
fn a_deployment_is_required_on_azure_and_refused_elsewhere() {
    let load = |change: fn(&mut TestConfig)| {
        let config =
            TestConfig::two_tier("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1").with(change);
        tierwise::config::Config::parse(
            &config.toml(),
            std::path::Path::new("t.toml"),
            &crate::util::env,
        )
        .map(|_| ())
        .map_err(|err| err.to_string())
    };
    let missing = load(|c| {
        let mut provider = RawProvider::new("https://res.openai.azure.com");
        provider.api = Some(Api::Azure);
        c.0.providers.insert(text("azure"), provider);
        c.0.tiers
            .insert(text("azure"), RawTier::new("azure", "gpt-4o"));
    })
    .unwrap_err();
    assert!(missing.contains("tiers.azure.deployment"), "{missing}");
    assert!(missing.contains("is required"), "{missing}");
    let elsewhere = load(|c| {
        let mut tier = RawTier::new("openai", "gpt-4o");
        tier.deployment = Some(text("gpt4o-prod"));
        c.0.tiers.insert(text("odd"), tier);
    })
    .unwrap_err();
    assert!(elsewhere.contains("tiers.odd.deployment"), "{elsewhere}");
    assert!(
        elsewhere.contains("only for a tier on an Azure"),
        "{elsewhere}"
    );
}

/// Embeddings through an Azure deployment: the deployment's URL with the API version and the
/// `api-key` header, OpenAI's answer passed back, priced as the tier's `base_model` (never as the
/// deployment nor the tier's own model name), stored as returned; Azure's refusal of the request
/// reaches the client in OpenAI's shape.
#[tokio::test]
async fn azure_embeddings_reach_the_deployment_and_are_priced_as_the_base_model() {
    let (gw, azure, _openai, _down) = azure_setup().await;
    azure.update(|b| b.prompt_tokens = 1000);
    let request = json!({"model": "vectors", "input": ["one document", "another"]});
    let answer = Answer::of(gw.post("/v1/embeddings", &request).await).await;
    answer.assert_served_by("azure_embed", "embed_local:connect_refused");
    assert_eq!(answer.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(answer.body["data"][1]["index"], 1);
    assert_eq!(answer.body["usage"]["prompt_tokens"], 1000);
    // text-embedding-3-large at $0.13 per million: 1000 × 0.13 µUSD.
    assert_eq!(answer.header("x-tierwise-cost-usd"), Some("0.00013"));
    let sent = azure.requests().pop().unwrap();
    assert_eq!(sent.path, "/openai/deployments/embed-prod/embeddings");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.api_key.as_deref(), Some("azure-secret"));
    assert_eq!(sent.authorization, None);
    assert_eq!(sent.body["input"], json!(["one document", "another"]));
    let store = gw.store().await;
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(row.tier.as_deref(), Some("azure_embed"));
    assert_eq!((row.tokens_in, row.tokens_out), (1000, 0));
    assert!(!row.tokens_estimated);
    assert_eq!(row.cost_pusd.map(|c| c.0), Some(130_000_000));

    azure.set_fault(Fault::Status {
        status: 400,
        body: None,
        retry_after: None,
    });
    let answer = Answer::of(gw.post("/v1/embeddings", &request).await).await;
    answer.error(400, Some("400"));
    assert_eq!(
        answer.body["error"]["type"], "invalid_request_error",
        "{}",
        answer.text
    );
    gw.shutdown().await;
}

/// Anthropic serves no embeddings: an embedding route that lists a tier on an Anthropic provider
/// is refused by `tierwise check`, naming the route's key and saying why; the same tier in a chat
/// route is fine (and a client naming it for embeddings is told it has no such endpoint, above).
#[test]
fn check_refuses_an_embedding_route_over_an_anthropic_tier() {
    let with_claude = |kind: TaskKind| {
        TestConfig::two_tier("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1").with(move |c| {
            let mut provider = RawProvider::new("https://api.anthropic.com/v1");
            provider.api = Some(Api::Anthropic);
            c.0.providers.insert(text("anthropic"), provider);
            c.0.tiers.insert(
                text("claude"),
                RawTier::new("anthropic", "claude-haiku-4-5"),
            );
            c.add_route("vectors", kind, &["embed_local", "claude"]);
        })
    };
    let check = |config: &TestConfig| {
        let dir = std::env::temp_dir().join(format!(
            "tierwise-providers-check-{}-{}",
            std::process::id(),
            config.toml().len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tierwise.toml");
        std::fs::write(&path, config.toml()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .env_remove("TIERWISE_CONFIG")
            .env("TIERWISE_LOG", "warn")
            .envs(["CLIENT_KEY", "LOCAL_KEY"].map(|name| (name, crate::util::env(name).unwrap())))
            .args(["check", "--offline", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_dir_all(dir).ok();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = check(&with_claude(TaskKind::Embedding));
    assert!(!ok, "an embedding route over an Anthropic tier passed");
    assert!(
        stderr.contains("routes.vectors.tiers: tier \"claude\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("Anthropic serves no embeddings"),
        "{stderr}"
    );
    let (ok, stderr) = check(&with_claude(TaskKind::Agentic));
    assert!(ok, "{stderr}");
}

/// An Anthropic answer whose usage lacks the output count — a whole message without
/// `output_tokens`, a stream whose `message_delta` carries none, leaving only `message_start`'s
/// early count of 1 — is not billed as that count: the gateway counts the tokens itself and the
/// ledger says they were estimated.
#[tokio::test]
async fn an_anthropic_usage_without_its_output_count_is_estimated_not_billed_as_given() {
    let (gw, anthropic, _openai, _down) = anthropic_setup().await;
    anthropic.update(|b| {
        b.fault = Fault::NoUsage;
        b.reply = "one two three four five six seven eight nine ten eleven twelve".into();
    });
    let store = gw.store().await;
    for answer in [
        gw.ask("claude_first").await,
        gw.ask_stream("claude_first").await,
    ] {
        assert_eq!(
            answer.header("x-tierwise-tier"),
            Some("claude"),
            "{}",
            answer.text
        );
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert!(row.tokens_estimated, "{}", answer.text);
        assert!(row.tokens_out >= 12, "{} output tokens", row.tokens_out);
    }
    gw.shutdown().await;
}
