//! The ledger's storage: embedded SQLite (the default, WAL mode, created on first start) or
//! PostgreSQL (several replicas, one ledger), behind one type. Both run the same portable SQL and the
//! same migrations through sqlx's `Any` driver. The rows are defined in [`super::row`]. The
//! `attempts` table holds the attempts of requests that were not answered at their first try;
//! [`Store::attempts`] gives every request's.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

use super::row::{AttemptRow, LedgerRow, RequestRow};

/// One server's share of a window's traffic, as the report shows it: its calls, each counted once
/// by how it ended, as the servers table of `/admin/api/providers` counts them since start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerLoad {
    pub provider: String,
    pub server: String,
    /// `answered + failed + unfinished`.
    pub calls: u64,
    /// Calls it answered: a whole answer, a stream to its end (its client there or not).
    pub answered: u64,
    /// Calls on it that failed: attempts that failed (a failure another server or tier then
    /// answered included), and streams it broke after their first chunk.
    pub failed: u64,
    /// Calls that never finished: a stream its client left midway, a call cut off at shutdown
    /// or by the gateway's own failure.
    pub unfinished: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot migrate the ledger at {url}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("ledger query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("ledger.url {0:?} is neither sqlite:// nor postgres://")]
    Scheme(String),
}

impl LedgerError {
    /// The database answered and refused what was written, not the writing: a constraint, a value
    /// it cannot hold (PostgreSQL's data exceptions, class 22; integrity, 23; limits, 54), or
    /// SQLite's constraint, too-big and mismatch codes. Writing the same rows again cannot succeed,
    /// while a database that is away, locked or shutting down may take them later.
    pub fn is_refusal(&self) -> bool {
        let LedgerError::Query(sqlx::Error::Database(err)) = self else {
            return false;
        };
        if !matches!(err.kind(), sqlx::error::ErrorKind::Other) {
            return true;
        }
        let Some(code) = err.code() else { return false };
        if err
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .is_some()
        {
            // Extended result codes carry the primary code in their low byte.
            return code
                .parse::<i32>()
                .is_ok_and(|code| matches!(code & 0xff, 18..=20));
        }
        matches!(code.get(..2), Some("22" | "23" | "54"))
    }
}

/// Rows per INSERT, largest first. A batch is cut into these few shapes so that each is prepared
/// once and then reused from the statement cache; 256 × 24 parameters stays under SQLite's (32,766)
/// and PostgreSQL's (65,535) limits.
const STATEMENT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Reports read on connections of their own: a long aggregate never holds the one connection
    /// SQLite's writer has (WAL lets them read while it writes), nor PostgreSQL's writers.
    reads: AnyPool,
    sqlite: bool,
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store, LedgerError> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(LedgerError::Scheme(url.to_string()));
        }
        let connect_url = if sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            // Create the file on first start.
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_string()
        };
        let pool = pool_options(sqlite, if sqlite { 1 } else { 4 }, false)
            .connect(&connect_url)
            .await
            .map_err(|source| LedgerError::Connect {
                url: redact(url),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                url: redact(url),
                source,
            })?;
        // An in-memory database exists only on its own connection: there, reports share it.
        // Elsewhere the report connections open when a report first asks.
        let reads = if url.contains(":memory:") {
            pool.clone()
        } else {
            let options = AnyConnectOptions::from_str(&connect_url)
                .map_err(|source| LedgerError::Connect {
                    url: redact(url),
                    source,
                })?
                // A report over a month of traffic takes seconds by design; that is not news
                // for the operator's log.
                .log_slow_statements(log::LevelFilter::Off, Duration::ZERO);
            pool_options(sqlite, 2, true).connect_lazy_with(options)
        };
        Ok(Store {
            pool,
            reads,
            sqlite,
        })
    }

    pub(super) fn reads(&self) -> &AnyPool {
        &self.reads
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The column that numbers `requests` rows in the order they were stored, which only grows
    /// whatever the clocks say: SQLite's own `rowid`, PostgreSQL's `stored_seq` (see the
    /// migration `20261203000002_stored_order.sql`).
    pub(super) fn stored_order(&self) -> &'static str {
        if self.sqlite { "rowid" } else { "stored_seq" }
    }

    /// Writes a batch in one transaction: every request and attempt, or none.
    pub async fn insert(
        &self,
        requests: &[&RequestRow],
        attempts: &[&AttemptRow],
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for chunk in shaped_chunks(requests) {
            insert_rows(&mut tx, chunk, self.sqlite).await?;
        }
        for chunk in shaped_chunks(attempts) {
            insert_rows(&mut tx, chunk, self.sqlite).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes one row of any ledger table; `false` when a row with its key was stored already.
    pub(super) async fn insert_one<R: LedgerRow>(&self, row: &R) -> Result<bool, LedgerError> {
        let sql = insert_sql(R::TABLE, R::COLUMNS, 1, self.sqlite);
        let done = row.bind(sqlx::query(&sql)).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether the database answers at all.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Requests with `from_ms <= ts_ms < to_ms`, optionally of one route, oldest first.
    pub async fn requests(
        &self,
        from_ms: i64,
        to_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<RequestRow>, LedgerError> {
        let columns = RequestRow::COLUMNS.join(", ");
        let rows = match route {
            Some(route) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 AND route = $3 ORDER BY ts_ms, id"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .bind(route.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM requests WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY ts_ms, id"
                ))
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(RequestRow::read)
            .collect::<Result<_, _>>()?)
    }

    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>, LedgerError> {
        let columns = RequestRow::COLUMNS.join(", ");
        let row = sqlx::query(&format!("SELECT {columns} FROM requests WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(RequestRow::read).transpose()?)
    }

    /// The attempts of a request in order, as `(tier, outcome)`. A request answered at its first
    /// try has no attempt rows; its one attempt is its own tier, `ok`.
    pub async fn attempts(&self, request_id: &str) -> Result<Vec<(String, String)>, LedgerError> {
        let rows =
            sqlx::query("SELECT tier, outcome FROM attempts WHERE request_id = $1 ORDER BY seq")
                .bind(request_id.to_string())
                .fetch_all(&self.pool)
                .await?;
        if !rows.is_empty() {
            return rows
                .iter()
                .map(|row| Ok((row.try_get("tier")?, row.try_get("outcome")?)))
                .collect();
        }
        let served = sqlx::query("SELECT tier FROM requests WHERE id = $1 AND tier IS NOT NULL")
            .bind(request_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        served
            .map(|row| Ok((row.try_get("tier")?, "ok".to_string())))
            .into_iter()
            .collect()
    }

    /// Per server of each provider, in `[from_ms, to_ms)`, its calls by how they ended (see
    /// [`ServerLoad`]). A request's row holds its last call (the one that answered, or was cut);
    /// its attempt rows, where it has them, the calls that failed before.
    pub async fn server_load(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ServerLoad>, LedgerError> {
        // A stream relayed to its end whose client left before reading it ended with the status
        // it had; one its client left midway is 499, its call unfinished. A whole answer whose
        // client left is 499 too, but its call ran to its end and was answered.
        let unfinished = "error_kind IN ('cut_at_shutdown', 'gateway_failed') \
                          OR (error_kind = 'client_closed' AND stream = 1)";
        let last_calls = sqlx::query(&format!(
            "SELECT provider, server, \
             CAST(COALESCE(SUM(CASE WHEN {unfinished} THEN 1 ELSE 0 END), 0) AS BIGINT) AS unfinished, \
             CAST(COALESCE(SUM(CASE WHEN status = 200 AND error_kind IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS broken, \
             COUNT(*) AS calls FROM requests \
             WHERE ts_ms >= $1 AND ts_ms < $2 AND server IS NOT NULL AND provider IS NOT NULL \
             AND tier IS NOT NULL \
             GROUP BY provider, server"
        ))
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        // An attempt that did not serve the request was still answered when the server was not
        // to blame (a 4xx, a 429), as its lease counted it. Rows written before the `answered`
        // column are classified by their reason the way `UpstreamError::counts_against_provider`
        // classifies the error it names.
        let answered = "a.answered = 1 OR (a.answered IS NULL AND (\
                        a.outcome IN ('http_429', 'http_501', 'quota_exhausted', 'context_too_long', \
                        'request_refused') OR (a.outcome LIKE 'http_4%' \
                        AND a.outcome NOT IN ('http_401', 'http_403', 'http_404'))))";
        let earlier_calls = sqlx::query(&format!(
            "SELECT a.provider AS provider, a.server AS server, \
             CAST(COALESCE(SUM(CASE WHEN {answered} THEN 1 ELSE 0 END), 0) AS BIGINT) AS answered, \
             COUNT(*) AS n \
             FROM attempts a JOIN requests r ON r.id = a.request_id \
             WHERE r.ts_ms >= $1 AND r.ts_ms < $2 AND a.server IS NOT NULL AND a.outcome <> 'ok' \
             GROUP BY a.provider, a.server"
        ))
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut load: std::collections::BTreeMap<(String, String), ServerLoad> =
            std::collections::BTreeMap::new();
        fn entry<'l>(
            load: &'l mut std::collections::BTreeMap<(String, String), ServerLoad>,
            row: &sqlx::any::AnyRow,
        ) -> Result<&'l mut ServerLoad, sqlx::Error> {
            let (provider, server): (String, String) =
                (row.try_get("provider")?, row.try_get("server")?);
            Ok(load
                .entry((provider.clone(), server.clone()))
                .or_insert(ServerLoad {
                    provider,
                    server,
                    calls: 0,
                    answered: 0,
                    failed: 0,
                    unfinished: 0,
                }))
        }
        let count = |row: &sqlx::any::AnyRow, column: &str| -> Result<u64, sqlx::Error> {
            Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
        };
        for row in &last_calls {
            let (calls, unfinished, broken) = (
                count(row, "calls")?,
                count(row, "unfinished")?,
                count(row, "broken")?,
            );
            let server = entry(&mut load, row)?;
            server.unfinished += unfinished;
            server.failed += broken;
            server.answered += calls.saturating_sub(unfinished + broken);
        }
        for row in &earlier_calls {
            let (n, answered) = (count(row, "n")?, count(row, "answered")?);
            let server = entry(&mut load, row)?;
            server.answered += answered;
            server.failed += n.saturating_sub(answered);
        }
        Ok(load
            .into_values()
            .map(|server| ServerLoad {
                calls: server.answered + server.failed + server.unfinished,
                ..server
            })
            .collect())
    }

    /// The first and last request times, for reports over "everything so far".
    pub async fn span(&self) -> Result<Option<(i64, i64)>, LedgerError> {
        let row = sqlx::query("SELECT MIN(ts_ms) AS first, MAX(ts_ms) AS last FROM requests")
            .fetch_one(&self.pool)
            .await?;
        let first: Option<i64> = row.try_get("first")?;
        let last: Option<i64> = row.try_get("last")?;
        Ok(first.zip(last))
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.reads.close().await;
    }
}

fn pool_options(sqlite: bool, connections: u32, read_only: bool) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        // The writer gives up on a store that does not answer within its own timeout and
        // spools; a long wait for a connection would only hold the queue.
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL lets reports read while the writer writes; NORMAL is durable across
                    // process crashes, which is what a gateway restart is.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    if read_only {
                        conn.execute("PRAGMA query_only = 1").await?;
                    }
                }
                Ok(())
            })
        })
}

/// `items` cut into runs of `STATEMENT_ROWS` sizes, largest first.
fn shaped_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let size = STATEMENT_ROWS
            .into_iter()
            .find(|size| *size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

async fn insert_rows<R: LedgerRow>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[&R],
    sqlite: bool,
) -> Result<(), sqlx::Error> {
    let sql = insert_sql(R::TABLE, R::COLUMNS, rows.len(), sqlite);
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = row.bind(query);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// A multi-row INSERT that skips rows already stored. SQLite gets anonymous `?` parameters: with numbered ones it looks each
/// parameter's name up in a list, which made a 4,800-parameter batch cost two thirds of the
/// gateway's CPU (see docs/benchmarks.md).
fn insert_sql(table: &str, columns: &[&str], rows: usize, sqlite: bool) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            if sqlite {
                sql.push('?');
            } else {
                sql.push_str(&format!("${n}"));
            }
        }
        sql.push(')');
    }
    // A batch whose COMMIT succeeded but whose acknowledgement was lost is retried: the rows it
    // already stored are skipped, not refused as duplicates forever (both databases, same SQL).
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// The URL without its password, for messages: the one in the user part and a `password=`
/// query parameter (both forms PostgreSQL accepts). A URL that does not parse is not shown at all.
fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(a ledger URL that does not parse)".to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row definitions and the migration describe the same tables, column for column.
    #[tokio::test]
    async fn the_rows_match_the_migrated_tables() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        for (table, columns) in [
            (RequestRow::TABLE, RequestRow::COLUMNS),
            (AttemptRow::TABLE, AttemptRow::COLUMNS),
            (
                super::super::budget::AdjustmentRow::TABLE,
                super::super::budget::AdjustmentRow::COLUMNS,
            ),
            (
                super::super::budget::AlertRow::TABLE,
                super::super::budget::AlertRow::COLUMNS,
            ),
        ] {
            let rows = sqlx::query(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .fetch_all(&store.pool)
            .await
            .unwrap();
            // `stored_seq` is filled by PostgreSQL itself and never written (SQLite has rowid).
            let migrated: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("name").unwrap())
                .filter(|name| name != "stored_seq")
                .collect();
            assert_eq!(migrated, columns, "table {table}");
        }
    }

    #[tokio::test]
    async fn a_batch_written_twice_is_stored_once() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let row = RequestRow::new("r1".into(), 1, "chat.completions".into());
        let attempt = AttemptRow {
            request_id: "r1".into(),
            seq: 0,
            tier: "t".into(),
            provider: "p".into(),
            model: "m".into(),
            outcome: "ok".into(),
            latency_us: 1,
            server: Some("p".into()),
            answered: Some(true),
        };
        store.insert(&[&row], &[&attempt]).await.unwrap();
        store.insert(&[&row], &[&attempt]).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn passwords_never_reach_a_message() {
        for url in [
            "postgres://tw:hunter2@db/ledger",
            "postgres://tw@db/ledger?sslmode=require&password=hunter2",
            "postgresql://db/ledger?password=hunter2",
        ] {
            let shown = redact(url);
            assert!(
                !shown.contains("hunter2") && shown.contains("***"),
                "{shown}"
            );
        }
        assert_eq!(redact("sqlite:///var/tw.db"), "sqlite:///var/tw.db");
        assert!(!redact("postgres://a:hunter2@[bad").contains("hunter2"));
    }

    #[test]
    fn batches_are_cut_into_few_statement_shapes() {
        let items: Vec<u32> = (0..139).collect();
        let sizes: Vec<usize> = super::shaped_chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![64, 64, 4, 4, 1, 1, 1]);
        assert_eq!(super::shaped_chunks(&items).flatten().count(), 139);
        assert_eq!(super::shaped_chunks::<u32>(&[]).count(), 0);
        let items: Vec<u32> = (0..600).collect();
        let sizes: Vec<usize> = super::shaped_chunks(&items).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![256, 256, 64, 16, 4, 4]);
    }
}
