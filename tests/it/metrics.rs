//! `/metrics` after known traffic: every series Prometheus users expect, with the values that
//! traffic must give — requests, tokens, dollars to the picodollar, fallbacks by from/to/reason,
//! latency histograms (including the time spent in the gateway itself), breaker state set when it
//! changes — and no unbounded label values. The recorder is process-wide, so this test's routes and
//! provider are its own.

use tierwise::config::TaskKind;
use tierwise::config::file::{RawProvider, RawRouteCache, RawTier, text};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::{Answer, TestConfig, TestGateway, chat};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic_carry_the_values_it_gives() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut provider = RawProvider::new(local.base_url());
            provider.breaker.failures = Some(tierwise::config::file::spanned(2));
            provider.health.enabled = Some(false);
            c.0.providers.insert(text("metrics_gpu"), provider);
            c.0.tiers.insert(
                text("metrics_local"),
                RawTier::new("metrics_gpu", "mistral-7b"),
            );
            c.add_route(
                "metrics_route",
                TaskKind::Chat,
                &["metrics_local", "api_fast"],
            );
            c.add_route("metrics_cached", TaskKind::Chat, &["api_fast"])
                .cache = Some(RawRouteCache {
                ttl: text("1h"),
                scope: None,
                nondeterministic: None,
            });
        });
    let gw = TestGateway::start(&config).await;
    // Three answered locally, then two the local server refuses with 503: they fall back to
    // api_fast, and the second failure opens the provider's breaker.
    for i in 0..3 {
        let answer = Answer::of(
            gw.post(
                "/v1/chat/completions",
                &chat("metrics_route", &format!("q{i}")),
            )
            .await,
        )
        .await;
        assert_eq!(answer.header("x-tierwise-tier"), Some("metrics_local"));
        assert_eq!(answer.header("x-tierwise-cache"), Some("bypass"));
    }
    local.set_fault(Fault::Status {
        status: 503,
        body: None,
        retry_after: None,
    });
    for i in 0..2 {
        let answer = Answer::of(
            gw.post(
                "/v1/chat/completions",
                &chat("metrics_route", &format!("f{i}")),
            )
            .await,
        )
        .await;
        assert_eq!(answer.header("x-tierwise-tier"), Some("api_fast"));
    }
    // The same question twice on a route that caches: one call upstream, one hit. Every answer
    // says what the cache did in one word, the one the lookups' metric counts.
    for expected in ["miss", "hit"] {
        let answer = Answer::of(
            gw.post("/v1/chat/completions", &chat("metrics_cached", "cached?"))
                .await,
        )
        .await;
        assert_eq!(answer.header("x-tierwise-cache"), Some(expected));
    }
    // gpt-4o-mini: 20 × $0.15 + 5 × $0.60 per million = $0.000006 a call, exactly. The fake
    // reports 20 prompt and 5 answer tokens a call.
    let expected = [
        "tierwise_requests_total{route=\"metrics_route\",tier=\"api_fast\",status=\"200\"} 2",
        "tierwise_requests_total{route=\"metrics_route\",tier=\"metrics_local\",status=\"200\"} 3",
        "tierwise_tokens_total{route=\"metrics_route\",tier=\"metrics_local\",direction=\"in\"} 60",
        "tierwise_tokens_total{route=\"metrics_route\",tier=\"metrics_local\",direction=\"out\"} 15",
        "tierwise_tokens_total{route=\"metrics_route\",tier=\"api_fast\",direction=\"in\"} 40",
        // The hit's tokens were served by no upstream: counted apart, not as the tier's.
        "tierwise_tokens_total{route=\"metrics_cached\",tier=\"api_fast\",direction=\"in\"} 20",
        "tierwise_cache_hit_tokens_total{route=\"metrics_cached\",direction=\"in\"} 20",
        "tierwise_cache_hit_tokens_total{route=\"metrics_cached\",direction=\"out\"} 5",
        "tierwise_cache_lookups_total{route=\"metrics_cached\",result=\"miss\"} 1",
        "tierwise_cache_lookups_total{route=\"metrics_cached\",result=\"hit\"} 1",
        // A route without a cache: each of its answers said `bypass`.
        "tierwise_cache_lookups_total{route=\"metrics_route\",result=\"bypass\"} 5",
        "tierwise_fallbacks_total{route=\"metrics_route\",from=\"metrics_local\",to=\"api_fast\",reason=\"http_503\"} 2",
        "# TYPE tierwise_cost_usd_total counter",
        "tierwise_cost_usd_total{route=\"metrics_route\",tier=\"api_fast\"} 0.000012",
        "tierwise_request_duration_seconds_count{route=\"metrics_route\"} 5",
        "tierwise_time_to_first_byte_seconds_count{route=\"metrics_route\"} 5",
        "tierwise_gateway_overhead_seconds_count{route=\"metrics_route\"} 5",
        // Set when the breaker opened, before any scrape asked.
        "tierwise_breaker_transitions_total{provider=\"metrics_gpu\",to=\"open\"} 1",
        "tierwise_provider_breaker_open{provider=\"metrics_gpu\"} 1",
    ];
    // Metrics are counted once the writer has the batch, one series after another: wait for all
    // of them (a scrape between two series of one batch once saw the requests but not the tokens).
    let text = gw
        .wait_for_metrics(|m| expected.iter().all(|line| m.contains(line)))
        .await;

    // The time in the gateway itself is a small part of each request's latency.
    let sum = |name: &str| -> f64 {
        let prefix = format!("{name}_sum{{route=\"metrics_route\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}"))
            .parse()
            .unwrap()
    };
    assert!(
        sum("tierwise_gateway_overhead_seconds") < sum("tierwise_request_duration_seconds"),
        "{text}"
    );
    // Bounded labels: no request id (a UUID) and no prompt text in any series.
    let uuid_like = text
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .any(|word| word.len() == 36 && word.matches('-').count() == 4);
    assert!(!uuid_like, "a request id in a label:\n{text}");
    assert!(
        !text.contains("q0") && !text.contains("f1"),
        "prompt text in a label"
    );
    gw.shutdown().await;
}

/// The Grafana dashboard and the Prometheus alert rules in `examples/` name only series the gateway
/// exports (every series is recorded in `src/metrics.rs`), and the rules file holds the alerts the
/// issue asks for (drift, provider down, ledger degraded).
#[test]
fn the_example_dashboard_and_alert_rules_name_only_exported_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let exported = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        source.contains(&format!("\"{base}\""))
    };
    for file in [
        "examples/grafana/tierwise-dashboard.json",
        "examples/prometheus/tierwise-alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("tierwise_"))
            .collect();
        assert!(names.len() >= 8, "{file}: {names:?}");
        for name in names {
            assert!(
                exported(name),
                "{file} names {name}, which tierwise does not export"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana/tierwise-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
    let rules =
        std::fs::read_to_string(root.join("examples/prometheus/tierwise-alerts.yml")).unwrap();
    for alert in [
        "TierwiseQualityDrift",
        "TierwiseProviderDown",
        "TierwiseLedgerDegraded",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// A counter an alert watches for its first increment is a series from start, before any traffic.
#[tokio::test]
async fn a_counter_alerts_watch_is_shown_before_its_first_increment() {
    let up = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes();
    let gw = TestGateway::start(&config).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tierwise_responses_dropped_total ")),
        "{metrics}"
    );
    gw.shutdown().await;
}
