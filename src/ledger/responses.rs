//! The `responses` table: responses kept for their next turn (`previous_response_id`) and for
//! `GET /v1/responses/{id}`, each in the scope of the client key that made it. What is kept and
//! when is [`crate::stored`]'s to decide; this is only the SQL, the same for SQLite and
//! PostgreSQL.

use sqlx::Row;

use super::store::{LedgerError, Store};

/// One kept response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRow {
    /// The response's id, as its client was given it (`resp_…`).
    pub id: String,
    /// The client key's fingerprint; empty when the gateway has no client keys.
    pub scope: String,
    pub created_ms: i64,
    /// The ledger's request that produced it.
    pub request_id: String,
    /// Every input item the response answered, as a JSON array.
    pub input: String,
    /// The response object, as JSON.
    pub response: String,
}

impl KeptRow {
    /// About what it takes in memory while it waits to be written.
    pub fn bytes(&self) -> usize {
        self.id.len()
            + self.scope.len()
            + self.request_id.len()
            + self.input.len()
            + self.response.len()
    }
}

impl Store {
    /// Keeps `rows` in one transaction. Insert only: an id already kept is refused (the
    /// gateway's ids are fresh, so one never is), never written over — an update could move a
    /// response from one key's scope to another's.
    pub async fn keep_responses(&self, rows: &[&KeptRow]) -> Result<(), LedgerError> {
        let mut tx = self.pool().begin().await?;
        for row in rows {
            sqlx::query(
                "INSERT INTO responses (id, scope, created_ms, request_id, input, response) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(row.id.clone())
            .bind(row.scope.clone())
            .bind(row.created_ms)
            .bind(row.request_id.clone())
            .bind(row.input.clone())
            .bind(row.response.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The response `id` kept in `scope` at or after `since_ms`.
    pub async fn kept_response(
        &self,
        id: &str,
        scope: &str,
        since_ms: i64,
    ) -> Result<Option<KeptRow>, LedgerError> {
        let row = sqlx::query(
            "SELECT id, scope, created_ms, request_id, input, response FROM responses \
             WHERE id = $1 AND scope = $2 AND created_ms >= $3",
        )
        .bind(id.to_string())
        .bind(scope.to_string())
        .bind(since_ms)
        .fetch_optional(self.reads())
        .await?;
        row.map(|row| {
            Ok(KeptRow {
                id: row.try_get("id")?,
                scope: row.try_get("scope")?,
                created_ms: row.try_get("created_ms")?,
                request_id: row.try_get("request_id")?,
                input: row.try_get("input")?,
                response: row.try_get("response")?,
            })
        })
        .transpose()
    }

    /// Deletes the response `id` of `scope` (any scope when `None`); whether one was kept.
    pub async fn forget_response(
        &self,
        id: &str,
        scope: Option<&str>,
    ) -> Result<bool, LedgerError> {
        let done = match scope {
            Some(scope) => {
                sqlx::query("DELETE FROM responses WHERE id = $1 AND scope = $2")
                    .bind(id.to_string())
                    .bind(scope.to_string())
                    .execute(self.pool())
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM responses WHERE id = $1")
                    .bind(id.to_string())
                    .execute(self.pool())
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the responses kept before `before_ms`; how many.
    pub async fn forget_responses_before(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let done = sqlx::query("DELETE FROM responses WHERE created_ms < $1")
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// How many responses are kept, expired or not (for tests and operators).
    pub async fn kept_responses(&self) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM responses")
            .fetch_one(self.reads())
            .await?;
        Ok(row.try_get("n")?)
    }
}
