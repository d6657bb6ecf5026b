//! The ledger as a consumer of finished requests: each batch the background task ([`super::dispatch`])
//! hands it is written to the database, or to the spool while the database is away.
//!
//! The database never holds the queue up: a write that fails, or takes longer than
//! `WRITE_TIMEOUT`, puts the batch in the spool (loudly: log, `tierwise_ledger_write_errors_total`,
//! `/readyz`), and while the ledger is degraded every batch goes to the spool behind it; once a
//! second ([`Recorder::tick`]) it checks whether the database answers and, when it does, replays
//! the spool in order, each batch held to `WRITE_TIMEOUT` too (a database that answers its ping but
//! blocks on writes leaves the ledger degraded, not the task waiting). A request the database
//! refuses for what is in it is set aside, and the rest of its batch stored (see
//! [`LedgerWriter::insert`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::timeout;

use super::{Outcome, Recorder};
use crate::ledger::{AttemptRow, LedgerHealth, LedgerWriter, ReplayError, RequestRow, Spool};

/// How long one write may take before its batch is spooled instead. A write that did land after
/// all is skipped when the spool is replayed (inserts skip rows already stored).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl Recorder for Ledger {
    fn record<'a>(&'a mut self, batch: &'a [Outcome]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let requests: Vec<&RequestRow> = batch.iter().map(|o| &o.request).collect();
            let attempts: Vec<&AttemptRow> = batch.iter().flat_map(|o| &o.attempts).collect();
            self.store(&requests, &attempts).await;
            self.writer.log(&requests).await;
        })
    }

    fn tick(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.degraded() {
                self.recover().await;
            }
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if self.degraded() {
                self.recover().await;
            }
            if self.degraded() {
                tracing::error!(
                    records = self.spool.records(),
                    spool = %self.spool.path().display(),
                    "the ledger's database is still away at shutdown: the spooled records stay on disk and are written at the next start"
                );
            }
            self.writer.close().await;
        })
    }
}

/// The ledger as the background task sees it: the database, and the spool while it is away.
pub struct Ledger {
    writer: LedgerWriter,
    spool: Spool,
    health: Arc<LedgerHealth>,
}

impl Ledger {
    pub fn new(writer: LedgerWriter, spool: Spool, health: Arc<LedgerHealth>) -> Ledger {
        let ledger = Ledger {
            writer,
            spool,
            health,
        };
        ledger.publish();
        ledger
    }

    fn degraded(&self) -> bool {
        !self.spool.is_empty()
    }

    /// Stores one batch, or spools it: never waits longer than `WRITE_TIMEOUT` on the database.
    async fn store(&mut self, requests: &[&RequestRow], attempts: &[&AttemptRow]) {
        if !self.degraded() {
            let written = timeout(WRITE_TIMEOUT, self.writer.insert(requests, attempts)).await;
            let failure = match written {
                Ok(Ok(refused)) => {
                    crate::metrics::ledger_written(requests.len() - refused.len());
                    self.spool.set_aside(&refused).await;
                    crate::metrics::ledger_refused_total(self.health.refused());
                    return;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {} ms", WRITE_TIMEOUT.as_millis()),
            };
            crate::metrics::ledger_write_failed();
            tracing::error!(
                records = requests.len(),
                spool = %self.spool.path().display(),
                "LEDGER WRITE FAILED ({failure}); spooling until the database answers again"
            );
        }
        match self.spool.append(requests, attempts).await {
            Ok(true) => {}
            Ok(false) => {
                self.drop_batch(requests.len(), "the spool is full (ledger.spool_max_bytes)")
            }
            Err(err) => self.drop_batch(requests.len(), &format!("cannot write the spool: {err}")),
        }
        self.publish();
    }

    fn drop_batch(&self, records: usize, why: &str) {
        self.health.add_dropped(records as u64);
        crate::metrics::ledger_dropped(records);
        tracing::error!(
            records,
            spool = %self.spool.path().display(),
            "LEDGER RECORDS LOST: {why}"
        );
    }

    /// Replays the spool if the database answers again.
    async fn recover(&mut self) {
        if !matches!(timeout(WRITE_TIMEOUT, self.writer.ping()).await, Ok(Ok(()))) {
            return;
        }
        match self.spool.replay(&self.writer, WRITE_TIMEOUT).await {
            Ok(records) => {
                crate::metrics::ledger_written(records as usize);
                tracing::warn!(
                    records,
                    "the ledger's database answers again: every spooled record is written"
                );
            }
            Err(ReplayError::Store(err)) => {
                crate::metrics::ledger_write_failed();
                tracing::warn!("the ledger's database is still refusing writes: {err}");
            }
            Err(ReplayError::Timeout(limit)) => {
                crate::metrics::ledger_write_failed();
                tracing::warn!(
                    "the ledger's database answers but did not store a spooled batch within {} ms; still spooling",
                    limit.as_millis()
                );
            }
            Err(ReplayError::Io(err)) => tracing::error!(
                spool = %self.spool.path().display(),
                "cannot read the spool: {err}"
            ),
        }
        self.publish();
    }

    /// What `/readyz` and `/metrics` show.
    fn publish(&self) {
        self.health.set(self.degraded(), self.spool.records());
        crate::metrics::ledger_spool(self.degraded(), self.spool.records());
        crate::metrics::ledger_refused_total(self.health.refused());
    }
}
