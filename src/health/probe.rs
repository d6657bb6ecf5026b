//! Active health probes and warm-up. Each server of a provider with a probe is asked on an interval
//! whether it answers (`GET {base_url}/models` unless configured otherwise), so that a dead server is
//! skipped before a user meets it and a recovered one is used again without waiting for traffic.
//! Providers with `warmup = true` get one tiny call per tier on each server at start-up and after each
//! server's recovery, so
//! that the model is loaded before traffic depends on it. A tier the server refuses (a 4xx, or a
//! 501 for an endpoint it does not serve) is that tier's problem, logged, not its provider's
//! outage: the provider's other tiers still serve.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{BreakerState, Health, ServerHealth};
use crate::config::{Config, ProbePolicy, TaskKind, Tier};
use crate::openai::Endpoint;
use crate::upstream::{ListedModel, UpstreamError, UpstreamErrorKind, Upstreams};

/// The warm-up of one tier: the smallest request its model answers, on the endpoint its routes
/// use. A tier no route names is called by clients on an endpoint the config does not say: it is
/// tried with chat, then with embeddings, as an embedding model refuses chat.
struct Warmup {
    tier: Arc<Tier>,
    calls: Vec<(Endpoint, Vec<u8>)>,
}

/// Starts the probe loop of every server of each provider that has one, and the one-off warm-up
/// of those that have none — except a server `before` holds too, which a reload kept and which was
/// warmed up already. The handles are aborted at shutdown, and at a reload that starts new ones.
pub fn spawn_probes(
    config: &Config,
    health: Arc<Health>,
    upstreams: Arc<Upstreams>,
    before: Option<&Health>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for provider in &config.providers {
        let warmups = if provider.warmup {
            Arc::new(warmups(config, &provider.name))
        } else {
            Arc::new(Vec::new())
        };
        for server in health.of(provider).servers() {
            let (server, upstreams, warmups) = (server.clone(), upstreams.clone(), warmups.clone());
            match provider.probe.clone() {
                Some(policy) => {
                    tasks.push(tokio::spawn(probe_loop(server, upstreams, policy, warmups)));
                }
                None if !warmups.is_empty() && !before.is_some_and(|b| b.holds(&server)) => {
                    tasks.push(tokio::spawn(async move {
                        if let Err(err) = warm_up(&upstreams, server.index, &warmups).await {
                            tracing::warn!(provider = %server.provider.name, server = %server.server.name, "warm-up failed: {err}");
                        }
                    }))
                }
                None => {}
            }
        }
    }
    tasks
}

fn warmups(config: &Config, provider: &str) -> Vec<Warmup> {
    config
        .tiers
        .iter()
        .filter(|tier| tier.provider.name == provider)
        .map(|tier| {
            let kinds: Vec<TaskKind> = config
                .routes
                .iter()
                .filter(|route| route.chain.iter().any(|step| step.tier.name == tier.name))
                .map(|route| route.kind)
                .collect();
            let endpoints: &[Endpoint] = if kinds.contains(&TaskKind::Embedding) {
                &[Endpoint::Embeddings]
            } else if kinds.is_empty() {
                &[Endpoint::ChatCompletions, Endpoint::Embeddings]
            } else {
                &[Endpoint::ChatCompletions]
            };
            Warmup {
                tier: tier.clone(),
                calls: endpoints
                    .iter()
                    .map(|&endpoint| (endpoint, warmup_body(endpoint, tier)))
                    .collect(),
            }
        })
        .collect()
}

fn warmup_body(endpoint: Endpoint, tier: &Tier) -> Vec<u8> {
    (endpoint.spec().warmup)(&tier.model)
        .to_string()
        .into_bytes()
}

/// Warms every tier up on the server at `server`. The server's own failure (down, timing out, 5xx) is returned: it is not
/// ready. A tier it refuses with a 4xx or a 501 stays cold and is logged; its calls meet the same refusal
/// and fall back, while the provider's other tiers serve.
async fn warm_up(
    upstreams: &Upstreams,
    server: usize,
    warmups: &[Warmup],
) -> Result<(), UpstreamError> {
    for warmup in warmups {
        let mut refused = None;
        for (endpoint, body) in &warmup.calls {
            match upstreams
                .send(&warmup.tier, server, *endpoint, body.clone(), false)
                .await
            {
                Ok(_) => {
                    tracing::info!(tier = %warmup.tier.name, model = %warmup.tier.model, "warmed up");
                    refused = None;
                    break;
                }
                Err(err) if refused_by_server(&err) => refused = Some(err),
                Err(err) => return Err(err),
            }
        }
        if let Some(err) = refused {
            tracing::warn!(
                tier = %warmup.tier.name,
                model = %warmup.tier.model,
                "the server refused the tier's warm-up, so it stays cold (its provider is up): {err}"
            );
        }
    }
    Ok(())
}

/// A 4xx, or a 5xx about the request (a 501, an endpoint the server does not serve; a 500 in
/// the words of a refusal): the server is up and answered, about this tier's model or endpoint.
fn refused_by_server(err: &UpstreamError) -> bool {
    err.is_the_requests()
        || matches!(err.kind, UpstreamErrorKind::Status(status) if status.is_client_error())
}

/// The context windows a model listing gives, as vLLM's `/v1/models` does (`max_model_len`); the
/// models it gave one for.
fn discover_windows(health: &ServerHealth, listing: &[u8]) -> Vec<String> {
    let Ok(models) = ListedModel::parse(listing) else {
        return Vec::new();
    };
    let mut sized = Vec::new();
    for model in models {
        if let Some(tokens) = model.max_model_len {
            health.discovered_context_window(&model.id, tokens);
            sized.push(model.id);
        }
    }
    sized
}

/// The windows a local server gives outside its listing (Ollama, llama.cpp), for the models its
/// listing did not size: each one at start-up and after each recovery (`everything`), as a
/// restarted server may serve another window; on every other probe, those the server stated
/// before or a refusal taught, so that the server's word stays current and replaces a taught one.
async fn discover_server_windows(
    health: &ServerHealth,
    upstreams: &Upstreams,
    policy: &ProbePolicy,
    everything: bool,
    listed: &[String],
) {
    for model in health.models_to_size(everything) {
        if listed.contains(&model) {
            continue;
        }
        if let Some(tokens) = upstreams
            .server_window(&health.provider, health.index, &model, policy.timeout)
            .await
        {
            health.discovered_context_window(&model, tokens);
        }
    }
}

async fn probe_loop(
    health: Arc<ServerHealth>,
    upstreams: Arc<Upstreams>,
    policy: ProbePolicy,
    warmups: Arc<Vec<Warmup>>,
) {
    let mut ticker = tokio::time::interval(policy.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match upstreams
            .probe(&health.provider, health.index, &policy)
            .await
        {
            Ok(listing) => {
                let listed = discover_windows(&health, &listing);
                let first = !health.seen_up.load(Ordering::Acquire);
                let recovering = health.state() != BreakerState::Closed;
                if (first || recovering) && !health.breaker.probe_may_close() {
                    continue;
                }
                if (first || recovering)
                    && let Err(err) = warm_up(&upstreams, health.index, &warmups).await
                {
                    tracing::warn!(provider = %health.provider.name, server = %health.server.name, "answers its probe but warm-up failed: {err}");
                    health.report(
                        health
                            .breaker
                            .probe_failed(&format!("warm-up: {}", err.reason())),
                    );
                    continue;
                }
                discover_server_windows(&health, &upstreams, &policy, first || recovering, &listed)
                    .await;
                if first {
                    tracing::info!(provider = %health.provider.name, server = %health.server.name, "server is up");
                }
                health.seen_up.store(true, Ordering::Release);
                health.report(health.breaker.probe_recovered());
            }
            Err(err) => {
                tracing::debug!(provider = %health.provider.name, server = %health.server.name, "probe failed: {err}");
                health.report(health.breaker.probe_failed(&err.reason()));
            }
        }
    }
}
