//! The HTTP surface: the router, the layers every request passes (request id, then client auth on
//! `/v1`), the listener with TCP_NODELAY, start-up (ledger, probes) and graceful shutdown (stop
//! accepting, finish in-flight requests, flush the ledger).

mod auth;
mod budgets;
mod count;
mod detach;
mod error;
mod feedback;
mod info;
mod kept;
mod page;
mod proxy;
mod relay;
mod reload;
mod snapshot;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::health::Health;
use crate::ledger::{LedgerError, LedgerHealth, LedgerWriter, Pricing, Spool, Store};
use crate::limits::budget;
use crate::limits::{Clock, Limits};
use crate::openai::Endpoint;
use crate::outcome::{Dispatcher, Outcomes};
use crate::quality::alert::Alerts;
use crate::quality::feedback::{FeedbackQueue, FeedbackWriter};
use crate::quality::shadow::{self, ShadowChecks};
use crate::quality::watch::Watches;
use crate::stored::{KeptTasks, StoredResponses};
use crate::upstream::{UpstreamError, Upstreams};

pub use error::ApiError;
pub use reload::{ReloadError, Reloaded};
pub use snapshot::{Snapshot, Version};

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-tierwise-request-id");

/// Everything a request needs, shared by every serving thread: what the config decides, in a
/// snapshot a reload swaps whole, and what lives for the process beside it. Each serving thread
/// gets its own copy naming its own upstream clients in the snapshot.
#[derive(Clone)]
pub struct App {
    /// What the config decides; a request loads it once ([`App::snapshot`]) and keeps it.
    pub live: Arc<ArcSwap<Snapshot>>,
    /// Which of the snapshot's sets of upstream clients this thread calls with.
    pub thread: usize,
    /// The answers of the routes that cache them, for the life of the process.
    pub cache: Arc<crate::cache::ResponseCache>,
    /// How a request's trace begins, where traces are exported (`[telemetry]`).
    pub tracing: Option<crate::traces::Tracing>,
    /// Read by reports and the admin API; the request path never touches it.
    pub store: Store,
    /// Whether the ledger is spooling, for `/readyz`.
    pub ledger_health: Arc<LedgerHealth>,
    /// Each shadowed route's quality state: which requests are sampled, which primaries demoted.
    pub watches: Arc<Watches>,
    /// Ground truth on its way to the ledger.
    pub feedback: FeedbackQueue,
    /// The Responses API's kept state, for the life of the process.
    pub stored: Arc<StoredResponses>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub started_unix: u64,
    /// Swaps the snapshot for the file's new content (`POST /admin/api/reload`, `SIGHUP`).
    pub reloads: Arc<reload::Reloads>,
}

impl App {
    /// `base`: the outcomes every snapshot's are made of (the queue, the consumers that live for
    /// the process); `threads`: how many serving threads the snapshots have clients for.
    pub fn new(
        snapshot: Snapshot,
        base: Outcomes,
        threads: usize,
        store: Store,
        watches: Arc<Watches>,
        feedback: FeedbackQueue,
    ) -> App {
        let cache = crate::cache::ResponseCache::new(&snapshot.config.cache);
        // Traces are set up for the process: `[telemetry]` needs a restart to change.
        let tracing = snapshot
            .config
            .telemetry
            .otlp
            .as_ref()
            .map(crate::traces::Tracing::new);
        // Restart-only: its writer and expiry run for the process (`[responses]` in reload.rs).
        let stored = StoredResponses::new(snapshot.config.responses, store.clone());
        let live = Arc::new(ArcSwap::from_pointee(snapshot));
        App {
            stored,
            cache,
            tracing,
            reloads: Arc::new(reload::Reloads::new(live.clone(), base, threads)),
            live,
            thread: 0,
            store,
            watches,
            feedback,
            ledger_health: Arc::default(),
            metrics: crate::metrics::handle(),
            started_unix: unix_now(),
        }
    }

    /// The snapshot a request runs on, from its start to its end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// This app on serving thread `thread`, which calls with that thread's upstream clients.
    fn on_thread(&self, thread: usize) -> App {
        App {
            thread,
            ..self.clone()
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    let endpoints = Endpoint::ALL.iter().fold(Router::new(), |api, &endpoint| {
        let api = api.route(
            &format!("/v1/{}", endpoint.path()),
            post(proxy::handler(endpoint)),
        );
        match endpoint.spec().count_tokens {
            Some(_) => api.route(
                &format!("/v1/{}/count_tokens", endpoint.path()),
                post(count::handler(endpoint)),
            ),
            None => api,
        }
    });
    let api = endpoints
        .route(
            &format!("/v1/{}/{{id}}", Endpoint::Responses.path()),
            get(kept::get).delete(kept::delete),
        )
        .route(
            &format!("/v1/{}/{{id}}/input_items", Endpoint::Responses.path()),
            get(kept::input_items),
        )
        .route("/v1/feedback", post(feedback::feedback))
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_client_key,
        ))
        .route_layer(middleware::from_fn(auth::refuse_browsers))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_allowed_host,
        ));
    let admin = Router::new()
        .route("/admin/api/providers", get(info::providers))
        .route("/admin/api/report", get(info::report))
        .route("/admin/api/costs", get(info::costs))
        .route("/admin/api/quality", get(info::quality))
        .route("/admin/api/daily", get(info::daily))
        .route("/admin/api/requests", get(info::requests))
        .route("/admin/api/budgets", get(budgets::budgets))
        .route("/admin/api/config", get(reload::config))
        .route(
            "/admin/api/reload",
            post(reload::reload).route_layer(middleware::from_fn(auth::refuse_browsers_bodyless)),
        )
        .route(
            "/admin/api/budgets/adjust",
            post(budgets::adjust).route_layer(middleware::from_fn(auth::refuse_browsers)),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_admin_key,
        ))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_allowed_host,
        ));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/", get(crate::dashboard::page))
        .route("/dashboard.js", get(crate::dashboard::script))
        .route("/dashboard.css", get(crate::dashboard::style))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .merge(
            Router::new()
                .route("/metrics", get(info::metrics))
                .route_layer(middleware::from_fn_with_state(
                    app.clone(),
                    auth::require_metrics_key,
                )),
        )
        .fallback(unknown_path)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// Every response, errors included, carries an id the client can quote and the ledger keys on.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId::generate();
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// Time-ordered, so ledger rows sort by arrival.
    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }
}

async fn unknown_path(request: Request) -> Response {
    let served: Vec<String> = Endpoint::ALL
        .iter()
        .map(|endpoint| format!("/v1/{}", endpoint.path()))
        .collect();
    ApiError::not_found(format!(
        "Unknown request URL: {} {}. This gateway serves {} and /v1/models.",
        request.method(),
        request.uri().path(),
        served.join(", ")
    ))
    .into_response()
}

/// A gateway listening on its socket and serving in the background.
pub struct Gateway {
    pub addr: SocketAddr,
    workers: workers::Workers,
    /// Probes, the budgets' resync and their alerts: stopped at shutdown.
    background: Vec<JoinHandle<()>>,
    shadow_checks: Option<ShadowChecks>,
    feedback_writer: FeedbackWriter,
    kept: Option<KeptTasks>,
    dispatcher: Dispatcher,
    /// The trace exporter, where `[telemetry]` has an endpoint.
    traces: Option<crate::traces::Exporter>,
    grace: std::time::Duration,
    reloads: Arc<reload::Reloads>,
}

impl Gateway {
    /// Opens the ledger, binds `config.server.listen` (port 0 picks a free one) on every serving
    /// thread, and starts probing providers. The ledger writer and the probes run on the caller's
    /// runtime; requests are served on the gateway's own threads.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, Clock::system()).await
    }

    /// The same, with budgets reading the month from `clock` rather than the system's.
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<Gateway, StartError> {
        let grace = config.server.shutdown_grace;
        let listen = config.server.listen;
        let threads = config.server.threads;
        let store = Store::connect(&config.ledger.url).await?;
        let pricing = Pricing::new(&config);
        for warning in pricing.warnings(&config) {
            tracing::warn!("{warning}");
        }
        let pricing = Arc::new(pricing);
        let writer = LedgerWriter::open(store.clone(), config.ledger.request_log.clone()).await;
        let ledger_health = Arc::new(LedgerHealth::default());
        let spool = Spool::open(
            &config.ledger.spool,
            config.ledger.spool_max_bytes,
            ledger_health.clone(),
        )
        .await;
        if !spool.is_empty() {
            tracing::warn!(
                records = spool.records(),
                spool = %spool.path().display(),
                "an earlier run left records in the ledger's spool; they are written now"
            );
        }
        let (queue, dispatcher) =
            Dispatcher::spawn(writer, spool, ledger_health.clone(), config.ledger.queue);
        let mut outcomes = Outcomes::new(queue, pricing.clone(), config.ledger.store_content);
        let watches = Arc::new(Watches::load(&config, &store).await?);
        let samples = watches.all().next().is_some().then(|| {
            let (samples, queued) = mpsc::channel(shadow::QUEUE);
            outcomes = outcomes
                .clone()
                .with_consumer(Arc::new(crate::outcome::Sampling(samples)));
            queued
        });
        let traces = match &config.telemetry.otlp {
            Some(otlp) => {
                let (traces, exporter) = crate::traces::Exporter::spawn(otlp)?;
                outcomes = outcomes.clone().with_consumer(Arc::new(traces));
                Some(exporter)
            }
            None => None,
        };
        let (feedback, feedback_writer) = FeedbackWriter::spawn(store.clone());
        let limits = Arc::new(Limits::with_clock(&config, clock));
        // Budgets start from the month's spend in the ledger, so a restart forgets nothing.
        budget::take_up_ledger(limits.budgets(), &store).await?;
        let threads = threads.max(1);
        let config = Arc::new(config);
        let health = Arc::new(Health::new(&config));
        let version = Version {
            number: 1,
            hash: config.source.hash.clone(),
            loaded_unix: unix_now(),
        };
        let snapshot = Snapshot::new(config, health, limits, &outcomes, threads, version)
            .map_err(StartError::Client)?;
        let mut app = App::new(snapshot, outcomes, threads, store, watches, feedback);
        app.ledger_health = ledger_health;
        let snapshot = app.snapshot();
        let alerts = Arc::new(Alerts::new(&snapshot.config));
        let mut background = Vec::new();
        let budgets = snapshot.limits.budgets();
        if !budgets.is_empty() {
            background.push(tokio::spawn(budget::keep_in_step(
                budgets.clone(),
                app.store.clone(),
            )));
            if let Some(crossings) = budgets.take_crossings() {
                background.push(tokio::spawn(crate::quality::alert::announce_budgets(
                    alerts.clone(),
                    app.store.clone(),
                    crossings,
                )));
            }
        }
        let shadow_checks = match samples {
            Some(samples) => Some(ShadowChecks::spawn(
                shadow::Checker {
                    watches: app.watches.clone(),
                    upstreams: Upstreams::new(&snapshot.config).map_err(StartError::Client)?,
                    health: snapshot.health.clone(),
                    pricing,
                    outcomes: snapshot.outcomes.clone(),
                    store: app.store.clone(),
                    alerts,
                    budgets: budgets.clone(),
                },
                samples,
            )),
            None => None,
        };
        app.reloads.start_probes().await;
        if snapshot.config.server.watch_config {
            background.extend(reload::watch(app.reloads.clone()));
        }
        let kept = app.stored.spawn();
        let workers = workers::Workers::spawn(&app, listen, threads)?;
        Ok(Gateway {
            reloads: app.reloads.clone(),
            addr: workers.addr,
            workers,
            background,
            shadow_checks,
            feedback_writer,
            kept,
            dispatcher,
            traces,
            grace,
        })
    }

    /// Reads the config's file again and serves it if it is valid (what `SIGHUP` does).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloads.reload().await
    }

    /// Stops accepting connections and waits for in-flight requests, at most the configured grace
    /// period (whatever is still running then is cut off); then writes every queued ledger record.
    pub async fn shutdown(self) {
        for task in &self.background {
            task.abort();
        }
        self.reloads.stop_probes().await;
        self.workers.shutdown(self.grace).await;
        if let Some(checks) = self.shadow_checks {
            checks.finish(self.grace).await;
        }
        self.feedback_writer.finish(LEDGER_FLUSH_DEADLINE).await;
        if let Some(kept) = self.kept {
            // Before the dispatcher, which closes the ledger's pool; within the grace, since a
            // database that is away would otherwise hold shutdown for the ledger's deadline too.
            kept.finish(self.grace.max(std::time::Duration::from_secs(1)))
                .await;
        }
        self.dispatcher.finish(LEDGER_FLUSH_DEADLINE).await;
        if let Some(traces) = self.traces {
            traces.finish(TRACE_FLUSH_DEADLINE).await;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long shutdown waits for the last spans to reach the trace collector.
const TRACE_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long shutdown waits for the ledger to store what is queued (a slow or unreachable database).
const LEDGER_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source} (server.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(UpstreamError),
    #[error(transparent)]
    Traces(#[from] crate::traces::TraceError),
}
