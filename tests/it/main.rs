//! The integration suite, one binary: the real gateway started in-process on a free port against
//! the fake upstreams of `tests/support`, the CLI run as a user would, configurations built from
//! typed values ([`util::TestConfig`]).

mod cli;
mod config;
mod dashboard;
mod egress;
mod fallback;
mod faults;
mod feedback;
mod hostile;
mod ledger;
mod metrics;
mod proof;
mod proxy;
mod quality;
mod scoring;
mod shadow_budget;
mod soak;
mod util;
