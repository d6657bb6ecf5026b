//! The Responses API's state, kept by the gateway itself: with `[responses] store = true` an
//! answer is kept (unless its request says `store: false`) in the ledger's database, in the scope
//! of the client key that asked, and a request naming it in `previous_response_id` goes on from
//! it — whichever tier answered it and whichever answers now, since the gateway writes the turns
//! before into the request's `input` ([`crate::openai::responses::with_state`]) and no upstream
//! ever sees an id of the gateway's.
//!
//! Keeping never waits on the database: a kept response goes into this process's map of recent
//! ones and onto a queue that a background task writes in batches; it leaves the map once written.
//! A next turn that comes at once finds it in the map; another replica finds it in the database
//! (a lookup that finds nothing looks again for [`GRACE`], the time a write takes to land). A
//! lookup is the one database read on the request path, bounded by `responses.lookup_timeout_ms`;
//! a database that does not answer is a 503 that says so. Responses older than
//! `responses.retention` are not found, and a background task deletes them — but not a turn that
//! a younger one continues: a conversation lasts while its newest turn is within retention.
//!
//! Each kept response holds only its own turn — the input items its request sent and its answer
//! — and the id of the response it continued, so a conversation of n turns keeps n turns (it kept
//! about n²/2 when each row held its whole conversation). A next turn walks the chain back from
//! the response it names, in one query (at most `responses.max_turns` rows), and writes every turn
//! into its request. A chain missing a turn — deleted (or expired before this rule) — is not
//! continued with a hole in it: the request is refused as OpenAI refuses a response it does not
//! keep. The request carrying a conversation is still bounded by `server.max_body_bytes`.
//!
//! Every answer gets the gateway's own `resp_…` id, kept or not, a passed-through one too (the
//! relay writes it into every stream event, and `store` as the gateway kept it into those that
//! carry the response object: the upstream was told `store: false`, and may say anything): an
//! upstream's id is not the gateway's to vouch for. An answer not kept says `store: false`, and
//! one from the route's cache gets an id of its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::config::ResponsesConfig;
use crate::ledger::responses::KeptRow;
use crate::ledger::{LedgerError, Store};
use crate::openai::{Endpoint, RequestBody, RequestError, responses};

/// Responses waiting to be written. While the database is away the writer retries and the
/// queue fills; a response that finds it full is not kept (logged, counted in
/// `tierwise_responses_dropped_total`, and a whole answer says `store: false`).
const QUEUE: usize = 1024;
/// The most bytes of responses waiting to be written: each may hold a turn of up to
/// `server.max_body_bytes`, so the count alone would let a database that is away cost gigabytes.
const QUEUE_BYTES: usize = 64 << 20;
/// Responses written in one transaction.
const BATCH: usize = 64;
/// How long a lookup that finds nothing waits before it looks once more, for a response another
/// replica has just kept and is still writing. Once, so that a key asking for ids that do not
/// exist costs the database two reads each, not a poll.
const GRACE: Duration = Duration::from_millis(150);
/// How long the writer waits before it tries a batch again that the database did not take.
const RETRY: Duration = Duration::from_secs(1);

/// Why a request's state cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unknown, another key's, deleted or expired: OpenAI's words for all of them.
    #[error("Response with id '{0}' not found.")]
    NotFound(String),
    /// The same for the response a request continues: OpenAI's 400, whose code clients act on.
    #[error("Previous response with id '{0}' not found.")]
    PreviousNotFound(String),
    /// A turn before the response named is gone: its conversation is not carried with a hole.
    #[error(
        "Previous response with id '{id}' not found: an earlier turn of its conversation ('{missing}') was deleted or has expired (responses.retention). Start a new conversation with the turns that matter as `input` items."
    )]
    PreviousBroken { id: String, missing: String },
    /// The same, for listing a response's input items.
    #[error(
        "The input items of response '{id}' cannot be listed: an earlier turn of its conversation ('{missing}') was deleted or has expired (responses.retention)."
    )]
    Broken { id: String, missing: String },
    #[error(
        "'previous_response_id' continues more than {0} earlier turns (responses.max_turns). Start a new conversation with the turns that matter as `input` items."
    )]
    TooManyTurns(usize),
    /// The same for listing: a response the gateway made has at most `max_turns` turns before
    /// it, so this one was kept under a larger bound, or by hand.
    #[error(
        "The input items of response '{id}' cannot be listed: its conversation has more than {max} earlier turns (responses.max_turns)."
    )]
    TooManyTurnsToList { id: String, max: usize },
    #[error(
        "'{0}' needs the gateway to keep responses, and its configuration keeps none. Ask its operator to set `store = true` under [responses], or leave '{0}' out and send the whole conversation as `input` items."
    )]
    Off(&'static str),
    /// Not found where the configuration keeps no responses: the client is told why.
    #[error(
        "Response with id '{0}' not found: this gateway's configuration keeps no responses. Ask its operator to set `store = true` under [responses]."
    )]
    NotKept(String),
    #[error(
        "'previous_response_id' continues a conversation of {bytes} bytes with this input, more than one request may carry (server.max_body_bytes = {limit}). Start a new conversation with the turns that matter as `input` items."
    )]
    TooLong { bytes: usize, limit: usize },
    #[error(
        "the database that keeps responses (ledger.url) did not answer within {} ms (responses.lookup_timeout_ms); retry, or send the whole conversation as `input` items", .0.as_millis()
    )]
    Timeout(Duration),
    #[error(
        "the database that keeps responses (ledger.url) failed (see the gateway's log); retry, or send the whole conversation as `input` items"
    )]
    Unavailable,
    #[error("the kept response '{0}' cannot be read (see the gateway's log)")]
    Unreadable(String),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// A response in this process's map: written soon, or deleted before it was.
enum Recent {
    Pending(Arc<KeptRow>),
    Deleted,
}

/// The responses kept, for the life of the process.
pub struct StoredResponses {
    config: ResponsesConfig,
    store: Store,
    /// Kept here but not yet written; a deletion of one of them waits here for its write.
    recent: Mutex<HashMap<String, Recent>>,
    queue: mpsc::Sender<Arc<KeptRow>>,
    /// The bytes of the rows on the queue, at most [`QUEUE_BYTES`].
    queued_bytes: AtomicUsize,
    /// The queue's other end, until [`StoredResponses::spawn`] hands it to the writer.
    queued: Mutex<Option<mpsc::Receiver<Arc<KeptRow>>>>,
}

/// What a request carries on once its state is read.
#[derive(Default)]
pub struct Prepared {
    /// The body written anew: the turns before in its `input`, `store` said.
    pub body: Option<Bytes>,
    /// Its answer is to be kept, or told as not kept (`store: false` continuing a response).
    pub keep: Option<Keep>,
}

/// A request whose answer is to be kept, until it is answered; or, with `store: false` (or no
/// state kept at all), one whose answer is only told as the gateway's — its id, `store: false`,
/// the `previous_response_id` its request gave (a server it is passed through to saw neither) —
/// so that its client reads the same whichever tier answered.
pub struct Keep {
    stored: Arc<StoredResponses>,
    /// Whether the answer is kept: `false` for a request saying `store: false`.
    store: bool,
    /// The gateway's own id for the answer: an upstream's may repeat (a restart, a deterministic
    /// or hostile server) and would let one key's answer take another's place.
    id: String,
    scope: String,
    request_id: String,
    /// The input items the request itself sent.
    input: Vec<Value>,
    previous: Option<String>,
}

/// The background tasks: the writer and the deletion of expired responses.
pub struct KeptTasks {
    writer: JoinHandle<()>,
    reaper: JoinHandle<()>,
    stop: Arc<Notify>,
}

impl StoredResponses {
    pub fn new(config: ResponsesConfig, store: Store) -> Arc<StoredResponses> {
        let (queue, queued) = mpsc::channel(QUEUE);
        Arc::new(StoredResponses {
            config,
            store,
            recent: Mutex::default(),
            queue,
            queued_bytes: AtomicUsize::new(0),
            queued: Mutex::new(Some(queued)),
        })
    }

    /// Starts the writer and the deletion of expired responses; `None` if they run already.
    pub fn spawn(self: &Arc<Self>) -> Option<KeptTasks> {
        let queued = self.queued.lock().expect("never poisoned").take()?;
        let stop = Arc::new(Notify::new());
        Some(KeptTasks {
            writer: tokio::spawn(self.clone().write(queued, stop.clone())),
            reaper: tokio::spawn(reap(self.store.clone(), self.config.retention)),
            stop,
        })
    }

    /// Reads what `request` needs of the state, for a Responses request: the response it
    /// continues (`previous_response_id`, in `scope`), and whether its answer is kept. `body` is
    /// the request's bytes; the body written anew may be at most `max_body` bytes.
    pub async fn prepare(
        self: &Arc<Self>,
        request: &RequestBody<'_>,
        body: &[u8],
        scope: &str,
        request_id: &str,
        max_body: usize,
    ) -> Result<Prepared, StateError> {
        if request.endpoint() != Endpoint::Responses {
            return Ok(Prepared::default());
        }
        // Checked for their shape by the endpoint's validation already.
        let asked = request
            .field("store")
            .and_then(|store| serde_json::from_str::<Option<bool>>(store.get()).ok())
            .flatten();
        let previous = request
            .field("previous_response_id")
            .and_then(|id| serde_json::from_str::<Option<String>>(id.get()).ok())
            .flatten();
        // An answer not kept is still told as the gateway's: its own id and `store: false`,
        // whatever a server it was passed through to said; the body goes on as it came.
        let unkept = || Prepared {
            body: None,
            keep: Some(self.told(scope, request_id)),
        };
        if !self.config.store {
            if asked == Some(true) {
                return Err(StateError::Off("store"));
            }
            if previous.is_some() {
                return Err(StateError::Off("previous_response_id"));
            }
            return Ok(unkept());
        }
        // OpenAI's default: a response is kept unless the request says not to.
        let keep = asked != Some(false);
        if !keep && previous.is_none() {
            return Ok(unkept());
        }
        let before = match &previous {
            Some(id) => {
                let max = self.config.max_turns;
                let chain = self.chain(scope, id, max).await.map_err(|err| match err {
                    StateError::NotFound(id) => StateError::PreviousNotFound(id),
                    StateError::Broken { id, missing } => {
                        StateError::PreviousBroken { id, missing }
                    }
                    err => err,
                })?;
                let mut items = Vec::new();
                for row in chain.iter().rev() {
                    let (input, response) = read(row)?;
                    responses::carry(&mut items, input, &response);
                }
                Some(items)
            }
            None => None,
        };
        let continues = before.is_some();
        let (written, input) = responses::with_state(body, before, keep)?;
        if continues && written.len() > max_body {
            return Err(StateError::TooLong {
                bytes: written.len(),
                limit: max_body,
            });
        }
        Ok(Prepared {
            body: Some(Bytes::from(written)),
            // Here the answer is kept, or continues a response (`store: false`).
            keep: Some(Keep {
                stored: self.clone(),
                store: keep,
                id: responses::new_id("resp"),
                scope: scope.to_string(),
                request_id: request_id.to_string(),
                input,
                previous,
            }),
        })
    }

    /// A request whose answer is not kept and continues nothing: it is only told as the
    /// gateway's.
    fn told(self: &Arc<Self>, scope: &str, request_id: &str) -> Keep {
        Keep {
            stored: self.clone(),
            store: false,
            id: responses::new_id("resp"),
            scope: scope.to_string(),
            request_id: request_id.to_string(),
            input: Vec::new(),
            previous: None,
        }
    }

    /// `err`, saying why where the configuration keeps no responses (an id not found is then
    /// no surprise), as a request that asks to keep one is told.
    pub fn unkept(&self, err: StateError) -> StateError {
        match err {
            StateError::NotFound(id) if !self.config.store => StateError::NotKept(id),
            err => err,
        }
    }

    /// The response `id` kept in `scope`, as `GET /v1/responses/{id}` gives it.
    pub async fn response(&self, scope: &str, id: &str) -> Result<Bytes, StateError> {
        let row = self.within_timeout(self.walk(scope, id, 1)).await?;
        let row = row.first().ok_or(StateError::NotFound(id.to_string()))?;
        Ok(Bytes::from(row.response.clone()))
    }

    /// The input items the response `id` kept in `scope` answered, its conversation's turns
    /// before it included, oldest first, as `GET /v1/responses/{id}/input_items` lists them.
    pub async fn input_items(&self, scope: &str, id: &str) -> Result<Vec<Value>, StateError> {
        // Reading is not continuing: a response with `max_turns` turns before it is listed
        // (continuing it is what is refused).
        let max = self.config.max_turns;
        let chain = self
            .chain(scope, id, max + 1)
            .await
            .map_err(|err| match err {
                StateError::TooManyTurns(_) => StateError::TooManyTurnsToList {
                    id: id.to_string(),
                    max,
                },
                err => err,
            })?;
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        for (at, row) in chain.iter().enumerate().rev() {
            let (input, response) = read(row)?;
            // The response listed answered its own input, not its output.
            let answered = (at > 0).then_some(&response);
            responses::list_turn(&mut items, &mut seen, &row.id, input, answered);
        }
        Ok(items)
    }

    /// The response `id` kept in `scope` and every turn before it, newest first, at most `max`
    /// rows: the whole conversation it answered, or an error that says which turn is gone.
    async fn chain(
        &self,
        scope: &str,
        id: &str,
        max: usize,
    ) -> Result<Vec<Arc<KeptRow>>, StateError> {
        // One row more than may be continued tells a chain too long from one that is whole.
        let chain = self.within_timeout(self.walk(scope, id, max + 1)).await?;
        let Some(last) = chain.last() else {
            return Err(StateError::NotFound(id.to_string()));
        };
        if chain.len() > max {
            return Err(StateError::TooManyTurns(max));
        }
        match &last.previous_id {
            None => Ok(chain),
            Some(missing) => Err(StateError::Broken {
                id: id.to_string(),
                missing: missing.clone(),
            }),
        }
    }

    /// Bounds a read of the database by `responses.lookup_timeout_ms`.
    async fn within_timeout<T>(
        &self,
        read: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let timeout = self.config.lookup_timeout;
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Err(StateError::Timeout(timeout)))
    }

    /// The response `id` kept in `scope`, then the one it continued, and so on, newest first, at
    /// most `limit` rows: from this process's map while it has them, the rest from the database in
    /// one query. The walk stops where a response is not there (unknown, another scope's, deleted,
    /// expired); empty when `id` itself is not.
    async fn walk(
        &self,
        scope: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<Arc<KeptRow>>, StateError> {
        let mut chain: Vec<Arc<KeptRow>> = Vec::new();
        let mut wanted = Some(id.to_string());
        while let Some(next) = wanted.take_if(|_| chain.len() < limit) {
            match self.recent(scope, &next) {
                Ok(Some(row)) => {
                    wanted = row.previous_id.clone();
                    chain.push(row);
                }
                Ok(None) => {
                    wanted = Some(next);
                    break;
                }
                // Deleted while it waits to be written, or another scope's: the walk ends here.
                Err(_) => return Ok(chain),
            }
        }
        let Some(next) = wanted.filter(|_| chain.len() < limit) else {
            return Ok(chain);
        };
        // The response named must be within its retention; a turn before it, reached from the
        // map, need not (the reaper keeps it while a later turn is young).
        let since = if chain.is_empty() {
            now_ms().saturating_sub(duration_ms(self.config.retention))
        } else {
            i64::MIN
        };
        let mut again = true;
        let rows = loop {
            match self
                .store
                .kept_chain(&next, scope, since, limit - chain.len())
                .await
            {
                // Nothing yet: another replica may be writing it.
                Ok(rows) if rows.is_empty() && again => {
                    again = false;
                    tokio::time::sleep(GRACE).await;
                }
                Ok(rows) => break rows,
                Err(err) => {
                    tracing::warn!("cannot read a kept response from the ledger: {err}");
                    return Err(StateError::Unavailable);
                }
            }
        };
        // A row deleted while it waited to be written is in the database until the writer
        // deletes it too; until then its tombstone here says it is gone.
        let recent = self.recent.lock().expect("never poisoned");
        for row in rows {
            if matches!(recent.get(&row.id), Some(Recent::Deleted)) {
                break;
            }
            chain.push(Arc::new(row));
        }
        Ok(chain)
    }

    /// The response `id` of `scope` in this process's map; an error when it was deleted or is
    /// another scope's.
    fn recent(&self, scope: &str, id: &str) -> Result<Option<Arc<KeptRow>>, StateError> {
        let recent = self.recent.lock().expect("never poisoned");
        match recent.get(id) {
            Some(Recent::Pending(row)) if row.scope == scope => Ok(Some(row.clone())),
            Some(_) => Err(StateError::NotFound(id.to_string())),
            None => Ok(None),
        }
    }

    /// Deletes the response `id` of `scope`: at once from the database, or, while it waits to be
    /// written, once it has been.
    pub async fn forget(&self, scope: &str, id: &str) -> Result<(), StateError> {
        {
            let mut recent = self.recent.lock().expect("never poisoned");
            match recent.get(id) {
                Some(Recent::Pending(row)) if row.scope == scope => {
                    recent.insert(id.to_string(), Recent::Deleted);
                    return Ok(());
                }
                Some(_) => return Err(StateError::NotFound(id.to_string())),
                None => {}
            }
        }
        let timeout = self.config.lookup_timeout;
        match tokio::time::timeout(timeout, self.store.forget_response(id, Some(scope))).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(StateError::NotFound(id.to_string())),
            Ok(Err(err)) => {
                tracing::warn!("cannot delete a kept response from the ledger: {err}");
                Err(StateError::Unavailable)
            }
            Err(_) => Err(StateError::Timeout(timeout)),
        }
    }

    /// Puts a response in the map and on the writer's queue; never waits. Whether it was kept:
    /// not when the queue is full (by count or by bytes).
    fn keep(&self, row: KeptRow) -> bool {
        let row = Arc::new(row);
        let id = row.id.clone();
        let bytes = row.bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let full = before + bytes > QUEUE_BYTES && before > 0;
        // In the map before the writer can see it, so that the writer's removal comes after.
        if !full {
            self.recent
                .lock()
                .expect("never poisoned")
                .insert(id.clone(), Recent::Pending(row.clone()));
        }
        if full || self.queue.try_send(row).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            if !full {
                self.recent.lock().expect("never poisoned").remove(&id);
            }
            metrics::counter!("tierwise_responses_dropped_total").increment(1);
            tracing::error!(
                response = %id,
                "a response was not kept: the queue to the ledger is full (is the database down?); its next turn will not find it"
            );
            return false;
        }
        true
    }

    /// The writer: takes what is queued in batches until told to stop, then writes what is
    /// left and ends.
    async fn write(self: Arc<Self>, mut queued: mpsc::Receiver<Arc<KeptRow>>, stop: Arc<Notify>) {
        let mut stopping = false;
        loop {
            let first = if stopping {
                queued.recv().await
            } else {
                tokio::select! {
                    row = queued.recv() => row,
                    () = stop.notified() => {
                        stopping = true;
                        queued.close();
                        continue;
                    }
                }
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match queued.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            self.write_batch(&batch).await;
        }
    }

    /// Writes one batch, trying again while the database is away; then lets the map forget
    /// what was written, and deletes what was deleted while it waited.
    async fn write_batch(&self, batch: &[Arc<KeptRow>]) {
        let rows: Vec<&KeptRow> = batch.iter().map(Arc::as_ref).collect();
        let bytes: usize = rows.iter().map(|row| row.bytes()).sum();
        loop {
            match self.store.keep_responses(&rows).await {
                Ok(()) => break,
                // The pool closes only at shutdown: nothing more will be written.
                Err(LedgerError::Query(sqlx::Error::PoolClosed)) => {
                    tracing::error!(
                        "{} kept responses were not written: the ledger is closed",
                        rows.len()
                    );
                    break;
                }
                Err(err) if err.is_refusal() => {
                    // One row the database cannot hold must not keep the others out.
                    for row in &rows {
                        if let Err(err) = self.store.keep_responses(&[row]).await {
                            tracing::error!(response = %row.id, "the ledger refused a kept response: {err}");
                        }
                    }
                    break;
                }
                Err(err) => {
                    tracing::warn!(
                        "cannot write kept responses to the ledger: {err}; trying again in {} s",
                        RETRY.as_secs()
                    );
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let deleted: Vec<String> = {
            let mut recent = self.recent.lock().expect("never poisoned");
            let mut deleted = Vec::new();
            for row in batch {
                match recent.get(&row.id) {
                    Some(Recent::Pending(pending)) if Arc::ptr_eq(pending, row) => {
                        recent.remove(&row.id);
                    }
                    Some(Recent::Deleted) => deleted.push(row.id.clone()),
                    _ => {}
                }
            }
            deleted
        };
        for id in &deleted {
            if let Err(err) = self.store.forget_response(id, None).await {
                tracing::warn!(response = %id, "cannot delete a kept response from the ledger: {err}");
            }
        }
        // The tombstones go only now: until the row is gone from the database they answer 404.
        let mut recent = self.recent.lock().expect("never poisoned");
        for id in deleted {
            if matches!(recent.get(&id), Some(Recent::Deleted)) {
                recent.remove(&id);
            }
        }
    }
}

impl Keep {
    /// A whole answer: kept when it completed (or ran out of its budget), and returned as the
    /// client is to get it — the gateway's id, `store` as the gateway kept it and
    /// `previous_response_id` as the request said, where a server the request was passed through
    /// to (which kept nothing) said otherwise.
    pub fn answered(self, body: &[u8]) -> Option<Bytes> {
        let response: Value = serde_json::from_slice(body).ok()?;
        let response = self.keep(response)?;
        Some(Bytes::from(
            serde_json::to_vec(&response).expect("JSON values always serialize"),
        ))
    }

    /// A stream's last event's response: kept when it completed (or ran out of its budget).
    pub fn streamed(self, response: Value) {
        self.keep(response);
    }

    /// The id the client is given for the answer, in place of the upstream's.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the answer may come from, and go to, the route's cache: one neither kept nor
    /// continuing a response (a kept answer's id is its own, continued by the key that asked;
    /// another key's hit would carry an id it cannot continue).
    pub fn cacheable(&self) -> bool {
        !self.store && self.previous.is_none()
    }

    /// A stream event's data whose response object is this answer's, told as the gateway keeps
    /// it — its id, `store: true`, the `previous_response_id` its request gave — where the
    /// event said otherwise: a server the request was passed through to keeps nothing and saw
    /// neither (it got `store: false`). `None` when the event says so already, or has no response
    /// object.
    ///
    /// A response that ends `failed` or `cancelled` is not kept (only a whole answer is): its
    /// last event says `store: false`, though the events before it, sent before its end was
    /// known, said it would be, as OpenAI's say at their start.
    pub fn restate(&self, data: &str) -> Option<String> {
        let mut event: Value = serde_json::from_str(data).ok()?;
        let response = event.get_mut("response")?.as_object_mut()?;
        let ended_unkept = matches!(
            response.get("status").and_then(Value::as_str),
            Some("failed" | "cancelled")
        );
        let kept = [
            ("id", Value::String(self.id.clone())),
            ("store", Value::Bool(self.store && !ended_unkept)),
            (
                "previous_response_id",
                self.previous.clone().map_or(Value::Null, Value::String),
            ),
        ];
        if kept
            .iter()
            .all(|(name, value)| response.get(*name) == Some(value))
        {
            return None;
        }
        for (name, value) in kept {
            response.insert(name.into(), value);
        }
        Some(event.to_string())
    }

    /// The response told as the gateway's, and kept where it is to be and is whole (it
    /// completed, or ran out of its budget); `None` when it is no response object.
    fn keep(self, mut response: Value) -> Option<Value> {
        let status = response["status"].as_str()?;
        let whole = matches!(status, "completed" | "incomplete");
        let id = self.id;
        response["id"] = Value::String(id.clone());
        response["store"] = Value::Bool(self.store && whole);
        response["previous_response_id"] = self.previous.clone().map_or(Value::Null, Value::String);
        if !self.store || !whole {
            return Some(response);
        }
        let row = KeptRow {
            id,
            scope: self.scope,
            created_ms: now_ms(),
            request_id: self.request_id,
            previous_id: self.previous,
            input: Value::Array(self.input).to_string(),
            response: response.to_string(),
        };
        if !self.stored.keep(row) {
            response["store"] = Value::Bool(false);
        }
        Some(response)
    }
}

impl KeptTasks {
    /// Writes what is queued, within `deadline`, and stops deleting expired responses.
    pub async fn finish(self, deadline: Duration) {
        self.reaper.abort();
        self.stop.notify_one();
        let writer = self.writer.abort_handle();
        if tokio::time::timeout(deadline, self.writer).await.is_err() {
            writer.abort();
            tracing::error!(
                "kept responses were not all written within {} s; the rest are lost",
                deadline.as_secs()
            );
        }
    }
}

/// Deletes the responses older than `retention`, a few times per retention period (at most every
/// ten minutes), off the request path. A response is deleted one period after it expired, not at
/// once: a turn that continued it just before it expired is in some process's map until written,
/// where the reaper cannot see it, and must find the turns before it still there.
async fn reap(store: Store, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(600));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = now_ms().saturating_sub(duration_ms(retention + every));
        match store.forget_responses_before(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("deleted {n} kept responses past responses.retention"),
            Err(err) => tracing::warn!("cannot delete expired kept responses: {err}"),
        }
    }
}

/// A kept turn's input items and response, as JSON.
fn read(row: &KeptRow) -> Result<(Vec<Value>, Value), StateError> {
    let unreadable = |err: serde_json::Error| {
        tracing::error!(response = %row.id, "a kept response is not JSON: {err}");
        StateError::Unreadable(row.id.clone())
    };
    let input = serde_json::from_str(&row.input).map_err(unreadable)?;
    let response = serde_json::from_str(&row.response).map_err(unreadable)?;
    Ok((input, response))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(store: Store) -> Arc<StoredResponses> {
        let config = ResponsesConfig {
            store: true,
            ..ResponsesConfig::default()
        };
        StoredResponses::new(config, store)
    }

    /// A database that is away is an error that says so, not a 404 and not a hang.
    #[tokio::test]
    async fn a_database_that_is_away_is_unavailable_not_missing() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let stored = on(store.clone());
        store.close().await;
        let err = stored.chain("", "resp_x", 10).await.unwrap_err();
        assert!(matches!(err, StateError::Unavailable), "{err:?}");
        let err = stored.forget("", "resp_x").await.unwrap_err();
        assert!(matches!(err, StateError::Unavailable), "{err:?}");
    }

    /// A response deleted while it waits to be written is not found, and once the writer has
    /// written it, it is deleted from the database too.
    #[tokio::test]
    async fn a_response_deleted_before_it_is_written_stays_deleted() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let stored = on(store.clone());
        stored.keep(KeptRow {
            id: "resp_1".into(),
            scope: "key-a".into(),
            created_ms: now_ms(),
            request_id: "r1".into(),
            previous_id: None,
            input: "[]".into(),
            response: "{}".into(),
        });
        assert!(stored.chain("key-b", "resp_1", 10).await.is_err());
        stored.forget("key-a", "resp_1").await.unwrap();
        assert!(matches!(
            stored.chain("key-a", "resp_1", 10).await,
            Err(StateError::NotFound(_))
        ));
        let tasks = stored.spawn().unwrap();
        tasks.finish(Duration::from_secs(10)).await;
        assert_eq!(store.kept_responses().await.unwrap(), 0);
        assert!(stored.recent.lock().unwrap().is_empty());
    }
}
