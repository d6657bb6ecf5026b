//! What a model can do beyond plain chat ([`Abilities`]), and the models tierwise knows without
//! being told: OpenAI's and Anthropic's context windows and abilities, applied to a tier on such a model wherever
//! its config says nothing (as the built-in prices are). A local server's window is discovered at
//! run time instead (see [`crate::health`]).

/// What a tier's model can do beyond plain chat. Each is assumed unless the config, or the
/// built-in facts of an OpenAI model, say not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abilities {
    pub tools: bool,
    pub json_schema: bool,
    pub vision: bool,
}

impl Abilities {
    pub const ALL: Abilities = Abilities {
        tools: true,
        json_schema: true,
        vision: true,
    };
}

/// What a known model holds and can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// Prompt and answer together, in tokens.
    pub context_tokens: u32,
    pub abilities: Abilities,
}

const ALL: Abilities = Abilities::ALL;
/// Tools and images, but no structured outputs (`response_format` of type `json_schema`).
const NO_SCHEMA: Abilities = Abilities {
    json_schema: false,
    ..Abilities::ALL
};
/// Tools and structured outputs, text only.
const TEXT_ONLY: Abilities = Abilities {
    vision: false,
    ..Abilities::ALL
};

/// OpenAI's and Anthropic's published windows and abilities of the models the price table also
/// knows (Anthropic's from platform.claude.com's model pages, read 2026-12; every current Claude
/// model takes tools, images and a JSON schema).
const BUILT_IN: &[(&str, u32, Abilities)] = &[
    ("gpt-4o", 128_000, ALL),
    ("gpt-4o-mini", 128_000, ALL),
    ("gpt-4.1", 1_047_576, ALL),
    ("gpt-4.1-mini", 1_047_576, ALL),
    ("gpt-4.1-nano", 1_047_576, ALL),
    ("gpt-5", 400_000, ALL),
    ("gpt-5-mini", 400_000, ALL),
    ("gpt-5-nano", 400_000, ALL),
    ("o1", 200_000, ALL),
    ("o3", 200_000, ALL),
    ("o3-mini", 200_000, TEXT_ONLY),
    ("o4-mini", 200_000, ALL),
    ("gpt-4-turbo", 128_000, NO_SCHEMA),
    ("claude-fable-5-2", 1_000_000, ALL),
    ("claude-fable-5-1", 1_000_000, ALL),
    ("claude-fable-5", 1_000_000, ALL),
    ("claude-opus-5-5", 1_000_000, ALL),
    ("claude-opus-5", 1_000_000, ALL),
    ("claude-opus-4-8", 1_000_000, ALL),
    ("claude-opus-4-7", 1_000_000, ALL),
    ("claude-opus-4-6", 1_000_000, ALL),
    ("claude-opus-4-5", 200_000, ALL),
    ("claude-sonnet-5-5", 1_000_000, ALL),
    ("claude-sonnet-5", 1_000_000, ALL),
    ("claude-sonnet-4-6", 1_000_000, ALL),
    ("claude-sonnet-4-5", 200_000, ALL),
    ("claude-haiku-5-5", 1_000_000, ALL),
    ("claude-haiku-4-5", 200_000, ALL),
    (
        "gpt-3.5-turbo",
        16_385,
        Abilities {
            tools: true,
            json_schema: false,
            vision: false,
        },
    ),
];

/// The built-in facts of `model`; a dated snapshot (`gpt-4o-2024-08-06`) is its family's.
pub fn known_model(model: &str) -> Option<KnownModel> {
    let find = |name: &str| {
        BUILT_IN.iter().find(|(known, _, _)| *known == name).map(
            |&(_, context_tokens, abilities)| KnownModel {
                context_tokens,
                abilities,
            },
        )
    };
    find(model).or_else(|| find(undated(model)?))
}

/// Whether `model` is one of OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 and their variants
/// and snapshots). OpenAI refuses `max_tokens` for them ("Unsupported parameter: 'max_tokens' is
/// not supported with this model. Use 'max_completion_tokens' instead."), so an answer's budget
/// goes to them as `max_completion_tokens`, which also bounds their hidden reasoning tokens.
pub fn takes_max_completion_tokens(model: &str) -> bool {
    let family = undated(model).unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|prefix| {
        family
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'))
    })
}

/// `gpt-4o-2024-08-06` → `gpt-4o`, `claude-haiku-4-5-20251001` → `claude-haiku-4-5` (OpenAI's
/// and Anthropic's ways of dating a snapshot); `None` where the name ends in no date.
pub fn undated(model: &str) -> Option<&str> {
    openai_undated(model).or_else(|| anthropic_undated(model))
}

/// `claude-haiku-4-5-20251001` → `claude-haiku-4-5`.
fn anthropic_undated(model: &str) -> Option<&str> {
    let split = model.len().checked_sub("-YYYYMMDD".len())?;
    let (family, date) = (model.get(..split)?, model.get(split..)?.as_bytes());
    let dated = date[0] == b'-' && date[1..].iter().all(u8::is_ascii_digit) && date[1] == b'2';
    (dated && !family.is_empty()).then_some(family)
}

fn openai_undated(model: &str) -> Option<&str> {
    const SUFFIX: usize = "-YYYY-MM-DD".len();
    let split = model.len().checked_sub(SUFFIX)?;
    let (family, date) = (model.get(..split)?, model.get(split..)?.as_bytes());
    let dashes = [0, 5, 8].iter().all(|&i| date[i] == b'-');
    let digits = [1, 2, 3, 4, 6, 7, 9, 10]
        .iter()
        .all(|&i| date[i].is_ascii_digit());
    (dashes && digits && !family.is_empty()).then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_and_their_dated_snapshots_resolve_and_others_do_not() {
        assert_eq!(known_model("gpt-4o").unwrap().context_tokens, 128_000);
        assert_eq!(
            known_model("gpt-4o-2024-08-06"),
            known_model("gpt-4o"),
            "a snapshot is its family"
        );
        let old = known_model("gpt-3.5-turbo").unwrap();
        assert!(old.abilities.tools && !old.abilities.json_schema && !old.abilities.vision);
        assert_eq!(known_model("mistral-7b"), None);
        assert_eq!(known_model("gpt-4o-2024-13"), None);
        assert_eq!(undated("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(undated("gpt-4o"), None);
        assert_eq!(
            undated("claude-haiku-4-5-20251001"),
            Some("claude-haiku-4-5")
        );
        assert_eq!(
            known_model("claude-haiku-4-5-20251001")
                .unwrap()
                .context_tokens,
            200_000
        );
        assert_eq!(undated("claude-opus-4-5"), None);
        assert_eq!(undated("model-1234567"), None);
    }

    #[test]
    fn reasoning_models_and_only_they_take_max_completion_tokens() {
        for model in [
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5.1",
        ] {
            assert!(takes_max_completion_tokens(model), "{model}");
        }
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "o10",
            "mistral-7b",
            "gpt-50",
        ] {
            assert!(!takes_max_completion_tokens(model), "{model}");
        }
    }
}
