//! A provider's servers as one pool, and which of them takes a call: the less loaded of two
//! picked at random (power of two choices), load being calls in flight per unit of weight, plus
//! the calls the server says it has queued where it exports vLLM's metrics ([`super::queue`]). Two
//! random choices rather than a scan of all: a scan sends every request of a burst to the same
//! least-loaded server before its count moves, while two choices spread them, and cost the same
//! for eight servers as for two. The picking reads atomics only; a server whose breaker is open
//! is passed over by its own breaker (which may grant it its half-open trial), and when both
//! choices cannot take the call the others are tried, least loaded first. The provider is down
//! only when every server is.
//!
//! With `affinity = "prefix"`, a call goes first to the server its prompt's first bytes hash to
//! (rendezvous hashing over the servers that may be called, weighted: a server that dies moves
//! only its own prompts, and gets them back when it returns), unless that server is busier than
//! the least loaded by more than [`PrefixAffinity::MAX_EXTRA_IN_FLIGHT`] calls per unit of weight;
//! then by load as above.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::counts::CountGate;
use super::{BreakerSnapshot, BreakerState, Lease, ServerHealth, Skip, WindowStatus};
use crate::config::{PrefixAffinity, Provider};

pub struct ProviderHealth {
    pub provider: Arc<Provider>,
    servers: Vec<Arc<ServerHealth>>,
    /// The provider's own token counts out, and their warnings.
    pub counts: CountGate,
}

impl ProviderHealth {
    pub(super) fn new(provider: Arc<Provider>, servers: Vec<Arc<ServerHealth>>) -> ProviderHealth {
        ProviderHealth {
            provider,
            servers,
            counts: CountGate::default(),
        }
    }

    /// Each server's health, in the provider's order of servers.
    pub fn servers(&self) -> &[Arc<ServerHealth>] {
        &self.servers
    }

    /// A server that may be called now, or why none may.
    pub fn admit(&self) -> Result<Lease, Skip> {
        self.admit_except(None)
    }

    /// A server other than the one at `tried` that may be called now for a call whose prompt is
    /// `prompt` (the raw JSON of its messages or input): by its prefix where the provider has
    /// `affinity = "prefix"`, else by load.
    pub fn admit_for(&self, prompt: Option<&[u8]>, tried: Option<usize>) -> Result<Lease, Skip> {
        match (self.provider.prefix_affinity, prompt) {
            (Some(affinity), Some(prompt)) if self.servers.len() > 1 => {
                self.admit_by_prefix(affinity, prompt, tried)
            }
            _ => self.admit_except(tried),
        }
    }

    fn admit_by_prefix(
        &self,
        affinity: PrefixAffinity,
        prompt: &[u8],
        tried: Option<usize>,
    ) -> Result<Lease, Skip> {
        let key = prefix_key(&prompt[..prompt.len().min(affinity.bytes)]);
        // Rendezvous: each server's score for this key; the highest that may be called wins.
        let mut ranked: Vec<(f64, &Arc<ServerHealth>)> = self
            .servers
            .iter()
            .filter(|server| Some(server.index) != tried)
            .map(|server| (rendezvous_score(key, server), server))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let least = self
            .servers
            .iter()
            .filter(|s| s.state() == super::BreakerState::Closed)
            .map(|s| per_weight(s))
            .min()
            .unwrap_or(0);
        for (_, server) in ranked {
            if per_weight(server) > least + u64::from(PrefixAffinity::MAX_EXTRA_IN_FLIGHT) {
                // The preferred server is too busy: this call goes by load.
                return self.admit_except(tried);
            }
            if let Ok(lease) = server.admit() {
                return Ok(lease);
            }
        }
        self.admit_except(tried)
    }

    /// A server other than the one at `tried` (a call to it just failed), or why none may.
    pub fn admit_except(&self, tried: Option<usize>) -> Result<Lease, Skip> {
        if let [only] = self.servers.as_slice() {
            return match tried {
                Some(_) => Err(Skip::BreakerOpen {
                    retry_in: Duration::ZERO,
                }),
                None => only.admit(),
            };
        }
        let (first, second) = self.two_choices(tried);
        let mut skip = None;
        for index in [first, second].into_iter().flatten() {
            match self.servers[index].admit() {
                Ok(lease) => return Ok(lease),
                Err(why) => skip = Some(worse(skip, why)),
            }
        }
        // Both choices are open or full: the others, least loaded first.
        let mut rest: Vec<&Arc<ServerHealth>> = self
            .servers
            .iter()
            .filter(|s| Some(s.index) != tried && Some(s.index) != first && Some(s.index) != second)
            .collect();
        rest.sort_by(|a, b| load_order(a, b));
        for server in rest {
            match server.admit() {
                Ok(lease) => return Ok(lease),
                Err(why) => skip = Some(worse(skip, why)),
            }
        }
        Err(skip.unwrap_or(Skip::BreakerOpen {
            retry_in: Duration::ZERO,
        }))
    }

    /// Two servers picked at random (distinct, never `tried`), the less loaded first; `None`
    /// where there are not that many.
    fn two_choices(&self, tried: Option<usize>) -> (Option<usize>, Option<usize>) {
        let n = self.servers.len();
        let eligible = n - usize::from(tried.is_some());
        // The k-th eligible server, counting past `tried`.
        let nth = |k: usize| match tried {
            Some(t) if k >= t => k + 1,
            _ => k,
        };
        match eligible {
            0 => (None, None),
            1 => (Some(nth(0)), None),
            _ => {
                let a = fastrand::usize(..eligible);
                // A second draw among the rest: distinct without retrying.
                let mut b = fastrand::usize(..eligible - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a), nth(b));
                if load_order(&self.servers[b], &self.servers[a]).is_lt() {
                    (Some(b), Some(a))
                } else {
                    (Some(a), Some(b))
                }
            }
        }
    }

    /// The least loaded of the servers whose breakers are closed, for a call that is not the
    /// tier's traffic (a provider's own count of a prompt): it takes no in-flight slot and its
    /// outcome feeds no breaker, so it neither crowds nor judges the server; `None` while no
    /// breaker is closed.
    pub fn least_loaded_closed(&self) -> Option<usize> {
        self.servers
            .iter()
            .filter(|server| server.state() == BreakerState::Closed)
            .min_by(|a, b| load_order(a, b))
            .map(|server| server.index)
    }

    /// A lease on the least loaded server that ignores breakers and caps: the last resort when
    /// every tier is open.
    pub fn force(&self) -> Lease {
        self.servers
            .iter()
            .min_by(|a, b| load_order(a, b))
            .expect("a provider has at least one server")
            .force()
    }

    /// The provider's state: closed while any server is, half-open while any is trying, else
    /// open.
    pub fn state(&self) -> BreakerState {
        let states = self.servers.iter().map(|s| s.state());
        let mut state = BreakerState::Open;
        for s in states {
            match s {
                BreakerState::Closed => return BreakerState::Closed,
                BreakerState::HalfOpen => state = BreakerState::HalfOpen,
                BreakerState::Open => {}
            }
        }
        state
    }

    /// Up for `/readyz` while any server is.
    pub fn is_up(&self) -> bool {
        self.servers.iter().any(|s| s.is_up())
    }

    /// The context window of tier `tier` the chain judges a request by. With one server, its
    /// window. With several, the largest, and only once every server's is known: a request that
    /// fits no server is refused without a call, and while one server's window is unknown that
    /// server may take what the others cannot, so the servers judge.
    pub fn context_window(&self, tier: &str) -> Option<u32> {
        let mut largest = 0;
        for server in &self.servers {
            largest = largest.max(server.context_window(tier)?);
        }
        Some(largest)
    }

    pub fn status(&self) -> ProviderStatus {
        let servers: Vec<ServerStatus> = self.servers.iter().map(|s| s.status()).collect();
        let state = self.state();
        // The provider's breaker as the first server in the provider's state shows it.
        let shown = servers
            .iter()
            .find(|s| s.breaker.state == state)
            .unwrap_or(&servers[0]);
        let capped = self.provider.max_in_flight.is_some();
        ProviderStatus {
            name: self.provider.name.clone(),
            up: self.is_up(),
            probed: servers.iter().any(|s| s.probed),
            in_flight: capped.then(|| servers.iter().map(|s| s.in_flight).sum()),
            max_in_flight: self.provider.max_in_flight,
            breaker: shown.breaker.clone(),
            context_windows: shown.context_windows.clone(),
            servers,
        }
    }
}

/// `a` before `b` when `a` is less loaded: fewer calls in flight and queued per unit of weight,
/// the call about to be placed counted, so that an idle server of weight 3 goes before an idle
/// one of weight 1.
fn load_order(a: &ServerHealth, b: &ServerHealth) -> std::cmp::Ordering {
    let (load_a, load_b) = (a.load_milli() + 1000, b.load_milli() + 1000);
    (load_a * u64::from(b.server.weight)).cmp(&(load_b * u64::from(a.server.weight)))
}

/// Load (calls in flight and queued on the server) per unit of weight, in calls, rounded down.
fn per_weight(server: &ServerHealth) -> u64 {
    server.load_milli() / 1000 / u64::from(server.server.weight)
}

/// The hash of a prompt's prefix: XXH3, whose output is fixed by its specification, so the same
/// in every process, across restarts and versions, and so replicas of the gateway send a prefix to
/// the same server. XXH3 rather than std's SipHash (also fixed with its fixed keys): the prefix is
/// up to `affinity_prefix_bytes` long on every request, and SipHash spent ~700 ns of the pick on
/// 2 KiB where XXH3 spends a tenth of that (docs/benchmarks.md).
fn prefix_key(prefix: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(prefix)
}

/// A server's weighted rendezvous score for `key`: `-weight / ln(u)`, `u` uniform in (0, 1) from
/// the key and the server's name, so that each server's share of keys follows its weight and a
/// server's removal moves only the keys it had.
fn rendezvous_score(key: u64, server: &ServerHealth) -> f64 {
    let seed = xxhash_rust::xxh3::xxh3_64(server.server.name.as_bytes());
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_le_bytes(), seed);
    // 53 bits of the hash, kept off 0 and 1.
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(server.server.weight) / unit.ln()
}

/// What the provider is told when no server may be called: full where any server is full (it
/// stays capped, rather than being forced as the last resort), else open, the soonest retry.
fn worse(so_far: Option<Skip>, next: Skip) -> Skip {
    match (so_far, next) {
        (Some(Skip::Saturated), _) | (_, Skip::Saturated) => Skip::Saturated,
        (Some(Skip::BreakerOpen { retry_in: a }), Skip::BreakerOpen { retry_in: b }) => {
            Skip::BreakerOpen { retry_in: a.min(b) }
        }
        (_, next) => next,
    }
}

/// What `/admin/api/providers` and `/readyz` show of one provider: its own state (its healthiest
/// server's breaker), and each server's.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub up: bool,
    pub probed: bool,
    /// Calls in flight on all its servers, where it has a cap.
    pub in_flight: Option<usize>,
    /// The cap per server.
    pub max_in_flight: Option<u32>,
    pub breaker: BreakerSnapshot,
    pub context_windows: Vec<WindowStatus>,
    pub servers: Vec<ServerStatus>,
}

/// One server of a provider: its load, its failures and its breaker.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    /// Without credentials.
    pub url: String,
    pub weight: u32,
    pub up: bool,
    pub probed: bool,
    pub in_flight: usize,
    /// What its own metrics say of its queue, while a reading holds.
    pub queue: Option<super::QueueDepth>,
    /// Calls it settled since start, and those of them that failed through its fault.
    pub calls: u64,
    pub failures: u64,
    pub breaker: BreakerSnapshot,
    pub context_windows: Vec<WindowStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(servers: usize) -> Arc<ProviderHealth> {
        pool_with(servers, "")
    }

    fn pool_with(servers: usize, provider: &str) -> Arc<ProviderHealth> {
        let list: Vec<String> = (0..servers)
            .map(|i| format!("{{ url = \"http://127.0.0.1:{}/v1\" }}", 9000 + i))
            .collect();
        let toml = format!(
            "[ledger]\nurl = \"sqlite::memory:\"\n[providers.gpu]\nservers = [{}]\nhealth = {{ enabled = false }}\n{provider}\
             [tiers]\nlocal = {{ provider = \"gpu\", model = \"m\" }}\n\
             [routes.r]\nkind = \"classification\"\ntiers = [\"local\"]\n",
            list.join(", ")
        );
        let config = Config::parse(&toml, std::path::Path::new("t.toml"), &|_| None)
            .expect("the test config parses");
        let health = super::super::Health::new(&config);
        health.of(&config.providers[0]).clone()
    }

    #[test]
    fn two_choices_are_distinct_never_the_tried_one_and_cover_every_server() {
        let pool = pool(3);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let (a, b) = pool.two_choices(Some(1));
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(a != b && a != 1 && b != 1, "{a} {b}");
            let (a, b) = pool.two_choices(None);
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_ne!(a, b);
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }

    #[test]
    fn a_prefix_keeps_its_server_until_that_server_is_too_busy() {
        let pool = pool_with(3, "affinity = \"prefix\"\naffinity_prefix_bytes = 8\n");
        let prompt = b"same start, then anything";
        let preferred = pool.admit_for(Some(prompt), None).unwrap().server_index();
        for _ in 0..20 {
            assert_eq!(
                pool.admit_for(Some(b"same start, other end"), None)
                    .unwrap()
                    .server_index(),
                preferred
            );
        }
        // Up to MAX_EXTRA_IN_FLIGHT calls more than the others, it keeps its prompts.
        let extra = PrefixAffinity::MAX_EXTRA_IN_FLIGHT as usize;
        let mut held: Vec<Lease> = (0..extra)
            .map(|_| pool.servers[preferred].admit().unwrap())
            .collect();
        assert_eq!(
            pool.admit_for(Some(prompt), None).unwrap().server_index(),
            preferred
        );
        // One more, and the call goes by load.
        held.push(pool.servers[preferred].admit().unwrap());
        assert_ne!(
            pool.admit_for(Some(prompt), None).unwrap().server_index(),
            preferred
        );
    }

    #[test]
    fn the_less_loaded_server_takes_the_call() {
        let pool = pool(2);
        let busy: Vec<Lease> = (0..3).map(|_| pool.servers[0].admit().unwrap()).collect();
        for _ in 0..20 {
            assert_eq!(pool.admit().unwrap().server_index(), 1);
        }
        drop(busy);
        assert_eq!(pool.servers[0].in_flight(), 0);
    }

    /// The pick's cost: a call placed and its lease dropped among 8 servers, by load and by
    /// prefix, as the median of 9 runs of 200,000 picks. Ignored by default (a timing, not a
    /// check of behaviour): `cargo test --release --lib pick_among_8 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pick_among_8_servers_costs_under_a_microsecond() {
        const PICKS: u32 = 200_000;
        let median_ns = |pick: &dyn Fn(u32) -> Lease| {
            let mut runs: Vec<f64> = (0..9)
                .map(|_| {
                    let started = std::time::Instant::now();
                    for i in 0..PICKS {
                        std::hint::black_box(pick(i));
                    }
                    started.elapsed().as_nanos() as f64 / f64::from(PICKS)
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        };
        let by_load = pool(8);
        // Some calls in flight, so that the loads differ.
        let _held: Vec<Lease> = (0..8)
            .flat_map(|i| (0..i % 3).map(move |_| i))
            .map(|i| by_load.servers[i].admit().unwrap())
            .collect();
        let load_ns = median_ns(&|_| by_load.admit().unwrap());
        let by_prefix = pool_with(8, "affinity = \"prefix\"\n");
        let prompts: Vec<Vec<u8>> = (0..64)
            .map(|i| {
                format!(
                    "[{{\"role\":\"system\",\"content\":\"You are assistant {i}. {}\"}}]",
                    "x".repeat(2000)
                )
                .into_bytes()
            })
            .collect();
        let prefix_ns = median_ns(&|i| {
            by_prefix
                .admit_for(Some(&prompts[i as usize % 64]), None)
                .unwrap()
        });
        println!(
            "pick among 8 servers: by load {load_ns:.0} ns, by prefix (2 KiB) {prefix_ns:.0} ns"
        );
        assert!(load_ns < 1000.0 && prefix_ns < 1000.0);
    }
}
