//! What the gateway says about itself: `/v1/models` (routes, tiers and model ids in OpenAI's list
//! shape), `/healthz` (the process is alive) and `/readyz` (every route can be served).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde_json::{Value, json};

use super::App;
use crate::route::TargetKind;

pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let created = app.started_unix;
    let data: Vec<Value> = app
        .routes
        .listing()
        .iter()
        .map(|(id, kind)| {
            let owned_by = match kind {
                TargetKind::Route => "tierwise:route",
                TargetKind::Tier => "tierwise:tier",
                TargetKind::Model => "tierwise:model",
            };
            json!({ "id": id, "object": "model", "created": created, "owned_by": owned_by })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 once every route has at least one tier whose provider is up, else 503; either way the body
/// says which tiers each route can use now and each provider's state.
pub async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let mut ready = true;
    let mut routes = serde_json::Map::new();
    for route in &app.config.routes {
        let usable: Vec<&str> = route
            .chain
            .iter()
            .filter(|step| app.health.of(&step.tier.provider).is_up())
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
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "routes": routes,
        "providers": app.health.statuses(),
    });
    (status, Json(body))
}

pub async fn providers(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "providers": app.health.statuses() }))
}
