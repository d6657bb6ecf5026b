//! The wire formats providers speak, behind one seam. A provider's `api` picks its [`Wire`], which
//! owns everything that differs between formats: the URL and the headers that carry the key, how
//! the gateway's request (OpenAI's chat completion, as the client sent it with the tier's changes)
//! is written for the upstream, how its answer — whole, or a stream event by event — is read back
//! into the gateway's own model ([`model`]) and written in OpenAI's shapes, and what its error
//! statuses mean. The chain, the relay, the ledger and the quality checks see only what this module
//! hands back, so they name no format.
//!
//! OpenAI's format is the gateway's own: an OpenAI-compatible provider is passed through byte for
//! byte, its stream's events relayed as they came; Azure's too, but for its URL, its key header,
//! its error bodies and the prompt-filter chunk that opens its streams. The translation path costs
//! only the providers that need it.

mod anthropic;
mod azure;
mod model;
mod openai;

use std::collections::VecDeque;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use url::Url;

use super::{SseEvent, UpstreamError};
use crate::config::{Api, KeyHeader, Provider};
use crate::openai::{Endpoint, StreamTranslator, Usage};

/// How one provider is spoken to.
pub(super) enum Wire {
    OpenAi,
    Azure,
    Anthropic,
}

impl Wire {
    pub(super) fn new(provider: &Provider) -> Wire {
        match provider.api {
            Api::OpenAi => Wire::OpenAi,
            Api::Azure => Wire::Azure,
            Api::Anthropic => Wire::Anthropic,
        }
    }

    /// The headers every call carries: the provider's key in the header its format reads, and
    /// the format's version where it has one.
    pub(super) fn headers(&self, provider: &Provider) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Wire::OpenAi | Wire::Azure | Wire::Anthropic => key_headers(provider),
        }
    }

    /// The URL of each endpoint, in [`crate::openai::Endpoint::ALL`] order, resolved once per
    /// server; `None` for an endpoint the format does not serve. Azure's are per deployment
    /// ([`Wire::deployment_urls`]).
    pub(super) fn urls(
        &self,
        provider: &Provider,
        base: &Url,
    ) -> Result<Vec<Option<Uri>>, UpstreamError> {
        match self {
            Wire::OpenAi => openai::urls(provider, base),
            Wire::Azure => Ok(vec![None; crate::openai::Endpoint::ALL.len()]),
            Wire::Anthropic => anthropic::urls(base),
        }
    }

    /// Where the format counts a prompt's tokens without answering it, resolved once per server;
    /// `None` where it has no such endpoint.
    pub(super) fn count_url(&self, base: &Url) -> Result<Option<Uri>, UpstreamError> {
        match self {
            Wire::OpenAi | Wire::Azure => Ok(None),
            Wire::Anthropic => anthropic::count_url(base).map(Some),
        }
    }

    /// A request of the format's own endpoint as its prompt count takes it.
    pub(super) fn count_body(&self, body: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        match self {
            Wire::OpenAi | Wire::Azure => Ok(body.to_vec()),
            Wire::Anthropic => anthropic::count_body(body),
        }
    }

    /// The URL of each endpoint of one Azure deployment, in the same order.
    pub(super) fn deployment_urls(
        &self,
        provider: &Provider,
        base: &Url,
        deployment: &str,
    ) -> Result<Vec<Option<Uri>>, UpstreamError> {
        azure::urls(provider, base, deployment)
    }

    /// The body to send for `endpoint`, from the gateway's own request body: a chat completion
    /// translated where the format has its own, an endpoint of the format's own passed as it is.
    pub(super) fn encode(
        &self,
        endpoint: Endpoint,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, UpstreamError> {
        match self {
            Wire::OpenAi | Wire::Azure => Ok(body),
            Wire::Anthropic if anthropic::own(endpoint) => Ok(body),
            Wire::Anthropic => anthropic::encode(&body),
        }
    }

    /// A successful whole answer to `endpoint` as the gateway's own (OpenAI's) body, and its
    /// usage.
    pub(super) fn answer(
        &self,
        endpoint: Endpoint,
        body: Bytes,
    ) -> Result<(Bytes, Option<Usage>), UpstreamError> {
        match self {
            Wire::OpenAi | Wire::Azure => openai::answer(endpoint, body),
            Wire::Anthropic if anthropic::own(endpoint) => openai::answer(endpoint, body),
            Wire::Anthropic => {
                let answer = anthropic::decode_answer(&body)?;
                Ok((openai::write_answer(&answer, openai::now()), answer.usage))
            }
        }
    }

    /// How a stream's events for `endpoint` are read: `None` where they are relayed as they came.
    pub(super) fn events(&self, endpoint: Endpoint) -> Option<Box<EventReader>> {
        match self {
            Wire::OpenAi => None,
            Wire::Anthropic if anthropic::own(endpoint) => None,
            Wire::Azure => Some(Box::new(EventReader {
                reader: Reader::Azure,
                translated: VecDeque::new(),
                endpoint: None,
            })),
            Wire::Anthropic => Some(Box::new(EventReader {
                reader: Reader::Anthropic {
                    events: Box::default(),
                    writer: openai::ChunkWriter::new(),
                    pieces: Vec::new(),
                },
                translated: VecDeque::new(),
                endpoint: None,
            })),
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
            Wire::Azure => azure::refusal(status, body, headers),
            Wire::Anthropic => anthropic::refusal(status, body, headers),
        }
    }
}

/// The provider's key in the header its `auth` names (the format's own unless it says otherwise),
/// marked sensitive so that no debug output shows it; and the format's version header, where it
/// has one.
fn key_headers(provider: &Provider) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(2);
    if let Some(key) = &provider.api_key {
        let name = match provider.auth {
            KeyHeader::Bearer => AUTHORIZATION,
            KeyHeader::XApiKey => HeaderName::from_static("x-api-key"),
            KeyHeader::ApiKey => HeaderName::from_static("api-key"),
        };
        let value = if name == AUTHORIZATION {
            openai::bearer(key.expose())
        } else {
            let mut value = HeaderValue::try_from(key.expose())
                .expect("configuration admits only header-safe keys");
            value.set_sensitive(true);
            value
        };
        headers.push((name, value));
    }
    if provider.api == Api::Anthropic
        && let Some(version) = &provider.api_version
    {
        headers.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::try_from(version.as_str())
                .expect("configuration admits only header-safe versions"),
        ));
    }
    headers
}

/// Turns a translated stream's events into the OpenAI chunks the relay reads and the client gets,
/// and those chunks, where the client asked another endpoint served through chat, into that
/// endpoint's events.
pub(super) struct EventReader {
    reader: Reader,
    /// Translated events not yet handed over (one upstream event may become several).
    translated: VecDeque<SseEvent>,
    /// Writes the chat chunks as the client's endpoint's events.
    endpoint: Option<Endpointed>,
}

struct Endpointed {
    translator: Box<dyn StreamTranslator>,
    /// Chat chunks read, not yet written as the endpoint's events.
    chunks: VecDeque<SseEvent>,
    /// The endpoint's events of one chunk, kept to spare an allocation per chunk.
    written: Vec<(&'static str, String)>,
}

enum Reader {
    /// Chat chunks as they came (an OpenAI-compatible server's, for a translated endpoint).
    AsCame,
    /// Azure's events pass as they came, but for its prompt-filter chunk.
    Azure,
    Anthropic {
        events: Box<anthropic::Events>,
        writer: openai::ChunkWriter,
        /// The pieces of the event being read, kept to spare an allocation per event.
        pieces: Vec<model::Delta>,
    },
}

impl EventReader {
    /// The reader of a stream: the wire's (`None` where its events pass as they came), then the
    /// endpoint's translator where the endpoint is served through chat.
    pub(super) fn of(
        wire: Option<Box<EventReader>>,
        translator: Option<Box<dyn StreamTranslator>>,
    ) -> Option<Box<EventReader>> {
        let Some(translator) = translator else {
            return wire;
        };
        let mut reader = wire.unwrap_or_else(|| {
            Box::new(EventReader {
                reader: Reader::AsCame,
                translated: VecDeque::new(),
                endpoint: None,
            })
        });
        reader.endpoint = Some(Endpointed {
            translator,
            chunks: VecDeque::new(),
            written: Vec::new(),
        });
        Some(reader)
    }

    /// The next translated event not yet handed over.
    pub(super) fn next(&mut self) -> Option<SseEvent> {
        self.translated.pop_front()
    }

    /// The upstream closed its stream: the closing events a translator still owes, if any.
    pub(super) fn close(&mut self) -> Result<(), UpstreamError> {
        if let Some(endpoint) = &mut self.endpoint {
            endpoint
                .translator
                .close(&mut endpoint.written)
                .map_err(UpstreamError::stream_broken)?;
            self.translated.extend(
                endpoint
                    .written
                    .drain(..)
                    .map(|(name, data)| named(name, data)),
            );
        }
        Ok(())
    }

    /// What the translated stream has said of its usage so far (`None` where it passes usage on
    /// in its own chunks).
    pub(super) fn usage_so_far(&self) -> Option<super::UsageSoFar> {
        // The chat stream's own usage, read by the translator (the endpoint's events carry the
        // gateway's estimates where the upstream gave none).
        if let Some(usage) = self
            .endpoint
            .as_ref()
            .and_then(|endpoint| endpoint.translator.usage())
        {
            return Some(super::UsageSoFar::Whole(usage));
        }
        match &self.reader {
            Reader::AsCame | Reader::Azure => None,
            Reader::Anthropic { events, .. } => events.usage_so_far(),
        }
    }

    /// Whether the client's endpoint's events are written by the gateway from chat chunks.
    pub(super) fn translated(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Reads one upstream event into the events it becomes, handed over by [`EventReader::next`].
    pub(super) fn read(&mut self, event: SseEvent) -> Result<(), UpstreamError> {
        if event.keep_alive {
            self.translated.push_back(event);
            return Ok(());
        }
        let Some(endpoint) = &mut self.endpoint else {
            return Self::read_wire(&mut self.reader, event, &mut self.translated);
        };
        Self::read_wire(&mut self.reader, event, &mut endpoint.chunks)?;
        while let Some(chunk) = endpoint.chunks.pop_front() {
            if chunk.keep_alive {
                self.translated.push_back(chunk);
                continue;
            }
            endpoint
                .translator
                .read(&chunk.data, &mut endpoint.written)
                .map_err(UpstreamError::stream_broken)?;
            self.translated.extend(
                endpoint
                    .written
                    .drain(..)
                    .map(|(name, data)| named(name, data)),
            );
        }
        Ok(())
    }

    /// Reads one upstream event into the chat chunks it becomes.
    fn read_wire(
        reader: &mut Reader,
        event: SseEvent,
        out: &mut VecDeque<SseEvent>,
    ) -> Result<(), UpstreamError> {
        match reader {
            Reader::AsCame => out.push_back(event),
            Reader::Azure => {
                if !azure::is_prompt_filter_chunk(&event) {
                    out.push_back(event);
                }
            }
            Reader::Anthropic {
                events,
                writer,
                pieces,
            } => {
                events.read(&event.data, pieces)?;
                out.extend(pieces.drain(..).map(|piece| writer.write(piece)));
            }
        }
        Ok(())
    }
}

/// An event of the gateway's writing, named as the endpoint names it.
fn named(name: &'static str, data: String) -> SseEvent {
    SseEvent {
        raw: bytes::Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        name: Some(name.to_string()),
        data,
        keep_alive: false,
    }
}
