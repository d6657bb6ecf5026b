//! What the gateway says about itself: `/v1/models` (routes, tiers and model ids in OpenAI's list
//! shape, or in Anthropic's a page at a time for its clients), `/healthz` (the process is alive)
//! and `/readyz` (every route can be served).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::CallerKey;
use super::{ApiError, App};
use crate::config::TaskKind;
use crate::openai::Endpoint;
use crate::report::{self, Report};
use crate::route::TargetKind;

/// Whether a request comes from a client of Anthropic's API (its SDKs send `anthropic-version`
/// with every request), which reads the model list in Anthropic's shape.
fn speaks_anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

pub async fn models(
    State(app): State<Arc<App>>,
    caller: Option<axum::Extension<CallerKey>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    // A key limited to some routes may call only them (not a tier, nor a model id): it is shown
    // only them.
    let allowed = caller
        .as_ref()
        .and_then(|caller| caller.0.0.terms.routes.as_deref());
    let snapshot = app.snapshot();
    let listing = snapshot.routes.listing();
    let listed = listing.iter().filter(|(id, kind)| {
        allowed.is_none_or(|routes| *kind == TargetKind::Route && routes.contains(id))
    });
    if speaks_anthropic(&headers) {
        let ids: Vec<&str> = listed.map(|(id, _)| id.as_str()).collect();
        let page = anthropic_page(&ids, &query).map_err(|(param, message)| {
            ApiError::bad_body(message)
                .param(Some(param))
                .on(Endpoint::Messages)
        })?;
        let data: Vec<Value> = ids[page.range]
            .iter()
            .map(|id| anthropic_model(&app, id))
            .collect();
        let first = data.first().map(|model| model["id"].clone());
        let last = data.last().map(|model| model["id"].clone());
        return Ok(Json(json!({
            "data": data,
            "has_more": page.has_more,
            "first_id": first,
            "last_id": last,
        })));
    }
    let data: Vec<Value> = listed
        .map(|(id, kind)| model_object(&app, id, *kind))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// Which of the listed models an Anthropic client's page holds.
struct AnthropicPage {
    range: std::ops::Range<usize>,
    has_more: bool,
}

/// The page Anthropic's `GET /v1/models` query asks for: `limit` (1 to 1000, 20 when absent),
/// the models after `after_id` or before `before_id` — the SDK pages on with the last id (or,
/// paging back, the first) of the page before. A value it cannot be is the parameter and what is
/// wrong with it.
fn anthropic_page(
    ids: &[&str],
    query: &HashMap<String, String>,
) -> Result<AnthropicPage, (&'static str, String)> {
    const DEFAULT_LIMIT: usize = 20;
    const MAX_LIMIT: usize = 1000;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(limit) => limit
            .parse()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                let problem =
                    format!("limit: must be a whole number from 1 to {MAX_LIMIT}, not \"{limit}\"");
                ("limit", problem)
            })?,
    };
    let at = |param: &'static str| {
        query
            .get(param)
            .map(|cursor| {
                ids.iter().position(|id| id == cursor).ok_or_else(|| {
                    let problem = format!(
                        "{param}: names no model of this list: \"{cursor}\" (page on with the first_id or last_id of a page)"
                    );
                    (param, problem)
                })
            })
            .transpose()
    };
    let (range, has_more) =
        super::page::window(ids.len(), at("after_id")?, at("before_id")?, limit);
    Ok(AnthropicPage { range, has_more })
}

/// A route, tier or model id in Anthropic's model shape (`ModelInfo`): its `created_at` the
/// gateway's start, as RFC 3339, where Anthropic gives a model's release.
fn anthropic_model(app: &App, id: &str) -> Value {
    let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(app.started_unix);
    json!({
        "type": "model",
        "id": id,
        "display_name": id,
        "created_at": humantime::format_rfc3339_seconds(started).to_string(),
    })
}

/// `GET /v1/models/{id}`: one route, tier or model id, as `client.models.retrieve` expects it. Ids
/// may hold slashes (`mistralai/Mistral-7B-Instruct-v0.3`).
pub async fn model(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    if speaks_anthropic(&headers) {
        app.snapshot()
            .routes
            .kind_of(&id)
            .map_err(|err| ApiError::from(err).on(Endpoint::Messages))?;
        return Ok(Json(anthropic_model(&app, &id)));
    }
    let kind = app.snapshot().routes.kind_of(&id)?;
    Ok(Json(model_object(&app, &id, kind)))
}

/// A route, tier or model id in OpenAI's model shape, with one field of the gateway's own that
/// SDKs pass over: `endpoints`, the paths it may be called on.
fn model_object(app: &App, id: &str, kind: TargetKind) -> Value {
    let owned_by = match kind {
        TargetKind::Route => "tierwise:route",
        TargetKind::Tier => "tierwise:tier",
        TargetKind::Model => "tierwise:model",
    };
    json!({
        "id": id,
        "object": "model",
        "created": app.started_unix,
        "owned_by": owned_by,
        "endpoints": endpoints(app, id, kind),
    })
}

/// The paths `id` may be called on. A route's task kind says whether it embeds or answers in
/// text: an embedding route takes the endpoints whose answers hold no text, any other route those
/// whose answers do (chat completions, Responses, and any such endpoint added to
/// [`Endpoint::ALL`]). A tier or a model id is the client's own choice of model, which the gateway
/// cannot know to embed or not: every endpoint.
fn endpoints(app: &App, id: &str, kind: TargetKind) -> Vec<String> {
    let embeds = (kind == TargetKind::Route).then(|| {
        app.snapshot()
            .config
            .routes
            .iter()
            .any(|route| route.name == id && route.kind == TaskKind::Embedding)
    });
    Endpoint::ALL
        .iter()
        .filter(|endpoint| match embeds {
            Some(embeds) => embeds != endpoint.spec().answer_texts.is_some(),
            None => true,
        })
        .map(|endpoint| format!("/v1/{}", endpoint.path()))
        .collect()
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 once every route has at least one tier whose provider is up, else 503; either way the body
/// says which tiers each route can use now and each provider's state.
pub async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let snapshot = app.snapshot();
    let mut ready = true;
    let mut routes = serde_json::Map::new();
    for route in &snapshot.config.routes {
        let usable: Vec<&str> = route
            .chain
            .iter()
            .filter(|step| snapshot.health.of(&step.tier.provider).is_up())
            .map(|step| step.tier.name.as_str())
            .collect();
        ready &= !usable.is_empty();
        routes.insert(route.name.clone(), json!({ "usable_tiers": usable }));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // A ledger that spools is degraded, not down: requests are served and nothing is lost.
    let ledger = &app.ledger_health;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "routes": routes,
        "providers": snapshot.health.statuses(),
        "ledger": {
            "status": if ledger.degraded() { "degraded" } else { "ok" },
            "spooled_records": ledger.spooled(),
            "dropped_records": ledger.dropped(),
            "refused_records": ledger.refused(),
            "torn_spool_lines": ledger.torn(),
        },
        // A shared store that is away is degraded too: limits are enforced per replica.
        "limits_store": snapshot.limits.store_status(),
    });
    (status, Json(body))
}

pub async fn providers(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "providers": app.snapshot().health.statuses() }))
}

/// Prometheus text format: requests, tokens, latencies, fallbacks, cost in dollars, ledger
/// health, provider state, quality.
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let snapshot = app.snapshot();
    for status in snapshot.health.statuses() {
        crate::metrics::breaker_state(&status.name, status.breaker.state.as_str());
        if let Some(in_flight) = status.in_flight {
            crate::metrics::provider_in_flight(&status.name, in_flight);
        }
        for server in &status.servers {
            crate::metrics::server_breaker_state(
                &status.name,
                &server.name,
                server.breaker.state.as_str(),
                false,
            );
            crate::metrics::server_load(
                &status.name,
                &server.name,
                crate::metrics::ServerLoad {
                    in_flight: server.in_flight,
                    calls: server.calls,
                    failed: server.failed,
                    unfinished: server.unfinished,
                },
            );
        }
    }
    snapshot.limits.budgets().publish();
    let mut text = app.metrics.render();
    text.push_str(&crate::metrics::render_money());
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
}

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    since: Option<String>,
    from: Option<String>,
    to: Option<String>,
    route: Option<String>,
}

/// The numbers of `tierwise report`, as JSON, read across every replica sharing the ledger.
pub async fn report(
    State(app): State<Arc<App>>,
    Query(query): Query<ReportQuery>,
) -> Result<Json<Report>, ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let window = report::window(
        query.since.as_deref(),
        query.from.as_deref(),
        query.to.as_deref(),
        now,
    )
    .map_err(ApiError::bad_body)?;
    let report = Report::load(
        &app.snapshot().config,
        &app.store,
        window,
        query.route.as_deref(),
    )
    .await
    .map_err(|err| ApiError::internal(format!("cannot read the ledger: {err}")))?;
    if let Some(route) = query.route.as_deref()
        && report.routes.is_empty()
        && let Some(unknown) = report::unknown_route(&app.snapshot().config, route)
    {
        return Err(ApiError::not_found(unknown));
    }
    Ok(Json(report))
}

/// `GET /admin/api/quality`: each shadowed route's monitor as it stands — agreement, its interval,
/// alert and demotion state, the day's shadow spend — with its agreement per day over the last two
/// weeks and its latest episodes and switches, as every replica sharing the ledger sees them.
pub async fn quality(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    const DAYS: i64 = 14;
    let from_ms = crate::quality::watch::now_ms() - DAYS * 86_400_000;
    let unreadable = |err| ApiError::internal(format!("cannot read the ledger: {err}"));
    let mut routes = Vec::new();
    let mut watches: Vec<_> = app.watches.all().collect();
    watches.sort_by(|a, b| a.route.name.cmp(&b.route.name));
    for watch in watches {
        let standing = watch.standing();
        let days = app
            .store
            .daily_agreement(&standing.route, &standing.candidate, from_ms)
            .await
            .map_err(unreadable)?;
        let events = app
            .store
            .quality_events(&standing.route, 20)
            .await
            .map_err(unreadable)?;
        let mut entry = serde_json::to_value(&standing).unwrap_or(Value::Null);
        entry["days"] = json!(days);
        entry["events"] = json!(events);
        routes.push(entry);
    }
    Ok(Json(json!({ "routes": routes })))
}

#[derive(Debug, Deserialize)]
pub struct DailyQuery {
    days: Option<i64>,
}

/// `GET /admin/api/daily?days=14`: product traffic's calls and cost per UTC day, route and tier.
pub async fn daily(
    State(app): State<Arc<App>>,
    Query(query): Query<DailyQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = query.days.unwrap_or(14).clamp(1, 366);
    let (today, _) = crate::ledger::quality::utc_day(crate::quality::watch::now_ms());
    let from_ms = (today - days + 1) * 86_400_000;
    let rows = app
        .store
        .daily_cost(from_ms)
        .await
        .map_err(|err| ApiError::internal(format!("cannot read the ledger: {err}")))?;
    Ok(Json(
        json!({ "from_day": today - days + 1, "days": days, "rows": rows }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CostsQuery {
    since: Option<String>,
}

/// `GET /admin/api/costs?since=14d`: product traffic's calls and cost by route and tier, in buckets
/// as long as the traffic is old — minutes for the first two hours of a ledger, hours for its first
/// two days, UTC days after that — so a young ledger shows its shape instead of one bar.
pub async fn costs(
    State(app): State<Arc<App>>,
    Query(query): Query<CostsQuery>,
) -> Result<Json<Value>, ApiError> {
    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;
    let now = crate::quality::watch::now_ms();
    let window = report::window(
        Some(query.since.as_deref().unwrap_or("14d")),
        None,
        None,
        now,
    )
    .map_err(ApiError::bad_body)?;
    let unreadable = |err| ApiError::internal(format!("cannot read the ledger: {err}"));
    let first = app
        .store
        .span()
        .await
        .map_err(unreadable)?
        .map(|(first, _)| first);
    let from_ms = first.map_or(window.from_ms, |first| first.max(window.from_ms));
    let (bucket_ms, unit) = match now - from_ms {
        age if age <= 2 * HOUR => (MINUTE, "minute"),
        age if age <= 2 * DAY => (HOUR, "hour"),
        _ => (DAY, "day"),
    };
    let from_ms = from_ms.min(now) / bucket_ms * bucket_ms;
    let rows = app
        .store
        .cost_series(from_ms, bucket_ms)
        .await
        .map_err(unreadable)?;
    Ok(Json(json!({
        "from_ms": from_ms,
        "to_ms": now,
        "bucket_ms": bucket_ms,
        "unit": unit,
        "rows": rows,
    })))
}

#[derive(Debug, Deserialize)]
pub struct RecentQuery {
    limit: Option<i64>,
}

/// `GET /admin/api/requests?limit=50`: the latest requests, without content or keys. Without an
/// admin key any client key reads the admin API, and then sees only its own requests: their ids
/// are what feedback names, and another application's traffic is not its business.
pub async fn requests(
    State(app): State<Arc<App>>,
    caller: Option<axum::Extension<super::auth::CallerKey>>,
    Query(query): Query<RecentQuery>,
) -> Result<Json<Value>, ApiError> {
    let own = match app.snapshot().config.server.admin {
        crate::config::AdminAccess::ClientKeys => {
            Some(caller.map(|key| key.0.0.id.clone()).unwrap_or_default())
        }
        _ => None,
    };
    let rows = app
        .store
        .recent(query.limit.unwrap_or(50).clamp(1, 500), own.as_deref())
        .await
        .map_err(|err| ApiError::internal(format!("cannot read the ledger: {err}")))?;
    Ok(Json(json!({ "requests": rows })))
}
