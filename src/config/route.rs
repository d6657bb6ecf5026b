//! `[routes.NAME]`: one task as the application sees it — its kind, its chain of tiers with their
//! prompt overrides, its output contract, its shadow check, its profile and its baseline.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::budget::Budget;
use super::file::{ConfigFile, RawRoute, RawShadow, Text};
use super::kinds::{
    AllOpen, Api, Changes, OnDrift, OnProof, QualityBar, ScorerKind, TaskKind, ToolCalling,
};
use super::resolver::Resolver;
use super::tier::Tier;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub kind: TaskKind,
    /// Never empty: the first is the primary, the rest are fallbacks in order.
    pub chain: Vec<ChainTier>,
    pub baseline: Option<Arc<Tier>>,
    /// Allowed labels as configured (trimmed), when the route declares an output contract. Answers
    /// match them in any case; an answer that is one of them exactly is passed on untouched.
    pub labels: Option<Vec<String>>,
    pub shadow: Option<Shadow>,
    pub profile: Profile,
    /// Default: [`AllOpen::TryPrimary`].
    pub when_all_open: AllOpen,
    /// What the route's API calls may cost a month.
    pub budget: Option<Budget>,
    /// Requests and tokens per minute to this route, over every key.
    pub rate: super::Rate,
    /// Answers kept for identical requests, where the route opts in.
    pub cache: Option<super::RouteCache>,
}

/// One tier in a route's chain, with what the route changes about calls to it.
#[derive(Debug, Clone)]
pub struct ChainTier {
    pub tier: Arc<Tier>,
    /// Replaces the client's system message on this tier (`{labels}` already filled in).
    pub system_prompt: Option<Arc<str>>,
}

/// A route's shadow check: a sampled share of the answers its primary (the candidate) gives are
/// also asked of the reference tier, after the client has its answer, and the two scored.
#[derive(Debug)]
pub struct Shadow {
    /// The route's primary tier, whose answers are checked.
    pub candidate: Arc<Tier>,
    pub reference: Arc<Tier>,
    pub sample_rate: f64,
    pub min_agreement: f64,
    pub scorer: ScorerKind,
    /// Shadow calls of this route in flight at once; a sample that finds them all busy is skipped.
    pub concurrency: u32,
    /// What shadow calls may cost per UTC day; sampling stops once it is spent.
    pub daily_budget_usd: f64,
    /// The rolling window of scored samples the monitor judges, and how many it needs to judge.
    pub window: u32,
    pub min_samples: u32,
    pub on_drift: OnDrift,
    pub on_proof: OnProof,
}

impl Shadow {
    pub const DEFAULT_MIN_AGREEMENT: f64 = 0.9;
    pub const DEFAULT_CONCURRENCY: u32 = 4;
    pub const DEFAULT_DAILY_BUDGET_USD: f64 = 5.0;
    pub const DEFAULT_WINDOW: u32 = 400;
    pub const DEFAULT_MIN_SAMPLES: u32 = 50;
}

#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub quality: QualityBar,
    pub latency_tolerance: Duration,
    pub tool_calling: ToolCalling,
    pub changes: Changes,
    /// Which of the above the file set; the rest are defaults, and `advise` says so.
    pub declared: Declared,
}

/// The profile fields a route declared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared {
    pub quality: bool,
    pub latency_tolerance: bool,
    pub tool_calling: bool,
    pub changes: bool,
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
        let shadow = raw
            .shadow
            .as_ref()
            .and_then(|shadow| self.shadow(shadow, raw, &key, tiers, &chain));
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
            tool_calling: raw
                .profile
                .as_ref()
                .and_then(|p| p.tool_calling)
                .unwrap_or_default(),
            changes: raw
                .profile
                .as_ref()
                .and_then(|p| p.changes)
                .unwrap_or_default(),
            declared: raw
                .profile
                .as_ref()
                .map_or_else(Declared::default, |p| Declared {
                    quality: p.quality.is_some(),
                    latency_tolerance: p.latency_tolerance_ms.is_some(),
                    tool_calling: p.tool_calling.is_some(),
                    changes: p.changes.is_some(),
                }),
        };
        let budget = raw
            .budget
            .as_ref()
            .and_then(|budget| self.budget(budget, &format!("{key}.budget")));
        let rate = self.rate(&raw.rpm, &raw.tpm, &key);
        let cache = raw
            .cache
            .as_ref()
            .and_then(|cache| self.route_cache(cache, &key));
        if !self.clean() {
            return None;
        }
        Some(Route {
            rate,
            name: name.get_ref().clone(),
            kind: *raw.kind.get_ref(),
            chain,
            baseline,
            labels,
            shadow,
            profile,
            when_all_open: raw.when_all_open.unwrap_or_default(),
            budget,
            cache,
        })
    }

    fn shadow(
        &mut self,
        raw: &RawShadow,
        route: &RawRoute,
        key: &str,
        tiers: &BTreeMap<String, Arc<Tier>>,
        chain: &[ChainTier],
    ) -> Option<Shadow> {
        let key = format!("{key}.shadow");
        let reference = self.lookup(tiers, &raw.reference, &format!("{key}.reference"), "tier");
        let sample_rate = self.fraction(&raw.sample_rate, &format!("{key}.sample_rate"));
        let min_agreement = match &raw.min_agreement {
            Some(value) => self.fraction(value, &format!("{key}.min_agreement")),
            None => Some(Shadow::DEFAULT_MIN_AGREEMENT),
        };
        let scorer = match raw.scorer {
            Some(scorer) => Some(scorer),
            None => {
                let scorer = ScorerKind::for_task(*route.kind.get_ref());
                if scorer.is_none() {
                    self.issue_at(
                        raw.reference.span().start,
                        &key,
                        "an embedding route's answers are vectors, which a shadow check cannot score; remove the shadow table",
                    );
                }
                scorer
            }
        };
        let count = |resolver: &mut Self, value: &Option<Spanned<u32>>, name: &str, default| {
            value.as_ref().map_or(Some(default), |value| {
                resolver.positive(value, &format!("{key}.{name}"), "must be at least 1")
            })
        };
        let concurrency = count(
            self,
            &raw.concurrency,
            "concurrency",
            Shadow::DEFAULT_CONCURRENCY,
        );
        let window = count(self, &raw.window, "window", Shadow::DEFAULT_WINDOW);
        let min_samples = count(
            self,
            &raw.min_samples,
            "min_samples",
            Shadow::DEFAULT_MIN_SAMPLES,
        );
        // A window shorter than min_samples never holds enough samples: the monitor would never
        // fire, clear or promote, whichever of the two was left at its default.
        if let (Some(window), Some(min)) = (window, min_samples)
            && min > window
        {
            match (&raw.min_samples, &raw.window) {
                (Some(value), _) => self.issue_at(
                    value.span().start,
                    &format!("{key}.min_samples"),
                    &format!("is more than the window ({window}); the monitor could never judge"),
                ),
                (None, Some(value)) => self.issue_at(
                    value.span().start,
                    &format!("{key}.window"),
                    &format!(
                        "is under min_samples ({min}, its default): the monitor could never judge; make the window at least {min}, or set min_samples to at most {window}"
                    ),
                ),
                (None, None) => {}
            }
        }
        let daily_budget_usd = match &raw.daily_budget_usd {
            Some(value) if !value.get_ref().is_finite() || *value.get_ref() < 0.0 => {
                self.issue_at(
                    value.span().start,
                    &format!("{key}.daily_budget_usd"),
                    "must be a number of dollars, 0 or more",
                );
                None
            }
            Some(value) => Some(*value.get_ref()),
            None => Some(Shadow::DEFAULT_DAILY_BUDGET_USD),
        };
        let reference = reference?;
        let candidate = chain.first()?.tier.clone();
        if Arc::ptr_eq(&candidate, &reference) {
            self.issue_at(
                raw.reference.span().start,
                &format!("{key}.reference"),
                &format!(
                    "{:?} is the route's primary tier; the reference must be another tier (usually the API the primary stands in for)",
                    reference.name
                ),
            );
            return None;
        }
        Some(Shadow {
            candidate,
            reference,
            sample_rate: sample_rate?,
            min_agreement: min_agreement?,
            scorer: scorer?,
            concurrency: concurrency?,
            daily_budget_usd: daily_budget_usd?,
            window: window?,
            min_samples: min_samples?,
            on_drift: raw.on_drift.unwrap_or_default(),
            on_proof: raw.on_proof.unwrap_or_default(),
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
                // Anthropic's API has no embeddings: such a tier could only ever be passed over,
                // which a route built for embeddings should hear of now, not from every request.
                if *raw.kind.get_ref() == TaskKind::Embedding && tier.provider.api == Api::Anthropic
                {
                    self.issue_at(
                        tier_name.span().start,
                        &tier_key,
                        &format!(
                            "tier {:?} is on provider {:?}, which speaks Anthropic's Messages API, and Anthropic serves no embeddings; list tiers on OpenAI-compatible or Azure providers in an embedding route",
                            tier.name, tier.provider.name
                        ),
                    );
                    continue;
                }
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
            // Kept in its configured case: a client expecting `SPAM` must get `SPAM`, never a
            // rewrite to `spam` (issue 31.10).
            let trimmed = label.get_ref().trim();
            if trimmed.is_empty() {
                self.issue_at(label.span().start, &key, "a label may not be empty");
            } else if out
                .iter()
                .any(|known| known.to_lowercase() == trimmed.to_lowercase())
            {
                self.issue_at(
                    label.span().start,
                    &key,
                    &format!(
                        "label {:?} is listed twice (labels compare case-insensitively)",
                        label.get_ref()
                    ),
                );
            } else {
                out.push(trimmed.to_string());
            }
        }
        Some(out)
    }

    fn prompt(&mut self, path: &Text, key: &str, labels: Option<&[String]>) -> Option<String> {
        let relative = self.string(path, key)?;
        let full = self.base_dir.join(&relative);
        let read = std::fs::read_to_string(&full);
        if let Ok(prompt) = &read {
            self.read.push((full.clone(), prompt.clone().into_bytes()));
        }
        match read {
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
