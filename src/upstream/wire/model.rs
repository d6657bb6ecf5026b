//! The gateway's own model of an answer, which a translated format is read into and which OpenAI's
//! format is written from: text, tool calls, why it finished and what it used; for a stream, the
//! same in pieces ([`Delta`]).

use crate::openai::Usage;

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: String,
    pub model: String,
    /// `None` when the answer is only tool calls.
    pub text: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Option<Finish>,
    pub usage: Option<Usage>,
}

/// A call of one of the request's tools; `arguments` is a JSON object as a string, as OpenAI
/// sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl Finish {
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
        }
    }
}

/// One piece of a streamed answer, in the order the answer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// The answer begins: its id and the model that gives it.
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// A tool call begins; `index` counts the answer's tool calls from 0.
    ToolCall {
        index: u32,
        id: String,
        name: String,
    },
    /// More of a tool call's arguments.
    Arguments {
        index: u32,
        fragment: String,
    },
    Finish(Finish),
    /// What the whole answer used, once it is known.
    Usage(Usage),
    /// The upstream failed mid-answer: OpenAI's error type for it, the upstream's own type as
    /// the code, and its words.
    Error {
        kind: &'static str,
        code: String,
        message: String,
    },
    /// The upstream is alive and has nothing to add.
    KeepAlive,
    /// The answer is complete.
    Done,
}
