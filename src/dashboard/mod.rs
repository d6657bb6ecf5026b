//! The operator's page at `/`: cost per day by route and tier, the saving against the all-API
//! baseline, the share served locally, agreement per route over time with its bar and alerts,
//! provider state and the latest requests, refreshed every ten seconds. Its HTML, script and style
//! are compiled into the binary (no CDN, works offline), the charts are SVG drawn by the script,
//! and it holds no data of its own: everything comes from `/admin/api/*` with the admin key, which
//! the operator types in (or passes as `/#key=…`, a fragment never sent to the server) and which
//! stays in the tab's session storage.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Only this origin's script and style run on the page, and it cannot be framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
