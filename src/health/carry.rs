//! What of the providers' health a reload keeps. A server named the same under a provider named the
//! same, whose health-bearing settings did not change (its URL and weight; the provider's breaker,
//! in-flight cap, probe and warm-up; its tiers' models and context windows), keeps its whole
//! state: breaker, in-flight count, calls and failures, what its probe has seen, learned context
//! windows. The calls in flight on it are the same calls, counted once. A server whose settings
//! changed starts afresh, as at start-up: its old state described another server. Each tier's rest
//! after a 429 is kept by tier name.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Health, ProviderHealth, ServerHealth};
use crate::config::{Config, Provider, Tier};

impl Health {
    /// The health of `config`'s providers, keeping this one's state where a server is the same.
    pub fn carried_over(&self, config: &Config) -> Health {
        let providers = config
            .providers
            .iter()
            .map(|provider| {
                let old = self.providers.get(&provider.name);
                let servers = (0..provider.servers.len())
                    .map(|index| {
                        old.and_then(|old| kept(old, provider, index, &config.tiers))
                            .unwrap_or_else(|| {
                                Arc::new(ServerHealth::new(provider.clone(), index, &config.tiers))
                            })
                    })
                    .collect();
                (
                    provider.name.clone(),
                    Arc::new(ProviderHealth::new(provider.clone(), servers)),
                )
            })
            .collect();
        let rested = |tier: &str| {
            self.rate_limited_until
                .get(tier)
                .map_or(0, |until| until.load(Ordering::Relaxed))
        };
        Health {
            providers,
            rate_limited_until: config
                .tiers
                .iter()
                .map(|tier| (tier.name.clone(), AtomicU64::new(rested(&tier.name))))
                .collect(),
            // The rests above are counted from it.
            epoch: self.epoch,
        }
    }

    /// Whether `server` is one of this health's servers, the very same (kept by a reload).
    pub fn holds(&self, server: &Arc<ServerHealth>) -> bool {
        self.providers
            .get(&server.provider.name)
            .is_some_and(|pool| pool.servers().iter().any(|s| Arc::ptr_eq(s, server)))
    }
}

/// The old server of the same name at `index` of `provider`, if nothing it was built from changed.
fn kept(
    old: &ProviderHealth,
    provider: &Provider,
    index: usize,
    tiers: &[Arc<Tier>],
) -> Option<Arc<ServerHealth>> {
    let server = &provider.servers[index];
    let found = old
        .servers()
        .iter()
        .find(|old| old.server.name == server.name)?;
    let was = &found.provider;
    let same = found.server.base_url == server.base_url
        && found.server.weight == server.weight
        && found.index == index
        && was.breaker == provider.breaker
        && was.max_in_flight == provider.max_in_flight
        && was.warmup == provider.warmup
        && was.probe.is_some() == provider.probe.is_some()
        && windows(&found.context_windows) == windows_of(provider, tiers);
    same.then(|| found.clone())
}

type Windows = HashMap<String, (String, Option<u32>)>;

fn windows(of: &HashMap<String, super::TierWindow>) -> Windows {
    of.iter()
        .map(|(tier, window)| (tier.clone(), (window.model.clone(), window.configured)))
        .collect()
}

fn windows_of(provider: &Provider, tiers: &[Arc<Tier>]) -> Windows {
    tiers
        .iter()
        .filter(|tier| tier.provider.name == provider.name)
        .map(|tier| (tier.name.clone(), (tier.model.clone(), tier.context_tokens)))
        .collect()
}
