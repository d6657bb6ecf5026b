//! What the gateway says about itself: `/v1/models` (routes, tiers and model ids in OpenAI's list
//! shape), `/healthz` (the process is alive) and `/readyz` (every route can be served).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
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

pub async fn readyz(State(app): State<Arc<App>>) -> Json<Value> {
    let routes: Vec<&str> = app.config.routes.iter().map(|r| r.name.as_str()).collect();
    Json(json!({ "status": "ready", "routes": routes }))
}
