//! The ledger summed by its database, for reports. A report over months of traffic must not bring
//! millions of rows (prompts and answers among them) into the gateway's memory, nor hold the
//! connection the writer needs: the sums are one `GROUP BY` on the store's read connections, and
//! what comes back is a few thousand groups at most, whatever the window holds.
//!
//! Money is summed exactly: a picodollar column is summed as its whole microdollars and its
//! remainder, two sums that each stay far inside 64 bits, and joined in 128. Latency percentiles
//! come from a histogram the database builds, latencies kept to three significant figures.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::price::Picodollars;
use super::store::{LedgerError, Store};

/// Picodollars in a microdollar: the split that keeps both halves of a money sum in 64 bits.
const SPLIT: i64 = 1_000_000;

/// The ledger's sums for one route in a window. `route` is `None` for requests made without one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSums {
    pub route: Option<String>,
    pub calls: u64,
    /// Calls some tier answered.
    pub answered: u64,
    pub answered_locally: u64,
    /// Answered by a tier after the first.
    pub fallbacks: u64,
    pub errors: u64,
    pub estimated: u64,
    /// Answered on a model with no known price.
    pub unpriced: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: Picodollars,
    /// What the calls would have cost on the baseline model; a call without one counts at its cost.
    pub baseline: Picodollars,
    /// Answered calls' latencies as (microseconds to three significant figures, calls), ascending.
    pub latency: Vec<(i64, u64)>,
    /// Models that answered, sorted.
    pub models: Vec<String>,
}

/// Tokens a route ran on one local provider, which its share of the provider's fixed cost follows.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalTokens {
    pub provider: String,
    pub route: Option<String>,
    pub tokens: i128,
}

/// The ledger's sums for one endpoint (its ledger name: `chat.completions`, `responses`, …) in a
/// window, from the same scan as the routes' sums, so that both add up to the same totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSums {
    pub endpoint: String,
    pub calls: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: Picodollars,
}

/// What a report needs from the ledger for `from_ms <= ts_ms < to_ms`, optionally one route.
pub struct Summary {
    pub routes: Vec<RouteSums>,
    /// Product calls by the endpoint the client called, whichever endpoints the ledger holds.
    pub endpoints: Vec<EndpointSums>,
    pub local_tokens: Vec<LocalTokens>,
    /// Requests moved off their first tier, by route and by why (`context_too_long`, `http_503` …).
    pub moved: Vec<Moved>,
    /// What checking quality cost and found, by route, purpose and candidate tier.
    pub checks: Vec<Checks>,
    /// How often each route's output contract rewrote or flagged an answer, by model.
    pub contracts: Vec<Contracts>,
    /// Requests each route's response cache answered, and what they did not pay again.
    pub cache_hits: Vec<CacheHits>,
}

/// A route's cache hits in the window: apart from its product calls, whose baseline they do not
/// enter.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheHits {
    pub route: Option<String>,
    pub hits: u64,
    /// What the calls that filled the cache cost, once per hit.
    pub avoided: Picodollars,
}

/// Calls the gateway made to check quality (shadow or eval) for one route and candidate tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    pub route: Option<String>,
    pub purpose: String,
    pub candidate: Option<String>,
    pub calls: u64,
    pub cost: Picodollars,
    /// Samples scored, and the sum of their agreement in parts per million.
    pub scored: u64,
    pub agreement_ppm: i64,
}

/// Product answers of one route and model that went through its output contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Contracts {
    pub route: Option<String>,
    pub model: Option<String>,
    pub answers: u64,
    /// Answers that needed a label pulled out: rewritten, or (streams) relayed as they came.
    pub normalized: u64,
    pub violated: u64,
}

/// Requests of a route whose first tier did not answer them, for one reason, and what they cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub route: Option<String>,
    pub reason: String,
    pub calls: u64,
    /// Of those, the ones a later tier answered.
    pub answered: u64,
    pub cost: Picodollars,
}

impl Store {
    /// One scan of the window: the database groups its rows by route, provider, model and latency,
    /// a few thousand groups at most, and those are summed here. One statement also means one
    /// snapshot: rows the writer adds meanwhile are in every sum or in none.
    pub async fn summary(
        &self,
        from_ms: i64,
        to_ms: i64,
        route: Option<&str>,
    ) -> Result<Summary, LedgerError> {
        let sql = summary_sql(route.is_some());
        let mut query = sqlx::query(&sql).bind(from_ms).bind(to_ms);
        if let Some(route) = route {
            query = query.bind(route.to_string());
        }
        let mut routes: BTreeMap<Option<String>, RouteSums> = BTreeMap::new();
        let mut latency: BTreeMap<Option<String>, BTreeMap<i64, u64>> = BTreeMap::new();
        let mut models: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
        let mut local_tokens: BTreeMap<(String, Option<String>), i128> = BTreeMap::new();
        let mut endpoints: BTreeMap<String, EndpointSums> = BTreeMap::new();
        for row in query.fetch_all(self.reads()).await? {
            let group = Group::read(&row)?;
            let by_endpoint = endpoints.entry(group.endpoint.clone()).or_default();
            by_endpoint.calls += group.calls;
            by_endpoint.errors += group.errors;
            by_endpoint.tokens_in += group.tokens_in;
            by_endpoint.tokens_out += group.tokens_out;
            by_endpoint.cost = Picodollars::saturating(by_endpoint.cost.0 as i128 + group.cost);
            let sums = routes.entry(group.route.clone()).or_default();
            sums.add(&group);
            if let Some(bucket) = group.latency_bucket {
                *latency
                    .entry(group.route.clone())
                    .or_default()
                    .entry(bucket)
                    .or_default() += group.calls;
            }
            if group.answered > 0
                && let Some(model) = &group.model
            {
                models
                    .entry(group.route.clone())
                    .or_default()
                    .insert(model.clone());
            }
            if group.local
                && let Some(provider) = &group.provider
            {
                *local_tokens
                    .entry((provider.clone(), group.route.clone()))
                    .or_default() += (group.tokens_in + group.tokens_out) as i128;
            }
        }
        for (route, sums) in &mut routes {
            sums.route = route.clone();
            sums.latency = latency
                .remove(route)
                .unwrap_or_default()
                .into_iter()
                .collect();
            sums.models = models
                .remove(route)
                .unwrap_or_default()
                .into_iter()
                .collect();
        }
        let moved = self
            .window_query(&moved_sql(route.is_some()), from_ms, to_ms, route)
            .await?
            .iter()
            .map(|row| {
                Ok(Moved {
                    route: row.try_get("route")?,
                    reason: row.try_get("outcome")?,
                    calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
                    answered: row.try_get::<i64, _>("answered")?.max(0) as u64,
                    cost: money(row, "cost")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let checks = self
            .window_query(&checks_sql(route.is_some()), from_ms, to_ms, route)
            .await?
            .iter()
            .map(|row| {
                Ok(Checks {
                    route: row.try_get("route")?,
                    purpose: row.try_get("purpose")?,
                    candidate: row.try_get("candidate")?,
                    calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
                    cost: money(row, "cost")?,
                    scored: row.try_get::<i64, _>("scored")?.max(0) as u64,
                    agreement_ppm: row.try_get("agreement_ppm")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let contracts = self
            .window_query(&contracts_sql(route.is_some()), from_ms, to_ms, route)
            .await?
            .iter()
            .map(|row| {
                Ok(Contracts {
                    route: row.try_get("route")?,
                    model: row.try_get("model")?,
                    answers: row.try_get::<i64, _>("answers")?.max(0) as u64,
                    normalized: row.try_get::<i64, _>("normalized")?.max(0) as u64,
                    violated: row.try_get::<i64, _>("violated")?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let cache_hits = self
            .window_query(&cache_hits_sql(route.is_some()), from_ms, to_ms, route)
            .await?
            .iter()
            .map(|row| {
                Ok(CacheHits {
                    route: row.try_get("route")?,
                    hits: row.try_get::<i64, _>("hits")?.max(0) as u64,
                    avoided: money(row, "avoided")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Summary {
            endpoints: endpoints
                .into_iter()
                .map(|(endpoint, sums)| EndpointSums { endpoint, ..sums })
                .collect(),
            cache_hits,
            checks,
            contracts,
            moved,
            routes: routes.into_values().collect(),
            local_tokens: local_tokens
                .into_iter()
                .map(|((provider, route), tokens)| LocalTokens {
                    provider,
                    route,
                    tokens,
                })
                .collect(),
        })
    }
}

impl Store {
    /// Runs a statement over the window `$1 <= ts_ms < $2` (and route `$3`) on the read pool.
    async fn window_query(
        &self,
        sql: &str,
        from_ms: i64,
        to_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<AnyRow>, LedgerError> {
        let mut query = sqlx::query(sql).bind(from_ms).bind(to_ms);
        if let Some(route) = route {
            query = query.bind(route.to_string());
        }
        Ok(query.fetch_all(self.reads()).await?)
    }
}

/// The ledger's sums for one client key's product requests in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySums {
    /// `keys.NAME`; `None` for requests made with a key of the bare `server.api_keys` list or
    /// without a key.
    pub key: Option<String>,
    pub calls: u64,
    pub answered: u64,
    /// Refused by a rate limit (status 429 with no tier called).
    pub rate_limited: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost: Picodollars,
}

impl Store {
    /// Product requests of `from_ms <= ts_ms < to_ms` (optionally one route) summed by key name.
    pub async fn by_key(
        &self,
        from_ms: i64,
        to_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<KeySums>, LedgerError> {
        let sql = format!(
            "SELECT key_name, COUNT(*) AS calls, {answered} AS answered, {limited} AS limited, \
             {errors} AS errors, {tokens_in} AS tokens_in, {tokens_out} AS tokens_out, {cost} \
             FROM requests WHERE purpose = 'product' AND ts_ms >= $1 AND ts_ms < $2{route} \
             GROUP BY key_name ORDER BY key_name",
            answered = counted("tier IS NOT NULL"),
            limited =
                counted("status = 429 AND tier IS NULL AND error_kind = 'rate_limit_exceeded'"),
            errors = counted("status >= 400"),
            tokens_in = sum("tokens_in"),
            tokens_out = sum("tokens_out"),
            cost = money_sum("cost_pusd", "cost"),
            route = if route.is_some() {
                " AND route = $3"
            } else {
                ""
            },
        );
        let mut query = sqlx::query(&sql).bind(from_ms).bind(to_ms);
        if let Some(route) = route {
            query = query.bind(route.to_string());
        }
        let count = |row: &AnyRow, column: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
        };
        let mut keys = Vec::new();
        for row in query.fetch_all(self.reads()).await? {
            keys.push(KeySums {
                key: row.try_get("key_name")?,
                calls: count(&row, "calls")?,
                answered: count(&row, "answered")?,
                rate_limited: count(&row, "limited")?,
                errors: count(&row, "errors")?,
                tokens_in: count(&row, "tokens_in")?,
                tokens_out: count(&row, "tokens_out")?,
                cost: money(&row, "cost")?,
            });
        }
        Ok(keys)
    }
}

/// A money sum read back from its `{name}_hi` and `{name}_lo` halves.
pub(super) fn money(row: &AnyRow, name: &str) -> Result<Picodollars, sqlx::Error> {
    let whole = i128::from(row.try_get::<i64, _>(format!("{name}_hi").as_str())?);
    let rest = i128::from(row.try_get::<i64, _>(format!("{name}_lo").as_str())?);
    Ok(Picodollars::saturating(whole * SPLIT as i128 + rest))
}

/// One group of the scan: requests of one route, endpoint, provider, model, locality, answered or
/// not, and (answered) latency bucket.
struct Group {
    route: Option<String>,
    endpoint: String,
    provider: Option<String>,
    model: Option<String>,
    local: bool,
    latency_bucket: Option<i64>,
    calls: u64,
    answered: u64,
    fallbacks: u64,
    errors: u64,
    estimated: u64,
    unpriced: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost: i128,
    baseline: i128,
}

impl Group {
    fn read(row: &AnyRow) -> Result<Group, sqlx::Error> {
        let count = |column: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
        };
        let money = |column: &str| -> Result<i128, sqlx::Error> {
            let whole = row.try_get::<i64, _>(format!("{column}_hi").as_str())? as i128;
            let rest = row.try_get::<i64, _>(format!("{column}_lo").as_str())? as i128;
            Ok(whole * SPLIT as i128 + rest)
        };
        Ok(Group {
            route: row.try_get("route")?,
            endpoint: row.try_get("endpoint")?,
            provider: row.try_get("provider")?,
            model: row.try_get("model")?,
            local: row.try_get::<i64, _>("is_local")? == 1,
            latency_bucket: row.try_get("bucket")?,
            calls: count("calls")?,
            answered: count("answered")?,
            fallbacks: count("fallbacks")?,
            errors: count("errors")?,
            estimated: count("estimated")?,
            unpriced: count("unpriced")?,
            tokens_in: count("tokens_in")?,
            tokens_out: count("tokens_out")?,
            cost: money("cost")?,
            baseline: money("baseline")?,
        })
    }
}

impl RouteSums {
    fn add(&mut self, group: &Group) {
        self.calls += group.calls;
        self.answered += group.answered;
        if group.local {
            self.answered_locally += group.answered;
        }
        self.fallbacks += group.fallbacks;
        self.errors += group.errors;
        self.estimated += group.estimated;
        self.unpriced += group.unpriced;
        self.tokens_in += group.tokens_in;
        self.tokens_out += group.tokens_out;
        self.cost = Picodollars::saturating(self.cost.0 as i128 + group.cost);
        self.baseline = Picodollars::saturating(self.baseline.0 as i128 + group.baseline);
    }
}

/// `SUM` as a 64-bit integer on both databases (PostgreSQL's sum of BIGINT is NUMERIC), 0 when
/// there are no rows.
fn sum(expression: &str) -> String {
    format!("CAST(COALESCE(SUM({expression}), 0) AS BIGINT)")
}

/// The exact sum of a picodollar `expression` as the two columns `{name}_hi` and `{name}_lo` that
/// [`money`] reads back.
pub(super) fn money_sum(expression: &str, name: &str) -> String {
    format!(
        "{} AS {name}_hi, {} AS {name}_lo",
        sum(&format!("{expression} / {SPLIT}")),
        sum(&format!("{expression} % {SPLIT}"))
    )
}

fn counted(condition: &str) -> String {
    sum(&format!("CASE WHEN {condition} THEN 1 ELSE 0 END"))
}

/// An answered call's latency cut to three significant figures, so that a route has at most ~900
/// buckets per decade of latency however many calls it had; NULL for calls no tier answered.
fn latency_bucket() -> String {
    let mut bucket =
        String::from("CASE WHEN tier IS NULL THEN NULL WHEN latency_us < 1000 THEN latency_us");
    let (mut step, mut below) = (1i64, 1000i64);
    while below < i64::MAX / 10 {
        step *= 10;
        below *= 10;
        bucket.push_str(&format!(
            " WHEN latency_us < {below} THEN latency_us / {step} * {step}"
        ));
    }
    bucket.push_str(" ELSE latency_us END");
    bucket
}

/// The first attempts that failed (attempt rows exist only for requests not answered at their
/// first try), grouped by route and reason, with what those requests cost in the end.
fn moved_sql(one_route: bool) -> String {
    format!(
        "SELECT r.route AS route, a.outcome AS outcome, COUNT(*) AS calls, \
         {answered} AS answered, {cost_hi} AS cost_hi, {cost_lo} AS cost_lo \
         FROM attempts a JOIN requests r ON r.id = a.request_id \
         WHERE a.seq = 0 AND a.outcome <> 'ok' AND r.purpose = 'product' AND r.ts_ms >= $1 AND r.ts_ms < $2{route} \
         GROUP BY r.route, a.outcome ORDER BY r.route, calls DESC",
        answered = counted("r.tier IS NOT NULL"),
        cost_hi = sum(&format!("r.cost_pusd / {SPLIT}")),
        cost_lo = sum(&format!("r.cost_pusd % {SPLIT}")),
        route = if one_route { " AND r.route = $3" } else { "" },
    )
}

/// Calls made to check quality, by route, purpose and the candidate tier they judged.
fn checks_sql(one_route: bool) -> String {
    format!(
        "SELECT route, purpose, candidate, COUNT(*) AS calls, {cost}, \
         {scored} AS scored, {agreement} AS agreement_ppm \
         FROM requests WHERE purpose IN ('shadow', 'eval') AND ts_ms >= $1 AND ts_ms < $2{route} \
         GROUP BY route, purpose, candidate ORDER BY route, purpose, candidate",
        cost = money_sum("cost_pusd", "cost"),
        scored = counted("agreement_ppm IS NOT NULL"),
        agreement = sum("agreement_ppm"),
        route = if one_route { " AND route = $3" } else { "" },
    )
}

/// Requests a route's cache answered, by route.
fn cache_hits_sql(one_route: bool) -> String {
    format!(
        "SELECT route, COUNT(*) AS hits, {avoided} FROM requests \
         WHERE purpose = 'cache_hit' AND ts_ms >= $1 AND ts_ms < $2{route} \
         GROUP BY route ORDER BY route",
        avoided = money_sum("COALESCE(avoided_pusd, 0)", "avoided"),
        route = if one_route { " AND route = $3" } else { "" },
    )
}

/// Product answers that went through an output contract, by route and model.
fn contracts_sql(one_route: bool) -> String {
    format!(
        "SELECT route, model, COUNT(*) AS answers, {normalized} AS normalized, \
         {violated} AS violated FROM requests \
         WHERE purpose = 'product' AND contract IS NOT NULL AND ts_ms >= $1 AND ts_ms < $2{route} \
         GROUP BY route, model ORDER BY route, model",
        // A stream's label inside a longer answer was not rewritten, but needed the same rewrite.
        normalized = counted("contract IN ('normalized', 'normalizable')"),
        violated = counted("contract = 'violated'"),
        route = if one_route { " AND route = $3" } else { "" },
    )
}

fn summary_sql(one_route: bool) -> String {
    // A call on an unpriced model has no cost in the sums, so neither has it a baseline: the
    // saving compares like with like (the report counts such calls apart).
    let baseline = "CASE WHEN tier IS NOT NULL AND cost_pusd IS NULL THEN 0 \
                    ELSE COALESCE(baseline_pusd, cost_pusd) END";
    format!(
        "SELECT route, endpoint, provider, model, local AS is_local, bucket, COUNT(*) AS calls, \
         {answered} AS answered, {fallbacks} AS fallbacks, {errors} AS errors, \
         {estimated} AS estimated, {unpriced} AS unpriced, {tokens_in} AS tokens_in, \
         {tokens_out} AS tokens_out, {cost_hi} AS cost_hi, {cost_lo} AS cost_lo, \
         {base_hi} AS baseline_hi, {base_lo} AS baseline_lo \
         FROM (SELECT route, endpoint, provider, model, local, tier, fallback, status, tokens_estimated, \
         tokens_in, tokens_out, cost_pusd, baseline_pusd, {bucket} AS bucket FROM requests \
         WHERE purpose = 'product' AND ts_ms >= $1 AND ts_ms < $2{route}) AS window_rows \
         GROUP BY route, endpoint, provider, model, local, bucket",
        answered = counted("tier IS NOT NULL"),
        fallbacks = counted("tier IS NOT NULL AND fallback IS NOT NULL"),
        errors = counted("status >= 400"),
        estimated = counted("tokens_estimated = 1"),
        unpriced = counted("tier IS NOT NULL AND cost_pusd IS NULL"),
        tokens_in = sum("tokens_in"),
        tokens_out = sum("tokens_out"),
        cost_hi = sum(&format!("cost_pusd / {SPLIT}")),
        cost_lo = sum(&format!("cost_pusd % {SPLIT}")),
        base_hi = sum(&format!("{baseline} / {SPLIT}")),
        base_lo = sum(&format!("{baseline} % {SPLIT}")),
        bucket = latency_bucket(),
        route = if one_route { " AND route = $3" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::super::row::RequestRow;
    use super::*;

    fn answered(id: &str, route: Option<&str>, cost: i64, latency_us: i64) -> RequestRow {
        let mut row = RequestRow::new(id.into(), 1_000, "chat.completions".into());
        row.route = route.map(str::to_string);
        row.tier = Some("api".into());
        row.model = Some("gpt-4o".into());
        row.status = 200;
        row.cost_pusd = Some(Picodollars(cost));
        row.latency_us = latency_us;
        row
    }

    /// Sums that would overflow 64 bits (SQLite refuses them: "integer overflow") saturate; the
    /// rest is exact to the picodollar.
    #[tokio::test]
    async fn money_is_summed_exactly_and_never_overflows() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let huge = i64::MAX / 2 + 1;
        let rows = [
            answered("a", Some("big"), huge, 1_234_567),
            answered("b", Some("big"), huge, 1_500),
            answered("c", Some("big"), huge, 999),
            answered("d", None, 1_000_001, 10),
            answered("e", None, 999_999, 20),
        ];
        let refs: Vec<&RequestRow> = rows.iter().collect();
        store.insert(&refs, &[]).await.unwrap();
        let summary = store.summary(0, 2_000, None).await.unwrap();
        let [unrouted, big] = &summary.routes[..] else {
            panic!("{:?}", summary.routes)
        };
        assert_eq!(unrouted.route, None);
        assert_eq!(unrouted.cost, Picodollars(2_000_000));
        assert_eq!(
            unrouted.baseline,
            Picodollars(2_000_000),
            "its own baseline"
        );
        assert_eq!(big.cost, Picodollars(i64::MAX));
        assert_eq!((big.calls, big.answered), (3, 3));
        // Three significant figures: 1,234,567 µs is counted as 1,230,000.
        assert_eq!(big.latency, vec![(999, 1), (1_500, 1), (1_230_000, 1)]);
        assert_eq!(big.models, vec!["gpt-4o".to_string()]);
        let only = store.summary(0, 2_000, Some("big")).await.unwrap();
        assert_eq!(only.routes, vec![big.clone()]);
        assert!(
            store
                .summary(2_000, 3_000, None)
                .await
                .unwrap()
                .routes
                .is_empty()
        );
    }
}
