//! The ledger's rows, each defined once: [`ledger_row!`] turns one struct definition into the
//! struct, its table's column list, its binds and its reader, so a column cannot be added to one
//! and forgotten in another; the request log line is the same struct through serde. A test checks
//! the column lists against the migrated tables.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Encode, Row, Type};

use super::price::Picodollars;

pub type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// How reports, the dashboard and the metrics name requests made without a route (a tier or
/// model id called without `x-tierwise-route`).
pub const NO_ROUTE: &str = "(no route)";

/// A row of a ledger table.
pub trait LedgerRow: Sized {
    const TABLE: &'static str;
    const COLUMNS: &'static [&'static str];
    fn bind<'q>(&'q self, query: AnyQuery<'q>) -> AnyQuery<'q>;
    fn read(row: &AnyRow) -> Result<Self, sqlx::Error>;
    /// The row as its column values in [`Self::COLUMNS`] order, for the spool file.
    fn to_json(&self) -> serde_json::Value;
    fn from_json(values: &[serde_json::Value]) -> Option<Self>;
}

macro_rules! ledger_row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $table:literal {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $crate::ledger::row::LedgerRow for $name {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn bind<'q>(
                &'q self,
                query: $crate::ledger::row::AnyQuery<'q>,
            ) -> $crate::ledger::row::AnyQuery<'q> {
                query $(.bind($crate::ledger::row::Column::db(&self.$field)))*
            }

            fn read(row: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
                Ok($name { $( $field: $crate::ledger::row::Column::read(row, stringify!($field))?, )* })
            }

            fn to_json(&self) -> serde_json::Value {
                serde_json::Value::Array(vec![$($crate::ledger::row::Column::to_json(&self.$field)),*])
            }

            fn from_json(values: &[serde_json::Value]) -> Option<Self> {
                let mut values = values.iter();
                let row = $name { $( $field: $crate::ledger::row::Column::from_json(values.next()?)?, )* };
                values.next().is_none().then_some(row)
            }
        }
    };
}

/// For the ledger's other tables' rows.
pub(crate) use ledger_row;

ledger_row! {
    /// One request: who asked, which tier answered, what it cost, how it ended. Serialized, it is
    /// the request log's line (`ledger.request_log`), which leaves out keys and content.
    #[derive(Debug, Clone, PartialEq, Serialize)]
    pub struct RequestRow in "requests" {
        #[serde(rename = "request_id")]
        pub id: String,
        pub ts_ms: i64,
        #[serde(skip)]
        pub endpoint: Cow<'static, str>,
        pub route: Option<String>,
        pub tier: Option<String>,
        #[serde(skip)]
        pub provider: Option<String>,
        pub model: Option<String>,
        pub status: u16,
        #[serde(skip)]
        pub error_kind: Option<String>,
        pub fallback: Option<String>,
        #[serde(skip)]
        pub stream: bool,
        pub tokens_in: u64,
        #[serde(skip)]
        pub tokens_cached: u64,
        pub tokens_out: u64,
        pub tokens_estimated: bool,
        #[serde(rename = "duration_ms", serialize_with = "micros_as_ms")]
        pub latency_us: i64,
        #[serde(skip)]
        pub ttfb_us: Option<i64>,
        /// `None` when the model has no known price: never a silent zero.
        #[serde(rename = "cost_usd", serialize_with = "usd")]
        pub cost_pusd: Option<Picodollars>,
        #[serde(skip)]
        pub baseline_pusd: Option<Picodollars>,
        #[serde(skip)]
        pub local: bool,
        /// The key's fingerprint (`key-…`), never the key.
        #[serde(skip)]
        pub client_key: Option<String>,
        #[serde(skip)]
        pub contract: Option<Cow<'static, str>>,
        /// The request body, kept only with `ledger.store_content = true`.
        #[serde(skip)]
        pub prompt: Option<String>,
        #[serde(skip)]
        pub answer: Option<String>,
        /// Product traffic, or a call the gateway made to check quality.
        #[serde(skip_serializing_if = "Purpose::is_product")]
        pub purpose: Purpose,
        /// A shadow call: the product request it checked.
        #[serde(skip)]
        pub sample_of: Option<String>,
        /// A scored shadow check: the tier whose answer was judged.
        #[serde(skip)]
        pub candidate: Option<String>,
        /// A scored shadow check: how far the candidate agreed with the reference, in parts per
        /// million (exact in any database, and summed without rounding).
        #[serde(skip)]
        pub agreement_ppm: Option<i64>,
        /// The name of the client's key (`keys.NAME`), never the key; `None` for a key of the bare
        /// `server.api_keys` list and on an open gateway.
        #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
        pub key_name: Option<String>,
        /// Input written to the provider's prompt cache (counted in `tokens_in`, as cache reads
        /// are), priced at its own price. Last, as the migration that added it put it.
        #[serde(skip)]
        pub tokens_cache_write: u64,
        /// The server of the provider that answered (`x-tierwise-provider`). Before the
        /// cache's avoided cost, as the migrations put them.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub server: Option<String>,
        /// A cache hit: what the call that filled the cache cost, which this request did not pay
        /// again ("saved by the cache", apart from routing's savings). Last, as its migration put it.
        #[serde(skip)]
        pub avoided_pusd: Option<Picodollars>,
    }
}

/// Why a call was made: for a client, or by the gateway to check a cheaper tier's quality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    #[default]
    Product,
    /// A shadow check of live traffic.
    Shadow,
    /// A call of `tierwise eval`.
    Eval,
    /// A request answered from the route's cache: no upstream call, cost 0, `avoided_pusd` what
    /// it would have cost again.
    CacheHit,
    /// A request whose client left while it waited on an identical request's answer (the
    /// cache's single flight): no upstream call, no answer, cost 0, status 499. Not product
    /// traffic: no route's call, nor its error.
    CacheWait,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Product => "product",
            Purpose::Shadow => "shadow",
            Purpose::Eval => "eval",
            Purpose::CacheHit => "cache_hit",
            Purpose::CacheWait => "cache_wait",
        }
    }

    fn is_product(&self) -> bool {
        *self == Purpose::Product
    }
}

impl RequestRow {
    /// A request as it starts: nothing answered, nothing counted or priced yet.
    pub fn new(id: String, ts_ms: i64, endpoint: Cow<'static, str>) -> RequestRow {
        RequestRow {
            id,
            ts_ms,
            endpoint,
            route: None,
            tier: None,
            provider: None,
            model: None,
            status: 200,
            error_kind: None,
            fallback: None,
            stream: false,
            tokens_in: 0,
            tokens_cached: 0,
            tokens_out: 0,
            tokens_estimated: false,
            latency_us: 0,
            ttfb_us: None,
            cost_pusd: None,
            baseline_pusd: None,
            local: false,
            client_key: None,
            contract: None,
            prompt: None,
            answer: None,
            purpose: Purpose::Product,
            sample_of: None,
            candidate: None,
            agreement_ppm: None,
            key_name: None,
            tokens_cache_write: 0,
            server: None,
            avoided_pusd: None,
        }
    }
}

ledger_row! {
    /// One attempt of a request that was not answered at its first try.
    #[derive(Debug, Clone, PartialEq)]
    pub struct AttemptRow in "attempts" {
        pub request_id: String,
        pub seq: i32,
        pub tier: String,
        pub provider: String,
        pub model: String,
        /// `ok`, or the failure reason (`connect_refused`, `http_503`, `breaker_open` …).
        pub outcome: String,
        pub latency_us: i64,
        /// The server called; `None` for a tier passed over without a call.
        pub server: Option<String>,
        /// Whether the server called answered (`ok`, or a refusal that is not its fault: a 4xx, a
        /// 429), as its servers table counts the call; `None` where no server was called.
        pub answered: Option<bool>,
    }
}

fn micros_as_ms<S: serde::Serializer>(us: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*us as f64 / 1000.0)
}

fn usd<S: serde::Serializer>(amount: &Option<Picodollars>, s: S) -> Result<S::Ok, S::Error> {
    match amount {
        Some(amount) => s.collect_str(amount),
        None => s.serialize_none(),
    }
}

/// How a Rust value is stored in a column that SQLite and PostgreSQL both have: flags as 0/1
/// integers, counts and money as BIGINT.
pub trait Column: Sized {
    type Db<'a>: Encode<'a, Any> + Type<Any> + 'a
    where
        Self: 'a;
    fn db(&self) -> Self::Db<'_>;
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error>;
    fn to_json(&self) -> serde_json::Value;
    fn from_json(value: &serde_json::Value) -> Option<Self>;
}

/// A column whose value is plain JSON through serde: the column types below that are not wrappers.
macro_rules! json_column {
    ($ty:ty) => {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
        fn from_json(value: &serde_json::Value) -> Option<Self> {
            <$ty>::deserialize(value).ok()
        }
    };
}

impl Column for String {
    json_column!(String);
    type Db<'a> = &'a str;
    fn db(&self) -> &str {
        self
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

impl Column for Option<String> {
    json_column!(Option<String>);
    type Db<'a> = Option<&'a str>;
    fn db(&self) -> Option<&str> {
        self.as_deref()
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

impl Column for Cow<'static, str> {
    json_column!(Cow<'static, str>);
    type Db<'a> = &'a str;
    fn db(&self) -> &str {
        self
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(Cow::Owned(row.try_get(name)?))
    }
}

impl Column for Option<Cow<'static, str>> {
    json_column!(Option<Cow<'static, str>>);
    type Db<'a> = Option<&'a str>;
    fn db(&self) -> Option<&str> {
        self.as_deref()
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<Option<String>, _>(name)?.map(Cow::Owned))
    }
}

impl Column for i64 {
    json_column!(i64);
    type Db<'a> = i64;
    fn db(&self) -> i64 {
        *self
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

impl Column for Option<i64> {
    json_column!(Option<i64>);
    type Db<'a> = Option<i64>;
    fn db(&self) -> Option<i64> {
        *self
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

impl Column for i32 {
    json_column!(i32);
    type Db<'a> = i32;
    fn db(&self) -> i32 {
        *self
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
}

impl Column for u16 {
    json_column!(u16);
    type Db<'a> = i32;
    fn db(&self) -> i32 {
        i32::from(*self)
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        let value: i32 = row.try_get(name)?;
        u16::try_from(value).map_err(|err| sqlx::Error::ColumnDecode {
            index: name.to_string(),
            source: Box::new(err),
        })
    }
}

impl Column for u64 {
    json_column!(u64);
    type Db<'a> = i64;
    fn db(&self) -> i64 {
        i64::try_from(*self).unwrap_or(i64::MAX)
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<i64, _>(name)?.max(0) as u64)
    }
}

impl Column for bool {
    json_column!(bool);
    type Db<'a> = i32;
    fn db(&self) -> i32 {
        i32::from(*self)
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<i32, _>(name)? != 0)
    }
}

impl Column for Option<bool> {
    json_column!(Option<bool>);
    type Db<'a> = Option<i32>;
    fn db(&self) -> Option<i32> {
        self.map(i32::from)
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<Option<i32>, _>(name)?.map(|flag| flag != 0))
    }
}

impl Column for Purpose {
    json_column!(Purpose);
    type Db<'a> = &'a str;
    fn db(&self) -> &str {
        self.as_str()
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        let text: String = row.try_get(name)?;
        Purpose::deserialize(serde_json::Value::String(text.clone())).map_err(|_| {
            sqlx::Error::ColumnDecode {
                index: name.to_string(),
                source: format!("unknown purpose {text:?}").into(),
            }
        })
    }
}

impl Column for Option<Picodollars> {
    fn to_json(&self) -> serde_json::Value {
        self.map_or(serde_json::Value::Null, |amount| amount.0.into())
    }
    fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::Null => Some(None),
            value => Some(Some(Picodollars(value.as_i64()?))),
        }
    }
    type Db<'a> = Option<i64>;
    fn db(&self) -> Option<i64> {
        self.map(|amount| amount.0)
    }
    fn read(row: &AnyRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(Picodollars))
    }
}
