//! Answers every replica shares, in Redis (`[cache] store`): one key per answer (`tierwise:cache:`
//! and the request's hash in hex), expiring with its route's ttl.
//!
//! Redis is never a reason to fail a request. Each call is held to `cache.store_timeout_ms`; one
//! that fails or times out marks the store down (logged once, `tierwise_cache_store_up` 0): while
//! it is down every lookup is a miss and nothing is kept, and once a second one lookup asks Redis
//! again. Fills are sent by a task of their own, off the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{Entry, Key, Stored};
use crate::config::Secret;
use crate::ledger::{Picodollars, Tokens};

/// How often a store marked down is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The connection to the shared store, and whether it answers.
pub struct SharedAnswers {
    manager: ConnectionManager,
    timeout: Duration,
    up: AtomicBool,
    /// While down: when the store may be tried again, in ms since `started`.
    retry_at_ms: AtomicU64,
    started: Instant,
}

impl SharedAnswers {
    pub fn start(url: &Secret, timeout: Duration) -> Result<Arc<SharedAnswers>, String> {
        let manager = crate::limits::connect_redis(url, timeout, "cache.store")?;
        // Up until a call says otherwise: the first lookups try it.
        crate::metrics::cache_store_up(true);
        Ok(Arc::new(SharedAnswers {
            manager,
            timeout,
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Whether a call may be made now: the store is up, or down and due to be tried again (one
    /// caller takes the retry).
    fn may_call(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let due = self.retry_at_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .retry_at_ms
                .compare_exchange(
                    due,
                    now + RETRY_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn mark(&self, up: bool, why: &str) {
        if !up {
            let next = self.started.elapsed().as_millis() as u64 + RETRY_EVERY.as_millis() as u64;
            self.retry_at_ms.store(next, Ordering::Relaxed);
        }
        if self.up.swap(up, Ordering::Relaxed) != up {
            crate::metrics::cache_store_up(up);
            if up {
                tracing::warn!("the cache store answers again: cached answers are shared");
            } else {
                tracing::error!(
                    "the cache store is unreachable ({why}): every cache lookup is a miss and nothing is kept until it answers"
                );
            }
        }
    }

    /// The answer kept under `key`; `None` when there is none, or the store did not answer.
    pub async fn get(&self, key: &Key) -> Option<Entry> {
        if !self.may_call() {
            return None;
        }
        let mut connection = self.manager.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            redis::cmd("GET")
                .arg(redis_key(key))
                .query_async::<Option<Vec<u8>>>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(value)) => {
                self.mark(true, "");
                // A value this version cannot read is a miss, replaced by the next fill.
                decode(&value?)
            }
            Ok(Err(err)) => {
                self.mark(false, err.category());
                None
            }
            Err(_) => {
                self.mark(
                    false,
                    &format!("no answer within {} ms", self.timeout.as_millis()),
                );
                None
            }
        }
    }

    /// Keeps `entry` under `key` for `ttl`, from a task of its own.
    pub fn put(self: &Arc<Self>, key: Key, entry: &Entry, ttl: Duration) {
        if !self.may_call() {
            return;
        }
        let value = encode(entry);
        let store = self.clone();
        tokio::spawn(async move {
            let mut connection = store.manager.clone();
            let mut command = redis::cmd("SET");
            command
                .arg(redis_key(&key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            let set = command.query_async::<()>(&mut connection);
            match tokio::time::timeout(store.timeout.max(Duration::from_millis(200)), set).await {
                Ok(Ok(())) => store.mark(true, ""),
                Ok(Err(err)) => store.mark(false, err.category()),
                Err(_) => store.mark(false, "no answer to SET"),
            }
        });
    }
}

fn redis_key(key: &Key) -> String {
    let mut out = String::with_capacity(14 + 64);
    out.push_str("tierwise:cache:");
    for byte in key.0 {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// What an entry says besides its answer's bytes.
#[derive(Serialize, Deserialize)]
struct Header {
    tier: String,
    provider: String,
    model: String,
    local: bool,
    tokens: [u64; 4],
    estimated: bool,
    cost: Option<i64>,
    /// `None` for a whole body; the events' count for a stream.
    events: Option<u32>,
}

/// The header as JSON behind its length, then the body, or each event behind its length: answers
/// are bytes (an event may not be UTF-8), which JSON would inflate.
fn encode(entry: &Entry) -> Bytes {
    let (events, payload): (Option<u32>, &[Bytes]) = match &entry.answer {
        Stored::Body(body) => (None, std::slice::from_ref(body)),
        Stored::Events(events) => (Some(events.len() as u32), events),
    };
    let tokens = entry.tokens;
    let header = Header {
        tier: entry.tier.clone(),
        provider: entry.provider.clone(),
        model: entry.model.clone(),
        local: entry.local,
        tokens: [
            tokens.input,
            tokens.cached,
            tokens.cache_write,
            tokens.output,
        ],
        estimated: tokens.estimated,
        cost: entry.cost.map(|cost| cost.0),
        events,
    };
    let header = serde_json::to_vec(&header).expect("a header serializes");
    let mut out = BytesMut::with_capacity(header.len() + 64 + entry.weight() as usize);
    out.put_u32(header.len() as u32);
    out.put_slice(&header);
    for part in payload {
        if events.is_some() {
            out.put_u32(part.len() as u32);
        }
        out.put_slice(part);
    }
    out.freeze()
}

fn decode(value: &[u8]) -> Option<Entry> {
    let mut value = Bytes::copy_from_slice(value);
    let length = value.try_get_u32().ok()? as usize;
    if value.len() < length {
        return None;
    }
    let header: Header = serde_json::from_slice(&value.split_to(length)).ok()?;
    let answer = match header.events {
        None => Stored::Body(value),
        Some(count) => {
            let mut events = Vec::with_capacity(count.min(4096) as usize);
            for _ in 0..count {
                let length = value.try_get_u32().ok()? as usize;
                if value.len() < length {
                    return None;
                }
                events.push(value.split_to(length));
            }
            Stored::Events(events)
        }
    };
    let [input, cached, cache_write, output] = header.tokens;
    Some(Entry {
        answer,
        tier: header.tier,
        provider: header.provider,
        model: header.model,
        local: header.local,
        tokens: Tokens {
            input,
            cached,
            cache_write,
            output,
            estimated: header.estimated,
        },
        cost: header.cost.map(Picodollars),
        expires_at: tokio::time::Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_it_was_kept() {
        for answer in [
            Stored::Body(Bytes::from_static(b"{\"choices\":[]}")),
            Stored::Events(vec![
                Bytes::from_static(b"data: {}\n\n"),
                Bytes::from_static(b"data: \xff\n\n"),
            ]),
        ] {
            let entry = Entry {
                answer,
                tier: "api_fast".into(),
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                local: false,
                tokens: Tokens {
                    input: 20,
                    cached: 4,
                    cache_write: 1,
                    output: 5,
                    estimated: false,
                },
                cost: Some(Picodollars(12_000_000)),
                expires_at: tokio::time::Instant::now(),
            };
            let read = decode(&encode(&entry)).expect("it reads back");
            assert_eq!(format!("{:?}", read.answer), format!("{:?}", entry.answer));
            assert_eq!(
                (read.tier, read.tokens, read.cost),
                (entry.tier, entry.tokens, entry.cost)
            );
        }
        assert!(decode(b"\x00\x00\x00\xffgarbage").is_none());
    }
}
