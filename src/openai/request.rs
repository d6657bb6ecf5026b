//! The client's request body as tierwise sees it: the top-level fields kept as raw JSON, with only
//! what routing needs (`model`, `stream`, whether the client asked for usage) read out. Every other
//! field — tools, response_format, seed, logprobs — travels to the upstream byte for byte; only the
//! fields a tier changes are written anew.

use std::borrow::Cow;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::{RawValue, to_raw_value};

use super::Endpoint;
use crate::config::{Abilities, ChainTier};

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
    /// A field the endpoint does not know, named in the message.
    #[error("{0}")]
    Unknown(String),
    /// A value inside `param` that is not what the endpoint takes, at `at`
    /// (`messages.2.content.0.text`), as Anthropic's API names where a request is wrong.
    #[error("{at}: {problem}")]
    Invalid {
        param: &'static str,
        at: String,
        problem: &'static str,
    },
    /// Objects and arrays nested past [`MAX_DEPTH`] in the top-level field `param`.
    #[error(
        "'{param}' nests objects and arrays more than {MAX_DEPTH} deep (the body itself the first level); tierwise takes request bodies nested at most {MAX_DEPTH} deep: flatten it"
    )]
    TooDeep { param: String },
}

/// The most levels of objects and arrays a request body may nest, the body itself the first. Every
/// endpoint refuses a deeper body before anything reads into it, so that no step after (the
/// Responses state, a translation for a tier, the cache key) meets a body it cannot parse:
/// serde_json's parse into values stops at 128 levels, and a translation nests a field a level or
/// two deeper than the client did (Responses' `tools[].parameters` under chat's `function`). Far
/// past any prompt or schema a model is given (OpenAI's structured outputs take 10 levels).
pub const MAX_DEPTH: usize = 100;

impl RequestError {
    pub fn param(&self) -> Option<&'static str> {
        match self {
            RequestError::NotJson(_) | RequestError::Unknown(_) | RequestError::TooDeep { .. } => {
                None
            }
            RequestError::Field { param, .. } | RequestError::Invalid { param, .. } => Some(param),
        }
    }

    /// The parameter the error names, the field of a body nested too deep included.
    pub fn param_named(&self) -> Option<Cow<'static, str>> {
        match self {
            RequestError::TooDeep { param } => Some(Cow::Owned(param.clone())),
            _ => self.param().map(Cow::Borrowed),
        }
    }

    /// A body serde_json could not read as an object: its syntax error, or that it is some other
    /// JSON value.
    pub fn not_json(err: serde_json::Error) -> RequestError {
        RequestError::NotJson(if err.is_data() {
            "expected a JSON object".to_string()
        } else {
            err.to_string()
        })
    }

    pub(crate) fn field(param: &'static str, problem: &'static str) -> RequestError {
        RequestError::Field { param, problem }
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
    include_usage: Option<bool>,
}

impl<'a> RequestBody<'a> {
    pub fn parse(endpoint: Endpoint, bytes: &'a [u8]) -> Result<Self, RequestError> {
        let body = RequestBody::read(endpoint, bytes)?;
        (endpoint.spec().validate)(&body)?;
        Ok(body)
    }

    /// The body's top-level fields and what routing reads of them, without the endpoint's
    /// `validate`: for counting a prompt's tokens, which needs none of the fields only sending
    /// needs (Messages' `max_tokens`).
    pub fn read(endpoint: Endpoint, bytes: &'a [u8]) -> Result<Self, RequestError> {
        let fields: IndexMap<String, &'a RawValue> =
            serde_json::from_slice(bytes).map_err(RequestError::not_json)?;
        if let Some((name, _)) = fields
            .iter()
            .find(|(_, value)| nests_past(value.get().as_bytes(), MAX_DEPTH - 1))
        {
            return Err(RequestError::TooDeep {
                param: name.clone(),
            });
        }
        let model = match fields.get("model") {
            Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
                RequestError::field("model", "must be a string: a route, a tier or a model id")
            })?,
            None => {
                return Err(RequestError::field(
                    "model",
                    "is required: name a route, a tier or a model id",
                ));
            }
        };
        let stream = match fields.get("stream") {
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| RequestError::field("stream", "must be true or false"))?
                .unwrap_or(false),
            None => false,
        };
        let client_wants_usage = match fields.get("stream_options") {
            Some(raw) => serde_json::from_str::<Option<StreamOptions>>(raw.get())
                .map_err(|_| {
                    RequestError::field(
                        "stream_options",
                        "must be an object, e.g. {\"include_usage\": true}",
                    )
                })?
                .is_some_and(|options| options.include_usage == Some(true)),
            None => false,
        };
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

    /// The client's raw value of a top-level field.
    pub fn field(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.get(name).copied()
    }

    /// The names of the client's top-level fields.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Whether the client gave `name` a value: `null` is OpenAI's way of leaving a field unset.
    pub fn gives(&self, name: &str) -> bool {
        self.field(name).is_some_and(|value| value.get() != "null")
    }

    /// About the body's length in bytes (its fields, keys and values), an upper bound on the
    /// tokens its text can hold: every token is at least one byte.
    pub fn byte_len(&self) -> usize {
        self.fields
            .iter()
            .map(|(key, value)| key.len() + value.get().len() + 4)
            .sum()
    }

    /// What the request needs of a tier beyond plain chat. Read only for a route with a tier that
    /// lacks something, so other requests pay nothing for it.
    pub fn needs(&self) -> Abilities {
        (self.endpoint.spec().needs)(self)
    }

    /// The answer budget the client asked for (see [`super::EndpointSpec::answer_budget`]).
    pub fn max_tokens(&self) -> Option<u64> {
        (self.endpoint.spec().answer_budget)(self)
    }

    /// The body to send to `step`'s tier: its model, and whatever the endpoint changes for it.
    pub fn for_tier(&self, step: &ChainTier) -> Vec<u8> {
        self.body_for(step, &[], None)
    }

    /// The body for `step`'s tier asking for one whole answer of at most `max_tokens`, whether
    /// the client streamed or not, and however many choices or tokens it asked for: what a shadow
    /// check sends, whose cost is reserved before it is sent. The limit goes in the parameter the
    /// client used (`max_completion_tokens` is the one reasoning models take), else the
    /// endpoint's usual one.
    pub fn for_tier_whole(&self, step: &ChainTier, max_tokens: u64) -> Vec<u8> {
        let limits = self.endpoint.spec().answer_limits;
        let limit = limits
            .iter()
            .copied()
            .find(|name| self.has(name))
            .or(limits.first().copied())
            .unwrap_or("max_tokens");
        let mut without = vec!["stream", "stream_options", "n"];
        without.extend_from_slice(limits);
        self.body_for(step, &without, Some((limit, raw(&max_tokens))))
    }

    /// `step`'s body without the fields in `without` (the client's and the tier's), and with
    /// `extra` last.
    fn body_for(
        &self,
        step: &ChainTier,
        without: &[&str],
        extra: Option<(&'static str, Box<RawValue>)>,
    ) -> Vec<u8> {
        let mut edits = Edits::default();
        edits.set("model", raw(&step.tier.model));
        (self.endpoint.spec().rewrite)(self, step, &mut edits);

        let mut out: Vec<(&str, &RawValue)> =
            Vec::with_capacity(self.fields.len() + edits.values.len());
        for (key, value) in &self.fields {
            if !without.contains(&key.as_str()) && !edits.removed.contains(&key.as_str()) {
                out.push((key, edits.get(key).unwrap_or(value)));
            }
        }
        for (key, value) in &edits.values {
            if !self.fields.contains_key(*key) && !without.contains(key) {
                out.push((key, value));
            }
        }
        if let Some((key, value)) = &extra {
            out.push((key, value));
        }
        serde_json::to_vec(&Fields(&out)).expect("raw JSON values always serialize")
    }
}

/// Whether `json`, one valid JSON value, nests objects and arrays more than `limit` deep. A scan
/// of its bytes, strings skipped with memchr, rather than a parse: it keeps nothing, needs no stack
/// and costs far less than the parse that found the body's fields.
fn nests_past(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        at += 1;
        match byte {
            b'"' => loop {
                let rest = json.get(at..).unwrap_or_default();
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(skip) if rest[skip] == b'\\' => at += skip + 2,
                    Some(skip) => {
                        at += skip + 1;
                        break;
                    }
                    None => return false,
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Top-level fields a tier sets: a field the client sent is replaced where it stands, a new one is
/// appended; and the client's fields a tier leaves out.
#[derive(Default)]
pub struct Edits {
    values: Vec<(&'static str, Box<RawValue>)>,
    removed: Vec<&'static str>,
}

impl Edits {
    pub fn set(&mut self, key: &'static str, value: Box<RawValue>) {
        self.values.push((key, value));
    }

    pub fn remove(&mut self, key: &'static str) {
        self.removed.push(key);
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.values
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.as_ref())
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

/// A value as a raw JSON value, ready to stand among the client's fields.
pub fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    to_raw_value(value).expect("tierwise's own values always serialize")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Any JSON value, up to a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|x| json!(x)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A shadow check asks for one whole answer of bounded length: the client's `n`, stream and
    /// its own limit are not forwarded; the limit is set in the parameter the client used.
    #[test]
    fn a_whole_body_drops_n_and_the_clients_limit_and_sets_its_own() {
        let config = crate::config::Config::parse(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\napi = { provider = \"openai\", model = \"gpt-4o\", max_tokens = 10 }\n\
             [routes.r]\nkind = \"classification\"\ntiers = [\"api\"]\n",
            std::path::Path::new("tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        let step = config.routes[0].chain[0].clone();
        let whole = |body: Value| -> Value {
            let bytes = serde_json::to_vec(&body).unwrap();
            let parsed = RequestBody::parse(Endpoint::ChatCompletions, &bytes).unwrap();
            serde_json::from_slice(&parsed.for_tier_whole(&step, 64)).unwrap()
        };
        let messages = json!([{"role": "user", "content": "hi"}]);
        let sent = whole(
            json!({"model": "r", "messages": messages, "n": 5, "max_tokens": 100000,
            "stream": true, "stream_options": {"include_usage": true}, "seed": 7}),
        );
        assert_eq!(
            sent,
            json!({"model": "gpt-4o", "messages": messages, "seed": 7, "max_tokens": 64})
        );
        let sent = whole(json!({"model": "r", "messages": messages, "max_completion_tokens": 9}));
        assert_eq!(
            sent,
            json!({"model": "gpt-4o", "messages": messages, "max_completion_tokens": 64})
        );
    }

    /// `"max_tokens": null` leaves the answer unbounded upstream: the tier's limit applies as if
    /// the field were absent, since budgets and tpm reserve that limit as the worst case.
    #[test]
    fn a_null_limit_gets_the_tiers_limit() {
        let config = crate::config::Config::parse(
            "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [tiers]\napi = { provider = \"openai\", model = \"gpt-4o\", max_tokens = 10 }\n\
             o3 = { provider = \"openai\", model = \"o3-mini\", max_tokens = 20 }\n\
             [routes.r]\nkind = \"classification\"\ntiers = [\"api\", \"o3\"]\n",
            std::path::Path::new("tierwise.toml"),
            &|_| None,
        )
        .unwrap();
        let sent = |step: usize, body: Value| -> Value {
            let bytes = serde_json::to_vec(&body).unwrap();
            let parsed = RequestBody::parse(Endpoint::ChatCompletions, &bytes).unwrap();
            serde_json::from_slice(&parsed.for_tier(&config.routes[0].chain[step])).unwrap()
        };
        let messages = json!([{"role": "user", "content": "hi"}]);
        for field in ["max_tokens", "max_completion_tokens"] {
            let mut body = json!({"model": "r", "messages": messages});
            body[field] = Value::Null;
            let to_api = sent(0, body.clone());
            assert_eq!(to_api["max_tokens"], 10, "{field}: {to_api}");
            let to_o3 = sent(1, body);
            assert_eq!(to_o3["max_completion_tokens"], 20, "{field}: {to_o3}");
            assert!(to_o3.get("max_tokens").is_none(), "{field}: {to_o3}");
        }
    }

    /// A body nested `depth` levels (the body itself the first), the depth in `text`'s schema,
    /// with brackets and escaped quotes in strings, which do not nest.
    fn nested(depth: usize) -> String {
        let open = r#"{"s":"[{\"[","a":"#.repeat(depth - 3);
        format!(
            r#"{{"model":"m","input":"[[{{","text":{{"format":{{"schema":{open}1{}}}}}}}"#,
            "}".repeat(depth - 3)
        )
    }

    /// Every endpoint takes a body nested [`MAX_DEPTH`] deep, which serde_json can parse whole
    /// (what the Responses state and the translations do), and refuses one level more naming the
    /// field and the depth.
    #[test]
    fn a_body_nested_past_the_limit_is_refused_naming_its_field() {
        let at_limit = nested(MAX_DEPTH);
        serde_json::from_str::<Value>(&at_limit).unwrap();
        let past = nested(MAX_DEPTH + 1);
        serde_json::from_str::<Value>(&past).unwrap();
        for endpoint in Endpoint::ALL {
            RequestBody::read(endpoint, at_limit.as_bytes()).unwrap();
            let err = RequestBody::read(endpoint, past.as_bytes()).unwrap_err();
            assert_eq!(err.param_named().as_deref(), Some("text"), "{err}");
            assert!(err.to_string().contains("more than 100 deep"), "{err}");
        }
    }

    proptest! {
        /// Any bytes: a body or a clear error, never a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            for endpoint in Endpoint::ALL {
                let _ = RequestBody::parse(endpoint, &bytes);
            }
        }

        /// Any JSON object, with any value where tierwise reads a field: a body whose model and
        /// stream flag are what was sent, or an error naming a parameter or the JSON.
        #[test]
        fn any_json_object_parses_or_names_what_is_wrong(
            fields in prop::collection::btree_map(
                prop_oneof![
                    Just("model".to_string()), Just("messages".to_string()),
                    Just("stream".to_string()), Just("stream_options".to_string()),
                    Just("max_tokens".to_string()), Just("input".to_string()),
                    "[a-z_]{1,10}",
                ],
                any_json(),
                0..8,
            ),
        ) {
            let object = Value::Object(fields.into_iter().collect());
            let bytes = serde_json::to_vec(&object).unwrap();
            for endpoint in Endpoint::ALL {
                match RequestBody::parse(endpoint, &bytes) {
                    Ok(body) => {
                        prop_assert_eq!(Some(body.model.as_str()), object["model"].as_str());
                        prop_assert_eq!(body.stream, object["stream"].as_bool() == Some(true));
                    }
                    Err(err) => prop_assert!(!err.to_string().is_empty()),
                }
            }
        }
    }
}
