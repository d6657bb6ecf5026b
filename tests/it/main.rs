//! The integration suite, one binary: the real gateway started in-process on a free port against
//! the fake upstreams of `tests/support`, the CLI run as a user would, configurations built from
//! typed values ([`util::TestConfig`]).

mod breaker;
mod budgets;
mod cache;
mod cli;
mod config;
mod context;
mod count_tokens;
mod dashboard;
mod docs;
mod egress;
mod fallback;
mod faults;
mod feedback;
mod hostile;
mod ledger;
mod limits;
mod llama;
mod messages;
mod metrics;
mod proof;
mod providers;
mod proxy;
mod quality;
mod rate_limits;
mod reload;
mod replicas;
mod responses;
mod scoring;
mod servers;
mod serving;
mod shadow_budget;
mod shared_limits;
mod soak;
mod spool;
mod tls;
mod traces;
mod util;
