//! Where a call the gateway makes itself ends — a shadow check's call, an eval line's, a judge's
//! grading — in the shape every request's end has: an [`Outcome`] whose row is built here, from
//! the same parts as a client request's ([`RequestRow::new`], the tokens and cost set by the same
//! function), apart from product traffic by its `purpose`. A shadow check's outcome goes through
//! [`super::Outcomes::record`] to the same consumers and the same queue as a request's; eval's are
//! recorded the same way by `tierwise eval`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Outcome, set_tokens};
use crate::config::Tier;
use crate::ledger::{Picodollars, Pricing, Purpose, RequestRow, Tokens};
use crate::openai::Endpoint;
use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// One call the gateway makes itself, between its start and its end: a whole chat completion of a
/// route on one tier, made to judge `candidate`.
pub struct OwnCall {
    row: RequestRow,
    tier: Arc<Tier>,
    started: Instant,
    /// How long the upstream took, once it answered: counting its tokens afterwards is not the
    /// call's latency.
    latency_us: Option<i64>,
}

impl OwnCall {
    /// A call of `route` on `tier`, starting now.
    pub fn begin(route: &str, tier: &Arc<Tier>, purpose: Purpose, candidate: &str) -> OwnCall {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut row = RequestRow::new(
            uuid::Uuid::now_v7().to_string(),
            ts_ms,
            Cow::Borrowed(Endpoint::ChatCompletions.spec().ledger_name),
        );
        row.route = Some(route.to_string());
        row.tier = Some(tier.name.clone());
        row.provider = Some(tier.provider.name.clone());
        row.model = Some(tier.model.clone());
        row.local = tier.is_local();
        row.purpose = purpose;
        row.candidate = Some(candidate.to_string());
        OwnCall {
            row,
            tier: tier.clone(),
            started: Instant::now(),
            latency_us: None,
        }
    }

    /// The client request this call checks (a shadow check's sample).
    pub fn checking(mut self, request_id: &str) -> OwnCall {
        self.row.sample_of = Some(request_id.to_string());
        self
    }

    /// The endpoint the call is made on, where it is not chat completions (a shadow check calls
    /// the endpoint of the request it checks).
    pub fn on(mut self, endpoint: Endpoint) -> OwnCall {
        self.row.endpoint = Cow::Borrowed(endpoint.spec().ledger_name);
        self
    }

    /// The upstream has replied: the call's latency ends here.
    pub fn replied(&mut self) {
        self.latency_us
            .get_or_insert(self.started.elapsed().as_micros() as i64);
    }

    /// The tier answered, with `tokens` where they are known (eval keeps no estimate), priced on
    /// the tier alone: the gateway's own calls have no baseline to be compared with.
    pub fn answered(mut self, pricing: &Pricing, tokens: Option<&Tokens>) -> Outcome {
        if let Some(tokens) = tokens {
            let priced = pricing.price(&self.tier, None, tokens);
            set_tokens(&mut self.row, *tokens, priced);
        }
        self.end()
    }

    /// The call failed: the status the upstream gave (502 where it gave none), why, and no cost.
    pub fn failed(mut self, error: &UpstreamError) -> Outcome {
        self.row.status = match error.kind {
            UpstreamErrorKind::Status(status) => status.as_u16(),
            _ => 502,
        };
        self.row.error_kind = Some(error.reason());
        self.row.cost_pusd = Some(Picodollars(0));
        self.end()
    }

    fn end(mut self) -> Outcome {
        self.replied();
        let latency_us = self.latency_us.unwrap_or_default();
        self.row.latency_us = latency_us;
        self.row.ttfb_us = Some(latency_us);
        Outcome {
            request: self.row,
            attempts: Vec::new(),
            to_count: None,
            upstream_us: None,
            hold: Default::default(),
        }
    }
}
