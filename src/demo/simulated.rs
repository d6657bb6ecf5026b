//! The demo's simulated providers: OpenAI-compatible servers in the same process, one standing in
//! for a local model server and one for a paid API, named as simulated wherever they appear. They
//! answer each demo task the way such a model would (a support ticket's label, the fields of an
//! order as JSON, a short summary, an embedding vector, a tool call), with usage counted from the
//! text, after a latency drawn around the tier's typical one. The demo switches the local one off
//! (an outage) and lowers its accuracy (a model update that hurts quality) while traffic runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Value, json};

/// A simulated provider's knobs, changed by the demo's script while it serves.
pub struct Simulated {
    pub name: &'static str,
    /// Median latency of an answer.
    latency: Duration,
    /// Share of support tickets labelled right, in parts per thousand.
    accuracy_permille: AtomicU32,
    /// While set, every call fails with 503, as a crashed server behind a proxy answers.
    down: AtomicBool,
    /// Local models wrap a label in words more often than not.
    wordy: bool,
}

impl Simulated {
    pub fn new(name: &'static str, latency: Duration, accuracy: f64, wordy: bool) -> Simulated {
        Simulated {
            name,
            latency,
            accuracy_permille: AtomicU32::new((accuracy * 1000.0) as u32),
            down: AtomicBool::new(false),
            wordy,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    pub fn set_accuracy(&self, accuracy: f64) {
        self.accuracy_permille
            .store((accuracy * 1000.0) as u32, Ordering::Relaxed);
    }

    /// Serves on a free port of 127.0.0.1 until the runtime ends; returns its base URL.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{addr}/v1"))
    }

    async fn wait(&self, text_len: usize) {
        // Latency around the median, longer for longer prompts, never the same twice.
        let spread = 0.6 + fastrand::f64() * 0.8;
        let length = 1.0 + text_len as f64 / 4000.0;
        tokio::time::sleep(self.latency.mul_f64(spread * length)).await;
    }

    fn unavailable(&self) -> Option<Response> {
        self.down.load(Ordering::Relaxed).then(|| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"message": format!("{} is down (simulated outage)", self.name), "type": "server_error", "param": null, "code": null}})),
            )
                .into_response()
        })
    }
}

async fn models(State(sim): State<Arc<Simulated>>) -> Response {
    if let Some(down) = sim.unavailable() {
        return down;
    }
    Json(json!({"object": "list", "data": []})).into_response()
}

/// The label a support ticket deserves, by what it talks about.
pub fn true_label(ticket: &str) -> &'static str {
    let ticket = ticket.to_lowercase();
    if ["invoice", "charge", "refund", "billing", "payment"]
        .iter()
        .any(|w| ticket.contains(w))
    {
        "billing"
    } else if ["error", "crash", "login", "password", "timeout", "bug"]
        .iter()
        .any(|w| ticket.contains(w))
    {
        "technical"
    } else {
        "general"
    }
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string()
}

fn system_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().find(|m| m["role"] == "system"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_lowercase()
}

/// A stable pseudo-random number in [0, 1) for a text: the same ticket gets the same verdict.
fn unit(text: &str) -> f64 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 10_000) as f64 / 10_000.0
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64 / 4).max(1)
}

async fn chat(State(sim): State<Arc<Simulated>>, Json(body): Json<Value>) -> Response {
    if let Some(down) = sim.unavailable() {
        return down;
    }
    let user = last_user_text(&body);
    let system = system_text(&body);
    let prompt_tokens: u64 = body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|m| tokens(m["content"].as_str().unwrap_or("")) + 3)
                .sum()
        })
        .unwrap_or(0);
    sim.wait(user.len()).await;
    let mut message = json!({"role": "assistant"});
    let content = if system.contains("classify") || system.contains("label") {
        let right = true_label(&user);
        let accuracy = f64::from(sim.accuracy_permille.load(Ordering::Relaxed)) / 1000.0;
        let label = if unit(&user) < accuracy {
            right
        } else if right == "general" {
            "billing"
        } else {
            "general"
        };
        if sim.wordy && unit(&format!("{user}#")) < 0.6 {
            format!("The category is: {label}.")
        } else {
            label.to_string()
        }
    } else if system.contains("json") || system.contains("extract") {
        let order = user
            .split_whitespace()
            .find(|w| w.starts_with('#'))
            .unwrap_or("#0");
        json!({"order": order.trim_start_matches('#'), "status": if user.contains("late") { "delayed" } else { "in_transit" }})
            .to_string()
    } else if body.get("tools").is_some() {
        message["tool_calls"] = json!([{
            "id": "call_sim",
            "type": "function",
            "function": {"name": "lookup_order", "arguments": "{\"order\": \"1042\"}"},
        }]);
        String::new()
    } else {
        let words: Vec<&str> = user.split_whitespace().take(24).collect();
        format!("Summary: {}.", words.join(" "))
    };
    if !content.is_empty() || message.get("tool_calls").is_none() {
        message["content"] = Value::String(content.clone());
    }
    let completion_tokens = tokens(&content).max(1);
    Json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": if message.get("tool_calls").is_some() { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

async fn embeddings(State(sim): State<Arc<Simulated>>, Json(body): Json<Value>) -> Response {
    if let Some(down) = sim.unavailable() {
        return down;
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or("").to_string())
            .collect(),
        _ => Vec::new(),
    };
    sim.wait(inputs.iter().map(String::len).sum::<usize>() / 4)
        .await;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let seed = unit(text);
            let vector: Vec<f64> = (0..16)
                .map(|i| ((seed * 97.0 + i as f64) % 1.0) - 0.5)
                .collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|t| tokens(t)).sum();
    Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response()
}
