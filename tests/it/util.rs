//! Starting the real gateway in-process on a free port, against fake upstreams from
//! `tests/support`, and talking to it over HTTP like a client would; test configurations built
//! from the configuration file's own types ([`TestConfig`]), so a renamed key breaks the build.

use std::collections::HashMap;
use std::path::Path;

use std::time::{Duration, Instant};

use serde_json::Value;
use tierwise::config::file::{
    ConfigFile, RawOutput, RawProvider, RawRoute, RawTier, RawTimeouts, RawUpstreamServer, spanned,
    text,
};
use tierwise::config::{Config, TaskKind};
use tierwise::ledger::{RequestRow, Store};
use tierwise::server::Gateway;

pub const PROVIDER_KEY: &str = "sk-upstream-secret-123";
pub const CLIENT_KEY: &str = "tw-client-key-456";

/// Variables the test configs may reference with `${...}`.
pub fn env(name: &str) -> Option<String> {
    let vars: HashMap<&str, &str> =
        [("LOCAL_KEY", PROVIDER_KEY), ("CLIENT_KEY", CLIENT_KEY)].into();
    vars.get(name).map(|v| v.to_string())
}

pub fn parse(toml: &str) -> Config {
    parse_in(toml, Path::new("tierwise.toml"))
}

pub fn parse_in(toml: &str, path: &Path) -> Config {
    match Config::parse(toml, path, &env) {
        Ok(config) => config,
        Err(err) => panic!("test config does not load: {err}"),
    }
}

/// A fresh SQLite ledger in the temp directory.
pub fn sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("tierwise-test-{}.db", uuid::Uuid::now_v7()));
    format!("sqlite://{}", path.display())
}

/// The PostgreSQL server tests use (`.ci/run` makes sure it is up).
pub fn postgres_base_url() -> String {
    std::env::var("TIERWISE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty PostgreSQL ledger: its own schema in the test database, so tests and runs do not
/// see each other's rows.
pub async fn postgres_url() -> String {
    use sqlx::Connection;
    let base = postgres_base_url();
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL is reachable (see .ci/run)");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    format!("{base}?options=-c%20search_path%3D{schema}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub async fn url(self) -> String {
        match self {
            Backend::Sqlite => sqlite_url(),
            Backend::Postgres => postgres_url().await,
        }
    }
}

/// A configuration file built in code.
pub struct TestConfig(pub ConfigFile);

impl TestConfig {
    /// A two-tier setup: `local` (and `embed_local`) on the `vllm` provider at `local_url`,
    /// `api_fast` and `api_frontier` on `openai` at `api_url`, the classification route of
    /// docs/design.md, `summarize` and `embed`; a fresh SQLite ledger; client key `CLIENT_KEY`.
    pub fn two_tier(local_url: &str, api_url: &str) -> TestConfig {
        let mut file = ConfigFile::default();
        file.server.listen = Some(text("127.0.0.1:0"));
        file.server.api_keys = Some(vec![text("${CLIENT_KEY}")]);
        file.ledger.url = Some(text(sqlite_url()));
        let spool =
            std::env::temp_dir().join(format!("tierwise-test-{}.spool", uuid::Uuid::now_v7()));
        file.ledger.spool = Some(text(spool.display().to_string()));

        let mut vllm = RawProvider::new(local_url);
        vllm.api_key = Some(text("${LOCAL_KEY}"));
        vllm.timeout = RawTimeouts {
            connect_ms: Some(500),
            first_byte_ms: Some(2000),
            total_ms: Some(5000),
            idle_ms: Some(2000),
            ..RawTimeouts::default()
        };
        let mut openai = RawProvider::new(api_url);
        openai.api_key = Some(text("sk-api-key-789"));
        file.providers.insert(text("vllm"), vllm);
        file.providers.insert(text("openai"), openai);

        let mut local = RawTier::new("vllm", "mistral-7b");
        local.max_tokens = Some(256);
        local.temperature = Some(spanned(0.1));
        let mut api_fast = RawTier::new("openai", "gpt-4o-mini");
        api_fast.max_tokens = Some(1024);
        file.tiers.insert(text("local"), local);
        file.tiers.insert(text("api_fast"), api_fast);
        file.tiers
            .insert(text("api_frontier"), RawTier::new("openai", "gpt-4o"));
        file.tiers.insert(
            text("embed_local"),
            RawTier::new("vllm", "nomic-embed-text"),
        );

        let mut classification = RawRoute::new(TaskKind::Classification, &["local", "api_fast"]);
        classification.baseline = Some(text("api_frontier"));
        classification.output = Some(RawOutput {
            labels: Some(spanned(
                ["billing", "technical", "general"].map(text).to_vec(),
            )),
        });
        file.routes.insert(text("classification"), classification);
        file.routes.insert(
            text("summarize"),
            RawRoute::new(TaskKind::Summarization, &["local", "api_fast"]),
        );
        file.routes.insert(
            text("embed"),
            RawRoute::new(TaskKind::Embedding, &["embed_local"]),
        );
        TestConfig(file)
    }

    pub fn provider(&mut self, name: &str) -> &mut RawProvider {
        self.0
            .providers
            .get_mut(name)
            .expect("a provider of the test config")
    }

    pub fn route(&mut self, name: &str) -> &mut RawRoute {
        self.0
            .routes
            .get_mut(name)
            .expect("a route of the test config")
    }

    /// Adds a route over the given tiers and returns it for more settings.
    pub fn add_route(&mut self, name: &str, kind: TaskKind, tiers: &[&str]) -> &mut RawRoute {
        self.0.routes.insert(text(name), RawRoute::new(kind, tiers));
        self.route(name)
    }

    /// Puts provider `name` on several servers, one per URL, in place of its `base_url`.
    pub fn servers(&mut self, name: &str, urls: &[String]) -> &mut RawProvider {
        let provider = self.provider(name);
        provider.base_url = None;
        provider.servers = Some(spanned(urls.iter().map(RawUpstreamServer::new).collect()));
        provider
    }

    /// Switches active probing off on every provider.
    pub fn without_probes(mut self) -> TestConfig {
        for provider in self.0.providers.values_mut() {
            provider.health.enabled = Some(false);
        }
        self
    }

    pub fn with(mut self, change: impl FnOnce(&mut TestConfig)) -> TestConfig {
        change(&mut self);
        self
    }

    /// The file as TOML, as a user would write it.
    pub fn toml(&self) -> String {
        toml::to_string(&self.0).expect("a test config serializes")
    }

    pub fn config(&self) -> Config {
        parse(&self.toml())
    }

    pub fn config_in(&self, path: &Path) -> Config {
        parse_in(&self.toml(), path)
    }
}

pub struct TestGateway {
    pub url: String,
    pub http: reqwest::Client,
    pub ledger_url: String,
    gateway: Gateway,
}

impl TestGateway {
    pub async fn start(config: &TestConfig) -> TestGateway {
        TestGateway::start_config(config.config()).await
    }

    pub async fn start_config(config: Config) -> TestGateway {
        TestGateway::start_with_clock(config, tierwise::limits::Clock::system()).await
    }

    /// A gateway whose budgets read the month from `clock`.
    pub async fn start_with_clock(config: Config, clock: tierwise::limits::Clock) -> TestGateway {
        let ledger_url = config.ledger.url.clone();
        let gateway = Gateway::start_with_clock(config, clock)
            .await
            .expect("gateway starts");
        TestGateway {
            url: format!("http://{}", gateway.addr),
            http: reqwest::Client::new(),
            ledger_url,
            gateway,
        }
    }

    /// A second connection to this gateway's ledger, to read what it wrote.
    pub async fn store(&self) -> Store {
        Store::connect(&self.ledger_url)
            .await
            .expect("the ledger opens")
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
    }

    /// POSTs JSON with the client key; returns the response.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// The Prometheus text at `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    /// Waits until `/metrics` satisfies `ready`, at most 10 s; returns the text.
    pub async fn wait_for_metrics(&self, ready: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            if ready(&text) {
                return text;
            }
            assert!(Instant::now() < until, "/metrics never showed it:\n{text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A streamed chat completion for `model`, read whole within 10 s: a stream that hangs fails
    /// the test instead of hanging it.
    pub async fn ask_stream(&self, model: &str) -> Answer {
        let request = chat_stream(model);
        let answer = async { Answer::of(self.post("/v1/chat/completions", &request).await).await };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("the stream ends instead of hanging")
    }

    /// One provider's status as `/admin/api/providers` shows it (state, breaker, in-flight).
    pub async fn provider(&self, name: &str) -> Value {
        let all = Answer::of(self.get("/admin/api/providers").await)
            .await
            .body;
        all["providers"]
            .as_array()
            .expect("a provider list")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no provider {name} in {all}"))
            .clone()
    }

    /// The state of a provider's breaker: `closed`, `open` or `half_open`.
    pub async fn breaker_state(&self, provider: &str) -> String {
        let status = self.provider(provider).await;
        status["breaker"]["state"].as_str().unwrap().to_string()
    }

    /// Waits until a provider's breaker is in `state`, at most `within`.
    pub async fn wait_for_breaker(&self, provider: &str, state: &str, within: Duration) {
        let until = Instant::now() + within;
        while self.breaker_state(provider).await != state {
            assert!(
                Instant::now() < until,
                "{provider} did not become {state} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The ledger's part of `/readyz`.
    pub async fn ledger(&self) -> Value {
        Answer::of(self.get("/readyz").await).await.body["ledger"].clone()
    }

    /// Waits until `/readyz` shows the ledger in `status` (`ok`, `degraded`), at most `within`.
    pub async fn wait_for_ledger(&self, status: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let ledger = self.ledger().await;
            if ledger["status"] == status {
                return;
            }
            assert!(
                Instant::now() < until,
                "the ledger did not become {status} within {within:?}: {ledger}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A chat completion for `model` with a one-word prompt, read whole.
    pub async fn ask(&self, model: &str) -> Answer {
        Answer::of(self.post("/v1/chat/completions", &chat(model, "x")).await).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .expect("the gateway answers")
    }
}

/// Status, a header lookup and the JSON body of a response.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a 200 from `tier` after the tiers before it failed as `fallback` says
    /// (`x-tierwise-fallback`, e.g. `local:connect_error`).
    pub fn assert_served_by(&self, tier: &str, fallback: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.header("x-tierwise-tier"), Some(tier), "{}", self.text);
        assert_eq!(
            self.header("x-tierwise-fallback"),
            Some(fallback),
            "{}",
            self.text
        );
    }

    /// Asserts a 200 from `tier` with no fallback before it.
    pub fn assert_served_by_first(&self, tier: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(self.header("x-tierwise-tier"), Some(tier), "{}", self.text);
        assert_eq!(self.header("x-tierwise-fallback"), None, "{}", self.text);
    }

    /// Asserts an OpenAI-shaped error with this status and `code`, and returns its message.
    pub fn error(&self, status: u16, code: Option<&str>) -> &str {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let error = &self.body["error"];
        assert!(
            error["message"].is_string(),
            "not OpenAI-shaped: {}",
            self.text
        );
        assert!(
            error["type"].is_string(),
            "not OpenAI-shaped: {}",
            self.text
        );
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "not OpenAI-shaped: {}",
            self.text
        );
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{}", self.text);
        }
        error["message"].as_str().unwrap()
    }
}

pub fn chat(model: &str, content: &str) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    })
}

/// A streamed chat request for `model` with a one-word prompt.
pub fn chat_stream(model: &str) -> Value {
    let mut request = chat(model, "x");
    request["stream"] = serde_json::json!(true);
    request
}

/// Waits until the ledger holds request `id` (the writer is asynchronous).
pub async fn stored(store: &Store, id: &str) -> RequestRow {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(row) = store.request(id).await.expect("the ledger answers") {
            return row;
        }
        assert!(
            Instant::now() < until,
            "request {id} never reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A webhook receiver: every JSON body POSTed to it, in order.
pub struct Hook {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Hook {
    pub async fn start() -> Hook {
        let received: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/hook/secret-token-123",
            axum::routing::post(move |body: axum::Json<Value>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body.0);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook/secret-token-123",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { url, received }
    }

    pub fn events(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|notice| notice["event"].as_str().unwrap_or("").to_string())
            .collect()
    }
}
