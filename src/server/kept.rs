//! `GET` and `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`: a kept
//! response as OpenAI returns it, its deletion, and the input items it answered, in the scope of
//! the client key that asks (another key's response is a 404, as OpenAI answers another
//! project's). What is kept is [`crate::stored`]'s.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::auth::CallerKey;
use super::{ApiError, App};

/// The scope a key's responses are kept in: its fingerprint; one scope without client keys.
pub(super) fn scope(key: Option<&CallerKey>) -> &str {
    key.map_or("", |key| key.0.id.as_str())
}

pub async fn get(
    State(app): State<Arc<App>>,
    key: Option<axum::Extension<CallerKey>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let body = app
        .stored
        .response(scope(key.as_deref()), &id)
        .await
        .map_err(|err| app.stored.unkept(err))?;
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

pub async fn delete(
    State(app): State<Arc<App>>,
    key: Option<axum::Extension<CallerKey>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.stored
        .forget(scope(key.as_deref()), &id)
        .await
        .map_err(|err| app.stored.unkept(err))?;
    let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/responses/{id}/input_items` (`responses.input_items.list`): the input items the
/// response answered — its conversation's turns before it included, each earlier turn's input
/// then its output — in OpenAI's list shape, a page at a time.
pub async fn input_items(
    State(app): State<Arc<App>>,
    key: Option<axum::Extension<CallerKey>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = Page::of(&query).map_err(BadPage::into_error)?;
    let items = app
        .stored
        .input_items(scope(key.as_deref()), &id)
        .await
        .map_err(|err| app.stored.unkept(err))?;
    let list = page.list(items).map_err(BadPage::into_error)?;
    Ok(axum::Json(list).into_response())
}

/// A page asked for wrongly: the query parameter and what is wrong with it.
struct BadPage(&'static str, String);

impl BadPage {
    fn into_error(self) -> ApiError {
        ApiError::bad_body(self.1).param(Some(self.0))
    }
}

/// Which page of a list is asked for, as OpenAI's lists take it.
struct Page {
    /// Newest first, OpenAI's default.
    descending: bool,
    limit: usize,
    after: Option<String>,
    before: Option<String>,
}

impl Page {
    const DEFAULT_LIMIT: usize = 20;
    const MAX_LIMIT: usize = 100;

    fn of(query: &HashMap<String, String>) -> Result<Page, BadPage> {
        let descending = match query.get("order").map(String::as_str) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(other) => {
                return Err(BadPage(
                    "order",
                    format!("'order' must be \"asc\" or \"desc\", not \"{other}\""),
                ));
            }
        };
        let limit = match query.get("limit") {
            None => Page::DEFAULT_LIMIT,
            Some(limit) => limit
                .parse()
                .ok()
                .filter(|limit| (1..=Page::MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    BadPage(
                        "limit",
                        format!(
                            "'limit' must be a whole number from 1 to {}, not \"{limit}\"",
                            Page::MAX_LIMIT
                        ),
                    )
                })?,
        };
        Ok(Page {
            descending,
            limit,
            after: query.get("after").cloned(),
            before: query.get("before").cloned(),
        })
    }

    /// The page of `items` (oldest first) asked for: the items after `after` and before `before`
    /// in the order asked, the nearest `limit` of them to the cursor.
    fn list(self, mut items: Vec<Value>) -> Result<Value, BadPage> {
        if self.descending {
            items.reverse();
        }
        let at = |cursor: &str, param: &'static str| {
            items
                .iter()
                .position(|item| item["id"] == cursor)
                .ok_or_else(|| {
                    BadPage(
                        param,
                        format!("'{param}' names no input item of this response: '{cursor}'"),
                    )
                })
        };
        let after = self
            .after
            .as_deref()
            .map(|id| at(id, "after"))
            .transpose()?;
        let before = self
            .before
            .as_deref()
            .map(|id| at(id, "before"))
            .transpose()?;
        let (page, has_more) = super::page::window(items.len(), after, before, self.limit);
        let page = &items[page];
        let first_id = page.first().map_or(Value::Null, |item| item["id"].clone());
        let last_id = page.last().map_or(Value::Null, |item| item["id"].clone());
        Ok(json!({
            "object": "list",
            "data": page,
            "first_id": first_id,
            "last_id": last_id,
            "has_more": has_more,
        }))
    }
}
