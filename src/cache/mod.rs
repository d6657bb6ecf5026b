//! The response cache: a route that opts in (`routes.NAME.cache`) answers a request identical to
//! one it answered before from the stored answer, without calling a tier.
//!
//! Identical means the same bytes every tier of the route's chain would receive — model, messages
//! with the system prompt the route applies, tools, response_format, temperature, seed and every
//! other field — so a changed prompt, tool or parameter never hits; and, under the default scope,
//! the same client key, so one key never reads another's answers. The key is the SHA-256 of those
//! bytes: a collision-resistant hash, because a crafted request that collided with another key's
//! would read its answer (SHA-256 is already in the tree; hashing is ~2 µs per KB, beside the
//! upstream call it saves, and paid only on routes that cache).
//!
//! A request that samples (`n` > 1, or a temperature above 0 whether the client's or the tier's
//! default) is neither read nor filled unless the route says `nondeterministic = true`; a
//! client's `Cache-Control: no-cache` skips the read, `no-store` the read and the fill. Only a
//! whole, successful answer fills (see [`fillable`]); the fill is a consumer of finished requests
//! ([`crate::outcome::CacheFill`]), so it never holds the request up.
//!
//! Answers are kept in Redis for replicas where `[cache] store` says so ([`shared`]), else in
//! this process's memory, bounded in bytes (quick_cache: sharded, a lookup
//! takes one shard's read lock, so threads never queue behind one lock; eviction is CLOCK-Pro, an
//! LRU approximation that a burst of one-off requests does not flush), each with its expiry.

mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderMap;
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{CacheConfig, CacheScope, Route};
use crate::ledger::{Picodollars, RequestRow, Tokens};
use crate::openai::{Endpoint, RequestBody};

/// What a client's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache (a fresh answer still fills it).
    pub no_cache: bool,
    /// `no-store`: neither read nor keep this request's answer.
    pub no_store: bool,
}

impl Directives {
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let name = directive.split('=').next().unwrap_or("").trim();
                if name.eq_ignore_ascii_case("no-cache") {
                    directives.no_cache = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    directives.no_store = true;
                }
            }
        }
        directives
    }
}

/// Where a request stands with its route's cache.
pub enum Lookup {
    /// Not read: the route keeps no answers (or the request is one no cache may answer), the
    /// request samples, or the client said `no-cache`. The answer still fills the cache where the
    /// ticket is there (`no-cache` without `no-store`).
    Bypass(Option<Ticket>),
    /// Read, and not found: the answer fills the cache if the ticket is there (not after
    /// `no-store`).
    Miss(Option<Ticket>),
    Hit(Arc<Entry>),
    /// The client left while the request waited on an identical request's answer (the single
    /// flight): it ends here, unanswered, and nothing is sent upstream for it.
    Left,
}

impl Lookup {
    /// The one word `x-tierwise-cache`, `tierwise_cache_lookups_total`'s `result` and the trace's
    /// `tierwise.cache` say of the request: `hit`, `miss` (the cache was read and had nothing) or
    /// `bypass` (it was not read); none for a request whose client left before it had one.
    pub fn word(&self) -> Option<&'static str> {
        match self {
            Lookup::Bypass(_) => Some("bypass"),
            Lookup::Miss(_) => Some("miss"),
            Lookup::Hit(_) => Some("hit"),
            Lookup::Left => None,
        }
    }
}

/// What a missed request needs to fill the cache once it has its answer.
pub struct Ticket {
    key: Key,
    ttl: Duration,
    cache: Arc<ResponseCache>,
    /// This request leads its key's flight: identical requests that arrive meanwhile wait for its
    /// answer.
    flight: Option<Flight>,
}

/// A plain request that missed and went upstream, for the identical requests (same key: same
/// route, scope and bytes) that arrive before it ends: they wait for its answer instead of paying
/// for it again (single-flight). It ends with the request: handed the answer by the fill, or
/// dropped with a request that did not fill, which sends each waiter upstream on its own (each
/// whose client is still there: one whose client left stopped waiting then, see
/// [`Lookup::Left`]).
struct Flight {
    key: Key,
    answer: watch::Sender<Option<Arc<Entry>>>,
    cache: Arc<ResponseCache>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flying = self
            .cache
            .flying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flying
            .get(&self.key)
            .is_some_and(|waiting| waiting.same_channel(&self.answer.subscribe()))
        {
            flying.remove(&self.key);
        }
    }
}

/// Where a missed plain request stands with the flights of its key.
enum Boarding {
    Lead(Flight),
    Wait(watch::Receiver<Option<Arc<Entry>>>),
}

impl Ticket {
    /// The most a streamed answer's events may hold to be kept: recording stops past it.
    pub fn max_bytes(&self) -> usize {
        self.cache.max_entry
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("ttl", &self.ttl).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u8; 32]);

/// A kept answer and what the call that gave it was.
#[derive(Debug)]
pub struct Entry {
    pub answer: Stored,
    pub tier: String,
    pub provider: String,
    pub model: String,
    pub local: bool,
    pub tokens: Tokens,
    /// What the call cost: what each hit saves. `None` when its model has no price.
    pub cost: Option<Picodollars>,
    expires_at: tokio::time::Instant,
}

impl Entry {
    fn weight(&self) -> u64 {
        let answer = match &self.answer {
            Stored::Body(body) => body.len(),
            Stored::Events(events) => events.iter().map(|e| e.len() + 16).sum(),
        };
        (answer + self.tier.len() + self.provider.len() + self.model.len() + 128) as u64
    }
}

/// An answer as the client received it.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A whole JSON answer.
    Body(Bytes),
    /// A stream's events as the upstream framed them, `[DONE]` left out, the usage-only chunk
    /// among them (the replay drops it, as the relay does, for a client that did not ask).
    Events(Vec<Bytes>),
}

/// What a finished request leaves in the cache, taken by [`CacheFill`].
#[derive(Debug)]
pub struct Fill {
    pub ticket: Ticket,
    pub entry: Entry,
}

impl Fill {
    /// Keeps the answer: in memory, taking one shard's lock for a moment, or sent to the shared
    /// store by a task of its own. Never waits.
    pub fn keep(self) {
        let cache = self.ticket.cache.clone();
        cache.fill(self);
    }

    pub fn new(ticket: Ticket, answer: Stored, served: Served<'_>) -> Fill {
        let expires_at = tokio::time::Instant::now() + ticket.ttl;
        Fill {
            ticket,
            entry: Entry {
                answer,
                tier: served.tier.to_string(),
                provider: served.provider.to_string(),
                model: served.model.to_string(),
                local: served.local,
                tokens: served.tokens,
                cost: served.cost,
                expires_at,
            },
        }
    }
}

/// Who answered a request that fills the cache.
pub struct Served<'a> {
    pub tier: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub local: bool,
    pub tokens: Tokens,
    pub cost: Option<Picodollars>,
}

impl<'a> Served<'a> {
    /// Who answered, as the request's ledger row says, with its `tokens`.
    pub fn of(row: &'a RequestRow, tokens: Tokens) -> Served<'a> {
        Served {
            tier: row.tier.as_deref().unwrap_or_default(),
            provider: row.provider.as_deref().unwrap_or_default(),
            model: row.model.as_deref().unwrap_or_default(),
            local: row.local,
            tokens,
            cost: row.cost_pusd,
        }
    }
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Arc<Entry>> for Weigh {
    fn weight(&self, _: &Key, entry: &Arc<Entry>) -> u64 {
        entry.weight()
    }
}

/// The answers kept, for every route that caches.
pub struct ResponseCache {
    memory: quick_cache::sync::Cache<Key, Arc<Entry>, Weigh>,
    /// Where answers are kept instead of `memory` when `cache.store` is set.
    shared: Option<Arc<shared::SharedAnswers>>,
    /// The largest answer kept: an eighth of the cache, so that one answer cannot flush it.
    max_entry: usize,
    /// The flights in the air, by key (see [`Flight`]); the lock is held for a map operation,
    /// never across an await.
    flying: Mutex<HashMap<Key, watch::Receiver<Option<Arc<Entry>>>>>,
}

impl ResponseCache {
    pub fn new(config: &CacheConfig) -> Arc<ResponseCache> {
        // quick_cache sizes its table from the expected count: answers of ~4 KB.
        let items = (config.max_bytes / 4096).clamp(16, 1 << 20) as usize;
        let shared = config.store.as_ref().and_then(|url| {
            shared::SharedAnswers::start(url, config.store_timeout)
                .map_err(|err| tracing::error!("{err}; cached answers are kept in memory"))
                .ok()
        });
        Arc::new(ResponseCache {
            shared,
            memory: quick_cache::sync::Cache::with_weighter(items, config.max_bytes, Weigh),
            max_entry: (config.max_bytes / 8).min(usize::MAX as u64) as usize,
            flying: Mutex::default(),
        })
    }

    /// Reads `request`'s answer from `route`'s cache, if the route keeps answers and the request
    /// may use them. `key_id` is the client key's fingerprint (`None` on an open gateway).
    /// `client_left` completes once the client has gone: a request waiting on an identical one's
    /// answer stops waiting then, and one whose wait ended without an answer does not go on to
    /// call upstream for a client that is no longer there.
    pub async fn lookup(
        self: &Arc<Self>,
        route: &Route,
        key_id: Option<&str>,
        request: &RequestBody<'_>,
        passed: &[(http::HeaderName, http::HeaderValue)],
        directives: Directives,
        client_left: impl Future<Output = ()>,
    ) -> Lookup {
        let Some(config) = route.cache else {
            return Lookup::Bypass(None);
        };
        if !config.nondeterministic && samples(route, request) {
            return Lookup::Bypass(None);
        }
        let scope = match config.scope {
            CacheScope::Key => key_id.unwrap_or(""),
            CacheScope::Route => "",
        };
        let key = key_of(route, scope, request, passed);
        let ticket = |flight| Ticket {
            key,
            ttl: config.ttl,
            cache: self.clone(),
            flight,
        };
        // As RFC 9111 reads a request's directives: `no-cache`, do not answer from the cache (the
        // fresh answer may be kept); `no-store`, keep nothing of this exchange (a kept answer may
        // still answer it).
        if directives.no_cache {
            return Lookup::Bypass((!directives.no_store).then(|| ticket(None)));
        }
        if let Some(entry) = self.read(&key).await {
            return Lookup::Hit(entry);
        }
        if directives.no_store {
            return Lookup::Miss(None);
        }
        // A stream waiting on another would give its client nothing until that one ended: each
        // goes upstream.
        let flight = if request.stream {
            None
        } else {
            match self.board(key) {
                Boarding::Lead(flight) => Some(flight),
                Boarding::Wait(mut waiting) => {
                    let client_left = std::pin::pin!(client_left);
                    let mut client_left = client_left.fuse();
                    let answer = tokio::select! {
                        biased;
                        answer = waiting.wait_for(Option::is_some) => {
                            answer.ok().and_then(|answer| answer.clone())
                        }
                        () = &mut client_left => return Lookup::Left,
                    };
                    if let Some(entry) = answer {
                        return Lookup::Hit(entry);
                    }
                    // The request it waited on did not fill: this one goes upstream itself, and
                    // does not wait again (a failing upstream must not line identical requests
                    // up one behind another) — unless its client has gone meanwhile, which
                    // nothing would then be sent or charged for.
                    if (&mut client_left).now_or_never().is_some() {
                        return Lookup::Left;
                    }
                    None
                }
            }
        };
        Lookup::Miss(Some(ticket(flight)))
    }

    /// The answer kept under `key`, if any and not expired.
    async fn read(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(shared) = &self.shared {
            return shared.get(key).await.map(Arc::new);
        }
        match self.memory.get(key) {
            Some(entry) if entry.expires_at > tokio::time::Instant::now() => Some(entry),
            Some(_) => {
                self.memory.remove(key);
                None
            }
            None => None,
        }
    }

    /// Leads `key`'s flight, or joins the one in the air.
    fn board(self: &Arc<Self>, key: Key) -> Boarding {
        let mut flying = self.flying.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiting) = flying.get(&key) {
            return Boarding::Wait(waiting.clone());
        }
        let (answer, waiting) = watch::channel(None);
        flying.insert(key, waiting);
        Boarding::Lead(Flight {
            key,
            answer,
            cache: self.clone(),
        })
    }

    fn fill(&self, fill: Fill) {
        let Fill { mut ticket, entry } = fill;
        let entry = Arc::new(entry);
        if entry.weight() as usize <= self.max_entry {
            match &self.shared {
                Some(shared) => shared.put(ticket.key, &entry, ticket.ttl),
                None => {
                    self.memory.insert(ticket.key, entry.clone());
                    crate::metrics::cache_size(self.memory.weight(), self.memory.len());
                }
            }
        }
        // Kept first, then the flight lands: a request that arrives in between finds the answer.
        // Those waiting take it even when it was too large to keep.
        if let Some(flight) = ticket.flight.take() {
            flight.answer.send_replace(Some(entry));
        }
    }
}

/// The request as every tier of `route` would receive it, scoped, hashed. The route's name is in
/// it, so two routes whose chains send the same bytes keep their answers apart (each route's
/// answers are recorded against it).
fn key_of(
    route: &Route,
    scope: &str,
    request: &RequestBody<'_>,
    passed: &[(http::HeaderName, http::HeaderValue)],
) -> Key {
    let mut hash = Sha256::new();
    // Each part behind its length: no two different sets of parts hash the same bytes.
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    part(b"tierwise-cache-1");
    part(request.endpoint().spec().ledger_name.as_bytes());
    part(route.name.as_bytes());
    part(scope.as_bytes());
    for step in &route.chain {
        part(step.tier.name.as_bytes());
        part(&request.for_tier(step));
    }
    // The client's headers a tier may get with the request (Anthropic's betas and version) can
    // change its answer: a request with other betas is another request.
    for (name, value) in passed {
        part(name.as_str().as_bytes());
        part(value.as_bytes());
    }
    Key(hash.finalize().into())
}

/// Whether the request's answer differs from call to call by design: several choices, or a
/// temperature above 0 (the client's, else the primary tier's default). A request that sets no
/// temperature anywhere is taken at its word: it did not ask to sample.
fn samples(route: &Route, request: &RequestBody<'_>) -> bool {
    // Read as numbers, not integers: lenient servers take `"n": 2.0` as two choices.
    let n = request
        .field("n")
        .and_then(|n| serde_json::from_str::<Option<f64>>(n.get()).ok())
        .flatten()
        .unwrap_or(1.0);
    // A `null` temperature is no temperature: the tier's default is what the upstream gets.
    let temperature = request
        .field("temperature")
        .and_then(|value| serde_json::from_str::<Option<f64>>(value.get()).ok())
        .flatten()
        .or(route.chain[0].tier.temperature);
    n > 1.0 || temperature.is_some_and(|t| t > 0.0)
}

/// Whether a whole Responses answer may be kept: completed, or cut at its token limit (as a chat
/// answer that finished for `length` is), never one a content filter withheld, that failed or that
/// is still in progress. Streamed Responses are not kept.
fn responses_fillable(answer: &Stored) -> bool {
    #[derive(Deserialize)]
    struct Response<'a> {
        #[serde(borrow)]
        status: std::borrow::Cow<'a, str>,
        #[serde(default)]
        incomplete_details: Option<Incomplete<'a>>,
    }
    #[derive(Deserialize)]
    struct Incomplete<'a> {
        #[serde(borrow, default)]
        reason: Option<std::borrow::Cow<'a, str>>,
    }
    let Stored::Body(body) = answer else {
        return false;
    };
    serde_json::from_slice::<Response<'_>>(body).is_ok_and(|response| match &*response.status {
        "completed" => true,
        "incomplete" => response
            .incomplete_details
            .and_then(|details| details.reason)
            .is_some_and(|reason| reason == "max_output_tokens"),
        _ => false,
    })
}

/// Whether an answer may be kept: a chat completion whose every choice finished (`stop`,
/// `length`, `tool_calls`), never one cut short, refused by a content filter or reporting an
/// error; embeddings as they came (a 200 is whole).
pub fn fillable(endpoint: Endpoint, answer: &Stored) -> bool {
    if endpoint == Endpoint::Responses {
        return responses_fillable(answer);
    }
    if endpoint != Endpoint::ChatCompletions {
        return matches!(answer, Stored::Body(_));
    }
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow, default)]
        choices: Vec<Choice<'a>>,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        finish_reason: Option<std::borrow::Cow<'a, str>>,
    }
    let whole = |reason: &str| matches!(reason, "stop" | "length" | "tool_calls");
    match answer {
        Stored::Body(body) => serde_json::from_slice::<Answer<'_>>(body).is_ok_and(|answer| {
            answer.error.is_none()
                && !answer.choices.is_empty()
                && answer
                    .choices
                    .iter()
                    .all(|c| c.finish_reason.as_deref().is_some_and(whole))
        }),
        Stored::Events(events) => {
            let mut finished = false;
            for event in events {
                let Some(data) = event_data(event) else {
                    continue;
                };
                let Ok(chunk) = serde_json::from_str::<Answer<'_>>(&data) else {
                    continue;
                };
                if chunk.error.is_some() {
                    return false;
                }
                for choice in &chunk.choices {
                    match choice.finish_reason.as_deref() {
                        None => {}
                        Some(reason) if whole(reason) => finished = true,
                        Some(_) => return false,
                    }
                }
            }
            finished
        }
    }
}

/// The data of one SSE event as the upstream framed it: its `data:` lines joined.
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_read_in_any_case_among_other_directives() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            "max-age=0, No-Cache".parse().unwrap(),
        );
        assert_eq!(
            Directives::of(&headers),
            Directives {
                no_cache: true,
                no_store: false
            }
        );
        headers.append(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert!(Directives::of(&headers).no_store);
    }

    #[test]
    fn only_whole_answers_fill() {
        let body = |reason: &str| {
            Stored::Body(Bytes::from(format!(
                r#"{{"choices":[{{"index":0,"message":{{"content":"x"}},"finish_reason":"{reason}"}}]}}"#
            )))
        };
        let chat = Endpoint::ChatCompletions;
        assert!(fillable(chat, &body("stop")));
        assert!(fillable(chat, &body("tool_calls")));
        assert!(!fillable(chat, &body("content_filter")));
        let events = |last: &str| {
            Stored::Events(vec![
                Bytes::from_static(
                    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
                ),
                Bytes::from(format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":{last}}}]}}\n\n"
                )),
            ])
        };
        assert!(fillable(chat, &events("\"stop\"")));
        assert!(
            !fillable(chat, &events("null")),
            "a stream that never finished"
        );
        assert!(!fillable(chat, &events("\"content_filter\"")));
    }

    #[test]
    fn only_completed_responses_fill() {
        let response = |status: &str, reason: &str| {
            Stored::Body(Bytes::from(format!(
                r#"{{"object":"response","status":"{status}","incomplete_details":{reason},"output":[]}}"#
            )))
        };
        let responses = Endpoint::Responses;
        assert!(fillable(responses, &response("completed", "null")));
        assert!(fillable(
            responses,
            &response("incomplete", r#"{"reason":"max_output_tokens"}"#)
        ));
        assert!(!fillable(
            responses,
            &response("incomplete", r#"{"reason":"content_filter"}"#)
        ));
        assert!(!fillable(responses, &response("failed", "null")));
        assert!(!fillable(responses, &Stored::Events(Vec::new())));
    }
}
