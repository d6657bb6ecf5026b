//! The request path end to end: the real gateway on a free port, fake upstreams behind it.

use std::time::Duration;

use crate::util::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tierwise::config::TaskKind;
use tierwise::config::file::{RawOutput, RawShadow, RawTier, spanned, text};
use tierwise_fake::{FakeUpstream, Fault};

async fn setup() -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let gateway =
        TestGateway::start(&TestConfig::two_tier(&local.base_url(), &api.base_url())).await;
    (local, api, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_name_goes_to_its_primary_tier_with_the_tiers_model_and_defaults() {
    let (local, api, gw) = setup().await;
    let answer = Answer::of(
        gw.post("/v1/chat/completions", &chat("summarize", "Summarize this"))
            .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["choices"][0]["message"]["content"],
        "Hello from the fake upstream."
    );
    assert_eq!(answer.header("x-tierwise-route"), Some("summarize"));
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-provider"), Some("vllm"));
    assert!(
        answer
            .header("x-tierwise-request-id")
            .is_some_and(|id| id.len() >= 32)
    );
    assert_eq!(answer.header("x-tierwise-fallback"), None);

    let sent = &local.requests()[0];
    assert_eq!(sent.body["model"], "mistral-7b");
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.body["temperature"], 0.1);
    // The provider's key is injected; the client's key never leaves the gateway.
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(api.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_field_passes_through_untouched() {
    let (local, _api, gw) = setup().await;
    let request = json!({
        "model": "summarize",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 42, "logprobs": true, "top_logprobs": 2, "n": 2, "user": "u-1", "stop": ["\n\n"],
        "max_tokens": 7, "temperature": 0.9, "x_vendor_extension": {"keep": [1, 2.50, "é"]},
    });
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = &local.requests()[0].body;
    for (key, value) in request.as_object().unwrap() {
        if key != "model" {
            assert_eq!(&sent[key], value, "field {key} changed on the way");
        }
    }
    assert_eq!(sent["model"], "mistral-7b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_may_be_a_tier_or_a_model_id_and_the_route_header_attributes_it() {
    let (local, api, gw) = setup().await;
    let by_tier = gw.ask("api_fast").await;
    assert_eq!(by_tier.status, 200, "{}", by_tier.text);
    assert_eq!(by_tier.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(by_tier.header("x-tierwise-route"), None);
    assert_eq!(api.requests()[0].body["model"], "gpt-4o-mini");
    assert_eq!(api.requests()[0].body["max_tokens"], 1024);

    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("x-tierwise-route", "classification")
        .json(&chat("gpt-4o", "x"))
        .send()
        .await
        .unwrap();
    let by_model = Answer::of(response).await;
    assert_eq!(by_model.status, 200, "{}", by_model.text);
    assert_eq!(by_model.header("x-tierwise-tier"), Some("api_frontier"));
    assert_eq!(by_model.header("x-tierwise-route"), Some("classification"));
    // Attribution only: the route's label contract does not apply to a model-id call.
    assert_eq!(by_model.header("x-tierwise-contract"), None);
    assert_eq!(api.requests()[1].body["model"], "gpt-4o");
    assert_eq!(local.request_count(), 0);

    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("x-tierwise-route", "no-such-route")
        .json(&chat("gpt-4o", "x"))
        .send()
        .await
        .unwrap();
    let unknown = Answer::of(response).await;
    let message = unknown.error(400, None);
    assert!(
        message.contains("no-such-route") && message.contains("classification"),
        "{message}"
    );
    assert_eq!(unknown.body["error"]["param"], "x-tierwise-route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_model_not_found_listing_what_exists() {
    let (_local, _api, gw) = setup().await;
    let answer = gw.ask("gpt-5-ultra").await;
    let message = answer.error(404, Some("model_not_found"));
    for name in [
        "gpt-5-ultra",
        "classification",
        "summarize",
        "local",
        "api_fast",
        "gpt-4o-mini",
    ] {
        assert!(message.contains(name), "{name} missing from: {message}");
    }
    assert_eq!(answer.body["error"]["param"], "model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_relayed_chunk_by_chunk_with_usage_only_when_asked() {
    let (local, _api, gw) = setup().await;
    let mut request = chat("summarize", "x");
    request["stream"] = json!(true);
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    let events = sse_data(&answer.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    assert!(
        !answer.text.contains("\"usage\":{"),
        "usage leaked to a client that did not ask: {}",
        answer.text
    );
    // tierwise asked the upstream for usage anyway.
    assert_eq!(
        local.requests()[0].body["stream_options"]["include_usage"],
        true
    );

    request["stream_options"] = json!({"include_usage": true});
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    let usage: Vec<Value> = sse_data(&answer.text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1, "{}", answer.text);
    assert_eq!(usage[0]["usage"]["prompt_tokens"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_the_first_chunk_before_the_upstream_has_finished() {
    let (local, _api, gw) = setup().await;
    let gate = local.hold_streams();
    let mut request = chat("summarize", "x");
    request["stream"] = json!(true);
    let response = gw.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first chunk arrives while the upstream is still holding the rest")
        .expect("a chunk")
        .expect("no error");
    let first = String::from_utf8_lossy(&first).to_string();
    assert!(
        first.starts_with("data: {") && first.contains("assistant"),
        "{first}"
    );
    assert!(!first.contains("[DONE]"));
    gate.open();
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_overrides_replace_or_insert_the_system_message_with_labels_filled_in() {
    let dir = std::env::temp_dir().join(format!("tierwise-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("classify_local.txt"),
        "Answer with one word from: {labels}.",
    )
    .unwrap();
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        c.route("classification")
            .prompts
            .insert(text("local"), text("classify_local.txt"));
    });
    let gw = TestGateway::start_config(config.config_in(&dir.join("tierwise.toml"))).await;

    let with_system = json!({"model": "classification", "messages": [
        {"role": "system", "content": "You are GPT-4o. Think step by step."},
        {"role": "user", "content": "My invoice is wrong"}]});
    assert_eq!(
        gw.post("/v1/chat/completions", &with_system).await.status(),
        200
    );
    let sent = &local.requests()[0].body["messages"];
    assert_eq!(
        sent,
        &json!([{"role": "system", "content": "Answer with one word from: billing, technical, general."},
                {"role": "user", "content": "My invoice is wrong"}])
    );

    assert_eq!(
        gw.post("/v1/chat/completions", &chat("classification", "hi"))
            .await
            .status(),
        200
    );
    let sent = &local.requests()[1].body["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 2);
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(sent[1]["content"], "hi");

    // The override is the local tier's only: the API tier gets the client's messages as sent.
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    assert_eq!(
        gw.post("/v1/chat/completions", &with_system).await.status(),
        200
    );
    assert_eq!(api.requests()[0].body["messages"], with_system["messages"]);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_contract_normalizes_and_flags_but_never_invents() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    // A labelled route only this test uses, so that its contract counts are its own.
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let labelled = c.add_route("labelled", TaskKind::Classification, &["local"]);
        labelled.output = Some(RawOutput {
            labels: Some(spanned(
                ["billing", "technical", "general"].map(text).to_vec(),
            )),
        });
    });
    let gw = TestGateway::start(&config).await;
    local.update(|b| b.reply = "The category is: Technical.".into());
    let answer = gw.ask("labelled").await;
    assert_eq!(answer.body["choices"][0]["message"]["content"], "technical");
    assert_eq!(answer.header("x-tierwise-contract"), Some("normalized"));
    assert_eq!(answer.body["id"], "chatcmpl-fake");

    local.update(|b| b.reply = "billing".into());
    let answer = gw.ask("labelled").await;
    assert_eq!(answer.body["choices"][0]["message"]["content"], "billing");
    assert_eq!(answer.header("x-tierwise-contract"), Some("ok"));

    local.update(|b| b.reply = "I am not sure what this is about.".into());
    let answer = gw.ask("labelled").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body["choices"][0]["message"]["content"],
        "I am not sure what this is about."
    );
    assert_eq!(answer.header("x-tierwise-contract"), Some("violated"));

    // Routes without labels are untouched.
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.header("x-tierwise-contract"), None);

    // Counted per route and model: what a smaller model costs in rewrites.
    let series = |outcome: &str| {
        format!(
            "tierwise_contract_answers_total{{route=\"labelled\",model=\"mistral-7b\",outcome=\"{outcome}\"}} 1"
        )
    };
    let metrics = gw
        .wait_for_metrics(|text| {
            ["normalized", "ok", "violated"]
                .iter()
                .all(|outcome| text.contains(&series(outcome)))
        })
        .await;
    assert!(!metrics.contains("tierwise_contract_answers_total{route=\"summarize\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_take_strings_and_arrays_and_pass_encoding_format() {
    let (local, _api, gw) = setup().await;
    let answer = Answer::of(
        gw.post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": "hello"}),
        )
        .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(answer.header("x-tierwise-tier"), Some("embed_local"));
    assert_eq!(local.requests()[0].path, "/v1/embeddings");
    assert_eq!(local.requests()[0].body["model"], "nomic-embed-text");
    assert!(local.requests()[0].body.get("max_tokens").is_none());

    let request = json!({"model": "embed", "input": ["a", "b", "c"], "encoding_format": "base64", "dimensions": 3});
    let answer = Answer::of(gw.post("/v1/embeddings", &request).await).await;
    assert_eq!(answer.body["data"].as_array().unwrap().len(), 3);
    assert!(answer.body["data"][0]["embedding"].is_string());
    let sent = &local.requests()[1].body;
    assert_eq!(sent["encoding_format"], "base64");
    assert_eq!(sent["input"], json!(["a", "b", "c"]));
    assert_eq!(sent["dimensions"], 3);

    let missing = Answer::of(gw.post("/v1/embeddings", &json!({"model": "embed"})).await).await;
    missing.error(400, None);
    assert_eq!(missing.body["error"]["param"], "input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_routes_tiers_and_model_ids_and_probes_answer() {
    let (_local, _api, gw) = setup().await;
    let answer = Answer::of(gw.get("/v1/models").await).await;
    assert_eq!(answer.body["object"], "list");
    let ids: Vec<&str> = answer.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "classification",
        "summarize",
        "embed",
        "local",
        "api_fast",
        "mistral-7b",
        "gpt-4o",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model" && m["owned_by"].is_string())
    );

    // Each says, in a field SDKs pass over, the paths it may be called on: an embedding route
    // the embeddings endpoint, any other route the endpoints that answer in text, a tier or a
    // model id every endpoint.
    let endpoints = |id: &str| {
        let entry = answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap();
        entry["endpoints"].clone()
    };
    assert_eq!(endpoints("embed"), json!(["/v1/embeddings"]));
    assert_eq!(
        endpoints("classification"),
        json!(["/v1/chat/completions", "/v1/responses", "/v1/messages"])
    );
    assert_eq!(
        endpoints("gpt-4o"),
        json!([
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/responses",
            "/v1/messages"
        ])
    );

    // One of them, as `client.models.retrieve` asks; a model id may hold slashes.
    let route = Answer::of(gw.get("/v1/models/classification").await).await;
    assert_eq!(
        (
            route.status,
            route.body["id"].as_str(),
            route.body["owned_by"].as_str()
        ),
        (200, Some("classification"), Some("tierwise:route"))
    );
    let model = Answer::of(gw.get("/v1/models/gpt-4o").await).await;
    assert_eq!(model.body["owned_by"], "tierwise:model");
    let unknown = Answer::of(gw.get("/v1/models/mistralai/Mistral-7B").await).await;
    let message = unknown.error(404, Some("model_not_found"));
    assert!(message.contains("'mistralai/Mistral-7B'"), "{message}");

    let health = gw
        .http
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_are_required_when_configured() {
    let (local, _api, gw) = setup().await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let none = Answer::of(
        gw.http
            .post(&url)
            .json(&chat("summarize", "x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    none.error(401, Some("invalid_api_key"));
    assert!(none.header("x-tierwise-request-id").is_some());
    let wrong = Answer::of(
        gw.http
            .post(&url)
            .bearer_auth("tw-wrong")
            .json(&chat("summarize", "x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    wrong.error(401, Some("invalid_api_key"));
    assert!(!wrong.text.contains(CLIENT_KEY));
    let models = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    assert_eq!(local.request_count(), 0);
    // Probes stay open for load balancers.
    assert_eq!(
        gw.http
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let open = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&open.base_url(), &open.base_url())
        .with(|c| c.0.server.api_keys = None)
        .config();
    assert!(
        config.warnings.iter().any(|w| w.contains("api_keys")),
        "{:?}",
        config.warnings
    );
    let open_gw = TestGateway::start_config(config).await;
    let answer = open_gw
        .http
        .post(format!("{}/v1/chat/completions", open_gw.url))
        .json(&chat("summarize", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_in_openai_shape() {
    let (local, _api, gw) = setup().await;
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"{not json".to_vec(), None),
        (b"[]".to_vec(), None),
        (b"\"text\"".to_vec(), None),
        (vec![0xff, 0xfe, 0x00], None),
        (
            json!({"messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            Some("model"),
        ),
        (
            json!({"model": 5, "messages": []}).to_string().into_bytes(),
            Some("model"),
        ),
        (
            json!({"model": "summarize"}).to_string().into_bytes(),
            Some("messages"),
        ),
        (
            json!({"model": "summarize", "messages": "hi"})
                .to_string()
                .into_bytes(),
            Some("messages"),
        ),
        (
            json!({"model": "summarize", "messages": [{"role": "user", "content": "x"}], "stream": true, "stream_options": "include_usage"})
                .to_string()
                .into_bytes(),
            Some("stream_options"),
        ),
        (
            json!({"model": "summarize", "messages": []})
                .to_string()
                .into_bytes(),
            Some("messages"),
        ),
        (
            json!({"model": "summarize", "messages": [{}], "stream": "yes"})
                .to_string()
                .into_bytes(),
            Some("stream"),
        ),
        (
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            None,
        ),
    ];
    for (body, param) in cases {
        let answer = Answer::of(gw.post_raw("/v1/chat/completions", body.clone()).await).await;
        answer.error(400, None);
        assert_eq!(answer.body["error"]["type"], "invalid_request_error");
        assert_eq!(
            answer.body["error"]["param"].as_str(),
            param,
            "{}",
            answer.text
        );
    }
    assert_eq!(local.request_count(), 0);

    let unknown = Answer::of(gw.get("/v2/whatever").await).await;
    unknown.error(404, Some("not_found"));
    let wrong_method = Answer::of(gw.get("/v1/chat/completions").await).await;
    wrong_method.error(405, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_is_413() {
    let local = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &local.base_url())
        .with(|c| c.0.server.max_body_bytes = Some(spanned(1000)));
    let gw = TestGateway::start(&config).await;
    let big = chat("summarize", &"x".repeat(2000));
    let answer = Answer::of(gw.post("/v1/chat/completions", &big).await).await;
    answer.error(413, Some("request_too_large"));

    // Without a Content-Length the limit holds while reading.
    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 100]))),
    );
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    Answer::of(response)
        .await
        .error(413, Some("request_too_large"));
    assert_eq!(local.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_client_error_comes_back_as_it_came_without_fallback() {
    let (local, api, gw) = setup().await;
    // (A 400 that says the request is too long for the model is the exception: see
    // fallback::a_request_too_long_for_a_tier_moves_on_and_is_a_400_when_none_fits.)
    let body = r#"{"error":{"message":"Invalid value for 'temperature': must be between 0 and 2","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#;
    local.set_fault(Fault::Status {
        status: 400,
        body: Some(body.into()),
        retry_after: None,
    });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.text, body);
    assert_eq!(api.request_count(), 0, "a client error must not fall back");
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        None,
        "no other tier was tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_primary_falls_back_and_says_so() {
    let (local, api, gw) = setup().await;
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    assert_eq!(answer.header("x-tierwise-provider"), Some("openai"));
    assert_eq!(answer.header("x-tierwise-fallback"), Some("local:http_503"));
    assert_eq!(api.requests()[0].body["model"], "gpt-4o-mini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstreams_are_502_or_504_naming_the_tier_and_never_the_key() {
    let down = tierwise_fake::unused_addr().await;
    let hanging = FakeUpstream::start().await;
    hanging.set_fault(Fault::Hang);
    // Probes off: this test is about what one request meets, not what the breaker learns.
    let config = TestConfig::two_tier(&format!("http://{down}/v1"), &hanging.base_url())
        .without_probes()
        .with(|c| c.provider("openai").timeout.total_ms = Some(300));
    let gw = TestGateway::start(&config).await;
    let answer = gw.ask("embed").await;
    // `embed` is a chat call on an embedding tier here; what matters is its one tier is down.
    let message = answer.error(502, Some("upstream_unavailable"));
    assert!(
        message.contains("embed_local") && message.contains("connect_refused"),
        "{message}"
    );

    let answer = gw.ask("summarize").await;
    let message = answer.error(504, Some("upstream_timeout"));
    assert!(
        message.contains("local: connect_refused") && message.contains("api_fast: timeout_total"),
        "{message}"
    );
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        Some("local:connect_refused,api_fast:timeout_total")
    );
    for secret in [PROVIDER_KEY, "sk-api-key-789", CLIENT_KEY] {
        assert!(!answer.text.contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let (local, _api, gw) = setup().await;
    local.set_fault(Fault::SlowFirstByte { ms: 300 });
    let url = format!("{}/v1/chat/completions", gw.url);
    let client = gw.http.clone();
    let in_flight = tokio::spawn(async move {
        client
            .post(&url)
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", "x"))
            .send()
            .await
    });
    tierwise_fake::wait_until(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || local.request_count() == 1,
    )
    .await;
    let url = gw.url.clone();
    gw.shutdown().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "still accepting after shutdown"
    );
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A gateway whose `route` (local tier only) allows `labels`, as configured. Each test names its
/// own route, so that its contract counts in `/metrics` are its own.
async fn labelled(route: &str, labels: &[&str]) -> (FakeUpstream, FakeUpstream, TestGateway) {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let labels: Vec<_> = labels.iter().map(|label| text(*label)).collect();
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.add_route(route, TaskKind::Classification, &["local"])
                .output = Some(RawOutput {
                labels: Some(spanned(labels)),
            });
        });
    let gw = TestGateway::start(&config).await;
    (local, api, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_exactly_a_label_keeps_its_case_and_is_never_rewritten() {
    let (local, _api, gw) = labelled("labelled_case", &["SPAM", "HAM"]).await;
    local.update(|b| b.reply = "SPAM".into());
    let answer = gw.ask("labelled_case").await;
    assert_eq!(answer.body["choices"][0]["message"]["content"], "SPAM");
    assert_eq!(answer.header("x-tierwise-contract"), Some("ok"));

    // Matching ignores case; the label the client gets is the one configured.
    local.update(|b| b.reply = "The message is spam.".into());
    let answer = gw.ask("labelled_case").await;
    assert_eq!(answer.body["choices"][0]["message"]["content"], "SPAM");
    assert_eq!(answer.header("x-tierwise-contract"), Some("normalized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoning_model_gets_its_limit_and_warm_up_as_max_completion_tokens() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("openai").warmup = true;
            let mut reasoning = RawTier::new("openai", "o4-mini");
            reasoning.max_tokens = Some(2000);
            c.0.tiers.insert(text("api_reasoning"), reasoning);
        });
    let gw = TestGateway::start(&config).await;
    let sent_to = |model: &str| {
        api.requests()
            .into_iter()
            .filter(|r| r.body["model"] == model)
            .collect::<Vec<_>>()
    };
    // OpenAI refuses `max_tokens` for o1, o3, o4-mini and gpt-5: the warm-up too.
    tierwise_fake::wait_until(
        "the reasoning tier's warm-up",
        Duration::from_secs(5),
        || !sent_to("o4-mini").is_empty(),
    )
    .await;
    let warmup = sent_to("o4-mini")[0].body.clone();
    assert_eq!(warmup["max_completion_tokens"], 1, "{warmup}");
    assert!(warmup.get("max_tokens").is_none(), "{warmup}");

    assert_eq!(gw.ask("api_reasoning").await.status, 200);
    let sent = sent_to("o4-mini")[1].body.clone();
    assert_eq!(sent["max_completion_tokens"], 2000, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");

    // A client that sends `max_tokens` has it translated, its budget kept.
    let mut request = chat("api_reasoning", "x");
    request["max_tokens"] = json!(50);
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let sent = sent_to("o4-mini")[2].body.clone();
    assert_eq!(sent["max_completion_tokens"], 50, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");

    // Other models keep `max_tokens`, the parameter every OpenAI-compatible server takes.
    assert_eq!(gw.ask("api_fast").await.status, 200);
    let sent = sent_to("gpt-4o-mini").last().unwrap().body.clone();
    assert_eq!(sent["max_tokens"], 1024, "{sent}");
    tierwise_fake::wait_until("gpt-4o-mini's warm-up", Duration::from_secs(5), || {
        sent_to("gpt-4o-mini")
            .iter()
            .any(|r| r.body["max_tokens"] == 1 && r.body.get("max_completion_tokens").is_none())
    })
    .await;
}

/// The text of every choice of an SSE body, each choice's apart, by its index.
fn streamed_choices(text: &str) -> Vec<String> {
    let mut choices: Vec<String> = Vec::new();
    for data in sse_data(text) {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap_or(0) as usize;
            if choices.len() <= index {
                choices.resize(index + 1, String::new());
            }
            choices[index].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    choices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_several_choices_keeps_each_choices_text_apart() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.0.ledger.store_content = true;
            // A route of its own: the binary's metrics are shared, and the judge test counts
            // `summarize`'s shadow checks.
            c.add_route(
                "several_choices",
                tierwise::config::TaskKind::Summarization,
                &["local", "api_fast"],
            )
            .shadow = Some(RawShadow::new("api_frontier", 1.0));
        });
    let gw = TestGateway::start(&config).await;
    local.update(|b| {
        b.reply = "alpha beta gamma".into();
        b.more_replies = vec!["delta epsilon zeta".into()];
    });
    api.update(|b| b.reply = "alpha beta gamma".into());
    let mut request = chat_stream("several_choices");
    request["n"] = json!(2);
    let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    // The client gets the upstream's interleaved chunks as they came.
    assert_eq!(
        streamed_choices(&answer.text),
        ["alpha beta gamma", "delta epsilon zeta"]
    );

    // The ledger keeps each choice under its own line, never "alpha delta beta …".
    let store = gw.store().await;
    let id = answer.header("x-tierwise-request-id").unwrap();
    let row = stored(&store, id).await;
    assert_eq!(
        row.answer.as_deref(),
        Some("[choice 0]\nalpha beta gamma\n\n[choice 1]\ndelta epsilon zeta")
    );

    // The shadow check scores choice 0, as for a whole answer: the reference says the same.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let checks = loop {
        let summary = store
            .summary(0, i64::MAX, Some("several_choices"))
            .await
            .unwrap();
        if let [checks] = &summary.checks[..]
            && checks.scored == 1
        {
            break checks.clone();
        }
        assert!(std::time::Instant::now() < until, "{:?}", summary.checks);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(checks.agreement_ppm, 1_000_000, "{checks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_on_a_labelled_route_passes_unchanged_and_its_verdict_is_recorded() {
    let (local, _api, gw) = labelled("labelled_stream", &["SPAM", "HAM"]).await;
    let store = gw.store().await;
    let mut verdicts = Vec::new();
    for reply in ["SPAM", "This one is spam.", "No idea."] {
        local.update(|b| b.reply = reply.into());
        let answer = gw.ask_stream("labelled_stream").await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        // The headers left before the text existed: no verdict there, and no rewrite.
        assert_eq!(answer.header("x-tierwise-contract"), None);
        assert_eq!(streamed_choices(&answer.text), [reply]);
        let id = answer.header("x-tierwise-request-id").unwrap();
        verdicts.push(stored(&store, id).await.contract.map(|c| c.to_string()));
    }
    assert_eq!(
        verdicts,
        [Some("ok"), Some("normalizable"), Some("violated")].map(|v| v.map(String::from))
    );
    let series = |outcome: &str| {
        format!(
            "tierwise_contract_answers_total{{route=\"labelled_stream\",model=\"mistral-7b\",outcome=\"{outcome}\"}} 1"
        )
    };
    gw.wait_for_metrics(|text| {
        ["ok", "normalizable", "violated"]
            .iter()
            .all(|outcome| text.contains(&series(outcome)))
    })
    .await;
}
