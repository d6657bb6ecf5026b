//! `${VAR}` and `${VAR:-default}` in string values. Secrets such as upstream API keys come from the
//! environment this way, so the file itself can be committed.

/// Replaces every `${NAME}` (or `${NAME:-default}`) in `text` using `lookup`. Fails with the first
/// variable that is unset and has no default, naming it.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
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
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
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

#[cfg(test)]
mod tests {
    use super::interpolate;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(interpolate("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(interpolate("${UNSET:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${UNSET:-}", &env).unwrap(), "");
        assert_eq!(interpolate("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn names_the_missing_variable() {
        let err = interpolate("${OPENAI_API_KEY}", &env).unwrap_err();
        assert!(err.contains("OPENAI_API_KEY is not set"), "{err}");
        assert!(interpolate("${oops", &env).is_err());
        assert!(interpolate("${bad name}", &env).is_err());
    }
}
