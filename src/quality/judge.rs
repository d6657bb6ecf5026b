//! The judge scorer: the reference tier grades the candidate's answer against its own, with a
//! rubric, for routes whose answers no fixed measure compares well (open chat, reasoning). The
//! grade is asked as one integer from 0 to 10 and read back as a fraction; a reply without one is
//! [`Unscorable`], never a guess.

use serde_json::{Value, json};

use super::score::{Scored, Unscorable};
use crate::openai::tokens::text_of;

const RUBRIC: &str = "You grade answers. Compare the candidate answer with the reference answer to the same request. \
Judge substance, not style or length: the same facts, the same decision, the same label or values. \
Reply with one integer from 0 (wrong or unrelated) to 10 (as good as the reference), and nothing else.";

/// The grade is one number: what a grading call may answer with, and what its cost reservation
/// counts.
pub const GRADE_TOKENS: u64 = 5;

/// The grading request for `model`: the client's last user message, then both answers.
pub fn rubric_request(model: &str, request: &Value, candidate: &str, reference: &str) -> Value {
    let asked = request["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .map(|message| text_of(&message["content"]))
        .unwrap_or_default();
    json!({
        "model": model,
        "temperature": 0,
        "max_tokens": GRADE_TOKENS,
        "messages": [
            { "role": "system", "content": RUBRIC },
            { "role": "user", "content": format!(
                "Request:\n{asked}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}"
            ) },
        ],
    })
}

/// The judge's reply read as a grade: the first whole number in it, which must be 0 to 10.
pub fn grade(reply: &str) -> Result<Scored, Unscorable> {
    let digits: String = reply
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let grade: u32 = digits
        .parse()
        .map_err(|_| Unscorable(format!("the judge gave no grade: {:?}", short(reply))))?;
    if grade > 10 {
        return Err(Unscorable(format!(
            "the judge's grade {grade} is not from 0 to 10"
        )));
    }
    Ok(Scored {
        agreement: f64::from(grade) / 10.0,
        detail: format!("graded {grade}/10 by the reference"),
        parts: Vec::new(),
    })
}

fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grade_is_the_first_whole_number_from_0_to_10() {
        assert_eq!(grade("8").unwrap().agreement, 0.8);
        assert_eq!(grade(" 10\n").unwrap().agreement, 1.0);
        assert_eq!(grade("Grade: 0").unwrap().agreement, 0.0);
        assert_eq!(grade("7/10 — close").unwrap().agreement, 0.7);
        assert!(grade("").is_err(), "an empty reply");
        assert!(grade("excellent").is_err(), "no number");
        assert!(grade("42").is_err(), "out of range");
    }

    #[test]
    fn the_rubric_carries_the_question_and_both_answers() {
        let request = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]},
        ]});
        let body = rubric_request(
            "gpt-4o",
            &request,
            "Rayleigh scattering.",
            "Scattering of light.",
        );
        assert_eq!(body["model"], "gpt-4o");
        let asked = body["messages"][1]["content"].as_str().unwrap();
        assert!(asked.contains("Why is the sky blue?"), "{asked}");
        assert!(
            asked.contains("Reference answer:\nScattering of light."),
            "{asked}"
        );
        assert!(
            asked.contains("Candidate answer:\nRayleigh scattering."),
            "{asked}"
        );
    }
}
