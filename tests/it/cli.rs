//! The `tierwise` binary as a user runs it: `init`, `check`, and `serve` stopped by SIGTERM.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tierwise::config::TaskKind;
use tierwise::config::file::{ConfigFile, RawProvider, RawRoute, RawTier, text};
use tierwise_fake::FakeUpstream;

use crate::util::{TestConfig, postgres_url};

fn tierwise() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tierwise"));
    command
        .env_remove("TIERWISE_CONFIG")
        .env("TIERWISE_LOG", "warn");
    command
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tierwise-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tierwise` with `args`, insists on success, and parses what it printed as JSON.
fn json_of(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes `toml` as `tierwise.toml` in a fresh temp directory; returns the directory and the file.
fn write_config(name: &str, toml: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("tierwise.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

/// One route `r` on one tier `t` of the provider at `upstream`.
fn one_route(upstream: &str, ledger: &str) -> String {
    let mut file = ConfigFile::default();
    file.server.listen = Some(text("127.0.0.1:0"));
    file.ledger.url = Some(text(ledger));
    file.providers
        .insert(text("up"), RawProvider::new(upstream));
    file.tiers.insert(text("t"), RawTier::new("up", "m"));
    file.routes
        .insert(text("r"), RawRoute::new(TaskKind::Chat, &["t"]));
    TestConfig(file).toml()
}

#[test]
fn init_writes_the_starter_and_refuses_to_overwrite() {
    let dir = temp_dir("init");
    let path = dir.join("tierwise.toml");
    let _ = std::fs::remove_file(&path);
    let out = tierwise().arg("init").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        tierwise::config::STARTER
    );
    let again = tierwise().arg("init").arg(&path).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let check = tierwise()
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("configuration is valid: 6 routes, 5 tiers, 2 providers"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_reports_every_mistake_with_its_line_and_fails() {
    let (dir, path) = write_config(
        "bad",
        "[providers.p]\nbase_url = \"http://x/v1\"\n\n[tiers]\nt = { provider = \"q\", model = \"m\" }\n\n[routes.r]\nkind = \"chat\"\ntiers = [\"u\"]\n",
    );
    let out = tierwise()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has 2 errors"), "{stderr}");
    assert!(
        stderr.contains("line 5: tiers.t.provider: no provider named \"q\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 9: routes.r.tiers: no tier named \"u\""),
        "{stderr}"
    );

    let missing = tierwise()
        .args(["check", "--config"])
        .arg(dir.join("nope.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("tierwise init"));
    std::fs::remove_dir_all(dir).ok();
}

/// Runs `tierwise check --offline` on `toml` with `env` set; returns whether it passed and what
/// it printed to stderr.
fn check_offline(name: &str, toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let (dir, path) = write_config(name, toml);
    let out = tierwise()
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CHECKED: &str = "[providers.p]\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[tiers]\nt = { provider = \"p\", model = \"m\" }\n\n[routes.r]\nkind = \"chat\"\ntiers = [\"t\"]\n";

/// A default that is itself a reference is read (and must be set), never kept as the literal
/// `${B}`; a `${` that survives expansion is refused with its key and line, not kept.
#[test]
fn check_reads_a_reference_nested_in_a_default_and_never_keeps_a_dollar_brace() {
    let toml = format!(
        "[server]\napi_keys = [\"k\"]\nadmin_key = \"${{TW_NESTED_ADMIN:-${{TW_NESTED_FALLBACK}}}}\"\n\n{CHECKED}"
    );
    let (ok, stderr) = check_offline("nested-unset", &toml, &[]);
    assert!(!ok, "an admin key read from an unset variable passed");
    assert!(
        stderr.contains(
            "line 3: server.admin_key: environment variable TW_NESTED_FALLBACK is not set"
        ),
        "{stderr}"
    );
    let (ok, stderr) = check_offline(
        "nested-set",
        &toml,
        &[("TW_NESTED_FALLBACK", "admin-secret-1")],
    );
    assert!(ok, "{stderr}");
    let (ok, stderr) = check_offline(
        "nested-dollar",
        &toml,
        &[("TW_NESTED_FALLBACK", "admin-${secret}")],
    );
    assert!(!ok, "a value holding `${{` was kept");
    assert!(stderr.contains("line 3: server.admin_key:"), "{stderr}");
    assert!(!stderr.contains("admin-$"), "the value leaked: {stderr}");
}

/// A shadow window shorter than `min_samples` could never judge: refused even when
/// `min_samples` is left at its default (50), at the window's line, with what would be right.
#[test]
fn check_refuses_a_shadow_window_under_the_default_min_samples() {
    let toml = CHECKED.replace(
        "tiers = [\"t\"]\n",
        "tiers = [\"t\"]\nshadow = { reference = \"u\", sample_rate = 0.1, window = 20 }\n",
    ) + "\n[tiers.u]\nprovider = \"p\"\nmodel = \"n\"\n\n[prices.n]\ninput = 1.0\noutput = 2.0\n";
    let toml = toml.replace(
        "[tiers]\nt = { provider = \"p\", model = \"m\" }\n",
        "[tiers.t]\nprovider = \"p\"\nmodel = \"m\"\n",
    );
    let (ok, stderr) = check_offline("window-default", &toml, &[]);
    assert!(
        !ok,
        "a window of 20 under the default min_samples of 50 passed"
    );
    assert!(
        stderr.contains("line 11: routes.r.shadow.window: is under min_samples (50, its default)"),
        "{stderr}"
    );
    let (ok, stderr) = check_offline(
        "window-fits",
        &toml.replace("window = 20", "window = 20, min_samples = 20"),
        &[],
    );
    assert!(ok, "{stderr}");
}

/// A timeout of 0 fails every call (every stream, every probe): each one is refused with its
/// key and line, the provider's and a tier's own.
#[test]
fn check_refuses_each_timeout_that_would_fail_every_call() {
    let toml = CHECKED
        .replace(
            "base_url = \"http://127.0.0.1:9/v1\"\n",
            "base_url = \"http://127.0.0.1:9/v1\"\ntimeout = { connect_ms = 0, first_byte_ms = 0, total_ms = 0, idle_ms = 0 }\nhealth = { timeout_ms = 0 }\n",
        )
        .replace(
            "t = { provider = \"p\", model = \"m\" }",
            "t = { provider = \"p\", model = \"m\", timeout = { total_ms = 0 } }",
        );
    let (ok, stderr) = check_offline("zero-timeouts", &toml, &[]);
    assert!(!ok, "timeouts of 0 passed");
    for (line, key) in [
        (3, "providers.p.timeout.connect_ms"),
        (3, "providers.p.timeout.first_byte_ms"),
        (4, "providers.p.health.timeout_ms"),
        (3, "providers.p.timeout.total_ms"),
        (3, "providers.p.timeout.idle_ms"),
        (7, "tiers.t.timeout.total_ms"),
    ] {
        assert!(
            stderr.contains(&format!("line {line}: {key}: must be more than 0")),
            "{key} at line {line}: {stderr}"
        );
    }
    let (ok, stderr) = check_offline("timeouts-fine", &toml.replace("= 0", "= 1"), &[]);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_each_provider() {
    let up = FakeUpstream::start().await;
    up.update(|b| {
        b.models = vec!["served-model".into()];
        b.max_model_len = Some(8192);
    });
    let ollama = FakeUpstream::start().await;
    ollama.update(|b| {
        b.models = vec!["mistral".into()];
        b.ollama_show = Some(tierwise_fake::OllamaShow {
            context_length: 32_768,
            num_ctx: Some(4096),
        });
    });
    let down = tierwise_fake::unused_addr().await;
    let mut file = ConfigFile::default();
    file.providers
        .insert(text("ollama"), RawProvider::new(ollama.base_url()));
    file.tiers
        .insert(text("o"), RawTier::new("ollama", "mistral"));
    let mut provider = RawProvider::new(up.base_url());
    provider.api_key = Some(text("sk-probe-secret"));
    file.providers.insert(text("up"), provider);
    file.providers
        .insert(text("down"), RawProvider::new(format!("http://{down}/v1")));
    file.tiers
        .insert(text("a"), RawTier::new("up", "served-model"));
    file.tiers
        .insert(text("b"), RawTier::new("up", "other-model"));
    let mut c = RawTier::new("down", "m");
    c.vision = Some(false);
    file.tiers.insert(text("c"), c);
    let (dir, path) = write_config("probe", &TestConfig(file).toml());
    let out = tokio::task::spawn_blocking(move || {
        tierwise()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an unreachable provider must fail the check"
    );
    // What each tier can take: as configured, and as the server lists it.
    assert!(stdout.contains("tier c: without vision"), "{stdout}");
    assert!(
        stdout.contains("tier a: context window 8192 tokens, as the server lists it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tier o: context window 4096 tokens, as the server says"),
        "{stdout}"
    );
    assert!(
        stdout.contains("provider up") && stdout.contains("ok, serves 1 models"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tier b asks for model \"other-model\""),
        "{stdout}"
    );
    assert!(!stdout.contains("tier a asks"), "{stdout}");
    assert!(
        stdout.contains("provider down") && stdout.contains("FAILED: connect_refused"),
        "{stdout}"
    );
    assert_eq!(up.listings()[0].path, "/v1/models");
    assert_eq!(
        up.listings()[0].authorization.as_deref(),
        Some("Bearer sk-probe-secret")
    );
    assert!(!stdout.contains("sk-probe-secret"));
    std::fs::remove_dir_all(dir).ok();
}

/// Starts `tierwise serve` on `config` and returns the child and the address it printed.
async fn serve(config: &std::path::Path) -> (crate::proof::Served, String) {
    crate::proof::serve(config, &[], std::path::Path::new("/dev/null")).await
}

fn send_sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
}

async fn wait_for_exit(mut child: crate::proof::Served, what: &str) -> std::process::ExitStatus {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}"))
    .unwrap()
}

async fn terminate(child: crate::proof::Served) -> std::process::ExitStatus {
    send_sigterm(&child);
    wait_for_exit(child, "the gateway exits after SIGTERM").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_record_the_writer_still_holds() {
    use sqlx::Connection;
    const N: usize = 40;
    let up = FakeUpstream::start().await;
    let url = postgres_url().await;
    let (dir, path) = write_config("flush", &one_route(&up.base_url(), &url));
    let (child, gateway) = serve(&path).await;

    // Hold the ledger's table so that every record stays queued in the writer.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut lock = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..N {
        let response = http
            .post(format!("{gateway}/v1/chat/completions"))
            .json(
                &serde_json::json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // The writer has tried to store them and waits on the lock: they are in its hands, unwritten.
    let waiting =
        "SELECT COUNT(*) FROM pg_locks WHERE relation = 'requests'::regclass AND NOT granted";
    let mut observer = sqlx::PgConnection::connect(&url).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (blocked,): (i64,) = sqlx::query_as(waiting)
            .fetch_one(&mut observer)
            .await
            .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the writer never tried to store the records"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    observer.close().await.ok();
    let count = "SELECT COUNT(*) FROM requests";

    send_sigterm(&child);
    // Release the table only once the gateway is shutting down (its listener is closed), so the
    // records are written by the shutdown flush and not before it.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::Client::new()
        .get(format!("{gateway}/healthz"))
        .send()
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < until,
            "the gateway kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.rollback().await.unwrap();
    let status = wait_for_exit(child, "the gateway exits once the ledger is flushed").await;
    assert!(status.success(), "{status:?}");
    let (rows,): (i64,) = sqlx::query_as(count).fetch_one(&mut conn).await.unwrap();
    assert_eq!(
        rows as usize, N,
        "every request answered before SIGTERM is in the ledger"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_then_stops_cleanly_on_sigterm() {
    let up = FakeUpstream::start().await;
    let (dir, path) = write_config("serve", &one_route(&up.base_url(), "sqlite://ledger.db"));
    let (child, url) = serve(&path).await;
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tierwise-tier"], "t");

    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(dir).ok();
}

/// `serve` runs with mimalloc returning freed pages after 10 ms rather than 1 s (src/memory.rs),
/// set by executing itself once more; an operator's own value is kept. Same process, same PID:
/// the address line and SIGTERM reach the server as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_its_allocator_setting_unless_the_operator_gave_one() {
    let up = FakeUpstream::start().await;
    let (dir, path) = write_config(
        "allocator",
        &one_route(&up.base_url(), "sqlite://ledger.db"),
    );
    let environ = |child: &std::process::Child| {
        let raw = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        raw.split(|b| *b == 0)
            .map(|var| String::from_utf8_lossy(var).into_owned())
            .filter(|var| var.starts_with("MIMALLOC_PURGE_DELAY="))
            .collect::<Vec<_>>()
    };
    for (given, expected) in [
        (None, "MIMALLOC_PURGE_DELAY=10"),
        (Some("250"), "MIMALLOC_PURGE_DELAY=250"),
    ] {
        let env: Vec<(&str, &str)> = given
            .map(|v| ("MIMALLOC_PURGE_DELAY", v))
            .into_iter()
            .collect();
        let (child, _url) = crate::proof::serve(&path, &env, &dir.join("log")).await;
        assert_eq!(environ(&child), [expected]);
        let status = terminate(child).await;
        assert!(status.success(), "{status:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn simulate_reproduces_the_articles_rows_and_names_where_its_sums_disagree() {
    let workload = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/workloads/article.toml"
    );
    let sim = json_of(tierwise().args(["simulate", "--workload", workload, "--format", "json"]));
    let today: Vec<f64> = sim["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["today_monthly_usd"].as_f64().unwrap())
        .collect();
    for (got, article) in today.iter().zip([48.0, 54.0, 30.0, 36.0, 7.0, 2.0, 50.0]) {
        assert!(
            (got - article).abs() < 0.01,
            "{got} vs the article's {article}"
        );
    }
    assert!((sim["today_monthly_usd"].as_f64().unwrap() - 227.0).abs() < 0.01);
    assert!((sim["after_monthly_usd"].as_f64().unwrap() - 171.0).abs() < 0.01);
    // Break-even, from the article's own numbers: an $85 server against $48 a month of
    // classification at 2,000 calls a day pays for itself at 85 / 48 × 2,000 calls a day; against
    // the $141.00 the moved tasks cost, at 85 / 141.00 of today's volume.
    let classification = &sim["tasks"][0];
    assert_eq!(classification["name"], "Document classification");
    let break_even = classification["break_even_calls_per_day"].as_f64().unwrap();
    assert!(
        (break_even - 85.0 / 48.0 * 2000.0).abs() < 1e-6,
        "{classification}"
    );
    assert!(
        sim["tasks"][3]["break_even_calls_per_day"].is_null(),
        "stays on the API"
    );
    let share = sim["break_even_volume_share"].as_f64().unwrap();
    assert!((share - 85.0 / 141.0045).abs() < 1e-9, "{share}");
    assert!((sim["saving_pct"].as_f64().unwrap() - 56.0045 * 100.0 / 227.0045).abs() < 1e-9);
    let discrepancies: Vec<&str> = sim["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        discrepancies,
        [
            "total: the source says ~$380.00/month, but its rows add up to $227.00",
            "after, API: the source says ~$70.00/month; the tasks that stay on the API add up to $86.00",
            "after, total: the source says ~$155.00/month; API $86.00 + fixed $85.00 = $171.00",
            "saving: the source says ~$225.00/month; from its rows the saving is $56.00 (24.7%)",
        ]
    );

    let table = tierwise()
        .args(["simulate", "--workload", workload])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("Document classification") && table.contains("break-even"),
        "{table}"
    );
}

/// The cells of RFC 4180 CSV text, row by row (quoted cells may hold commas, quotes, newlines).
fn csv_cells(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, '"') => panic!("a quote inside an unquoted cell: {text}"),
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(!quoted && cell.is_empty() && row.is_empty(), "{text}");
    rows
}

/// Text cells of `simulate --format csv` (task, model, after) are quoted where they hold a comma
/// and neutralised where a spreadsheet would run them as a formula; numbers stay numbers; and a
/// negative or NaN volume is refused, named, rather than priced.
#[test]
fn simulate_writes_csv_a_spreadsheet_reads_safely_and_refuses_impossible_volumes() {
    let dir = temp_dir("simulate-csv");
    let workload = dir.join("workload.toml");
    let write = |task: &str| {
        std::fs::write(
            &workload,
            format!(
                "[prices.\"-x,y\"]\ninput = 1.0\noutput = 1.0\n\n[[task]]\n{task}\ninput_tokens = 1000\nmodel = \"@SUM(A1)\"\nusd_per_million = 1.0\nmove_to = \"-x,y\"\n"
            ),
        )
        .unwrap();
    };
    write("name = \"=HYPERLINK(\\\"http://e\\\",\\\"c\\\")\"\ncalls_per_day = 10");
    let out = tierwise()
        .args(["simulate", "--format", "csv", "--workload"])
        .arg(&workload)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows = csv_cells(&text);
    assert!(rows.iter().all(|row| row.len() == 9), "{text}");
    let task = &rows[1];
    assert_eq!(task[0], "'=HYPERLINK(\"http://e\",\"c\")", "{text}");
    assert_eq!(task[3], "'@SUM(A1)", "{text}");
    assert_eq!(task[4], "'-x,y", "{text}");
    assert!(task[5].parse::<f64>().unwrap() > 0.0, "{text}");

    for (volume, shown) in [("-5.0", "-5"), ("nan", "NaN")] {
        write(&format!("name = \"n\"\ncalls_per_day = {volume}"));
        let out = tierwise()
            .args(["simulate", "--workload"])
            .arg(&workload)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{volume} calls a day was priced");
        assert!(
            stderr.contains(&format!(
                "task \"n\": calls_per_day is {shown}; it must be a number, 0 or more"
            )),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_reads_the_ledger_a_gateway_wrote() {
    let up = FakeUpstream::start().await;
    up.update(|b| {
        b.prompt_tokens = 1000;
        b.completion_tokens = 100;
    });
    let mut file = ConfigFile::default();
    file.server.listen = Some(text("127.0.0.1:0"));
    file.ledger.url = Some(text("sqlite://ledger.db"));
    file.providers
        .insert(text("openai"), RawProvider::new(up.base_url()));
    file.tiers
        .insert(text("fast"), RawTier::new("openai", "gpt-4o-mini"));
    file.tiers
        .insert(text("frontier"), RawTier::new("openai", "gpt-4o"));
    let route = || RawRoute {
        baseline: Some(text("frontier")),
        ..RawRoute::new(TaskKind::Classification, &["fast"])
    };
    file.routes.insert(text("classification"), route());
    file.routes.insert(text("extraction"), route());
    let (dir, path) = write_config("report", &TestConfig(file).toml());
    let (child, url) = serve(&path).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "classification", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..2 {
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "extraction", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(terminate(child).await.success());

    // One route asked for: its calls and money only.
    let one = json_of(
        tierwise()
            .args([
                "report",
                "--since",
                "1h",
                "--route",
                "extraction",
                "--format",
                "json",
                "--config",
            ])
            .arg(&path),
    );
    assert_eq!(one["routes"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["routes"][0]["route"], "extraction");
    assert_eq!(one["routes"][0]["calls"], 2);
    assert_eq!(one["totals"]["api_usd"], "0.00042");

    let report = json_of(
        tierwise()
            .args(["report", "--since", "1h", "--format", "json", "--config"])
            .arg(&path),
    );
    assert_eq!(report["routes"][0]["route"], "classification");
    assert_eq!(report["routes"][0]["calls"], 3);
    assert_eq!(report["routes"][1]["calls"], 2);
    // Seconds of traffic carry no month: nothing is projected, and the report says why.
    assert_eq!(report["projected"], false, "{report}");
    assert!(
        report["not_projected_because"]
            .as_str()
            .unwrap()
            .contains("under the 24 hours a projection needs ([report] project_after_hours)"),
        "{report}"
    );
    for projected in [
        &report["routes"][0]["calls_per_day"],
        &report["routes"][0]["monthly_cost_usd"],
        &report["routes"][0]["monthly_baseline_usd"],
        &report["totals"]["monthly_saving_usd"],
        &report["totals"]["monthly_checks_usd"],
    ] {
        assert!(projected.is_null(), "a projection from seconds: {report}");
    }
    assert_eq!(report["totals"]["calls"], 5);
    assert_eq!(report["totals"]["errors"], 0);
    // The window runs from the ledger's first record to its last, not to now.
    assert_eq!(report["starts_at_first_record"], true);
    assert_eq!(report["ends_at_last_record"], true);

    // The same ledger with projections allowed from any window: the figures follow from it.
    let projecting = dir.join("projecting.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = if text.contains("[report]\n") {
        text.replace("[report]\n", "[report]\nproject_after_hours = 0\n")
    } else {
        text + "\n[report]\nproject_after_hours = 0\n"
    };
    std::fs::write(&projecting, text).unwrap();
    let report = json_of(
        tierwise()
            .args(["report", "--since", "1h", "--format", "json", "--config"])
            .arg(&projecting),
    );
    assert_eq!(report["projected"], true, "{report}");
    // The projections follow from the window: calls a day, money a 30-day month, saving in %.
    let days = report["days"].as_f64().unwrap();
    let route = &report["routes"][0];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(
        close(route["calls_per_day"].as_f64().unwrap(), 3.0 / days),
        "{route}"
    );
    assert!(
        close(
            route["monthly_baseline_usd"].as_f64().unwrap(),
            0.0105 * 30.0 / days
        ),
        "{route}"
    );
    let totals = &report["totals"];
    assert!(
        close(
            totals["monthly_api_usd"].as_f64().unwrap(),
            0.00105 * 30.0 / days
        ),
        "{totals}"
    );
    // Baseline $0.0175 for the five calls, spent $0.00105: 94% saved.
    assert!(
        close(totals["saving_pct"].as_f64().unwrap(), 94.0),
        "{totals}"
    );
    let p50 = route["p50_ms"].as_f64().unwrap();
    let p95 = route["p95_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p95 && p95 < 10_000.0, "{route}");
    // An hour asked for, seconds of ledger: the report covers the seconds, not the hour.
    assert_eq!(report["starts_at_first_record"], true);
    assert!(report["days"].as_f64().unwrap() < 0.01, "{report}");
    // gpt-4o-mini: 1000 × $0.15 + 100 × $0.60 per million = $0.00021 a call; gpt-4o: $0.0035.
    assert_eq!(report["totals"]["api_usd"], "0.00105");
    assert_eq!(report["totals"]["baseline_usd"], "0.0175");

    let table = tierwise()
        .args(["report", "--since", "1h", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("classification") && table.contains("net saving"),
        "{table}"
    );
    assert!(
        table.contains("seconds, from the ledger's first record to its last)")
            || table.contains("second, from the ledger's first record to its last)"),
        "{table}"
    );
    // Observed money only, no month: "in 2 seconds: 5 calls, 0 failed, $0.0011 spent, …".
    assert!(
        table.contains("figures are what the window saw, not projected"),
        "{table}"
    );
    assert!(
        table.contains(": 5 calls, 0 failed, $") && table.contains("saved against all-API (94.0%)"),
        "{table}"
    );
    assert!(!table.contains("/mo"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("errors") && l.trim_end().ends_with("models")),
        "{table}"
    );

    // A route that does not exist is named, with the ones that do.
    let nope = tierwise()
        .args(["report", "--since", "1h", "--route", "nope", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!nope.status.success());
    let said = String::from_utf8_lossy(&nope.stderr);
    assert!(
        said.contains("no route \"nope\"")
            && said.contains("the routes are: classification, extraction"),
        "{said}"
    );
    let csv = tierwise()
        .args(["report", "--since", "1h", "--format", "csv", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(
        csv.starts_with("route,calls,") && csv.lines().count() == 4,
        "{csv}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The support-ticket dataset with each message's true label in `[[…]]`, which the fake
/// classifier reads (and answers rightly for its `label_accuracy` share of messages).
fn hinted_dataset(dir: &std::path::Path) -> PathBuf {
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/datasets/support-tickets.jsonl"
    );
    let mut out = String::new();
    for line in std::fs::read_to_string(source).unwrap().lines() {
        let mut case: serde_json::Value = serde_json::from_str(line).unwrap();
        let label = case["expected"].as_str().unwrap().to_string();
        let content = case["messages"][0]["content"].as_str().unwrap().to_string();
        case["messages"][0]["content"] = format!("{content} [[{label}]]").into();
        out.push_str(&case.to_string());
        out.push('\n');
    }
    let path = dir.join("tickets.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

/// `tierwise eval` against fake tiers of known accuracy: a perfect reference and a candidate
/// right on about 80% of lines. Accuracy, agreement and the worst lines are what the fakes
/// answered; --min-agreement decides the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_measures_tiers_of_known_accuracy_and_gates_on_agreement() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| b.label_accuracy = Some(0.8));
    api.update(|b| b.label_accuracy = Some(1.0));
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).without_probes();
    let (dir, path) = write_config("eval", &config.toml());
    let dataset = hinted_dataset(&dir);
    let eval = |extra: &[&str]| {
        let mut command = tierwise();
        command
            .env("CLIENT_KEY", "k")
            .env("LOCAL_KEY", "k")
            .args(["eval", "--route", "classification", "--dataset"])
            .arg(&dataset)
            .args(extra)
            .arg("--config")
            .arg(&path);
        command.output().unwrap()
    };
    let out = eval(&["--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lines"], 45);
    assert_eq!(report["scorer"], "label");
    assert_eq!(report["candidate"]["tier"], "local");
    // The route's baseline is its reference when it has no shadow.
    assert_eq!(report["reference"]["tier"], "api_frontier");
    assert_eq!(report["reference"]["accuracy"], 1.0);
    assert_eq!(report["candidate"]["answered"], 45);
    // Every line the candidate got wrong is a disagreement with the perfect reference.
    let accuracy = report["candidate"]["accuracy"].as_f64().unwrap();
    let agreement = report["agreement"].as_f64().unwrap();
    assert!((accuracy - agreement).abs() < 1e-12, "{report}");
    assert!((0.6..0.95).contains(&accuracy), "{report}");
    let wrong = (45.0 * (1.0 - accuracy)).round() as usize;
    let worst = report["worst"].as_array().unwrap();
    assert_eq!(worst.len(), wrong.min(5), "{report}");
    for line in worst {
        assert_eq!(line["agreement"], 0.0);
        assert_eq!(line["reference"], line["expected"]);
        assert_ne!(line["candidate"], line["expected"]);
    }
    assert_eq!(local.request_count(), 45);
    // gpt-4o: 20 × $2.50 + 5 × $10 per million = $0.0001 a call, $0.10 a thousand.
    assert_eq!(report["reference"]["cost_per_1k_usd"], "0.1");
    assert!(
        report["candidate"]["cost_per_1k_usd"].is_null(),
        "mistral-7b has no price"
    );

    assert!(eval(&["--min-agreement", "0.5"]).status.success());
    let failed = eval(&["--min-agreement", "0.99"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("below --min-agreement 0.99"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let table = String::from_utf8_lossy(&eval(&[]).stdout).into_owned();
    assert!(
        table.contains("agreement, candidate with reference")
            && table.contains("worst disagreements"),
        "{table}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `tierwise eval --prompt A --prompt B` tries each prompt on the candidate tier against the same
/// reference answers and ranks them: here the fake classifies at 95% under one prompt and 60%
/// under the other, and the ranking says so whichever order they are given in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_ranks_prompt_variants_by_agreement() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| {
        b.label_accuracy = Some(0.0);
        b.prompt_accuracy = vec![("TERSE".into(), 0.6), ("CAREFUL".into(), 0.95)];
    });
    api.update(|b| b.label_accuracy = Some(1.0));
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).without_probes();
    let (dir, path) = write_config("eval-prompts", &config.toml());
    let dataset = hinted_dataset(&dir);
    std::fs::write(
        dir.join("terse.txt"),
        "TERSE. Answer with one of: {labels}.",
    )
    .unwrap();
    std::fs::write(
        dir.join("careful.txt"),
        "CAREFUL. Read the ticket, then answer with exactly one of: {labels}.",
    )
    .unwrap();
    let out = tierwise()
        .env("CLIENT_KEY", "k")
        .env("LOCAL_KEY", "k")
        .args([
            "eval",
            "--route",
            "classification",
            "--format",
            "json",
            "--dataset",
        ])
        .arg(&dataset)
        .arg("--prompt")
        .arg(dir.join("terse.txt"))
        .arg("--prompt")
        .arg(dir.join("careful.txt"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompts = report["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2, "{report}");
    assert!(
        prompts[0]["prompt"]
            .as_str()
            .unwrap()
            .ends_with("careful.txt"),
        "{report}"
    );
    let (best, worse) = (
        prompts[0]["agreement"].as_f64().unwrap(),
        prompts[1]["agreement"].as_f64().unwrap(),
    );
    assert!(best > 0.85 && worse < 0.8, "{report}");
    // The labels reached the prompt, so the tier saw the route's real system message.
    let system = local
        .requests()
        .iter()
        .find_map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .filter(|c| c.starts_with("CAREFUL"))
                .map(str::to_string)
        })
        .unwrap();
    assert!(
        system.ends_with("one of: billing, technical, general."),
        "{system}"
    );
    // 45 lines for the route's own candidate, 45 for each prompt.
    assert_eq!(local.request_count(), 135);
    std::fs::remove_dir_all(dir).ok();
}

/// A tier that answers no line is a failed evaluation, with its reason, not an empty table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_fails_when_a_tier_answers_nothing_and_says_why() {
    let down = tierwise_fake::unused_addr().await;
    let api = FakeUpstream::start().await;
    let config =
        TestConfig::two_tier(&format!("http://{down}/v1"), &api.base_url()).without_probes();
    let (dir, path) = write_config("eval-down", &config.toml());
    let dataset = hinted_dataset(&dir);
    let out = tierwise()
        .env("CLIENT_KEY", "k")
        .env("LOCAL_KEY", "k")
        .args(["eval", "--route", "classification", "--dataset"])
        .arg(&dataset)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("tier local answered none of the 45 lines: connect_refused"),
        "{said}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `--min-agreement` cannot pass on failures: with 27 of 30 candidate calls failing, the 3 lines
/// that agree perfectly do not make "100%": the failed lines count as disagreements and the gate
/// says so. A dataset of 0 lines is named as the reason there is no agreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_gate_counts_failed_lines_against_the_candidate_and_names_an_empty_dataset() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    local.update(|b| {
        b.label_accuracy = Some(1.0);
        b.fault = tierwise_fake::Fault::Status {
            status: 500,
            body: None,
            retry_after: None,
        };
        b.fault_for = Some(27);
    });
    api.update(|b| b.label_accuracy = Some(1.0));
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url()).without_probes();
    let (dir, path) = write_config("eval-gate", &config.toml());
    let dataset = dir.join("thirty.jsonl");
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"invoice {i} [[billing]]\"}}], \"expected\": \"billing\"}}\n"
            )
        })
        .collect();
    std::fs::write(&dataset, lines).unwrap();
    let eval = |dataset: &std::path::Path| {
        tierwise()
            .env("CLIENT_KEY", "k")
            .env("LOCAL_KEY", "k")
            .args(["eval", "--route", "classification", "--no-record"])
            .args(["--concurrency", "1", "--min-agreement", "0.9", "--dataset"])
            .arg(dataset)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = eval(&dataset);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("100.0% over 3 lines") && stdout.contains("27 lines left out"),
        "{stdout}"
    );
    assert!(
        stderr.contains("agreement 10.0% over all 30 lines (3 compared, 27 left out")
            && stderr.contains("27 where the candidate's call failed")
            && stderr.contains("below --min-agreement 0.9"),
        "{stderr}"
    );

    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = eval(&empty);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no line compared: the dataset has no lines"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no lines: there is nothing to evaluate")
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `tierwise eval` on a route graded by a judge: each line answered by both tiers, then the
/// reference grades the candidate's answer; agreement is the mean grade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_with_a_judge_asks_the_reference_for_a_grade_per_line() {
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    api.update(|b| b.reply = "9".into());
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            let mut shadow = tierwise::config::file::RawShadow::new("api_frontier", 0.0);
            shadow.scorer = Some(tierwise::config::ScorerKind::Judge);
            c.route("summarize").shadow = Some(shadow);
        });
    let (dir, path) = write_config("eval-judge", &config.toml());
    let dataset = dir.join("open.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            serde_json::json!({"messages": [{"role": "user", "content": format!("question {i}")}]})
                .to_string()
        })
        .collect();
    std::fs::write(&dataset, lines.join("\n")).unwrap();
    let out = tierwise()
        .env("CLIENT_KEY", "k")
        .env("LOCAL_KEY", "k")
        .args([
            "eval",
            "--route",
            "summarize",
            "--format",
            "json",
            "--dataset",
        ])
        .arg(&dataset)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scorer"], "judge");
    assert_eq!(report["compared"], 3, "{report}");
    assert!(
        (report["agreement"].as_f64().unwrap() - 0.9).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(api.request_count(), 6, "three answers and three grades");
    // Every call is in the ledger, priced, apart from product traffic.
    let store = tierwise::ledger::Store::connect(&config.config().ledger.url)
        .await
        .unwrap();
    let summary = store.summary(0, i64::MAX, Some("summarize")).await.unwrap();
    assert!(summary.routes.is_empty(), "no product calls");
    let [checks] = &summary.checks[..] else {
        panic!("{:?}", summary.checks)
    };
    assert_eq!(
        (checks.purpose.as_str(), checks.calls),
        ("eval", 9),
        "{checks:?}"
    );
    assert_eq!(checks.candidate.as_deref(), Some("local"));
    // Six gpt-4o calls at $0.0001; mistral-7b has no price.
    assert_eq!(checks.cost.to_string(), "0.0006");
}

/// The providers and tiers the advise tests share: a GPU server at $85 a month with the local
/// tier, and the API tiers, on the ledger at `ledger`.
fn advise_file(ledger: &str) -> ConfigFile {
    let mut file = ConfigFile::default();
    file.ledger.url = Some(text(ledger));
    let mut gpu = RawProvider::new("http://127.0.0.1:9/v1");
    gpu.fixed_monthly_usd = Some(tierwise::config::file::spanned(85.0));
    file.providers.insert(text("gpu"), gpu);
    file.providers
        .insert(text("openai"), RawProvider::new("http://127.0.0.1:9/v1"));
    file.tiers
        .insert(text("local"), RawTier::new("gpu", "mistral-7b"));
    file.tiers
        .insert(text("api_fast"), RawTier::new("openai", "gpt-4o-mini"));
    file.tiers
        .insert(text("api_frontier"), RawTier::new("openai", "gpt-4o"));
    file
}

/// `tierwise advise` on a ledger this test writes: each route's verdict is the one the rules of
/// thumb imply, with the reason that decided it, a saving and a break-even volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_gives_the_verdicts_the_rules_imply_with_reasons() {
    use tierwise::config::file::{RawProfile, RawRoute};
    use tierwise::config::{Changes, TaskKind};
    use tierwise::ledger::{Picodollars, Purpose, RequestRow, Store};

    let ledger = tierwise_test_sqlite_url();
    let mut file = advise_file(&ledger);
    let mut route = |name: &str, kind: TaskKind, tiers: &[&str], profile: Option<RawProfile>| {
        let mut raw = RawRoute::new(kind, tiers);
        raw.baseline = Some(text("api_frontier"));
        raw.profile = profile;
        file.routes.insert(text(name), raw);
    };
    route(
        "tickets",
        TaskKind::Classification,
        &["local", "api_fast"],
        None,
    );
    route(
        "drifting",
        TaskKind::Classification,
        &["local", "api_fast"],
        None,
    );
    route("summaries", TaskKind::Summarization, &["api_fast"], None);
    route("agent", TaskKind::Agentic, &["api_frontier"], None);
    route("rare", TaskKind::Classification, &["api_fast"], None);
    route("long", TaskKind::Extraction, &["api_fast"], None);
    let profile = |latency: Option<u64>, changes: Option<Changes>| RawProfile {
        quality: None,
        latency_tolerance_ms: latency,
        tool_calling: None,
        changes,
    };
    route(
        "fast",
        TaskKind::Classification,
        &["api_fast"],
        Some(profile(Some(200), None)),
    );
    route(
        "churning",
        TaskKind::Moderation,
        &["api_fast"],
        Some(profile(None, Some(Changes::Often))),
    );
    let (dir, path) = write_config("advise", &TestConfig(file).toml());

    // Two days of traffic: (route, tier, calls a day, prompt tokens), and shadow samples.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let span = 2 * 86_400_000i64;
    let mut rows = Vec::new();
    let mut add = |route: &str, tier: &str, per_day: usize, tokens_in: u64| {
        let (model, local) = match tier {
            "local" => ("mistral-7b", true),
            "api_fast" => ("gpt-4o-mini", false),
            _ => ("gpt-4o", false),
        };
        for i in 0..per_day * 2 {
            // From a minute into the window, so the command's later `now` still holds every row.
            let ts = now - span + 60_000 + (i as i64 * (span - 120_000)) / (per_day as i64 * 2);
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                ts,
                "chat.completions".into(),
            );
            row.route = Some(route.into());
            row.tier = Some(tier.into());
            row.provider = Some(if local { "gpu" } else { "openai" }.into());
            row.model = Some(model.into());
            row.local = local;
            row.tokens_in = tokens_in;
            row.tokens_out = 20;
            row.latency_us = 300_000;
            row.cost_pusd = Some(Picodollars(if local { 0 } else { 100_000_000 }));
            row.baseline_pusd = Some(Picodollars(10_000_000_000));
            rows.push(row);
        }
    };
    add("tickets", "local", 500, 300);
    add("drifting", "local", 300, 300);
    add("summaries", "api_fast", 300, 900);
    add("agent", "api_frontier", 400, 2_000);
    add("rare", "api_fast", 5, 200);
    add("long", "api_fast", 200, 50_000);
    add("fast", "api_fast", 300, 200);
    add("churning", "api_fast", 300, 200);
    let mut sample = |route: &str, n: usize, agreeing: usize| {
        for i in 0..n {
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                now - 1000 - i as i64,
                "chat.completions".into(),
            );
            row.route = Some(route.into());
            row.tier = Some("api_frontier".into());
            row.purpose = Purpose::Shadow;
            row.candidate = Some("local".into());
            row.cost_pusd = Some(Picodollars(0));
            row.agreement_ppm = Some(if i < agreeing { 1_000_000 } else { 0 });
            rows.push(row);
        }
    };
    sample("tickets", 400, 388);
    sample("drifting", 400, 320);
    let store = Store::connect(&ledger).await.unwrap();
    let refs: Vec<&RequestRow> = rows.iter().collect();
    for chunk in refs.chunks(500) {
        store.insert(chunk, &[]).await.unwrap();
    }
    store.close().await;

    let out = tokio::task::spawn_blocking(move || {
        tierwise()
            .args(["advise", "--since", "2d", "--format", "json", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let advice: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |route: &str| {
        advice["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .unwrap_or_else(|| panic!("no {route} in {advice}"))
            .clone()
    };
    let says = |route: &str, verdict: &str, reason: &str| {
        let r = of(route);
        assert_eq!(r["verdict"], verdict, "{route}: {r}");
        assert!(
            r["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x.as_str().unwrap().contains(reason)),
            "{route}: no reason with {reason:?} in {r}"
        );
        r
    };
    let tickets = says("tickets", "move-to-local", "agrees with the API 97.0%");
    assert!(
        (tickets["calls_per_day"].as_f64().unwrap() - 500.0).abs() < 5.0,
        "{tickets}"
    );
    // The baseline is $0.01 a call: $85 a month is paid back at 85 / (30 × 0.01) ≈ 283 a day.
    let break_even = tickets["break_even_calls_per_day"].as_f64().unwrap();
    assert!((break_even - 283.3).abs() < 1.0, "{tickets}");
    // Already local: the baseline it no longer pays (500 × 30 × $0.01) less its share of the
    // server by tokens (500 of the 800 local calls a day: $53.13 of $85).
    let saving = tickets["monthly_saving_usd"].as_f64().unwrap();
    assert!((saving - 96.875).abs() < 1.0, "{tickets}");
    let drifting = says("drifting", "keep-on-API", "agrees with the API only 80.0%");
    // A route kept on the API has no saving to show, and the JSON says so with null.
    assert!(drifting["monthly_saving_usd"].is_null(), "{drifting}");
    // What a verdict took as given is listed apart from what the route declared.
    let assumed: Vec<String> = advice["routes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["assumed"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        assumed
            .iter()
            .any(|a| a.contains("the default (declare routes.")
                && a.contains("latency_tolerance_ms")),
        "{assumed:?}"
    );
    assert!(
        advice["routes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["reasons"].as_array().unwrap())
            .all(|reason| !reason.as_str().unwrap().starts_with("it tolerates")),
        "an assumed tolerance among the reasons: {advice}"
    );
    let summaries = says("summaries", "needs-evidence", "no shadow agreement yet");
    // Its API spend, $0.0001 a call × 300 × 30, is what moving would save.
    assert!(
        (summaries["monthly_saving_usd"].as_f64().unwrap() - 0.9).abs() < 0.02,
        "{summaries}"
    );
    says("agent", "keep-on-API", "agentic tasks stay on the API");
    says("rare", "keep-on-API", "5.0 calls a day is under 100");
    says(
        "long",
        "keep-on-API",
        "prompts average 50000 tokens, over 32000",
    );
    says("fast", "keep-on-API", "must answer within 200 ms");
    says("churning", "keep-on-API", "changes often");
    std::fs::remove_dir_all(dir).ok();
}

/// `advise` judges quality on each route's current window and live state, not the report's days
/// of samples: a route whose month of good samples hides a drop in its latest window, with its
/// alert firing, and a route demoted now (though its window looks good again) are both kept on
/// the API, and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_never_moves_a_route_alerting_or_demoted_now_and_judges_its_current_window() {
    use tierwise::config::TaskKind;
    use tierwise::ledger::quality::{EventKind, QualityEvent};
    use tierwise::ledger::{Picodollars, Purpose, RequestRow, Store};

    let ledger = tierwise_test_sqlite_url();
    let mut file = advise_file(&ledger);
    for name in ["slipping", "demoted"] {
        let mut raw = RawRoute::new(TaskKind::Classification, &["local", "api_fast"]);
        raw.baseline = Some(text("api_frontier"));
        file.routes.insert(text(name), raw);
    }
    let (dir, path) = write_config("advise-live", &TestConfig(file).toml());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 86_400_000i64;
    let mut rows = Vec::new();
    for route in ["slipping", "demoted"] {
        for i in 0..600 {
            let mut row = RequestRow::new(
                uuid::Uuid::now_v7().to_string(),
                now - 2 * day + 60_000 + i * 200_000,
                "chat.completions".into(),
            );
            row.route = Some(route.into());
            row.tier = Some("local".into());
            row.provider = Some("gpu".into());
            row.model = Some("mistral-7b".into());
            row.local = true;
            row.tokens_in = 300;
            row.tokens_out = 20;
            row.latency_us = 300_000;
            row.cost_pusd = Some(Picodollars(0));
            row.baseline_pusd = Some(Picodollars(10_000_000_000));
            rows.push(row);
        }
    }
    // Oldest first: 2,000 samples that agree over the month, then the current window of 400.
    let mut sample = |route: &str, ts: i64, agrees: bool| {
        let mut row = RequestRow::new(
            uuid::Uuid::now_v7().to_string(),
            ts,
            "chat.completions".into(),
        );
        row.route = Some(route.into());
        row.tier = Some("api_frontier".into());
        row.purpose = Purpose::Shadow;
        row.candidate = Some("local".into());
        row.cost_pusd = Some(Picodollars(0));
        row.agreement_ppm = Some(if agrees { 1_000_000 } else { 0 });
        rows.push(row);
    };
    for route in ["slipping", "demoted"] {
        for i in 0..2000 {
            sample(route, now - 2 * day + 120_000 + i * 60_000, true);
        }
    }
    for i in 0..400 {
        sample("slipping", now - 60_000 + i, i % 5 != 0);
        sample("demoted", now - 60_000 + i, i % 40 != 0);
    }
    let store = Store::connect(&ledger).await.unwrap();
    let refs: Vec<&RequestRow> = rows.iter().collect();
    for chunk in refs.chunks(500) {
        store.insert(chunk, &[]).await.unwrap();
    }
    for (route, seq, event) in [
        ("slipping", 1, EventKind::AlertFired),
        ("demoted", 1, EventKind::AlertFired),
        ("demoted", 2, EventKind::Demoted),
        ("demoted", 3, EventKind::AlertCleared),
    ] {
        let stored = store
            .record_event(&QualityEvent {
                route: route.into(),
                candidate: "local".into(),
                seq,
                ts_ms: now - 30_000 + seq,
                event,
                model: "mistral-7b".into(),
                agreement_ppm: 800_000,
                low_ppm: 760_000,
                high_ppm: 840_000,
                samples: 400,
            })
            .await
            .unwrap();
        assert!(stored);
    }
    store.close().await;

    let advice = tokio::task::spawn_blocking(move || {
        json_of(
            tierwise()
                .args(["advise", "--since", "2d", "--format", "json", "--config"])
                .arg(&path),
        )
    })
    .await
    .unwrap();
    let of = |route: &str| {
        advice["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .unwrap_or_else(|| panic!("no {route} in {advice}"))
            .clone()
    };
    let has = |r: &serde_json::Value, reason: &str| {
        r["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains(reason))
    };
    let slipping = of("slipping");
    assert_eq!(slipping["verdict"], "keep-on-API", "{slipping}");
    assert_eq!(slipping["samples"], 400, "{slipping}");
    assert!(
        (slipping["agreement"].as_f64().unwrap() - 0.8).abs() < 1e-9,
        "{slipping}"
    );
    assert!(
        has(&slipping, "a quality alert on local is firing now"),
        "{slipping}"
    );
    let demoted = of("demoted");
    assert_eq!(demoted["verdict"], "keep-on-API", "{demoted}");
    assert!(has(&demoted, "local is demoted now"), "{demoted}");
    std::fs::remove_dir_all(dir).ok();
}

fn tierwise_test_sqlite_url() -> String {
    crate::util::sqlite_url()
}

/// The compose file's tierwise config resolves — every key, provider, tier, route and prompt —
/// with the environment the compose file gives it (no Docker engine runs here to try the rest).
#[test]
fn the_docker_compose_config_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tierwise()
        .env("TIERWISE_CLIENT_KEY", "client-key")
        .env("OPENAI_API_KEY", "sk-compose")
        .env(
            "TIERWISE_LEDGER_URL",
            "postgres://tierwise:tierwise@postgres:5432/tierwise",
        )
        .args(["check", "--offline", "--config"])
        .arg(root.join("examples/docker/tierwise.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = std::fs::read_to_string(root.join("examples/docker-compose.yml")).unwrap();
    for service in ["tierwise:", "vllm:", "ollama:", "postgres:"] {
        assert!(compose.contains(service), "{service}");
    }
    assert!(compose.contains("TIERWISE_CONFIG: /etc/tierwise/docker/tierwise.toml"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("USER tierwise"),
        "the image runs as non-root"
    );
}

/// The replicas compose file's config resolves as the first one's does, and the file runs two
/// replicas behind nginx on one PostgreSQL and one Redis.
#[test]
fn the_replicas_compose_config_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tierwise()
        .env("TIERWISE_CLIENT_KEY", "client-key")
        .env("OPENAI_API_KEY", "sk-compose")
        .env(
            "TIERWISE_LEDGER_URL",
            "postgres://tierwise:tierwise@postgres:5432/tierwise",
        )
        .args(["check", "--offline", "--config"])
        .arg(root.join("examples/docker/replicas.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let compose =
        std::fs::read_to_string(root.join("examples/docker-compose.replicas.yml")).unwrap();
    for service in ["tierwise-a:", "tierwise-b:", "lb:", "postgres:", "redis:"] {
        assert!(compose.contains(service), "{service}");
    }
    assert!(compose.contains("TIERWISE_CONFIG: /etc/tierwise/docker/replicas.toml"));
    let nginx = std::fs::read_to_string(root.join("examples/docker/nginx-replicas.conf")).unwrap();
    assert!(nginx.contains("tierwise-a:4000") && nginx.contains("tierwise-b:4000"));
}

/// `tierwise demo` runs to completion on its own, with no model server and no key: its report shows
/// the fallbacks of the local outage, the alert of the quality drop and a saving.
#[test]
fn the_demo_runs_to_completion_and_shows_a_fallback_an_alert_and_a_saving() {
    let dir = temp_dir("demo");
    let out = tierwise()
        .env("TIERWISE_LOG", "warn")
        .args([
            "demo",
            "--duration",
            "15s",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("SIMULATED providers"), "{stderr}");
    assert!(stderr.contains("QUALITY ALERT"), "{stderr}");
    assert!(
        stdout.contains("left the first tier for breaker_open")
            || stdout.contains("left the first tier for http_503"),
        "no outage fallback in the report:\n{stdout}"
    );
    assert!(stdout.contains("alert_fired: agreement"), "{stdout}");
    assert!(
        stdout.contains("left the first tier for quality_demoted"),
        "{stdout}"
    );
    let saving = stdout
        .lines()
        .find(|line| line.starts_with("net saving"))
        .unwrap_or_else(|| panic!("no saving line:\n{stdout}"));
    assert!(!saving.contains("-$") && !saving.contains("$-"), "{saving}");
    // Every model is named as simulated wherever it appears.
    assert!(stdout.contains("simulated-mistral-7b"), "{stdout}");
    assert!(
        !stdout.contains(" gpt-4o") && !stdout.contains(" mistral"),
        "{stdout}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `check` lists every unknown key of the file with its line in one run, with the semantic
/// mistakes beside them, not only the first key serde stops at.
#[test]
fn check_lists_every_unknown_key_and_every_other_mistake_in_one_run() {
    let toml = "[server]\nlistn = \"127.0.0.1:4000\"\n\n[providers.p]\nbase_url = \"http://127.0.0.1:9/v1\"\ntimeout = { connect_ms = 0, totl_ms = 9 }\n\n[tiers]\nt = { provider = \"p\", model = \"m\", max_tokns = 5 }\n\n[routes.r]\nkind = \"classification\"\ntiers = [\"t\", \"nope\"]\n";
    let (ok, stderr) = check_offline("unknown-keys", toml, &[]);
    assert!(!ok, "{stderr}");
    for expected in [
        "line 2: listn: is not a key here",
        "line 6: totl_ms: is not a key here",
        "line 9: max_tokns: is not a key here",
        "line 13: routes.r.tiers",
        "line 6: providers.p.timeout.connect_ms: must be more than 0",
        "5 errors",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
}

/// `tierwise budget show|reset|adjust` against the ledger a gateway wrote: show prints the month's
/// spend, reset writes an audit row that takes it back to zero, adjust adds to it, and a scope
/// without a budget is refused naming the ones configured. `tierwise report` says what the
/// budget moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_commands_show_and_correct_a_months_spend_with_an_audit_row() {
    use tierwise::config::OnExhausted;
    use tierwise::config::file::{RawBudget, spanned};
    let local = FakeUpstream::start().await;
    let api = FakeUpstream::start().await;
    api.update(|b| {
        b.prompt_tokens = 20;
        b.completion_tokens = 100;
    });
    let dir = temp_dir("budget");
    let config = TestConfig::two_tier(&local.base_url(), &api.base_url())
        .without_probes()
        .with(|c| {
            c.provider("vllm").fixed_monthly_usd = Some(spanned(0.0));
            c.0.ledger.url = Some(text(format!(
                "sqlite://{}",
                dir.join("ledger.db").display()
            )));
            c.add_route("cli_budget", TaskKind::Chat, &["api_fast", "local"])
                .budget = Some(RawBudget::new(0.0001, OnExhausted::LocalOnly));
        });
    let path = dir.join("tierwise.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let gateway = crate::util::TestGateway::start_config(config.config_in(&path)).await;
    let ask = serde_json::json!({"model": "cli_budget", "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}]});
    for tier in ["api_fast", "local"] {
        let response = gateway.post("/v1/chat/completions", &ask).await;
        assert_eq!(response.headers()["x-tierwise-tier"], tier);
    }
    gateway.shutdown().await;
    let budget = |args: &[&str]| {
        let mut command = tierwise();
        command
            .arg("budget")
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("CLIENT_KEY", crate::util::CLIENT_KEY)
            .env("LOCAL_KEY", crate::util::PROVIDER_KEY)
            .env("USER", "ops");
        command
    };
    let shown = json_of(&mut budget(&["show", "--format", "json"]));
    assert_eq!(shown[0]["name"], "cli_budget");
    assert_eq!(shown[0]["spent_usd"].as_f64(), Some(0.000063));
    assert_eq!(shown[0]["reserved_usd"], serde_json::Value::Null);
    assert!(
        shown[0]["projection"]
            .as_str()
            .unwrap()
            .contains("project_after_hours"),
        "{shown}"
    );

    let out = budget(&["reset", "--route", "cli_budget", "--reason", "mispriced"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("route cli_budget") && said.contains("$0.000063 -> $0"),
        "{said}"
    );
    let out = budget(&[
        "adjust",
        "--route",
        "cli_budget",
        "--usd=0.00002",
        "--reason",
        "a bill paid elsewhere",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = json_of(&mut budget(&["show", "--format", "json"]));
    assert_eq!(shown[0]["spent_usd"].as_f64(), Some(0.00002));
    assert_eq!(shown[0]["adjusted_usd"].as_f64(), Some(0.00002 - 0.000063));
    let store =
        tierwise::ledger::Store::connect(&format!("sqlite://{}", dir.join("ledger.db").display()))
            .await
            .unwrap();
    let month = tierwise::ledger::budget::Month::of(tierwise::quality::watch::now_ms());
    let rows = store.adjustments(month).await.unwrap();
    let audit: Vec<(&str, i64, &str, &str)> = rows
        .iter()
        .map(|row| {
            (
                row.kind.as_str(),
                row.delta_pusd,
                row.reason.as_str(),
                row.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("reset", -63_000_000, "mispriced", "cli:ops"),
            ("adjust", 20_000_000, "a bill paid elsewhere", "cli:ops")
        ]
    );
    store.close().await;

    let out = budget(&["adjust", "--all", "--usd", "1", "--reason", "x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("all API spend has no budget") && stderr.contains("route cli_budget"),
        "{stderr}"
    );

    let mut report = tierwise();
    report
        .args(["report", "--config"])
        .arg(&path)
        .env("CLIENT_KEY", crate::util::CLIENT_KEY)
        .env("LOCAL_KEY", crate::util::PROVIDER_KEY);
    let out = report.output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("cli_budget: a spent budget moved 1 call to local (1 answered), which would have cost $0.000006 on api_fast — budgets over these calls: route cli_budget"),
        "{table}"
    );
}
