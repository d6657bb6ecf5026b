//! From the `model` a client names to the chain of tiers that serves it. A name is a route
//! (`classification`), a tier (`local`) or a concrete model id some tier serves (`gpt-4o`); the table
//! is built once from the configuration, so resolving a request is one hash lookup.

pub mod chain;
pub mod contract;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ChainTier, Config, Route};

/// What a `model` value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Route,
    Tier,
    Model,
}

#[derive(Debug)]
pub struct Target {
    pub kind: TargetKind,
    /// Set when `model` named a route: its prompts and output contract apply.
    pub route: Option<Arc<Route>>,
    pub chain: Vec<ChainTier>,
}

/// A request's target and the route its cost is attributed to.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    pub target: &'a Target,
    /// The route named by `model`, or else by the `x-tierwise-route` header.
    pub route: Option<&'a Arc<Route>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error(
        "The model '{model}' does not exist on this gateway. Use a route ({routes}), a tier ({tiers}) or a model id a tier serves ({models})."
    )]
    UnknownModel {
        model: String,
        routes: String,
        tiers: String,
        models: String,
    },
    #[error("The x-tierwise-route header names '{0}', which is not a route. Routes: {1}.")]
    UnknownRoute(String, String),
}

pub struct RouteTable {
    targets: HashMap<String, Target>,
    routes: HashMap<String, Arc<Route>>,
    /// Every name a client may use, in the order `/v1/models` lists them.
    listing: Vec<(String, TargetKind)>,
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut targets = HashMap::new();
        let mut listing = Vec::new();
        for route in &config.routes {
            targets.insert(
                route.name.clone(),
                Target {
                    kind: TargetKind::Route,
                    route: Some(route.clone()),
                    chain: route.chain.clone(),
                },
            );
            listing.push((route.name.clone(), TargetKind::Route));
        }
        for tier in &config.tiers {
            targets.insert(
                tier.name.clone(),
                Target {
                    kind: TargetKind::Tier,
                    route: None,
                    chain: vec![ChainTier {
                        tier: tier.clone(),
                        system_prompt: None,
                    }],
                },
            );
            listing.push((tier.name.clone(), TargetKind::Tier));
        }
        // A model id served by several tiers falls back across them in tier-name order; a route
        // or tier of the same name keeps its own meaning.
        for tier in &config.tiers {
            if matches!(targets.get(&tier.model), Some(t) if t.kind != TargetKind::Model) {
                continue;
            }
            let target = targets.entry(tier.model.clone()).or_insert_with(|| {
                listing.push((tier.model.clone(), TargetKind::Model));
                Target {
                    kind: TargetKind::Model,
                    route: None,
                    chain: Vec::new(),
                }
            });
            target.chain.push(ChainTier {
                tier: tier.clone(),
                system_prompt: None,
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|route| (route.name.clone(), route.clone()))
            .collect();
        RouteTable {
            targets,
            routes,
            listing,
        }
    }

    pub fn resolve(
        &self,
        model: &str,
        route_header: Option<&str>,
    ) -> Result<Resolved<'_>, ResolveError> {
        let Some(target) = self.targets.get(model) else {
            return Err(self.unknown_model(model));
        };
        let route = match (&target.route, route_header) {
            (Some(route), _) => Some(route),
            (None, Some(name)) => Some(self.routes.get(name).ok_or_else(|| {
                ResolveError::UnknownRoute(
                    name.chars().take(200).collect(),
                    self.names(TargetKind::Route),
                )
            })?),
            (None, None) => None,
        };
        Ok(Resolved { target, route })
    }

    /// Every name a client may put in `model`, with what it names.
    pub fn listing(&self) -> &[(String, TargetKind)] {
        &self.listing
    }

    /// What `model` names, or the error a request naming it would get.
    pub fn kind_of(&self, model: &str) -> Result<TargetKind, ResolveError> {
        self.targets
            .get(model)
            .map(|target| target.kind)
            .ok_or_else(|| self.unknown_model(model))
    }

    fn names(&self, kind: TargetKind) -> String {
        let names: Vec<&str> = self
            .listing
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(name, _)| name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    fn unknown_model(&self, model: &str) -> ResolveError {
        ResolveError::UnknownModel {
            model: model.chars().take(200).collect(),
            routes: self.names(TargetKind::Route),
            tiers: self.names(TargetKind::Tier),
            models: self.names(TargetKind::Model),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn table() -> RouteTable {
        let config = Config::parse(
            include_str!("../../examples/tierwise.toml"),
            std::path::Path::new("examples/tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        RouteTable::new(&config)
    }

    proptest! {
        /// Any `model` and `x-tierwise-route` a client sends: resolved, or an error that quotes
        /// no more than 200 characters of what was sent.
        #[test]
        fn any_model_and_route_header_resolve_or_are_refused(
            model in prop_oneof![Just("classification".to_string()), Just("gpt-4o".to_string()), ".{0,300}"],
            header in proptest::option::of(prop_oneof![Just("summarize".to_string()), ".{0,300}"]),
        ) {
            let table = table();
            match table.resolve(&model, header.as_deref()) {
                Ok(resolved) => prop_assert!(table.kind_of(&model).is_ok(), "{:?}", resolved.route.map(|r| &r.name)),
                Err(err) => {
                    prop_assert!(table.kind_of(&model).is_err() || header.is_some());
                    let quoted = err.to_string();
                    prop_assert!(quoted.chars().count() < 200 + 1000, "{quoted}");
                }
            }
        }
    }
}
