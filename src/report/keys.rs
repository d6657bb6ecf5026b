//! `tierwise report --by key`: each client key's product traffic in a window — calls, answered,
//! refused by a rate limit, errors, tokens and cost — by the key's name (`keys.NAME`), never the
//! key. Requests made with a key of the bare `server.api_keys` list, or with none, are one row.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Window, csv_field};
use crate::ledger::{KeySums, LedgerError, Store};

/// How reports name requests that came with no named key.
pub const UNNAMED: &str = "(unnamed)";

#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub from_ms: i64,
    pub to_ms: i64,
    pub keys: Vec<KeyLine>,
}

#[derive(Debug, Serialize)]
pub struct KeyLine {
    pub key: String,
    pub calls: u64,
    pub answered: u64,
    pub rate_limited: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Exact, in USD.
    pub cost_usd: String,
}

impl KeyReport {
    pub async fn load(
        store: &Store,
        window: Window,
        route: Option<&str>,
    ) -> Result<KeyReport, LedgerError> {
        let sums = store.by_key(window.from_ms, window.to_ms, route).await?;
        Ok(KeyReport {
            from_ms: window.from_ms,
            to_ms: window.to_ms,
            keys: sums.into_iter().map(KeyLine::from).collect(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("key,calls,answered,rate_limited,errors,tokens_in,tokens_out,cost_usd\n");
        for k in &self.keys {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                csv_field(&k.key),
                k.calls,
                k.answered,
                k.rate_limited,
                k.errors,
                k.tokens_in,
                k.tokens_out,
                k.cost_usd
            );
        }
        out
    }

    pub fn to_table(&self) -> String {
        if self.keys.is_empty() {
            return "No product requests in this window.\n".to_string();
        }
        let width = self
            .keys
            .iter()
            .map(|k| k.key.chars().count())
            .max()
            .unwrap_or(0)
            .max(3);
        let mut out = format!(
            "{:width$}  {:>8}  {:>8}  {:>12}  {:>7}  {:>11}  {:>11}  {:>12}\n",
            "key", "calls", "answered", "rate-limited", "errors", "tokens in", "tokens out", "cost"
        );
        for k in &self.keys {
            let _ = writeln!(
                out,
                "{:width$}  {:>8}  {:>8}  {:>12}  {:>7}  {:>11}  {:>11}  {:>12}",
                k.key,
                k.calls,
                k.answered,
                k.rate_limited,
                k.errors,
                k.tokens_in,
                k.tokens_out,
                format!("${}", k.cost_usd)
            );
        }
        out
    }
}

impl From<KeySums> for KeyLine {
    fn from(sums: KeySums) -> KeyLine {
        KeyLine {
            key: sums.key.unwrap_or_else(|| UNNAMED.to_string()),
            calls: sums.calls,
            answered: sums.answered,
            rate_limited: sums.rate_limited,
            errors: sums.errors,
            tokens_in: sums.tokens_in,
            tokens_out: sums.tokens_out,
            cost_usd: sums.cost.to_string(),
        }
    }
}
