//! tierwise: an OpenAI-compatible gateway that sends each task to the cheapest model tier that is
//! good enough for it and falls back when a tier fails.
//!
//! The modules, in the order a request meets them:
//!
//! - [`config`]: the TOML file, read at start-up and at each reload into resolved types (a route
//!   holds its tiers, a tier its provider); every mistake is reported here with its key and line.
//! - [`server`]: the HTTP surface — one single-threaded event loop per core on a shared port, router,
//!   request id, client auth, the request path of every endpoint (its routes registered from
//!   [`openai::Endpoint::ALL`]), the SSE relay, the one place errors become OpenAI-shaped
//!   answers (or the endpoint's own shape: Anthropic's on `/v1/messages`), counting a request's
//!   tokens without answering it (`count_tokens`: its own rate window, the provider's count where
//!   it has one, else the gateway's estimate); `/readyz`, `/metrics`, `/admin/api/*`; graceful
//!   shutdown; the snapshot of what the config decides, which a request reads once and holds to its
//!   end, and its reload (`SIGHUP`, `POST /admin/api/reload`), which swaps it whole and carries
//!   health and counters over by name.
//! - [`openai`]: the wire format every module may use — which endpoint a body is for and what that
//!   endpoint requires, changes per tier, counts and streams; usage as upstreams report it; for
//!   an endpoint a tier's server may not serve (Responses, Anthropic's Messages), its translation
//!   to and from chat.
//! - [`stored`]: the Responses API's state — responses kept for their next turn
//!   (`previous_response_id`) and for `GET`/`DELETE /v1/responses/{id}` and its `input_items`,
//!   per client key, in the ledger's database, one turn a row chained to the one before (a next
//!   turn reads the chain in one query), written in the background, expired after
//!   `responses.retention`.
//! - [`route`]: what the client's `model` names (route, tier or model id) and its tier chain; the
//!   chain run with fallback on retryable failures; the output contract that normalizes labels.
//! - [`limits`]: admission, between the route and its chain — whether a request may go on, what it
//!   reserves of its limits until it ends (the one reservation mechanism, the shadow checks' daily
//!   budget's too), and which tiers its chain passes over: rate limits per minute and monthly
//!   budgets that, once spent, move a route to its local tiers or refuse.
//! - [`cache`]: the response cache of the routes that opt in — the key (the request as every
//!   tier would receive it, scoped to the client key), the memory or Redis it is kept in, what may
//!   fill it (a consumer of finished requests), identical requests in flight together answered
//!   once (a waiter whose client leaves stops waiting) — read after admission, where a hit
//!   answers.
//! - [`health`]: per server of each provider, the circuit breaker and in-flight count and cap the
//!   chain consults before each attempt, the active probes that feed the breakers, and warm-up;
//!   the cap on a provider's own token counts out at once (`count_tokens`, which takes no slot);
//!   which of a provider's servers takes a call (least loaded of two random choices among those
//!   that may be called, load being calls in flight and the queue a server's vLLM metrics report,
//!   read off the request path); each server's calls, answered, failed or unfinished.
//! - [`upstream`]: the pooled HTTP client per server of each provider (hyper-util over rustls, through the
//!   provider's proxy where it has one), timeouts, failure classification, the wire format each
//!   provider speaks (OpenAI's and Azure's passed through; Anthropic's translated at one seam), and
//!   reading an upstream stream event by event, each event with the bytes it came as.
//! - [`outcome`]: the one place a request ends, however it ends — and where the gateway's own
//!   calls (shadow checks, eval) end too — producing the outcome that everything downstream
//!   receives; the consumers it hands each finished request to, on the request path (the limits'
//!   settlement, shadow sampling, the cache fill) and, through a queue, in background batches
//!   (the ledger with its spool, then the metrics).
//! - [`traces`]: each request as an OpenTelemetry trace (a span per request and per upstream
//!   call, GenAI semantic conventions), the W3C trace context taken from the client and passed
//!   upstream, and the OTLP exporter's task, fed by a consumer of finished requests; nothing
//!   runs without `[telemetry] otlp_endpoint`.
//! - [`ledger`]: the rows of every request and attempt (product traffic, shadow and eval calls),
//!   prices and exact cost in picodollars, token estimates, quality events and feedback, a month's
//!   spend and its corrections for budgets, the SQLite or PostgreSQL store and its writer.
//! - [`metrics`]: every Prometheus series, recorded in one place.
//! - [`dashboard`]: the page at `/`, its script and style compiled into the binary; it reads the
//!   admin API with the admin key the operator gives it.
//! - [`report`]: cost and savings per route read back from the ledger, each budget's month;
//!   `simulate` for workloads not yet deployed.
//! - [`quality`]: whether a cheaper tier answers like the reference — the scorers (label, JSON,
//!   text, tool calls, judge), the monitor's interval and episodes, the shadow checks that take
//!   sampled requests from [`outcome`] once their client has its answer, each route's demotion
//!   state the chain consults, alerts (budgets' too) and their webhook, feedback, and
//!   `tierwise eval`.
//!
//! [`demo`] runs all of it against two simulated providers in-process (`tierwise demo`).
//!
//! The command line (`tierwise serve`, `check`, `init`, `report`, `advise`, `simulate`, `eval`,
//! `budget`, `demo`) lives in the binary,
//! `src/main.rs` and `src/cli.rs`, the only place that uses `anyhow`.

pub mod cache;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod health;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod outcome;
pub mod quality;
pub mod report;
pub mod route;
pub mod server;
pub mod stored;
pub mod traces;
pub mod upstream;
