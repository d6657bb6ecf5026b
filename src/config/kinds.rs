//! The kinds a route's settings choose among — its task, its quality bar, its scorer, what it does
//! when every tier is open or its monitor decides — and the wire format a provider speaks, shared
//! by the file's raw types
//! ([`super::file`]) and the resolved route ([`super::route`]). A leaf: it uses no other part of
//! the configuration, so the raw file and the resolver never depend on each other through it.

use serde::{Deserialize, Serialize};

/// Which server of a provider takes a call beyond its load (`providers.<name>.affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Calls whose prompts begin alike go to the same server, whose prefix cache holds them.
    Prefix,
}

/// The wire format a provider speaks (`providers.<name>.api`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI's own API and every server that copies it (vLLM, Ollama's `/v1`, llama.cpp).
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI: OpenAI's format at a deployment's URL, with Azure's key header and version.
    Azure,
    /// Anthropic's Messages API: requests and answers translated at the provider's seam.
    Anthropic,
}

impl Api {
    /// The API version a provider of this format is called with when its `api_version` is unset.
    pub fn default_version(self) -> Option<&'static str> {
        match self {
            Api::OpenAi => None,
            // Azure OpenAI's latest generally available version, which takes `stream_options`.
            Api::Azure => Some("2024-10-21"),
            // The only version of the Messages API's `anthropic-version` header.
            Api::Anthropic => Some("2023-06-01"),
        }
    }

    /// The header the provider's key travels in unless its `auth` says otherwise.
    pub fn default_auth(self) -> KeyHeader {
        match self {
            Api::OpenAi => KeyHeader::Bearer,
            Api::Azure => KeyHeader::ApiKey,
            Api::Anthropic => KeyHeader::XApiKey,
        }
    }
}

/// The header a provider's key travels in (`providers.<name>.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    #[serde(rename = "bearer")]
    Bearer,
    /// `x-api-key: <key>`, Anthropic's.
    #[serde(rename = "x-api-key")]
    XApiKey,
    /// `api-key: <key>`, Azure's.
    #[serde(rename = "api-key")]
    ApiKey,
}

/// What a route does, which decides its scorer and whether it may move to a local model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classification,
    Extraction,
    Summarization,
    Moderation,
    Embedding,
    Chat,
    Agentic,
    Reasoning,
}

/// What a route does when every tier's breaker is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllOpen {
    /// Call the primary anyway: it may have recovered, and a failure costs one request.
    #[default]
    TryPrimary,
    /// Answer 503 at once with `Retry-After`.
    FailFast,
}

/// How answers are compared: one normalized label, JSON fields, free text, or tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerKind {
    /// One normalized label, for classification and moderation.
    Label,
    /// Both answers parsed as JSON; the share of fields and nested values that match.
    Json,
    /// Free text: ROUGE-L between the answers, with token F1 beside it.
    Text,
    /// Tool calls compared by function name and parsed arguments.
    ToolCalls,
    /// The reference tier grades the candidate's answer against its own with a rubric, 0 to 10:
    /// one more reference call per sample, for open-ended answers no fixed measure compares.
    Judge,
}

impl ScorerKind {
    /// The scorer a route of this kind gets unless it names another; `None` where answers are
    /// vectors (embeddings), which agreement by text does not describe.
    pub fn for_task(kind: TaskKind) -> Option<ScorerKind> {
        match kind {
            TaskKind::Classification | TaskKind::Moderation => Some(ScorerKind::Label),
            TaskKind::Extraction => Some(ScorerKind::Json),
            TaskKind::Summarization | TaskKind::Chat | TaskKind::Reasoning => {
                Some(ScorerKind::Text)
            }
            TaskKind::Agentic => Some(ScorerKind::ToolCalls),
            TaskKind::Embedding => None,
        }
    }

    /// How an answer is compared with a right answer someone wrote (a dataset's `expected`, an
    /// application's feedback): as text where the route is graded by a judge, which grades only
    /// against the reference tier's own answer.
    pub fn against_truth(self) -> ScorerKind {
        match self {
            ScorerKind::Judge => ScorerKind::Text,
            other => other,
        }
    }
}

/// What a route does when its monitor says the candidate fell below the bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    /// Alert (log, metric, webhook) and keep serving from the candidate.
    #[default]
    Alert,
    /// Alert, serve from the next tier, keep checking the candidate in reverse, and promote it
    /// back once agreement is proven again.
    Demote,
}

/// What a route does when its monitor proves the candidate at the bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnProof {
    /// Only report it.
    #[default]
    Report,
    /// The candidate starts demoted (the route serves from its next tier while the candidate is
    /// checked in reverse) and is promoted once the lower bound of agreement clears the bar.
    Promote,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityBar {
    #[default]
    GoodEnough,
    Frontier,
}

/// How much a task depends on calling tools right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCalling {
    #[default]
    None,
    Optional,
    /// A wrong call is a wrong answer: the task stays on the API.
    Critical,
}

/// How often a task's prompt or expected output changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Changes {
    #[default]
    Rarely,
    /// Every change would need the local prompt re-tuned and re-validated.
    Often,
}

/// What a budget does once it cannot hold a request's worst-case cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Skip the API tiers (`budget_spent`) and serve from the route's local tiers, unless the
    /// local tier is demoted by its shadow check (known to be worse): then answer 429
    /// `insufficient_quota`, as when the route has no local tier.
    #[default]
    LocalOnly,
    /// As `local_only`, but serve from a local tier even while its shadow check has demoted it.
    LocalAny,
    /// Answer 429 `insufficient_quota` at once.
    Reject,
}

impl OnExhausted {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExhausted::LocalOnly => "local_only",
            OnExhausted::LocalAny => "local_any",
            OnExhausted::Reject => "reject",
        }
    }
}

/// Whose requests share a route's cached answers (`routes.<name>.cache.scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Each client key reads only the answers its own requests filled: one key never sees
    /// another's answers, whatever they asked.
    #[default]
    Key,
    /// Every key calling the route shares its answers (a public FAQ bot, a classifier).
    Route,
}
