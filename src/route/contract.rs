//! The output contract of a route with allowed labels. Small models answer "The category is:
//! Technical." where a label was asked for; the label is pulled out of such an answer, and an answer
//! that holds no allowed label (or several) is passed on unchanged and flagged, never replaced by a
//! guess.

use bytes::Bytes;
use serde_json::Value;

use crate::openai::AnswerTexts;

/// What the contract did to an answer; sent to the client as `x-tierwise-contract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractOutcome {
    /// Every answer already was exactly an allowed label.
    Ok,
    /// A label was pulled out of a longer answer.
    Normalized,
    /// Some answer holds no allowed label, or more than one.
    Violated,
    /// A stream's answer holds an allowed label inside a longer text: it was relayed as it came,
    /// since its headers had left before its text existed, so nothing was rewritten.
    Normalizable,
}

impl ContractOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ContractOutcome::Ok => "ok",
            ContractOutcome::Normalized => "normalized",
            ContractOutcome::Violated => "violated",
            ContractOutcome::Normalizable => "normalizable",
        }
    }
}

/// Finds the one allowed label `answer` means, and whether the answer differs from it (other
/// words, case, punctuation) and must be rewritten.
pub fn match_label<'l>(answer: &str, labels: &'l [String]) -> Option<(&'l str, bool)> {
    let text = words(answer);
    if let Some(exact) = labels.iter().find(|label| words(label) == text) {
        return Some((exact, answer != exact.as_str()));
    }
    let padded = format!(" {text} ");
    let found: Vec<&String> = labels
        .iter()
        .filter(|label| padded.contains(&format!(" {} ", words(label))))
        .collect();
    // "general inquiry" also contains the label "general": the longer label is the one meant.
    let longest = found.iter().max_by_key(|label| label.len())?;
    let all_inside_longest = found
        .iter()
        .all(|label| words(longest).contains(&words(label)));
    all_inside_longest.then_some((longest.as_str(), true))
}

/// The contract's verdict on answers it cannot rewrite, a stream's choices as relayed: exactly
/// labels ([`ContractOutcome::Ok`]), a label inside a longer text in some
/// ([`ContractOutcome::Normalizable`]), or no single label in some ([`ContractOutcome::Violated`]).
pub fn judge<'a>(answers: impl IntoIterator<Item = &'a str>, labels: &[String]) -> ContractOutcome {
    let mut outcome = ContractOutcome::Ok;
    let mut judged = false;
    for answer in answers {
        judged = true;
        match match_label(answer, labels) {
            Some((_, false)) => {}
            Some((_, true)) => outcome = ContractOutcome::Normalizable,
            None => return ContractOutcome::Violated,
        }
    }
    // A stream that carried no text at all answered no label.
    if judged {
        outcome
    } else {
        ContractOutcome::Violated
    }
}

/// Lower-case words separated by single spaces, punctuation dropped.
pub(crate) fn words(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies the contract to a whole answer, whose texts `texts` finds (the endpoint's
/// [`crate::openai::EndpointSpec::answer_texts`]). The body is rewritten only when a label had to
/// be pulled out — the label in the text's first string, its other strings emptied — otherwise
/// the upstream's bytes go to the client untouched.
pub fn apply(body: Bytes, labels: &[String], texts: AnswerTexts) -> (Bytes, ContractOutcome) {
    let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
        return (body, ContractOutcome::Violated);
    };
    let mut answers = texts(&mut answer);
    // An answer with nothing to read (no choices at all) answered no label.
    if answers.is_empty() {
        return (body, ContractOutcome::Violated);
    }
    let mut outcome = ContractOutcome::Ok;
    for parts in &mut answers {
        let text: String = parts.iter().map(|part| part.as_str()).collect();
        match match_label(&text, labels) {
            Some((_, false)) => {}
            Some((label, true)) => {
                if let Some((first, rest)) = parts.split_first_mut() {
                    **first = label.to_string();
                    for part in rest {
                        part.clear();
                    }
                    outcome = ContractOutcome::Normalized;
                }
            }
            None => return (body, ContractOutcome::Violated),
        }
    }
    drop(answers);
    if outcome == ContractOutcome::Ok {
        return (body, outcome);
    }
    match serde_json::to_vec(&answer) {
        Ok(bytes) => (Bytes::from(bytes), outcome),
        Err(_) => (body, ContractOutcome::Violated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["billing", "technical", "general", "general inquiry"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn labels_match_in_any_case_and_only_exact_ones_stay_untouched() {
        assert_eq!(
            match_label("technical", &labels()),
            Some(("technical", false))
        );
        assert_eq!(
            match_label(" Billing.\n", &labels()),
            Some(("billing", true))
        );
        // A label keeps the case it was configured in, both ways.
        let upper = ["SPAM", "HAM"].map(String::from).to_vec();
        assert_eq!(match_label("SPAM", &upper), Some(("SPAM", false)));
        assert_eq!(match_label("spam", &upper), Some(("SPAM", true)));
    }

    #[test]
    fn a_label_inside_a_sentence_is_pulled_out() {
        assert_eq!(
            match_label("The category is: Technical.", &labels()),
            Some(("technical", true))
        );
        assert_eq!(
            match_label("Category: general inquiry", &labels()),
            Some(("general inquiry", true))
        );
    }

    #[test]
    fn no_label_or_several_is_a_violation() {
        assert_eq!(match_label("I cannot tell.", &labels()), None);
        assert_eq!(match_label("billing or technical", &labels()), None);
        assert_eq!(match_label("nontechnical", &labels()), None);
    }

    #[test]
    fn a_stream_is_judged_without_being_rewritten() {
        assert_eq!(judge(["billing"], &labels()), ContractOutcome::Ok);
        assert_eq!(
            judge(["billing", "It is technical."], &labels()),
            ContractOutcome::Normalizable
        );
        assert_eq!(
            judge(["billing", "no idea"], &labels()),
            ContractOutcome::Violated
        );
        assert_eq!(judge([], &labels()), ContractOutcome::Violated);
    }

    #[test]
    fn apply_rewrites_only_when_it_extracted() {
        let body = Bytes::from_static(
            br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"The category is: Technical."}}]}"#,
        );
        let chat = crate::openai::Endpoint::ChatCompletions.spec();
        let texts = chat.answer_texts.unwrap();
        let (out, outcome) = apply(body, &labels(), texts);
        assert_eq!(outcome, ContractOutcome::Normalized);
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["choices"][0]["message"]["content"], "technical");
        assert_eq!(value["id"], "x");

        let exact = Bytes::from_static(br#"{"choices":[{"message":{"content":"billing"}}]}"#);
        let (out, outcome) = apply(exact.clone(), &labels(), texts);
        assert_eq!((out, outcome), (exact, ContractOutcome::Ok));

        let none = Bytes::from_static(br#"{"choices":[{"message":{"content":"no idea"}}]}"#);
        let (out, outcome) = apply(none.clone(), &labels(), texts);
        assert_eq!((out, outcome), (none, ContractOutcome::Violated));
    }
}
