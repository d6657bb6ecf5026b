//! Knowing when a cheaper tier is good enough. [`score`] holds the scorers that say how far a
//! candidate tier's answer agrees with the reference tier's; the shadow checks, the quality monitor
//! and `tierwise eval` that feed them answers build on it (issue 11).

pub mod score;
