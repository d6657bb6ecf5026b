//! `[server]` and `[ledger]`: where the gateway listens, who may call it, and where its ledger is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use super::file::{RawKey, RawLedger, RawRoute, RawServer, Text};
use super::resolver::Resolver;
use super::{ClientKey, Secret};

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Keys clients must present as `Authorization: Bearer`; empty means the gateway is open.
    pub api_keys: Vec<Arc<ClientKey>>,
    /// Who may read `/admin/api/*`.
    pub admin: AdminAccess,
    /// A bearer key `/metrics` requires, if set; open otherwise (scrapers run inside the network).
    pub metrics_key: Option<Arc<ClientKey>>,
    pub max_body_bytes: usize,
    /// The largest answer read from an upstream (a non-streamed body), and the most of a stream's
    /// text kept for the ledger and token counting.
    pub max_answer_bytes: usize,
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may wait idle for its next request.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Open client connections at most, over all serving threads; more are closed at once.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Serving threads, each with its own event loop and upstream connections.
    pub threads: usize,
    /// Which `Host` names `/v1` and `/admin/api` answer to.
    pub allowed_hosts: AllowedHosts,
    /// How long a write to a client may make no progress (a client that stopped reading) before
    /// its connection is closed, and the upstream call and in-flight slot it held with it.
    pub write_timeout: Duration,
    /// Reload the file when it changes (`server.watch_config`).
    pub watch_config: bool,
}

impl ServerConfig {
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// Room for 2,048 embeddings of 3,072 floats as JSON, the largest answers OpenAI's API gives.
    pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// A client that takes no byte for this long, while the kernel's buffers of its connection
    /// (hundreds of kB) are full, has stopped reading; a stream it holds also holds an upstream
    /// call and one of the provider's `max_in_flight` slots, which send other requests to the
    /// next (paid) tier meanwhile. nginx's `send_timeout` is 60 s, but nginx holds nothing scarce.
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// One serving thread per core.
    fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The `Host` names the API answers to. A web page that rebinds its own name to this gateway's
/// address (DNS rebinding) sends requests the browser thinks same-origin, with its name in
/// `Host`: only a name check stops it. An IP literal in `Host` is never a rebound name, so it is
/// always let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// `"*"`, or the default on a listener that is not loopback: a gateway on all interfaces is
    /// reached by names tierwise cannot know (a service name, a load balancer's), and there its
    /// client keys are what keeps a page out.
    Any,
    /// Lowercase names without a trailing dot; `localhost` alone by default on a loopback
    /// listener, where a rebinding page is the one way in from the outside.
    Names(Vec<String>),
}

impl AllowedHosts {
    /// Whether a request whose `Host` header is `host` may be served. No `Host` (HTTP/1.0) is let
    /// through: browsers always send one, and rebinding needs a browser.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let (AllowedHosts::Names(names), Some(host)) = (self, host) else {
            return true;
        };
        let name = host_name(host);
        // An empty `Host` is no browser's (a page always sends its name), as a missing one is not.
        if name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.');
        names
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// `host` without its port: `name:port`, `[v6]:port`, `[v6]`, or a bare name or address.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

/// Who may read the admin API (costs, prompts' metadata, provider state).
#[derive(Debug)]
pub enum AdminAccess {
    /// `server.admin_key`.
    Key(Arc<ClientKey>),
    /// No admin key: any client key (warned about at start and by `tierwise check`).
    ClientKeys,
    /// No key at all and `server.open_admin = true`: anyone who reaches the port.
    Open,
    /// No key at all: closed.
    Closed,
}

#[derive(Debug)]
pub struct LedgerConfig {
    pub url: String,
    pub store_content: bool,
    /// Where one JSON line per completed request goes, if anywhere.
    pub request_log: Option<RequestLog>,
    /// Records that may wait for the writer before requests wait for it.
    pub queue: usize,
    /// Where records go while the database is away: next to the SQLite file, or else next to the
    /// config file.
    pub spool: PathBuf,
    /// The spool's size cap; past it, records are dropped (counted and logged).
    pub spool_max_bytes: u64,
}

impl LedgerConfig {
    pub const DEFAULT_URL: &str = "sqlite://tierwise.db";
    pub const DEFAULT_QUEUE: usize = 10_000;
    pub const DEFAULT_SPOOL: &str = "tierwise-ledger.spool";
    pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestLog {
    Stderr,
    File(PathBuf),
}

impl Resolver<'_> {
    pub(super) fn server(
        &mut self,
        raw: &RawServer,
        keys: &BTreeMap<Text, RawKey>,
        routes: &BTreeMap<Text, RawRoute>,
    ) -> ServerConfig {
        let listen = match &raw.listen {
            Some(text) => self
                .string(text, "server.listen")
                .and_then(|value| match value.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        self.issue_at(
                            text.span().start,
                            "server.listen",
                            &format!("{value:?} is not an address; write IP:PORT, e.g. \"127.0.0.1:4000\""),
                        );
                        None
                    }
                }),
            None => None,
        };
        let mut api_keys: Vec<Arc<ClientKey>> = raw
            .api_keys
            .iter()
            .flatten()
            .filter_map(|key| self.string(key, "server.api_keys"))
            .filter(|key| !key.is_empty())
            .map(|key| Arc::new(ClientKey::new(Secret::new(key))))
            .collect();
        let named = self.keys(keys, routes, &api_keys);
        api_keys.extend(named);
        if api_keys.is_empty() {
            self.warnings.push(
                "server.api_keys is empty and no [keys.NAME] is set: ANY client that can reach this port may call the gateway; \
                 set api_keys = [\"${TIERWISE_API_KEY}\"] to require a bearer key"
                    .to_string(),
            );
        }
        let admin_key = raw
            .admin_key
            .as_ref()
            .and_then(|key| self.string(key, "server.admin_key"))
            .filter(|key| !key.is_empty())
            .map(|key| Arc::new(ClientKey::new(Secret::new(key))));
        if let (Some(admin), Some(text)) = (&admin_key, &raw.admin_key)
            && api_keys
                .iter()
                .any(|key| key.secret.expose() == admin.secret.expose())
        {
            // A client holding the admin key could correct its own budgets. Names, never the value.
            self.issue_at(
                text.span().start,
                "server.admin_key",
                "is the same key as one in keys or server.api_keys; the admin key must be its own",
            );
        }
        let admin = match (admin_key, api_keys.is_empty(), raw.open_admin) {
            (Some(key), _, _) => AdminAccess::Key(key),
            (None, false, _) => {
                self.warnings.push(
                    "server.admin_key is not set (or empty): EVERY client key can read /admin/api \
                     (costs, routes, provider state); set admin_key = \"${TIERWISE_ADMIN_KEY}\""
                        .to_string(),
                );
                AdminAccess::ClientKeys
            }
            (None, true, true) => {
                self.warnings.push(
                    "server.open_admin = true with no key: ANYONE who reaches this port can read /admin/api"
                        .to_string(),
                );
                AdminAccess::Open
            }
            (None, true, false) => {
                self.warnings.push(
                    "/admin/api is closed: no key is configured; set server.admin_key, or open_admin = true on a trusted network"
                        .to_string(),
                );
                AdminAccess::Closed
            }
        };
        let metrics_key = raw
            .metrics_key
            .as_ref()
            .and_then(|key| self.string(key, "server.metrics_key"))
            .filter(|key| !key.is_empty())
            .map(|key| Arc::new(ClientKey::new(Secret::new(key))));
        let max_body_bytes = raw
            .max_body_bytes
            .as_ref()
            .and_then(|size| self.positive(size, "server.max_body_bytes", "must be more than 0"))
            .unwrap_or(ServerConfig::DEFAULT_MAX_BODY_BYTES);
        let max_answer_bytes = raw
            .max_answer_bytes
            .as_ref()
            .and_then(|size| self.positive(size, "server.max_answer_bytes", "must be more than 0"))
            .unwrap_or(ServerConfig::DEFAULT_MAX_ANSWER_BYTES);
        let ms = |this: &mut Self, value: &Option<toml::Spanned<u64>>, key: &str, default| {
            value
                .as_ref()
                .and_then(|ms| this.positive(ms, key, "must be more than 0"))
                .map_or(default, Duration::from_millis)
        };
        let header_timeout = ms(
            self,
            &raw.header_timeout_ms,
            "server.header_timeout_ms",
            ServerConfig::DEFAULT_HEADER_TIMEOUT,
        );
        let body_timeout = ms(
            self,
            &raw.body_timeout_ms,
            "server.body_timeout_ms",
            ServerConfig::DEFAULT_BODY_TIMEOUT,
        );
        let max_connections = raw
            .max_connections
            .as_ref()
            .and_then(|n| self.positive(n, "server.max_connections", "must be at least 1"))
            .map_or(ServerConfig::DEFAULT_MAX_CONNECTIONS, |n| n as usize);
        let threads = raw
            .threads
            .as_ref()
            .and_then(|threads| {
                self.positive(
                    threads,
                    "server.threads",
                    "must be at least 1 (leave it out for one per core)",
                )
            })
            .map_or_else(ServerConfig::default_threads, |n| n as usize);
        let write_timeout = ms(
            self,
            &raw.write_timeout_ms,
            "server.write_timeout_ms",
            ServerConfig::DEFAULT_WRITE_TIMEOUT,
        );
        let listen = listen.unwrap_or(ServerConfig::DEFAULT_LISTEN);
        let allowed_hosts = self.allowed_hosts(raw.allowed_hosts.as_deref(), listen);
        if api_keys.is_empty()
            && allowed_hosts == AllowedHosts::Any
            && raw.allowed_hosts.is_none()
            && !listen.ip().is_loopback()
        {
            self.warnings.push(format!(
                "server.listen = \"{listen}\" with no api_keys and no server.allowed_hosts: a web page \
                 a user on this network visits can call the gateway through DNS rebinding; set \
                 api_keys, or allowed_hosts = [\"the names clients use\"]"
            ));
        }
        ServerConfig {
            listen,
            api_keys,
            admin,
            metrics_key,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            max_answer_bytes: usize::try_from(max_answer_bytes).unwrap_or(usize::MAX),
            header_timeout,
            body_timeout,
            max_connections,
            shutdown_grace: raw
                .shutdown_grace_ms
                .map_or(ServerConfig::DEFAULT_SHUTDOWN_GRACE, Duration::from_millis),
            threads,
            allowed_hosts,
            write_timeout,
            watch_config: raw.watch_config,
        }
    }

    fn allowed_hosts(
        &mut self,
        raw: Option<&[super::file::Text]>,
        listen: SocketAddr,
    ) -> AllowedHosts {
        let Some(raw) = raw else {
            return if listen.ip().is_loopback() {
                AllowedHosts::Names(vec!["localhost".to_string()])
            } else {
                AllowedHosts::Any
            };
        };
        let mut names = Vec::with_capacity(raw.len());
        for entry in raw {
            let Some(value) = self.string(entry, "server.allowed_hosts") else {
                continue;
            };
            let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
            if name == "*" {
                return AllowedHosts::Any;
            }
            if name.is_empty() || name.contains(['/', ':', ' ', '[']) {
                self.issue_at(
                    entry.span().start,
                    "server.allowed_hosts",
                    &format!(
                        "{value:?} is not a host name; write names as clients send them in Host, \
                         without scheme or port (e.g. \"tierwise.internal\"; IP addresses are always allowed), or \"*\" for any"
                    ),
                );
                continue;
            }
            names.push(name);
        }
        AllowedHosts::Names(names)
    }

    pub(super) fn ledger(&mut self, raw: &RawLedger) -> LedgerConfig {
        let url = raw
            .url
            .as_ref()
            .and_then(|url| {
                let value = self.string(url, "ledger.url")?;
                let known = ["sqlite:", "postgres://", "postgresql://"];
                if let Some(path) = value.strip_prefix("sqlite://")
                    && !path.starts_with('/')
                    && !path.starts_with(":memory:")
                {
                    // Like prompt files, a relative ledger path is relative to the config file.
                    Some(format!("sqlite://{}", self.base_dir.join(path).display()))
                } else if known.iter().any(|scheme| value.starts_with(scheme)) {
                    Some(value)
                } else {
                    self.issue_at(
                        url.span().start,
                        "ledger.url",
                        "must start with sqlite:// (e.g. \"sqlite://tierwise.db\") or postgres://",
                    );
                    None
                }
            })
            .unwrap_or_else(|| LedgerConfig::DEFAULT_URL.to_string());
        let request_log = raw
            .request_log
            .as_ref()
            .and_then(|log| self.string(log, "ledger.request_log"))
            .filter(|log| !log.is_empty())
            .map(|log| match log.as_str() {
                "stderr" => RequestLog::Stderr,
                path => RequestLog::File(self.base_dir.join(path)),
            });
        let queue = raw
            .queue
            .as_ref()
            .and_then(|queue| self.positive(queue, "ledger.queue", "must be at least 1"))
            .map_or(LedgerConfig::DEFAULT_QUEUE, |n| n as usize);
        let spool = match &raw.spool {
            Some(path) => self
                .string(path, "ledger.spool")
                .map(|path| self.base_dir.join(path)),
            None => None,
        }
        .unwrap_or_else(|| match url.strip_prefix("sqlite://") {
            Some(file) if !file.starts_with(":memory:") => {
                let file = file.split('?').next().unwrap_or(file);
                PathBuf::from(format!("{file}.spool"))
            }
            _ => self.base_dir.join(LedgerConfig::DEFAULT_SPOOL),
        });
        let spool_max_bytes = raw
            .spool_max_bytes
            .as_ref()
            .and_then(|size| self.positive(size, "ledger.spool_max_bytes", "must be more than 0"))
            .unwrap_or(LedgerConfig::DEFAULT_SPOOL_MAX_BYTES);
        LedgerConfig {
            url,
            store_content: raw.store_content,
            request_log,
            queue,
            spool,
            spool_max_bytes,
        }
    }
}
