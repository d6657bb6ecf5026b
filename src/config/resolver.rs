//! File → resolved configuration: the order of resolution (server and ledger, providers, the tiers
//! that name them, the routes that name tiers, prices) and the shared means of every step: reading
//! `${ENV}` values, looking names up, and recording each mistake with its key and line. Each
//! resolved type resolves itself in its own module; all mistakes are returned together.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::file::{ConfigFile, Text};
use super::{Config, ConfigIssue, EnvLookup};

pub struct Resolver<'a> {
    text: &'a str,
    pub(super) base_dir: &'a Path,
    pub(super) env: EnvLookup<'a>,
    issues: Vec<ConfigIssue>,
    pub(super) warnings: Vec<String>,
    /// Names that are defined but could not be resolved: their own mistake is already recorded,
    /// so what refers to them is not told they do not exist.
    invalid: HashSet<String>,
    /// The files the config refers to (prompts, TLS), as read: part of the config's hash, so a
    /// reload sees a prompt or certificate changed while the TOML text is the same.
    pub(super) read: Vec<(std::path::PathBuf, Vec<u8>)>,
}

impl<'a> Resolver<'a> {
    pub fn new(text: &'a str, base_dir: &'a Path, env: EnvLookup<'a>) -> Self {
        Resolver {
            text,
            base_dir,
            read: Vec::new(),
            env,
            issues: Vec::new(),
            warnings: Vec::new(),
            invalid: HashSet::new(),
        }
    }

    pub fn resolve(mut self, file: ConfigFile) -> Result<Config, Vec<ConfigIssue>> {
        let server = self.server(&file.server, &file.keys, &file.routes);
        let ledger = self.ledger(&file.ledger);
        let limits = self.limits(&file.limits);
        let cache = self.cache(&file.cache);
        let telemetry = self.telemetry(&file.telemetry);
        let responses = self.responses(&file.responses);
        let providers = self.providers(&file.providers);
        let tiers = self.tiers(&file.tiers, &providers);
        let routes = self.routes(&file, &tiers);
        let prices = self.prices(&file.prices);
        self.shadow_prices(&file, &routes, &prices);
        let budget = file
            .budget
            .as_ref()
            .and_then(|budget| self.budget(budget, "budget"));
        let all_tiers: Vec<_> = tiers.values().cloned().collect();
        self.budget_prices(&file, &routes, &all_tiers, &prices);
        self.key_budget_prices(&file, &server.api_keys, &routes, &all_tiers, &prices);
        let alerts = self.alerts(&file.alerts);
        let advise = self.advise(&file.advise);
        let report = self.report(&file.report);
        if self.issues.is_empty() {
            Ok(Config {
                server,
                ledger,
                limits,
                cache,
                telemetry,
                responses,
                providers: providers.into_values().collect(),
                tiers: tiers.into_values().collect(),
                routes,
                prices,
                alerts,
                advise,
                report,
                budget,
                warnings: self.warnings,
                source: super::Source::of(self.text, &self.read),
            })
        } else {
            self.issues.sort_by_key(|issue| issue.line);
            Err(self.issues)
        }
    }

    fn alerts(&mut self, raw: &super::file::RawAlerts) -> super::Alerts {
        let webhook = raw.webhook.as_ref().and_then(|url| {
            let value = self.string(url, "alerts.webhook")?;
            match reqwest::Url::parse(&value) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(parsed),
                // The value may carry a token: the message names the key, never the value.
                _ => {
                    self.issue_at(
                        url.span().start,
                        "alerts.webhook",
                        "is not an http:// or https:// URL",
                    );
                    None
                }
            }
        });
        super::Alerts { webhook }
    }

    fn advise(&mut self, raw: &super::file::RawAdvise) -> super::AdviseRules {
        let defaults = super::AdviseRules::default();
        let min_calls_per_day = match &raw.min_calls_per_day {
            Some(value) if !value.get_ref().is_finite() || *value.get_ref() < 0.0 => {
                self.issue_at(
                    value.span().start,
                    "advise.min_calls_per_day",
                    "must be a number of calls, 0 or more",
                );
                defaults.min_calls_per_day
            }
            Some(value) => *value.get_ref(),
            None => defaults.min_calls_per_day,
        };
        super::AdviseRules {
            min_calls_per_day,
            max_context_tokens: raw
                .max_context_tokens
                .as_ref()
                .and_then(|value| {
                    self.positive(value, "advise.max_context_tokens", "must be at least 1")
                })
                .unwrap_or(defaults.max_context_tokens),
            min_latency_tolerance: raw.min_latency_tolerance_ms.map_or(
                defaults.min_latency_tolerance,
                std::time::Duration::from_millis,
            ),
        }
    }

    fn report(&mut self, raw: &super::file::RawReport) -> super::ReportRules {
        let defaults = super::ReportRules::default();
        let project_after = match &raw.project_after_hours {
            // A year is the most a window can usefully hold before a month is projected from it.
            Some(hours)
                if hours.get_ref().is_finite() && (0.0..=8766.0).contains(hours.get_ref()) =>
            {
                std::time::Duration::from_secs_f64(hours.get_ref() * 3600.0)
            }
            Some(hours) => {
                self.issue_at(
                    hours.span().start,
                    "report.project_after_hours",
                    "must be a number of hours from 0 to 8766 (a year)",
                );
                defaults.project_after
            }
            None => defaults.project_after,
        };
        super::ReportRules { project_after }
    }

    /// Whether every step so far was free of mistakes.
    pub(super) fn clean(&self) -> bool {
        self.issues.is_empty()
    }

    pub(super) fn fraction(&mut self, value: &Spanned<f64>, key: &str) -> Option<f64> {
        if (0.0..=1.0).contains(value.get_ref()) {
            Some(*value.get_ref())
        } else {
            self.issue_at(value.span().start, key, "must be between 0 and 1");
            None
        }
    }

    /// A count that must be at least 1: `None` (with the mistake recorded) when it is 0.
    pub(super) fn positive<T: Copy + PartialEq + Default>(
        &mut self,
        value: &Spanned<T>,
        key: &str,
        message: &str,
    ) -> Option<T> {
        if *value.get_ref() == T::default() {
            self.issue_at(value.span().start, key, message);
            None
        } else {
            Some(*value.get_ref())
        }
    }

    /// `name` is defined in the file, but its definition has a mistake.
    pub(super) fn defined_but_invalid(&mut self, what: &str, name: &str) {
        self.invalid.insert(format!("{what} {name}"));
    }

    /// Finds `name` among `defined`, or records an error listing what is defined (unless it is
    /// defined with a mistake of its own).
    pub(super) fn lookup<T>(
        &mut self,
        defined: &BTreeMap<String, Arc<T>>,
        name: &Text,
        key: &str,
        what: &str,
    ) -> Option<Arc<T>> {
        if let Some(found) = defined.get(name.get_ref()) {
            return Some(found.clone());
        }
        if self.invalid.contains(&format!("{what} {}", name.get_ref())) {
            return None;
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

    /// A string value with its `${ENV}` references read.
    pub(super) fn string(&mut self, text: &Text, key: &str) -> Option<String> {
        match super::env::interpolate(text.get_ref(), self.env) {
            Ok(value) => Some(value),
            Err(message) => {
                self.issue_at(text.span().start, key, &message);
                None
            }
        }
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn issue_at(&mut self, offset: usize, key: &str, message: &str) {
        let line = self.line(offset);
        self.issue(Some(line), key, message);
    }

    pub(super) fn issue(&mut self, line: Option<usize>, key: &str, message: &str) {
        self.issues.push(ConfigIssue {
            line,
            key: key.to_string(),
            message: message.to_string(),
        });
    }
}
