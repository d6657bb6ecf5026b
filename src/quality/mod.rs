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
