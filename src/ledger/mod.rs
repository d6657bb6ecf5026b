//! The ledger: the durable record of every request and attempt — tokens, cost, baseline cost,
//! latency, outcome — and what budgets read back from it ([`budget`]: a month's spend, the
//! operators' corrections, the alerts announced). Its rows are defined once in [`row`]; prices and the one function that turns
//! tokens into a cost in [`price`]; token counts, and estimates where an upstream gave none, in
//! [`tokens`]; SQLite or PostgreSQL behind [`Store`], summed there for reports
//! ([`Summary`]); the responses kept for their next turn ([`responses`]); batches written by
//! [`LedgerWriter`], or kept
//! in the [`Spool`] while the database is away; the request path never waits for either (it hands
//! finished requests to [`crate::outcome`]).

pub mod budget;
pub mod price;
pub mod quality;
pub mod recent;
pub mod responses;
pub mod row;
mod spool;
pub mod store;
mod summary;
pub mod tokens;
mod writer;

pub use price::{Picodollars, Priced, Pricing};
pub use row::{AttemptRow, NO_ROUTE, Purpose, RequestRow};
pub use spool::{LedgerHealth, ReplayError, Spool};
pub use store::{LedgerError, ServerLoad, Store};
pub use summary::{Checks, Contracts, KeySums, LocalTokens, Moved, RouteSums, Summary};
pub use tokens::{Answer, Tokens, Uncounted};
pub use writer::{LedgerWriter, Refused};
