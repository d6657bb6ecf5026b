//! Every unknown key of the file in one run. The raw types refuse unknown keys
//! (`deny_unknown_fields`), and serde stops at the first; so each one found is set aside — its
//! `key = value` (or its whole `[table]`) blanked out byte for byte, so every line and offset
//! stays the file's — and the file read again, until it reads or fails for another reason.

use super::error::ConfigIssue;
use super::file::ConfigFile;

/// More unknown keys than this in one file is a file of another program: stop listing.
const MOST: usize = 64;

/// The file read with its unknown keys set aside, and those keys. On another error, the text as
/// it was read last (its lines are the file's) with that error.
pub(super) fn read(
    text: &str,
) -> (
    Result<ConfigFile, (String, toml::de::Error)>,
    Vec<ConfigIssue>,
) {
    let mut unknown = Vec::new();
    let mut current = text.to_string();
    loop {
        let err = match toml::from_str::<ConfigFile>(&current) {
            Ok(file) => return (Ok(file), unknown),
            Err(err) => err,
        };
        let (Some(name), Some(span)) = (unknown_key(&err), err.span()) else {
            return (Err((current, err)), unknown);
        };
        if unknown.len() == MOST {
            return (Err((current, err)), unknown);
        }
        let line = current[..span.start.min(current.len())]
            .matches('\n')
            .count()
            + 1;
        let expected = err
            .message()
            .split_once(", ")
            .map_or(String::new(), |(_, rest)| format!("; {}", rest.trim_end()));
        unknown.push(ConfigIssue {
            line: Some(line),
            key: name,
            message: format!("is not a key here{expected}"),
        });
        let masked = mask(&current, span.start);
        if masked == current {
            return (Err((current, err)), unknown);
        }
        current = masked;
    }
}

/// The key serde refused, from its message "unknown field `name`, expected …".
fn unknown_key(err: &toml::de::Error) -> Option<String> {
    let rest = err.message().strip_prefix("unknown field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

/// `text` with the key starting at `at` blanked: the whole table when it is a `[header]`, else the
/// key, its value (however many lines it spans) and the comma that separated it in an inline
/// table. Line breaks stay, so the lines after keep their numbers.
fn mask(text: &str, at: usize) -> String {
    let bytes = text.as_bytes();
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let (start, end) = if text[line_start..].trim_start().starts_with('[') {
        // A table: up to the next header.
        let mut end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
        while end < text.len() && !text[end..].trim_start().starts_with('[') {
            end = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
        }
        (line_start, end)
    } else {
        let Some(equals) = text[at..].find('=').map(|i| at + i) else {
            return text.to_string();
        };
        let (mut end, closed_by) = value_end(bytes, equals + 1);
        // A dotted key (`profile.qualty = …`): its whole path goes with it.
        let path = &text[line_start..at];
        let mut start = if path.trim_end().ends_with('.')
            && path
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-\"' ".contains(c))
        {
            line_start + (path.len() - path.trim_start().len())
        } else {
            at
        };
        if closed_by == Some(b',') {
            end += 1;
        } else if closed_by == Some(b'}') {
            // The last pair of an inline table: take the comma before it instead.
            let before = text[..at].trim_end();
            if before.ends_with(',') {
                start = before.len() - 1;
            }
        }
        (start, end)
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    // Byte for byte, so every span the next reading gives is a span of the file itself.
    for c in text[start..end].chars() {
        if c == '\n' {
            out.push('\n');
        } else {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        }
    }
    out.push_str(&text[end..]);
    out
}

/// Where a value starting at `from` ends, and the byte that ended it (`,` or `}` of an enclosing
/// inline table, or `None` at a line's end or a comment).
fn value_end(bytes: &[u8], from: usize) -> (usize, Option<u8>) {
    let mut depth = 0usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'') => {
                let triple = bytes[i..].starts_with(if quote == b'"' { b"\"\"\"" } else { b"'''" });
                let width = if triple { 3 } else { 1 };
                i += width;
                while i < bytes.len() {
                    if quote == b'"' && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == quote
                        && (!triple || bytes[i..].starts_with(&[quote, quote, quote]))
                    {
                        i += width;
                        break;
                    }
                    if !triple && bytes[i] == b'\n' {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth > 0 => depth -= 1,
            closing @ (b'}' | b',') if depth == 0 => return (i, Some(closing)),
            b'\n' | b'#' if depth == 0 => return (i, None),
            _ => {}
        }
        i += 1;
    }
    (bytes.len(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_listed_with_its_line_and_the_rest_still_reads() {
        let text = "[server]\nlistn = \"127.0.0.1:4000\"\nmax_body_bytes = 10\n\n[ledger]\nurl = \"sqlite://x.db\"\nstore_contnt = [\n  1,\n  2,\n]\n\n[bogus]\nx = 1\n\n[routes.r]\nkind = \"classification\"\ntiers = [\"t\"]\nprofile.qualty = \"frontier\"\n\n[providers.a]\nbase_url = \"http://h/v1\"\ntimeout = { connect_ms = 5, totl_ms = 9 }\nbreaker = { falures = 3, cooldown_ms = 10 }\n";
        let (file, unknown) = read(text);
        let file = file.map_err(|(_, err)| err.to_string()).unwrap();
        let mut found: Vec<(usize, &str)> = unknown
            .iter()
            .map(|issue| (issue.line.unwrap(), issue.key.as_str()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                (2, "listn"),
                (7, "store_contnt"),
                (12, "bogus"),
                (18, "qualty"),
                (22, "totl_ms"),
                (23, "falures"),
            ]
        );
        assert!(
            unknown[0].message.contains("expected one of"),
            "{unknown:?}"
        );
        // What was right is kept.
        assert!(file.server.max_body_bytes.is_some());
        let provider = file.providers.values().next().unwrap();
        assert_eq!(provider.timeout.connect_ms, Some(5));
        assert_eq!(provider.breaker.cooldown_ms, Some(10));
    }

    #[test]
    fn another_mistake_after_the_unknown_keys_stops_the_reading_with_its_own_error() {
        let text = "[server]\nlistn = 1\nmax_body_bytes = \"lots\"\n";
        let (file, unknown) = read(text);
        let (_, err) = file.err().unwrap();
        assert_eq!(unknown.len(), 1);
        assert!(err.message().contains("invalid type"), "{err}");
    }
}
