//! Knowing when a cheaper tier is good enough. [`score`] holds the scorers that say how far a
//! candidate tier's answer agrees with the reference tier's; [`monitor`] turns scored samples into
//! agreement with a confidence interval, and into alerts that fire and clear once per episode;
//! [`eval`] runs a dataset through two tiers and scores them. The shadow checks that will feed the
//! monitor from live traffic build on these (issue 11).

pub mod eval;
pub mod monitor;
pub mod score;
