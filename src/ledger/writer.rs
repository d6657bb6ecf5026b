//! Writing finished requests to the ledger, off the request path: one batch in one transaction, then
//! one JSON line per request to the request log if one is configured. The batches, and what to do
//! when a write fails, belong to [`crate::outcome`]'s background task.

use tokio::io::AsyncWriteExt;

use super::row::{AttemptRow, RequestRow};
use super::store::{LedgerError, Store};
use crate::config::RequestLog;

/// Owns the database connection and the request log.
pub struct LedgerWriter {
    store: Store,
    log: Option<Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>>,
}

impl LedgerWriter {
    pub async fn open(store: Store, log: Option<RequestLog>) -> LedgerWriter {
        let log: Option<Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>> = match log {
            None => None,
            Some(RequestLog::Stderr) => Some(Box::new(tokio::io::stderr())),
            Some(RequestLog::File(path)) => {
                match tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                {
                    Ok(file) => Some(Box::new(file)),
                    Err(err) => {
                        tracing::error!(
                            "cannot open the request log {}: {err}; request lines are not written",
                            path.display()
                        );
                        None
                    }
                }
            }
        };
        LedgerWriter { store, log }
    }

    /// Stores one batch: every request and attempt, or none.
    pub async fn insert(
        &self,
        requests: &[&RequestRow],
        attempts: &[&AttemptRow],
    ) -> Result<(), LedgerError> {
        self.store.insert(requests, attempts).await
    }

    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.store.ping().await
    }

    /// One JSON line per stored request, if the request log is on.
    pub async fn log(&mut self, requests: &[&RequestRow]) {
        let Some(out) = &mut self.log else { return };
        let mut lines = Vec::with_capacity(requests.len() * 300);
        for row in requests {
            if serde_json::to_writer(&mut lines, row).is_ok() {
                lines.push(b'\n');
            }
        }
        if let Err(err) = out.write_all(&lines).await {
            tracing::warn!("cannot write the request log: {err}");
        }
    }

    pub async fn close(mut self) {
        if let Some(out) = &mut self.log {
            let _ = out.flush().await;
        }
        self.store.close().await;
    }
}
