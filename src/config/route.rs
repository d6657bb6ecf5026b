//! `[routes.NAME]`: one task as the application sees it — its kind, its chain of tiers with their
//! prompt overrides, its output contract, its shadow check, its profile and its baseline.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::file::{ConfigFile, RawRoute, Text};
use super::resolver::Resolver;
use super::tier::Tier;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub kind: TaskKind,
    /// Never empty: the first is the primary, the rest are fallbacks in order.
    pub chain: Vec<ChainTier>,
    pub baseline: Option<Arc<Tier>>,
    /// Allowed labels, lower-cased, when the route declares an output contract.
    pub labels: Option<Vec<String>>,
    pub shadow: Option<Shadow>,
    pub profile: Profile,
    /// Default: [`AllOpen::TryPrimary`].
    pub when_all_open: AllOpen,
}

/// What a route does, which decides its scorer and whether it may move to a local model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classification,
    Extraction,
    Summarization,
    Moderation,
    Embedding,
    Chat,
    Agentic,
    Reasoning,
}

/// One tier in a route's chain, with what the route changes about calls to it.
#[derive(Debug, Clone)]
pub struct ChainTier {
    pub tier: Arc<Tier>,
    /// Replaces the client's system message on this tier (`{labels}` already filled in).
    pub system_prompt: Option<Arc<str>>,
}

/// What a route does when every tier's breaker is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllOpen {
    /// Call the primary anyway: it may have recovered, and a failure costs one request.
    #[default]
    TryPrimary,
    /// Answer 503 at once with `Retry-After`.
    FailFast,
}

#[derive(Debug)]
pub struct Shadow {
    pub reference: Arc<Tier>,
    pub sample_rate: f64,
    pub min_agreement: f64,
}

impl Shadow {
    pub const DEFAULT_MIN_AGREEMENT: f64 = 0.9;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityBar {
    #[default]
    GoodEnough,
    Frontier,
}

#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub quality: QualityBar,
    pub latency_tolerance: Duration,
}

impl Profile {
    pub const DEFAULT_LATENCY_TOLERANCE: Duration = Duration::from_secs(2);
}

impl Resolver<'_> {
    pub(super) fn routes(
        &mut self,
        file: &ConfigFile,
        tiers: &BTreeMap<String, Arc<Tier>>,
    ) -> Vec<Arc<Route>> {
        file.routes
            .iter()
            .filter_map(|(name, route)| self.route(name, route, tiers, file))
            .map(Arc::new)
            .collect()
    }

    fn route(
        &mut self,
        name: &Text,
        raw: &RawRoute,
        tiers: &BTreeMap<String, Arc<Tier>>,
        file: &ConfigFile,
    ) -> Option<Route> {
        let key = format!("routes.{}", name.get_ref());
        if file.tiers.contains_key(name.get_ref().as_str()) {
            self.issue_at(
                name.span().start,
                &key,
                &format!(
                    "{:?} is also a tier name; a `model` value must mean one thing, so rename the route or the tier",
                    name.get_ref()
                ),
            );
        }
        let labels = raw
            .output
            .as_ref()
            .and_then(|output| output.labels.as_ref())
            .and_then(|labels| self.labels(labels, &key));
        let chain = self.chain(raw, &key, tiers, labels.as_deref());
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
                None => Some(Shadow::DEFAULT_MIN_AGREEMENT),
            };
            Some(Shadow {
                reference: reference?,
                sample_rate: sample_rate?,
                min_agreement: min_agreement?,
            })
        });
        let profile = Profile {
            quality: raw
                .profile
                .as_ref()
                .and_then(|p| p.quality)
                .unwrap_or_default(),
            latency_tolerance: raw
                .profile
                .as_ref()
                .and_then(|p| p.latency_tolerance_ms)
                .map_or(Profile::DEFAULT_LATENCY_TOLERANCE, Duration::from_millis),
        };
        if !self.clean() {
            return None;
        }
        Some(Route {
            name: name.get_ref().clone(),
            kind: *raw.kind.get_ref(),
            chain,
            baseline,
            labels,
            shadow,
            profile,
            when_all_open: raw.when_all_open.unwrap_or_default(),
        })
    }

    /// The route's tiers in order, each with its prompt override.
    fn chain(
        &mut self,
        raw: &RawRoute,
        key: &str,
        tiers: &BTreeMap<String, Arc<Tier>>,
        labels: Option<&[String]>,
    ) -> Vec<ChainTier> {
        let tier_key = format!("{key}.tiers");
        if raw.tiers.get_ref().is_empty() {
            self.issue_at(
                raw.tiers.span().start,
                &tier_key,
                "the chain is empty; list at least one tier, the primary first",
            );
        }
        let mut seen = HashSet::new();
        let mut chain = Vec::new();
        for tier_name in raw.tiers.get_ref() {
            if !seen.insert(tier_name.get_ref().as_str()) {
                self.issue_at(
                    tier_name.span().start,
                    &tier_key,
                    &format!("tier {:?} is listed twice", tier_name.get_ref()),
                );
                continue;
            }
            if let Some(tier) = self.lookup(tiers, tier_name, &tier_key, "tier") {
                chain.push(ChainTier {
                    tier,
                    system_prompt: None,
                });
            }
        }
        for (tier_name, path) in &raw.prompts {
            let prompt_key = format!("{key}.prompts.{}", tier_name.get_ref());
            let Some(slot) = chain
                .iter_mut()
                .find(|entry| entry.tier.name == *tier_name.get_ref())
            else {
                let listed: Vec<&str> = raw
                    .tiers
                    .get_ref()
                    .iter()
                    .map(|t| t.get_ref().as_str())
                    .collect();
                self.issue_at(
                    tier_name.span().start,
                    &prompt_key,
                    &format!(
                        "{:?} is not in this route's tiers ({}); a prompt override applies to a tier of the chain",
                        tier_name.get_ref(),
                        listed.join(", ")
                    ),
                );
                continue;
            };
            if let Some(prompt) = self.prompt(path, &prompt_key, labels) {
                slot.system_prompt = Some(prompt.into());
            }
        }
        chain
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
            Ok(prompt) if with_labels(&prompt, labels).is_none() => {
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
            Ok(prompt) => with_labels(&prompt, labels),
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
}

/// A prompt with `{labels}` filled in with the route's labels; `None` when it asks for labels the
/// route does not have.
pub fn with_labels(prompt: &str, labels: Option<&[String]>) -> Option<String> {
    match labels {
        Some(labels) => Some(prompt.replace("{labels}", &labels.join(", "))),
        None if prompt.contains("{labels}") => None,
        None => Some(prompt.to_string()),
    }
}
