//! OpenAI's format, which is the gateway's own: the key as a Bearer token, the endpoints under the
//! base URL, the request and the answer passed through as they are.

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use super::super::{UpstreamError, retry_after, uri};
use crate::config::Provider;
use crate::openai::{Endpoint, Usage};

pub(super) fn headers(provider: &Provider) -> Vec<(HeaderName, HeaderValue)> {
    provider
        .api_key
        .iter()
        .map(|key| (AUTHORIZATION, bearer(key.expose())))
        .collect()
}

/// `Bearer <key>`, marked sensitive so that no debug output shows it.
pub(super) fn bearer(key: &str) -> HeaderValue {
    let mut value = HeaderValue::try_from(format!("Bearer {key}"))
        .expect("configuration admits only header-safe keys");
    value.set_sensitive(true);
    value
}

pub(super) fn urls(provider: &Provider) -> Result<Vec<Uri>, UpstreamError> {
    Endpoint::ALL
        .iter()
        .map(|endpoint| uri(&provider.base_url, endpoint.path()))
        .collect()
}

/// Checks that a successful body is a JSON object and reads its usage. A local server that answers
/// 200 with a half-written body is a failure of that tier, not an answer; an unreadable usage block
/// is not (its tokens are counted instead).
pub(super) fn answer(body: Bytes) -> Result<(Bytes, Option<Usage>), UpstreamError> {
    let usage = Usage::of_answer(&body)
        .map_err(|err| UpstreamError::malformed(format!("answer is not valid JSON: {err}")))?;
    Ok((body, usage))
}

pub(super) fn refusal(status: StatusCode, body: Bytes, headers: &HeaderMap) -> UpstreamError {
    UpstreamError::status(status, body, retry_after(headers))
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Any bytes as an answer body: an error or a reading of its usage, never a panic.
        #[test]
        fn answer_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = super::answer(bytes::Bytes::from(body));
        }
    }
}
