//! tierwise in front of a real model server: llama.cpp's own `llama-server`, built from the sources
//! a PyPI package vendors, serving a tiny random-weight model written at set-up
//! (`scripts/llama-server`, which `scripts/test` runs first; a test that cannot have the server
//! fails saying why). Every other test of the local tier meets `tests/support`'s fake, our reading
//! of the servers' documentation; these meet the real protocol: the window its `/props` states, its
//! usage blocks and stream framing, its refusal of a prompt over its window, its embeddings, its
//! death and restart, and its own token counts beside tierwise's estimates.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise::config::file::{RawPrice, spanned, text};
use tierwise::ledger::Picodollars;
use tierwise::openai::Endpoint;
use tierwise_fake::FakeUpstream;

use crate::util::*;

/// The model's name as every server here serves it (`--alias`).
const MODEL: &str = "tiny";

/// The paths `scripts/llama-server` gives: the server binary and the tiny model.
struct Artifacts {
    server: PathBuf,
    model: PathBuf,
}

/// The server and the model, from `TIERWISE_LLAMA_SERVER` and `TIERWISE_LLAMA_MODEL` where both are
/// set, else from `scripts/llama-server` (at once when it has run before; a first build takes
/// minutes). Panics with the script's own words when it fails: these tests are never skipped.
fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        if let (Some(server), Some(model)) = (
            std::env::var_os("TIERWISE_LLAMA_SERVER"),
            std::env::var_os("TIERWISE_LLAMA_MODEL"),
        ) {
            return Artifacts {
                server: server.into(),
                model: model.into(),
            };
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-server");
        let output = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "scripts/llama-server failed ({}), so the tests against llama.cpp's server cannot run:\n{stderr}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = |key: &str| -> PathBuf {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .unwrap_or_else(|| {
                    panic!("scripts/llama-server printed no {key}<path>:\n{stdout}\n{stderr}")
                })
                .into()
        };
        let artifacts = Artifacts {
            server: path("server="),
            model: path("model="),
        };
        for file in [&artifacts.server, &artifacts.model] {
            assert!(file.is_file(), "{} is not there", file.display());
        }
        artifacts
    })
}

/// A free port of 127.0.0.1, for a server that binds it itself.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One running `llama-server`, killed when dropped. Its output goes to a file, read back when it
/// fails to start.
struct LlamaServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
}

impl LlamaServer {
    /// Starts on a free port with `args` added (e.g. `-c 512`), and waits for its `/health`.
    async fn start(args: &[&str]) -> LlamaServer {
        LlamaServer::start_on(free_port(), args).await
    }

    /// Starts on `port`, e.g. the port of one that was killed, to play its restart.
    async fn start_on(port: u16, args: &[&str]) -> LlamaServer {
        let artifacts = artifacts();
        let log = std::env::temp_dir().join(format!(
            "tierwise-llama-{}.log",
            uuid::Uuid::now_v7().simple()
        ));
        let file = std::fs::File::create(&log).expect("a log file in the temp directory");
        let port_text = port.to_string();
        // One thread and one slot: the machine is shared with the rest of the suite, and one slot
        // makes `/props`'s per-slot window the whole context.
        let mut command = Command::new(&artifacts.server);
        command
            .args(["-m".as_ref(), artifacts.model.as_os_str()])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port_text,
                "--alias",
                MODEL,
            ])
            .args(["-t", "1", "-np", "1", "--no-webui", "--metrics"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a second handle on the log"))
            .stderr(file);
        let child = command.spawn().unwrap_or_else(|err| {
            let _ = std::fs::remove_file(&log);
            panic!("cannot start {}: {err}", artifacts.server.display())
        });
        let mut server = LlamaServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            http: reqwest::Client::new(),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "llama-server exited ({status}) before it was healthy:\n{}",
                    self.log_text()
                );
            }
            let health = self
                .http
                .get(format!("http://{}/health", self.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < until,
                "llama-server was not healthy within 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|err| panic!("llama-server answers GET {path}: {err}"));
        response.json().await.expect("a JSON answer")
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("llama-server answers POST {path}: {err}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The server's own count of `text` (`POST /tokenize`, without the `<s>` it adds to a prompt).
    async fn tokens(&self, text: &str) -> u64 {
        let (status, answer) = self
            .post("/tokenize", &json!({"content": text, "add_special": false}))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["tokens"].as_array().expect("a token list").len() as u64
    }

    /// The server's own count of a chat request's prompt, its chat template applied, as its
    /// usage would report it.
    async fn chat_prompt_tokens(&self, request: &Value) -> u64 {
        let (status, templated) = self.post("/apply-template", request).await;
        assert_eq!(status, 200, "{templated}");
        let prompt = templated["prompt"].as_str().expect("a templated prompt");
        let (status, answer) = self
            .post(
                "/tokenize",
                &json!({"content": prompt, "add_special": true, "parse_special": true}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["tokens"].as_array().expect("a token list").len() as u64
    }

    /// A counter of the server's Prometheus text (`--metrics`), e.g. `prompt_tokens_total`.
    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .expect("llama-server answers /metrics")
            .text()
            .await
            .expect("a metrics text");
        let series = format!("llamacpp:{name} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in llama-server's metrics:\n{text}"))
            .trim()
            .parse()
            .expect("a number")
    }

    /// The id of the last completion or embedding task the server took, refused ones included
    /// (`None` before any). llama-server logs no HTTP requests; its `/slots` (one slot here) is
    /// answered in order after every task it was already given, so a request answered before
    /// this is asked has moved it.
    async fn last_task(&self) -> Option<i64> {
        self.get("/slots").await[0]["id_task"].as_i64()
    }

    /// Kills the server at once, as a crash would, and waits for it to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// tierwise in front of `llama_url`: provider `llama` (no fixed cost: billed per token at the prices
/// below, so that a cost is tokens × price), tiers `local` and `embed_local` on model `tiny`, the
/// fake `api` behind them (`api_fast`); routes `summarize` (local → api_fast) and `embed`. Probes
/// every 100 ms.
fn config(llama_url: &str, api: &FakeUpstream) -> TestConfig {
    TestConfig::two_tier(llama_url, &api.base_url()).with(|c| {
        let mut llama =
            c.0.providers
                .remove(&text("vllm"))
                .expect("two_tier's local provider");
        llama.api_key = None;
        llama.timeout.first_byte_ms = Some(10_000);
        llama.timeout.total_ms = Some(20_000);
        llama.timeout.idle_ms = Some(10_000);
        llama.health.interval_ms = Some(spanned(100));
        llama.health.timeout_ms = Some(1000);
        llama.breaker.cooldown_ms = Some(100);
        c.0.providers.insert(text("llama"), llama);
        for tier in ["local", "embed_local"] {
            let tier = c.0.tiers.get_mut(&text(tier)).expect("two_tier's tier");
            tier.provider = text("llama");
            tier.model = text(MODEL);
        }
        // A short answer: the model's words are noise, and a budget this small fits any window.
        c.0.tiers.get_mut(&text("local")).unwrap().max_tokens = Some(8);
        c.0.prices.insert(
            text(MODEL),
            RawPrice {
                input: spanned(1.0),
                output: spanned(2.0),
                cached_input: Some(spanned(0.5)),
                cache_write: None,
            },
        );
    })
}

/// What the prices of [`config`] make of these tokens: $1, $0.50 and $2 per million.
fn priced(input: u64, cached: u64, output: u64) -> Picodollars {
    let micro = 1_000_000i64;
    Picodollars(
        (input - cached) as i64 * micro + cached as i64 * micro / 2 + output as i64 * 2 * micro,
    )
}

fn cost_header(answer: &Answer) -> Picodollars {
    let text = answer.header("x-tierwise-cost-usd").expect("a cost header");
    cost_of(text)
}

fn cost_of(text: &str) -> Picodollars {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    Picodollars(
        whole.parse::<i64>().unwrap() * 1_000_000_000_000
            + format!("{frac:0<12}").parse::<i64>().unwrap(),
    )
}

/// One tier's window as `/admin/api/providers` shows it.
async fn window(gw: &TestGateway, provider: &str, tier: &str) -> Value {
    gw.provider(provider).await["context_windows"]
        .as_array()
        .expect("a list of windows")
        .iter()
        .find(|w| w["tier"] == tier)
        .unwrap_or_else(|| panic!("no window of {tier}"))
        .clone()
}

/// Waits until `provider` has answered its probe and its breaker is closed.
async fn wait_up(gw: &TestGateway, provider: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let status = gw.provider(provider).await;
        if status["up"] == true {
            return;
        }
        assert!(
            Instant::now() < until,
            "{provider} was not up within {within:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A prompt of about `words` words the tiny model has whole (one token each, as OpenAI's
/// tokenizers count them too), so that the server's count and tierwise's are close.
fn words(words: usize) -> String {
    const SENTENCE: [&str; 10] = [
        "the", "people", "could", "find", "water", "after", "a", "long", "day", "there",
    ];
    (0..words)
        .map(|i| SENTENCE[i % SENTENCE.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The window is the server's: `/props` says 512 (as does its `/v1/models`), the probe reads it,
/// `/admin/api/providers` shows it as the server's, and a prompt that cannot fit skips the tier
/// without a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_read_from_the_real_servers_props_and_a_prompt_over_it_skips_the_tier() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let props = llama.get("/props").await;
    assert_eq!(
        props["default_generation_settings"]["n_ctx"], 512,
        "{props}"
    );
    let models = llama.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    assert_eq!(models["data"][0]["meta"]["n_ctx"], 512, "{models}");

    let api = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&llama.base_url(), &api)).await;
    wait_up(&gw, "llama", Duration::from_secs(10)).await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let local = window(&gw, "llama", "local").await;
        if local["source"] == "server" {
            assert_eq!(local["tokens"], 512, "{local}");
            break;
        }
        assert!(Instant::now() < until, "the window was not read: {local}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let short = gw
        .post("/v1/chat/completions", &chat("summarize", &words(20)))
        .await;
    let short = Answer::of(short).await;
    assert_eq!(short.status, 200, "{}", short.text);
    assert_eq!(short.header("x-tierwise-tier"), Some("local"));
    let before = llama.last_task().await;
    assert!(before.is_some(), "the server took no task");

    let long = gw
        .post("/v1/chat/completions", &chat("summarize", &words(600)))
        .await;
    let long = Answer::of(long).await;
    long.assert_served_by("api_fast", "local:context_too_long");
    assert_eq!(
        llama.last_task().await,
        before,
        "the tier was called for a prompt its window cannot hold"
    );
    gw.shutdown().await;
}

/// The usage a client gets is the server's own (its count of the templated prompt, its cached
/// prefix, its generated tokens), the ledger stores exactly that, and the cost the client is told,
/// the cost stored and the tokens × the configured prices are one figure: for an answer, for a
/// second identical one (whose prompt the server found in its cache), and for a stream (whose
/// usage chunk carries the cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_the_real_servers_and_stored_returned_and_priced_alike() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let api = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&llama.base_url(), &api).without_probes()).await;
    let store = gw.store().await;
    let request = chat("local", "hello world , the people could find water");
    let mut as_sent = request.clone();
    as_sent["max_tokens"] = json!(8);
    let server_prompt = llama.chat_prompt_tokens(&as_sent).await;

    for round in ["first", "cached"] {
        let answer = Answer::of(gw.post("/v1/chat/completions", &request).await).await;
        assert_eq!(answer.status, 200, "{round}: {}", answer.text);
        let usage = &answer.body["usage"];
        let (input, output) = (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
        );
        let cached = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            input, server_prompt,
            "{round}: the server's own prompt count"
        );
        assert!((1..=8).contains(&output), "{round}: {usage}");
        if round == "cached" {
            assert!(cached > 0, "the server reused its cached prompt: {usage}");
        }
        let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
        assert_eq!(
            (
                row.tokens_in,
                row.tokens_cached,
                row.tokens_out,
                row.tokens_estimated
            ),
            (input, cached, output, false),
            "{round}"
        );
        let cost = priced(input, cached, output);
        assert_eq!(row.cost_pusd, Some(cost), "{round}");
        assert_eq!(cost_header(&answer), cost, "{round}");
    }

    let mut streamed = chat("local", "the long day");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let answer = Answer::of(gw.post("/v1/chat/completions", &streamed).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let events: Vec<&str> = answer
        .text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{}", answer.text);
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect();
    let usage_chunk = chunks
        .iter()
        .find(|chunk| chunk["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk:\n{}", answer.text));
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    let usage = &usage_chunk["usage"];
    let (input, output) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    let mut streamed_as_sent = streamed.clone();
    streamed_as_sent["max_tokens"] = json!(8);
    assert_eq!(input, llama.chat_prompt_tokens(&streamed_as_sent).await);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.stream);
    assert_eq!(
        (
            row.tokens_in,
            row.tokens_cached,
            row.tokens_out,
            row.tokens_estimated
        ),
        (input, cached, output, false)
    );
    let cost = priced(input, cached, output);
    assert_eq!(row.cost_pusd, Some(cost));
    assert_eq!(
        cost_of(&usage["cost_usd"].to_string()),
        cost,
        "the usage chunk carries the stored cost: {usage_chunk}"
    );

    // A client that did not ask for usage gets none; the ledger has it all the same.
    streamed.as_object_mut().unwrap().remove("stream_options");
    let answer = Answer::of(gw.post("/v1/chat/completions", &streamed).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(!answer.text.contains("\"usage\""), "{}", answer.text);
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert!(row.tokens_in > 0 && !row.tokens_estimated, "{row:?}");
    gw.shutdown().await;
}

/// A prompt over a window tierwise does not know (no probe, so nothing read from `/props`): the
/// real server refuses it, tierwise recognizes the refusal (`local:context_too_long`, not the
/// provider's failure) and the next tier answers. The window it states is learned only as issue 22
/// allows: 512 tokens is under the floor, so nothing is learned; a server at 2,048 tokens teaches
/// its window from its typed fields, and the next long prompt skips the tier without a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_servers_refusal_of_a_long_prompt_falls_back_and_teaches_only_a_plausible_window()
{
    let api = FakeUpstream::start().await;
    for (n_ctx, prompt_words, learned) in [(512u32, 700usize, false), (2048, 2600, true)] {
        let llama = LlamaServer::start(&["-c", &n_ctx.to_string()]).await;
        let long = chat("summarize", &words(prompt_words));
        let (status, refusal) = llama.post("/v1/chat/completions", &long).await;
        assert_eq!(status, 400, "{refusal}");
        assert_eq!(
            refusal["error"]["type"], "exceed_context_size_error",
            "{refusal}"
        );
        assert_eq!(refusal["error"]["n_ctx"], n_ctx, "{refusal}");

        let gw = TestGateway::start(&config(&llama.base_url(), &api).without_probes()).await;
        let answer = Answer::of(gw.post("/v1/chat/completions", &long).await).await;
        answer.assert_served_by("api_fast", "local:context_too_long");
        let id = answer.header("x-tierwise-request-id").unwrap().to_string();
        assert_eq!(
            gw.breaker_state("llama").await,
            "closed",
            "a refusal is not the provider's failure"
        );
        let local = window(&gw, "llama", "local").await;
        let before = llama.last_task().await;
        let next = Answer::of(gw.post("/v1/chat/completions", &long).await).await;
        next.assert_served_by("api_fast", "local:context_too_long");
        if learned {
            assert_eq!(local["tokens"], n_ctx, "{local}");
            assert_eq!(local["source"], "learned", "{local}");
            assert_eq!(local["learned_from"], id.as_str(), "{local}");
            assert_eq!(
                llama.last_task().await,
                before,
                "a learned window skips the tier without a call"
            );
        } else {
            assert_eq!(local["tokens"], Value::Null, "under the floor: {local}");
            assert_ne!(llama.last_task().await, before, "called again");
        }
        // A short prompt is still the local tier's.
        let short = gw
            .post("/v1/chat/completions", &chat("summarize", &words(10)))
            .await;
        let short = Answer::of(short).await;
        assert_eq!(
            short.header("x-tierwise-tier"),
            Some("local"),
            "{}",
            short.text
        );
        gw.shutdown().await;
    }
}

/// Embeddings through `/v1/embeddings` from a server started with `--embeddings --pooling mean`: a
/// vector per input of the model's width, the server's usage stored as it said it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_come_from_the_real_server_with_its_usage() {
    let llama = LlamaServer::start(&["-c", "512", "--embeddings", "--pooling", "mean"]).await;
    let api = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&llama.base_url(), &api).without_probes()).await;
    let store = gw.store().await;
    let request = json!({"model": "embed", "input": ["hello world", "the water is low"]});
    let answer = Answer::of(gw.post("/v1/embeddings", &request).await).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("embed_local"));
    let data = answer.body["data"].as_array().expect("a data list");
    assert_eq!(data.len(), 2, "{}", answer.text);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index);
        let vector = item["embedding"].as_array().expect("a vector");
        assert_eq!(vector.len(), 64, "the model's width");
        assert!(vector.iter().all(Value::is_f64), "{item}");
    }
    let usage = &answer.body["usage"];
    let input = usage["prompt_tokens"].as_u64().expect("the server's usage");
    let row = stored(&store, answer.header("x-tierwise-request-id").unwrap()).await;
    assert_eq!(
        (row.tokens_in, row.tokens_out, row.tokens_estimated),
        (input, 0, false)
    );
    assert_eq!(row.cost_pusd, Some(priced(input, 0, 0)));
    assert_eq!(cost_header(&answer), priced(input, 0, 0));
    gw.shutdown().await;
}

/// The provider's life across a crash: warmed up before traffic (the server's own metrics count
/// the warm-up's prompt before any user's); killed → users fall back at once and its breaker
/// opens; restarted on the same port → its probe answers, it is warmed up again (the new
/// process's first tokens are the warm-up's) and users are sent to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_falls_back_and_opens_its_breaker_and_its_restart_is_warmed_before_traffic()
{
    let mut llama = LlamaServer::start(&["-c", "512"]).await;
    let port = llama.addr.port();
    let api = FakeUpstream::start().await;
    let config = config(&llama.base_url(), &api).with(|c| {
        c.provider("llama").warmup = true;
        // Only the chat tier: a chat server's embeddings are not this test's.
        c.0.routes.remove(&text("embed"));
        c.0.tiers.remove(&text("embed_local"));
    });
    let gw = TestGateway::start(&config).await;
    wait_up(&gw, "llama", Duration::from_secs(10)).await;
    assert!(
        llama.metric("prompt_tokens_total").await > 0.0,
        "no warm-up reached the server before traffic"
    );
    assert!(llama.last_task().await.is_some(), "the warm-up is a task");
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        answer.text
    );

    llama.kill();
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    gw.wait_for_breaker("llama", "open", Duration::from_secs(10))
        .await;
    let answer = gw.ask("summarize").await;
    answer.assert_served_by("api_fast", "local:breaker_open");

    let restarted = LlamaServer::start_on(port, &["-c", "512"]).await;
    wait_up(&gw, "llama", Duration::from_secs(10)).await;
    // A fresh process: whatever it has taken before any user's request is the warm-up.
    assert!(
        restarted.last_task().await.is_some(),
        "not warmed up before traffic came back"
    );
    assert!(restarted.metric("prompt_tokens_total").await > 0.0);
    let answer = gw.ask("summarize").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-tierwise-tier"), Some("local"));
    assert_eq!(answer.header("x-tierwise-fallback"), None);
    gw.shutdown().await;
}

/// tierwise counts a prompt with OpenAI's tokenizers where a server reports no usage, and to
/// judge whether a prompt fits a window; the server counts with its model's own. Set side by side
/// (printed, and written down in docs/testing.md): words the model has whole count alike; text it
/// has no words for falls back to one token a byte in this tiny vocabulary, several times
/// tierwise's count, as a real model's would not. The chat prompt adds the server's template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tierwises_token_estimates_beside_the_real_servers_counts() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let texts = [
        ("words the model has", words(100)),
        (
            "English prose",
            "My card was charged twice for the same order, and the invoice total does not match what I paid.".to_string(),
        ),
        (
            "JSON",
            r#"{"label": "billing", "confidence": 0.93, "items": [{"sku": "A-1234", "qty": 12}]}"#.to_string(),
        ),
    ];
    println!("| text | bytes | tierwise (cl100k) | llama-server /tokenize | ratio |");
    for (name, text) in &texts {
        let ours = tierwise::openai::tokens::count(MODEL, text);
        let theirs = llama.tokens(text).await;
        println!(
            "| {name} | {} | {ours} | {theirs} | {:.2} |",
            text.len(),
            theirs as f64 / ours as f64
        );
        if *name == "words the model has" {
            assert_eq!(ours, theirs, "one token a word on both sides");
        } else {
            assert!(theirs >= ours, "{name}: bytes outnumber OpenAI's tokens");
        }
    }
    let request = chat(MODEL, &words(100));
    let ours =
        (Endpoint::ChatCompletions.spec().count_prompt)(MODEL, request.to_string().as_bytes());
    let theirs = llama.chat_prompt_tokens(&request).await;
    println!(
        "| chat request of the same 100 words | | {ours} | {theirs} (template applied) | {:.2} |",
        theirs as f64 / ours as f64
    );
    assert!(ours.abs_diff(theirs) <= 64, "{ours} against {theirs}");
    // The server's usage for that request is the same count /tokenize gives.
    let mut budgeted = request.clone();
    budgeted["max_tokens"] = json!(1);
    let (status, answer) = llama.post("/v1/chat/completions", &budgeted).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], theirs, "{answer}");
}

/// A llama-server started without `--embeddings` answers embeddings with 501 `not_supported_error`:
/// the server is up and says this endpoint is not its, as a 4xx would. The provider comes up all
/// the same (the embedding tier's warm-up is refused and it stays cold; the chat tier is warmed),
/// and embedding requests, even many of them and naming the chat tier itself, fall back without
/// opening the breaker that the chat tier's users depend on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_servers_refusal_of_embeddings_is_not_its_outage() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let (status, refusal) = llama
        .post("/v1/embeddings", &json!({"model": MODEL, "input": "hello"}))
        .await;
    assert_eq!(status, 501, "{refusal}");
    assert_eq!(refusal["error"]["type"], "not_supported_error", "{refusal}");

    let api = FakeUpstream::start().await;
    let config = config(&llama.base_url(), &api).with(|c| {
        c.provider("llama").warmup = true;
        c.provider("llama").breaker.failures = Some(spanned(2));
        c.route("embed").tiers = spanned(vec![text("embed_local"), text("api_fast")]);
    });
    let gw = TestGateway::start(&config).await;
    wait_up(&gw, "llama", Duration::from_secs(10)).await;
    for model in ["embed", "local", "embed", "local"] {
        let request = json!({"model": model, "input": "hello world"});
        let answer = Answer::of(gw.post("/v1/embeddings", &request).await).await;
        if model == "embed" {
            answer.assert_served_by("api_fast", "embed_local:http_501");
        } else {
            assert_eq!(answer.status, 502, "{}", answer.text);
        }
    }
    assert_eq!(gw.breaker_state("llama").await, "closed");
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        answer.text
    );
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        None,
        "{}",
        answer.text
    );
    gw.shutdown().await;
}

/// A text model served by llama.cpp answers an image with a 500 in its own words ("image input is
/// not supported"): the model lacks vision, as a tier configured `vision = false` does. The request
/// moves on to a tier that may read it (`local:no_vision`), and however many a client sends, the
/// breaker the text model's other users depend on stays closed; with no tier left the client is
/// told which parameter no tier could take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_sent_to_a_real_text_model_fall_back_without_opening_its_breaker() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let mut with_image = chat("summarize", "hello");
    with_image["messages"][0]["content"] = json!([
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]);
    let (status, refusal) = llama.post("/v1/chat/completions", &with_image).await;
    assert_eq!(status, 500, "{refusal}");

    let api = FakeUpstream::start().await;
    let config = config(&llama.base_url(), &api)
        .without_probes()
        .with(|c| c.provider("llama").breaker.failures = Some(spanned(2)));
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        let answer = Answer::of(gw.post("/v1/chat/completions", &with_image).await).await;
        answer.assert_served_by("api_fast", "local:no_vision");
    }
    assert_eq!(gw.breaker_state("llama").await, "closed");
    with_image["model"] = json!("local");
    let answer = Answer::of(gw.post("/v1/chat/completions", &with_image).await).await;
    answer.error(400, Some("unsupported_parameter"));
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        answer.text
    );
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        None,
        "{}",
        answer.text
    );
    gw.shutdown().await;
}

/// The real server answers two client mistakes with a 500 in its own words: audio sent to a model
/// without a projector ("audio input is not supported") and an unknown `reasoning_format`
/// ("Unknown reasoning format: …"). They are the request's: however many one client sends, they
/// move on to the next tier (`local:request_refused`), the breaker the model's other users depend
/// on stays closed (two failures would open it), and the local tier keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_servers_500s_that_refuse_a_request_do_not_open_its_breaker() {
    let llama = LlamaServer::start(&["-c", "512"]).await;
    let mut with_audio = chat("summarize", "hello");
    with_audio["messages"][0]["content"] = json!([
        {"type": "text", "text": "what is said here"},
        {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=", "format": "wav"}},
    ]);
    let mut odd_reasoning = chat("summarize", "hello");
    odd_reasoning["reasoning_format"] = json!("deep_think");
    for (request, words) in [
        (&with_audio, "audio input is not supported"),
        (&odd_reasoning, "Unknown reasoning format"),
    ] {
        let (status, refusal) = llama.post("/v1/chat/completions", request).await;
        assert_eq!(status, 500, "{refusal}");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(words)),
            "{refusal}"
        );
    }

    let api = FakeUpstream::start().await;
    let config = config(&llama.base_url(), &api)
        .without_probes()
        .with(|c| c.provider("llama").breaker.failures = Some(spanned(2)));
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        for request in [&with_audio, &odd_reasoning] {
            let answer = Answer::of(gw.post("/v1/chat/completions", request).await).await;
            answer.assert_served_by("api_fast", "local:request_refused");
        }
    }
    assert_eq!(gw.breaker_state("llama").await, "closed");
    let answer = gw.ask("summarize").await;
    assert_eq!(
        answer.header("x-tierwise-tier"),
        Some("local"),
        "{}",
        answer.text
    );
    assert_eq!(
        answer.header("x-tierwise-fallback"),
        None,
        "{}",
        answer.text
    );
    gw.shutdown().await;
}
