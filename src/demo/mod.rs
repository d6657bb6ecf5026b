//! `tierwise demo`: the whole product on a fresh machine with no model server and no key. It starts
//! two simulated providers in-process ([`simulated`]: a local model server and a paid API, named as
//! simulated everywhere), the real gateway in front of them with an embedded SQLite ledger, and a
//! mixed workload in proportions like the article's (classification, extraction, summaries,
//! embeddings, an agent on the API). A third of the way in the local server goes down for a while
//! (fallbacks to the API, its breaker opening and closing); halfway its classification accuracy
//! drops (the shadow check's alert fires and the route is demoted to the API). At the end it prints
//! the report — the saving, the fallbacks, the alert — and stops, or with `--serve` keeps the
//! gateway and its dashboard up.

pub mod simulated;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{Config, ConfigError};
use crate::ledger::{LedgerError, Store};
use crate::report::{Report, Window};
use crate::server::{Gateway, StartError};
use simulated::Simulated;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a simulated provider: {0}")]
    Simulator(std::io::Error),
    #[error("the demo's configuration is wrong (a bug in tierwise): {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot read the demo's ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("cannot create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

pub struct DemoOptions {
    pub duration: Duration,
    /// Where the gateway listens; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Virtual clients sending requests at once.
    pub clients: usize,
    /// Where the ledger and the generated configuration go.
    pub dir: PathBuf,
}

/// A running demo, done with its workload: what it printed, and the gateway still up.
pub struct Demo {
    pub gateway: Gateway,
    pub dashboard: String,
    pub report: String,
    /// A curl command and a Python one that call the gateway as printed.
    pub snippet: String,
}

/// The demo's client key. It is fixed so that README.md's example works against the demo as
/// written; nothing behind it is real (both providers are simulated in-process).
pub const CLIENT_KEY: &str = "tierwise-demo-key";

/// The prompt each route's tiers get in place of the client's system message, as an operator
/// would tune one per tier (`routes.<r>.prompts.<tier>`); without one, a bare question such as
/// README.md's example would reach the simulated models with no task to do.
const PROMPTS: [(&str, &str); 3] = [
    (
        "classify.txt",
        "Classify the support ticket into one label: {labels}. Answer with the label only.",
    ),
    (
        "extract.txt",
        "Extract the order number and its status from the message as JSON.",
    ),
    (
        "summarize.txt",
        "Summarize the conversation in two sentences.",
    ),
];

/// What to paste into a shell to call the demo at `base`, with the demo's client key.
pub fn snippet(base: &str) -> String {
    let body = r#"{"model": "classification", "messages": [{"role": "user", "content": "My card was charged twice"}]}"#;
    format!(
        "curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {CLIENT_KEY}' -H 'Content-Type: application/json' -d '{body}'\n\
         python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}/v1\", api_key=\"{CLIENT_KEY}\"); print(c.chat.completions.create(model=\"classification\", messages=[{{\"role\": \"user\", \"content\": \"My card was charged twice\"}}]).choices[0].message.content)'"
    )
}

/// What the workload saw, counted as it ran.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    fallbacks: AtomicU64,
    local: AtomicU64,
    failed: AtomicU64,
}

/// One task of the workload: its share of the traffic, and a request for it (to its route).
struct Task {
    weight: u32,
    request: fn(u64) -> (String, Value),
}

const TICKETS: [&str; 6] = [
    "I was charged twice on my last invoice and need a refund",
    "The app shows an error and crashes when I log in",
    "Can you tell me your opening hours over the holidays?",
    "My password reset link times out before I can use it",
    "Why does my payment show as pending since Monday?",
    "Do you ship to Canada, and how long does it take?",
];

fn tasks() -> Vec<Task> {
    vec![
        Task {
            weight: 35,
            request: |n| {
                let ticket = TICKETS[n as usize % TICKETS.len()];
                (
                    "/v1/chat/completions".into(),
                    json!({"model": "classification", "messages": [
                        {"role": "system", "content": "Classify the support ticket into one label: billing, technical or general."},
                        {"role": "user", "content": format!("{ticket} (ticket {n})")},
                    ]}),
                )
            },
        },
        Task {
            weight: 20,
            request: |n| {
                (
                    "/v1/chat/completions".into(),
                    json!({"model": "extraction", "messages": [
                        {"role": "system", "content": "Extract the order number and status as JSON."},
                        {"role": "user", "content": format!("Hi, order #{} is {} and I need it by Friday.", 1000 + n % 900, if n % 3 == 0 { "late" } else { "on its way" })},
                    ]}),
                )
            },
        },
        Task {
            weight: 15,
            request: |n| {
                (
                    "/v1/chat/completions".into(),
                    json!({"model": "summarize", "messages": [
                        {"role": "system", "content": "Summarize the conversation in two sentences."},
                        {"role": "user", "content": format!("Customer {n} writes that the delivery arrived damaged, the box was open, two items were missing, and support had promised a replacement last week that never came; they ask for a refund or a new shipment by express.")},
                    ]}),
                )
            },
        },
        Task {
            weight: 20,
            request: |n| {
                (
                    "/v1/embeddings".into(),
                    json!({"model": "embed", "input": [format!("knowledge base article {n}"), "returns and refunds policy"]}),
                )
            },
        },
        Task {
            weight: 10,
            request: |n| {
                (
                    "/v1/chat/completions".into(),
                    json!({"model": "agent", "messages": [
                        {"role": "user", "content": format!("Where is my order? (conversation {n})")},
                    ], "tools": [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"order": {"type": "string"}}}}}]}),
                )
            },
        },
    ]
}

/// The demo's configuration: every provider and model named as simulated.
fn config_text(
    local: &str,
    api: &str,
    dir: &Path,
    listen: SocketAddr,
    client_key: &str,
    admin_key: &str,
) -> String {
    format!(
        r#"# Written by `tierwise demo`: two simulated providers, nothing real is called.
[server]
listen = "{listen}"
api_keys = ["{client_key}"]
admin_key = "{admin_key}"

[ledger]
url = "sqlite://{db}"
spool = "{spool}"

[providers.simulated-local]
base_url = "{local}"
fixed_monthly_usd = 85.0
health = {{ interval_ms = 500 }}
breaker = {{ failures = 3, cooldown_ms = 1500, max_cooldown_ms = 3000 }}

[providers.simulated-api]
base_url = "{api}"
api_key = "sk-simulated"

[tiers]
local        = {{ provider = "simulated-local", model = "simulated-mistral-7b", context_tokens = 8192, tools = false }}
api_fast     = {{ provider = "simulated-api", model = "simulated-gpt-4o-mini" }}
api_frontier = {{ provider = "simulated-api", model = "simulated-gpt-4o" }}
embed_local  = {{ provider = "simulated-local", model = "simulated-nomic-embed-text" }}
embed_api    = {{ provider = "simulated-api", model = "simulated-text-embedding-3-small" }}

[routes.classification]
kind = "classification"
tiers = ["local", "api_fast"]
baseline = "api_frontier"
output = {{ labels = ["billing", "technical", "general"] }}
prompts = {{ local = "classify.txt", api_fast = "classify.txt" }}
shadow = {{ reference = "api_frontier", sample_rate = 1.0, window = 100, min_samples = 30, on_drift = "demote" }}

[routes.extraction]
kind = "extraction"
tiers = ["local", "api_fast"]
baseline = "api_frontier"
prompts = {{ local = "extract.txt", api_fast = "extract.txt" }}

[routes.summarize]
kind = "summarization"
tiers = ["local", "api_fast"]
baseline = "api_frontier"
prompts = {{ local = "summarize.txt", api_fast = "summarize.txt" }}

[routes.embed]
kind = "embedding"
tiers = ["embed_local", "embed_api"]
baseline = "embed_api"

[routes.agent]
kind = "agentic"
tiers = ["api_frontier"]
profile = {{ quality = "frontier", tool_calling = "critical" }}

# The simulated API models cost what the real ones they stand for cost (USD per million tokens).
[prices.simulated-gpt-4o-mini]
input = 0.15
output = 0.60
[prices.simulated-gpt-4o]
input = 2.50
output = 10.00
[prices.simulated-text-embedding-3-small]
input = 0.02
output = 0.0
"#,
        db = dir.join("demo.db").display(),
        spool = dir.join("demo.spool").display(),
    )
}

/// Runs the workload for `options.duration` against a fresh gateway; returns it still serving.
pub async fn run(options: DemoOptions) -> Result<Demo, DemoError> {
    std::fs::create_dir_all(&options.dir)
        .map_err(|err| DemoError::Dir(options.dir.clone(), err))?;
    for stale in ["demo.db", "demo.db-wal", "demo.db-shm", "demo.spool"] {
        let _ = std::fs::remove_file(options.dir.join(stale));
    }
    let local = Arc::new(Simulated::new(
        "simulated-local",
        Duration::from_millis(40),
        0.96,
        true,
    ));
    let api = Arc::new(Simulated::new(
        "simulated-api",
        Duration::from_millis(120),
        0.99,
        false,
    ));
    let local_url = local.serve().await.map_err(DemoError::Simulator)?;
    let api_url = api.serve().await.map_err(DemoError::Simulator)?;
    let client_key = CLIENT_KEY.to_string();
    for (file, prompt) in PROMPTS {
        let path = options.dir.join(file);
        std::fs::write(&path, prompt).map_err(|err| DemoError::Dir(path, err))?;
    }
    let admin_key = format!("demo-admin-{}", uuid::Uuid::now_v7().simple());
    let text = config_text(
        &local_url,
        &api_url,
        &options.dir,
        options.listen,
        &client_key,
        &admin_key,
    );
    let path = options.dir.join("tierwise-demo.toml");
    std::fs::write(&path, &text).map_err(|err| DemoError::Dir(path.clone(), err))?;
    let config = Config::parse(&text, &path, &|_| None)?;
    let started_ms = crate::quality::watch::now_ms();
    let gateway = Gateway::start(config).await?;
    let base = format!("http://{}", gateway.addr);
    let dashboard = format!("{base}/#key={admin_key}");
    let snippet = snippet(&base);
    eprintln!(
        "tierwise demo: the gateway is at {base}, in front of two SIMULATED providers (simulated-local: a 7B model \
         on your own GPU; simulated-api: a paid API). Nothing real is called and nothing is paid.\n\
         client key: {client_key}\n\
         dashboard (with the admin key): {dashboard}\n\
         configuration: {}\n\
         call it yourself, now or after the workload with --serve:\n{snippet}\n",
        path.display()
    );

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let deadline = started + options.duration;
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for client in 0..options.clients.max(1) {
        let (http, counts, base, key) = (
            http.clone(),
            counts.clone(),
            base.clone(),
            client_key.clone(),
        );
        clients.push(tokio::spawn(async move {
            let tasks = tasks();
            let total: u32 = tasks.iter().map(|t| t.weight).sum();
            let mut n = client as u64 * 1_000_000;
            while Instant::now() < deadline {
                n += 1;
                let mut pick = fastrand::u32(0..total);
                let task = tasks
                    .iter()
                    .find(|t| {
                        let hit = pick < t.weight;
                        pick = pick.saturating_sub(t.weight);
                        hit
                    })
                    .unwrap_or(&tasks[0]);
                let (path, body) = (task.request)(n);
                let sent = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                counts.requests.fetch_add(1, Ordering::Relaxed);
                match sent {
                    Ok(response) if response.status().is_success() => {
                        let header = |name: &str| {
                            response
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        if header("x-tierwise-fallback").is_some() {
                            counts.fallbacks.fetch_add(1, Ordering::Relaxed);
                        }
                        if header("x-tierwise-tier")
                            .is_some_and(|t| t == "local" || t == "embed_local")
                        {
                            counts.local.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = response.bytes().await;
                    }
                    _ => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The script: an outage a third of the way in, a quality drop halfway.
    let total = options.duration.as_secs_f64();
    let mut outage = (false, false);
    let mut dropped = false;
    let mut alerts = 0;
    // On a terminal the progress line rewrites itself; in a log, one line every two seconds.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut next_line = started;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed().as_secs_f64();
        if !outage.0 && elapsed >= total * 0.30 {
            outage.0 = true;
            local.set_down(true);
            eprintln!(
                "{}[{elapsed:4.1}s] simulated-local goes down: its routes fall back to simulated-api",
                if tty { "\n" } else { "" }
            );
        }
        if outage.0 && !outage.1 && elapsed >= total * 0.45 {
            outage.1 = true;
            local.set_down(false);
            eprintln!(
                "{}[{elapsed:4.1}s] simulated-local is back",
                if tty { "\n" } else { "" }
            );
        }
        if !dropped && elapsed >= total * 0.5 {
            dropped = true;
            local.set_accuracy(0.7);
            eprintln!(
                "{}[{elapsed:4.1}s] a model update on simulated-local: its ticket labels drop from 96% to 70% right",
                if tty { "\n" } else { "" }
            );
        }
        alerts = alerting(&http, &base, &admin_key).await.unwrap_or(alerts);
        let requests = counts.requests.load(Ordering::Relaxed).max(1);
        let line = format!(
            "[{elapsed:4.1}s / {total:.0}s] {} requests, {} fell back, {:.0}% served locally, {} failed, quality alerts: {alerts}",
            requests,
            counts.fallbacks.load(Ordering::Relaxed),
            100.0 * counts.local.load(Ordering::Relaxed) as f64 / requests as f64,
            counts.failed.load(Ordering::Relaxed),
        );
        if tty {
            eprint!("\r{line}   ");
        } else if Instant::now() >= next_line {
            eprintln!("{line}");
            next_line += Duration::from_secs(2);
        }
    }
    for client in clients {
        let _ = client.await;
    }
    eprintln!();
    // Give the last shadow checks and ledger batches a moment to land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let config = Config::parse(&text, &path, &|_| None)?;
    let store = Store::connect(&config.ledger.url).await?;
    let window = Window {
        from_ms: started_ms,
        to_ms: crate::quality::watch::now_ms() + 1,
    };
    let report = Report::load(&config, &store, window, None).await?;
    let events = store.quality_events("classification", 10).await?;
    store.close().await;
    let mut out = report.to_table();
    let _ = writeln!(
        out,
        "\nquality (classification, shadow checks against simulated-gpt-4o):"
    );
    if events.is_empty() {
        let _ = writeln!(out, "  no alert");
    }
    for event in events.iter().rev() {
        let _ = writeln!(
            out,
            "  {}: agreement {:.1}% (95% interval {:.1}–{:.1}%) over {} samples",
            event.event.as_str(),
            event.agreement_ppm as f64 / 1e4,
            event.low_ppm as f64 / 1e4,
            event.high_ppm as f64 / 1e4,
            event.samples
        );
    }
    Ok(Demo {
        gateway,
        dashboard,
        report: out,
        snippet,
    })
}

/// How many routes the monitor has alerting now, from the admin API.
async fn alerting(http: &reqwest::Client, base: &str, admin_key: &str) -> Option<usize> {
    let body = http
        .get(format!("{base}/admin/api/quality"))
        .bearer_auth(admin_key)
        .send()
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    let quality: Value = serde_json::from_slice(&body).ok()?;
    Some(
        quality["routes"]
            .as_array()?
            .iter()
            .filter(|r| r["alerting"] == true)
            .count(),
    )
}
