//! Every Prometheus series tierwise exports, recorded here and nowhere else: finished requests
//! (counted per batch of outcomes, off the request path), the ledger's health, and the providers'
//! breaker states, the quality checks (shadow calls, agreement, alerts), and budgets (spend, limit,
//! alerts). `/metrics` renders the process-wide recorder installed by [`handle`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

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
            // A counter that alerts watch for its first increment is shown at zero from start:
            // until a series exists, an alert on its rate has nothing to see.
            metrics::counter!("tierwise_responses_dropped_total").increment(0);
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

/// A finished request as the metrics read it: its row, and how long its upstream calls took in
/// all (for the time spent in the gateway itself), where known.
pub struct Finished<'a> {
    pub row: &'a RequestRow,
    pub upstream_us: Option<i64>,
}

/// Money since start in picodollars, by series and rendered labels, shown in dollars at each
/// scrape: the metrics crate's counters hold whole numbers, and a counter of whole dollars would
/// hide every cheap call.
static MONEY: Mutex<BTreeMap<(&'static str, String), i128>> = Mutex::new(BTreeMap::new());

/// The money series and their help text, in the order they are rendered.
const MONEY_SERIES: [(&str, &str); 2] = [
    (
        "tierwise_cost_usd_total",
        "What answered client requests cost at their tier's price, in US dollars.",
    ),
    (
        "tierwise_shadow_cost_usd_total",
        "What shadow checks cost, in US dollars.",
    ),
];

fn add_money(series: &'static str, labels: &[(&str, &str)], picodollars: i128) {
    let labels = labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",");
    let mut money = MONEY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *money.entry((series, labels)).or_default() += picodollars;
}

/// Request series for a batch of finished requests, each label set touched once per batch.
pub fn requests_finished(batch: &[Finished<'_>]) {
    let mut requests: HashMap<(&str, &str, u16), u64> = HashMap::new();
    let mut fallbacks: HashMap<(&str, &str, &str, &str), u64> = HashMap::new();
    let mut cost: HashMap<(&str, &str), i128> = HashMap::new();
    let mut tokens: HashMap<(&str, &str, &'static str), u64> = HashMap::new();
    let mut hit_tokens: HashMap<(&str, &'static str), u64> = HashMap::new();
    let mut durations: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut first_bytes: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut overheads: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut contracts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for finished in batch {
        let row = finished.row;
        // Shadow and eval calls are counted by the quality series, not as client requests; a
        // cache hit is a client request, under the tier that filled the cache.
        if !matches!(row.purpose, Purpose::Product | Purpose::CacheHit) {
            continue;
        }
        let route = row.route.as_deref().unwrap_or(crate::ledger::NO_ROUTE);
        let tier = row.tier.as_deref().unwrap_or("-");
        *requests.entry((route, tier, row.status)).or_default() += 1;
        // `local:http_503,api_fast:timeout_total`: each tier passed over, to the one that answered.
        for step in row.fallback.as_deref().unwrap_or("").split(',') {
            if let Some((from, reason)) = step.split_once(':') {
                let to = row.tier.as_deref().unwrap_or("none");
                *fallbacks.entry((route, from, to, reason)).or_default() += 1;
            }
        }
        if let Some(amount) = row.cost_pusd {
            *cost.entry((route, tier)).or_default() += i128::from(amount.0.max(0));
        }
        // `tierwise_tokens_total` counts what an upstream processed; a hit's tokens were served
        // from the cache, by no tier, and are counted apart.
        if row.purpose == Purpose::CacheHit {
            *hit_tokens.entry((route, "in")).or_default() += row.tokens_in;
            *hit_tokens.entry((route, "out")).or_default() += row.tokens_out;
        } else if row.tier.is_some() {
            *tokens.entry((route, tier, "in")).or_default() += row.tokens_in;
            *tokens.entry((route, tier, "out")).or_default() += row.tokens_out;
        }
        durations
            .entry(route)
            .or_default()
            .push(row.latency_us as f64 / 1e6);
        if let Some(ttfb) = row.ttfb_us {
            first_bytes
                .entry(route)
                .or_default()
                .push(ttfb as f64 / 1e6);
        }
        if let Some(upstream) = finished.upstream_us {
            overheads
                .entry(route)
                .or_default()
                .push((row.latency_us - upstream).max(0) as f64 / 1e6);
        }
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
    for (name, samples) in [
        ("tierwise_request_duration_seconds", durations),
        ("tierwise_time_to_first_byte_seconds", first_bytes),
        ("tierwise_gateway_overhead_seconds", overheads),
    ] {
        for (route, seconds) in samples {
            let histogram = metrics::histogram!(name, "route" => route.to_string());
            for value in seconds {
                histogram.record(value);
            }
        }
    }
    for ((route, tier, status), count) in requests {
        metrics::counter!("tierwise_requests_total", "route" => route.to_string(), "tier" => tier.to_string(), "status" => status.to_string())
            .increment(count);
    }
    for ((route, from, to, reason), count) in fallbacks {
        metrics::counter!("tierwise_fallbacks_total", "route" => route.to_string(), "from" => from.to_string(), "to" => to.to_string(), "reason" => reason.to_string())
            .increment(count);
    }
    for ((route, tier, direction), count) in tokens {
        metrics::counter!("tierwise_tokens_total", "route" => route.to_string(), "tier" => tier.to_string(), "direction" => direction)
            .increment(count);
    }
    for ((route, direction), count) in hit_tokens {
        metrics::counter!("tierwise_cache_hit_tokens_total", "route" => route.to_string(), "direction" => direction)
            .increment(count);
    }
    for ((route, tier), amount) in cost {
        add_money(
            "tierwise_cost_usd_total",
            &[("route", route), ("tier", tier)],
            amount,
        );
    }
}

/// The money series in Prometheus' text format, exact to the picodollar.
pub fn render_money() -> String {
    let money = MONEY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut out = String::new();
    for (series, help) in MONEY_SERIES {
        let _ = writeln!(out, "# HELP {series} {help}\n# TYPE {series} counter");
        for ((_, labels), picodollars) in money.iter().filter(|((name, _), _)| *name == series) {
            let _ = writeln!(
                out,
                "{series}{{{labels}}} {}",
                Picodollars::saturating(*picodollars)
            );
        }
    }
    out
}

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// A provider's breaker: `tierwise_provider_breaker_open` 0 closed, 0.5 half-open, 1 open (its
/// healthiest server's state), set at each scrape.
pub fn breaker_state(provider: &str, state: &'static str) {
    metrics::gauge!("tierwise_provider_breaker_open", "provider" => provider.to_string())
        .set(openness(state));
}

/// One server's breaker: `tierwise_server_breaker_open{provider,server}`, set when it changes and
/// at each scrape, and `tierwise_breaker_transitions_total{provider,to}` for each of its changes.
pub fn server_breaker_state(provider: &str, server: &str, state: &'static str, changed: bool) {
    metrics::gauge!("tierwise_server_breaker_open", "provider" => provider.to_string(), "server" => server.to_string())
        .set(openness(state));
    if changed {
        metrics::counter!("tierwise_breaker_transitions_total", "provider" => provider.to_string(), "to" => state)
            .increment(1);
    }
}

fn openness(state: &str) -> f64 {
    match state {
        "closed" => 0.0,
        "half_open" => 0.5,
        _ => 1.0,
    }
}

/// One server's load and calls, set at each scrape: `tierwise_server_in_flight`, and since start
/// `tierwise_server_calls_total` (every call sent to it that has ended: one in flight counts when
/// it ends), `tierwise_server_failures_total` (those
/// that failed through its fault, a stream it broke midway included) and
/// `tierwise_server_unfinished_total` (those that never finished: their client left mid-stream,
/// or they were cut off at shutdown). What is left of the calls it answered: the three figures
/// are the servers table's (`/admin/api/providers`), read from the same counters.
pub fn server_load(provider: &str, server: &str, load: ServerLoad) {
    let labels = [
        ("provider", provider.to_string()),
        ("server", server.to_string()),
    ];
    metrics::gauge!("tierwise_server_in_flight", &labels).set(load.in_flight as f64);
    metrics::counter!("tierwise_server_calls_total", &labels).absolute(load.calls);
    metrics::counter!("tierwise_server_failures_total", &labels).absolute(load.failed);
    metrics::counter!("tierwise_server_unfinished_total", &labels).absolute(load.unfinished);
}

/// One server's figures as the servers table shows them.
#[derive(Debug, Clone, Copy)]
pub struct ServerLoad {
    pub in_flight: usize,
    pub calls: u64,
    pub failed: u64,
    pub unfinished: u64,
}

/// Calls to a provider in flight now, where it has a cap (`max_in_flight`).
pub fn provider_in_flight(provider: &str, in_flight: usize) {
    metrics::gauge!("tierwise_provider_in_flight", "provider" => provider.to_string())
        .set(in_flight as f64);
}

/// Whether the shared rate-limit store (`limits.store`) answers: 1, or 0 while limits are enforced
/// per replica from memory.
pub fn limits_store_up(up: bool) {
    metrics::gauge!("tierwise_limits_store_up").set(if up { 1.0 } else { 0.0 });
}

/// A token settlement the shared store's queue had no room for (the minute keeps what was
/// reserved).
pub fn limits_settlement_dropped() {
    metrics::counter!("tierwise_limits_settlements_dropped_total").increment(1);
}

/// A request refused by a rate limit: `scope` `key` or `route`, `name` the key's or route's name,
/// `measure` `requests` or `tokens`.
pub fn rate_limited(scope: &'static str, name: &str, measure: &'static str) {
    metrics::counter!("tierwise_rate_limited_total", "scope" => scope, "name" => name.to_string(), "measure" => measure)
        .increment(1);
}

/// A sample the shadow check did not take: `queue_full`, `busy` (the route's shadow calls are all
/// in flight), `over_budget` (the day's shadow budget), `budget_spent` (a monthly budget),
/// `provider_unavailable`, `stream_tool_calls` (a streamed answer of a route scored by its tool
/// calls, which the relay does not keep).
pub fn shadow_skipped(route: &str, reason: &'static str) {
    metrics::counter!("tierwise_shadow_skipped_total", "route" => route.to_string(), "reason" => reason)
        .increment(1);
}

/// One shadow check done: `scored`, `unscorable` (the reference gave nothing to compare against)
/// or `failed` (a call failed); and what its calls cost.
pub fn shadow_checked(route: &str, outcome: &'static str, cost: Picodollars) {
    metrics::counter!("tierwise_shadow_checks_total", "route" => route.to_string(), "outcome" => outcome)
        .increment(1);
    add_money(
        "tierwise_shadow_cost_usd_total",
        &[("route", route)],
        i128::from(cost.0.max(0)),
    );
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

/// A budget as it stands this month, at a scrape: what it allows, what was spent (calls and
/// corrections) and what requests in flight hold of it, in US dollars.
pub fn budget(
    scope: &'static str,
    name: &str,
    spent: Picodollars,
    reserved: Picodollars,
    limit_pusd: i64,
) {
    let labels = [("scope", scope.to_string()), ("name", name.to_string())];
    metrics::gauge!("tierwise_budget_limit_usd", &labels).set(Picodollars(limit_pusd).as_usd_f64());
    metrics::gauge!("tierwise_budget_spent_usd", &labels).set(spent.as_usd_f64());
    metrics::gauge!("tierwise_budget_reserved_usd", &labels).set(reserved.as_usd_f64());
}

/// A budget alert announced: `level` is `alert_at` or `spent`.
pub fn budget_alert(scope: &'static str, name: &str, level: &'static str) {
    metrics::counter!("tierwise_budget_alerts_total", "scope" => scope, "name" => name.to_string(), "level" => level)
        .increment(1);
}

/// What a request's route's response cache did for it, in the word `x-tierwise-cache` says:
/// `hit`, `miss` (read, nothing there) or `bypass` (not read: a route without a cache, a
/// sampling request, the client's `no-cache`); see [`crate::cache::Lookup::word`].
pub fn cache_lookup(route: &str, result: &'static str) {
    metrics::counter!("tierwise_cache_lookups_total", "route" => route.to_string(), "result" => result)
        .increment(1);
}

/// What this process's response cache holds.
pub fn cache_size(bytes: u64, entries: usize) {
    metrics::gauge!("tierwise_cache_bytes").set(bytes as f64);
    metrics::gauge!("tierwise_cache_entries").set(entries as f64);
}

/// Whether the shared cache store (`cache.store`) answers: 1, or 0 while every lookup is a miss.
pub fn cache_store_up(up: bool) {
    metrics::gauge!("tierwise_cache_store_up").set(if up { 1.0 } else { 0.0 });
}

/// Spans the trace exporter dropped: `queue_full` (finished requests came faster than the
/// collector took them) or `export_failed` (the collector refused the batch, was unreachable, or
/// did not answer in time). Requests are never held up for a trace.
pub fn trace_spans_dropped(spans: usize, reason: &'static str) {
    metrics::counter!("tierwise_trace_spans_dropped_total", "reason" => reason)
        .increment(spans as u64);
}

/// Spans the collector took.
pub fn trace_spans_exported(spans: usize) {
    metrics::counter!("tierwise_trace_spans_exported_total").increment(spans as u64);
}
