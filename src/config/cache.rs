//! `[cache]` and `routes.NAME.cache`: which routes keep their answers for identical requests, for
//! how long and for whom, and where the answers are kept.

use std::time::Duration;

use super::Secret;
use super::file::{RawCache, RawRouteCache};
use super::kinds::CacheScope;
use super::resolver::Resolver;

/// A route's cache: its answers are given again to identical requests for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    pub ttl: Duration,
    pub scope: CacheScope,
    /// Requests that sample (`temperature` > 0, `n` > 1) are cached too.
    pub nondeterministic: bool,
}

/// Where cached answers are kept.
#[derive(Debug)]
pub struct CacheConfig {
    /// What this process keeps in memory, in bytes of answers.
    pub max_bytes: u64,
    /// `redis://…`, shared by every replica; this process's memory when `None`. It may hold a
    /// password: never logged.
    pub store: Option<Secret>,
    pub store_timeout: Duration,
}

impl CacheConfig {
    /// Enough for tens of thousands of typical answers, little beside a gateway's other memory.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// As `limits.store_timeout_ms`: a Redis on the same network answers in ~0.1 ms; a hung one
    /// costs a request little before the lookup counts as a miss.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
}

impl Resolver<'_> {
    pub(super) fn cache(&mut self, raw: &RawCache) -> CacheConfig {
        let max_bytes = raw
            .max_bytes
            .as_ref()
            .and_then(|bytes| self.positive(bytes, "cache.max_bytes", "must be more than 0"))
            .unwrap_or(CacheConfig::DEFAULT_MAX_BYTES);
        let store = raw.store.as_ref().and_then(|store| {
            let value = self.string(store, "cache.store")?;
            // The URL may carry a password: the message names the key, never the value.
            let scheme_ok = value.starts_with("redis://") || value.starts_with("rediss://");
            if !scheme_ok || url::Url::parse(&value).is_err() {
                self.issue_at(
                    store.span().start,
                    "cache.store",
                    "is not a redis:// (or rediss://) URL; leave it out to keep answers in memory",
                );
                return None;
            }
            Some(Secret::new(value))
        });
        let store_timeout = raw
            .store_timeout_ms
            .as_ref()
            .and_then(|ms| self.positive(ms, "cache.store_timeout_ms", "must be more than 0"))
            .map_or(CacheConfig::DEFAULT_STORE_TIMEOUT, Duration::from_millis);
        CacheConfig {
            max_bytes,
            store,
            store_timeout,
        }
    }

    pub(super) fn route_cache(&mut self, raw: &RawRouteCache, key: &str) -> Option<RouteCache> {
        let key = format!("{key}.cache");
        let ttl = match humantime::parse_duration(raw.ttl.get_ref()) {
            Ok(ttl) if !ttl.is_zero() => ttl,
            Ok(_) => {
                self.issue_at(
                    raw.ttl.span().start,
                    &format!("{key}.ttl"),
                    "must be more than 0; remove the cache table to cache nothing",
                );
                return None;
            }
            Err(err) => {
                self.issue_at(
                    raw.ttl.span().start,
                    &format!("{key}.ttl"),
                    &format!("is not a duration ({err}); write e.g. \"1h\", \"10m\" or \"30s\""),
                );
                return None;
            }
        };
        Some(RouteCache {
            ttl,
            scope: raw.scope.unwrap_or_default(),
            nondeterministic: raw.nondeterministic.unwrap_or(false),
        })
    }
}
