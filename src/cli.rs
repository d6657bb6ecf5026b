//! The `tierwise` command line: `serve`, `check`, `init`, `report`, `budget` and the rest. This is
//! the binary's edge, where errors become messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tierwise::config::{self, Config};
use tierwise::ledger::{Pricing, Store};
use tierwise::quality::eval::{self, EvalOptions};
use tierwise::report::simulate::Workload;
use tierwise::report::{self, Report};
use tierwise::server::Gateway;
use tierwise::upstream::Upstreams;

#[derive(Debug, Parser)]
#[command(
    name = "tierwise",
    version,
    about = "Self-hosted OpenAI-compatible LLM gateway that sends each task to the cheapest good-enough model tier"
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `tierwise=debug`.
    #[arg(long, global = true, env = "TIERWISE_LOG", default_value = "info")]
    log: String,
    /// Log lines as plain text or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether this run is the long-running server (and not a one-off command).
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// What one line of `tierwise report` sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum By {
    Route,
    Key,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway.
    Serve {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
    },
    /// Validate a configuration file and probe every provider's /models.
    Check {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// Only validate the file; do not contact providers.
        #[arg(long)]
        offline: bool,
    },
    /// Cost and savings per route from the ledger, against the all-API baseline.
    Report {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// How far back from now, e.g. 30d, 12h (default 30d).
        #[arg(long, conflicts_with = "from")]
        since: Option<String>,
        /// Start of the window: 2026-11-01 or 2026-11-01T12:00:00Z.
        #[arg(long)]
        from: Option<String>,
        /// End of the window (default now).
        #[arg(long)]
        to: Option<String>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// What each line sums: a route (cost and savings) or a client key (`keys.NAME`).
        #[arg(long, value_enum, default_value_t = By::Route)]
        by: By,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// For each route: move-to-local, keep-on-API or needs-evidence, with reasons, the monthly
    /// saving and the break-even volume, from the ledger's traffic, the route's profile and its
    /// shadow agreement.
    Advise {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// How much traffic to judge by, back from now, e.g. 30d, 12h.
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Project the costs of a workload profile before anything is deployed.
    Simulate {
        /// A workload profile (TOML); see examples/workloads/.
        #[arg(long)]
        workload: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run a dataset through a route's candidate and reference tiers: accuracy against the expected
    /// answers, agreement between the tiers, latency and cost of each; exit status 1 below
    /// --min-agreement.
    Eval {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// JSON lines: {"messages": [...], "expected": "..."}; see examples/datasets/.
        #[arg(long)]
        dataset: PathBuf,
        /// The tier on trial (default: the route's first).
        #[arg(long)]
        candidate: Option<String>,
        /// The tier it is held to (default: the route's shadow reference, baseline or last tier).
        #[arg(long)]
        reference: Option<String>,
        /// Lines in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Fail (exit status 1) unless agreement between the tiers is above this with 95%
        /// confidence, over every line (a line left out by a failed call counts against it),
        /// e.g. 0.9.
        #[arg(long)]
        min_agreement: Option<f64>,
        /// A system prompt file to try on the candidate tier ({labels} is filled in); repeat to
        /// rank several against the same reference answers.
        #[arg(long = "prompt")]
        prompts: Vec<PathBuf>,
        /// Do not store the run's calls in the ledger (by default they are kept there, priced,
        /// with purpose `eval`, so reports show what evaluation costs).
        #[arg(long)]
        no_record: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The whole product in one command, with no model server and no key: the gateway in front of
    /// two simulated providers, a mixed workload with a local outage and a quality drop, then the
    /// report; `--serve` keeps the gateway and its dashboard up afterwards.
    Demo {
        /// How long the workload runs, e.g. 20s or 2m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Keep the gateway and its dashboard up after the workload, until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Where the gateway listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: std::net::SocketAddr,
        /// Virtual clients sending requests at once.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Where the demo's ledger and configuration go.
        #[arg(long, default_value_os_t = std::env::temp_dir().join("tierwise-demo"))]
        dir: PathBuf,
    },
    /// This month's spend against each budget, and corrections to it (each an audit row in the
    /// ledger).
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// Write a commented starter configuration.
    Init {
        #[arg(default_value_os_t = config::default_path())]
        path: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BudgetAction {
    /// Each budget's spend, share and projected month-end spend, from the ledger.
    Show {
        #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
        config: PathBuf,
        /// The month, e.g. 2026-12 (default: this month, UTC).
        #[arg(long)]
        month: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Set a month's spend against a budget back to zero, e.g. after calls were mispriced.
    Reset {
        #[command(flatten)]
        target: BudgetTarget,
    },
    /// Add to a month's spend against a budget, or take off with a negative amount.
    Adjust {
        #[command(flatten)]
        target: BudgetTarget,
        /// Dollars added to the spend; negative takes them off, e.g. --usd=-12.50.
        #[arg(long, allow_hyphen_values = true)]
        usd: f64,
    },
}

/// Which budget a correction is for, and why.
#[derive(Debug, Args)]
struct BudgetTarget {
    #[arg(short, long, env = "TIERWISE_CONFIG", default_value_os_t = config::default_path())]
    config: PathBuf,
    #[command(flatten)]
    scope: ScopeArgs,
    /// The month, e.g. 2026-12 (default: this month, UTC).
    #[arg(long)]
    month: Option<String>,
    /// Why, kept in the audit row.
    #[arg(long)]
    reason: String,
}

/// One budget: a route's, a key's, or all API spend's.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ScopeArgs {
    /// The route's budget (`routes.<name>.budget`).
    #[arg(long)]
    route: Option<String>,
    /// The named key's budget (`keys.<name>.budget`).
    #[arg(long)]
    key: Option<String>,
    /// The budget of all API spend (`[budget]`).
    #[arg(long)]
    all: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging(&cli.log, cli.log_format)?;
    match cli.command {
        Command::Serve { config } => {
            let config = load(&config)?;
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let runtime = runtime()?;
            let served = runtime.block_on(serve(config));
            // Blocking work still running (a token count on the blocking pool) would hold a plain
            // drop of the runtime until it ends; the shutdown has already had its grace.
            runtime.shutdown_timeout(EXIT_MARGIN);
            served
        }
        Command::Check { config, offline } => runtime()?.block_on(check(load(&config)?, offline)),
        Command::Init { path, force } => init(&path, force),
        Command::Demo {
            duration,
            serve,
            listen,
            clients,
            dir,
        } => runtime()?.block_on(async {
            let demo = tierwise::demo::run(tierwise::demo::DemoOptions {
                duration,
                listen,
                clients,
                dir,
            })
            .await?;
            println!("{}", demo.report);
            if serve {
                let mut stop = StopSignals::listen()?;
                eprintln!(
                    "The gateway and its dashboard stay up: {}\nCall it:\n{}\nCtrl-C stops them.",
                    demo.dashboard, demo.snippet
                );
                // The demo's config is built in memory: there is no file to reload.
                while stop.recv().await == Signal::Reload {}
            }
            demo.gateway.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Report {
            config,
            since,
            from,
            to,
            route,
            by,
            format,
        } => {
            let config = load(&config)?;
            let window =
                report::window(since.as_deref(), from.as_deref(), to.as_deref(), now_ms()?)
                    .map_err(anyhow::Error::msg)?;
            if by == By::Key {
                return runtime()?.block_on(async {
                    let store = Store::connect(&config.ledger.url).await?;
                    let keys =
                        report::keys::KeyReport::load(&store, window, route.as_deref()).await?;
                    store.close().await;
                    print!(
                        "{}",
                        match format {
                            Format::Table => keys.to_table(),
                            Format::Json => keys.to_json() + "\n",
                            Format::Csv => keys.to_csv(),
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                });
            }
            runtime()?.block_on(async {
                let report = read_report(&config, window, route.as_deref()).await?;
                print!(
                    "{}",
                    match format {
                        Format::Table => report.to_table(),
                        Format::Json => report.to_json() + "\n",
                        Format::Csv => report.to_csv(),
                    }
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Advise {
            config,
            since,
            format,
        } => {
            let config = load(&config)?;
            let window =
                report::window(Some(&since), None, None, now_ms()?).map_err(anyhow::Error::msg)?;
            runtime()?.block_on(async {
                let store = Store::connect(&config.ledger.url).await?;
                let report = Report::load(&config, &store, window, None).await?;
                // Quality as the gateway judges it now, not over the report's days.
                let live = report::advise::Live::load(&config, &store).await?;
                store.close().await;
                let advice = report::advise::Advise::build(&config, &report, &live);
                print!(
                    "{}",
                    match format {
                        Format::Table => advice.to_table(),
                        Format::Json => advice.to_json() + "\n",
                        Format::Csv => bail!("advise prints --format table or json"),
                    }
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Eval {
            config,
            route,
            dataset,
            candidate,
            reference,
            concurrency,
            min_agreement,
            prompts,
            no_record,
            format,
        } => {
            let config = load(&config)?;
            let options = EvalOptions {
                route,
                candidate,
                reference,
                concurrency,
                prompts,
            };
            let runtime = runtime()?;
            let report = runtime.block_on(eval::run(&config, &dataset, &options))?;
            if !no_record {
                runtime.block_on(record_eval_calls(&config, &report.calls));
            }
            print!(
                "{}",
                match format {
                    Format::Table => report.to_table(),
                    Format::Json => report.to_json() + "\n",
                    Format::Csv => bail!("eval prints --format table or json"),
                }
            );
            if report.lines == 0 {
                eprintln!(
                    "{} has no lines: there is nothing to evaluate",
                    dataset.display()
                );
                return Ok(ExitCode::from(1));
            }
            for tier in [&report.candidate, &report.reference] {
                if tier.answered == 0 {
                    eprintln!(
                        "tier {} answered none of the {} lines: {}",
                        tier.tier,
                        report.lines,
                        tier.first_error.as_deref().unwrap_or("no answer")
                    );
                    return Ok(ExitCode::from(1));
                }
            }
            match min_agreement.map(|bar| report.gate(bar)) {
                Some(Err(why)) => {
                    eprintln!("{why}");
                    Ok(ExitCode::from(1))
                }
                Some(Ok(())) | None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Budget { action } => runtime()?.block_on(budget(action)),
        Command::Simulate { workload, format } => {
            let simulation = Workload::load(&workload)?
                .simulate()
                .map_err(|err| anyhow::anyhow!("{}: {err}", workload.display()))?;
            print!(
                "{}",
                match format {
                    Format::Table => simulation.to_table(),
                    Format::Json => simulation.to_json() + "\n",
                    Format::Csv => simulation.to_csv(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn budget(action: BudgetAction) -> anyhow::Result<ExitCode> {
    use tierwise::config::BudgetScope;
    use tierwise::ledger::Picodollars;
    use tierwise::ledger::budget::{Change, Correction, Month};
    let now = now_ms()?;
    let month_of = |month: Option<&str>| match month {
        None => Ok(Month::of(now)),
        Some(text) => Month::parse(text)
            .ok_or_else(|| anyhow::anyhow!("--month {text:?} is not a month such as 2026-12")),
    };
    let (target, change) = match action {
        BudgetAction::Show {
            config,
            month,
            format,
        } => {
            let config = load(&config)?;
            let month = month_of(month.as_deref())?;
            let store = Store::connect(&config.ledger.url).await?;
            let spend = store.month_spend(month, now).await?;
            store.close().await;
            let figures = report::budget::figures(&config, month, &spend, now, &|_| None);
            print!(
                "{}",
                match format {
                    Format::Table => report::budget::to_table(&figures),
                    Format::Json => serde_json::to_string_pretty(&figures)? + "\n",
                    Format::Csv => bail!("budget show prints --format table or json"),
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        BudgetAction::Reset { target } => (target, Change::Reset),
        BudgetAction::Adjust { target, usd } => {
            if !usd.is_finite() || usd.abs() > tierwise::config::Budget::MAX_USD {
                bail!("--usd must be a number of dollars, e.g. --usd=-12.50");
            }
            (target, Change::Add(Picodollars::from_usd(usd)))
        }
    };
    let config = load(&target.config)?;
    let month = month_of(target.month.as_deref())?;
    let scope = match (&target.scope.route, &target.scope.key) {
        (Some(route), _) => BudgetScope::Route(route.clone()),
        (None, Some(key)) => BudgetScope::Key(key.clone()),
        (None, None) => BudgetScope::All,
    };
    if !config.budgets().any(|(configured, _)| configured == scope) {
        let configured: Vec<String> = config
            .budgets()
            .map(|(scope, _)| scope.to_string())
            .collect();
        bail!(
            "{scope} has no budget in {}, so its spend decides nothing; budgets configured: {}",
            target.config.display(),
            if configured.is_empty() {
                "none".to_string()
            } else {
                configured.join(", ")
            }
        );
    }
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let store = Store::connect(&config.ledger.url).await?;
    let row = store
        .correct_budget(
            now,
            &Correction {
                month,
                scope: &scope,
                change,
                reason: &target.reason,
                actor: &actor,
            },
        )
        .await;
    store.close().await;
    let row = row?;
    let before = Picodollars(row.spent_before_pusd);
    let after = Picodollars::saturating(i128::from(before.0) + i128::from(row.delta_pusd));
    println!(
        "{scope}, {month}: spend ${before} -> ${after} ({} recorded as audit row {}); a running gateway takes it up within {}s",
        row.kind,
        row.id,
        tierwise::limits::budget::RESYNC.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a valid filter"))?;
    // Colour codes only for a person at a terminal, not in files and log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn now_ms() -> anyhow::Result<i64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64)
}

/// The report of `window` from the configured ledger, on a connection of its own.
async fn read_report(
    config: &Config,
    window: report::Window,
    route: Option<&str>,
) -> anyhow::Result<Report> {
    let store = Store::connect(&config.ledger.url).await?;
    let report = Report::load(config, &store, window, route).await?;
    store.close().await;
    if let Some(route) = route
        && report.routes.is_empty()
        && let Some(unknown) = report::unknown_route(config, route)
    {
        bail!("{unknown}");
    }
    Ok(report)
}

/// Stores an eval run's calls in the ledger; a ledger that cannot take them costs a warning, not
/// the run's result.
async fn record_eval_calls(config: &Config, calls: &[tierwise::ledger::RequestRow]) {
    let stored = async {
        let store = Store::connect(&config.ledger.url).await?;
        for chunk in calls.chunks(500) {
            let rows: Vec<_> = chunk.iter().collect();
            store.insert(&rows, &[]).await?;
        }
        store.close().await;
        Ok::<(), tierwise::ledger::LedgerError>(())
    };
    match stored.await {
        Ok(()) => eprintln!(
            "{} eval calls are recorded in the ledger (purpose eval); --no-record leaves them out",
            calls.len()
        ),
        Err(err) => eprintln!("warning: the eval calls were not recorded in the ledger: {err}"),
    }
}

/// How long `check` waits for a server's own account of its window.
const SERVER_INFO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the process waits at exit, after the shutdown, for work on the blocking pool.
const EXIT_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            bail!(
                "{} does not exist; run `tierwise init` to write a starter config, or pass --config",
                path.display()
            )
        }
        Err(err) => return Err(err.into()),
    };
    Ok(config)
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let summary = format!(
        "{} routes, {} tiers, {} providers",
        config.routes.len(),
        config.tiers.len(),
        config.providers.len()
    );
    let mut stop = StopSignals::listen()?;
    let gateway = Gateway::start(config).await?;
    // On stdout, so that scripts and tests that start the gateway on port 0 can read the address.
    println!("tierwise listening on http://{}", gateway.addr);
    tracing::info!(addr = %gateway.addr, "tierwise serving {summary}");
    // Each SIGHUP is one reload, in turn; its outcome is logged where the reload runs.
    while stop.recv().await == Signal::Reload {
        let _ = gateway.reload().await;
    }
    tracing::info!("shutting down: finishing in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for before the gateway says it is up: until a handler is
/// installed a signal has its default action, and a supervisor that stops the gateway as soon as
/// the address line appears would kill it outright instead of having it shut down cleanly.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[derive(PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

impl StopSignals {
    fn listen() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

async fn check(config: Config, offline: bool) -> anyhow::Result<ExitCode> {
    println!(
        "configuration is valid: {} routes, {} tiers, {} providers",
        config.routes.len(),
        config.tiers.len(),
        config.providers.len()
    );
    for warning in config
        .warnings
        .iter()
        .chain(&Pricing::new(&config).warnings(&config))
    {
        println!("warning: {warning}");
    }
    for tier in &config.tiers {
        let lacks: Vec<&str> = [
            (tier.abilities.tools, "tools"),
            (tier.abilities.json_schema, "json_schema"),
            (tier.abilities.vision, "vision"),
        ]
        .iter()
        .filter(|(has, _)| !has)
        .map(|(_, name)| *name)
        .collect();
        if tier.context_tokens.is_some() || !lacks.is_empty() {
            println!(
                "tier {}: {}{}",
                tier.name,
                tier.context_tokens.map_or(String::new(), |tokens| format!(
                    "context window {tokens} tokens; "
                )),
                if lacks.is_empty() {
                    "tools, json_schema and vision".to_string()
                } else {
                    format!("without {}", lacks.join(", "))
                }
            );
        }
    }
    if offline {
        return Ok(ExitCode::SUCCESS);
    }
    let upstreams = Arc::new(Upstreams::new(&config)?);
    // Every server of every provider: one that does not answer fails the check, as it would
    // serve no request until it does.
    let probes = config.providers.iter().flat_map(|provider| {
        (0..provider.servers.len()).map(|server| {
            let upstreams = upstreams.clone();
            let provider = provider.clone();
            async move {
                let result = upstreams.list_models(&provider, server).await;
                (provider, server, result)
            }
        })
    });
    let mut unreachable = 0;
    for (provider, server, result) in futures_util::future::join_all(probes).await {
        let mut url = provider.servers[server].base_url.clone();
        let _ = url.set_password(None);
        let _ = url.set_username("");
        let what = if provider.servers.len() == 1 {
            "provider"
        } else {
            "server  "
        };
        let name = &provider.servers[server].name;
        match result {
            Ok(models) => {
                println!(
                    "{what} {name:<12} {url}  ok, serves {} models",
                    models.len()
                );
                for tier in config
                    .tiers
                    .iter()
                    .filter(|t| t.provider.name == provider.name)
                {
                    match models.iter().find(|m| m.id == tier.model) {
                        None => println!(
                            "  warning: tier {} asks for model {:?}, which {name} does not list",
                            tier.name, tier.model
                        ),
                        Some(listed) if tier.context_tokens.is_none() => {
                            let (tokens, source) = match listed.max_model_len {
                                Some(tokens) => (Some(tokens), "as the server lists it"),
                                None => (
                                    upstreams
                                        .server_window(
                                            &provider,
                                            server,
                                            &tier.model,
                                            SERVER_INFO_WAIT,
                                        )
                                        .await,
                                    "as the server says (Ollama's /api/show or llama.cpp's /props)",
                                ),
                            };
                            match tokens {
                                Some(tokens) => println!(
                                    "  tier {}: context window {tokens} tokens, {source}",
                                    tier.name
                                ),
                                None => println!(
                                    "  tier {}: context window unknown until a request is refused as too long; set context_tokens to skip it up front",
                                    tier.name
                                ),
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            Err(err) => {
                unreachable += 1;
                println!("{what} {name:<12} {url}  FAILED: {err}");
            }
        }
    }
    Ok(if unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init(path: &std::path::Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(path, config::STARTER)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!(
        "next: export OPENAI_API_KEY (and TIERWISE_API_KEY for client auth), then `tierwise check` and `tierwise serve`"
    );
    Ok(ExitCode::SUCCESS)
}
