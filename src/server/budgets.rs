//! `/admin/api/budgets`: each budget's month as this gateway counts it now (spend, what requests in
//! flight hold, share, the projected month-end spend) with the month's corrections; and
//! `POST /admin/api/budgets/adjust`, which corrects a month's spend with an audit row in the
//! ledger and counts it at once. Only the admin key (or an open admin API) may correct: a client
//! key that may read the admin API must not lift its own budget.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use crate::config::{AdminAccess, Budget, BudgetScope};
use crate::ledger::Picodollars;
use crate::ledger::budget::{Change, Correction, Month};
use crate::report::budget::{Live, figures};

#[derive(Debug, Deserialize)]
pub struct MonthQuery {
    month: Option<String>,
}

/// The month asked for, else the one `now_ms` is in; the message when it is not a month.
fn month_of(text: Option<&str>, now_ms: i64) -> Result<Month, String> {
    match text {
        None => Ok(Month::of(now_ms)),
        Some(text) => Month::parse(text)
            .ok_or_else(|| format!("month {text:?} is not a month such as 2026-12")),
    }
}

/// `GET /admin/api/budgets?month=2026-12`: this month by default, live; another month as the
/// ledger has it.
pub async fn budgets(
    State(app): State<Arc<App>>,
    Query(query): Query<MonthQuery>,
) -> Result<Json<Value>, ApiError> {
    let budgets = app.snapshot().limits.budgets().clone();
    let now = budgets.now_ms();
    let month = month_of(query.month.as_deref(), now).map_err(ApiError::bad_body)?;
    let unreadable = |err| ApiError::internal(format!("cannot read the ledger: {err}"));
    let spend = app
        .store
        .month_spend(month, now)
        .await
        .map_err(unreadable)?;
    let adjustments = app.store.adjustments(month).await.map_err(unreadable)?;
    let current = month == Month::of(now);
    let live = |scope: &BudgetScope| {
        current
            .then(|| budgets.live(scope))
            .flatten()
            .map(|(spent, reserved)| Live { spent, reserved })
    };
    let as_of = if current { now } else { month.end_ms() };
    Ok(Json(json!({
        "month": month.to_string(),
        "now_ms": now,
        "budgets": figures(&app.snapshot().config, month, &spend, as_of, &live),
        "adjustments": adjustments,
    })))
}

/// A correction as the admin API takes it: `{"scope": "route", "name": "summarize", "usd": -12.5,
/// "reason": "…"}`, or `"reset": true` in place of `usd`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    scope: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    usd: Option<f64>,
    #[serde(default)]
    reset: bool,
    reason: String,
    month: Option<String>,
}

/// `POST /admin/api/budgets/adjust`.
pub async fn adjust(
    State(app): State<Arc<App>>,
    body: Result<Json<Adjust>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // A body that does not read is answered in OpenAI's shape, naming what was wrong (a missing
    // "reason", an unknown field), not with axum's plain text.
    let Json(body) = body.map_err(|rejection| {
        ApiError::bad_body(format!(
            "{}; send {{\"scope\", \"name\", \"usd\" or \"reset\": true, \"reason\"}}",
            rejection.body_text()
        ))
    })?;
    let actor = match &app.snapshot().config.server.admin {
        AdminAccess::Key(key) => format!("admin:{}", key.id),
        AdminAccess::Open => "admin:open".to_string(),
        AdminAccess::ClientKeys | AdminAccess::Closed => {
            return Err(ApiError::forbidden(
                "Correcting a budget needs server.admin_key: without it any client key reads the admin API, and a client must not lift its own budget.",
            ));
        }
    };
    let scope = BudgetScope::from_parts(&body.scope, &body.name)
        .filter(|scope| (*scope == BudgetScope::All) == body.name.is_empty())
        .ok_or_else(|| {
            ApiError::bad_body(
                "scope must be \"all\" (without a name), or \"route\" or \"key\" with its name"
                    .into(),
            )
        })?;
    if !app
        .snapshot()
        .config
        .budgets()
        .any(|(configured, _)| configured == scope)
    {
        return Err(ApiError::not_found(format!(
            "{scope} has no budget in this gateway's configuration"
        )));
    }
    let change = match (body.usd, body.reset) {
        (Some(usd), false) if usd.is_finite() && usd.abs() <= Budget::MAX_USD => {
            Change::Add(Picodollars::from_usd(usd))
        }
        (None, true) => Change::Reset,
        (Some(usd), false) => {
            return Err(ApiError::bad_body(format!(
                "\"usd\" must be a number of dollars from -{max} to {max}, not {usd}",
                max = Budget::MAX_USD
            )));
        }
        _ => {
            return Err(ApiError::bad_body(
                "give either \"usd\" (dollars added to the month's spend; negative takes them off) or \"reset\": true".into(),
            ));
        }
    };
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_body(
            "\"reason\" is required: it is kept in the audit row".into(),
        ));
    }
    let budgets = app.snapshot().limits.budgets().clone();
    let now = budgets.now_ms();
    let month = month_of(body.month.as_deref(), now).map_err(ApiError::bad_body)?;
    let row = app
        .store
        .correct_budget(
            now,
            &Correction {
                month,
                scope: &scope,
                change,
                reason: body.reason.trim(),
                actor: &actor,
            },
        )
        .await
        .map_err(|err| ApiError::internal(format!("cannot store the correction: {err}")))?;
    budgets.corrected(&scope, month, Picodollars(row.delta_pusd));
    // The ledger's account now, with the correction, to the count every replica shares (where
    // there is one), so that the others judge by it at once, not at their next resync.
    if month == Month::of(now)
        && let Err(err) = crate::limits::budget::take_up_ledger(&budgets, &app.store).await
    {
        tracing::warn!(
            "cannot read the month back after a correction: {err}; it is taken up at the next resync"
        );
    }
    tracing::warn!(budget = %scope, month = %month, delta = %Picodollars(row.delta_pusd), reason = %row.reason, actor = %row.actor, "budget corrected");
    Ok(Json(json!({ "adjustment": row })))
}
