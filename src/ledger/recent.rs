//! What the dashboard reads besides the report: product traffic's cost per time bucket (a minute,
//! an hour or a UTC day) by route and tier, and the latest requests. Both are bounded (buckets ×
//! routes × tiers groups; a page of rows) and read on the store's report connections, never the
//! writer's.

use serde::Serialize;
use sqlx::Row;

use super::price::Picodollars;
use super::store::{LedgerError, Store};
use super::summary::{money, money_sum};

const DAY_MS: i64 = 86_400_000;

/// One UTC day of one route's calls on one tier: a bucket a day long, with its day number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayCost {
    /// Days since 1970-01-01.
    pub day: i64,
    #[serde(flatten)]
    pub bucket: BucketCost,
}

/// One time bucket of one route's calls on one tier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketCost {
    /// Where the bucket starts, in Unix milliseconds (a multiple of the bucket's length).
    pub start_ms: i64,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub local: bool,
    pub calls: u64,
    pub cost_usd: String,
    pub baseline_usd: String,
}

/// A request as the dashboard lists it: no content, no key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    pub id: String,
    pub ts_ms: i64,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub model: Option<String>,
    pub status: i64,
    pub stream: bool,
    pub latency_ms: f64,
    /// `None` when the model has no known price.
    pub cost_usd: Option<String>,
    pub fallback: Option<String>,
    pub error_kind: Option<String>,
}

impl Store {
    /// Product traffic since `from_ms`, per UTC day, route and tier, oldest first.
    pub async fn daily_cost(&self, from_ms: i64) -> Result<Vec<DayCost>, LedgerError> {
        Ok(self
            .cost_series(from_ms, DAY_MS)
            .await?
            .into_iter()
            .map(|bucket| DayCost {
                day: bucket.start_ms / DAY_MS,
                bucket,
            })
            .collect())
    }

    /// Product traffic since `from_ms` in buckets of `bucket_ms` (aligned to multiples of it), by
    /// route and tier, oldest first.
    pub async fn cost_series(
        &self,
        from_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<BucketCost>, LedgerError> {
        let bucket_ms = bucket_ms.max(1);
        let rows = sqlx::query(&format!(
            "SELECT ts_ms / {bucket_ms} AS bucket, route, tier, local AS is_local, \
             COUNT(*) AS calls, {cost}, {baseline} FROM requests \
             WHERE purpose = 'product' AND ts_ms >= $1 \
             GROUP BY ts_ms / {bucket_ms}, route, tier, local ORDER BY bucket, route, tier",
            cost = money_sum("cost_pusd", "cost"),
            baseline = money_sum("COALESCE(baseline_pusd, cost_pusd)", "base"),
        ))
        .bind(from_ms)
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BucketCost {
                    start_ms: row.try_get::<i64, _>("bucket")? * bucket_ms,
                    route: row.try_get("route")?,
                    tier: row.try_get("tier")?,
                    local: row.try_get::<i64, _>("is_local")? == 1,
                    calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
                    cost_usd: money(row, "cost")?.to_string(),
                    baseline_usd: money(row, "base")?.to_string(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The latest `limit` product requests, newest first; only those made with `client_key` (a
    /// key's id) where one is given.
    pub async fn recent(
        &self,
        limit: i64,
        client_key: Option<&str>,
    ) -> Result<Vec<Recent>, LedgerError> {
        let of_key = if client_key.is_some() {
            "AND client_key = $2"
        } else {
            ""
        };
        let sql = format!(
            "SELECT id, ts_ms, route, tier, model, status, stream, latency_us, cost_pusd, fallback, \
             error_kind FROM requests WHERE purpose = 'product' {of_key} \
             ORDER BY ts_ms DESC, id DESC LIMIT $1"
        );
        let mut query = sqlx::query(&sql).bind(limit);
        if let Some(key) = client_key {
            query = query.bind(key.to_string());
        }
        let rows = query.fetch_all(self.reads()).await?;
        rows.iter()
            .map(|row| {
                Ok(Recent {
                    id: row.try_get("id")?,
                    ts_ms: row.try_get("ts_ms")?,
                    route: row.try_get("route")?,
                    tier: row.try_get("tier")?,
                    model: row.try_get("model")?,
                    status: i64::from(row.try_get::<i32, _>("status")?),
                    stream: row.try_get::<i32, _>("stream")? != 0,
                    latency_ms: row.try_get::<i64, _>("latency_us")? as f64 / 1000.0,
                    cost_usd: row
                        .try_get::<Option<i64>, _>("cost_pusd")?
                        .map(|cost| Picodollars(cost).to_string()),
                    fallback: row.try_get("fallback")?,
                    error_kind: row.try_get("error_kind")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
