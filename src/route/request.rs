//! The client's request body as tierwise sees it: the top-level fields kept as raw JSON, with only
//! what routing needs (`model`, `stream`, whether the client asked for usage) read out. Every other
//! field — tools, response_format, seed, logprobs — travels to the upstream byte for byte; only the
//! fields a tier changes are written anew.

use indexmap::IndexMap;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::{RawValue, to_raw_value};

use crate::config::ChainTier;

/// Which OpenAI endpoint a body is for; it decides what must be present and what a tier may add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The path under a provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Why a body cannot be forwarded; each becomes a 400 naming the offending parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("'{param}' {problem}")]
    Field {
        param: &'static str,
        problem: &'static str,
    },
}

impl RequestError {
    pub fn param(&self) -> Option<&'static str> {
        match self {
            RequestError::NotJson(_) => None,
            RequestError::Field { param, .. } => Some(param),
        }
    }
}

#[derive(Debug)]
pub struct RequestBody<'a> {
    endpoint: Endpoint,
    fields: IndexMap<String, &'a RawValue>,
    pub model: String,
    pub stream: bool,
    /// The client set `stream_options.include_usage`; otherwise the usage chunk tierwise asks the
    /// upstream for is removed from what the client sees.
    pub client_wants_usage: bool,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct MessageRole<'a> {
    #[serde(borrow)]
    role: Option<&'a str>,
}

impl<'a> RequestBody<'a> {
    pub fn parse(endpoint: Endpoint, bytes: &'a [u8]) -> Result<Self, RequestError> {
        let fields: IndexMap<String, &'a RawValue> =
            serde_json::from_slice(bytes).map_err(|err| {
                RequestError::NotJson(if err.is_data() {
                    "expected a JSON object".to_string()
                } else {
                    err.to_string()
                })
            })?;
        let model = match fields.get("model") {
            Some(raw) => {
                serde_json::from_str::<String>(raw.get()).map_err(|_| RequestError::Field {
                    param: "model",
                    problem: "must be a string: a route, a tier or a model id",
                })?
            }
            None => {
                return Err(RequestError::Field {
                    param: "model",
                    problem: "is required: name a route, a tier or a model id",
                });
            }
        };
        let stream = match fields.get("stream") {
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| RequestError::Field {
                    param: "stream",
                    problem: "must be true or false",
                })?
                .unwrap_or(false),
            None => false,
        };
        match endpoint {
            Endpoint::ChatCompletions => {
                let messages = fields.get("messages").ok_or(RequestError::Field {
                    param: "messages",
                    problem: "is required",
                })?;
                // Already valid JSON (the parser checked it): only its shape is left to see,
                // without walking every message again.
                let text = messages.get().trim_start();
                if !text.starts_with('[') {
                    return Err(RequestError::Field {
                        param: "messages",
                        problem: "must be an array of messages",
                    });
                }
                if text[1..].trim_start().starts_with(']') {
                    return Err(RequestError::Field {
                        param: "messages",
                        problem: "must contain at least one message",
                    });
                }
            }
            Endpoint::Embeddings => {
                if !fields.contains_key("input") {
                    return Err(RequestError::Field {
                        param: "input",
                        problem: "is required",
                    });
                }
                if stream {
                    return Err(RequestError::Field {
                        param: "stream",
                        problem: "is not supported for embeddings",
                    });
                }
            }
        }
        let client_wants_usage = fields
            .get("stream_options")
            .and_then(|raw| serde_json::from_str::<Option<StreamOptions>>(raw.get()).ok())
            .flatten()
            .is_some_and(|options| options.include_usage);
        Ok(RequestBody {
            endpoint,
            fields,
            model,
            stream,
            client_wants_usage,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The body to send to `step`'s tier: its model, its defaults where the client gave none, its
    /// system prompt where the route sets one, and a request for usage on streams.
    pub fn for_tier(&self, step: &ChainTier) -> Vec<u8> {
        let tier = &step.tier;
        let chat = self.endpoint == Endpoint::ChatCompletions;
        let model = raw(&tier.model);
        let messages = match (&step.system_prompt, chat) {
            (Some(prompt), true) => self.messages_with_system(prompt),
            _ => None,
        };
        let stream_options = (self.stream && chat).then(|| self.stream_options_with_usage());
        let max_tokens = tier
            .max_tokens
            .filter(|_| chat)
            .filter(|_| !self.fields.contains_key("max_tokens"))
            .filter(|_| !self.fields.contains_key("max_completion_tokens"))
            .map(|value| raw(&value));
        let temperature = tier
            .temperature
            .filter(|_| chat && !self.fields.contains_key("temperature"))
            .map(|value| raw(&value));

        let mut out: Vec<(&str, &RawValue)> = Vec::with_capacity(self.fields.len() + 3);
        for (key, value) in &self.fields {
            let value: &RawValue = match key.as_str() {
                "model" => &model,
                "messages" => messages.as_deref().unwrap_or(value),
                "stream_options" => match &stream_options {
                    Some(options) => options,
                    None => value,
                },
                _ => value,
            };
            out.push((key, value));
        }
        if let Some(options) = &stream_options
            && !self.fields.contains_key("stream_options")
        {
            out.push(("stream_options", options));
        }
        if let Some(value) = &max_tokens {
            out.push(("max_tokens", value));
        }
        if let Some(value) = &temperature {
            out.push(("temperature", value));
        }
        serde_json::to_vec(&Fields(&out)).expect("raw JSON values always serialize")
    }

    /// The client's messages with the first system message replaced by `prompt` (or `prompt`
    /// put first where the client sent none).
    fn messages_with_system(&self, prompt: &str) -> Option<Box<RawValue>> {
        let list: Vec<&RawValue> = serde_json::from_str(self.fields.get("messages")?.get()).ok()?;
        let first_is_system = list
            .first()
            .and_then(|m| serde_json::from_str::<MessageRole>(m.get()).ok())
            .is_some_and(|m| m.role == Some("system"));
        let system = serde_json::json!({ "role": "system", "content": prompt });
        let system = to_raw_value(&system).ok()?;
        let rest = if first_is_system {
            &list[1..]
        } else {
            &list[..]
        };
        let mut messages: Vec<&RawValue> = Vec::with_capacity(rest.len() + 1);
        messages.push(&system);
        messages.extend_from_slice(rest);
        to_raw_value(&messages).ok()
    }

    /// The client's `stream_options` with `include_usage` switched on, so that every stream tells
    /// tierwise what it cost.
    fn stream_options_with_usage(&self) -> Box<RawValue> {
        let mut options = self
            .fields
            .get("stream_options")
            .and_then(|raw| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).ok()
            })
            .unwrap_or_default();
        options.insert("include_usage".into(), serde_json::Value::Bool(true));
        to_raw_value(&options).expect("a JSON map always serializes")
    }
}

/// Serializes key/raw-value pairs as one JSON object, in order, without re-parsing the values.
struct Fields<'a>(&'a [(&'a str, &'a RawValue)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A scalar as a raw JSON value, ready to stand among the client's fields.
fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    to_raw_value(value).expect("scalars always serialize")
}
