//! What of the limits a reload keeps: each key's and route's counts by its name (a key's by the
//! name it is given in `[keys.<name>]`, whatever its secret), while its limit is the same — a
//! limit changed starts a new count, as the old one counted against another figure — and the
//! budgets and the shared store whole. A reload that changes a budget or `limits.store` is told it
//! needs a restart for that ([`crate::server`]'s reload names it).

use super::{Counter, Limits, Scope};
use crate::config::Config;

impl Limits {
    /// The limits of `config`, keeping this one's counts, budgets and store.
    pub fn carried_over(&self, config: &Config) -> Limits {
        let mut next = Limits::counting(config, self.shared.clone(), self.budgets.clone());
        for scope in next.keys.values_mut() {
            if let Some(old) = self.keys.values().find(|old| old.name == scope.name) {
                keep(scope, old);
            }
        }
        for (name, scope) in &mut next.routes {
            if let Some(old) = self.routes.get(name) {
                keep(scope, old);
            }
        }
        next
    }
}

fn keep(scope: &mut Scope, old: &Scope) {
    let same = |new: &Option<Counter>, old: &Option<Counter>| match (new, old) {
        (Some(new), Some(old)) if new.window.limit() == old.window.limit() => Some(old.clone()),
        _ => None,
    };
    if let Some(kept) = same(&scope.requests, &old.requests) {
        scope.requests = Some(kept);
    }
    if let Some(kept) = same(&scope.tokens, &old.tokens) {
        scope.tokens = Some(kept);
    }
    if let Some(kept) = same(&scope.counts, &old.counts) {
        scope.counts = Some(kept);
    }
}
