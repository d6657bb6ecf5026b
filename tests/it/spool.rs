//! Issue 22, items 3 and 12: the ledger's spool under a torn line and under a database that
//! answers its ping but blocks on writes.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tierwise::config::file::{spanned, text};
use tierwise_fake::FakeUpstream;

use crate::util::*;

/// Takes the SQLite ledger's `requests` table away (every insert fails) or brings it back.
async fn requests_table(ledger_url: &str, away: bool) {
    let mut conn = sqlx::SqliteConnection::connect(ledger_url).await.unwrap();
    let sql = if away {
        "ALTER TABLE requests RENAME TO requests_away"
    } else {
        "ALTER TABLE requests_away RENAME TO requests"
    };
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

/// Asks `n` one-word questions, each bounded: a request that waits on the ledger fails the test.
async fn ask_quickly(gw: &TestGateway, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let answer = tokio::time::timeout(Duration::from_secs(5), gw.ask("summarize"))
            .await
            .expect("a request never waits on the ledger");
        assert_eq!(answer.status, 200, "{}", answer.text);
        ids.push(answer.header("x-tierwise-request-id").unwrap().to_string());
    }
    ids
}

/// What a crash or a full disk leaves at the spool's end: the start of a batch, cut.
fn tear(spool: &Path, cut: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(spool)
        .unwrap();
    file.write_all(cut).unwrap();
}

/// A spool line cut mid-batch — once inside a two-byte character (not UTF-8), once between ASCII
/// bytes — by a gateway that then stopped: at the next start the batches behind it are appended
/// on lines of their own; once the database is back every record before and after the torn lines
/// is stored, each torn line is set aside with its reason and counted, and the ledger is `ok`.
/// Before the fix replay stopped at the bad UTF-8 for good (`/readyz` degraded forever), and a
/// batch appended onto an ASCII-torn line was lost without a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_line_never_blocks_replay_nor_loses_the_records_behind_it() {
    let up = FakeUpstream::start().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes();
    let spool = config.config().ledger.spool;
    let gw = TestGateway::start(&config).await;
    let ledger_url = gw.ledger_url.clone();
    requests_table(&ledger_url, true).await;
    let mut ids = ask_quickly(&gw, 3).await;
    gw.shutdown().await;

    for cut in [
        &b"{\"requests\":[[\"torn-ascii\",17"[..],
        &b"{\"requests\":[[\"torn-\xc3"[..],
    ] {
        tear(&spool, cut);
        let gw = TestGateway::start(&config).await;
        ids.extend(ask_quickly(&gw, 2).await);
        gw.shutdown().await;
    }

    requests_table(&ledger_url, false).await;
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    for id in &ids {
        stored(&store, id).await;
    }
    gw.wait_for_ledger("ok", Duration::from_secs(10)).await;
    let ledger = gw.ledger().await;
    assert_eq!(ledger["torn_spool_lines"], 2, "{ledger}");
    assert!(!spool.exists(), "the spool is emptied once replayed");
    let mut set_aside = spool.into_os_string();
    set_aside.push(".refused");
    let set_aside = std::fs::read_to_string(&set_aside).unwrap();
    assert_eq!(set_aside.lines().count(), 2, "{set_aside}");
    assert!(set_aside.contains("torn-ascii"), "{set_aside}");
    assert!(set_aside.contains("not a whole batch"), "{set_aside}");
    assert!(set_aside.contains("not UTF-8"), "{set_aside}");
}

/// A database that answers its ping but blocks every write (PostgreSQL's table locked by another
/// session): each spooled batch's replay is held to the write timeout, so the ledger stays
/// degraded and requests keep being answered (a queue of one: one stuck replay would hold them);
/// once the lock goes, the spool is replayed and nothing is lost. Before the fix the replay's
/// insert waited on the lock forever, and every request behind the full queue with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_answers_its_ping_but_blocks_leaves_the_ledger_degraded_not_requests_waiting()
{
    let up = FakeUpstream::start().await;
    let url = postgres_url().await;
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| {
            c.0.ledger.url = Some(text(url.clone()));
            c.0.ledger.queue = Some(spanned(1));
        });
    let gw = TestGateway::start(&config).await;
    let store = gw.store().await;
    // The ledger's tables exist once the gateway has started.
    let mut ids = ask_quickly(&gw, 1).await;
    stored(&store, &ids[0]).await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut lock = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    ids.extend(ask_quickly(&gw, 1).await);
    gw.wait_for_ledger("degraded", Duration::from_secs(10))
        .await;
    // The dispatcher retries every second: over four, it has tried to replay more than once.
    let asking = Instant::now();
    while asking.elapsed() < Duration::from_secs(4) {
        ids.extend(ask_quickly(&gw, 1).await);
    }
    assert_eq!(gw.ledger().await["status"], "degraded");

    lock.rollback().await.unwrap();
    gw.wait_for_ledger("ok", Duration::from_secs(10)).await;
    stored(&store, ids.last().unwrap()).await;
    let rows = store.requests(0, i64::MAX, None).await.unwrap();
    assert_eq!(rows.len(), ids.len(), "each record exactly once");
}
