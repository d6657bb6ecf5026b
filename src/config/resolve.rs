//! Raw file → resolved configuration. Every cross-reference is looked up here, once; every mistake is
//! recorded with its key and line, and all of them are returned together.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use url::Url;

use super::raw::{RawConfig, RawProvider, RawRoute, RawTimeouts, Text};
use super::{
    AllOpen, BreakerPolicy, ChainTier, ClientKey, Config, ConfigIssue, EnvLookup, LedgerConfig,
    Price, ProbePolicy, Profile, Provider, QualityBar, RequestLog, Route, Secret, ServerConfig,
    Shadow, TaskKind, Tier, Timeouts,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
const DEFAULT_LEDGER: &str = "sqlite://tierwise.db";
const DEFAULT_LEDGER_QUEUE: usize = 10_000;
const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_MIN_AGREEMENT: f64 = 0.9;
const DEFAULT_LATENCY_TOLERANCE: Duration = Duration::from_secs(2);

pub struct Resolver<'a> {
    text: &'a str,
    base_dir: &'a Path,
    env: EnvLookup<'a>,
    issues: Vec<ConfigIssue>,
    warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(text: &'a str, base_dir: &'a Path, env: EnvLookup<'a>) -> Self {
        Resolver {
            text,
            base_dir,
            env,
            issues: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn resolve(mut self, raw: RawConfig) -> Result<Config, Vec<ConfigIssue>> {
        let server = self.server(&raw);
        let ledger = self.ledger(&raw);

        let mut providers = BTreeMap::new();
        for (name, provider) in &raw.providers {
            if let Some(resolved) = self.provider(name, provider) {
                providers.insert(name.get_ref().clone(), Arc::new(resolved));
            }
        }
        if raw.providers.is_empty() {
            self.issue(
                None,
                "providers",
                "no provider is defined; add a [providers.NAME] table with a base_url",
            );
        }

        let mut tiers = BTreeMap::new();
        for (name, tier) in &raw.tiers {
            let key = format!("tiers.{}", name.get_ref());
            let Some(provider) = self.lookup(
                &providers,
                &tier.provider,
                &format!("{key}.provider"),
                "provider",
            ) else {
                continue;
            };
            let model = self.string(&tier.model, &format!("{key}.model"));
            if let Some(temperature) = &tier.temperature
                && !(0.0..=2.0).contains(temperature.get_ref())
            {
                self.issue_at(
                    temperature.span().start,
                    &format!("{key}.temperature"),
                    "must be between 0 and 2",
                );
            }
            if tier.timeout.connect_ms.is_some() {
                self.issue_at(
                    tier.provider.span().start,
                    &format!("{key}.timeout.connect_ms"),
                    "is set per provider, which owns the connection pool; move it to [providers.NAME] timeout",
                );
            }
            let timeouts = apply_timeouts(provider.timeouts, &tier.timeout);
            if let Some(model) = model {
                tiers.insert(
                    name.get_ref().clone(),
                    Arc::new(Tier {
                        name: name.get_ref().clone(),
                        provider,
                        model,
                        max_tokens: tier.max_tokens,
                        temperature: tier.temperature.as_ref().map(|t| *t.get_ref()),
                        timeouts,
                    }),
                );
            }
        }

        let routes: Vec<Arc<Route>> = raw
            .routes
            .iter()
            .filter_map(|(name, route)| self.route(name, route, &tiers, &raw))
            .map(Arc::new)
            .collect();

        let prices = self.prices(&raw);

        if self.issues.is_empty() {
            Ok(Config {
                server,
                ledger,
                providers: providers.into_values().collect(),
                tiers: tiers.into_values().collect(),
                routes,
                prices,
                warnings: self.warnings,
            })
        } else {
            self.issues.sort_by_key(|issue| issue.line);
            Err(self.issues)
        }
    }

    fn ledger(&mut self, raw: &RawConfig) -> LedgerConfig {
        let url = raw
            .ledger
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
            .unwrap_or_else(|| DEFAULT_LEDGER.to_string());
        let request_log = raw
            .ledger
            .request_log
            .as_ref()
            .and_then(|log| self.string(log, "ledger.request_log"))
            .filter(|log| !log.is_empty())
            .map(|log| match log.as_str() {
                "stderr" => RequestLog::Stderr,
                path => RequestLog::File(self.base_dir.join(path)),
            });
        let queue = match &raw.ledger.queue {
            Some(queue) if *queue.get_ref() == 0 => {
                self.issue_at(queue.span().start, "ledger.queue", "must be at least 1");
                1
            }
            Some(queue) => *queue.get_ref() as usize,
            None => DEFAULT_LEDGER_QUEUE,
        };
        LedgerConfig {
            url,
            store_content: raw.ledger.store_content,
            request_log,
            queue,
        }
    }

    fn server(&mut self, raw: &RawConfig) -> ServerConfig {
        let listen = match &raw.server.listen {
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
            None => DEFAULT_LISTEN.parse().ok(),
        };
        let api_keys: Vec<ClientKey> = raw
            .server
            .api_keys
            .iter()
            .flatten()
            .filter_map(|key| self.string(key, "server.api_keys"))
            .filter(|key| !key.is_empty())
            .map(|key| ClientKey::new(Secret::new(key)))
            .collect();
        if api_keys.is_empty() {
            self.warnings.push(
                "server.api_keys is empty: ANY client that can reach this port may call the gateway; \
                 set api_keys = [\"${TIERWISE_API_KEY}\"] to require a bearer key"
                    .to_string(),
            );
        }
        let admin_key = raw
            .server
            .admin_key
            .as_ref()
            .and_then(|key| self.string(key, "server.admin_key"))
            .filter(|key| !key.is_empty())
            .map(|key| ClientKey::new(Secret::new(key)));
        let max_body_bytes = match &raw.server.max_body_bytes {
            Some(size) if *size.get_ref() == 0 => {
                self.issue_at(
                    size.span().start,
                    "server.max_body_bytes",
                    "must be more than 0",
                );
                DEFAULT_MAX_BODY
            }
            Some(size) => *size.get_ref(),
            None => DEFAULT_MAX_BODY,
        };
        ServerConfig {
            listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 4000).into()),
            api_keys,
            admin_key,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            shutdown_grace: raw
                .server
                .shutdown_grace_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            threads: match &raw.server.threads {
                Some(threads) if *threads.get_ref() == 0 => {
                    self.issue_at(
                        threads.span().start,
                        "server.threads",
                        "must be at least 1 (leave it out for one per core)",
                    );
                    1
                }
                Some(threads) => *threads.get_ref() as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        }
    }

    fn provider(&mut self, name: &Text, raw: &RawProvider) -> Option<Provider> {
        let key = format!("providers.{}", name.get_ref());
        let base_url = self
            .string(&raw.base_url, &format!("{key}.base_url"))
            .and_then(|url| self.base_url(&url, &raw.base_url, &key));
        let api_key = match &raw.api_key {
            Some(text) => {
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
            None => None,
        };
        if let Some(cost) = &raw.fixed_monthly_usd
            && !(cost.get_ref().is_finite() && *cost.get_ref() >= 0.0)
        {
            self.issue_at(
                cost.span().start,
                &format!("{key}.fixed_monthly_usd"),
                "must be a number of dollars, 0 or more",
            );
        }
        let base_url = base_url?;
        let timeouts = apply_timeouts(Timeouts::default(), &raw.timeout);
        if let Some(limit) = &raw.max_in_flight
            && *limit.get_ref() == 0
        {
            self.issue_at(
                limit.span().start,
                &format!("{key}.max_in_flight"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        let breaker = self.breaker(raw, &key);
        let probe = self.probe(raw, &key, &base_url, &timeouts);
        Some(Provider {
            name: name.get_ref().clone(),
            base_url,
            api_key,
            fixed_monthly_usd: raw.fixed_monthly_usd.as_ref().map(|c| *c.get_ref()),
            warmup: raw.warmup,
            timeouts,
            max_in_flight: raw.max_in_flight.as_ref().map(|limit| *limit.get_ref()),
            retry_429_max_wait: Duration::from_millis(raw.retry_429_max_wait_ms.unwrap_or(1000)),
            breaker,
            probe,
        })
    }

    fn breaker(&mut self, raw: &RawProvider, key: &str) -> BreakerPolicy {
        let defaults = BreakerPolicy::default();
        let raw = &raw.breaker;
        if let Some(failures) = &raw.failures
            && *failures.get_ref() == 0
        {
            self.issue_at(
                failures.span().start,
                &format!("{key}.breaker.failures"),
                "must be at least 1",
            );
        }
        let error_rate = match &raw.error_rate {
            Some(rate) => self
                .fraction(rate, &format!("{key}.breaker.error_rate"))
                .unwrap_or(defaults.error_rate),
            None => defaults.error_rate,
        };
        let ms = |value: Option<u64>, default: Duration| {
            value.map(Duration::from_millis).unwrap_or(default)
        };
        let cooldown = ms(raw.cooldown_ms, defaults.cooldown);
        BreakerPolicy {
            failures: raw
                .failures
                .as_ref()
                .map_or(defaults.failures, |f| *f.get_ref()),
            error_rate,
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
    ) -> Option<ProbePolicy> {
        let raw = &raw.health;
        if raw.enabled == Some(false) {
            return None;
        }
        let path = match &raw.path {
            Some(path) => self.string(path, &format!("{key}.health.path"))?,
            None => "models".to_string(),
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
        if let Some(interval) = &raw.interval_ms
            && *interval.get_ref() == 0
        {
            self.issue_at(
                interval.span().start,
                &format!("{key}.health.interval_ms"),
                "must be more than 0 (set enabled = false to switch probing off)",
            );
            return None;
        }
        Some(ProbePolicy {
            url,
            interval: Duration::from_millis(
                raw.interval_ms.as_ref().map_or(5000, |i| *i.get_ref()),
            ),
            timeout: raw
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| timeouts.first_byte.min(Duration::from_secs(5))),
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
                    &format!(
                        "{value:?} is not an http(s) URL; write e.g. \"http://localhost:8001/v1\""
                    ),
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

    fn route(
        &mut self,
        name: &Text,
        raw: &RawRoute,
        tiers: &BTreeMap<String, Arc<Tier>>,
        config: &RawConfig,
    ) -> Option<Route> {
        let key = format!("routes.{}", name.get_ref());
        if config.tiers.contains_key(name.get_ref().as_str()) {
            self.issue_at(
                name.span().start,
                &key,
                &format!(
                    "{:?} is also a tier name; a `model` value must mean one thing, so rename the route or the tier",
                    name.get_ref()
                ),
            );
        }
        let kind = TaskKind::ALL
            .iter()
            .find(|(kind, _)| *kind == raw.kind.get_ref())
            .map(|(_, kind)| *kind);
        if kind.is_none() {
            let allowed: Vec<&str> = TaskKind::ALL.iter().map(|(name, _)| *name).collect();
            self.issue_at(
                raw.kind.span().start,
                &format!("{key}.kind"),
                &format!(
                    "unknown kind {:?}; use one of: {}",
                    raw.kind.get_ref(),
                    allowed.join(", ")
                ),
            );
        }
        if raw.tiers.get_ref().is_empty() {
            self.issue_at(
                raw.tiers.span().start,
                &format!("{key}.tiers"),
                "the chain is empty; list at least one tier, the primary first",
            );
        }

        let labels = raw
            .output
            .as_ref()
            .and_then(|output| output.labels.as_ref());
        let labels = labels.and_then(|labels| self.labels(labels, &key));

        let mut seen = HashSet::new();
        let mut chain = Vec::new();
        for tier_name in raw.tiers.get_ref() {
            let tier_key = format!("{key}.tiers");
            if !seen.insert(tier_name.get_ref().as_str()) {
                self.issue_at(
                    tier_name.span().start,
                    &tier_key,
                    &format!("tier {:?} is listed twice", tier_name.get_ref()),
                );
                continue;
            }
            let Some(tier) = self.lookup(tiers, tier_name, &tier_key, "tier") else {
                continue;
            };
            chain.push(ChainTier {
                tier,
                system_prompt: None,
            });
        }
        for (tier_name, path) in &raw.prompts {
            let prompt_key = format!("{key}.prompts.{}", tier_name.get_ref());
            let Some(slot) = chain
                .iter_mut()
                .find(|entry| entry.tier.name == *tier_name.get_ref())
            else {
                self.issue_at(
                    tier_name.span().start,
                    &prompt_key,
                    &format!(
                        "{:?} is not in this route's tiers ({}); a prompt override applies to a tier of the chain",
                        tier_name.get_ref(),
                        raw.tiers.get_ref().iter().map(|t| t.get_ref().as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
                continue;
            };
            if let Some(prompt) = self.prompt(path, &prompt_key, labels.as_deref()) {
                slot.system_prompt = Some(prompt.into());
            }
        }

        let baseline = raw
            .baseline
            .as_ref()
            .and_then(|baseline| self.lookup(tiers, baseline, &format!("{key}.baseline"), "tier"));
        let shadow = raw.shadow.as_ref().and_then(|shadow| {
            let reference = self.lookup(
                tiers,
                &shadow.reference,
                &format!("{key}.shadow.reference"),
                "tier",
            );
            let sample_rate =
                self.fraction(&shadow.sample_rate, &format!("{key}.shadow.sample_rate"));
            let min_agreement = match &shadow.min_agreement {
                Some(value) => self.fraction(value, &format!("{key}.shadow.min_agreement")),
                None => Some(DEFAULT_MIN_AGREEMENT),
            };
            Some(Shadow {
                reference: reference?,
                sample_rate: sample_rate?,
                min_agreement: min_agreement?,
            })
        });
        let profile = self.profile(raw, &key);
        let when_all_open = match &raw.when_all_open {
            None => AllOpen::TryPrimary,
            Some(value) => match value.get_ref().as_str() {
                "try_primary" => AllOpen::TryPrimary,
                "fail_fast" => AllOpen::FailFast,
                other => {
                    self.issue_at(
                        value.span().start,
                        &format!("{key}.when_all_open"),
                        &format!("unknown value {other:?}; use \"try_primary\" or \"fail_fast\""),
                    );
                    AllOpen::TryPrimary
                }
            },
        };

        if !self.issues.is_empty() {
            return None;
        }
        Some(Route {
            name: name.get_ref().clone(),
            kind: kind?,
            chain,
            baseline,
            labels,
            shadow,
            profile,
            when_all_open,
        })
    }

    fn labels(&mut self, labels: &Spanned<Vec<Text>>, key: &str) -> Option<Vec<String>> {
        let key = format!("{key}.output.labels");
        if labels.get_ref().is_empty() {
            self.issue_at(
                labels.span().start,
                &key,
                "is empty; list the labels a valid answer may be",
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        for label in labels.get_ref() {
            let normalized = label.get_ref().trim().to_lowercase();
            if normalized.is_empty() {
                self.issue_at(label.span().start, &key, "a label may not be empty");
            } else if out.contains(&normalized) {
                self.issue_at(
                    label.span().start,
                    &key,
                    &format!(
                        "label {:?} is listed twice (labels compare case-insensitively)",
                        label.get_ref()
                    ),
                );
            } else {
                out.push(normalized);
            }
        }
        Some(out)
    }

    fn prompt(&mut self, path: &Text, key: &str, labels: Option<&[String]>) -> Option<String> {
        let relative = self.string(path, key)?;
        let full = self.base_dir.join(&relative);
        match std::fs::read_to_string(&full) {
            Ok(prompt) if prompt.contains("{labels}") && labels.is_none() => {
                self.issue_at(
                    path.span().start,
                    key,
                    &format!(
                        "{} uses {{labels}} but the route has no output.labels",
                        full.display()
                    ),
                );
                None
            }
            Ok(prompt) => Some(match labels {
                Some(labels) => prompt.replace("{labels}", &labels.join(", ")),
                None => prompt,
            }),
            Err(err) => {
                self.issue_at(
                    path.span().start,
                    key,
                    &format!(
                        "cannot read prompt file {}: {err} (paths are relative to the config file)",
                        full.display()
                    ),
                );
                None
            }
        }
    }

    fn profile(&mut self, raw: &RawRoute, key: &str) -> Profile {
        let mut profile = Profile {
            quality: QualityBar::GoodEnough,
            latency_tolerance: DEFAULT_LATENCY_TOLERANCE,
        };
        let Some(raw) = &raw.profile else {
            return profile;
        };
        if let Some(quality) = &raw.quality {
            match quality.get_ref().as_str() {
                "good_enough" => profile.quality = QualityBar::GoodEnough,
                "frontier" => profile.quality = QualityBar::Frontier,
                other => self.issue_at(
                    quality.span().start,
                    &format!("{key}.profile.quality"),
                    &format!("unknown quality bar {other:?}; use \"good_enough\" or \"frontier\""),
                ),
            }
        }
        if let Some(ms) = raw.latency_tolerance_ms {
            profile.latency_tolerance = Duration::from_millis(ms);
        }
        profile
    }

    fn prices(&mut self, raw: &RawConfig) -> BTreeMap<String, Price> {
        let mut prices = BTreeMap::new();
        for (model, price) in &raw.prices {
            let key = format!("prices.{:?}", model.get_ref());
            let mut amount = |value: &Spanned<f64>, field: &str| {
                let ok = value.get_ref().is_finite() && *value.get_ref() >= 0.0;
                if !ok {
                    self.issue_at(
                        value.span().start,
                        &format!("{key}.{field}"),
                        "must be USD per million tokens, 0 or more",
                    );
                }
                *value.get_ref()
            };
            let input = amount(&price.input, "input");
            let output = amount(&price.output, "output");
            let cached_input = price
                .cached_input
                .as_ref()
                .map(|c| amount(c, "cached_input"));
            prices.insert(
                model.get_ref().clone(),
                Price {
                    input,
                    output,
                    cached_input,
                },
            );
        }
        prices
    }

    fn fraction(&mut self, value: &Spanned<f64>, key: &str) -> Option<f64> {
        if (0.0..=1.0).contains(value.get_ref()) {
            Some(*value.get_ref())
        } else {
            self.issue_at(value.span().start, key, "must be between 0 and 1");
            None
        }
    }

    /// Finds `name` among `defined`, or records an error listing what is defined.
    fn lookup<T>(
        &mut self,
        defined: &BTreeMap<String, Arc<T>>,
        name: &Text,
        key: &str,
        what: &str,
    ) -> Option<Arc<T>> {
        if let Some(found) = defined.get(name.get_ref()) {
            return Some(found.clone());
        }
        let known: Vec<&str> = defined.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            format!("no {what} is defined")
        } else {
            format!("defined: {}", known.join(", "))
        };
        self.issue_at(
            name.span().start,
            key,
            &format!("no {what} named {:?} ({known})", name.get_ref()),
        );
        None
    }

    fn string(&mut self, text: &Text, key: &str) -> Option<String> {
        match super::env::interpolate(text.get_ref(), self.env) {
            Ok(value) => Some(value),
            Err(message) => {
                self.issue_at(text.span().start, key, &message);
                None
            }
        }
    }

    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn issue_at(&mut self, offset: usize, key: &str, message: &str) {
        let line = self.line(offset);
        self.issue(Some(line), key, message);
    }

    fn issue(&mut self, line: Option<usize>, key: &str, message: &str) {
        self.issues.push(ConfigIssue {
            line,
            key: key.to_string(),
            message: message.to_string(),
        });
    }
}

fn apply_timeouts(base: Timeouts, raw: &RawTimeouts) -> Timeouts {
    let pick =
        |value: Option<u64>, default: Duration| value.map(Duration::from_millis).unwrap_or(default);
    Timeouts {
        connect: pick(raw.connect_ms, base.connect),
        first_byte: pick(raw.first_byte_ms, base.first_byte),
        total: pick(raw.total_ms, base.total),
        idle: pick(raw.idle_ms, base.idle),
    }
}
