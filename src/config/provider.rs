//! `[providers.NAME]`: one upstream service — its server or servers (`base_url`, or `servers` with
//! their weights), its key, its timeouts, its circuit breaker, its health probe, its in-flight cap —
//! each default beside the field it fills.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use url::Url;

use super::file::{RawClientBetas, RawProvider, RawTimeouts, RawUpstreamServer, Text};
use super::proxy::Proxy;
use super::resolver::Resolver;
use super::{Api, KeyHeader, Secret};

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// One or more, in the file's order; each has its own breaker, probe, load and windows.
    pub servers: Vec<Arc<UpstreamServer>>,
    /// The wire format it speaks; OpenAI's unless the file says otherwise.
    pub api: Api,
    /// The format's API version (Anthropic's `anthropic-version`), where it has one.
    pub api_version: Option<String>,
    /// Its server serves OpenAI's Responses API, so a Responses request is passed through rather
    /// than served through chat completions.
    pub serves_responses: bool,
    /// Which of a Messages client's `anthropic-beta` flags it is sent.
    pub client_betas: ClientBetas,
    /// A Messages client's `anthropic-version` replaces `api_version`.
    pub client_version: bool,
    /// The header the key travels in.
    pub auth: KeyHeader,
    pub api_key: Option<Secret>,
    /// Its own CA and client certificate, where it has them.
    pub tls: Option<super::Tls>,
    pub fixed_monthly_usd: Option<f64>,
    pub warmup: bool,
    /// Where calls whose prompts begin alike go to the same server: the prompt's first bytes
    /// that make the key.
    pub prefix_affinity: Option<PrefixAffinity>,
    pub timeouts: Timeouts,
    /// Requests over this many at once on one server go to another, or spill to the next tier,
    /// instead of queueing.
    pub max_in_flight: Option<u32>,
    /// A 429 whose `Retry-After` is at most this long is retried once on the same tier.
    pub retry_429_max_wait: Duration,
    pub breaker: BreakerPolicy,
    /// `None` when active probing is switched off.
    pub probe: Option<ProbePolicy>,
}

impl Provider {
    pub const DEFAULT_RETRY_429_MAX_WAIT: Duration = Duration::from_secs(1);

    /// Whether a stream may ask for its usage with `stream_options`. Azure OpenAI refuses the
    /// field (400 "Unrecognized request argument supplied: stream_options") before API version
    /// 2024-09-01-preview, the first preview with it (2024-10-21 the first GA); dated versions
    /// sort as text. Undated ones (`v1`, `latest`, `preview`) are the current API, which has it.
    pub fn takes_stream_options(&self) -> bool {
        match (self.api, self.api_version.as_deref()) {
            (super::Api::Azure, Some(version))
                if version.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                version >= "2024-09-01"
            }
            _ => true,
        }
    }
}

/// Which of a Messages client's `anthropic-beta` flags an Anthropic provider is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBetas {
    All,
    /// These names only (none where empty); the client's others are left out.
    Only(Vec<String>),
}

/// A beta's name as Anthropic writes them (`context-1m-2025-08-07`): letters, digits, `-`, `_`, `.`.
pub fn is_beta_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `affinity = "prefix"`: a call goes to the server its prompt's first `bytes` bytes hash to
/// among those that may be called, unless that server is busier than the least loaded by more
/// than [`PrefixAffinity::MAX_EXTRA_IN_FLIGHT`] calls per unit of weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixAffinity {
    pub bytes: usize,
}

impl PrefixAffinity {
    /// About 500 tokens of English: a system prompt and the start of a conversation.
    pub const DEFAULT_BYTES: u32 = 2048;
    /// How much busier than the least loaded server the preferred one may be before a call goes
    /// by load instead: a prefix cache hit saves a prefill, not a wait behind this many calls.
    pub const MAX_EXTRA_IN_FLIGHT: u32 = 8;
}

/// One server of a provider: a vLLM replica, a GPU box.
#[derive(Debug)]
pub struct UpstreamServer {
    /// The provider's name for a provider of one server (what the header and the ledger always
    /// said); otherwise its `name`, else `PROVIDER@host:port`, stable across reloads that add or
    /// remove other servers.
    pub name: String,
    /// Always ends in `/`, so that `join("chat/completions")` keeps the path prefix (`/v1/`).
    pub base_url: Url,
    /// Its capacity relative to the provider's other servers: load is compared as calls in
    /// flight per unit of weight.
    pub weight: u32,
    /// The HTTP proxy it is reached through, if any (`NO_PROXY` may exempt one server and not
    /// another).
    pub proxy: Option<Proxy>,
    /// Where its probe asks, when the provider is probed.
    pub probe_url: Option<Url>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
    /// Longest silence allowed between two chunks of a stream.
    pub idle: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        first_byte: Duration::from_secs(30),
        total: Duration::from_secs(120),
        idle: Duration::from_secs(30),
    };

    /// These timeouts with the ones `raw` sets instead.
    pub(super) fn with(self, raw: &RawTimeouts) -> Timeouts {
        let pick =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        Timeouts {
            connect: pick(raw.connect_ms, self.connect),
            first_byte: pick(raw.first_byte_ms, self.first_byte),
            total: pick(raw.total_ms, self.total),
            idle: pick(raw.idle_ms, self.idle),
        }
    }
}

/// When a provider's circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive retryable failures that open the breaker.
    pub failures: u32,
    /// Share of failed calls in `window` that opens it, once `min_requests` calls were seen.
    pub error_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// First cool-down; it doubles on each failed trial, up to `max_cooldown`.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl BreakerPolicy {
    pub const DEFAULT: BreakerPolicy = BreakerPolicy {
        failures: 5,
        error_rate: 0.5,
        min_requests: 20,
        window: Duration::from_secs(30),
        cooldown: Duration::from_secs(5),
        max_cooldown: Duration::from_secs(60),
    };
}

/// The active health probe of a provider.
#[derive(Debug, Clone)]
pub struct ProbePolicy {
    /// `models` (under each server's base URL) by default; a path starting with `/` is taken
    /// from the host root (vLLM's `/health`). Each server's URL is [`UpstreamServer::probe_url`].
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Each server's queue is read from its vLLM metrics on the probe's schedule
    /// (`health.metrics`; by default where the provider has several servers, the pick's
    /// business).
    pub metrics: bool,
}

impl ProbePolicy {
    pub const DEFAULT_PATH: &str = "models";
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// The probe's timeout is the provider's `first_byte`, at most this.
    pub const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// Where a provider of `api` lists its models, under its base URL: `models`, or Azure OpenAI's
/// `openai/models?api-version=…`.
pub fn models_path(api: Api, version: Option<&str>) -> String {
    match api {
        Api::Azure => format!("openai/models?api-version={}", version.unwrap_or_default()),
        Api::OpenAi | Api::Anthropic => ProbePolicy::DEFAULT_PATH.to_string(),
    }
}

impl Resolver<'_> {
    pub(super) fn providers(
        &mut self,
        raw: &BTreeMap<Text, RawProvider>,
    ) -> BTreeMap<String, Arc<Provider>> {
        if raw.is_empty() {
            self.issue(
                None,
                "providers",
                "no provider is defined; add a [providers.NAME] table with a base_url",
            );
        }
        let mut providers = BTreeMap::new();
        for (name, provider) in raw {
            match self.provider(name, provider) {
                Some(resolved) => {
                    providers.insert(name.get_ref().clone(), Arc::new(resolved));
                }
                None => self.defined_but_invalid("provider", name.get_ref()),
            }
        }
        providers
    }

    fn provider(&mut self, name: &Text, raw: &RawProvider) -> Option<Provider> {
        let key = format!("providers.{}", name.get_ref());
        let servers = self.server_urls(name.get_ref(), raw, &key);
        let api_key = raw
            .api_key
            .as_ref()
            .and_then(|text| self.api_key(text, &key));
        if let Some(cost) = &raw.fixed_monthly_usd
            && !(cost.get_ref().is_finite() && *cost.get_ref() >= 0.0)
        {
            self.issue_at(
                cost.span().start,
                &format!("{key}.fixed_monthly_usd"),
                "must be a number of dollars, 0 or more",
            );
        }
        let api = raw.api.unwrap_or_default();
        let api_version = self.api_version(raw, api, &key);
        let servers = servers?;
        let serves_responses = self.serves_responses(raw, api, &servers, &key);
        let (client_betas, client_version) = self.client_headers(raw, api, &key);
        self.timeouts_may_pass(&raw.timeout, &key);
        let timeouts = Timeouts::DEFAULT.with(&raw.timeout);
        let max_in_flight = raw.max_in_flight.as_ref().and_then(|limit| {
            self.positive(
                limit,
                &format!("{key}.max_in_flight"),
                "must be at least 1 (leave it out for no limit)",
            )
        });
        let breaker = self.breaker(raw, &key);
        let probe = self.probe(raw, &key, &timeouts, api_version.as_deref(), servers.len());
        let servers = servers
            .into_iter()
            .map(|(server_name, base_url, weight)| {
                let probe_url = match &probe {
                    Some(policy) => Some(self.probe_url(raw, &key, &base_url, &policy.path)?),
                    None => None,
                };
                Some(Arc::new(UpstreamServer {
                    proxy: self.proxy(raw.proxy.as_ref(), &key, &base_url),
                    name: server_name,
                    base_url,
                    weight,
                    probe_url,
                }))
            })
            .collect::<Option<Vec<_>>>()?;
        let tls = match &raw.tls {
            Some(tls) => Some(self.tls(tls, &key, url_span(raw))?),
            None => None,
        };
        Some(Provider {
            name: name.get_ref().clone(),
            servers,
            api,
            api_version,
            serves_responses,
            client_betas,
            client_version,
            auth: raw.auth.unwrap_or(api.default_auth()),
            api_key,
            tls,
            fixed_monthly_usd: raw.fixed_monthly_usd.as_ref().map(|c| *c.get_ref()),
            warmup: raw.warmup,
            prefix_affinity: self.prefix_affinity(raw, &key),
            timeouts,
            max_in_flight,
            retry_429_max_wait: raw
                .retry_429_max_wait_ms
                .map_or(Provider::DEFAULT_RETRY_429_MAX_WAIT, Duration::from_millis),
            breaker,
            probe,
        })
    }

    /// Whether a provider's server serves Responses: as its `responses` says, else only OpenAI's
    /// own API (`api.openai.com`, every server of the provider), which does; vLLM serves it only
    /// in recent versions, so a provider says so itself. Anthropic's and Azure's formats are
    /// served through chat.
    fn serves_responses(
        &mut self,
        raw: &RawProvider,
        api: Api,
        servers: &[(String, Url, u32)],
        key: &str,
    ) -> bool {
        match &raw.responses {
            Some(responses) if *responses.get_ref() && api != Api::OpenAi => {
                self.issue_at(
                    responses.span().start,
                    &format!("{key}.responses"),
                    "only a provider of OpenAI's format passes Responses through; Anthropic's and Azure's are served through chat completions (leave it out)",
                );
                false
            }
            Some(responses) => *responses.get_ref(),
            None => {
                api == Api::OpenAi
                    && servers
                        .iter()
                        .all(|(_, url, _)| url.host_str() == Some("api.openai.com"))
            }
        }
    }

    /// Each server's name, URL and weight: `base_url` is one server named after the provider;
    /// `servers` lists several. Exactly one of the two.
    fn server_urls(
        &mut self,
        provider: &str,
        raw: &RawProvider,
        key: &str,
    ) -> Option<Vec<(String, Url, u32)>> {
        let list = match (&raw.base_url, &raw.servers) {
            (Some(text), None) => {
                let url = self.string(text, &format!("{key}.base_url"))?;
                let url = self.base_url(&url, text, &format!("{key}.base_url"))?;
                return Some(vec![(provider.to_string(), url, 1)]);
            }
            (Some(text), Some(_)) => {
                self.issue_at(
                    text.span().start,
                    &format!("{key}.base_url"),
                    "is set beside servers; give one server as base_url, or all of them in servers",
                );
                return None;
            }
            (None, None) => {
                self.issue(
                    None,
                    &format!("{key}.base_url"),
                    "is missing; give the server's API root, e.g. base_url = \"http://localhost:8001/v1\" (or servers = [{ url = … }, …] for several)",
                );
                return None;
            }
            (None, Some(list)) => list,
        };
        if list.get_ref().is_empty() {
            self.issue_at(
                list.span().start,
                &format!("{key}.servers"),
                "is empty; list at least one server, e.g. [{ url = \"http://gpu1:8001/v1\" }]",
            );
            return None;
        }
        let mut servers: Vec<(String, Url, u32)> = Vec::new();
        let mut valid = true;
        for (index, entry) in list.get_ref().iter().enumerate() {
            match self.server_entry(provider, entry, &format!("{key}.servers[{index}]")) {
                Some(server) => {
                    if let Some((name, _, _)) =
                        servers.iter().find(|(name, _, _)| *name == server.0)
                    {
                        self.issue_at(
                            entry.url.span().start,
                            &format!("{key}.servers[{index}]"),
                            &format!(
                                "is named {name:?} like another server of the provider; give each server its own name = \"…\""
                            ),
                        );
                        valid = false;
                    }
                    servers.push(server);
                }
                None => valid = false,
            }
        }
        valid.then_some(servers)
    }

    fn server_entry(
        &mut self,
        provider: &str,
        entry: &RawUpstreamServer,
        key: &str,
    ) -> Option<(String, Url, u32)> {
        let url = self.string(&entry.url, &format!("{key}.url"))?;
        let url = self.base_url(&url, &entry.url, &format!("{key}.url"))?;
        let weight = match &entry.weight {
            Some(weight) => self.positive(
                weight,
                &format!("{key}.weight"),
                "must be at least 1 (a server's share of the load against the others' weights)",
            )?,
            None => 1,
        };
        let name = match &entry.name {
            Some(name) => {
                let name = self.string(name, &format!("{key}.name"))?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    self.issue_at(
                        entry.name.as_ref().map_or(0, |n| n.span().start),
                        &format!("{key}.name"),
                        "must be a word without spaces, e.g. \"gpu2\"",
                    );
                    return None;
                }
                name
            }
            None => format!(
                "{provider}@{}:{}",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or_default()
            ),
        };
        Some((name, url, weight))
    }

    /// What of a Messages client's own headers an Anthropic provider is sent: every beta and the
    /// client's version unless the file says otherwise; refused on another format, which is
    /// never sent them.
    fn client_headers(&mut self, raw: &RawProvider, api: Api, key: &str) -> (ClientBetas, bool) {
        for (set, field) in [
            (
                raw.client_betas.as_ref().map(|b| b.span().start),
                "client_betas",
            ),
            (
                raw.client_version.as_ref().map(|v| v.span().start),
                "client_version",
            ),
        ] {
            if let Some(at) = set
                && api != Api::Anthropic
            {
                self.issue_at(
                    at,
                    &format!("{key}.{field}"),
                    "is only for a provider with api = \"anthropic\" (only it is sent a Messages client's headers); leave it out",
                );
            }
        }
        let betas = match raw.client_betas.as_ref() {
            None => ClientBetas::All,
            Some(betas) => match betas.get_ref() {
                RawClientBetas::Word(word) if word == "all" => ClientBetas::All,
                RawClientBetas::Word(word) if word == "none" => ClientBetas::Only(Vec::new()),
                RawClientBetas::Names(names) if names.iter().all(|name| is_beta_name(name)) => {
                    ClientBetas::Only(names.clone())
                }
                _ => {
                    self.issue_at(
                        betas.span().start,
                        &format!("{key}.client_betas"),
                        "must be \"all\", \"none\" or a list of beta names such as [\"context-management-2025-06-27\"]",
                    );
                    ClientBetas::All
                }
            },
        };
        let version = raw.client_version.as_ref().is_none_or(|v| *v.get_ref());
        (betas, version)
    }

    /// The API version a provider is called with: its own, else its format's; refused on a format
    /// that has none.
    fn api_version(&mut self, raw: &RawProvider, api: Api, key: &str) -> Option<String> {
        let Some(text) = &raw.api_version else {
            return api.default_version().map(str::to_string);
        };
        if api.default_version().is_none() {
            self.issue_at(
                text.span().start,
                &format!("{key}.api_version"),
                "is only for a provider whose api has versions (\"azure\", \"anthropic\"); leave it out",
            );
            return None;
        }
        let version = self.string(text, &format!("{key}.api_version"))?;
        if version.is_empty()
            || HeaderValue::from_str(&version).is_err()
            || version.contains(['&', '#', ' '])
        {
            self.issue_at(
                text.span().start,
                &format!("{key}.api_version"),
                "must be a version such as \"2023-06-01\"",
            );
            return None;
        }
        Some(version)
    }

    /// Records each timeout of `raw` that no call could meet: 0 ms fails every call (every
    /// stream, for `idle_ms`) before an upstream could answer. `key` is the provider's or tier's.
    pub(super) fn timeouts_may_pass(&mut self, raw: &RawTimeouts, key: &str) {
        let default = Timeouts::DEFAULT;
        for (name, value, at, default) in [
            (
                "connect_ms",
                raw.connect_ms,
                raw.at.connect_ms,
                default.connect,
            ),
            (
                "first_byte_ms",
                raw.first_byte_ms,
                raw.at.first_byte_ms,
                default.first_byte,
            ),
            ("total_ms", raw.total_ms, raw.at.total_ms, default.total),
            ("idle_ms", raw.idle_ms, raw.at.idle_ms, default.idle),
        ] {
            if value == Some(0) {
                self.zero_timeout(at, &format!("{key}.timeout.{name}"), default);
            }
        }
    }

    fn zero_timeout(&mut self, at: Option<usize>, key: &str, default: Duration) {
        let message = format!(
            "must be more than 0: every call would time out before the upstream could answer; leave it out for the default ({} ms)",
            default.as_millis()
        );
        match at {
            Some(at) => self.issue_at(at, key, &message),
            None => self.issue(None, key, &message),
        }
    }

    /// The key; `None` for an empty one (with a warning) or an unusable one (with an issue).
    fn api_key(&mut self, text: &Text, key: &str) -> Option<Secret> {
        let value = self.string(text, &format!("{key}.api_key"))?;
        if value.is_empty() {
            self.warnings.push(format!(
                "{key}.api_key is empty (line {}): calls to it carry no Authorization header",
                self.line(text.span().start)
            ));
            None
        } else if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            self.issue_at(
                text.span().start,
                &format!("{key}.api_key"),
                "contains a character an HTTP header cannot carry (a line break or non-ASCII); copy the key again",
            );
            None
        } else {
            Some(Secret::new(value))
        }
    }

    fn breaker(&mut self, raw: &RawProvider, key: &str) -> BreakerPolicy {
        let defaults = BreakerPolicy::DEFAULT;
        let raw = &raw.breaker;
        let failures = raw.failures.as_ref().and_then(|failures| {
            self.positive(
                failures,
                &format!("{key}.breaker.failures"),
                "must be at least 1",
            )
        });
        let error_rate = raw
            .error_rate
            .as_ref()
            .and_then(|rate| self.fraction(rate, &format!("{key}.breaker.error_rate")));
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let cooldown = ms(raw.cooldown_ms, defaults.cooldown);
        BreakerPolicy {
            failures: failures.unwrap_or(defaults.failures),
            error_rate: error_rate.unwrap_or(defaults.error_rate),
            min_requests: raw.min_requests.unwrap_or(defaults.min_requests),
            window: ms(raw.window_ms, defaults.window),
            cooldown,
            max_cooldown: ms(raw.max_cooldown_ms, defaults.max_cooldown).max(cooldown),
        }
    }

    fn probe(
        &mut self,
        raw: &RawProvider,
        key: &str,
        timeouts: &Timeouts,
        version: Option<&str>,
        servers: usize,
    ) -> Option<ProbePolicy> {
        let api = raw.api.unwrap_or_default();
        let raw = &raw.health;
        if raw.enabled == Some(false) {
            return None;
        }
        let path = match &raw.path {
            Some(path) => self.string(path, &format!("{key}.health.path"))?,
            None => models_path(api, version),
        };
        let interval = match &raw.interval_ms {
            Some(interval) => Duration::from_millis(self.positive(
                interval,
                &format!("{key}.health.interval_ms"),
                "must be more than 0 (set enabled = false to switch probing off)",
            )?),
            None => ProbePolicy::DEFAULT_INTERVAL,
        };
        if raw.timeout_ms == Some(0) {
            // Every probe would fail, and the breaker keep the provider open for good.
            self.zero_timeout(
                raw.timeout_at,
                &format!("{key}.health.timeout_ms"),
                timeouts.first_byte.min(ProbePolicy::MAX_DEFAULT_TIMEOUT),
            );
            return None;
        }
        Some(ProbePolicy {
            path,
            interval,
            timeout: raw.timeout_ms.map_or_else(
                || timeouts.first_byte.min(ProbePolicy::MAX_DEFAULT_TIMEOUT),
                Duration::from_millis,
            ),
            metrics: raw.metrics.unwrap_or(servers > 1),
        })
    }

    fn prefix_affinity(&mut self, raw: &RawProvider, key: &str) -> Option<PrefixAffinity> {
        let bytes = raw.affinity_prefix_bytes.as_ref().and_then(|bytes| {
            self.positive(
                bytes,
                &format!("{key}.affinity_prefix_bytes"),
                "must be at least 1 (how many bytes of the prompt make its prefix)",
            )
        });
        match raw.affinity {
            Some(super::Affinity::Prefix) => Some(PrefixAffinity {
                bytes: bytes.unwrap_or(PrefixAffinity::DEFAULT_BYTES) as usize,
            }),
            None => {
                if let Some(set) = &raw.affinity_prefix_bytes {
                    self.issue_at(
                        set.span().start,
                        &format!("{key}.affinity_prefix_bytes"),
                        "is set without affinity = \"prefix\"; set that too, or leave this out",
                    );
                }
                None
            }
        }
    }

    /// Where the probe of the server at `base_url` asks.
    fn probe_url(
        &mut self,
        raw: &RawProvider,
        key: &str,
        base_url: &Url,
        path: &str,
    ) -> Option<Url> {
        let Ok(url) = base_url.join(path) else {
            let span = raw.health.path.as_ref().map_or(0, |p| p.span().start);
            self.issue_at(
                span,
                &format!("{key}.health.path"),
                "is not a URL path; write e.g. \"/health\" or \"models\"",
            );
            return None;
        };
        Some(url)
    }

    /// A server's API root; `key` is the key that gave it (`base_url` or `servers[i].url`).
    fn base_url(&mut self, value: &str, text: &Text, key: &str) -> Option<Url> {
        let key = key.to_string();
        let mut url = match Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
            Ok(_) | Err(_) => {
                self.issue_at(
                    text.span().start,
                    &key,
                    // The value is not echoed: a URL may carry a password, and one that does
                    // not parse cannot have it masked.
                    "is not an http(s) URL; write e.g. \"http://localhost:8001/v1\"",
                );
                return None;
            }
        };
        if url.query().is_some() || url.fragment().is_some() {
            self.issue_at(
                text.span().start,
                &key,
                "must not have a query or fragment; give the API root, e.g. \"https://api.openai.com/v1\"",
            );
            return None;
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Some(url)
    }
}

/// Where the file gives the provider's first server, for mistakes about the provider as a whole.
fn url_span(raw: &RawProvider) -> usize {
    match (&raw.base_url, &raw.servers) {
        (Some(text), _) => text.span().start,
        (None, Some(list)) => list.span().start,
        (None, None) => 0,
    }
}
