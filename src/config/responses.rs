//! `[responses]`: whether the gateway keeps Responses API answers for their next turn
//! (`previous_response_id`) and for `GET /v1/responses/{id}`, and for how long.

use std::time::Duration;

use super::file::RawResponses;
use super::resolver::Resolver;

/// What the gateway keeps of Responses' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsesConfig {
    /// Responses are kept in the ledger's database, unless a request says `store: false`.
    /// Off by default: prompts and answers are stored only when the config says so.
    pub store: bool,
    /// How long a kept response can be continued or read; older ones are deleted.
    pub retention: Duration,
    /// The most a request waits for the database to give it the response it continues.
    pub lookup_timeout: Duration,
    /// The most earlier turns a request continued by `previous_response_id` may carry: each kept
    /// response holds only its own turn, so continuing one reads its whole chain.
    pub max_turns: usize,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            store: false,
            retention: ResponsesConfig::DEFAULT_RETENTION,
            lookup_timeout: ResponsesConfig::DEFAULT_LOOKUP_TIMEOUT,
            max_turns: ResponsesConfig::DEFAULT_MAX_TURNS,
        }
    }
}

impl ResponsesConfig {
    /// As long as OpenAI keeps a response.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
    /// A ledger on the same network answers a lookup by key in about a millisecond; one that has
    /// not answered in a second is down, and the client hears so rather than hang.
    pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
    /// A chain of 1,000 turns is read in one query well within the lookup's timeout (200 turns
    /// took a few milliseconds on SQLite and PostgreSQL: docs/endpoints.md), and a conversation
    /// that long is past any model's context anyway.
    pub const DEFAULT_MAX_TURNS: usize = 1000;
}

impl Resolver<'_> {
    pub(super) fn responses(&mut self, raw: &RawResponses) -> ResponsesConfig {
        let mut config = ResponsesConfig {
            store: raw.store.unwrap_or(false),
            ..ResponsesConfig::default()
        };
        if let Some(retention) = &raw.retention {
            match humantime::parse_duration(retention.get_ref()) {
                Ok(duration) if !duration.is_zero() => config.retention = duration,
                Ok(_) => self.issue_at(
                    retention.span().start,
                    "responses.retention",
                    "must be more than 0; set responses.store = false to keep nothing",
                ),
                Err(err) => self.issue_at(
                    retention.span().start,
                    "responses.retention",
                    &format!("is not a duration ({err}); write e.g. \"30d\", \"12h\" or \"90m\""),
                ),
            }
        }
        if let Some(ms) = raw
            .lookup_timeout_ms
            .as_ref()
            .and_then(|ms| self.positive(ms, "responses.lookup_timeout_ms", "must be more than 0"))
        {
            config.lookup_timeout = Duration::from_millis(ms);
        }
        if let Some(turns) = raw
            .max_turns
            .as_ref()
            .and_then(|turns| self.positive(turns, "responses.max_turns", "must be more than 0"))
        {
            config.max_turns = usize::try_from(turns).unwrap_or(usize::MAX);
        }
        config
    }
}
