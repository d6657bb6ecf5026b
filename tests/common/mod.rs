//! Starting the real gateway in-process on a free port, against fake upstreams from
//! `tests/support`, and talking to it over HTTP like a client would.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use std::time::{Duration, Instant};

use serde_json::Value;
use tierwise::config::Config;
use tierwise::ledger::{Store, StoredRequest};
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

/// A two-tier setup: `local` on one fake, `api_fast` and `api_frontier` on another, with the
/// classification route of DESIGN.md. `extra` is appended to the file.
pub fn two_tier_config(local_url: &str, api_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
api_keys = ["${{CLIENT_KEY}}"]

[ledger]
url = "{ledger}"

[providers.vllm]
base_url = "{local_url}"
api_key = "${{LOCAL_KEY}}"
timeout = {{ connect_ms = 500, first_byte_ms = 2000, total_ms = 5000, idle_ms = 2000 }}

[providers.openai]
base_url = "{api_url}"
api_key = "sk-api-key-789"

[tiers]
local        = {{ provider = "vllm", model = "mistral-7b", max_tokens = 256, temperature = 0.1 }}
api_fast     = {{ provider = "openai", model = "gpt-4o-mini", max_tokens = 1024 }}
api_frontier = {{ provider = "openai", model = "gpt-4o" }}
embed_local  = {{ provider = "vllm", model = "nomic-embed-text" }}

[routes.classification]
kind = "classification"
tiers = ["local", "api_fast"]
baseline = "api_frontier"
output = {{ labels = ["billing", "technical", "general"] }}

[routes.summarize]
kind = "summarization"
tiers = ["local", "api_fast"]

[routes.embed]
kind = "embedding"
tiers = ["embed_local"]
{extra}
"#,
        ledger = sqlite_url(),
    )
}

pub struct TestGateway {
    pub url: String,
    pub http: reqwest::Client,
    pub ledger_url: String,
    gateway: Gateway,
}

impl TestGateway {
    pub async fn start(toml: &str) -> TestGateway {
        TestGateway::start_config(parse(toml)).await
    }

    pub async fn start_config(config: Config) -> TestGateway {
        let ledger_url = config.ledger.url.clone();
        let gateway = Gateway::start(config).await.expect("gateway starts");
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

/// Waits until the ledger holds request `id` (the writer is asynchronous).
pub async fn stored(store: &Store, id: &str) -> StoredRequest {
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
