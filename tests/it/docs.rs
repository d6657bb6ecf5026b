//! The documents held to the code: every key of the configuration file is in
//! `docs/configuration.md` (and nothing else is), every relative link in README.md and docs/
//! resolves, and the README's first commands are the ones CI and the suite run.
//!
//! The keys are not listed by hand: [`Walker`] is a serde deserializer that feeds the raw config
//! types (`tierwise::config::file`) one made-up value of every field they ask for and records the
//! field names serde hands it, so a key added to the file's types is a key this test expects in
//! the document, with nothing else to update.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, Error};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use tierwise::config::file::ConfigFile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

// ---- the keys of the file ----

/// The name `toml::Spanned` gives `deserialize_struct`; its fields are the span and the value, not
/// keys of the file.
const SPANNED: &str = "$__serde_spanned_private_Spanned";

#[derive(Default)]
struct Keys {
    /// Every key, tables included, as a dotted path (`providers.<name>.breaker.failures`).
    all: BTreeSet<String>,
    /// The keys that hold a table (a struct or a map).
    tables: BTreeSet<String>,
}

#[derive(Clone)]
struct Walker {
    path: String,
    keys: Rc<RefCell<Keys>>,
    /// What a string read here is: a map's key reads as its placeholder name, any other value "".
    text: &'static str,
}

impl Walker {
    fn at(&self, segment: &str) -> Walker {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.path)
        };
        self.keys.borrow_mut().all.insert(path.clone());
        Walker {
            path,
            keys: self.keys.clone(),
            text: "",
        }
    }

    fn table(&self) {
        if !self.path.is_empty() {
            self.keys.borrow_mut().tables.insert(self.path.clone());
        }
    }

    /// How the document names one entry of a map-keyed section.
    fn placeholder(&self) -> &'static str {
        match self.path.rsplit('.').next() {
            Some("prices") => "<model>",
            Some("prompts") => "<tier>",
            _ => "<name>",
        }
    }
}

/// A struct's fields, each once, as a map of field name to a walker one level down.
struct Fields {
    walker: Walker,
    fields: std::slice::Iter<'static, &'static str>,
    /// A `Spanned` wrapper is transparent: its value is at the same key.
    spanned: bool,
    value: Option<Walker>,
}

impl<'de> MapAccess<'de> for Fields
where
    'de: 'static,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(if self.spanned {
            self.walker.clone()
        } else {
            self.walker.at(field)
        });
        seed.deserialize(BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.value.take().expect("a key before its value"))
    }
}

/// A map-keyed section (`[providers.NAME]`) with one entry under its placeholder name.
struct OneEntry {
    walker: Walker,
    done: bool,
}

impl<'de> MapAccess<'de> for OneEntry
where
    'de: 'static,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let key = Walker {
            text: self.walker.placeholder(),
            ..self.walker.clone()
        };
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.walker.at(self.walker.placeholder()))
    }
}

/// A list with one element, so that the element's type is walked too.
struct OneElement(Option<Walker>);

impl<'de> SeqAccess<'de> for OneElement
where
    'de: 'static,
{
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .take()
            .map(|walker| seed.deserialize(walker))
            .transpose()
    }
}

/// An enum read as its first variant.
struct FirstVariant {
    walker: Walker,
    variant: &'static str,
}

impl<'de> de::EnumAccess<'de> for FirstVariant
where
    'de: 'static,
{
    type Error = Error;
    type Variant = Walker;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Walker), Error> {
        let value = seed.deserialize(BorrowedStrDeserializer::new(self.variant))?;
        Ok((value, self.walker))
    }
}

impl<'de> de::VariantAccess<'de> for Walker
where
    'de: 'static,
{
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

macro_rules! zero {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit($($value)?)
        })*
    };
}

/// Keys whose raw type is an untagged enum of plain values (`client_betas = "all"` or a list).
const UNTAGGED_LEAVES: [&str; 1] = [".client_betas"];

impl<'de> de::Deserializer<'de> for Walker
where
    'de: 'static,
{
    type Error = Error;

    /// Types that only say what they are once they see the input (untagged enums, `flatten`)
    /// cannot be walked; a raw type that uses them needs this walker taught, not the test dropped.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // An untagged enum of plain values only (a word or a list of words) has no keys of its
        // own to walk: it is a leaf, named here so that any other untagged type still stops the walk.
        if UNTAGGED_LEAVES.iter().any(|leaf| self.path.ends_with(leaf)) {
            return visitor.visit_str("");
        }
        Err(de::Error::custom(format!(
            "{}: a self-describing type; the key walker cannot enumerate it",
            self.path
        )))
    }

    zero! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_unit => visit_unit(),
        deserialize_ignored_any => visit_unit(),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_byte_buf(Vec::new()),
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.table();
        visitor.visit_map(OneEntry {
            walker: self,
            done: false,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let spanned = name == SPANNED;
        if !spanned {
            self.table();
        }
        visitor.visit_map(Fields {
            walker: self,
            fields: fields.iter(),
            spanned,
            value: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(FirstVariant {
            variant: variants[0],
            walker: self,
        })
    }
}

/// Every key the file accepts, and which of them hold a table.
fn file_keys() -> Keys {
    let keys = Rc::new(RefCell::new(Keys::default()));
    let walker = Walker {
        path: String::new(),
        keys: keys.clone(),
        text: "",
    };
    ConfigFile::deserialize(walker).expect("the raw config types can be walked");
    Rc::into_inner(keys).expect("the walk is over").into_inner()
}

/// The keys `docs/configuration.md` documents: a heading that names a table in backticks
/// (`` ## `[providers.<name>]` ``) opens a section, and each table row under it whose first cell
/// is a key in backticks documents `section.key`. A heading naming no table closes the section.
fn documented_keys(doc: &str) -> Vec<String> {
    let mut section: Option<String> = None;
    let mut keys = Vec::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            section = line.split('`').nth(1).and_then(|code| {
                let table = code.strip_prefix('[')?.strip_suffix(']')?;
                Some(table.replace('"', ""))
            });
        } else if let (Some(section), Some(row)) = (&section, line.strip_prefix('|')) {
            let cell = row.split('|').next().unwrap_or("").trim();
            if let Some(key) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                keys.push(format!("{section}.{key}"));
            }
        }
    }
    keys
}

#[test]
fn every_key_of_the_file_is_in_the_configuration_reference_and_no_other() {
    let keys = file_keys();
    assert!(
        keys.all.contains("providers.<name>.breaker.failures")
            && keys.all.contains("routes.<name>.prompts.<tier>")
            && keys.all.contains("prices.<model>.input"),
        "the walker no longer reaches nested keys: {:?}",
        keys.all
    );
    let doc = read(&root().join("docs/configuration.md"));
    let documented: Vec<String> = documented_keys(&doc);
    let leaves: BTreeSet<&String> = keys.all.difference(&keys.tables).collect();
    let missing: Vec<&&String> = leaves
        .iter()
        .filter(|key| !documented.contains(key))
        .collect();
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|key| !keys.all.contains(*key))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md and the file's types (src/config/file.rs) disagree\n\
         keys the file accepts that the document does not describe: {missing:?}\n\
         keys the document describes that the file does not accept: {unknown:?}"
    );
}

// ---- links ----

/// The text of a Markdown file without its fenced code blocks and inline code, where `](` is code.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                out.push_str(part);
            }
        }
        out.push('\n');
    }
    out
}

/// The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as `-`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 1;
        while !anchors.insert(anchor.clone()) {
            anchor = format!("{slug}-{n}");
            n += 1;
        }
    }
    anchors
}

/// The targets of a file's Markdown links, `[text](target)`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        targets.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    targets
}

/// What is wrong with each relative link of the file at `path`.
fn broken_links(path: &Path) -> Vec<String> {
    let markdown = read(path);
    let dir = path.parent().unwrap();
    let mut broken = Vec::new();
    for target in link_targets(&markdown) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, fragment) = match target.split_once('#') {
            Some((file, fragment)) => (file, Some(fragment)),
            None => (target.as_str(), None),
        };
        let resolved = if file.is_empty() {
            path.to_path_buf()
        } else {
            dir.join(file)
        };
        if !resolved.exists() {
            broken.push(format!("{}: ({target}) names no file", path.display()));
            continue;
        }
        if let Some(fragment) = fragment
            && resolved.extension().is_some_and(|ext| ext == "md")
            && !anchors(&read(&resolved)).contains(fragment)
        {
            broken.push(format!(
                "{}: ({target}) names no heading of {}",
                path.display(),
                resolved.display()
            ));
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            files.push(path);
        }
    }
    let broken: Vec<String> = files
        .iter()
        .flat_map(|f| broken_links(f.as_path()))
        .collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn link_checking_sees_a_broken_file_and_a_broken_anchor() {
    let markdown = "# Top\n[ok](#top) [gone](nowhere.md) `[code](not-a-link)`\n";
    assert_eq!(
        link_targets(markdown),
        vec!["#top".to_string(), "nowhere.md".to_string()]
    );
    assert!(anchors("## `[server]`\n## Failures and fallback\n").contains("failures-and-fallback"));
    assert!(anchors("## `[server]`\n").contains("server"));
}

// ---- the README's first commands ----

/// The commands of the README's first code block, comments removed.
fn readme_first_commands() -> Vec<String> {
    let readme = read(&root().join("README.md"));
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("```"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .collect();
    block
        .iter()
        .map(|line| line.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|command| !command.is_empty() && !command.starts_with('#'))
        .collect()
}

/// The README opens with two commands: the test command is exactly what CI's `.ci/run` execs,
/// and the run command is `cargo run -- <tierwise arguments>`, which the next test runs.
#[test]
fn the_readmes_test_command_is_the_one_ci_runs() {
    let commands = readme_first_commands();
    assert_eq!(commands.len(), 2, "the README's first block: {commands:?}");
    let ci = read(&root().join(".ci/run"));
    let exec = ci
        .lines()
        .find_map(|line| line.strip_prefix("exec "))
        .expect(".ci/run ends by exec-ing the test command")
        .trim();
    assert!(
        commands.iter().any(|command| command == exec),
        ".ci/run runs {exec:?}; the README's first block says {commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|command| command.starts_with("cargo run -- ")),
        "no run command in the README's first block: {commands:?}"
    );
}

/// The README's run command, as a newcomer types it (with a short workload, any free port and a
/// scratch directory): the demo runs, stays up with its dashboard, and stops cleanly on Ctrl-C.
#[test]
fn the_readmes_run_command_serves_the_demo_and_stops_on_ctrl_c() {
    let commands = readme_first_commands();
    let run = commands
        .iter()
        .find_map(|command| command.strip_prefix("cargo run -- "))
        .expect("a run command in the README's first block");
    let args: Vec<&str> = run.split_whitespace().collect();
    assert_eq!(args.first(), Some(&"demo"), "{run}");
    let dir = std::env::temp_dir().join(format!("tierwise-docs-demo-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .env("TIERWISE_LOG", "warn")
        .args(&args)
        .args(["--duration", "2s", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, stderr) = std::sync::mpsc::channel();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let serves = args.contains(&"--serve");
    if serves {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(line) if line.contains("stay up") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    child.kill().ok();
                    panic!("the demo never said it stays up:\n{}", seen.join("\n"));
                }
            }
        }
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
    // Waiting on the exit in a thread of its own lets the test give up at a deadline.
    let pid = child.id().to_string();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(child.wait().unwrap()));
    let Ok(status) = exit.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        Command::new("kill").args(["-KILL", &pid]).status().ok();
        panic!("the demo did not stop:\n{}", seen.join("\n"));
    };
    assert!(status.success(), "{status}:\n{}", seen.join("\n"));
    std::fs::remove_dir_all(dir).ok();
}

/// The README's small config is one a newcomer can copy: it resolves, with its `${VAR}`s set.
#[test]
fn the_readmes_small_config_resolves() {
    let readme = read(&root().join("README.md"));
    let toml: String = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block in the README")
        .to_string();
    // Each variable its own value: a client key equal to the admin key is refused.
    let config = tierwise::config::Config::parse(&toml, Path::new("tierwise.toml"), &|name| {
        Some(format!("set-{name}"))
    })
    .unwrap_or_else(|err| panic!("the README's config: {err}"));
    assert!(!config.routes.is_empty());
}
