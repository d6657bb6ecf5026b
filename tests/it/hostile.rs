//! Hostile input: a table of malformed requests, each sent to one gateway, each expected to get a
//! clear client error in OpenAI's shape (or, below HTTP, a closed connection), never a 5xx, a hang
//! or a panic; then the same gateway must still serve a normal request. Property tests over the
//! parsers live in the library (`src/openai`, `src/upstream`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;
use tierwise_fake::FakeUpstream;

const CHAT: &str = "/v1/chat/completions";
const EMBED: &str = "/v1/embeddings";

/// What a case sends: a body to an endpoint with the client key and a JSON content type, or the
/// same with other headers, or raw bytes on a fresh TCP connection.
enum Send {
    Body(&'static str, Vec<u8>),
    Headers(
        &'static str,
        &'static str,
        Vec<(&'static str, String)>,
        Vec<u8>,
    ),
    Raw(Vec<u8>),
}

/// What must come back: this status with this error code, or (raw cases) any 4xx status line or
/// a closed connection.
enum Expect {
    Error(u16, Option<&'static str>),
    Refused,
}

fn json_case(name: &'static str, body: &str, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        send: Send::Body(CHAT, body.as_bytes().to_vec()),
        expect: Expect::Error(status, code),
    }
}

struct Case {
    name: &'static str,
    send: Send,
    expect: Expect,
}

fn message(content: &str) -> String {
    format!(r#"{{"model":"summarize","messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

fn cases() -> Vec<Case> {
    let deep = format!(
        r#"{{"model":"summarize","messages":[{{"role":"user","content":{}1{}}}]}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge = format!(
        r#"{{"model":"summarize","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(12 << 20)
    );
    let mut invalid_utf8 =
        br#"{"model":"summarize","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xfd");
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(message("hi").as_bytes());
    let key = || ("authorization", format!("Bearer {CLIENT_KEY}"));
    let json = || ("content-type", "application/json".to_string());
    vec![
        json_case("empty body", "", 400, None),
        json_case("truncated JSON", "{", 400, None),
        json_case("an array", "[]", 400, None),
        json_case("a string", r#""hello""#, 400, None),
        json_case("null", "null", 400, None),
        json_case("a number", "42", 400, None),
        json_case(
            "model is a number",
            r#"{"model":5,"messages":[]}"#,
            400,
            None,
        ),
        json_case(
            "model missing",
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "model unknown",
            &message("x").replace("summarize", "no-such-model"),
            404,
            Some("model_not_found"),
        ),
        json_case(
            "model empty",
            &message("x").replace("summarize", ""),
            404,
            Some("model_not_found"),
        ),
        json_case(
            "model 100 kB long",
            &message("x").replace("summarize", &"m".repeat(100_000)),
            404,
            Some("model_not_found"),
        ),
        json_case(
            "messages missing",
            r#"{"model":"summarize"}"#,
            400,
            None,
        ),
        json_case(
            "messages a string",
            r#"{"model":"summarize","messages":"hi"}"#,
            400,
            None,
        ),
        json_case(
            "messages empty",
            r#"{"model":"summarize","messages":[]}"#,
            400,
            None,
        ),
        json_case(
            "a message that is a number",
            r#"{"model":"summarize","messages":[5]}"#,
            400,
            None,
        ),
        json_case(
            "role a number",
            r#"{"model":"summarize","messages":[{"role":5,"content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "stream a string",
            r#"{"model":"summarize","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "stream_options a string",
            r#"{"model":"summarize","stream":true,"stream_options":"x","messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "max_tokens a string",
            r#"{"model":"summarize","max_tokens":"many","messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "max_tokens out of range",
            r#"{"model":"summarize","max_tokens":1e400,"messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "NaN",
            r#"{"model":"summarize","max_tokens":NaN,"messages":[{"role":"user","content":"x"}]}"#,
            400,
            None,
        ),
        json_case(
            "trailing garbage",
            &(message("x") + " and more"),
            400,
            None,
        ),
        json_case("a message nested 5,000 deep", &deep, 400, None),
        Case {
            name: "invalid UTF-8 in a string",
            send: Send::Body(CHAT, invalid_utf8),
            expect: Expect::Error(400, None),
        },
        Case {
            name: "a byte-order mark before the JSON",
            send: Send::Body(CHAT, bom),
            expect: Expect::Error(400, None),
        },
        Case {
            // Refused on its Content-Length, before it is read: a client still writing may see
            // the connection closed rather than the 413.
            name: "a 12 MB message",
            send: Send::Raw(
                format!(
                    "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{huge}",
                    huge.len()
                )
                .into_bytes(),
            ),
            expect: Expect::Refused,
        },
        Case {
            name: "embeddings without input",
            send: Send::Body(EMBED, br#"{"model":"embed"}"#.to_vec()),
            expect: Expect::Error(400, None),
        },
        Case {
            name: "embeddings input a number",
            send: Send::Body(EMBED, br#"{"model":"embed","input":5}"#.to_vec()),
            expect: Expect::Error(400, None),
        },
        Case {
            name: "no client key",
            send: Send::Headers(CHAT, "POST", vec![json()], message("x").into_bytes()),
            expect: Expect::Error(401, Some("invalid_api_key")),
        },
        Case {
            name: "a wrong client key",
            send: Send::Headers(
                CHAT,
                "POST",
                vec![("authorization", "Bearer tw-wrong".into()), json()],
                message("x").into_bytes(),
            ),
            expect: Expect::Error(401, Some("invalid_api_key")),
        },
        Case {
            name: "text/plain, as a web page's form can send",
            send: Send::Headers(
                CHAT,
                "POST",
                vec![key(), ("content-type", "text/plain".into())],
                message("x").into_bytes(),
            ),
            expect: Expect::Error(415, Some("unsupported_media_type")),
        },
        Case {
            name: "a browser's cross-origin request",
            send: Send::Headers(
                CHAT,
                "POST",
                vec![key(), json(), ("origin", "https://evil.example".into())],
                message("x").into_bytes(),
            ),
            expect: Expect::Error(403, Some("forbidden")),
        },
        Case {
            name: "GET on a POST endpoint",
            send: Send::Headers(CHAT, "GET", vec![key()], Vec::new()),
            expect: Expect::Error(405, None),
        },
        Case {
            name: "an unknown endpoint",
            send: Send::Body("/v1/completions/../../etc/passwd", message("x").into_bytes()),
            expect: Expect::Error(404, Some("not_found")),
        },
        Case {
            name: "not HTTP at all",
            send: Send::Raw(b"GARBAGE GARBAGE GARBAGE\r\n\r\n".to_vec()),
            expect: Expect::Refused,
        },
        Case {
            name: "a 200 kB header line",
            send: Send::Raw(
                format!(
                    "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
                    "b".repeat(200_000)
                )
                .into_bytes(),
            ),
            expect: Expect::Refused,
        },
        Case {
            name: "a bad chunk size",
            send: Send::Raw(
                format!(
                    "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n{{}}\r\n0\r\n\r\n"
                )
                .into_bytes(),
            ),
            expect: Expect::Refused,
        },
        Case {
            name: "both Content-Length and chunked (request smuggling)",
            send: Send::Raw(
                format!(
                    "POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/api/providers HTTP/1.1\r\nHost: localhost\r\n\r\n"
                )
                .into_bytes(),
            ),
            expect: Expect::Refused,
        },
        Case {
            name: "a Content-Length that is not a number",
            send: Send::Raw(
                format!("POST {CHAT} HTTP/1.1\r\nHost: localhost\r\nContent-Length: lots\r\n\r\n")
                    .into_bytes(),
            ),
            expect: Expect::Refused,
        },
    ]
}

/// Sends raw bytes and reads until the server closes or 5 s pass: the status line it answered
/// with, if any.
async fn raw(addr: &str, bytes: &[u8]) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A server may close before reading everything; that is an answer too.
    let _ = tcp.write_all(bytes).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection was neither answered nor closed: {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    text.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_a_clear_client_error_and_the_gateway_serves_on() {
    let up = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes();
    let gw = TestGateway::start(&config).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in cases {
        match (case.send, case.expect) {
            (Send::Raw(bytes), Expect::Refused) => {
                if let Some(line) = raw(&addr, &bytes).await
                    && !line.starts_with("HTTP/1.1 4")
                {
                    wrong.push(format!("{}: answered {line:?}", case.name));
                }
            }
            (send, Expect::Error(status, code)) => {
                let (path, method, headers, body) = match send {
                    Send::Body(path, body) => (
                        path,
                        "POST",
                        vec![
                            ("authorization", format!("Bearer {CLIENT_KEY}")),
                            ("content-type", "application/json".to_string()),
                        ],
                        body,
                    ),
                    Send::Headers(path, method, headers, body) => (path, method, headers, body),
                    Send::Raw(_) => unreachable!("raw cases expect a refusal"),
                };
                let mut request = gw
                    .http
                    .request(method.parse().unwrap(), format!("{}{path}", gw.url))
                    .body(body);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let answer = Answer::of(request.send().await.expect("an answer")).await;
                let shaped = answer.body["error"]["message"].is_string()
                    && answer.body["error"]["type"].is_string();
                if answer.status != status
                    || answer.body["error"]["code"] != serde_json::json!(code)
                    || !shaped
                {
                    wrong.push(format!(
                        "{}: expected {status} {code:?}, got {} {}",
                        case.name,
                        answer.status,
                        answer.text.chars().take(300).collect::<String>()
                    ));
                }
            }
            (_, Expect::Refused) => unreachable!("only raw cases expect a refusal"),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Many idle connections hold nothing up.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    assert_eq!(gw.ask("summarize").await.status, 200);
    drop(idle);
    assert_eq!(
        up.request_count(),
        1,
        "no malformed request reached the upstream"
    );
}

/// A body nested past [`tierwise::openai::MAX_DEPTH`] gets one 400 naming the field and the depth
/// on every endpoint, whichever tier the route would take (a chat tier translating it, an
/// Anthropic tier given it as it came), and no tier is called; one level less is served through
/// each of them, translations included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_past_the_limit_is_one_400_on_every_endpoint() {
    use serde_json::Value;
    use tierwise::config::TaskKind;
    use tierwise::config::file::{RawProvider, RawTier, text};
    let up = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(anthropic.base_url());
            provider.api = Some(tierwise::config::Api::Anthropic);
            provider.api_key = Some(text("sk-ant-secret"));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("anthropic"), provider);
            c.0.tiers.insert(
                text("claude"),
                RawTier::new("anthropic", "claude-haiku-4-5"),
            );
            c.add_route("agent", TaskKind::Agentic, &["claude"]);
        });
    let gw = TestGateway::start(&config).await;
    // `metadata` is the body's second level: `depth` levels in all.
    let body = |path: &str, model: &str, depth: usize| -> Vec<u8> {
        let deep = format!("{}1{}", "[".repeat(depth - 2), "]".repeat(depth - 2));
        let mut body: Value = match path {
            "/v1/chat/completions" => {
                serde_json::json!({"messages": [{"role": "user", "content": "hi"}]})
            }
            "/v1/responses" => serde_json::json!({"input": "hi"}),
            _ => {
                serde_json::json!({"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
            }
        };
        body["model"] = model.into();
        let body = body.to_string();
        format!(
            r#"{},"metadata":{{"user_id":"u","x":{deep}}}}}"#,
            &body[..body.len() - 1]
        )
        .into_bytes()
    };
    let limit = tierwise::openai::MAX_DEPTH;
    let cases = [
        ("/v1/chat/completions", "summarize"),
        ("/v1/responses", "summarize"),
        ("/v1/messages", "summarize"),
        ("/v1/messages/count_tokens", "summarize"),
        ("/v1/chat/completions", "agent"),
        ("/v1/responses", "agent"),
        ("/v1/messages", "agent"),
    ];
    for (path, model) in cases {
        let answer = Answer::of(gw.post_raw(path, body(path, model, limit + 1)).await).await;
        assert_eq!(answer.status, 400, "{path} {model}: {}", answer.text);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("'metadata' nests objects and arrays more than 100 deep"),
            "{path} {model}: {}",
            answer.text
        );
    }
    assert_eq!(up.request_count() + anthropic.request_count(), 0);
    for (path, model) in cases {
        let answer = Answer::of(gw.post_raw(path, body(path, model, limit)).await).await;
        assert_eq!(answer.status, 200, "{path} {model}: {}", answer.text);
        assert_eq!(answer.header("x-tierwise-fallback"), None, "{path} {model}");
    }
}
