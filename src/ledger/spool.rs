//! The ledger's spool: where finished requests go while the database is away, so that a request
//! never waits on the database and nothing recorded is lost. An append-only file of batches, one
//! JSON line each (every row as its column values, so the row is still defined once), synced to
//! disk per batch; replayed in order once the store answers again (inserts skip rows already
//! stored, so a replay cut short is simply replayed again), and at start-up if a crash left one.
//!
//! The file is capped (`ledger.spool_max_bytes`): past the cap new batches are dropped, counted
//! and logged, rather than fill the disk the gateway runs on. Requests the database refuses for
//! their content are set aside beside it ([`Spool::set_aside`]), so that they never block a replay.
//!
//! A crash or a full disk can cut a batch's line anywhere, even inside a character. A torn line
//! is set aside too, with its reason, and counted; the lines after it are replayed; and the next
//! batch starts on a line of its own instead of being glued to the torn one. Each batch of a replay
//! has `limit` to be stored (a database that answers its ping but blocks on writes stays degraded);
//! a replay cut short resumes after the batches it already stored.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

use super::row::{AttemptRow, LedgerRow, RequestRow};
use super::store::LedgerError;
use super::writer::{LedgerWriter, Refused};

/// What `/readyz` and `/metrics` show of the ledger.
#[derive(Debug, Default)]
pub struct LedgerHealth {
    spooling: AtomicBool,
    spooled: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    torn: AtomicU64,
}

impl LedgerHealth {
    /// The database is away and records go to the spool.
    pub fn degraded(&self) -> bool {
        self.spooling.load(Ordering::Relaxed)
    }

    /// Records in the spool, waiting for the database.
    pub fn spooled(&self) -> u64 {
        self.spooled.load(Ordering::Relaxed)
    }

    /// Records dropped because the spool was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records the database refused for their content and that were set aside, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Spool lines that were cut mid-way (a crash, a full disk) and set aside, since start.
    pub fn torn(&self) -> u64 {
        self.torn.load(Ordering::Relaxed)
    }

    pub fn set(&self, spooling: bool, spooled: u64) {
        self.spooling.store(spooling, Ordering::Relaxed);
        self.spooled.store(spooled, Ordering::Relaxed);
    }

    pub fn add_dropped(&self, records: u64) {
        self.dropped.fetch_add(records, Ordering::Relaxed);
    }

    pub fn add_refused(&self, records: u64) {
        self.refused.fetch_add(records, Ordering::Relaxed);
    }
}

pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    bytes: u64,
    records: u64,
    health: Arc<LedgerHealth>,
    /// The bytes at the file's start that a replay cut short has already stored or set aside.
    replayed: u64,
    /// The file does not end with a line's end: its last batch was cut, and the next one must not
    /// be appended onto it.
    torn_tail: bool,
}

/// Why a replay stopped.
pub enum ReplayError {
    /// The database is still away: the spool stays as it is.
    Store(LedgerError),
    /// The database took longer than the limit to store one batch.
    Timeout(Duration),
    Io(std::io::Error),
}

impl Spool {
    /// The spool at `path`, with what an earlier run left in it.
    pub async fn open(path: &Path, max_bytes: u64, health: Arc<LedgerHealth>) -> Spool {
        let mut spool = Spool {
            path: path.to_path_buf(),
            max_bytes,
            bytes: 0,
            records: 0,
            health,
            replayed: 0,
            torn_tail: false,
        };
        if let Ok(file) = tokio::fs::File::open(path).await {
            let mut lines = BufReader::new(file);
            let mut line = Vec::new();
            while let Ok(read) = lines.read_until(b'\n', &mut line).await
                && read > 0
            {
                spool.bytes += read as u64;
                spool.torn_tail = line.last() != Some(&b'\n');
                spool.records += batch(&line).map_or(0, |(requests, _)| requests.len() as u64);
                line.clear();
            }
        }
        spool
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Nothing waits to be replayed: no record, and no torn line to set aside.
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.bytes == 0
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one batch and syncs it to disk. `Ok(false)`: the spool is full and the batch was
    /// dropped.
    pub async fn append(
        &mut self,
        requests: &[&RequestRow],
        attempts: &[&AttemptRow],
    ) -> std::io::Result<bool> {
        let line = serde_json::json!({
            "requests": requests.iter().map(|row| row.to_json()).collect::<Vec<_>>(),
            "attempts": attempts.iter().map(|row| row.to_json()).collect::<Vec<_>>(),
        });
        let mut line = if self.torn_tail {
            format!("\n{line}")
        } else {
            line.to_string()
        };
        line.push('\n');
        if self.bytes + line.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            file.write_all(line.as_bytes()).await?;
            file.sync_data().await
        };
        if let Err(err) = written.await {
            // Part of the line may have reached the file (a full disk): whatever comes next
            // starts on a line of its own.
            self.torn_tail = true;
            return Err(err);
        }
        self.torn_tail = false;
        self.bytes += line.len() as u64;
        self.records += requests.len() as u64;
        Ok(true)
    }

    /// Stores every spooled batch in order, then empties the spool. Stops at the first batch the
    /// store refuses or does not store within `limit`, leaving the rest for the next replay; a
    /// torn line is set aside and the replay goes on.
    pub async fn replay(
        &mut self,
        writer: &LedgerWriter,
        limit: Duration,
    ) -> Result<u64, ReplayError> {
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.forget();
                return Ok(0);
            }
            Err(err) => return Err(ReplayError::Io(err)),
        };
        file.seek(SeekFrom::Start(self.replayed))
            .await
            .map_err(ReplayError::Io)?;
        let mut lines = BufReader::new(file);
        let mut line = Vec::new();
        let mut replayed = 0;
        loop {
            line.clear();
            let read = lines
                .read_until(b'\n', &mut line)
                .await
                .map_err(ReplayError::Io)?;
            if read == 0 {
                break;
            }
            match batch(&line) {
                Ok((requests, attempts)) => {
                    let requests: Vec<&RequestRow> = requests.iter().collect();
                    let attempts: Vec<&AttemptRow> = attempts.iter().collect();
                    let refused = tokio::time::timeout(limit, writer.insert(&requests, &attempts))
                        .await
                        .map_err(|_| ReplayError::Timeout(limit))?
                        .map_err(ReplayError::Store)?;
                    replayed += (requests.len() - refused.len()) as u64;
                    self.records = self.records.saturating_sub(requests.len() as u64);
                    self.set_aside(&refused).await;
                }
                Err(Torn::Blank) => {}
                Err(Torn::Cut(why)) => self.set_aside_torn(&line, why).await,
            }
            self.replayed += read as u64;
        }
        tokio::fs::remove_file(&self.path)
            .await
            .map_err(ReplayError::Io)?;
        self.forget();
        Ok(replayed)
    }

    fn forget(&mut self) {
        self.bytes = 0;
        self.records = 0;
        self.replayed = 0;
        self.torn_tail = false;
    }
}

impl Spool {
    /// Where requests the database refused are kept: beside the spool, in its format (one batch a
    /// line, plus the database's reason), so that once the cause is fixed the file can be renamed
    /// to the spool's and is replayed at the next start.
    pub fn set_aside_path(&self) -> PathBuf {
        let mut path = self.path.clone().into_os_string();
        path.push(".refused");
        PathBuf::from(path)
    }

    /// Keeps requests the database refused out of its way, loudly: a log line each, with the
    /// database's reason, and the count `/readyz` and `tierwise_ledger_records_refused_total` show.
    pub async fn set_aside(&self, refused: &[Refused<'_>]) {
        if refused.is_empty() {
            return;
        }
        let mut lines = String::new();
        for row in refused {
            tracing::error!(
                request_id = %row.request.id,
                set_aside = %self.set_aside_path().display(),
                "LEDGER RECORD REFUSED by the database ({}); set aside, the rows behind it are stored",
                row.reason
            );
            let line = serde_json::json!({
                "requests": [row.request.to_json()],
                "attempts": row.attempts.iter().map(|attempt| attempt.to_json()).collect::<Vec<_>>(),
                "reason": row.reason,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        self.health.add_refused(refused.len() as u64);
        if let Err(err) = self.append_set_aside(lines.as_bytes()).await {
            tracing::error!(
                records = refused.len(),
                "LEDGER RECORDS LOST: cannot write {}: {err}",
                self.set_aside_path().display()
            );
        }
    }
}

impl Spool {
    /// Appends to the set-aside file, synced: what is there is all that is left of those records.
    async fn append_set_aside(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.set_aside_path())
            .await?;
        file.write_all(bytes).await?;
        file.sync_data().await
    }

    /// Sets a torn spool line aside, as lossy text with the reason, and counts it: a line cut by
    /// a crash or a full disk is not a batch, but what is left of it may still be read by hand.
    async fn set_aside_torn(&self, line: &[u8], why: &str) {
        let text = String::from_utf8_lossy(line);
        // The line's text is not logged: with `ledger.store_content` it holds prompts and answers,
        // which go only where the ledger's own rows go (the set-aside file).
        tracing::error!(
            spool = %self.path.display(),
            set_aside = %self.set_aside_path().display(),
            bytes = line.len(),
            "LEDGER SPOOL LINE TORN ({why}); set aside, the batches behind it are replayed"
        );
        self.health.torn.fetch_add(1, Ordering::Relaxed);
        let mut entry = serde_json::json!({ "torn": text, "reason": why }).to_string();
        entry.push('\n');
        if let Err(err) = self.append_set_aside(entry.as_bytes()).await {
            tracing::error!(
                "LEDGER SPOOL LINE LOST: cannot write {}: {err}",
                self.set_aside_path().display()
            );
        }
    }
}

/// Why a spool line is not a batch.
enum Torn {
    /// Nothing but a line's end (where a batch was started on a fresh line after a torn one).
    Blank,
    Cut(&'static str),
}

/// One spool line (its line end included, if it has one) as the batch it holds.
fn batch(line: &[u8]) -> Result<(Vec<RequestRow>, Vec<AttemptRow>), Torn> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(Torn::Blank);
    }
    let text = std::str::from_utf8(line).map_err(|_| Torn::Cut("not UTF-8: cut mid-character"))?;
    parse(text).ok_or(Torn::Cut("not a whole batch"))
}

/// A request row as spooled by any version: one spooled before the quality columns, the key's
/// name, the cache writes, the server or the cache's avoided cost were added (an upgrade with
/// records still in the spool) gets the values their migrations give old rows.
fn with_added_columns(row: &[Value]) -> Vec<Value> {
    let added = [
        Value::String("product".into()),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::from(0),
        Value::Null,
        Value::Null,
    ];
    let mut row = row.to_vec();
    let first_added = RequestRow::COLUMNS.len() - added.len();
    if (first_added..RequestRow::COLUMNS.len()).contains(&row.len()) {
        row.extend_from_slice(&added[row.len() - first_added..]);
    }
    row
}

fn parse(line: &str) -> Option<(Vec<RequestRow>, Vec<AttemptRow>)> {
    let batch: Value = serde_json::from_str(line).ok()?;
    let rows = |key: &str| -> Option<Vec<Value>> { batch.get(key)?.as_array().cloned() };
    let requests = rows("requests")?
        .iter()
        .map(|row| RequestRow::from_json(&with_added_columns(row.as_array()?)))
        .collect::<Option<Vec<_>>>()?;
    let attempts = rows("attempts")?
        .iter()
        .map(|row| {
            let mut row = row.as_array()?.clone();
            // Spooled before the server or the answered column: the migrations give old rows
            // NULL.
            while (AttemptRow::COLUMNS.len() - 2..AttemptRow::COLUMNS.len()).contains(&row.len()) {
                row.push(Value::Null);
            }
            AttemptRow::from_json(&row)
        })
        .collect::<Option<Vec<_>>>()?;
    Some((requests, attempts))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::ledger::row::LedgerRow;

    /// A spool left by a version before the quality columns replays after the upgrade, its rows
    /// product traffic; a row with columns this version does not know is not guessed at.
    #[test]
    fn a_spool_written_before_the_quality_columns_replays() {
        let row = RequestRow::new("r1".into(), 7, Cow::Borrowed("chat"));
        let serde_json::Value::Array(mut values) = row.to_json() else {
            panic!("a row is an array");
        };
        // Before the avoided cost, the server too, the cache writes too, before `key_name` too, then before the
        // quality columns too.
        for missing in [1, 2, 3, 4, 8] {
            values.truncate(RequestRow::COLUMNS.len() - missing);
            let old =
                serde_json::json!({ "requests": [values.clone()], "attempts": [] }).to_string();
            let (requests, attempts) = parse(&old).expect("an old batch parses");
            assert_eq!((requests, attempts.len()), (vec![row.clone()], 0));
        }

        values.truncate(RequestRow::COLUMNS.len() - 9);
        let older = serde_json::json!({ "requests": [values], "attempts": [] }).to_string();
        assert!(parse(&older).is_none());
    }
}
