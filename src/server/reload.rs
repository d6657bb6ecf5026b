//! Reloading the config without a restart (`SIGHUP`, `POST /admin/api/reload`). The file is read
//! and checked as `tierwise check` checks it (the same [`Config::load`]); a file with mistakes is
//! refused with each one's key and line, and the config that served goes on serving. A good one
//! becomes a new [`Snapshot`] — health, rate-limit counts and budgets taken from the one before by
//! name — and is swapped in whole: a request already running keeps the snapshot it started with to
//! its end, the next one reads the new. Then the probes of the new snapshot's servers start and the
//! old ones stop.
//!
//! What the process bound at start (its listener and threads, the ledger and its writer, the
//! shared store, the budgets, the shadow checks, the cache's memory, the alerts) cannot change
//! live: a reload that changes one still applies the rest, and names each such setting as needing a
//! restart, in the log, in its answer and in `/admin/api/config` until the process restarts.
//!
//! One reload runs at a time: callers take turns on a lock, and signals that arrive while one runs
//! are one pending signal (tokio folds them), so a storm of them never piles reloads up; each
//! reload reads the file as it is when its turn comes, so the last one reads the last write.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::snapshot::{Snapshot, Version};
use super::{ApiError, App};
use crate::config::{AdminAccess, Config, ConfigError};
use crate::health;
use crate::outcome::Outcomes;
use crate::upstream::UpstreamError;

/// The reloads of one gateway: where the snapshot is swapped, and what a new one is built from.
pub struct Reloads {
    live: Arc<ArcSwap<Snapshot>>,
    /// The config the process started with, whose start-only settings stay in force.
    started: Arc<Config>,
    /// The queue to the ledger and the consumers that live for the process.
    base: Outcomes,
    threads: usize,
    /// The probes of the serving snapshot's servers, replaced by each reload; the lock makes
    /// reloads take turns (it is never taken on the request path).
    probes: Mutex<Vec<JoinHandle<()>>>,
    /// Reloads refused since start, and the last one's errors, for `/admin/api/config`.
    refused: std::sync::Mutex<(u64, Option<String>)>,
}

/// A reload that took, as its answer and the log give it.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub version: u64,
    pub hash: String,
    pub loaded_unix: u64,
    /// The file had not changed since the version serving: nothing was swapped.
    pub unchanged: bool,
    /// Settings that differ from those the process started with, and keep those until a restart.
    pub needs_restart: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the upstream HTTP clients of the new config: {0}")]
    Client(#[from] UpstreamError),
}

impl Reloads {
    pub fn new(live: Arc<ArcSwap<Snapshot>>, base: Outcomes, threads: usize) -> Reloads {
        Reloads {
            started: live.load().config.clone(),
            live,
            base,
            threads,
            probes: Mutex::new(Vec::new()),
            refused: std::sync::Mutex::default(),
        }
    }

    /// Starts the probes of the serving snapshot (at start-up).
    pub async fn start_probes(&self) {
        let snapshot = self.live.load_full();
        *self.probes.lock().await = health::spawn_probes(
            &snapshot.config,
            snapshot.health.clone(),
            snapshot.probe_upstreams().clone(),
            None,
        );
    }

    /// Stops the probes (at shutdown).
    pub async fn stop_probes(&self) {
        for task in self.probes.lock().await.drain(..) {
            task.abort();
        }
    }

    /// Reads the file the serving config came from and, if it is valid, serves it. Whatever
    /// refuses it — a mistake in the file, or clients that cannot be built from it (a TLS key
    /// that does not match its certificate) — is logged and counted the same, by every trigger.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut probes = self.probes.lock().await;
        let old = self.live.load_full();
        let reloaded = self.swap(&old, &mut probes).await;
        if let Err(err) = &reloaded {
            tracing::error!(
                version = old.version.number,
                hash = %old.version.hash,
                "reload refused; the configuration that served still serves: {err}"
            );
            if let Ok(mut refused) = self.refused.lock() {
                *refused = (refused.0 + 1, Some(err.to_string()));
            }
        }
        reloaded
    }

    async fn swap(
        &self,
        old: &Arc<Snapshot>,
        probes: &mut Vec<JoinHandle<()>>,
    ) -> Result<Reloaded, ReloadError> {
        let path = old.config.source.path.clone();
        // Reading the file and its prompt files is blocking I/O: off the serving threads.
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|join| {
                Err(ConfigError::Read {
                    path: old.config.source.path.clone(),
                    source: std::io::Error::other(join.to_string()),
                })
            })?;
        let needs_restart = needs_restart(&self.started, &config);
        if config.source.hash == old.version.hash {
            return Ok(Reloaded::of(&old.version, true, needs_restart));
        }
        let version = Version {
            number: old.version.number + 1,
            hash: config.source.hash.clone(),
            loaded_unix: super::unix_now(),
        };
        let health = Arc::new(old.health.carried_over(&config));
        let limits = Arc::new(old.limits.carried_over(&config));
        let config = Arc::new(config);
        let snapshot = Arc::new(Snapshot::new(
            config,
            health,
            limits,
            &self.base,
            self.threads,
            version,
        )?);
        self.live.store(snapshot.clone());
        for task in probes.drain(..) {
            task.abort();
        }
        *probes = health::spawn_probes(
            &snapshot.config,
            snapshot.health.clone(),
            snapshot.probe_upstreams().clone(),
            Some(&old.health),
        );
        let reloaded = Reloaded::of(&snapshot.version, false, needs_restart);
        tracing::info!(
            version = reloaded.version,
            hash = %reloaded.hash,
            routes = snapshot.config.routes.len(),
            tiers = snapshot.config.tiers.len(),
            providers = snapshot.config.providers.len(),
            "configuration reloaded"
        );
        if !reloaded.needs_restart.is_empty() {
            tracing::warn!(
                "{} changed and keep their values until a restart",
                reloaded.needs_restart.join(", ")
            );
        }
        Ok(reloaded)
    }

    /// The config the process started with: what its start-only settings (budgets among them)
    /// enforce until a restart.
    pub fn started(&self) -> &Arc<Config> {
        &self.started
    }

    /// How many reloads were refused since start, and why the last one was.
    pub fn refused(&self) -> (u64, Option<String>) {
        self.refused
            .lock()
            .map(|refused| refused.clone())
            .unwrap_or_default()
    }

    /// The settings of the serving config that differ from those in force since start.
    pub fn needs_restart(&self) -> Vec<&'static str> {
        needs_restart(&self.started, &self.live.load().config)
    }
}

impl Reloaded {
    fn of(version: &Version, unchanged: bool, needs_restart: Vec<&'static str>) -> Reloaded {
        Reloaded {
            version: version.number,
            hash: version.hash.clone(),
            loaded_unix: version.loaded_unix,
            unchanged,
            needs_restart,
        }
    }
}

/// The settings bound at start that `new` changes. Compared by their resolved values (`Debug`,
/// which masks secrets but not whether they differ in what they resolve to).
fn needs_restart(started: &Config, new: &Config) -> Vec<&'static str> {
    let differ =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (was, now) = (&started.server, &new.server);
    let shadows = |config: &Config| -> Vec<String> {
        config
            .routes
            .iter()
            .filter_map(|route| Some(format!("{}: {:?}", route.name, route.shadow.as_ref()?)))
            .collect()
    };
    let budgets = |config: &Config| -> Vec<String> {
        config
            .budgets()
            .map(|(scope, budget)| format!("{scope:?} {budget:?}"))
            .collect()
    };
    [
        ("server.listen", differ(&was.listen, &now.listen)),
        ("server.threads", differ(&was.threads, &now.threads)),
        (
            "server.watch_config",
            differ(&was.watch_config, &now.watch_config),
        ),
        (
            "server.max_connections",
            differ(&was.max_connections, &now.max_connections),
        ),
        (
            "server.header_timeout_ms",
            differ(&was.header_timeout, &now.header_timeout),
        ),
        (
            "server.write_timeout_ms",
            differ(&was.write_timeout, &now.write_timeout),
        ),
        (
            "server.shutdown_grace_ms",
            differ(&was.shutdown_grace, &now.shutdown_grace),
        ),
        ("[ledger]", differ(&started.ledger, &new.ledger)),
        (
            "limits.store",
            differ(
                &(&started.limits.store, started.limits.store_timeout),
                &(&new.limits.store, new.limits.store_timeout),
            ),
        ),
        ("budgets", differ(&budgets(started), &budgets(new))),
        (
            "routes.<name>.shadow",
            differ(&shadows(started), &shadows(new)),
        ),
        ("[cache]", differ(&started.cache, &new.cache)),
        ("[alerts]", differ(&started.alerts, &new.alerts)),
        ("[telemetry]", differ(&started.telemetry, &new.telemetry)),
        ("[responses]", differ(&started.responses, &new.responses)),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key)
    .collect()
}

/// How long the file must be quiet before a change is read: an editor's save is often several
/// writes (truncate, write, rename), and one reload of the finished file is wanted, not one each.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// With `server.watch_config`, reloads whenever the file changes, once it has been quiet for
/// [`SETTLE`]. The directory is watched, not the file, so a file replaced by a rename (as most
/// editors save) is still seen. A file caught half written is refused like any other mistake and
/// the next change reloads again. The watch is in place when this returns; its task runs until
/// aborted at shutdown, which drops the watcher.
pub fn watch(reloads: Arc<Reloads>) -> Option<JoinHandle<()>> {
    let path = reloads.started.source.path.clone();
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let file = path.file_name().map(ToOwned::to_owned);
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only what changes the file's content: its reading (an Access event, which the
            // reload's own read causes) or a touch of its metadata is no change.
            if let Ok(event) = event
                && changes_content(&event.kind)
                && event
                    .paths
                    .iter()
                    .any(|changed| changed.file_name() == file.as_deref())
            {
                let _ = changed.send(());
            }
        }) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::error!(
                    "server.watch_config: cannot watch {}: {err}; SIGHUP still reloads",
                    path.display()
                );
                return None;
            }
        };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if let Err(err) =
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
    {
        tracing::error!(
            "server.watch_config: cannot watch {}: {err}; SIGHUP still reloads",
            dir.display()
        );
        return None;
    }
    Some(tokio::spawn(async move {
        let _watching = watcher;
        // The content last seen, so that one change is one reload: a rewrite with the same bytes
        // (or events an editor sends for nothing) reloads nothing, and a file refused once is not
        // refused again until it changes.
        let mut seen = None;
        while changes.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.recv()).await {}
            let now = digest_of(path.clone()).await;
            if now == seen {
                continue;
            }
            seen = now;
            // Its outcome is logged where the reload runs.
            let _ = reloads.reload().await;
        }
    }))
}

/// Whether a watched event can mean the file's content changed: written, created, removed, or
/// renamed into place.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    matches!(
        kind,
        EventKind::Any
            | EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Any | ModifyKind::Data(_) | ModifyKind::Name(_))
    )
}

/// The SHA-256 of the file's bytes (`None` while it cannot be read), read off the serving threads.
async fn digest_of(path: std::path::PathBuf) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    tokio::task::spawn_blocking(move || std::fs::read(path).ok())
        .await
        .ok()
        .flatten()
        .map(|bytes| Sha256::digest(bytes).to_vec())
}

/// `POST /admin/api/reload`: the version now serving, or the new file's errors (422) while the
/// old one serves.
pub async fn reload(State(app): State<Arc<App>>) -> Result<Json<Reloaded>, ApiError> {
    if let AdminAccess::ClientKeys | AdminAccess::Closed = &app.snapshot().config.server.admin {
        return Err(ApiError::forbidden(
            "Reloading the config needs server.admin_key: without it any client key reads the admin API, and a client must not swap the config (SIGHUP reloads too).",
        ));
    }
    match app.reloads.reload().await {
        Ok(reloaded) => Ok(Json(reloaded)),
        Err(ReloadError::Config(err)) => Err(ApiError::reload_refused(err.to_string())),
        Err(err @ ReloadError::Client(_)) => Err(ApiError::reload_refused(err.to_string())),
    }
}

/// `GET /admin/api/config`: which config serves (its version, hash, when it was loaded, the file
/// it came from), the settings that wait for a restart, and the file's content, secrets masked.
pub async fn config(State(app): State<Arc<App>>) -> Json<Value> {
    let snapshot = app.snapshot();
    let version = &snapshot.version;
    let (refused, last_refusal) = app.reloads.refused();
    Json(json!({
        "version": version.number,
        "hash": version.hash,
        "loaded_unix": version.loaded_unix,
        "path": snapshot.config.source.path.display().to_string(),
        "needs_restart": app.reloads.needs_restart(),
        "reloads_refused": refused,
        "last_refusal": last_refusal,
        "config": &*snapshot.config.source.shown,
    }))
}
