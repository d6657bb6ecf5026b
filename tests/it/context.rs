//! Issue 22, item 1: a tier's context window is taught only by its server's own refusal of a
//! request of the size the refusal states, never below a floor or what the tier has answered,
//! never over the config or the server's own word, and not forever.

use std::time::Duration;

use serde_json::{Value, json};
use tierwise::config::file::{spanned, text};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::*;

/// A chat request about `words` words long (~`words` tokens).
fn long_chat(words: usize) -> Value {
    chat(
        "summarize",
        &"lorem ipsum dolor sit amet ".repeat(words / 5),
    )
}

/// A 400 whose body is `body`, for the next request only.
fn refuse_once(fake: &FakeUpstream, body: Value) {
    fake.update(|b| {
        b.fault = Fault::Status {
            status: 400,
            body: Some(body.to_string()),
            retry_after: None,
        };
        b.fault_for = Some(1);
    });
}

/// vLLM's own refusal: a window of `window` for a request of `prompt` tokens and 256 of answer.
fn vllm_refusal(window: u32, prompt: u64) -> Value {
    json!({"object": "error", "message": format!("This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, 256 in the completion). Please reduce the length of the messages or completion.", prompt + 256), "type": "BadRequestError", "param": null, "code": 400})
}

/// The local tier's window as `/admin/api/providers` shows it.
async fn local_window(gw: &TestGateway) -> Value {
    let vllm = gw.provider("vllm").await;
    vllm["context_windows"]
        .as_array()
        .expect("a list of windows")
        .iter()
        .find(|w| w["tier"] == "local")
        .expect("the local tier's window")
        .clone()
}

/// The reviewer's case: a client whose `response_format.type` is a too-long refusal's sentence,
/// which both servers quote back in their 400 (vLLM's validation error, OpenAI's `invalid_value`).
/// Before the fix both tiers learned a window of 1 token from it and every other client got
/// `context_length_exceeded`; now the quote teaches nothing and the next client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_teach_a_tier_a_wrong_context_window() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).without_probes();
    let gw = TestGateway::start(&config).await;
    let sentence = "This model's maximum context length is 1 tokens. However, you requested 5 tokens (4 in the messages, 1 in the completion). Please reduce the length of the messages or completion.";
    refuse_once(
        &local,
        json!({"object": "error", "message": format!("1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input should be 'text', 'json_object' or 'json_schema' [type=literal_error, input_value=\"{sentence}\", input_type=str]"), "type": "BadRequestError", "param": null, "code": 400}),
    );
    refuse_once(
        &api,
        json!({"error": {"message": format!("Invalid value: '{sentence}'. Supported values are: 'json_object', 'json_schema', and 'text'."), "type": "invalid_request_error", "param": "response_format.type", "code": "invalid_value"}}),
    );
    let mut hostile = chat("summarize", "hello");
    hostile["response_format"] = json!({"type": sentence});
    let refused = Answer::of(gw.post("/v1/chat/completions", &hostile).await).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!((local.request_count(), api.request_count()), (1, 1));

    let other = gw.ask("summarize").await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.header("x-tierwise-tier"), Some("local"));
    assert_eq!(other.header("x-tierwise-fallback"), None);
    assert_eq!(local_window(&gw).await["tokens"], Value::Null);
    let openai = gw.provider("openai").await;
    for window in openai["context_windows"].as_array().unwrap() {
        assert_ne!(window["source"], "learned", "{window}");
    }
}

/// A window is learned only from a plausible refusal. Each case is a fresh gateway whose local
/// tier refuses one ~4,000-token request; `learned` says whether a window is in force after it:
/// the server's own wording at the start of its message, sizes that match the request it refused,
/// at least the floor (1,024) and what the tier has answered; a configured window always wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_plausible_refusal_teaches_a_window_and_the_config_wins() {
    struct Case {
        name: &'static str,
        refusal: Value,
        configured: Option<u32>,
        answered_before: Option<u64>,
        window: Option<(u32, &'static str)>,
    }
    let quoted = json!({"object": "error", "message": format!("Invalid value: '{}'", vllm_refusal(2000, 4000)["message"].as_str().unwrap()), "type": "BadRequestError", "param": null, "code": 400});
    let cases = [
        Case {
            name: "the server's own words, sizes that match",
            refusal: vllm_refusal(2000, 4000),
            configured: None,
            answered_before: None,
            window: Some((2000, "learned")),
        },
        Case {
            name: "llama.cpp's typed fields",
            refusal: json!({"error": {"code": 400, "message": "request (4100 tokens) exceeds the available context size (2048 tokens), try increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 4100, "n_ctx": 2048}}),
            configured: None,
            answered_before: None,
            window: Some((2048, "learned")),
        },
        Case {
            name: "quoted mid-message",
            refusal: quoted,
            configured: None,
            answered_before: None,
            window: None,
        },
        Case {
            name: "below the floor",
            refusal: vllm_refusal(1000, 4000),
            configured: None,
            answered_before: None,
            window: None,
        },
        Case {
            name: "a prompt size that is not this request's",
            refusal: vllm_refusal(2000, 40_000),
            configured: None,
            answered_before: None,
            window: None,
        },
        Case {
            name: "below what the tier has answered",
            refusal: vllm_refusal(2000, 4000),
            configured: None,
            answered_before: Some(3000),
            window: None,
        },
        Case {
            name: "the config's window",
            refusal: vllm_refusal(2000, 4000),
            configured: Some(8000),
            answered_before: None,
            window: Some((8000, "configured")),
        },
    ];
    for case in cases {
        let local = FakeUpstream::start().await;
        let api = FakeUpstream::start().await;
        let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
            .without_probes()
            .with(|c| {
                let tier = c.0.tiers.get_mut(&text("local")).unwrap();
                tier.context_tokens = case.configured.map(spanned);
            });
        let gw = TestGateway::start(&config).await;
        if let Some(prompt_tokens) = case.answered_before {
            local.update(|b| b.prompt_tokens = prompt_tokens);
            let answered = gw.ask("summarize").await;
            assert_eq!(answered.header("x-tierwise-tier"), Some("local"));
        }
        refuse_once(&local, case.refusal);
        let refused = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
        assert_eq!(refused.status, 200, "{}: {}", case.name, refused.text);
        let id = refused.header("x-tierwise-request-id").unwrap().to_string();
        if case.configured.is_none() {
            assert_eq!(
                refused.header("x-tierwise-fallback"),
                Some("local:context_too_long"),
                "{}",
                case.name
            );
        }
        let window = local_window(&gw).await;
        match case.window {
            Some((tokens, source)) => {
                assert_eq!(window["tokens"], tokens, "{}: {window}", case.name);
                assert_eq!(window["source"], source, "{}: {window}", case.name);
            }
            None => assert_eq!(window["tokens"], Value::Null, "{}: {window}", case.name),
        }
        if window["source"] == "learned" {
            assert_eq!(window["learned_from"], id.as_str(), "{}", case.name);
            let expires = window["expires_in_s"].as_u64().unwrap();
            assert!((590..=600).contains(&expires), "{}: {window}", case.name);
            // Learned: the next request that cannot fit skips the tier without a call.
            let calls = local.request_count();
            let next = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
            assert_eq!(
                next.header("x-tierwise-tier"),
                Some("api_fast"),
                "{}",
                case.name
            );
            assert_eq!(local.request_count(), calls, "{}", case.name);
        }
        gw.shutdown().await;
    }
}

/// A learned window is the server's word only until the server gives its own: the probe re-reads
/// vLLM's listing on its schedule, and the window it lists replaces the one a refusal taught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_window_replaces_a_learned_one_on_the_probes_schedule() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| b.models = vec!["mistral-7b".into()]);
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        let vllm = c.provider("vllm");
        vllm.health.interval_ms = Some(spanned(50));
        vllm.health.timeout_ms = Some(300);
    });
    let gw = TestGateway::start(&config).await;
    gw.wait_for_breaker("vllm", "closed", Duration::from_secs(5))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw.provider("vllm").await["probed"].as_bool().unwrap() {
        assert!(std::time::Instant::now() < deadline, "no probe arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refuse_once(&local, vllm_refusal(2000, 4000));
    let refused = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(
        refused.header("x-tierwise-fallback"),
        Some("local:context_too_long")
    );
    assert_eq!(local_window(&gw).await["source"], "learned");

    local.update(|b| b.max_model_len = Some(32_768));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let window = local_window(&gw).await;
        if window["source"] == "server" {
            assert_eq!(window["tokens"], 32_768);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listing's window was not read: {window}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let long = Answer::of(gw.post("/v1/chat/completions", &long_chat(4000)).await).await;
    assert_eq!(
        long.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        long.text
    );
}
