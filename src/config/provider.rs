//! `[providers.NAME]`: one upstream endpoint — its URL and key, its timeouts, its circuit breaker,
//! its health probe, its in-flight cap — each default beside the field it fills.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use url::Url;

use super::file::{RawProvider, RawTimeouts, Text};
use super::proxy::Proxy;
use super::resolver::Resolver;
use super::{Api, KeyHeader, Secret};

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Always ends in `/`, so that `join("chat/completions")` keeps the path prefix (`/v1/`).
    pub base_url: Url,
    /// The wire format it speaks; OpenAI's unless the file says otherwise.
    pub api: Api,
    /// The format's API version (Anthropic's `anthropic-version`), where it has one.
    pub api_version: Option<String>,
    /// The header the key travels in.
    pub auth: KeyHeader,
    pub api_key: Option<Secret>,
    /// The HTTP proxy the provider is reached through, if any.
    pub proxy: Option<Proxy>,
    /// Its own CA and client certificate, where it has them.
    pub tls: Option<super::Tls>,
    pub fixed_monthly_usd: Option<f64>,
    pub warmup: bool,
    pub timeouts: Timeouts,
    /// Requests over this many at once spill to the next tier instead of queueing.
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
    /// `{base_url}/models` by default; a path starting with `/` is taken from the host root
    /// (vLLM's `/health`).
    pub url: Url,
    pub interval: Duration,
    pub timeout: Duration,
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
        let base_url = self
            .string(&raw.base_url, &format!("{key}.base_url"))
            .and_then(|url| self.base_url(&url, &raw.base_url, &key));
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
        let base_url = base_url?;
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
        let probe = self.probe(raw, &key, &base_url, &timeouts, api_version.as_deref());
        let proxy = self.proxy(raw.proxy.as_ref(), &key, &base_url);
        let tls = match &raw.tls {
            Some(tls) => Some(self.tls(tls, &key, raw.base_url.span().start)?),
            None => None,
        };
        Some(Provider {
            name: name.get_ref().clone(),
            base_url,
            api,
            api_version,
            auth: raw.auth.unwrap_or(api.default_auth()),
            api_key,
            proxy,
            tls,
            fixed_monthly_usd: raw.fixed_monthly_usd.as_ref().map(|c| *c.get_ref()),
            warmup: raw.warmup,
            timeouts,
            max_in_flight,
            retry_429_max_wait: raw
                .retry_429_max_wait_ms
                .map_or(Provider::DEFAULT_RETRY_429_MAX_WAIT, Duration::from_millis),
            breaker,
            probe,
        })
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
        base_url: &Url,
        timeouts: &Timeouts,
        version: Option<&str>,
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
        let Ok(url) = base_url.join(&path) else {
            let span = raw.path.as_ref().map_or(0, |p| p.span().start);
            self.issue_at(
                span,
                &format!("{key}.health.path"),
                "is not a URL path; write e.g. \"/health\" or \"models\"",
            );
            return None;
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
            url,
            interval,
            timeout: raw.timeout_ms.map_or_else(
                || timeouts.first_byte.min(ProbePolicy::MAX_DEFAULT_TIMEOUT),
                Duration::from_millis,
            ),
        })
    }

    fn base_url(&mut self, value: &str, text: &Text, key: &str) -> Option<Url> {
        let key = format!("{key}.base_url");
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
