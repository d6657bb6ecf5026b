//! Writing finished requests to the ledger, off the request path: one batch at a time, in one
//! transaction, retried until it lands — loudly, in the log and in
//! `tierwise_ledger_write_errors_total` — then one JSON line per request to the request log if one
//! is configured. The batches come from [`crate::outcome`]'s background task.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::row::{AttemptRow, RequestRow};
use super::store::Store;
use crate::config::RequestLog;

/// Owns the database connection and the request log.
pub struct LedgerWriter {
    store: Store,
    log: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
}

impl LedgerWriter {
    pub async fn open(store: Store, log: Option<RequestLog>) -> LedgerWriter {
        let log: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = match log {
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

    /// Writes one batch, retrying until it lands: a record the ledger accepted is never dropped.
    pub async fn write(&mut self, requests: &[&RequestRow], attempts: &[&AttemptRow]) {
        let mut wait = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            match self.store.insert(requests, attempts).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::warn!(
                            failures,
                            records = requests.len(),
                            "ledger write succeeded after retrying"
                        );
                    }
                    crate::metrics::ledger_written(requests.len());
                    break;
                }
                Err(err) => {
                    failures += 1;
                    crate::metrics::ledger_write_failed();
                    tracing::error!(
                        records = requests.len(),
                        attempt = failures,
                        "LEDGER WRITE FAILED, retrying in {} ms; requests wait once the queue is full: {err}",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.log(requests).await;
    }

    async fn log(&mut self, requests: &[&RequestRow]) {
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
