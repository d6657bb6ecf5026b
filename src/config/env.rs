//! `${VAR}` and `${VAR:-default}` in string values. Secrets such as upstream API keys come from the
//! environment this way, so the file itself can be committed. A default may itself hold
//! references (`${ADMIN_KEY:-${FALLBACK_KEY}}`); it is read only when the variable is unset.

/// Replaces every `${NAME}` (or `${NAME:-default}`) in `text` using `lookup`. Fails with the first
/// variable that is unset and has no default, naming it. A value that still holds `${` afterwards
/// is refused rather than kept: taken literally, a reference that was meant to be read (a secret
/// most often) would become a string anyone reading the committed file knows.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let out = expand(text, lookup)?;
    if out.contains("${") {
        // The file's own references are all read by now: this `${` came with a variable's value,
        // which is not echoed (it may be a secret).
        return Err(
            "holds `${` after its variables were read (a variable's value contains `${`); tierwise reads variables once and never keeps `${` literally".into(),
        );
    }
    Ok(out)
}

fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = closing_brace(after) else {
            return Err(format!(
                "unclosed `${{` in {text:?}; write ${{NAME}} or ${{NAME:-default}}"
            ));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{inner}}}` is not a valid variable reference; names use letters, digits and _"
            ));
        }
        match (lookup(name), default) {
            (Some(value), default) => {
                // An unused default is still checked, so that a mistake in it shows before the
                // day the variable is unset.
                if let Some(default) = default {
                    expand(default, &|_| Some(String::new()))?;
                }
                out.push_str(&value);
            }
            (None, Some(default)) => out.push_str(&expand(default, lookup)?),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set; export it, or write ${{{name}:-default}} to allow it to be missing"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the `}` that closes a reference is in `text` (what follows its `${`), skipping the
/// references nested in its default.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".to_string()),
            "DOLLAR" => Some("a${b}".to_string()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(interpolate("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(interpolate("${UNSET:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${UNSET:-}", &env).unwrap(), "");
        assert_eq!(interpolate("plain", &env).unwrap(), "plain");
        assert_eq!(interpolate("a}b", &env).unwrap(), "a}b");
    }

    #[test]
    fn a_default_may_hold_references_read_only_when_needed() {
        assert_eq!(interpolate("${UNSET:-${SET}}", &env).unwrap(), "value");
        assert_eq!(
            interpolate("${UNSET:-<${SET}>}!", &env).unwrap(),
            "<value>!"
        );
        assert_eq!(
            interpolate("${UNSET:-${ALSO_UNSET:-${SET}}}", &env).unwrap(),
            "value"
        );
        assert_eq!(interpolate("${SET:-${UNSET}}", &env).unwrap(), "value");
        let err = interpolate("${UNSET:-${ALSO_UNSET}}", &env).unwrap_err();
        assert!(err.contains("ALSO_UNSET is not set"), "{err}");
        assert!(interpolate("${SET:-${bad name}}", &env).is_err());
        assert!(interpolate("${UNSET:-${SET}", &env).is_err());
    }

    #[test]
    fn a_dollar_brace_is_never_kept_literally() {
        let err = interpolate("${DOLLAR}", &env).unwrap_err();
        assert!(err.contains("`${`") && !err.contains("a${b}"), "{err}");
    }

    #[test]
    fn names_the_missing_variable() {
        let err = interpolate("${OPENAI_API_KEY}", &env).unwrap_err();
        assert!(err.contains("OPENAI_API_KEY is not set"), "{err}");
        assert!(interpolate("${oops", &env).is_err());
        assert!(interpolate("${bad name}", &env).is_err());
    }
}
