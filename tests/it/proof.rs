//! The proof suite's short forms: the release promises tried against the `tierwise` binary as an
//! operator runs it — secrets never leave it, a SIGKILL loses only what the durability window
//! allows, a PostgreSQL outage under load loses nothing. (The soak is `tests/soak`.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tierwise::config::file::{spanned, text};
use tierwise_fake::{FakeUpstream, Fault};

use crate::util::*;

/// A fresh directory for one run's config, ledger, spool and logs.
pub(crate) fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tierwise-proof-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The environment the test configs' `${CLIENT_KEY}` and `${LOCAL_KEY}` read.
pub(crate) const KEYS: [(&str, &str); 2] =
    [("CLIENT_KEY", CLIENT_KEY), ("LOCAL_KEY", PROVIDER_KEY)];

/// A directory for one run of the binary on `config`, with its SQLite ledger and spool inside it:
/// the directory and the config file's path.
pub(crate) fn with_ledger_in_dir(name: &str, config: TestConfig) -> (PathBuf, PathBuf) {
    let dir = run_dir(name);
    let config = config.with(|c| {
        c.0.ledger.url = Some(text("sqlite://ledger.db"));
        c.0.ledger.spool = Some(text("ledger.spool"));
    });
    let path = dir.join("tierwise.toml");
    std::fs::write(&path, config.toml()).unwrap();
    (dir, path)
}

/// A `tierwise serve` process, killed when dropped: a test that fails midway leaves no gateway
/// running behind it (holding its port, its CPU, and whatever its parent had open).
pub(crate) struct Served(Child);

impl std::ops::Deref for Served {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Both are no-ops for a process the test already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tierwise serve` on `config` with `env`, its stderr to `log`; returns it and its base URL.
pub(crate) async fn serve(config: &Path, env: &[(&str, &str)], log: &Path) -> (Served, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tierwise"));
    command
        .env_remove("TIERWISE_CONFIG")
        .env("TIERWISE_LOG", "warn")
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = Served(command.spawn().unwrap());
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        // Keep reading so that the gateway never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        line
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("tierwise listening on ")
        .unwrap_or_else(|| {
            panic!(
                "no address line: {line:?}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    (child, url)
}

pub(crate) fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

pub(crate) async fn exited(mut child: Served) -> std::process::ExitStatus {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the gateway exits")
    .unwrap()
}

const CLIENT: &str = "tw-client-SECRETCLIENT0a1b";
const WRONG: &str = "tw-client-SECRETWRONG2c3d";
const ADMIN: &str = "tw-admin-SECRETADMIN4e5f";
const METRICS: &str = "tw-metrics-SECRETMETRICS6g7h";
const UPSTREAM: &str = "sk-proj-SECRETUPSTREAM8i9j";
const PG_PASSWORD: &str = "SECRETPGPASSWORDk0l1";
/// What must never be found: the part of each secret no other text has.
const MARKS: [&str; 6] = [
    "SECRETCLIENT",
    "SECRETWRONG",
    "SECRETADMIN",
    "SECRETMETRICS",
    "SECRETUPSTREAM",
    "SECRETPGPASSWORD",
];

fn leaks(what: &str, text: &str) -> Vec<String> {
    MARKS
        .iter()
        .filter(|mark| text.contains(*mark))
        .map(|mark| format!("{mark} in {what}"))
        .collect()
}

/// Traffic that touches every surface with recognizable fake keys — answers, streams, embeddings,
/// a wrong client key, an upstream 401 whose body quotes the key, fallbacks, the admin API,
/// /metrics — then every log line at every level, the request log, the ledger's files, every body
/// and header served, and `tierwise check` (its errors included) searched for them: zero hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_the_ledger_metrics_admin_json_errors_or_check() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    let dir = run_dir("secrets");
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).with(|c| {
        c.0.server.api_keys = Some(vec![text("${TW_CLIENT}")]);
        c.0.server.admin_key = Some(text("${TW_ADMIN}"));
        c.0.server.metrics_key = Some(text("${TW_METRICS}"));
        c.0.ledger.url = Some(text("sqlite://ledger.db"));
        c.0.ledger.spool = Some(text("ledger.spool"));
        c.0.ledger.request_log = Some(text("requests.jsonl"));
        c.0.ledger.store_content = true;
        for provider in ["vllm", "openai"] {
            c.provider(provider).api_key = Some(text("${TW_UPSTREAM}"));
        }
        c.provider("vllm").health.interval_ms = Some(spanned(50));
    });
    let path = dir.join("tierwise.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let env = [
        ("TW_CLIENT", CLIENT),
        ("TW_ADMIN", ADMIN),
        ("TW_METRICS", METRICS),
        ("TW_UPSTREAM", UPSTREAM),
        // Everything the gateway and its crates log, at every level.
        ("TIERWISE_LOG", "trace"),
    ];
    let log = dir.join("stderr.log");
    let (child, url) = serve(&path, &env, &log).await;
    let http = reqwest::Client::new();
    let mut served = String::new();
    let mut call = async |method: &str, path: &str, key: &str, body: Option<Value>| {
        let mut request = http
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        served.push_str(&format!("{status} {:?}\n", response.headers()));
        served.push_str(&response.text().await.unwrap());
        served.push('\n');
        status.as_u16()
    };

    const CHAT: &str = "/v1/chat/completions";
    let embed = json!({"model": "embed", "input": "hi"});
    for (path, key, body, status) in [
        (CHAT, CLIENT, chat("summarize", "hi"), 200),
        (CHAT, CLIENT, chat_stream("summarize"), 200),
        ("/v1/embeddings", CLIENT, embed, 200),
        (CHAT, WRONG, chat("summarize", "hi"), 401),
    ] {
        assert_eq!(call("POST", path, key, Some(body)).await, status, "{path}");
    }
    // OpenAI's 401 quotes the key it was given, masked; here, whole.
    let quoting = Fault::Status {
        status: 401,
        body: Some(
            json!({"error": {"message": format!("Incorrect API key provided: {UPSTREAM}"), "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
                .to_string(),
        ),
        retry_after: None,
    };
    api.set_fault(quoting.clone());
    local.set_fault(quoting);
    for body in [chat("summarize", "hi"), chat_stream("classification")] {
        assert_eq!(call("POST", CHAT, CLIENT, Some(body)).await, 502);
    }
    local.set_fault(Fault::None);
    api.set_fault(Fault::None);
    for path in [
        "/admin/api/providers",
        "/admin/api/report?since=1h",
        "/v1/models",
        "/readyz",
    ] {
        let key = if path.starts_with("/admin") {
            ADMIN
        } else {
            CLIENT
        };
        call("GET", path, key, None).await;
    }
    assert_eq!(call("GET", "/metrics", METRICS, None).await, 200);
    assert_eq!(call("GET", "/admin/api/providers", CLIENT, None).await, 401);
    signal(&child, "-TERM");
    assert!(exited(child).await.success());
    // Every upstream call carried the key: the gateway had it to leak.
    assert_eq!(
        api.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM}").as_str())
    );

    let mut found = leaks("responses", &served);
    for file in std::fs::read_dir(&dir).unwrap() {
        let file = file.unwrap().path();
        if file.file_name().unwrap() == "tierwise.toml" {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        found.extend(leaks(
            &file.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        ));
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 50, "trace logging is on: {logged}");

    // `check`, with the keys inline in the file, a PostgreSQL password in the ledger URL, and a
    // mistake on the key's own line.
    let mut inline = config.toml().replace("${TW_UPSTREAM}", UPSTREAM);
    inline = inline
        .replace("${TW_CLIENT}", CLIENT)
        .replace("${TW_ADMIN}", ADMIN);
    inline = inline.replace(
        "sqlite://ledger.db",
        &format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/test?password={PG_PASSWORD}"),
    );
    for (name, text) in [
        ("valid", inline.clone()),
        (
            "key with a line break",
            inline.replacen(UPSTREAM, &format!("{UPSTREAM}\\n"), 1),
        ),
        (
            "unknown key beside a secret",
            inline.replacen("api_key =", "api_kee =", 1),
        ),
    ] {
        let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args(["check", "--config"])
            .arg(&path)
            .env("TW_METRICS", METRICS)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        found.extend(leaks(&format!("tierwise check ({name})"), &said));
        std::fs::remove_file(path).ok();
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    std::fs::remove_dir_all(dir).ok();
}

/// One client asking in a loop until `stop`: each answered request's id and when it was answered.
async fn keep_asking(
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, std::time::Instant)> {
    let http = reqwest::Client::new();
    let mut answered = Vec::new();
    while !*stop.borrow() {
        let sent = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", "hi"))
            .send()
            .await;
        let Ok(response) = sent else { break };
        assert_eq!(response.status(), 200, "every request is served");
        let id = response.headers()["x-tierwise-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        if response.bytes().await.is_ok() {
            answered.push((id, std::time::Instant::now()));
        }
    }
    answered
}

async fn sqlite_ids(db: &Path, table: &str) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let ids = sqlx::query_scalar(&format!("SELECT id FROM {table}"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    ids
}

/// How long after its answer a request's record may still be only in memory: the writer's
/// linger and one write, bounded by the write timeout after which the batch is spooled (see
/// docs/failures.md, "When the database is away"). A SIGKILL loses at most the records of requests answered this close to it.
const DURABILITY_WINDOW: Duration = Duration::from_millis(2500);

/// SIGKILL under load, then a restart on the same SQLite file: it starts, the file is intact,
/// each request is recorded once, and every request answered longer than the durability window
/// before the kill is there. Then the same while the database is away: the spool a SIGKILL
/// leaves is replayed at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_only_the_durability_window_and_the_spool_is_replayed_at_restart() {
    let up = FakeUpstream::start().await;
    let (dir, path) = with_ledger_in_dir(
        "crash",
        TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes(),
    );
    let env = KEYS;
    let log = dir.join("stderr.log");
    let db = dir.join("ledger.db");

    let (child, url) = serve(&path, &env, &log).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(keep_asking(url.clone(), stopped.clone())))
        .collect();
    // Load until enough requests are older than the window, then kill mid-stream of requests.
    let started = std::time::Instant::now();
    tokio::time::sleep(DURABILITY_WINDOW + Duration::from_secs(2)).await;
    signal(&child, "-KILL");
    let killed = std::time::Instant::now();
    exited(child).await;
    stop.send(true).unwrap();
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    let old: Vec<&String> = answered
        .iter()
        .filter(|(_, at)| *at + DURABILITY_WINDOW < killed)
        .map(|(id, _)| id)
        .collect();
    assert!(
        old.len() > 50,
        "{} requests in {:?}",
        old.len(),
        started.elapsed()
    );

    let (child, url) = serve(&path, &env, &log).await;
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let stored = sqlite_ids(&db, "requests").await;
    let unique: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "each request recorded once");
    let missing: Vec<&&String> = old.iter().filter(|id| !unique.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} requests answered over {DURABILITY_WINDOW:?} before the kill are missing",
        missing.len(),
        old.len()
    );
    let lost = answered.len()
        - answered
            .iter()
            .filter(|(id, _)| unique.contains(id))
            .count();
    eprintln!(
        "SIGKILL under load: {} answered, {} recorded, {lost} lost (answered within {DURABILITY_WINDOW:?} of the kill)",
        answered.len(),
        stored.len()
    );

    // The database away: records go to the spool; a SIGKILL leaves it; the next start replays it.
    let mut conn = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap()
    };
    sqlx::query("ALTER TABLE requests RENAME TO requests_away")
        .execute(&mut conn)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut spooled_ids = Vec::new();
    for _ in 0..20 {
        let answer = Answer::of(
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(CLIENT_KEY)
                .json(&chat("summarize", "hi"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200);
        spooled_ids.push(answer.header("x-tierwise-request-id").unwrap().to_string());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Value = reqwest::get(format!("{url}/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["ledger"]["spooled_records"] == 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Loudly: a log line an operator greps for, and the counter alerts are built on.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("LEDGER WRITE FAILED"), "{logged}");
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(
            |line| line.starts_with("tierwise_ledger_write_errors_total ") && !line.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tierwise_ledger_spooled_records 20"),
        "{metrics}"
    );
    signal(&child, "-KILL");
    exited(child).await;
    sqlx::query("ALTER TABLE requests_away RENAME TO requests")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let (child, url) = serve(&path, &env, &log).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = sqlite_ids(&db, "requests").await;
        if spooled_ids.iter().all(|id| stored.contains(id)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spool was not replayed; log: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready: Value = reqwest::get(format!("{url}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ledger"]["status"], "ok", "{ready}");
    assert!(
        !dir.join("ledger.spool").exists(),
        "the spool is gone once replayed"
    );
    signal(&child, "-TERM");
    exited(child).await;
    std::fs::remove_dir_all(dir).ok();
}

/// A TCP proxy in front of PostgreSQL whose line can be cut (every connection through it closed,
/// new ones refused) and restored: an outage as the gateway meets it, without stopping the server
/// other tests share.
struct Line {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Line {
    async fn to(target: &str) -> Line {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_string();
        let (accepting, connections) = (up.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Line { addr, up, open }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// PostgreSQL cut off under load and brought back: every request is answered throughout, the
/// ledger says it is degraded while the line is down, and afterwards holds every answered request
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_under_load_is_served_throughout_and_loses_nothing() {
    use sqlx::Connection;
    let up = FakeUpstream::start().await;
    let direct = postgres_url().await;
    let line = Line::to("127.0.0.1:5432").await;
    let through_line = direct.replace("127.0.0.1:5432", &line.addr.to_string());
    assert_ne!(through_line, direct);
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| c.0.ledger.url = Some(text(&through_line)));
    let gw = TestGateway::start(&config).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_asking(gw.url.clone(), stopped.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    line.cut();
    gw.wait_for_ledger("degraded", Duration::from_secs(10))
        .await;
    let down = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    line.restore();
    let restored = std::time::Instant::now();
    gw.wait_for_ledger("ok", Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    gw.shutdown().await;

    let mut conn = sqlx::PgConnection::connect(&direct).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM requests")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let unique: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "each request recorded once");
    assert_eq!(stored.len(), answered.len(), "every request recorded");
    for (id, _) in &answered {
        assert!(unique.contains(id), "{id} is missing");
    }
    assert!(answered.len() > 100, "{} requests", answered.len());
    let during = answered
        .iter()
        .filter(|(_, at)| (down..restored).contains(at))
        .count();
    assert!(
        during > 20,
        "{during} requests answered while the database was away"
    );
}

/// SIGTERM with records the SQLite ledger could not take yet (another process holds its write
/// lock): the gateway stops accepting, and by the time it exits every answered request is in the
/// file — written by the shutdown flush, or spooled and replayed before exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_sqlite_writes_every_record_before_exit() {
    use sqlx::Connection;
    const N: usize = 30;
    let up = FakeUpstream::start().await;
    let (dir, path) = with_ledger_in_dir(
        "sigterm-sqlite",
        TestConfig::two_tier(&up.base_url(), &up.base_url()).without_probes(),
    );
    let (child, url) = serve(&path, &KEYS, &dir.join("stderr.log")).await;
    let db = format!("sqlite://{}", dir.join("ledger.db").display());
    let mut holder = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..N {
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    signal(&child, "-TERM");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while http.get(format!("{url}/healthz")).send().await.is_ok() {
        assert!(
            std::time::Instant::now() < until,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert!(exited(child).await.success());
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(rows as usize, N, "every answered request is in the file");
    std::fs::remove_dir_all(dir).ok();
}

/// `server.shutdown_grace_ms` bounds how long SIGTERM waits for requests in flight: with an
/// upstream that never answers and a `total_ms` of a minute, the gateway still exits within the
/// grace period (plus the ledger's flush), not at `total_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_requests_in_flight_no_longer_than_the_grace_period() {
    let up = FakeUpstream::start().await;
    up.set_fault(Fault::Hang);
    let config = TestConfig::two_tier(&up.base_url(), &up.base_url())
        .without_probes()
        .with(|c| {
            c.0.server.shutdown_grace_ms = Some(300);
            c.provider("vllm").timeout.total_ms = Some(60_000);
        });
    let (dir, path) = with_ledger_in_dir("grace", config);
    let (child, url) = serve(&path, &KEYS, &dir.join("stderr.log")).await;
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("summarize", "hi"))
            .send()
            .await
    });
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while up.request_count() == 0 {
        assert!(
            std::time::Instant::now() < until,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = std::time::Instant::now();
    signal(&child, "-TERM");
    let status = exited(child).await;
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    // Far under total_ms; the bound is loose because the machine is shared, not a timing claim.
    assert!(took < Duration::from_secs(15), "exited after {took:?}");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request in flight was cut off"
    );
    std::fs::remove_dir_all(dir).ok();
}
