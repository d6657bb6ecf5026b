//! Knowing when a cheaper tier is good enough. [`score`] holds the scorers that say how far a
//! candidate tier's answer agrees with the reference tier's ([`judge`]: the reference grades it); [`monitor`] turns scored samples into
//! agreement with a confidence interval, and into alerts that fire and clear once per episode;
//! [`watch`] keeps each shadowed route's state (sampling, budget, demotion) as the ledger has it;
//! [`shadow`] checks sampled live requests against the other tier in the background; [`alert`]
//! announces what changes; [`feedback`] takes the application's ground truth; [`eval`] runs a dataset through two tiers and scores them.

pub mod alert;
pub mod eval;
pub mod feedback;
pub mod judge;
pub mod monitor;
pub mod score;
pub mod shadow;
pub mod watch;

use std::borrow::Cow;

use crate::config::Tier;
use crate::ledger::{Picodollars, Priced, Purpose, RequestRow, Tokens};
use crate::openai::Endpoint;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// The ledger row of a call the gateway made to check quality: a chat completion of `route` on
/// `tier`, apart from product traffic by its `purpose`, judging `candidate`.
pub(crate) fn check_row(
    route: &str,
    tier: &Tier,
    purpose: Purpose,
    candidate: &str,
    ts_ms: i64,
    latency_us: i64,
) -> RequestRow {
    let mut row = RequestRow::new(
        uuid::Uuid::now_v7().to_string(),
        ts_ms,
        Cow::Borrowed(Endpoint::ChatCompletions.spec().ledger_name),
    );
    row.latency_us = latency_us;
    row.ttfb_us = Some(latency_us);
    row.route = Some(route.to_string());
    row.tier = Some(tier.name.clone());
    row.provider = Some(tier.provider.name.clone());
    row.model = Some(tier.model.clone());
    row.local = tier.is_local();
    row.purpose = purpose;
    row.candidate = Some(candidate.to_string());
    row
}

/// A check's answered call: its tokens and what they cost.
pub(crate) fn set_answered(row: &mut RequestRow, tokens: &Tokens, priced: &Priced) {
    row.tokens_in = tokens.input;
    row.tokens_cached = tokens.cached;
    row.tokens_cache_write = tokens.cache_write;
    row.tokens_out = tokens.output;
    row.tokens_estimated = tokens.estimated;
    row.cost_pusd = priced.cost;
}

/// A check's call that failed: the status the upstream gave (502 where it gave none), why, and
/// no cost.
pub(crate) fn set_failed(row: &mut RequestRow, error: &UpstreamError) {
    row.status = match error.kind {
        UpstreamErrorKind::Status(status) => status.as_u16(),
        _ => 502,
    };
    row.error_kind = Some(error.reason());
    row.cost_pusd = Some(Picodollars(0));
}
