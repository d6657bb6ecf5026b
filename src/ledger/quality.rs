//! What the quality checks keep in the ledger besides their calls' rows, and read back: each
//! route's monitor episodes and tier switches (`quality_events`), the ground truth applications
//! send (`feedback`), and the reads that let a restarted gateway, or another replica, take up the
//! same view: the latest scored samples, the latest episode and switch, the day's shadow spend.
//!
//! Agreement is kept in parts per million, so sums are exact integers in either database.

use serde::Serialize;
use sqlx::Row;

use super::price::Picodollars;
use super::store::{LedgerError, Store};
use super::summary::{money, money_sum};

/// One change of a route's quality state, as stored and as `/admin/api/quality` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityEvent {
    pub route: String,
    /// The tier whose answers are judged.
    pub candidate: String,
    /// 1, 2, … per route and candidate: two replicas that see the same change write the same
    /// number, and only one lands.
    pub seq: i64,
    pub ts_ms: i64,
    pub event: EventKind,
    pub model: String,
    pub agreement_ppm: i64,
    pub low_ppm: i64,
    pub high_ppm: i64,
    pub samples: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The whole interval fell below the bar.
    AlertFired,
    /// The whole interval is back above the bar.
    AlertCleared,
    /// The route stopped serving from the candidate.
    Demoted,
    /// The route serves from the candidate again (or for the first time).
    Promoted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AlertFired => "alert_fired",
            EventKind::AlertCleared => "alert_cleared",
            EventKind::Demoted => "demoted",
            EventKind::Promoted => "promoted",
        }
    }

    fn parse(text: &str) -> Option<EventKind> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// The latest stored state of a route's candidate: where episodes and switches stand.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoredState {
    /// The highest sequence number stored.
    pub seq: i64,
    /// The latest alert event, if any.
    pub alert: Option<EventKind>,
    /// The latest switch, if any.
    pub switch: Option<EventKind>,
}

/// One UTC day of a candidate's scored samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// Days since 1970-01-01.
    pub day: i64,
    pub samples: u64,
    pub agreement_ppm: i64,
}

/// Ground truth for one request, as the application sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub request_id: String,
    pub ts_ms: i64,
    /// The truth as JSON: `{"label": …}`, `{"value": …}`, `{"score": …}` or `{"correct": …}`.
    pub truth: String,
}

/// A UTC day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Stores `event` unless its sequence number is taken; `true` when this call stored it (and so
    /// should announce it).
    pub async fn record_event(&self, event: &QualityEvent) -> Result<bool, LedgerError> {
        let done = sqlx::query(
            "INSERT INTO quality_events (route, candidate, seq, ts_ms, event, model, agreement_ppm, \
             low_ppm, high_ppm, samples) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
        )
        .bind(event.route.clone())
        .bind(event.candidate.clone())
        .bind(event.seq)
        .bind(event.ts_ms)
        .bind(event.event.as_str())
        .bind(event.model.clone())
        .bind(event.agreement_ppm)
        .bind(event.low_ppm)
        .bind(event.high_ppm)
        .bind(event.samples)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Where a route's candidate stands: its latest sequence number, alert and switch.
    pub async fn quality_state(
        &self,
        route: &str,
        candidate: &str,
    ) -> Result<StoredState, LedgerError> {
        let rows = sqlx::query(
            "SELECT seq, event FROM quality_events WHERE route = $1 AND candidate = $2 \
             ORDER BY seq DESC LIMIT 64",
        )
        .bind(route.to_string())
        .bind(candidate.to_string())
        .fetch_all(self.reads())
        .await?;
        let mut state = StoredState::default();
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            state.seq = state.seq.max(seq);
            let event: String = row.try_get("event")?;
            match EventKind::parse(&event) {
                Some(kind @ (EventKind::AlertFired | EventKind::AlertCleared)) => {
                    state.alert.get_or_insert(kind);
                }
                Some(kind @ (EventKind::Demoted | EventKind::Promoted)) => {
                    state.switch.get_or_insert(kind);
                }
                None => {}
            }
        }
        Ok(state)
    }

    /// A route's latest events, newest first.
    pub async fn quality_events(
        &self,
        route: &str,
        limit: i64,
    ) -> Result<Vec<QualityEvent>, LedgerError> {
        let rows = sqlx::query(
            "SELECT route, candidate, seq, ts_ms, event, model, agreement_ppm, low_ppm, high_ppm, \
             samples FROM quality_events WHERE route = $1 ORDER BY ts_ms DESC, seq DESC LIMIT $2",
        )
        .bind(route.to_string())
        .bind(limit)
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .filter_map(|row| {
                let event: String = row.try_get("event").ok()?;
                Some(Ok(QualityEvent {
                    event: EventKind::parse(&event)?,
                    route: row.try_get("route").ok()?,
                    candidate: row.try_get("candidate").ok()?,
                    seq: row.try_get("seq").ok()?,
                    ts_ms: row.try_get("ts_ms").ok()?,
                    model: row.try_get("model").ok()?,
                    agreement_ppm: row.try_get("agreement_ppm").ok()?,
                    low_ppm: row.try_get("low_ppm").ok()?,
                    high_ppm: row.try_get("high_ppm").ok()?,
                    samples: row.try_get("samples").ok()?,
                }))
            })
            .collect()
    }

    /// The agreement of a candidate's latest `limit` scored samples, oldest first. Latest by the
    /// order they were stored in, not by `ts_ms`: samples a clock dated in the future would
    /// otherwise hold the window until that future came, and freeze the monitor on them.
    pub async fn recent_agreement(
        &self,
        route: &str,
        candidate: &str,
        limit: i64,
    ) -> Result<Vec<i64>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT agreement_ppm FROM requests WHERE purpose = 'shadow' AND route = $1 \
             AND candidate = $2 AND agreement_ppm IS NOT NULL ORDER BY {} DESC LIMIT $3",
            self.stored_order()
        ))
        .bind(route.to_string())
        .bind(candidate.to_string())
        .bind(limit)
        .fetch_all(self.reads())
        .await?;
        let mut scores = rows
            .iter()
            .map(|row| row.try_get::<i64, _>("agreement_ppm"))
            .collect::<Result<Vec<_>, _>>()?;
        scores.reverse();
        Ok(scores)
    }

    /// A candidate's agreement per UTC day since `from_ms`, oldest first.
    pub async fn daily_agreement(
        &self,
        route: &str,
        candidate: &str,
        from_ms: i64,
    ) -> Result<Vec<Day>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT ts_ms / {DAY_MS} AS day, COUNT(*) AS samples, \
             CAST(SUM(agreement_ppm) AS BIGINT) AS agreement_sum FROM requests \
             WHERE purpose = 'shadow' AND route = $1 AND candidate = $2 \
             AND agreement_ppm IS NOT NULL AND ts_ms >= $3 GROUP BY ts_ms / {DAY_MS} ORDER BY day"
        ))
        .bind(route.to_string())
        .bind(candidate.to_string())
        .bind(from_ms)
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .map(|row| {
                let samples = row.try_get::<i64, _>("samples")?.max(1);
                Ok(Day {
                    day: row.try_get("day")?,
                    samples: samples as u64,
                    agreement_ppm: row.try_get::<i64, _>("agreement_sum")? / samples,
                })
            })
            .collect()
    }

    /// What a route's calls of one purpose cost with `from_ms <= ts_ms < to_ms`. Bounded above, so
    /// that rows a clock dated in the future do not count as spent today.
    pub async fn spent_between(
        &self,
        route: &str,
        purpose: super::Purpose,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Picodollars, LedgerError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM requests WHERE purpose = $1 AND route = $2 AND ts_ms >= $3 \
             AND ts_ms < $4",
            money_sum("cost_pusd", "spent")
        ))
        .bind(purpose.as_str())
        .bind(route.to_string())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_one(self.reads())
        .await?;
        Ok(money(&row, "spent")?)
    }

    /// Stores ground truth for a product request made with `client_key` (the key's id, `None`
    /// on a gateway without keys); a later report for the same request replaces it. `false` when
    /// the ledger holds no such request of that key: another key's request is not told apart
    /// from one that does not exist. One statement, so no report lands for a request whose
    /// ownership was not checked.
    pub async fn record_feedback(
        &self,
        feedback: &Feedback,
        client_key: Option<&str>,
    ) -> Result<bool, LedgerError> {
        // `WHERE` before `ON CONFLICT` also keeps SQLite from reading the conflict clause as a
        // join constraint of the `SELECT`.
        let done = sqlx::query(
            "INSERT INTO feedback (request_id, ts_ms, truth) SELECT id, $2, $3 FROM requests \
             WHERE id = $1 AND purpose = 'product' AND COALESCE(client_key, '') = $4 \
             ON CONFLICT (request_id) DO UPDATE SET ts_ms = excluded.ts_ms, truth = excluded.truth",
        )
        .bind(feedback.request_id.clone())
        .bind(feedback.ts_ms)
        .bind(feedback.truth.clone())
        .bind(client_key.unwrap_or_default().to_string())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The ground truth sent for a route's product requests answered in the window, the latest
    /// `limit` reports, with the answer the gateway gave where it was stored:
    /// `(model, truth, answer)`.
    pub async fn feedback(
        &self,
        from_ms: i64,
        to_ms: i64,
        route: &str,
        limit: i64,
    ) -> Result<Vec<(Option<String>, String, Option<String>)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT r.model AS model, f.truth AS truth, r.answer AS answer FROM feedback f \
             JOIN requests r ON r.id = f.request_id WHERE r.purpose = 'product' \
             AND r.ts_ms >= $1 AND r.ts_ms < $2 AND r.route = $3 \
             ORDER BY f.ts_ms DESC, f.request_id DESC LIMIT $4",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(route.to_string())
        .bind(limit)
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("model")?,
                    row.try_get("truth")?,
                    row.try_get("answer")?,
                ))
            })
            .collect()
    }
}

/// Days since 1970-01-01 of a Unix time in milliseconds, and the day's first millisecond.
pub fn utc_day(ts_ms: i64) -> (i64, i64) {
    let day = ts_ms.div_euclid(DAY_MS);
    (day, day * DAY_MS)
}
