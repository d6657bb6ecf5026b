//! The configuration the gateway runs on: the TOML file read once at start-up and resolved into
//! types where a route holds its tiers, a tier holds its provider, every `${ENV}` has been read and
//! every name checked. Code outside this module never sees an unresolved name.

mod budget;
mod cache;
mod env;
mod error;
pub mod file;
mod kinds;
mod known;
mod limits;
mod price;
mod provider;
mod proxy;
mod resolver;
mod responses;
mod route;
mod server;
mod telemetry;
mod tier;
mod tls;
mod unknown;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use budget::{Budget, BudgetScope};
pub use cache::{CacheConfig, RouteCache};
pub use error::{ConfigError, ConfigIssue};
pub use kinds::{
    Affinity, AllOpen, Api, CacheScope, Changes, KeyHeader, OnDrift, OnExhausted, OnProof,
    QualityBar, ScorerKind, TaskKind, ToolCalling,
};
pub use known::{Abilities, KnownModel, known_model, takes_max_completion_tokens, undated};
pub use limits::{KeyTerms, LimitsConfig, Rate};
pub use price::{BUILT_IN_PRICES, Price};
pub use provider::{
    BreakerPolicy, ClientBetas, PrefixAffinity, ProbePolicy, Provider, Timeouts, UpstreamServer,
    is_beta_name, models_path,
};
pub use proxy::Proxy;
pub use responses::ResponsesConfig;
pub use route::{ChainTier, Declared, Profile, Route, Shadow, with_labels};
pub use server::{AdminAccess, AllowedHosts, LedgerConfig, RequestLog, ServerConfig};
pub use telemetry::{Otlp, Telemetry};
pub use tier::Tier;
pub use tls::{ClientIdentity, Tls};

/// Where quality alerts go besides the log and the metrics.
#[derive(Debug, Default)]
pub struct Alerts {
    /// POSTed once per alert episode. It may hold a secret (a chat webhook's token is in its path),
    /// so it is never logged.
    pub webhook: Option<reqwest::Url>,
}

/// `tierwise advise`'s thresholds: the rules of thumb of docs/design.md unless `[advise]` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdviseRules {
    /// Below this many calls a day a local server's fixed cost is not paid back.
    pub min_calls_per_day: f64,
    /// Prompts larger than this on average stay on the API.
    pub max_context_tokens: u32,
    /// A route that must answer faster than this stays on the API.
    pub min_latency_tolerance: std::time::Duration,
}

impl Default for AdviseRules {
    fn default() -> Self {
        AdviseRules {
            min_calls_per_day: 100.0,
            max_context_tokens: 32_000,
            min_latency_tolerance: std::time::Duration::from_millis(500),
        }
    }
}

/// How reports turn the ledger into figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRules {
    /// A window must hold this much traffic (from its first record to its last) before a figure
    /// is projected to a month or a day: minutes of traffic say nothing about a month.
    pub project_after: std::time::Duration,
}

impl Default for ReportRules {
    fn default() -> Self {
        ReportRules {
            project_after: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// The commented starter configuration that `tierwise init` writes; the same file is shipped as
/// `examples/tierwise.toml`, so the example and the command can never drift apart.
pub const STARTER: &str = include_str!("../../examples/tierwise.toml");

/// Where to look up `${VAR}` values; the process environment in production, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub ledger: LedgerConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    /// Traces, exported where `[telemetry]` says.
    pub telemetry: Telemetry,
    pub responses: ResponsesConfig,
    pub providers: Vec<Arc<Provider>>,
    pub tiers: Vec<Arc<Tier>>,
    pub routes: Vec<Arc<Route>>,
    pub prices: BTreeMap<String, Price>,
    pub alerts: Alerts,
    pub advise: AdviseRules,
    pub report: ReportRules,
    /// What all API calls together may cost a month (`[budget]`).
    pub budget: Option<Budget>,
    /// Things that are allowed but probably not meant (no client auth, an empty upstream key);
    /// logged at start-up and printed by `tierwise check`.
    pub warnings: Vec<String>,
    /// The file it was read from, which a reload reads again.
    pub source: Source,
}

/// Where a config came from and a digest of its text, which names the version that serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    /// The first 12 hex digits of the SHA-256 of the text and of each file it refers to (prompts,
    /// TLS certificates and keys), so that a changed prompt file is a changed config.
    pub hash: String,
    /// The file as `/admin/api/config` shows it: its tables and values, every secret masked.
    pub shown: Arc<serde_json::Value>,
}

impl Source {
    /// `text` and the files it refers to, as read; the path is the caller's to set.
    pub(super) fn of(text: &str, files: &[(PathBuf, Vec<u8>)]) -> Source {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());
        for (path, bytes) in files {
            // Lengths delimit each part, so no two different sets of inputs hash alike.
            let path = path.to_string_lossy();
            hasher.update((path.len() as u64).to_le_bytes());
            hasher.update(path.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        let digest = hasher.finalize();
        let mut shown = toml::from_str::<toml::Value>(text)
            .ok()
            .and_then(|value| serde_json::to_value(value).ok())
            .unwrap_or_default();
        mask_secrets(&mut shown);
        Source {
            path: PathBuf::new(),
            hash: digest.iter().take(6).map(|b| format!("{b:02x}")).collect(),
            shown: Arc::new(shown),
        }
    }
}

/// Keys whose values are secrets (client and upstream keys), and those that are URLs a secret may
/// be written into (a webhook's path, a database's password).
const SECRET_KEYS: &[&str] = &["api_key", "api_keys", "admin_key", "metrics_key", "key"];
const SECRET_URLS: &[&str] = &["webhook"];

/// Masks every secret in a file's values: the keys' values and everything in a table of that name, a
/// webhook's URL, and the user, password and query of any other URL (`postgres://user:password@…`,
/// `https://token@…`, `?api-key=…`).
fn mask_secrets(value: &mut serde_json::Value) {
    use serde_json::Value;
    // Everything under a secret's name is masked, a table's values too (`[keys.key]`,
    // `[providers.webhook]`): a name alone cannot tell a table of secrets from a table of settings.
    fn mask_all(value: &mut Value) {
        match value {
            Value::String(text) => *text = "***".into(),
            Value::Array(items) => items.iter_mut().for_each(mask_all),
            Value::Object(table) => table.values_mut().for_each(mask_all),
            _ => {}
        }
    }
    match value {
        Value::Object(table) => {
            for (key, value) in table.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) || SECRET_URLS.contains(&key.as_str()) {
                    mask_all(value);
                } else {
                    mask_secrets(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        Value::String(text) => {
            if let Ok(mut url) = url::Url::parse(text)
                && url.has_host()
                && (url.password().is_some() || !url.username().is_empty() || url.query().is_some())
            {
                // A token is often written as the user (`https://TOKEN@host`).
                if !url.username().is_empty() {
                    let _ = url.set_username("***");
                }
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                if url.query().is_some() {
                    url.set_query(Some("***"));
                }
                *text = url.to_string();
            }
        }
        _ => {}
    }
}

impl Config {
    /// Reads and resolves the file at `path`, taking `${VAR}` values from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Resolves configuration text; `path` names the file in messages and anchors relative prompt
    /// paths.
    pub fn parse(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let invalid = |mut issues: Vec<ConfigIssue>| {
            issues.sort_by_key(|issue| issue.line);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                issues,
            }
        };
        // Every unknown key is listed, not only the first: the file is read again without each.
        let (file, mut unknown) = unknown::read(text);
        let file = match file {
            Ok(file) => file,
            Err((read, err)) if unknown.is_empty() => {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: syntax_message(&read, &err),
                });
            }
            Err((read, err)) => {
                let (line, message) = syntax_message(&read, &err)
                    .split_once(", ")
                    .and_then(|(line, rest)| {
                        Some((line.strip_prefix("line ")?.parse().ok()?, rest.to_string()))
                    })
                    .unwrap_or((0, err.message().to_string()));
                unknown.push(ConfigIssue {
                    line: (line > 0).then_some(line),
                    key: "(file)".into(),
                    message,
                });
                return Err(invalid(unknown));
            }
        };
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match resolver::Resolver::new(text, &base_dir, env).resolve(file) {
            Ok(config) if unknown.is_empty() => Ok(Config {
                source: Source {
                    path: path.to_path_buf(),
                    ..config.source.clone()
                },
                ..config
            }),
            Ok(_) => Err(invalid(unknown)),
            Err(issues) => {
                unknown.extend(issues);
                Err(invalid(unknown))
            }
        }
    }
}

/// A TOML error as `line L, column C: what`, with the line's key shown and its value masked: the
/// parser's own message quotes the whole line, and that line may hold an API key written inline.
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let what = err.message().trim_end();
    let Some(span) = err.span() else {
        return what.to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
    let source = text.lines().nth(line - 1).unwrap_or("");
    let shown = match source.split_once('=') {
        Some((key, _)) => format!("{}= …", key),
        None => source.to_string(),
    };
    format!("line {line}, column {column}: {what}\n  {line} | {shown}")
}

/// A value that must never be printed: upstream API keys and client keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A key clients present, with the id the ledger records instead of the key, and what it may do.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub secret: Secret,
    /// `key-` and the first 12 hex digits of the key's SHA-256.
    pub id: String,
    pub terms: KeyTerms,
}

impl ClientKey {
    pub fn new(secret: Secret) -> ClientKey {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(secret.expose().as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        ClientKey {
            secret,
            id: format!("key-{hex}"),
            terms: KeyTerms::default(),
        }
    }
}

/// The path `tierwise serve` and `tierwise check` read when none is given.
pub fn default_path() -> PathBuf {
    PathBuf::from("tierwise.toml")
}

#[cfg(test)]
mod tests {
    use super::Source;

    #[test]
    fn the_shown_file_masks_tables_named_like_secrets_and_tokens_in_urls() {
        let text = r#"
[keys.key]
key = "sk-client-secret"
[providers.webhook]
api_key = "sk-webhook-secret"
base_url = "http://hook.example"
[providers.vllm]
base_url = "http://user-token@vllm.example:8000/v1"
model = "kept"
"#;
        let shown = Source::of(text, &[]).shown.to_string();
        for secret in ["sk-client-secret", "sk-webhook-secret", "user-token"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(
            shown.contains("vllm.example") && shown.contains("kept"),
            "{shown}"
        );
    }
}
