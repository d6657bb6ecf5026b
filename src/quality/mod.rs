//! Knowing when a cheaper tier is good enough. [`score`] holds the scorers that say how far a
//! candidate tier's answer agrees with the reference tier's; [`monitor`] turns scored samples into
//! agreement with a confidence interval, and into alerts that fire and clear once per episode. The
//! shadow checks and `tierwise eval` that feed them build on both (issue 11).

pub mod monitor;
pub mod score;
