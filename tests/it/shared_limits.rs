//! Rate limits shared by replicas through a real Redis (`[limits] store`), started by each test
//! on a free port and killed when the test ends: two gateways enforce one limit between them,
//! and a Redis that dies, or hangs, never fails a request.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tierwise::config::file::{spanned, text};
use tierwise_fake::FakeUpstream;

use crate::rate_limits::{key, post_as};
use crate::util::*;

/// A redis-server of the test's own, killed when dropped.
pub(crate) struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let redis = Redis { child, port };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(api: &FakeUpstream, store: &str, rpm: u64) -> TestGateway {
    let store = store.to_string();
    let config = TestConfig::two_tier(&api.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            key(c, "shared_job", Some(rpm), None);
            c.0.limits.store = Some(text(store));
            c.0.limits.store_timeout_ms = Some(spanned(100));
        });
    TestGateway::start(&config).await
}

async fn readyz(gw: &TestGateway) -> Value {
    Answer::of(gw.get("/readyz").await).await.body
}

/// Waits until `/readyz` says the limits store is `status`.
async fn wait_for_store(gw: &TestGateway, status: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = readyz(gw).await;
        if ready["limits_store"] == status {
            return;
        }
        assert!(Instant::now() < until, "limits store not {status}: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit_and_keep_serving_when_it_dies() {
    let redis = Redis::start();
    let api = FakeUpstream::start().await;
    let a = replica(&api, &redis.url(), 20).await;
    let b = replica(&api, &redis.url(), 20).await;
    wait_for_store(&a, "shared").await;
    wait_for_store(&b, "shared").await;
    let ask = chat("classification", "x");
    // 40 requests, alternating: the two replicas admit 20 between them, not 20 each.
    let mut admitted = [0, 0];
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let answer = post_as(gw, "shared_job", &ask).await;
        match answer.status {
            200 => admitted[i % 2] += 1,
            429 => {
                answer.error(429, Some("rate_limit_exceeded"));
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    eprintln!("admitted by replica: {admitted:?}");
    assert_eq!(admitted[0] + admitted[1], 20, "{admitted:?}");
    let last = post_as(&b, "shared_job", &ask).await;
    assert_eq!(
        last.header("x-ratelimit-remaining-requests"),
        Some("0"),
        "the count both replicas share"
    );

    // Redis dies: neither replica fails a request for it, each judges from its own memory.
    drop(redis);
    for gw in [&a, &b] {
        let started = Instant::now();
        let answer = post_as(gw, "shared_job", &ask).await;
        assert!(
            matches!(answer.status, 200 | 429),
            "{}: {}",
            answer.status,
            answer.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        wait_for_store(gw, "down").await;
    }
    // Each replica has admitted about 10 in its memory: it serves its own remaining ~10.
    for gw in [&a, &b] {
        let mut served = 0;
        for _ in 0..15 {
            let answer = post_as(gw, "shared_job", &ask).await;
            assert!(matches!(answer.status, 200 | 429), "{}", answer.text);
            served += usize::from(answer.status == 200);
        }
        assert!(served >= 1, "a replica kept serving from memory");
    }
    let metrics = a.metrics().await;
    assert!(metrics.contains("tierwise_limits_store_up 0"), "{metrics}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_holds_no_request_longer_than_its_timeout() {
    // Accepts connections and says nothing, as a hung Redis does.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(64) {
            open.push(stream);
        }
    });
    let api = FakeUpstream::start().await;
    let gw = replica(&api, &format!("redis://127.0.0.1:{port}"), 1000).await;
    let ask = chat("classification", "x");
    for _ in 0..5 {
        let started = Instant::now();
        let answer = post_as(&gw, "shared_job", &ask).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(readyz(&gw).await["limits_store"], "down");
    gw.shutdown().await;
    drop(held);
}
