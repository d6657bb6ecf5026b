//! Every Prometheus series tierwise exports, recorded here and nowhere else: finished requests
//! (counted per batch of outcomes, off the request path), the ledger's health, and the providers'
//! breaker states, and the quality checks (shadow calls, agreement, alerts). `/metrics` renders the process-wide recorder installed by [`handle`].

use std::collections::HashMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::{BreakerState, ProviderStatus};
use crate::ledger::{Picodollars, Purpose, RequestRow};

const UPKEEP: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder; installed once, so several gateways in one test process
/// share it. Histogram samples pile up in the recorder until upkeep folds them in; a thread does
/// that every few seconds, or memory grows with every request (it did: 20 bytes a request in the
/// five-minute soak, docs/benchmarks.md) whenever nobody scrapes `/metrics`.
pub fn handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only tierwise's own"
                );
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("tierwise-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(
                    "cannot start metrics upkeep: {err}; latency histograms will grow until /metrics is scraped"
                );
            }
            handle
        })
        .clone()
}

/// Request series for a batch of finished requests, each label set touched once per batch.
pub fn requests_finished(batch: &[&RequestRow]) {
    let mut requests: HashMap<(&str, &str, u16), u64> = HashMap::new();
    let mut fallbacks: HashMap<&str, u64> = HashMap::new();
    let mut cost: HashMap<(&str, &str), u64> = HashMap::new();
    let mut durations: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut contracts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for row in batch {
        // Shadow and eval calls are counted by the quality series, not as client requests.
        if row.purpose != Purpose::Product {
            continue;
        }
        let route = row.route.as_deref().unwrap_or("-");
        let tier = row.tier.as_deref().unwrap_or("-");
        *requests.entry((route, tier, row.status)).or_default() += 1;
        if row.fallback.is_some() {
            *fallbacks.entry(route).or_default() += 1;
        }
        if let Some(amount) = row.cost_pusd {
            *cost.entry((route, tier)).or_default() += amount.0.max(0) as u64;
        }
        durations
            .entry(route)
            .or_default()
            .push(row.latency_us as f64 / 1e6);
        if let Some(outcome) = row.contract.as_deref() {
            let model = row.model.as_deref().unwrap_or("-");
            *contracts.entry((route, model, outcome)).or_default() += 1;
        }
    }
    // How often each model's answers met the label contract as they came, needed a label pulled
    // out of a longer answer, or held none: the rewrites a smaller model costs, beside agreement.
    for ((route, model, outcome), count) in contracts {
        metrics::counter!("tierwise_contract_answers_total", "route" => route.to_string(), "model" => model.to_string(), "outcome" => outcome.to_string())
            .increment(count);
    }
    for (route, seconds) in durations {
        let histogram =
            metrics::histogram!("tierwise_request_duration_seconds", "route" => route.to_string());
        for value in seconds {
            histogram.record(value);
        }
    }
    for ((route, tier, status), count) in requests {
        metrics::counter!("tierwise_requests_total", "route" => route.to_string(), "tier" => tier.to_string(), "status" => status.to_string())
            .increment(count);
    }
    for (route, count) in fallbacks {
        metrics::counter!("tierwise_fallbacks_total", "route" => route.to_string())
            .increment(count);
    }
    for ((route, tier), amount) in cost {
        metrics::counter!("tierwise_cost_picodollars_total", "route" => route.to_string(), "tier" => tier.to_string())
            .increment(amount);
    }
}

pub fn ledger_queue_depth(depth: usize) {
    metrics::gauge!("tierwise_ledger_queue_depth").set(depth as f64);
}

pub fn ledger_written(records: usize) {
    metrics::counter!("tierwise_ledger_records_written_total").increment(records as u64);
}

/// Whether the ledger is spooling (its database away), and how many records wait in the spool.
pub fn ledger_spool(degraded: bool, records: u64) {
    metrics::gauge!("tierwise_ledger_degraded").set(if degraded { 1.0 } else { 0.0 });
    metrics::gauge!("tierwise_ledger_spooled_records").set(records as f64);
}

pub fn ledger_dropped(records: usize) {
    metrics::counter!("tierwise_ledger_records_dropped_total").increment(records as u64);
}

/// Records the database refused for their content and set aside beside the spool, since start.
pub fn ledger_refused_total(records: u64) {
    metrics::counter!("tierwise_ledger_records_refused_total").absolute(records);
}

pub fn ledger_write_failed() {
    metrics::counter!("tierwise_ledger_write_errors_total").increment(1);
}

/// 0 closed, 0.5 half-open, 1 open, per provider.
pub fn breaker_states(statuses: &[ProviderStatus]) {
    for status in statuses {
        let open = match status.breaker.state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 0.5,
            BreakerState::Open => 1.0,
        };
        metrics::gauge!("tierwise_provider_breaker_open", "provider" => status.name.clone())
            .set(open);
    }
}

/// A sample the shadow check did not take: `queue_full`, `busy` (the route's shadow calls are all
/// in flight), `over_budget`, `provider_unavailable`.
pub fn shadow_skipped(route: &str, reason: &'static str) {
    metrics::counter!("tierwise_shadow_skipped_total", "route" => route.to_string(), "reason" => reason)
        .increment(1);
}

/// One shadow check done: `scored`, `unscorable` (the reference gave nothing to compare against)
/// or `failed` (a call failed); and what its calls cost.
pub fn shadow_checked(route: &str, outcome: &'static str, cost: Picodollars) {
    metrics::counter!("tierwise_shadow_checks_total", "route" => route.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::counter!("tierwise_shadow_cost_picodollars_total", "route" => route.to_string())
        .increment(cost.0.max(0) as u64);
}

/// A route's monitor as it stands: agreement with its 95% interval `(low, high)` over `samples`,
/// and whether it is alerting and its candidate demoted.
pub struct QualityState<'a> {
    pub route: &'a str,
    pub model: &'a str,
    pub agreement: f64,
    pub interval: (f64, f64),
    pub samples: u64,
    pub alerting: bool,
    pub demoted: bool,
}

pub fn quality(state: &QualityState<'_>) {
    let labels = [
        ("route", state.route.to_string()),
        ("model", state.model.to_string()),
    ];
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!("tierwise_quality_agreement", &labels).set(state.agreement);
    metrics::gauge!("tierwise_quality_agreement_low", &labels).set(state.interval.0);
    metrics::gauge!("tierwise_quality_agreement_high", &labels).set(state.interval.1);
    metrics::gauge!("tierwise_quality_samples", &labels).set(state.samples as f64);
    metrics::gauge!("tierwise_quality_alert", &labels).set(flag(state.alerting));
    metrics::gauge!("tierwise_quality_demoted", &labels).set(flag(state.demoted));
}

/// An alert episode began.
pub fn quality_alert_fired(route: &str, model: &str) {
    metrics::counter!("tierwise_quality_alerts_total", "route" => route.to_string(), "model" => model.to_string())
        .increment(1);
}
