//! What budgets read from the ledger and keep in it. A month's spend (calendar month, UTC) is the
//! sum of `requests.cost_pusd` — every call of every purpose (product traffic and its fallbacks,
//! shadow checks, evals), by the tier that answered, at the price it was recorded with, so a later
//! price change rewrites nothing — per route, per key name (`key_name`) and in all, plus the corrections
//! operators made (`budget_adjustments`, one audit row each, only ever added). `budget_alerts`
//! holds the alerts announced, which lets one replica announce each once a month.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sqlx::Row;

use super::price::Picodollars;
use super::row::{LedgerRow, ledger_row};
use super::store::{LedgerError, Store};
use super::summary::{money, money_sum};
use crate::config::BudgetScope as Scope;

/// A calendar month in UTC, numbered from January 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(pub i64);

impl Month {
    /// The month `ts_ms` (Unix milliseconds) falls in.
    pub fn of(ts_ms: i64) -> Month {
        let date = time::OffsetDateTime::from_unix_timestamp(ts_ms.div_euclid(1000))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Month(i64::from(date.year() - 1970) * 12 + i64::from(u8::from(date.month())) - 1)
    }

    /// `2026-12`, as the CLI and the admin API take it.
    pub fn parse(text: &str) -> Option<Month> {
        let (year, month) = text.split_once('-')?;
        let (year, month): (i32, u8) = (year.parse().ok()?, month.parse().ok()?);
        let month = time::Month::try_from(month).ok()?;
        time::Date::from_calendar_date(year, month, 1).ok()?;
        Some(Month(
            i64::from(year - 1970) * 12 + i64::from(u8::from(month)) - 1,
        ))
    }

    fn year_month(self) -> (i32, time::Month) {
        let year = 1970 + self.0.div_euclid(12) as i32;
        let month = time::Month::try_from(self.0.rem_euclid(12) as u8 + 1)
            .expect("a remainder of 12 plus 1 is a month");
        (year, month)
    }

    /// Its first millisecond.
    pub fn start_ms(self) -> i64 {
        let (year, month) = self.year_month();
        time::Date::from_calendar_date(year, month, 1).map_or(0, |date| {
            date.midnight().assume_utc().unix_timestamp() * 1000
        })
    }

    /// The first millisecond of the next month.
    pub fn end_ms(self) -> i64 {
        Month(self.0 + 1).start_ms()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month) = self.year_month();
        write!(f, "{year:04}-{:02}", u8::from(month))
    }
}

/// Amounts of one month by what they cover: in all, per route, per key name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ByScope {
    pub all: Picodollars,
    pub routes: BTreeMap<String, Picodollars>,
    pub keys: BTreeMap<String, Picodollars>,
}

impl ByScope {
    pub fn of(&self, scope: &Scope) -> Picodollars {
        match scope {
            Scope::All => self.all,
            Scope::Route(name) => self.routes.get(name).copied().unwrap_or_default(),
            Scope::Key(name) => self.keys.get(name).copied().unwrap_or_default(),
        }
    }

    fn add(&mut self, scope: &Scope, amount: Picodollars) {
        let slot = match scope {
            Scope::All => &mut self.all,
            Scope::Route(name) => self.routes.entry(name.clone()).or_default(),
            Scope::Key(name) => self.keys.entry(name.clone()).or_default(),
        };
        *slot = Picodollars::saturating(i128::from(slot.0) + i128::from(amount.0));
    }
}

/// A month's spend as the ledger has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonthSpend {
    /// What the month's calls cost.
    pub calls: ByScope,
    /// What operators added to it (negative: took off).
    pub adjustments: ByScope,
    /// Each correction, oldest first: its budget and the spend just after it (as whoever made
    /// it saw the spend).
    pub corrections: Vec<(Scope, Picodollars)>,
    /// The first call of the month, if any: how much of the month the spend was seen over.
    pub first_ms: Option<i64>,
}

impl MonthSpend {
    /// Calls and adjustments together.
    pub fn total(&self, scope: &Scope) -> Picodollars {
        Picodollars::saturating(
            i128::from(self.calls.of(scope).0) + i128::from(self.adjustments.of(scope).0),
        )
    }
}

/// What a correction does to a month's spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Sets it back to zero: takes off what the ledger holds (calls and earlier corrections).
    Reset,
    /// Adds an amount (negative: takes it off).
    Add(Picodollars),
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Reset => "reset",
            Change::Add(_) => "adjust",
        }
    }
}

ledger_row! {
    /// One correction of a month's spend: the audit trail of `tierwise budget reset|adjust` and
    /// `POST /admin/api/budgets/adjust`.
    #[derive(Debug, Clone, PartialEq, Serialize)]
    pub struct AdjustmentRow in "budget_adjustments" {
        pub id: String,
        pub ts_ms: i64,
        /// `2026-12`.
        pub month: String,
        /// `all`, `route` or `key`.
        pub scope: String,
        /// The route's or key's name; empty for all API spend.
        pub name: String,
        /// `reset` or `adjust`.
        pub kind: String,
        /// Added to the month's spend, in picodollars.
        pub delta_pusd: i64,
        /// The month's spend just before, as whoever made the change saw it.
        pub spent_before_pusd: i64,
        pub reason: String,
        /// `cli`, or `admin` and the key's fingerprint.
        pub actor: String,
    }
}

/// A correction as whoever makes it describes it.
#[derive(Debug, Clone, Copy)]
pub struct Correction<'a> {
    pub month: Month,
    pub scope: &'a Scope,
    pub change: Change,
    pub reason: &'a str,
    /// `cli` and the user, or `admin` and the key's fingerprint.
    pub actor: &'a str,
}

/// The level of a budget alert: its `alert_at` share, or the whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    /// The spend reached the budget's `alert_at` share.
    AlertAt,
    /// The budget can no longer hold a request's worst case (or its spend reached it): requests
    /// move or are refused. The spend may then be short of the budget by up to a worst case and
    /// what requests in flight hold.
    Spent,
}

impl AlertLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertLevel::AlertAt => "alert_at",
            AlertLevel::Spent => "spent",
        }
    }

    fn parse(text: &str) -> Option<AlertLevel> {
        match text {
            "alert_at" => Some(AlertLevel::AlertAt),
            "spent" => Some(AlertLevel::Spent),
            _ => None,
        }
    }
}

ledger_row! {
    /// A budget alert announced; one per budget, month, level and the correction that armed
    /// the level again.
    #[derive(Debug, Clone, PartialEq)]
    pub struct AlertRow in "budget_alerts" {
        pub month: String,
        pub scope: String,
        pub name: String,
        pub level: String,
        pub ts_ms: i64,
        pub spent_pusd: i64,
        pub limit_pusd: i64,
        /// How many of the month's corrections of the budget the level was armed after.
        pub armed_after: i64,
    }
}

/// Requests a spent budget moved off one API tier (to a local one), in a window, by route: the
/// tier passed over first, and the tokens the requests used where they were served, which that
/// tier would have been paid for.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetMoves {
    pub route: Option<String>,
    pub tier: String,
    pub calls: u64,
    /// Of those, the ones a local tier answered.
    pub answered: u64,
    pub tokens_in: u64,
    pub tokens_cached: u64,
    pub tokens_out: u64,
}

impl Store {
    /// Product requests moved by a spent budget, by route and the API tier first passed over; and
    /// the requests a budget refused (429 `insufficient_quota`), by route.
    pub async fn budget_effects(
        &self,
        from_ms: i64,
        to_ms: i64,
        route: Option<&str>,
    ) -> Result<(Vec<BudgetMoves>, Vec<(Option<String>, u64)>), LedgerError> {
        let one_route = if route.is_some() {
            " AND r.route = $3"
        } else {
            ""
        };
        let sum = |column: &str| format!("CAST(COALESCE(SUM(r.{column}), 0) AS BIGINT)");
        let moved_sql = format!(
            "SELECT r.route AS route, a.tier AS tier, COUNT(*) AS calls, \
             CAST(COALESCE(SUM(CASE WHEN r.tier IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered, \
             {} AS tokens_in, {} AS tokens_cached, {} AS tokens_out \
             FROM attempts a JOIN requests r ON r.id = a.request_id \
             WHERE a.outcome = 'budget_spent' AND r.purpose = 'product' \
             AND r.ts_ms >= $1 AND r.ts_ms < $2{one_route} \
             AND a.seq = (SELECT MIN(b.seq) FROM attempts b WHERE b.request_id = a.request_id \
             AND b.outcome = 'budget_spent') \
             GROUP BY r.route, a.tier ORDER BY r.route, a.tier",
            sum("tokens_in"),
            sum("tokens_cached"),
            sum("tokens_out"),
        );
        let refused_sql = format!(
            "SELECT r.route AS route, COUNT(*) AS calls FROM requests r \
             WHERE r.error_kind = 'insufficient_quota' AND r.tier IS NULL AND r.purpose = 'product' \
             AND r.ts_ms >= $1 AND r.ts_ms < $2{one_route} GROUP BY r.route ORDER BY r.route"
        );
        fn window<'q>(
            sql: &'q str,
            from_ms: i64,
            to_ms: i64,
            route: Option<&str>,
        ) -> super::row::AnyQuery<'q> {
            let mut query = sqlx::query(sql).bind(from_ms).bind(to_ms);
            if let Some(route) = route {
                query = query.bind(route.to_string());
            }
            query
        }
        let count = |row: &sqlx::any::AnyRow, column: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
        };
        let mut moves = Vec::new();
        for row in window(&moved_sql, from_ms, to_ms, route)
            .fetch_all(self.reads())
            .await?
        {
            moves.push(BudgetMoves {
                route: row.try_get("route")?,
                tier: row.try_get("tier")?,
                calls: count(&row, "calls")?,
                answered: count(&row, "answered")?,
                tokens_in: count(&row, "tokens_in")?,
                tokens_cached: count(&row, "tokens_cached")?,
                tokens_out: count(&row, "tokens_out")?,
            });
        }
        let mut refused = Vec::new();
        for row in window(&refused_sql, from_ms, to_ms, route)
            .fetch_all(self.reads())
            .await?
        {
            refused.push((row.try_get("route")?, count(&row, "calls")?));
        }
        Ok((moves, refused))
    }

    /// The spend of `month` up to `to_ms` (rows a clock dated later do not count yet) and its
    /// adjustments.
    pub async fn month_spend(&self, month: Month, to_ms: i64) -> Result<MonthSpend, LedgerError> {
        let mut spend = MonthSpend::default();
        let rows = sqlx::query(&format!(
            "SELECT route, key_name, MIN(ts_ms) AS first_ms, {} FROM requests \
             WHERE ts_ms >= $1 AND ts_ms < $2 AND cost_pusd IS NOT NULL GROUP BY route, key_name",
            money_sum("cost_pusd", "spent")
        ))
        .bind(month.start_ms())
        .bind(to_ms.min(month.end_ms()))
        .fetch_all(self.reads())
        .await?;
        for row in &rows {
            let spent = money(row, "spent")?;
            spend.calls.add(&Scope::All, spent);
            if let Some(route) = row.try_get::<Option<String>, _>("route")? {
                spend.calls.add(&Scope::Route(route), spent);
            }
            if let Some(key) = row.try_get::<Option<String>, _>("key_name")? {
                spend.calls.add(&Scope::Key(key), spent);
            }
            let first: i64 = row.try_get("first_ms")?;
            spend.first_ms = Some(spend.first_ms.map_or(first, |known| known.min(first)));
        }
        let rows = sqlx::query(&format!(
            "SELECT scope, name, {} FROM budget_adjustments WHERE month = $1 GROUP BY scope, name",
            money_sum("delta_pusd", "delta")
        ))
        .bind(month.to_string())
        .fetch_all(self.reads())
        .await?;
        for row in &rows {
            let scope: String = row.try_get("scope")?;
            let name: String = row.try_get("name")?;
            if let Some(scope) = Scope::from_parts(&scope, &name) {
                spend.adjustments.add(&scope, money(row, "delta")?);
            }
        }
        for row in self.adjustments(month).await? {
            if let Some(scope) = Scope::from_parts(&row.scope, &row.name) {
                let after = i128::from(row.spent_before_pusd) + i128::from(row.delta_pusd);
                spend
                    .corrections
                    .push((scope, Picodollars::saturating(after)));
            }
        }
        Ok(spend)
    }

    /// Corrects a month's spend against a budget and returns the audit row it wrote. A reset
    /// takes off what the ledger holds at this moment; calls still on their way to it count after.
    pub async fn correct_budget(
        &self,
        now_ms: i64,
        correction: &Correction<'_>,
    ) -> Result<AdjustmentRow, LedgerError> {
        let before = self
            .month_spend(correction.month, i64::MAX)
            .await?
            .total(correction.scope);
        let delta = match correction.change {
            Change::Reset => Picodollars(-before.0),
            // Floored: a month's spend never goes below zero, which would silently raise the
            // budget; the audit row keeps the change made.
            Change::Add(amount) => Picodollars(amount.0.max(-before.0.max(0))),
        };
        let row = AdjustmentRow {
            id: uuid::Uuid::now_v7().to_string(),
            ts_ms: now_ms,
            month: correction.month.to_string(),
            scope: correction.scope.kind().to_string(),
            name: correction.scope.name().to_string(),
            kind: correction.change.as_str().to_string(),
            delta_pusd: delta.0,
            spent_before_pusd: before.0,
            reason: correction.reason.to_string(),
            actor: correction.actor.to_string(),
        };
        self.insert_one(&row).await?;
        Ok(row)
    }

    /// A month's corrections, oldest first.
    pub async fn adjustments(&self, month: Month) -> Result<Vec<AdjustmentRow>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM budget_adjustments WHERE month = $1 ORDER BY ts_ms, id",
            AdjustmentRow::COLUMNS.join(", ")
        ))
        .bind(month.to_string())
        .fetch_all(self.reads())
        .await?;
        Ok(rows
            .iter()
            .map(AdjustmentRow::read)
            .collect::<Result<_, _>>()?)
    }

    /// Stores an alert unless it was stored already; `true` when this call stored it (and so
    /// should announce it).
    pub async fn record_budget_alert(&self, row: &AlertRow) -> Result<bool, LedgerError> {
        self.insert_one(row).await
    }

    /// The alerts of a month already announced, as `(scope, level, armed_after)`.
    pub async fn budget_alerts(
        &self,
        month: Month,
    ) -> Result<Vec<(Scope, AlertLevel, u64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT scope, name, level, armed_after FROM budget_alerts WHERE month = $1",
        )
        .bind(month.to_string())
        .fetch_all(self.reads())
        .await?;
        let mut alerts = Vec::new();
        for row in &rows {
            let (scope, name, level): (String, String, String) = (
                row.try_get("scope")?,
                row.try_get("name")?,
                row.try_get("level")?,
            );
            let armed_after: i64 = row.try_get("armed_after")?;
            if let (Some(scope), Some(level)) =
                (Scope::from_parts(&scope, &name), AlertLevel::parse(&level))
            {
                alerts.push((scope, level, armed_after.max(0) as u64));
            }
        }
        Ok(alerts)
    }
}

#[cfg(test)]
mod tests {
    use super::super::row::RequestRow;
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        // 2026-12-31T23:59:59.999Z and the next millisecond.
        let last = 1_798_761_599_999;
        assert_eq!(Month::of(last).to_string(), "2026-12");
        assert_eq!(Month::of(last + 1).to_string(), "2027-01");
        assert_eq!(Month::of(last).end_ms(), last + 1);
        assert_eq!(Month::of(last + 1).start_ms(), last + 1);
        let february = Month::parse("2028-02").unwrap();
        assert_eq!(february.end_ms() - february.start_ms(), 29 * 86_400_000);
        assert_eq!(Month::parse("1970-01"), Some(Month(0)));
        assert_eq!(Month::of(-1).to_string(), "1969-12");
        for bad in ["2026-13", "2026", "26-1x", ""] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    fn call(id: &str, ts_ms: i64, route: Option<&str>, cost: Option<i64>) -> RequestRow {
        RequestRow {
            route: route.map(str::to_string),
            cost_pusd: cost.map(Picodollars),
            key_name: route
                .is_some_and(|route| route == "b")
                .then(|| "batch".to_string()),
            ..RequestRow::new(id.into(), ts_ms, "chat.completions".into())
        }
    }

    #[tokio::test]
    async fn a_months_spend_is_its_calls_and_its_adjustments() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let month = Month::parse("2026-12").unwrap();
        let start = month.start_ms();
        let rows = [
            call("before", start - 1, Some("a"), Some(1_000)),
            call("a1", start, Some("a"), Some(200)),
            call("a2", start + 5, Some("a"), Some(300)),
            call("b1", start + 9, Some("b"), Some(7)),
            call("none", start + 10, None, Some(11)),
            call("unpriced", start + 11, Some("a"), None),
            call("after", month.end_ms(), Some("a"), Some(1_000)),
        ];
        let rows: Vec<&RequestRow> = rows.iter().collect();
        store.insert(&rows, &[]).await.unwrap();
        let route = Scope::Route("a".into());
        let correct = |change| Correction {
            month,
            scope: &route,
            change,
            reason: "mispriced",
            actor: "cli",
        };
        let adjust = store
            .correct_budget(start + 20, &correct(Change::Add(Picodollars(-450))))
            .await
            .unwrap();
        assert_eq!(
            (
                adjust.delta_pusd,
                adjust.spent_before_pusd,
                adjust.kind.as_str()
            ),
            (-450, 500, "adjust")
        );
        let spend = store.month_spend(month, i64::MAX).await.unwrap();
        assert_eq!(spend.calls.all, Picodollars(518));
        assert_eq!(spend.calls.of(&Scope::Route("a".into())), Picodollars(500));
        assert_eq!(spend.total(&Scope::Route("a".into())), Picodollars(50));
        assert_eq!(spend.total(&Scope::Route("b".into())), Picodollars(7));
        assert_eq!(spend.total(&Scope::Key("batch".into())), Picodollars(7));
        assert_eq!(spend.total(&Scope::All), Picodollars(518));
        assert_eq!(spend.first_ms, Some(start));
        let early = store.month_spend(month, start + 6).await.unwrap();
        assert_eq!(early.calls.all, Picodollars(500));
        let reset = store
            .correct_budget(start + 30, &correct(Change::Reset))
            .await
            .unwrap();
        assert_eq!((reset.delta_pusd, reset.spent_before_pusd), (-50, 50));
        let spend = store.month_spend(month, i64::MAX).await.unwrap();
        assert_eq!(spend.total(&route), Picodollars(0));
        assert_eq!(
            spend.total(&Scope::All),
            Picodollars(518),
            "only the route's"
        );
        assert_eq!(
            store.adjustments(month).await.unwrap(),
            vec![adjust, reset],
            "every correction is kept"
        );
    }

    #[tokio::test]
    async fn an_alert_is_stored_once() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let month = Month::parse("2026-12").unwrap();
        let row = AlertRow {
            month: month.to_string(),
            scope: "route".into(),
            name: "a".into(),
            level: AlertLevel::AlertAt.as_str().into(),
            ts_ms: 1,
            spent_pusd: 8,
            limit_pusd: 10,
            armed_after: 0,
        };
        assert!(store.record_budget_alert(&row).await.unwrap());
        assert!(!store.record_budget_alert(&row).await.unwrap());
        // Armed again by a correction: stored once more.
        let again = AlertRow {
            armed_after: 1,
            ..row.clone()
        };
        assert!(store.record_budget_alert(&again).await.unwrap());
        assert!(!store.record_budget_alert(&again).await.unwrap());
        let mut alerts = store.budget_alerts(month).await.unwrap();
        alerts.sort();
        assert_eq!(
            alerts,
            vec![
                (Scope::Route("a".into()), AlertLevel::AlertAt, 0),
                (Scope::Route("a".into()), AlertLevel::AlertAt, 1)
            ]
        );
    }
}
