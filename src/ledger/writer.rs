//! Writing finished requests to the ledger, off the request path: one batch in one transaction, then
//! one JSON line per request to the request log if one is configured. The batches, and what to do
//! when a write fails, belong to [`crate::outcome`]'s background task.

use tokio::io::AsyncWriteExt;

use super::row::{AttemptRow, RequestRow};
use super::store::{LedgerError, Store};
use crate::config::RequestLog;

/// A request the database refused to store, with its attempts and the database's reason.
pub struct Refused<'a> {
    pub request: &'a RequestRow,
    pub attempts: Vec<&'a AttemptRow>,
    pub reason: String,
}

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

    /// Stores one batch in one transaction. A batch the database refuses for what is in it is
    /// stored request by request instead, so that one row it cannot hold never keeps the others
    /// out; the requests it still refuses are returned, to be set aside.
    pub async fn insert<'a>(
        &self,
        requests: &[&'a RequestRow],
        attempts: &[&'a AttemptRow],
    ) -> Result<Vec<Refused<'a>>, LedgerError> {
        match self.store.insert(requests, attempts).await {
            Ok(()) => Ok(Vec::new()),
            Err(err) if err.is_refusal() => self.insert_each(requests, attempts).await,
            Err(err) => Err(err),
        }
    }

    async fn insert_each<'a>(
        &self,
        requests: &[&'a RequestRow],
        attempts: &[&'a AttemptRow],
    ) -> Result<Vec<Refused<'a>>, LedgerError> {
        let mut refused = Vec::new();
        for request in requests {
            let own: Vec<&AttemptRow> = attempts
                .iter()
                .copied()
                .filter(|attempt| attempt.request_id == request.id)
                .collect();
            match self.store.insert(&[request], &own).await {
                Ok(()) => {}
                Err(err) if err.is_refusal() => refused.push(Refused {
                    request,
                    attempts: own,
                    reason: err.to_string(),
                }),
                Err(err) => return Err(err),
            }
        }
        Ok(refused)
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
