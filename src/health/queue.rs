//! A server's own word on its load: vLLM's Prometheus metrics (`GET /metrics` at the host root),
//! read on the probe's schedule by a task of its own, never on the request path. The pick
//! ([`super::pool`]) adds what a server has queued to the calls this gateway has in flight on it:
//! the queue holds other clients' calls and other gateway replicas', which no in-flight count
//! sees, and each one queued is a whole call that starts before ours.
//!
//! What is read, from the current vLLM (V1 engine, 0.10 and later) and the older names:
//! `vllm:num_requests_waiting` (the queue) and `vllm:kv_cache_usage_perc`, else the deprecated
//! `vllm:gpu_cache_usage_perc` (0 to 1). Each is one gauge per engine, labelled
//! `{engine="0",model_name="…"}` (older versions: `model_name` only): queues are summed over the
//! engines of a data-parallel server, cache usage is the fullest engine's. A KV cache near full
//! counts as load although nothing waits yet: vLLM then preempts running calls and the next one
//! queues, so from [`KV_FULL_FROM`] up to full it counts as up to [`KV_FULL_LOAD`] calls more.
//!
//! A server that serves no metrics (404, 405 or 501: Ollama, llama.cpp without `--metrics`, a
//! hosted API) is asked again only every [`NOT_SERVED_REST`]. One that answers garbage, slowly or
//! not at all has no reading, so the pick falls back to its in-flight count: these reads never
//! touch the breaker, which the probe and the calls feed. A reading expires after
//! [`READING_LIFETIME_INTERVALS`] intervals, so a reader that stopped being answered leaves no old
//! queue behind.
//!
//! The parser is a few lines written here rather than a Prometheus text crate: the page of a vLLM
//! server is mostly histograms (tens to hundreds of kilobytes), of which three gauges' lines are
//! wanted; the crate that parses the text format (`prometheus-parse`) builds every sample of the
//! page with a regex per line and brings chrono and regex for it, while the lines wanted here are
//! `name{labels} value`, found by their name at the start of a line, the value the last word.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::ServerHealth;
use crate::config::ProbePolicy;
use crate::upstream::{ServerMetrics, Upstreams};

/// The queue is read this many probe intervals long at most: a reader that has not been answered
/// since leaves the server to its in-flight count.
pub const READING_LIFETIME_INTERVALS: u32 = 3;
/// How long a server that answered 404 to `/metrics` is left alone before it is asked again (a
/// server replaced by one that has metrics is found within it).
pub const NOT_SERVED_REST: Duration = Duration::from_secs(600);
/// KV-cache usage from which a server counts as loaded beyond its queue.
pub const KV_FULL_FROM: f64 = 0.9;
/// The calls a full KV cache counts as, reached linearly from [`KV_FULL_FROM`].
pub const KV_FULL_LOAD: f64 = 8.0;
/// The queue read from one server is taken up to this many calls: a server answering absurd
/// numbers is the most loaded, not an overflow.
const MAX_QUEUED: f64 = 1_000_000.0;

/// The gauges one `/metrics` page gave.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct QueueDepth {
    /// `vllm:num_requests_waiting`, summed over engines.
    pub waiting: f64,
    /// `vllm:num_requests_running`, summed over engines; shown, not used by the pick (it counts
    /// this gateway's own calls, which the in-flight count already has, fresher).
    pub running: Option<f64>,
    /// KV-cache usage, 0 to 1, the fullest engine's.
    pub kv_cache_usage: Option<f64>,
}

impl QueueDepth {
    /// vLLM's gauges in a Prometheus text page, or `None` when the page has no queue gauge (it is
    /// not vLLM's, or not Prometheus text at all).
    pub fn parse(page: &[u8]) -> Option<QueueDepth> {
        let page = std::str::from_utf8(page).ok()?;
        let (mut waiting, mut running, mut kv, mut kv_old): (
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
        ) = (None, None, None, None);
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("vllm:") else {
                continue;
            };
            let (name, value) = match rest.find(['{', ' ']) {
                Some(at) => (&rest[..at], sample_value(&rest[at..])),
                None => continue,
            };
            let slot = match name {
                "num_requests_waiting" => &mut waiting,
                "num_requests_running" => &mut running,
                "kv_cache_usage_perc" => &mut kv,
                "gpu_cache_usage_perc" => &mut kv_old,
                _ => continue,
            };
            // +Inf is a server saying it is past counting: the most loaded, not idle.
            let value = value.map(|v| if v == f64::INFINITY { MAX_QUEUED } else { v });
            let Some(value) = value.filter(|v| v.is_finite() && *v >= 0.0) else {
                continue;
            };
            *slot = Some(match *slot {
                Some(so_far) if name.ends_with("_perc") => so_far.max(value),
                Some(so_far) => so_far + value,
                None => value,
            });
        }
        Some(QueueDepth {
            waiting: waiting?.min(MAX_QUEUED),
            running: running.map(|r| r.min(MAX_QUEUED)),
            kv_cache_usage: kv.or(kv_old).map(|usage| usage.min(1.0)),
        })
    }

    /// The calls this reading counts as beyond the gateway's own in flight, in thousandths.
    fn extra_milli(&self) -> u32 {
        let kv = self.kv_cache_usage.unwrap_or(0.0);
        let kv_load = if kv > KV_FULL_FROM {
            (kv - KV_FULL_FROM) / (1.0 - KV_FULL_FROM) * KV_FULL_LOAD
        } else {
            0.0
        };
        ((self.waiting + kv_load) * 1000.0).round() as u32
    }
}

/// The value of one sample line after its name: `{labels} value [timestamp]` or ` value`.
fn sample_value(after_name: &str) -> Option<f64> {
    let values = match after_name.strip_prefix('{') {
        // A label value may hold `}` inside quotes: the last `}` ends the labels.
        Some(labelled) => &labelled[labelled.rfind('}')? + 1..],
        None => after_name,
    };
    values.split_whitespace().next()?.parse().ok()
}

/// The last reading of one server, read by the pick with two atomic loads.
pub struct QueueReading {
    /// The calls it counts as, in thousandths; 0 without a reading.
    extra_milli: AtomicU32,
    /// Until when (milliseconds after `epoch`) it holds; 0 without a reading.
    until_ms: AtomicU64,
    /// The last reading whole, for `/admin/api/providers`.
    last: std::sync::Mutex<Option<QueueDepth>>,
    epoch: Instant,
}

impl Default for QueueReading {
    fn default() -> Self {
        QueueReading {
            extra_milli: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            last: std::sync::Mutex::new(None),
            epoch: Instant::now(),
        }
    }
}

impl QueueReading {
    /// The calls the server's own queue counts as now, in thousandths. Only a server with a
    /// reading costs a clock read.
    pub fn extra_milli(&self) -> u64 {
        let extra = self.extra_milli.load(Ordering::Relaxed);
        if extra == 0 {
            return 0;
        }
        let until = self.until_ms.load(Ordering::Relaxed);
        if (self.epoch.elapsed().as_millis() as u64) < until {
            u64::from(extra)
        } else {
            0
        }
    }

    fn set(&self, depth: QueueDepth, lifetime: Duration) {
        let until = self.epoch.elapsed() + lifetime;
        self.until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        self.extra_milli
            .store(depth.extra_milli(), Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(depth);
        }
    }

    fn clear(&self) {
        self.extra_milli.store(0, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }

    /// The reading in force, as the admin API shows it.
    pub fn current(&self) -> Option<QueueDepth> {
        let until = self.until_ms.load(Ordering::Relaxed);
        if self.epoch.elapsed().as_millis() as u64 >= until {
            return None;
        }
        self.last.lock().ok().and_then(|last| *last)
    }
}

/// Reads `health`'s server's queue every probe interval until the gateway stops.
pub async fn read_loop(health: Arc<ServerHealth>, upstreams: Arc<Upstreams>, policy: ProbePolicy) {
    let (provider, server) = (&health.provider.name, &health.server.name);
    let lifetime = policy.interval * READING_LIFETIME_INTERVALS;
    let mut ticker = tokio::time::interval(policy.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match upstreams
            .server_metrics(&health.provider, health.index, policy.timeout)
            .await
        {
            ServerMetrics::Page(page) => match QueueDepth::parse(&page) {
                Some(depth) => health.queue.set(depth, lifetime),
                None => {
                    tracing::debug!(provider = %provider, server = %server, "its /metrics has no vllm:num_requests_waiting; its load is its calls in flight");
                    health.queue.clear();
                }
            },
            ServerMetrics::NotServed => {
                tracing::info!(provider = %provider, server = %server, rest_s = NOT_SERVED_REST.as_secs(), "serves no /metrics: its load is its calls in flight; asked again after the rest");
                health.queue.clear();
                tokio::time::sleep(NOT_SERVED_REST).await;
                ticker.reset();
            }
            ServerMetrics::Failed(reason) => {
                tracing::debug!(provider = %provider, server = %server, "reading /metrics failed: {reason}");
                health.queue.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_gauges_summing_queues_over_engines_and_skipping_the_rest() {
        let page = b"# HELP vllm:num_requests_waiting Number of requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 4.0\n\
            vllm:num_requests_waiting_extra_thing 99\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 12.0\n\
            vllm:gpu_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.2\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"we}ird\"} 0.95\n\
            vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.5\n\
            vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 7.0\n";
        let depth = QueueDepth::parse(page).unwrap();
        assert_eq!(depth.waiting, 7.0);
        assert_eq!(depth.running, Some(12.0));
        // The current name wins over the deprecated one, the fullest engine counts.
        assert_eq!(depth.kv_cache_usage, Some(0.95));
        // 7 waiting, and a cache half-way from 0.9 to full: 4 calls more.
        assert_eq!(depth.extra_milli(), 11_000);
    }

    #[test]
    fn older_vllm_without_the_engine_label_and_its_deprecated_cache_name() {
        let page = b"vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 1.0\n";
        let depth = QueueDepth::parse(page).unwrap();
        assert_eq!((depth.waiting, depth.kv_cache_usage), (2.0, Some(1.0)));
        assert_eq!(depth.extra_milli(), 10_000);
    }

    #[test]
    fn a_page_without_the_queue_or_with_garbage_values_gives_nothing_absurd() {
        assert_eq!(QueueDepth::parse(b"<html>not metrics</html>"), None);
        assert_eq!(QueueDepth::parse(&[0xff, 0xfe, 0x00]), None);
        assert_eq!(
            QueueDepth::parse(b"vllm:num_requests_running 3\n"),
            None,
            "no queue gauge, no reading"
        );
        let depth = QueueDepth::parse(
            b"vllm:num_requests_waiting NaN\nvllm:num_requests_waiting -4\nvllm:num_requests_waiting{x=\"1\"} 1e300\nvllm:num_requests_waiting{\n",
        )
        .unwrap();
        assert_eq!(depth.waiting, MAX_QUEUED);
        assert!(depth.extra_milli() > 0);
        let depth = QueueDepth::parse(b"vllm:num_requests_waiting +Inf\n").unwrap();
        assert_eq!(
            depth.waiting, MAX_QUEUED,
            "+Inf is the most loaded, not idle"
        );
    }

    #[test]
    fn a_reading_expires() {
        let reading = QueueReading::default();
        let depth = QueueDepth::parse(b"vllm:num_requests_waiting 5\n").unwrap();
        reading.set(depth, Duration::from_secs(60));
        assert_eq!(reading.extra_milli(), 5000);
        assert!(reading.current().is_some());
        reading.set(depth, Duration::ZERO);
        assert_eq!(reading.extra_milli(), 0);
        assert_eq!(reading.current(), None);
    }
}
