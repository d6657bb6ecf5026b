//! The counts every replica shares, in Redis (`[limits] store`): the same two minutes per limit as
//! [`super::window`], one key per limit and minute, expiring after the next. A request's limits
//! are judged and taken in one Lua script (all of them or none), one round trip; settlements are
//! queued to a task that sends them in pipelines, off the request path.
//!
//! Redis is never a reason to fail a request. Every call is held to `limits.store_timeout_ms`; one
//! that fails or times out marks the store down (logged once, `tierwise_limits_store_up` 0), and
//! while it is down admission judges from this replica's memory alone — the limits are enforced
//! per replica — and a probe asks Redis once a second until it answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::reservation::Meter;
use super::window::{Counts, MINUTE_MS, Now, Window};
use crate::config::Secret;

/// Judges every limit of a request, then takes the cost of each only if all fit.
/// KEYS: per limit, its current and its previous minute's key. ARGV[1]: the previous minute's
/// weight in 1/60,000ths; then per limit, its limit and its cost. Returns 1 or 0, then per limit
/// its current count (after taking, when taken) and its previous count.
const ADMIT: &str = r"
local weight = tonumber(ARGV[1])
local n = #KEYS / 2
local counts = {}
local fits = 1
for i = 1, n do
  local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local limit = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  counts[2 * i - 1] = current
  counts[2 * i] = previous
  if previous * weight + (current + cost) * 60000 > limit * 60000 then fits = 0 end
end
if fits == 1 then
  for i = 1, n do
    counts[2 * i - 1] = redis.call('INCRBY', KEYS[2 * i - 1], tonumber(ARGV[2 * i + 1]))
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[#ARGV])
  end
end
table.insert(counts, 1, fits)
return counts
";

/// Corrects a minute's count by ARGV[1] (held back out, used in), never below 0, and only while
/// the minute's key still exists (an expired minute is past correcting).
const SETTLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
return 1
";

/// A minute's key lives through the next minute, which weighs it, and a little past.
const KEY_TTL_MS: u64 = 2 * MINUTE_MS + 5_000;
/// How often a store marked down is asked whether it answers again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Settlements waiting to be sent; more are dropped (the counts then stay at what was reserved,
/// which errs on the side of refusing).
const SETTLE_QUEUE: usize = 4096;

/// One limit as the shared store knows it: the key prefix of its minutes.
#[derive(Debug, Clone)]
pub struct SharedLimit {
    pub prefix: String,
    pub limit: u64,
}

impl SharedLimit {
    fn key(&self, minute: i64) -> String {
        format!("{}:{minute}", self.prefix)
    }
}

/// The connection to Redis, and whether it answers.
pub struct Shared {
    manager: ConnectionManager,
    timeout: Duration,
    up: AtomicBool,
    /// How many times the store has been marked up: budgets judge in it only once they have
    /// given it the ledger's account since it last came back (it may have come back empty).
    ups: AtomicU64,
    /// Woken when the store comes back, for budgets to give it that account at once.
    came_back: tokio::sync::Notify,
    admit: redis::Script,
    settlements: mpsc::Sender<(String, i64)>,
}

/// What the store said of one request's limits.
pub enum Judged {
    /// Every limit had room; each one's counts after taking.
    Taken(Vec<Counts>),
    /// Some limit had none; each one's counts, nothing taken.
    Refused(Vec<Counts>),
}

impl Shared {
    /// Connects lazily (a Redis that is away at start-up does not stop the gateway) and starts
    /// the settlement and probe tasks on the current runtime. `url` may hold a password: it is
    /// never logged.
    pub fn start(url: &Secret, timeout: Duration) -> Result<Arc<Shared>, String> {
        let manager = connect(url, timeout, "limits.store")?;
        let (settlements, queued) = mpsc::channel(SETTLE_QUEUE);
        let shared = Arc::new(Shared {
            manager,
            timeout,
            // Judged down until the first answer: requests meanwhile are judged from memory.
            up: AtomicBool::new(false),
            ups: AtomicU64::new(0),
            came_back: tokio::sync::Notify::new(),
            admit: redis::Script::new(ADMIT),
            settlements,
        });
        crate::metrics::limits_store_up(false);
        tokio::spawn(probe(Arc::downgrade(&shared)));
        tokio::spawn(send_settlements(shared.manager.clone(), queued));
        Ok(shared)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How many times the store has come back (been marked up).
    pub fn ups(&self) -> u64 {
        self.ups.load(Ordering::Acquire)
    }

    /// Waits until the store is next marked up.
    pub async fn came_back(&self) {
        self.came_back.notified().await;
    }

    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Marks the store down after a call to it failed (`why`); logged once per outage.
    pub fn mark(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            crate::metrics::limits_store_up(up);
            if up {
                let before = self.ups.fetch_add(1, Ordering::AcqRel);
                self.came_back.notify_one();
                // The first answer is the first connect, not a recovery.
                if before == 0 {
                    tracing::info!(
                        "the limits store answers: rate limits and budgets are shared by every replica"
                    );
                } else {
                    tracing::warn!(
                        "the limits store answers again: rate limits and budgets are shared by every replica"
                    );
                }
            } else {
                tracing::error!(
                    "the limits store is unreachable ({why}): rate limits and budgets are enforced per replica, from this replica's memory, until it answers"
                );
            }
        }
    }

    /// Judges and takes `costs` (one per limit) in one round trip; `None` when the store did not
    /// answer in time (it is then marked down).
    pub async fn take(&self, now: Now, limits: &[(&SharedLimit, u64)]) -> Option<Judged> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(MINUTE_MS - now.into_ms);
        for (limit, cost) in limits {
            invocation
                .key(limit.key(now.minute))
                .key(limit.key(now.minute - 1))
                .arg(limit.limit)
                .arg(*cost);
        }
        invocation.arg(KEY_TTL_MS);
        let mut connection = self.manager.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        let values = match answer {
            Ok(Ok(values)) if values.len() == 1 + 2 * limits.len() => values,
            Ok(Ok(_)) => {
                self.mark(false, "an answer of the wrong shape");
                return None;
            }
            Ok(Err(err)) => {
                self.mark(false, err.category());
                return None;
            }
            Err(_) => {
                self.mark(
                    false,
                    &format!("no answer within {} ms", self.timeout.as_millis()),
                );
                return None;
            }
        };
        let counts = values[1..]
            .chunks(2)
            .map(|pair| Counts {
                current: pair[0].max(0) as u64,
                previous: pair[1].max(0) as u64,
            })
            .collect();
        Some(if values[0] == 1 {
            Judged::Taken(counts)
        } else {
            Judged::Refused(counts)
        })
    }

    fn settle(&self, limit: &SharedLimit, minute: i64, change: i64) {
        if change != 0
            && self
                .settlements
                .try_send((limit.key(minute), change))
                .is_err()
        {
            crate::metrics::limits_settlement_dropped();
        }
    }
}

/// A connection to the Redis at `url` (the value of the config key `key`), made lazily so that a
/// Redis away at start-up does not stop the gateway, each call held to `timeout`. `url` may hold
/// a password: no message names it.
pub(crate) fn connect(
    url: &Secret,
    timeout: Duration,
    key: &str,
) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url.expose()).map_err(|err| {
        format!(
            "{key} is not a Redis URL this client reads: {}",
            err.category()
        )
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|err| format!("cannot set up {key}: {}", err.category()))
}

/// Asks a store marked down whether it answers, once a second, for as long as the store is used.
async fn probe(shared: Weak<Shared>) {
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        if !store.is_up() {
            let mut connection = store.manager.clone();
            let ping = redis::cmd("PING");
            match tokio::time::timeout(
                store.timeout.max(Duration::from_millis(200)),
                ping.query_async::<String>(&mut connection),
            )
            .await
            {
                Ok(Ok(_)) => store.mark(true, ""),
                Ok(Err(err)) => store.mark(false, err.category()),
                Err(_) => store.mark(false, "no answer to PING"),
            }
        }
        drop(store);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Sends queued settlements, as many as are waiting in one pipeline; ends when the store is gone.
async fn send_settlements(manager: ConnectionManager, mut queued: mpsc::Receiver<(String, i64)>) {
    let script = redis::Script::new(SETTLE);
    let mut batch = Vec::with_capacity(256);
    while queued.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        // A pipeline's scripts are sent by their hash alone (EVALSHA), which a Redis that has not
        // seen them (one just started, or restarted) refuses: the script goes first, every time.
        pipe.cmd("SCRIPT").arg("LOAD").arg(SETTLE).ignore();
        for (key, change) in batch.drain(..) {
            pipe.invoke_script(script.key(key).arg(change));
        }
        let mut connection = manager.clone();
        // A lost settlement leaves a minute at what was reserved: it errs on refusing, and the
        // minute expires on its own.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            pipe.query_async::<redis::Value>(&mut connection),
        )
        .await;
    }
}

/// A token reservation taken in the shared store and mirrored in memory: settling corrects both.
pub struct SharedMeter {
    pub window: Arc<Window>,
    pub limit: SharedLimit,
    pub shared: Arc<Shared>,
}

impl Meter for SharedMeter {
    fn settle(&self, minute: i64, held: u64, used: u64) {
        self.window.settle(minute, held, used);
        let change = used as i128 - held as i128;
        self.shared.settle(
            &self.limit,
            minute,
            change.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        );
    }
}
