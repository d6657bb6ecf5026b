//! The `responses` table: responses kept for their next turn (`previous_response_id`) and for
//! `GET /v1/responses/{id}`, each in the scope of the client key that made it, each holding only
//! its own turn and the id of the response it continued. What is kept and when is
//! [`crate::stored`]'s to decide; this is only the SQL, the same for SQLite and PostgreSQL.

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
    /// The response it continued (`previous_response_id`), in the same scope; `None` starts a
    /// conversation.
    pub previous_id: Option<String>,
    /// The input items its own request sent, as a JSON array. A row kept before rows were
    /// chained (migration `20261227000001`) holds its whole conversation here, and no
    /// `previous_id`.
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
            + self.previous_id.as_ref().map_or(0, String::len)
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
                "INSERT INTO responses (id, scope, created_ms, request_id, previous_id, input, response) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(row.id.clone())
            .bind(row.scope.clone())
            .bind(row.created_ms)
            .bind(row.request_id.clone())
            .bind(row.previous_id.clone())
            .bind(row.input.clone())
            .bind(row.response.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The response `id` kept in `scope` at or after `since_ms`, then the response it continued,
    /// and so on back to the start of its conversation: at most `max` rows, newest first, read in
    /// one query (a recursive one) rather than one round trip per turn. Only the response named
    /// must be within `since_ms`: the turns before it are kept as long as a turn after them is
    /// ([`Store::forget_responses_before`]). The walk stops at a response that is not there —
    /// deleted, another scope's — so the last row's `previous_id` says whether the chain is whole.
    pub async fn kept_chain(
        &self,
        id: &str,
        scope: &str,
        since_ms: i64,
        max: usize,
    ) -> Result<Vec<KeptRow>, LedgerError> {
        let rows = sqlx::query(
            "WITH RECURSIVE chain (id, previous_id, depth) AS ( \
                 SELECT id, previous_id, 0 FROM responses \
                 WHERE id = $1 AND scope = $2 AND created_ms >= $3 \
                 UNION ALL \
                 SELECT r.id, r.previous_id, chain.depth + 1 FROM responses r \
                 JOIN chain ON r.id = chain.previous_id \
                 WHERE r.scope = $2 AND chain.depth + 1 < $4 \
             ) \
             SELECT r.id, r.scope, r.created_ms, r.request_id, r.previous_id, r.input, r.response \
             FROM chain JOIN responses r ON r.id = chain.id ORDER BY chain.depth",
        )
        .bind(id.to_string())
        .bind(scope.to_string())
        .bind(since_ms)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeptRow {
                    id: row.try_get("id")?,
                    scope: row.try_get("scope")?,
                    created_ms: row.try_get("created_ms")?,
                    request_id: row.try_get("request_id")?,
                    previous_id: row.try_get("previous_id")?,
                    input: row.try_get("input")?,
                    response: row.try_get("response")?,
                })
            })
            .collect()
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

    /// Deletes the responses kept before `before_ms` that no response kept since continues, however
    /// many turns later: a conversation whose newest turn is young is kept whole, to be continued
    /// from that turn (as each new turn renewed it when a row held its whole conversation). One
    /// query, the same on SQLite and PostgreSQL: the young rows' ancestors, walked back (`UNION`
    /// ends the walk at a row seen already, a cycle too), are spared. How many were deleted.
    pub async fn forget_responses_before(&self, before_ms: i64) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "WITH RECURSIVE continued (id) AS ( \
                 SELECT previous_id FROM responses \
                 WHERE created_ms >= $1 AND previous_id IS NOT NULL \
                 UNION \
                 SELECT r.previous_id FROM responses r JOIN continued ON r.id = continued.id \
                 WHERE r.previous_id IS NOT NULL \
             ) \
             DELETE FROM responses WHERE created_ms < $1 \
             AND id NOT IN (SELECT id FROM continued)",
        )
        .bind(before_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The bytes each kept response takes (its input and response), oldest first (for tests and
    /// operators: a conversation's rows grow with their own turns, not with the conversation).
    pub async fn kept_response_sizes(&self) -> Result<Vec<i64>, LedgerError> {
        let rows = sqlx::query(
            "SELECT CAST(LENGTH(input) + LENGTH(response) AS BIGINT) AS bytes FROM responses \
             ORDER BY created_ms, id",
        )
        .fetch_all(self.reads())
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<i64, _>("bytes")?))
            .collect()
    }

    /// How many responses are kept, expired or not (for tests and operators).
    pub async fn kept_responses(&self) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM responses")
            .fetch_one(self.reads())
            .await?;
        Ok(row.try_get("n")?)
    }
}
