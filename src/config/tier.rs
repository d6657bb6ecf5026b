//! `[tiers]`: a provider plus a model plus the defaults a tier adds to requests, and its timeouts
//! (the provider's, with the tier's overrides).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Api;
use super::file::{RawTier, Text};
use super::known::{Abilities, known_model};
use super::provider::{Provider, Timeouts};
use super::resolver::Resolver;

#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub provider: Arc<Provider>,
    pub model: String,
    /// Azure OpenAI's deployment that serves the model; `None` on any other provider.
    pub deployment: Option<String>,
    /// The model the tier is priced as and known by, where `model` names something else.
    pub base_model: Option<String>,
    /// Sent where the client gave neither `max_tokens` nor `max_completion_tokens`.
    pub max_tokens: Option<u32>,
    /// Sent where the client gave no `temperature`.
    pub temperature: Option<f64>,
    /// The model's context window, where configured or built in (OpenAI's models); the gateway
    /// also discovers it from a local server and learns it from a server that refuses a request
    /// as too long (see [`crate::health::Health::context_limit`]).
    pub context_tokens: Option<u32>,
    /// What the model can do beyond plain chat; a request that needs what it lacks skips it.
    pub abilities: Abilities,
    /// The provider's timeouts with this tier's overrides applied.
    pub timeouts: Timeouts,
}

impl Tier {
    /// The model its calls are priced as and its built-in facts are read for: its `base_model`,
    /// else its `model`; never an Azure deployment's name.
    pub fn priced_as(&self) -> &str {
        self.base_model.as_deref().unwrap_or(&self.model)
    }

    /// A tier is local when its provider is paid for as a fixed monthly cost rather than per token.
    pub fn is_local(&self) -> bool {
        self.provider.fixed_monthly_usd.is_some()
    }
}

impl Resolver<'_> {
    /// An Azure tier's deployment, which it must name; refused on any other provider.
    fn deployment(&mut self, raw: &RawTier, provider: &Provider, key: &str) -> Option<String> {
        let key = format!("{key}.deployment");
        match (&raw.deployment, provider.api) {
            (None, Api::Azure) => {
                self.issue_at(
                    raw.provider.span().start,
                    &key,
                    &format!(
                        "is required: provider {} is Azure OpenAI, which serves a model through a deployment; name the deployment, e.g. deployment = \"gpt-4o-prod\"",
                        provider.name
                    ),
                );
                None
            }
            (None, _) => None,
            (Some(text), Api::Azure) => {
                let name = self.string(text, &key)?;
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !valid {
                    self.issue_at(
                        text.span().start,
                        &key,
                        "must be a deployment name: letters, digits, '-', '_' and '.'",
                    );
                    return None;
                }
                Some(name)
            }
            (Some(text), _) => {
                self.issue_at(
                    text.span().start,
                    &key,
                    &format!(
                        "is only for a tier on an Azure OpenAI provider (api = \"azure\"); provider {} is not one",
                        provider.name
                    ),
                );
                None
            }
        }
    }

    pub(super) fn tiers(
        &mut self,
        raw: &BTreeMap<Text, RawTier>,
        providers: &BTreeMap<String, Arc<Provider>>,
    ) -> BTreeMap<String, Arc<Tier>> {
        let mut tiers = BTreeMap::new();
        for (name, tier) in raw {
            match self.tier(name, tier, providers) {
                Some(resolved) => {
                    tiers.insert(name.get_ref().clone(), Arc::new(resolved));
                }
                None => self.defined_but_invalid("tier", name.get_ref()),
            }
        }
        tiers
    }

    fn tier(
        &mut self,
        name: &Text,
        raw: &RawTier,
        providers: &BTreeMap<String, Arc<Provider>>,
    ) -> Option<Tier> {
        let key = format!("tiers.{}", name.get_ref());
        let provider = self.lookup(
            providers,
            &raw.provider,
            &format!("{key}.provider"),
            "provider",
        );
        let model = self.string(&raw.model, &format!("{key}.model"));
        if let Some(temperature) = &raw.temperature
            && !(0.0..=2.0).contains(temperature.get_ref())
        {
            self.issue_at(
                temperature.span().start,
                &format!("{key}.temperature"),
                "must be between 0 and 2",
            );
        }
        if let Some(context) = &raw.context_tokens
            && *context.get_ref() == 0
        {
            self.issue_at(
                context.span().start,
                &format!("{key}.context_tokens"),
                "must be a positive number of tokens",
            );
        }
        if raw.timeout.connect_ms.is_some() {
            self.issue_at(
                raw.provider.span().start,
                &format!("{key}.timeout.connect_ms"),
                "is set per provider, which owns the connection pool; move it to [providers.NAME] timeout",
            );
        }
        self.timeouts_may_pass(&raw.timeout, &key);
        let base_model = raw
            .base_model
            .as_ref()
            .and_then(|text| self.string(text, &format!("{key}.base_model")));
        let provider = provider?;
        let deployment = self.deployment(raw, &provider, &key);
        let model = model?;
        // What the config leaves unsaid about a known model, its built-in facts say.
        let known = known_model(base_model.as_deref().unwrap_or(&model));
        let can = known.map_or(Abilities::ALL, |known| known.abilities);
        Some(Tier {
            name: name.get_ref().clone(),
            timeouts: provider.timeouts.with(&raw.timeout),
            provider,
            deployment,
            base_model,
            max_tokens: raw.max_tokens,
            temperature: raw.temperature.as_ref().map(|t| *t.get_ref()),
            context_tokens: raw
                .context_tokens
                .as_ref()
                .map(|c| *c.get_ref())
                .or(known.map(|k| k.context_tokens)),
            abilities: Abilities {
                tools: raw.tools.unwrap_or(can.tools),
                json_schema: raw.json_schema.unwrap_or(can.json_schema),
                vision: raw.vision.unwrap_or(can.vision),
            },
            model,
        })
    }
}
