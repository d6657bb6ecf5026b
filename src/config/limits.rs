//! `[keys.NAME]`, the rate limits of keys and routes, and `[limits]`: who may call which route, how
//! much of it per minute (and, [`super::Budget`], a month), and where the counts are kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::file::{RawKey, RawLimits, RawRoute, Text};
use super::resolver::Resolver;
use super::{ClientKey, Secret};

/// Requests and tokens (prompt and completion) per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

impl Rate {
    pub fn is_none(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// What a named key may do; the bare `server.api_keys` may call anything, without limit.
#[derive(Debug, Clone, Default)]
pub struct KeyTerms {
    /// `keys.NAME`: what the ledger, reports and errors call the key.
    pub name: Option<String>,
    /// The routes it may call (sorted); every route and tier when `None`.
    pub routes: Option<Vec<String>>,
    pub rate: Rate,
    /// What the key's calls may cost a month.
    pub budget: Option<super::Budget>,
}

/// Where the rate-limit counters are kept.
#[derive(Debug)]
pub struct LimitsConfig {
    /// `redis://…`, shared by every replica; this process's memory when `None`. It may hold a
    /// password: never logged.
    pub store: Option<Secret>,
    pub store_timeout: Duration,
}

impl LimitsConfig {
    /// Long enough for a Redis on the same network (a round trip is ~0.1 ms), short enough that a
    /// hung one adds little to any request before it is judged down.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
}

impl Resolver<'_> {
    /// The named keys, each checked against the routes the file defines and the other keys.
    pub(super) fn keys(
        &mut self,
        raw: &BTreeMap<Text, RawKey>,
        routes: &BTreeMap<Text, RawRoute>,
        bare: &[Arc<ClientKey>],
    ) -> Vec<Arc<ClientKey>> {
        let mut seen: HashSet<String> = bare.iter().map(|k| k.secret.expose().into()).collect();
        let mut keys = Vec::new();
        for (name, key) in raw {
            let at = format!("keys.{}", name.get_ref());
            let Some(secret) = self.string(&key.key, &format!("{at}.key")) else {
                continue;
            };
            if secret.is_empty() {
                self.issue_at(
                    key.key.span().start,
                    &format!("{at}.key"),
                    "is empty; set it, e.g. key = \"${BATCH_JOB_KEY}\"",
                );
                continue;
            }
            if !seen.insert(secret.clone()) {
                // The message names the keys, never the value.
                self.issue_at(
                    key.key.span().start,
                    &format!("{at}.key"),
                    "is the same key as another in keys or server.api_keys; each client needs its own",
                );
                continue;
            }
            if key.routes.as_ref().is_some_and(|names| names.is_empty()) {
                self.issue_at(
                    key.key.span().start,
                    &format!("{at}.routes"),
                    "is empty: the key could call nothing; leave routes out to allow every route",
                );
                continue;
            }
            let allowed = key.routes.as_ref().map(|names| {
                let mut allowed = Vec::new();
                for route in names {
                    if routes.contains_key(route.get_ref().as_str()) {
                        allowed.push(route.get_ref().clone());
                    } else {
                        let defined: Vec<&str> =
                            routes.keys().map(|r| r.get_ref().as_str()).collect();
                        self.issue_at(
                            route.span().start,
                            &format!("{at}.routes"),
                            &format!(
                                "no route named {:?} (defined: {})",
                                route.get_ref(),
                                defined.join(", ")
                            ),
                        );
                    }
                }
                allowed.sort();
                allowed.dedup();
                allowed
            });
            let rate = self.rate(&key.rpm, &key.tpm, &at);
            let budget = key
                .budget
                .as_ref()
                .and_then(|budget| self.budget(budget, &format!("{at}.budget")));
            let mut client = ClientKey::new(Secret::new(secret));
            client.terms = KeyTerms {
                name: Some(name.get_ref().clone()),
                routes: allowed,
                rate,
                budget,
            };
            keys.push(Arc::new(client));
        }
        keys
    }

    /// `rpm` and `tpm` of `at`, each at least 1.
    pub(super) fn rate(
        &mut self,
        rpm: &Option<Spanned<u64>>,
        tpm: &Option<Spanned<u64>>,
        at: &str,
    ) -> Rate {
        let per_minute = |this: &mut Self, value: &Option<Spanned<u64>>, what: &str| {
            value.as_ref().and_then(|value| {
                this.positive(
                    value,
                    &format!("{at}.{what}"),
                    "must be at least 1 (leave it out for no limit)",
                )
            })
        };
        Rate {
            rpm: per_minute(self, rpm, "rpm"),
            tpm: per_minute(self, tpm, "tpm"),
        }
    }

    pub(super) fn limits(&mut self, raw: &RawLimits) -> LimitsConfig {
        let store = raw.store.as_ref().and_then(|store| {
            let value = self.string(store, "limits.store")?;
            // The URL may carry a password: the message names the key, never the value.
            let scheme_ok = value.starts_with("redis://") || value.starts_with("rediss://");
            if !scheme_ok || url::Url::parse(&value).is_err() {
                self.issue_at(
                    store.span().start,
                    "limits.store",
                    "is not a redis:// (or rediss://) URL; leave it out to keep the counters in memory",
                );
                return None;
            }
            Some(Secret::new(value))
        });
        let store_timeout = raw
            .store_timeout_ms
            .as_ref()
            .and_then(|ms| self.positive(ms, "limits.store_timeout_ms", "must be more than 0"))
            .map_or(LimitsConfig::DEFAULT_STORE_TIMEOUT, Duration::from_millis);
        LimitsConfig {
            store,
            store_timeout,
        }
    }
}
