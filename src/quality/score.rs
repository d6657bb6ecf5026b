//! Scorers: how far a cheaper tier's answer agrees with the reference tier's, as a number from 0
//! to 1 with the evidence behind it. Each route kind gets the scorer that fits its answers (a label,
//! a JSON object, free text, tool calls); a route may choose another.
//!
//! A reference answer that cannot be scored (the reference gave no allowed label, or JSON that does
//! not parse) makes the sample [`Unscorable`]: it says nothing about the candidate and must not count
//! for or against it. A candidate that cannot be read scores 0.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub use crate::config::ScorerKind;
use crate::openai::Said;
use crate::route::contract::{match_label, words};

/// What a scorer found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// 0 (nothing alike) to 1 (the same answer).
    pub agreement: f64,
    /// Why, in a few words: "both billing", "3 of 4 fields match", "candidate is not JSON".
    pub detail: String,
    /// Per field (JSON) or per call (tool calls): where the answers agree and where not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub path: String,
    pub matches: bool,
}

/// The reference answer gave nothing to compare against; the reason says what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unscorable: {0}")]
pub struct Unscorable(pub String);

pub type Score = Result<Scored, Unscorable>;

/// An assistant message as the scorers read it: its text and its tool calls, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments parsed, or the raw text where they are not JSON.
    pub arguments: Value,
}

impl Answer {
    pub fn text(text: impl Into<String>) -> Answer {
        Answer {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }

    /// The first choice's message of a chat completion body.
    pub fn of_completion(body: &Value) -> Answer {
        Answer::from(crate::openai::chat::said(body))
    }
}

impl From<Said> for Answer {
    fn from(said: Said) -> Answer {
        let tool_calls = said
            .tool_calls
            .into_iter()
            .map(|(name, arguments)| ToolCall {
                name,
                arguments: serde_json::from_str(&arguments).unwrap_or(Value::String(arguments)),
            })
            .collect();
        Answer {
            text: said.text,
            tool_calls,
        }
    }
}

/// Scores `candidate` against `reference` with `kind`; `labels` are the route's allowed labels.
pub fn score(kind: ScorerKind, candidate: &Answer, reference: &Answer, labels: &[String]) -> Score {
    match kind {
        ScorerKind::Label => label(&candidate.text, &reference.text, labels),
        ScorerKind::Json => json(&candidate.text, &reference.text),
        ScorerKind::Text => Ok(text(&candidate.text, &reference.text)),
        ScorerKind::ToolCalls => tool_calls(&candidate.tool_calls, &reference.tool_calls),
        // Graded by a call to the reference tier (`super::judge`), which this function cannot make.
        ScorerKind::Judge => Err(Unscorable(
            "the judge scorer grades with a call to the reference tier".into(),
        )),
    }
}

/// Both answers read as one label — an allowed one, pulled out of a longer answer the way the
/// output contract does, where the route has labels — and compared.
pub fn label(candidate: &str, reference: &str, labels: &[String]) -> Score {
    if labels.is_empty() {
        let (candidate, reference) = (words(candidate), words(reference));
        if reference.is_empty() {
            return Err(Unscorable("the reference answer is empty".into()));
        }
        let same = candidate == reference;
        return Ok(Scored {
            agreement: if same { 1.0 } else { 0.0 },
            detail: if same {
                format!("both {reference:?}")
            } else {
                format!("{candidate:?} against {reference:?}")
            },
            parts: Vec::new(),
        });
    }
    let Some((reference, _)) = match_label(reference, labels) else {
        return Err(Unscorable(format!(
            "the reference answer holds no single allowed label: {:?}",
            clip(reference)
        )));
    };
    Ok(match match_label(candidate, labels) {
        Some((candidate, _)) if candidate == reference => Scored {
            agreement: 1.0,
            detail: format!("both {reference}"),
            parts: Vec::new(),
        },
        Some((candidate, _)) => Scored {
            agreement: 0.0,
            detail: format!("{candidate} against {reference}"),
            parts: Vec::new(),
        },
        None => Scored {
            agreement: 0.0,
            detail: format!(
                "the candidate holds no single allowed label: {:?}",
                clip(candidate)
            ),
            parts: Vec::new(),
        },
    })
}

/// Both answers parsed as JSON (a Markdown code fence around it is taken off, as small models add
/// one); every leaf path either has is compared, and agreement is the share that match.
pub fn json(candidate: &str, reference: &str) -> Score {
    let reference: Value = serde_json::from_str(unfenced(reference))
        .map_err(|err| Unscorable(format!("the reference answer is not JSON: {err}")))?;
    let Ok(candidate) = serde_json::from_str::<Value>(unfenced(candidate)) else {
        return Ok(Scored {
            agreement: 0.0,
            detail: format!("the candidate is not JSON: {:?}", clip(candidate)),
            parts: Vec::new(),
        });
    };
    let (mut expected, mut got) = (BTreeMap::new(), BTreeMap::new());
    leaves(&reference, String::new(), &mut expected);
    leaves(&candidate, String::new(), &mut got);
    let mut paths: Vec<&String> = expected.keys().chain(got.keys()).collect();
    paths.sort();
    paths.dedup();
    let parts: Vec<Part> = paths
        .into_iter()
        .map(|path| Part {
            path: path.clone(),
            matches: match (expected.get(path), got.get(path)) {
                (Some(a), Some(b)) => same_value(a, b),
                _ => false,
            },
        })
        .collect();
    let matched = parts.iter().filter(|part| part.matches).count();
    Ok(Scored {
        agreement: if parts.is_empty() {
            1.0
        } else {
            matched as f64 / parts.len() as f64
        },
        detail: format!("{matched} of {} fields match", parts.len()),
        parts,
    })
}

/// Words of each answer the text scorer reads. ROUGE-L is quadratic: 2,048 words a side is 4.2
/// million steps, a few milliseconds, where two 30,000-word answers took seconds. A longer answer
/// is scored on its first 2,048 words, and the detail says so: the sample still counts, judged on
/// the part of the answers a reader meets first.
pub const MAX_TEXT_WORDS: usize = 2048;

/// Free text: ROUGE-L (the longest common subsequence of words, as an F-measure) is the agreement;
/// token F1 (shared words regardless of order) is in the detail. Each side is read up to
/// [`MAX_TEXT_WORDS`].
pub fn text(candidate: &str, reference: &str) -> Scored {
    let (candidate, candidate_cut) = tokens(candidate);
    let (reference, reference_cut) = tokens(reference);
    let (rouge, f1) = match (candidate.is_empty(), reference.is_empty()) {
        (true, true) => (1.0, 1.0),
        (true, false) | (false, true) => (0.0, 0.0),
        (false, false) => (
            f_measure(
                lcs(&candidate, &reference),
                candidate.len(),
                reference.len(),
            ),
            f_measure(
                overlap(&candidate, &reference),
                candidate.len(),
                reference.len(),
            ),
        ),
    };
    let cut = if candidate_cut || reference_cut {
        format!(" (first {MAX_TEXT_WORDS} words of each answer)")
    } else {
        String::new()
    };
    Scored {
        agreement: rouge,
        detail: format!("ROUGE-L {rouge:.3}, token F1 {f1:.3}{cut}"),
        parts: Vec::new(),
    }
}

/// Tool calls matched by function name and parsed arguments, in any order; agreement is the
/// matched calls over the larger of the two sets.
pub fn tool_calls(candidate: &[ToolCall], reference: &[ToolCall]) -> Score {
    if reference.is_empty() {
        return Err(Unscorable("the reference answer made no tool call".into()));
    }
    let mut unmatched: Vec<&ToolCall> = candidate.iter().collect();
    let parts: Vec<Part> = reference
        .iter()
        .map(|call| {
            let found = unmatched
                .iter()
                .position(|c| c.name == call.name && same_value(&c.arguments, &call.arguments));
            if let Some(at) = found {
                unmatched.remove(at);
            }
            Part {
                path: call.name.clone(),
                matches: found.is_some(),
            }
        })
        .collect();
    let matched = parts.iter().filter(|part| part.matches).count();
    let total = reference.len().max(candidate.len());
    Ok(Scored {
        agreement: matched as f64 / total as f64,
        detail: format!(
            "{matched} of {} calls match ({} made by the candidate)",
            reference.len(),
            candidate.len()
        ),
        parts,
    })
}

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Lower-case words, punctuation dropped, at most [`MAX_TEXT_WORDS`] of them (read no further than
/// that), and whether the text had more.
fn tokens(text: &str) -> (Vec<String>, bool) {
    let mut words = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase);
    let kept: Vec<String> = words.by_ref().take(MAX_TEXT_WORDS).collect();
    let cut = words.next().is_some();
    (kept, cut)
}

fn unfenced(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_suffix("```").unwrap_or(inner);
    // The fence's language tag, if any, runs to the end of its line.
    match inner.split_once('\n') {
        Some((tag, body)) if !tag.trim_start().starts_with(['{', '[']) => body.trim(),
        _ => inner.trim(),
    }
}

/// Every leaf of a JSON value under its path (`a.b[0].c`); an empty object or array is a leaf.
fn leaves(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(value, path, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, value) in items.iter().enumerate() {
                leaves(value, format!("{path}[{index}]"), out);
            }
        }
        _ => {
            out.insert(path, value.clone());
        }
    }
}

/// Equal as values: numbers by value (1 and 1.0 agree), strings without regard to case and
/// surrounding space, objects and arrays member by member.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a.trim().to_lowercase() == b.trim().to_lowercase(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| same_value(value, other)))
        }
        _ => a == b,
    }
}

fn f_measure(common: usize, candidate: usize, reference: usize) -> f64 {
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / candidate as f64;
    let recall = common as f64 / reference as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Words the two share, counted as often as both have them.
fn overlap(a: &[String], b: &[String]) -> usize {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for word in b {
        *counts.entry(word).or_default() += 1;
    }
    a.iter()
        .filter(|word| {
            counts.get_mut(word.as_str()).is_some_and(|n| {
                let left = *n > 0;
                *n = n.saturating_sub(1);
                left
            })
        })
        .count()
}

/// Length of the longest common subsequence, in two rows of memory.
fn lcs(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for word in a {
        for (j, other) in b.iter().enumerate() {
            current[j + 1] = if word == other {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::TaskKind;

    use super::*;

    fn labels() -> Vec<String> {
        ["billing", "technical", "general inquiry"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn labels_agree_after_the_contracts_normalization() {
        let same = label("The category is: Billing.", "billing", &labels()).unwrap();
        assert_eq!(
            (same.agreement, same.detail.as_str()),
            (1.0, "both billing")
        );
        let differ = label("technical", "Billing", &labels()).unwrap();
        assert_eq!(differ.agreement, 0.0);
        assert_eq!(differ.detail, "technical against billing");
        // The longer label is the one meant, on both sides.
        let inquiry = label("General inquiry", "general inquiry.", &labels()).unwrap();
        assert_eq!(inquiry.agreement, 1.0);
    }

    #[test]
    fn a_label_not_allowed_scores_zero_and_a_reference_without_one_is_unscorable() {
        let not_allowed = label("refund", "billing", &labels()).unwrap();
        assert_eq!(not_allowed.agreement, 0.0);
        assert!(not_allowed.detail.contains("no single allowed label"));
        let two = label("billing or technical", "billing", &labels()).unwrap();
        assert_eq!(two.agreement, 0.0, "two labels are no answer");
        assert!(label("", "billing", &labels()).unwrap().agreement == 0.0);
        assert!(label("billing", "I cannot tell", &labels()).is_err());
        assert!(label("billing", "", &[]).is_err());
        assert_eq!(label("Spam!", "spam", &[]).unwrap().agreement, 1.0);
    }

    #[test]
    fn json_counts_matching_fields_and_nested_values() {
        let reference = r#"{"name": "Ada", "amount": 12.5, "items": [{"sku": "A1"}, {"sku": "B2"}], "paid": true}"#;
        let candidate = "```json\n{\"name\": \" ada \", \"amount\": 12.50, \"items\": [{\"sku\": \"A1\"}, {\"sku\": \"C3\"}], \"paid\": true}\n```";
        let scored = json(candidate, reference).unwrap();
        assert_eq!(scored.detail, "4 of 5 fields match");
        assert_eq!(scored.agreement, 0.8);
        let wrong: Vec<&str> = scored
            .parts
            .iter()
            .filter(|part| !part.matches)
            .map(|part| part.path.as_str())
            .collect();
        assert_eq!(wrong, ["items[1].sku"]);
    }

    #[test]
    fn json_penalizes_missing_and_extra_fields_and_refuses_what_does_not_parse() {
        let missing = json(r#"{"a": 1}"#, r#"{"a": 1, "b": 2}"#).unwrap();
        assert_eq!(missing.agreement, 0.5);
        let extra = json(r#"{"a": 1, "b": 2, "c": 3}"#, r#"{"a": 1, "b": 2}"#).unwrap();
        assert!((extra.agreement - 2.0 / 3.0).abs() < 1e-12);
        let broken = json(r#"{"a": 1"#, r#"{"a": 1}"#).unwrap();
        assert_eq!(broken.agreement, 0.0);
        assert!(broken.detail.starts_with("the candidate is not JSON"));
        assert!(json(r#"{"a": 1}"#, "Sure! Here is the JSON").is_err());
        assert_eq!(json("{}", "{}").unwrap().agreement, 1.0);
        assert_eq!(json("[]", "{}").unwrap().agreement, 0.0);
        assert_eq!(json("1", "1.0").unwrap().agreement, 1.0);
    }

    #[test]
    fn text_is_scored_by_rouge_l_with_token_f1_beside_it() {
        let same = text("The invoice was paid twice.", "the invoice was paid twice");
        assert_eq!(same.agreement, 1.0);
        // LCS "the invoice paid" = 3 of 4 and 3 of 5 words: F = 2·0.75·0.6 / 1.35.
        let partial = text("the invoice paid twice", "the customer invoice was paid");
        assert!(
            (partial.agreement - 2.0 * 0.75 * 0.6 / 1.35).abs() < 1e-12,
            "{partial:?}"
        );
        // Same words, reversed: token F1 is 1, ROUGE-L is not.
        let reversed = text("c b a", "a b c");
        assert!((reversed.agreement - 1.0 / 3.0).abs() < 1e-12);
        assert!(
            reversed.detail.ends_with("token F1 1.000"),
            "{}",
            reversed.detail
        );
        assert_eq!(text("", "something").agreement, 0.0);
        assert_eq!(text("", "").agreement, 1.0);
        assert_eq!(text("!!!", "...").agreement, 1.0, "no words on either side");
    }

    /// Answers past the cap are scored on their first `MAX_TEXT_WORDS` words: two answers that
    /// differ only after it agree fully, and the detail says they were cut.
    #[test]
    fn long_answers_are_scored_on_their_first_words_and_say_so() {
        let head: Vec<String> = (0..MAX_TEXT_WORDS).map(|n| format!("w{n}")).collect();
        let candidate = format!("{} {}", head.join(" "), "tail ".repeat(30_000));
        let reference = format!("{} {}", head.join(" "), "other ".repeat(50_000));
        let scored = text(&candidate, &reference);
        assert_eq!(scored.agreement, 1.0, "{}", scored.detail);
        assert!(
            scored.detail.ends_with("(first 2048 words of each answer)"),
            "{}",
            scored.detail
        );
        assert!(!text("a b", "a b").detail.contains("first"));
    }

    #[test]
    fn tool_calls_match_by_name_and_parsed_arguments_in_any_order() {
        let body = |calls: Value| json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls}}]});
        let call = |name: &str, args: &str| json!({"id": "x", "type": "function", "function": {"name": name, "arguments": args}});
        let reference = Answer::of_completion(&body(json!([
            call("get_weather", r#"{"city": "Paris", "days": 3}"#),
            call("get_time", r#"{"tz": "CET"}"#)
        ])));
        let candidate = Answer::of_completion(&body(json!([
            call("get_time", r#"{ "tz":"cet" }"#),
            call("get_weather", r#"{"days": 3.0, "city": "Paris"}"#)
        ])));
        let both = score(ScorerKind::ToolCalls, &candidate, &reference, &[]).unwrap();
        assert_eq!(both.agreement, 1.0, "{both:?}");

        let wrong_args = Answer::of_completion(&body(json!([call(
            "get_weather",
            r#"{"city": "Lyon", "days": 3}"#
        )])));
        let scored = score(ScorerKind::ToolCalls, &wrong_args, &reference, &[]).unwrap();
        assert_eq!(scored.agreement, 0.0);
        assert_eq!(
            scored.detail,
            "0 of 2 calls match (1 made by the candidate)"
        );

        let extra = Answer::of_completion(&body(json!([
            call("get_weather", r#"{"city": "Paris", "days": 3}"#),
            call("get_time", r#"{"tz": "CET"}"#),
            call("delete_account", "{}")
        ])));
        let scored = score(ScorerKind::ToolCalls, &extra, &reference, &[]).unwrap();
        assert!(
            (scored.agreement - 2.0 / 3.0).abs() < 1e-12,
            "an extra call costs agreement"
        );

        let unparsable = Answer::of_completion(&body(json!([call("get_time", "tz=CET")])));
        assert_eq!(unparsable.tool_calls[0].arguments, json!("tz=CET"));
        let text_only = Answer::text("It is sunny.");
        assert!(score(ScorerKind::ToolCalls, &text_only, &text_only, &[]).is_err());
        assert_eq!(
            score(ScorerKind::ToolCalls, &text_only, &reference, &[])
                .unwrap()
                .agreement,
            0.0
        );
    }

    #[test]
    fn each_route_kind_has_its_scorer() {
        assert_eq!(
            ScorerKind::for_task(TaskKind::Moderation),
            Some(ScorerKind::Label)
        );
        assert_eq!(
            ScorerKind::for_task(TaskKind::Extraction),
            Some(ScorerKind::Json)
        );
        assert_eq!(
            ScorerKind::for_task(TaskKind::Summarization),
            Some(ScorerKind::Text)
        );
        assert_eq!(
            ScorerKind::for_task(TaskKind::Agentic),
            Some(ScorerKind::ToolCalls)
        );
        assert_eq!(ScorerKind::for_task(TaskKind::Embedding), None);
    }
}
