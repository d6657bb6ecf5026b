//! The wire formats providers speak, behind one seam. A provider's `api` picks its [`Wire`], which
//! owns everything that differs between formats: the URL and the headers that carry the key, how
//! the gateway's request (OpenAI's chat completion, as the client sent it with the tier's changes)
//! is written for the upstream, how its whole answer is read back, and what its error statuses
//! mean. The chain, the relay, the ledger and the quality checks see only what this module hands
//! back, so they name no format.
//!
//! OpenAI's format is the gateway's own: an OpenAI-compatible provider is passed through byte for
//! byte, and its arms below do no work beyond what the gateway did before the seam existed.

mod openai;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use super::UpstreamError;
use crate::config::{Api, Provider};
use crate::openai::{Endpoint, Usage};

/// How one provider is spoken to.
pub(super) enum Wire {
    OpenAi,
}

impl Wire {
    pub(super) fn new(provider: &Provider) -> Wire {
        match provider.api {
            Api::OpenAi => Wire::OpenAi,
        }
    }

    /// The headers every call carries: the provider's key in the header its format reads.
    pub(super) fn headers(&self, provider: &Provider) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Wire::OpenAi => openai::headers(provider),
        }
    }

    /// The URL of each endpoint, in [`Endpoint::ALL`] order, resolved once per provider.
    pub(super) fn urls(&self, provider: &Provider) -> Result<Vec<Uri>, UpstreamError> {
        match self {
            Wire::OpenAi => openai::urls(provider),
        }
    }

    /// The body to send for `endpoint`, from the gateway's own (OpenAI's) request body.
    pub(super) fn encode(
        &self,
        _endpoint: Endpoint,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, UpstreamError> {
        match self {
            Wire::OpenAi => Ok(body),
        }
    }

    /// A successful whole answer as the gateway's own (OpenAI's) body, and its usage.
    pub(super) fn answer(&self, body: Bytes) -> Result<(Bytes, Option<Usage>), UpstreamError> {
        match self {
            Wire::OpenAi => openai::answer(body),
        }
    }

    /// What an answer with a status other than 2xx means.
    pub(super) fn refusal(
        &self,
        status: StatusCode,
        body: Bytes,
        headers: &HeaderMap,
    ) -> UpstreamError {
        match self {
            Wire::OpenAi => openai::refusal(status, body, headers),
        }
    }
}
