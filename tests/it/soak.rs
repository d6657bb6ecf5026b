//! The soak: mixed traffic (plain and streamed chat on two routes, embeddings) from several clients
//! through fakes that fail, stall and cut streams at random, the local fake restarted every few
//! seconds, against the `tierwise` binary. At the end every client got a well-formed answer or an
//! OpenAI-shaped error, the gateway's open files and memory did not grow without bound, and the
//! ledger holds exactly one row per request.
//!
//! `TIERWISE_SOAK_SECONDS` sets its length (20 s by default, the short form `scripts/test` runs);
//! `TIERWISE_SOAK_SEED` replays a run's faults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierwise_fake::{FakeUpstream, Fault};

use crate::proof::{KEYS, exited, serve, signal, with_ledger_in_dir};
use crate::util::*;

/// Clients sending at once.
const CLIENTS: u64 = 8;

fn local_fault(rng: &mut fastrand::Rng) -> Fault {
    let status = |status| Fault::Status {
        status,
        body: None,
        retry_after: None,
    };
    match rng.u32(0..12) {
        0 => status(500),
        1 => status(503),
        2 => status(429),
        3 => Fault::Hang,
        4 => Fault::SlowFirstByte { ms: 2500 },
        5 => Fault::CutMidBody,
        6 => Fault::CutAfterChunks { chunks: 2 },
        7 => Fault::MalformedJson,
        8 => Fault::ErrorMidStream { after: 2 },
        9 => Fault::NoUsage,
        10 => Fault::InvalidUtf8MidStream { after: 1 },
        _ => Fault::None,
    }
}

/// The API tier fails less: most requests the local tier drops still land there.
fn api_fault(rng: &mut fastrand::Rng) -> Fault {
    match rng.u32(0..8) {
        0 => Fault::Status {
            status: 502,
            body: None,
            retry_after: None,
        },
        1 => Fault::CutAfterChunks { chunks: 3 },
        2 => Fault::UsageWithNulls,
        _ => Fault::None,
    }
}

/// Sends one random request; returns its id (when the gateway gave one) and what was wrong with
/// the answer, if anything.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    rng: &mut fastrand::Rng,
) -> (Option<String>, Option<String>) {
    let (path, body, stream) = match rng.u32(0..5) {
        0 => (
            "/v1/embeddings",
            json!({"model": "embed", "input": "soak"}),
            false,
        ),
        1 | 2 => (
            "/v1/chat/completions",
            chat_stream(if rng.bool() {
                "summarize"
            } else {
                "classification"
            }),
            true,
        ),
        _ => (
            "/v1/chat/completions",
            chat(
                if rng.bool() {
                    "summarize"
                } else {
                    "classification"
                },
                "soak",
            ),
            false,
        ),
    };
    let sent = http
        .post(format!("{url}{path}"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => return (None, Some(format!("no answer: {err}"))),
    };
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-tierwise-request-id")
        .map(|id| id.to_str().unwrap().to_string());
    let text = match response.text().await {
        Ok(text) => text,
        Err(err) => return (id, Some(format!("{status}: body cut: {err}"))),
    };
    let wrong = if status != 200 {
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (!(error["error"]["message"].is_string() && error["error"]["type"].is_string()))
            .then(|| format!("{status} not OpenAI-shaped: {text}"))
    } else if stream {
        // Every event whole JSON; the stream ends with [DONE] or with an error event.
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").unwrap_or("not data"))
            .collect();
        let bad = events
            .iter()
            .find(|data| **data != "[DONE]" && serde_json::from_str::<Value>(data).is_err());
        let last = events.last().copied().unwrap_or("");
        let ended = last == "[DONE]" || last.contains("\"error\"");
        match (bad, ended) {
            (Some(bad), _) => Some(format!("stream event not JSON: {bad:?}")),
            (None, false) => Some(format!("stream ended without [DONE] or an error: {text}")),
            _ => None,
        }
    } else {
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (!(answer["choices"].is_array() || answer["data"].is_array()))
            .then(|| format!("200 that is not an answer: {text}"))
    };
    (id, wrong)
}

/// Open files and resident memory of a process, from /proc.
fn fds_and_rss_kb(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_through_random_faults_and_restarts() {
    let seconds: u64 = std::env::var("TIERWISE_SOAK_SECONDS").map_or(20, |s| s.parse().unwrap());
    let seed: u64 = std::env::var("TIERWISE_SOAK_SEED")
        .map_or_else(|_| fastrand::u64(..), |s| s.parse().unwrap());
    eprintln!("soak: {seconds} s, TIERWISE_SOAK_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let local = FakeUpstream::start().await;
    let local_addr: std::net::SocketAddr = local.base_url()[7..]
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    let api = FakeUpstream::start().await;
    let (dir, path) = with_ledger_in_dir(
        "soak",
        TestConfig::two_tier(&local.base_url(), &api.base_url()),
    );
    let (child, url) = serve(&path, &KEYS, &dir.join("stderr.log")).await;
    let pid = child.id();

    let sent = Arc::new(Mutex::new(0usize));
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = |(id, problem): (Option<String>, Option<String>)| {
        *sent.lock().unwrap() += 1;
        if let Some(id) = id {
            *seen.lock().unwrap().entry(id).or_default() += 1;
        }
        if let Some(problem) = problem {
            wrong.lock().unwrap().push(problem);
        }
    };
    // Warm-up: every path that counts tokens itself, on each tier, so that the tokenizers'
    // tables (tens of MB, loaded once on first use) are in memory before it is measured.
    let http = reqwest::Client::new();
    let mut warm = fastrand::Rng::with_seed(seed);
    for (local_fault, api_fault) in [
        (Fault::NoUsage, Fault::None),
        (
            Fault::Status {
                status: 503,
                body: None,
                retry_after: None,
            },
            Fault::NoUsage,
        ),
    ] {
        local.set_fault(local_fault);
        api.set_fault(api_fault);
        for _ in 0..20 {
            record(one_request(&http, &url, &mut warm).await);
        }
    }
    local.set_fault(Fault::None);
    api.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_start, rss_start) = fds_and_rss_kb(pid);

    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, sent, seen, wrong) = (url.clone(), sent.clone(), seen.clone(), wrong.clone());
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(client + 1));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while Instant::now() < until {
                    let (id, problem) = one_request(&http, &url, &mut rng).await;
                    *sent.lock().unwrap() += 1;
                    if let Some(id) = id {
                        *seen.lock().unwrap().entry(id).or_default() += 1;
                    }
                    if let Some(problem) = problem {
                        wrong.lock().unwrap().push(problem);
                    }
                }
            })
        })
        .collect();

    // Chaos: new faults every 300 ms; the local server restarted every 3 s.
    let mut samples = Vec::new();
    let mut local = Some(local);
    let mut tick = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tick += 1;
        if tick.is_multiple_of(10) {
            if let Some(fake) = local.take() {
                fake.stop().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            local = Some(FakeUpstream::start_on(local_addr).await);
        }
        if let Some(fake) = &local {
            fake.set_fault(local_fault(&mut rng));
        }
        api.set_fault(api_fault(&mut rng));
        if tick.is_multiple_of(3) {
            samples.push(fds_and_rss_kb(pid));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    // Idle again: what is open now is what the gateway keeps, not what the traffic held.
    if let Some(fake) = &local {
        fake.set_fault(Fault::None);
    }
    api.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_end, rss_end) = fds_and_rss_kb(pid);
    signal(&child, "-TERM");
    assert!(exited(child).await.success());

    let wrong = std::mem::take(&mut *wrong.lock().unwrap());
    let sent = *sent.lock().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let half = &samples[samples.len() / 2..];
    let fds_late = half.iter().map(|s| s.0).max().unwrap_or(0);
    let rss_late = half.iter().map(|s| s.1).max().unwrap_or(0);
    eprintln!(
        "soak: {sent} requests in {seconds} s; {} with a problem; open files {fds_start} after warm-up, at most {fds_late} in the second half, {fds_end} idle at the end; RSS {rss_start} kB after warm-up, at most {rss_late} kB in the second half, {rss_end} kB at the end",
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(seen.values().all(|n| *n == 1), "request ids are unique");
    assert_eq!(seen.len(), sent, "every request was answered with its id");
    // Connections come and go with the traffic. What stays open at the end is what was open after
    // the (one client) warm-up plus the upstream pools' idle connections, one per client at most
    // for each upstream. Memory settles (allocator caches, pools) rather than grow per request.
    let pooled = 2 * CLIENTS as usize;
    assert!(
        fds_end <= fds_start + pooled + 4,
        "open files grew: {fds_start} to {fds_end}"
    );
    assert!(
        fds_late <= fds_start + pooled + 40,
        "open files grew under load: {samples:?}"
    );
    assert!(
        rss_late <= rss_start * 5 / 4 + 16_384,
        "memory grew from {rss_start} kB: {samples:?}"
    );

    use sqlx::Connection;
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("ledger.db").display()))
            .await
            .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM requests")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.len(), sent, "one row per request");
    for id in &stored {
        assert!(
            seen.contains_key(id),
            "a row for a request no client sent: {id}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
