//! Budgets shared by replicas through Redis (`[limits] store`): each budget's month is one hash,
//! `tierwise:budget:<all|route|key>:<name>:<2026-12>`, whose fields are the month's settled
//! spend (`calls`), the operators' corrections (`adjusted`, and `corrections`, how many the
//! ledger held when they were given), and one `held:<replica lease>` per replica: what that
//! replica's requests in flight hold. A request's worst case is judged and held against every
//! budget that applies in one Lua script — spend + held + worst case within the budget, for all
//! of them or none — in one round trip; settlements go to a task that sends them in pipelines,
//! off the request path.
//!
//! Holds are per replica under a lease, not per request: a replica renews its lease every
//! [`HEARTBEAT`], and a replica that dies (or cannot reach Redis) for [`LEASE`] has its holds
//! dropped by the next request that reads them. A lease, once lapsed, is never renewed: the
//! replica takes a new one (a new generation), so a late settlement of a dropped hold gives
//! nothing back twice. Per-request hold keys with a TTL would need the TTL to outlast the longest
//! stream and a scan to sum them; one field per replica is summed in one `HGETALL`.
//!
//! Redis may lose everything (a restart without persistence), and settlements may be lost (a
//! pipeline that fails): so each replica gives Redis the ledger's account of the month at start,
//! every resync and whenever the store comes back — the larger of Redis's `calls` and its own
//! count, and the corrections where the ledger holds more of them than Redis saw — and budgets are
//! judged in Redis only once that is done. Until then, and whenever Redis does not answer, each
//! replica judges from its memory ([`super::budget`]), which mirrors the shared counts as Redis
//! last gave them. A replica that lost a settlement takes a new lease, so what that request held
//! is dropped at the old lease's end instead of being held forever.
//!
//! Amounts are picodollars. Redis adds them as 64-bit integers; the script compares them as Lua
//! numbers (doubles), exact up to 2^53 pusd ($9,007) and within a millionth of a cent above.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::shared::Shared;
use crate::config::BudgetScope;
use crate::ledger::budget::Month;

/// How long a replica's holds outlive its last word to Redis.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a replica renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A month's hash outlives the month by this, for settlements of requests that began in it.
const KEEP_AFTER_MONTH_MS: i64 = 7 * 86_400_000;
/// Every replica's lease: its generation's expiry, in Redis's clock (ms).
const LEASES: &str = "tierwise:budget:leases";
/// Settlements waiting to be sent; one that finds the queue full is dropped (and the replica
/// takes a new lease, so what it held is not held forever).
const SETTLE_QUEUE: usize = 4096;

/// Renews `ARGV[1]`'s lease in `KEYS[1]` for `ARGV[2]` ms, unless it lapsed (then 0). Leases
/// lapsed for a day are forgotten.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if mine and tonumber(mine) < now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return 1
";

/// Holds ARGV[3] picodollars against every budget hash of KEYS[2..] if each can hold it beside
/// its spend and what live leases hold (holds of lapsed leases are dropped as they are read), for
/// lease ARGV[1] (renewed for ARGV[2] ms), expiring the hashes at ARGV[4]; ARGV[5..] are the
/// budgets' limits. Returns {-1} if the lease lapsed; else 1 (held) or 0 (none held), then per
/// budget its calls, adjusted, corrections, held (before this request) and whether it fits.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local mine = redis.call('ZSCORE', KEYS[1], me)
if mine and tonumber(mine) < now then return {-1} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), me)
local worst = tonumber(ARGV[3])
local out = {1}
for i = 2, #KEYS do
  local calls, adjusted, corrections, held = 0, 0, 0, 0
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    local field, value = fields[j], tonumber(fields[j + 1])
    if field == 'calls' then calls = value
    elseif field == 'adjusted' then adjusted = value
    elseif field == 'corrections' then corrections = value
    elseif string.sub(field, 1, 5) == 'held:' then
      local lease = redis.call('ZSCORE', KEYS[1], string.sub(field, 6))
      if lease and tonumber(lease) >= now then held = held + value
      else redis.call('HDEL', KEYS[i], field) end
    end
  end
  local fits = 0
  if calls + adjusted + held + worst <= tonumber(ARGV[3 + i]) then fits = 1 else out[1] = 0 end
  table.insert(out, calls)
  table.insert(out, adjusted)
  table.insert(out, corrections)
  table.insert(out, held)
  table.insert(out, fits)
end
if out[1] == 1 then
  for i = 2, #KEYS do
    redis.call('HINCRBY', KEYS[i], 'held:' .. me, ARGV[3])
    redis.call('PEXPIREAT', KEYS[i], ARGV[4])
  end
end
return out
";

/// Gives back ARGV[2] (negative) of hold field ARGV[1] ('' for none) — only while the field is
/// there: a dropped hold is not given back twice — and adds ARGV[3] to the month's calls.
const SETTLE: &str = r"
if ARGV[1] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'calls', ARGV[3]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
";

/// Gives each budget hash of KEYS its account (ARGV in fours: calls, adjusted, corrections,
/// expiry): calls where more than Redis has, the corrections where they are more of them than
/// Redis saw. Returns per budget its calls, adjusted and corrections after.
const RESYNC: &str = r"
local out = {}
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local calls = tonumber(redis.call('HGET', KEYS[i], 'calls') or '0')
  if tonumber(ARGV[base + 1]) > calls then
    redis.call('HSET', KEYS[i], 'calls', ARGV[base + 1])
  end
  local seen = tonumber(redis.call('HGET', KEYS[i], 'corrections') or '0')
  if tonumber(ARGV[base + 3]) >= seen then
    redis.call('HSET', KEYS[i], 'adjusted', ARGV[base + 2], 'corrections', ARGV[base + 3])
  end
  redis.call('PEXPIREAT', KEYS[i], ARGV[base + 4])
  table.insert(out, tonumber(redis.call('HGET', KEYS[i], 'calls') or '0'))
  table.insert(out, tonumber(redis.call('HGET', KEYS[i], 'adjusted') or '0'))
  table.insert(out, tonumber(redis.call('HGET', KEYS[i], 'corrections') or '0'))
end
return out
";

/// A budget's month as Redis has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InStore {
    pub calls: i64,
    pub adjusted: i64,
    /// How many corrections `adjusted` sums.
    pub corrections: u64,
    /// What live leases hold (before the request judged).
    pub held: i64,
    pub fits: bool,
}

/// What Redis said of a request's budgets.
pub enum Reserved {
    /// Every budget held it, in hold field `field`.
    Taken {
        field: String,
        budgets: Vec<InStore>,
    },
    /// Some budget could not; nothing was held.
    Refused(Vec<InStore>),
}

/// The account of one budget's month a replica gives Redis.
pub struct Account {
    pub key: String,
    pub calls: i64,
    pub adjusted: i64,
    pub corrections: u64,
    pub expire_at: i64,
}

/// One settlement on its way to Redis.
struct Settle {
    key: String,
    /// The hold field, or `None` for spend that held nothing in Redis (judged from memory).
    field: Option<String>,
    held: i64,
    used: i64,
    expire_at: i64,
}

/// This replica's side of the shared budgets.
pub struct SharedBudgets {
    store: Arc<Shared>,
    /// Random, per process: its leases are `<replica>:<generation>`.
    replica: String,
    generation: Arc<AtomicU64>,
    /// The store's [`Shared::ups`] when this replica last gave it the ledger's account; budgets
    /// are judged in Redis only while that is the store's present one.
    seeded: AtomicU64,
    reserve: redis::Script,
    resync: redis::Script,
    settlements: mpsc::Sender<Settle>,
}

impl SharedBudgets {
    /// Starts the lease's heartbeat and the settlement task on the current runtime.
    pub fn start(store: Arc<Shared>) -> Arc<SharedBudgets> {
        let (settlements, queued) = mpsc::channel(SETTLE_QUEUE);
        let shared = Arc::new(SharedBudgets {
            store,
            replica: uuid::Uuid::now_v7().simple().to_string(),
            generation: Arc::new(AtomicU64::new(0)),
            seeded: AtomicU64::new(u64::MAX),
            reserve: redis::Script::new(RESERVE),
            resync: redis::Script::new(RESYNC),
            settlements,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&shared)));
        tokio::spawn(send_settlements(
            shared.store.clone(),
            shared.generation.clone(),
            queued,
        ));
        shared
    }

    /// The hash of `scope`'s `month`.
    pub fn key(scope: &BudgetScope, month: Month) -> String {
        format!("tierwise:budget:{}:{}:{month}", scope.kind(), scope.name())
    }

    /// When a month's hash may go.
    pub fn expire_at(month: Month) -> i64 {
        month.end_ms() + KEEP_AFTER_MONTH_MS
    }

    /// Whether budgets are judged in Redis now: it answers, and has had the ledger's account
    /// since it last came back.
    pub fn usable(&self) -> bool {
        self.store.is_up() && self.seeded.load(Ordering::Acquire) == self.store.ups()
    }

    pub fn store(&self) -> &Arc<Shared> {
        &self.store
    }

    fn lease(&self) -> String {
        format!(
            "{}:{}",
            self.replica,
            self.generation.load(Ordering::Acquire)
        )
    }

    /// Judges and holds `worst` against every budget of `budgets` (its hash and its limit), in
    /// one round trip; `None` when Redis did not answer in time (it is then marked down).
    pub async fn reserve(
        &self,
        budgets: &[(String, i64)],
        worst: i64,
        expire_at: i64,
    ) -> Option<Reserved> {
        // A lapsed lease is replaced once: a replica that was away longer than its lease.
        for _ in 0..2 {
            let lease = self.lease();
            let mut invocation = self.reserve.prepare_invoke();
            invocation
                .key(LEASES)
                .arg(&lease)
                .arg(LEASE.as_millis() as u64)
                .arg(worst)
                .arg(expire_at);
            for (key, limit) in budgets {
                invocation.key(key).arg(*limit);
            }
            let values: Vec<i64> = self
                .call(invocation.invoke_async(&mut self.store.connection()))
                .await?;
            match values.first() {
                Some(-1) => {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                Some(status) if values.len() == 1 + 5 * budgets.len() => {
                    let states = values[1..]
                        .chunks(5)
                        .map(|state| InStore {
                            calls: state[0],
                            adjusted: state[1],
                            corrections: state[2].max(0) as u64,
                            held: state[3],
                            fits: state[4] == 1,
                        })
                        .collect();
                    return Some(if *status == 1 {
                        Reserved::Taken {
                            field: format!("held:{lease}"),
                            budgets: states,
                        }
                    } else {
                        Reserved::Refused(states)
                    });
                }
                _ => {
                    self.store.mark(false, "an answer of the wrong shape");
                    return None;
                }
            }
        }
        None
    }

    /// Gives Redis this replica's account of each budget's month; returns what Redis holds after,
    /// in the same order (calls, adjusted, corrections), or `None` when it did not answer. Once
    /// given, budgets are judged in Redis.
    pub async fn give_account(&self, accounts: &[Account]) -> Option<Vec<InStore>> {
        let ups = self.store.ups();
        if !self.store.is_up() {
            return None;
        }
        if self.seeded.load(Ordering::Acquire) != ups {
            // The store came back: what this replica held under its old lease may have lost its
            // settlements meanwhile. A new lease lets the old one's holds go at its end.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let mut invocation = self.resync.prepare_invoke();
        for account in accounts {
            invocation
                .key(&account.key)
                .arg(account.calls)
                .arg(account.adjusted)
                .arg(account.corrections)
                .arg(account.expire_at);
        }
        let values: Vec<i64> = self
            .call(invocation.invoke_async(&mut self.store.connection()))
            .await?;
        if values.len() != 3 * accounts.len() {
            self.store.mark(false, "an answer of the wrong shape");
            return None;
        }
        self.seeded.store(ups, Ordering::Release);
        Some(
            values
                .chunks(3)
                .map(|state| InStore {
                    calls: state[0],
                    adjusted: state[1],
                    corrections: state[2].max(0) as u64,
                    ..InStore::default()
                })
                .collect(),
        )
    }

    /// Runs one call to Redis within the store's timeout; `None` (and the store marked down)
    /// when it fails or is late.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.store.timeout(), call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                self.store.mark(false, err.category());
                None
            }
            Err(_) => {
                self.store.mark(
                    false,
                    &format!("no answer within {} ms", self.store.timeout().as_millis()),
                );
                None
            }
        }
    }

    /// Queues a settlement: `held` given back from hold `field` (if it is still there) and `used`
    /// added to the month's calls. Never waits.
    pub fn settle(&self, key: &str, field: Option<&str>, held: i64, used: i64, expire_at: i64) {
        if held == 0 && used == 0 {
            return;
        }
        let settle = Settle {
            key: key.to_string(),
            field: field.map(str::to_string),
            held,
            used,
            expire_at,
        };
        if self.settlements.try_send(settle).is_err() {
            lost_settlement(&self.generation);
        }
    }
}

/// A settlement that did not reach Redis: its spend comes back with the ledger's account at the
/// next resync, and a new lease lets what it held go at the old lease's end.
fn lost_settlement(generation: &AtomicU64) {
    crate::metrics::limits_settlement_dropped();
    generation.fetch_add(1, Ordering::AcqRel);
}

/// Renews the lease every [`HEARTBEAT`] while the store answers, for as long as the budgets exist.
async fn heartbeat(shared: Weak<SharedBudgets>) {
    let renew = redis::Script::new(RENEW);
    loop {
        let Some(budgets) = shared.upgrade() else {
            return;
        };
        if budgets.store.is_up() {
            let mut invocation = renew.prepare_invoke();
            invocation
                .key(LEASES)
                .arg(budgets.lease())
                .arg(LEASE.as_millis() as u64);
            let mut connection = budgets.store.connection();
            if let Some(0) = budgets
                .call(invocation.invoke_async::<i64>(&mut connection))
                .await
            {
                budgets.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(budgets);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Sends queued settlements in pipelines; ends when the budgets are gone.
async fn send_settlements(
    store: Arc<Shared>,
    generation: Arc<AtomicU64>,
    mut queued: mpsc::Receiver<Settle>,
) {
    let script = redis::Script::new(SETTLE);
    let mut batch = Vec::with_capacity(256);
    while queued.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        // A pipeline's scripts are sent by their hash alone (EVALSHA), which a Redis that has not
        // seen them (one just started, or restarted) refuses: the script goes first, every time.
        pipe.cmd("SCRIPT").arg("LOAD").arg(SETTLE).ignore();
        for settle in batch.drain(..) {
            pipe.invoke_script(
                script
                    .key(settle.key)
                    .arg(settle.field.unwrap_or_default())
                    .arg(-settle.held)
                    .arg(settle.used)
                    .arg(settle.expire_at),
            );
        }
        let mut connection = store.connection();
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            pipe.query_async::<redis::Value>(&mut connection),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            lost_settlement(&generation);
        }
    }
}
