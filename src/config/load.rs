//! The layers: built-in defaults → TOML file → `FLOWNEXUS_*` environment →
//! command-line flags, merged into one tree and read into [`Config`].
//!
//! Every problem is collected, not only the first: unknown keys (with the
//! known key they most resemble), values of the wrong type (in words, not
//! Rust's type names) and failed checks. A bad value is replaced by its
//! default so the rest can still be read, and `print-config` shows that
//! merged result with each problem marked beside its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Config, ENV_NOT_KEYS, ENV_PREFIX, Mode, Overrides, Problem};
use crate::error::{Error, Result};

/// The effective configuration with what is wrong with it: a bad value
/// stands at its default in `config`.
pub struct Inspection {
    pub config: Config,
    pub problems: Vec<Problem>,
    /// Keys whose given value could not be read: their default stands in.
    pub defaulted: Vec<String>,
}

impl Inspection {
    /// `print-config`'s text: the merged configuration as TOML, each
    /// problem as a comment beside its key (or at the top, for keys the
    /// tree does not have).
    pub fn annotated(&self) -> String {
        let text = self.config.to_toml();
        let mut out = String::new();
        let mut placed = vec![false; self.problems.len()];
        let mut section = String::new();
        let mut body = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim_matches(['[', ']']).to_string();
            }
            body.push_str(line);
            if let Some((key, _)) = line.split_once(" = ") {
                let dotted = if section.is_empty() {
                    key.trim().to_string()
                } else {
                    format!("{section}.{}", key.trim())
                };
                for (i, p) in self.problems.iter().enumerate() {
                    if !placed[i] && p.key == dotted {
                        let stand_in = if self.defaulted.contains(&p.key) {
                            " (the default stands in)"
                        } else {
                            ""
                        };
                        body.push_str(&format!("  # ERROR: {}{stand_in}", p.reason));
                        placed[i] = true;
                    }
                }
            }
            body.push('\n');
        }
        if !self.problems.is_empty() {
            out.push_str(&format!(
                "# {} configuration problem{}; flownexus will not start until each is fixed.\n",
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" }
            ));
            for (p, done) in self.problems.iter().zip(&placed) {
                if !done {
                    out.push_str(&format!("# ERROR: {}: {}\n", p.key, p.reason));
                }
            }
            out.push('\n');
        }
        out.push_str(&body);
        out
    }
}

impl Config {
    /// Build the effective configuration from every layer and validate it;
    /// every problem found is in the one error.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>, flags: &Overrides) -> Result<Config> {
        Config::inspect(file, env, flags)?.into_result()
    }

    /// [`Config::load`] with the file's text given: `(name, text)`, the
    /// name for errors about the file as a whole.
    pub fn load_text(file: Option<(&str, &str)>, env: &BTreeMap<String, String>, flags: &Overrides) -> Result<Config> {
        Config::inspect_text(file, env, flags)?.into_result()
    }

    /// Every layer read, every problem collected. Only a file that cannot
    /// be read or is not TOML at all is an error here: there is no tree to
    /// show then.
    pub fn inspect(file: Option<&Path>, env: &BTreeMap<String, String>, flags: &Overrides) -> Result<Inspection> {
        let text = match file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|cause| Error::Io {
                path: path.to_owned(),
                cause,
            })?),
            None => None,
        };
        let named = file.zip(text.as_deref()).map(|(p, t)| (p.display().to_string(), t));
        Config::inspect_text(named.as_ref().map(|(n, t)| (n.as_str(), *t)), env, flags)
    }

    /// [`Config::inspect`] with the file's text given.
    pub fn inspect_text(
        file: Option<(&str, &str)>,
        env: &BTreeMap<String, String>,
        flags: &Overrides,
    ) -> Result<Inspection> {
        let file_tree = match file {
            // Not a key's value but the file itself: named as a file.
            Some((name, text)) => Some(toml::from_str::<toml::Table>(text).map_err(|e| Error::Malformed {
                what: "configuration file",
                reason: format!("{name}: {e}"),
            })?),
            None => None,
        };
        // The mode picks the defaults the other layers go over, so it is
        // found first, with the development defaults below it.
        let mut problems = Vec::new();
        let mut mode = Mode::Development;
        let mut tree = layered(mode, file_tree.clone(), env, flags, &mut problems);
        if get_path(&tree, "mode").and_then(toml::Value::as_str) == Some("production") {
            mode = Mode::Production;
            problems.clear();
            tree = layered(mode, file_tree, env, flags, &mut problems);
        }
        let defaults = toml::Table::try_from(Config::defaults(mode)).expect("the default config serialises to a table");
        let mut config = read_tree(tree, &defaults, &mut problems);
        let defaulted = problems.iter().map(|p| p.key.clone()).collect();
        problems.extend(config.problems());
        if !problems.is_empty() {
            // Shown as given, beside what is wrong with them.
            return Ok(Inspection {
                config,
                problems,
                defaulted,
            });
        }
        config.data_dir = absolute(&config.data_dir)?;
        for p in [
            &mut config.lwm2m.models_dir,
            &mut config.fw.cert_file,
            &mut config.fw.key_file,
            &mut config.fw.token_secret_file,
            &mut config.http.secret_file,
            &mut config.events.celery.password_file,
            &mut config.events.webhook_secret_file,
        ] {
            if let Some(dir) = p.as_ref() {
                *p = Some(absolute(dir)?);
            }
        }
        for s in &mut config.fw.sni {
            s.cert_file = absolute(&s.cert_file)?;
            s.key_file = absolute(&s.key_file)?;
        }
        Ok(Inspection {
            config,
            problems,
            defaulted,
        })
    }
}

impl Inspection {
    fn into_result(self) -> Result<Config> {
        if self.problems.is_empty() {
            Ok(self.config)
        } else {
            Err(Error::Configuration(self.problems))
        }
    }
}

/// Deserialises the merged tree. Serde stops at the first value of the
/// wrong type: that key is recorded, put back to its default (or removed,
/// when it has none) and the tree read again, so every such value is
/// reported in one run.
fn read_tree(mut tree: toml::Table, defaults: &toml::Table, problems: &mut Vec<Problem>) -> Config {
    // Deserialise from text so a type error carries a span we can turn
    // back into the dotted key it belongs to.
    loop {
        let text = toml::to_string(&tree).expect("a table serialises");
        let e = match toml::from_str::<Config>(&text) {
            Ok(config) => return config,
            Err(e) => e,
        };
        let key = key_at(&text, &e);
        problems.push(Problem::new(key.clone(), in_words(e.message())));
        match (get_path(&tree, &key).cloned(), get_path(defaults, &key)) {
            (Some(given), Some(default)) if &given != default => set_path(&mut tree, &key, default.clone()),
            (Some(_), None) => remove_path(&mut tree, &key),
            // Not a key we can put right: read the defaults instead, so
            // the report of the other problems still stands.
            _ => {
                return toml::from_str(&toml::to_string(defaults).expect("serialises"))
                    .expect("the defaults read back");
            }
        }
    }
}

/// `mode`'s defaults with the file, the environment and the flags over them.
fn layered(
    mode: Mode,
    file: Option<toml::Table>,
    env: &BTreeMap<String, String>,
    flags: &Overrides,
    problems: &mut Vec<Problem>,
) -> toml::Table {
    let mut tree = toml::Table::try_from(Config::defaults(mode)).expect("the default config serialises to a table");
    let known = known_keys(&tree);
    if let Some(file_tree) = file {
        merge(&mut tree, file_tree, "", &known, problems);
    }
    apply_env(&mut tree, env, problems);
    let set = |tree: &mut toml::Table, key: &str, v: String| set_path(tree, key, v.into());
    if let Some(d) = &flags.data_dir {
        set(&mut tree, "data_dir", d.display().to_string());
    }
    for (key, addr) in [
        ("coap.listen", flags.coap_listen),
        ("coaps.listen", flags.coaps_listen),
        ("http.listen", flags.http_listen),
        ("fw.listen", flags.fw_listen),
    ] {
        if let Some(a) = addr {
            set(&mut tree, key, a.to_string());
        }
    }
    tree
}

/// The dotted key at the error's position in `text` (written by
/// `toml::to_string`: `[section]` headers and one `key = value` a line).
fn key_at(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "config".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let section = before[..line_start]
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    match (section, key.is_empty() || key.starts_with('[')) {
        (_, true) => e.message().lines().next().unwrap_or("config").to_string(),
        (Some(s), false) => format!("{s}.{key}"),
        (None, false) => key.to_string(),
    }
}

/// Serde's and the standard library's messages, which name Rust types
/// (`expected u64`, `invalid socket address syntax`), in an operator's
/// words.
pub(crate) fn in_words(message: &str) -> String {
    let message = message.lines().next().unwrap_or(message).trim();
    if message.contains("socket address") {
        return "expected an IP address and port, e.g. 127.0.0.1:8000, 0.0.0.0:5683 or [::]:5683 \
                (a host name such as localhost is not accepted: addresses are bound, not looked up)"
            .into();
    }
    let wanted = |t: &str| -> String {
        match t.trim() {
            "u8" => "a whole number from 0 to 255".into(),
            "u16" => "a whole number from 0 to 65535".into(),
            "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
            "i8" | "i16" | "i32" | "i64" | "isize" | "an integer" => "a whole number".into(),
            "f32" | "f64" | "a float" => "a number".into(),
            "a string" | "a borrowed string" | "string" => "text in quotes".into(),
            "a boolean" => "true or false".into(),
            "a sequence" => "a list, e.g. [\"a\", \"b\"]".into(),
            other => other.replace('`', ""),
        }
    };
    let got = |g: &str| -> String {
        let g = g.trim();
        for (prefix, shown) in [
            ("string ", "text "),
            ("integer ", ""),
            ("floating point ", ""),
            ("boolean ", ""),
        ] {
            if let Some(v) = g.strip_prefix(prefix) {
                return format!("{shown}{}", v.replace('`', ""));
            }
        }
        g.replace('`', "")
    };
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((g, w)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, got {}", wanted(w), got(g));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((g, w)) = rest.split_once(", expected ")
    {
        return format!("expected {}, got {}", w.replace('`', ""), g.replace('`', ""));
    }
    message.to_string()
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })
}

/// Merge `from` into `into`; keys the defaults do not have are problems,
/// each with the known key it most resembles.
fn merge(into: &mut toml::Table, from: toml::Table, prefix: &str, known: &[String], problems: &mut Vec<Problem>) {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => merge(dst, src, &key, known, problems),
            (Some(toml::Value::Table(_)), v) => problems.push(Problem::new(
                key,
                format!("is a section ([{k}]), not a value: got {}", v.type_str()),
            )),
            (Some(_), v) => {
                into.insert(k, v);
            }
            // Optional keys (None) are absent from the serialised defaults.
            (None, v) if OPTIONAL_KEYS.contains(&key.as_str()) => {
                into.insert(k, v);
            }
            (None, _) => {
                let reason = match closest(&key, known.iter().map(String::as_str)) {
                    Some(k) => format!("unknown key; did you mean `{k}`?"),
                    None => "unknown key (docs/configuration.md lists every key)".into(),
                };
                problems.push(Problem::new(key, reason));
            }
        }
    }
}

/// The candidate nearest `wanted` by edit distance, if near enough to be
/// a slip (at most a third of its length), or else one with the same last
/// part in another section (`http.cert_file` → `fw.cert_file`).
fn closest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    let w = wanted.to_ascii_lowercase();
    let nearest = candidates
        .clone()
        .map(|c| (edit_distance(&w, &c.to_ascii_lowercase()), c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= (w.len() / 3).max(2))
        .map(|(_, c)| c);
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_ascii_lowercase();
    nearest.or_else(|| candidates.clone().find(|c| w.contains('.') && last(c) == last(&w)))
}

/// Levenshtein distance, over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Keys that only a config file can set (lists of tables have no
/// sensible single-variable form); they have no environment name.
pub(super) const FILE_ONLY_KEYS: &[&str] = &["fw.sni", "events.webhooks"];

/// Keys whose default is "unset" and so do not appear in the default tree.
pub(super) const OPTIONAL_KEYS: &[&str] = &[
    "lwm2m.models_dir",
    "fw.cert_file",
    "fw.key_file",
    "fw.token_secret_file",
    "fw.public_url",
    "fw.coap_public_url",
    "http.public_url",
    "http.secret_file",
    "events.celery.broker",
    "events.celery.password_file",
    "events.webhook_secret_file",
];

pub(super) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

/// Every leaf key of the tree, dotted.
pub(super) fn leaf_keys(tree: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in tree {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaf_keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// The leaf keys of the defaults and the optional ones.
fn known_keys(defaults: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    leaf_keys(defaults, "", &mut keys);
    keys.extend(OPTIONAL_KEYS.iter().map(|k| k.to_string()));
    keys
}

fn apply_env(tree: &mut toml::Table, env: &BTreeMap<String, String>, problems: &mut Vec<Problem>) {
    let by_env: BTreeMap<String, String> = known_keys(tree)
        .into_iter()
        .filter(|k| !FILE_ONLY_KEYS.contains(&k.as_str()))
        .map(|k| (env_name(&k), k))
        .collect();
    for (name, raw) in env {
        if !name.starts_with(ENV_PREFIX) || ENV_NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let Some(key) = by_env.get(name) else {
            let reason = match closest(
                name,
                by_env.keys().map(String::as_str).chain(ENV_NOT_KEYS.iter().copied()),
            ) {
                Some(k) => format!("unknown environment variable; did you mean {k}?"),
                None => "unknown environment variable (docs/configuration.md lists every one)".into(),
            };
            problems.push(Problem::new(name.clone(), reason));
            continue;
        };
        let typed = match get_path(tree, key) {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| format!("expected a whole number, got \"{raw}\"")),
            Some(toml::Value::Float(_)) => raw
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| format!("expected a number, got \"{raw}\"")),
            Some(toml::Value::Boolean(_)) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| format!("expected true or false, got \"{raw}\"")),
            // Lists come as comma-separated text (FLOWNEXUS_FW_DEV_NAMES=a,b).
            Some(toml::Value::Array(_)) => Ok(toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| x.to_string().into())
                    .collect(),
            )),
            _ => Ok(toml::Value::String(raw.clone())),
        };
        match typed {
            Ok(value) => set_path(tree, key, value),
            Err(reason) => problems.push(Problem::new(name.clone(), reason)),
        }
    }
}

pub(super) fn get_path<'a>(tree: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut v = tree.get(first)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

fn set_path(tree: &mut toml::Table, key: &str, value: toml::Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = tree;
    for p in &parts[..parts.len() - 1] {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("config sections are tables");
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
}

fn remove_path(tree: &mut toml::Table, key: &str) {
    match key.rsplit_once('.') {
        Some((section, leaf)) => {
            let mut t = Some(tree);
            for p in section.split('.') {
                t = t.and_then(|t| t.get_mut(p)).and_then(toml::Value::as_table_mut);
            }
            if let Some(t) = t {
                t.remove(leaf);
            }
        }
        None => {
            tree.remove(key);
        }
    }
}

/// The `FLOWNEXUS_*` variables of this process.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        for (serde, words) in [
            (
                "invalid type: string \"big\", expected usize",
                "expected a whole number, 0 or more, got text \"big\"",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "expected a whole number, 0 or more, got -1",
            ),
            (
                "invalid value: integer `300`, expected u8",
                "expected a whole number from 0 to 255, got 300",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected text in quotes, got 5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, got text \"yes\"",
            ),
            (
                "unknown variant `prod`, expected `development` or `production`",
                "expected development or production, got prod",
            ),
        ] {
            assert_eq!(in_words(serde), words);
        }
        let addr = in_words("invalid socket address syntax");
        assert!(
            addr.contains("IP address and port") && addr.contains("localhost is not accepted"),
            "{addr}"
        );
    }

    #[test]
    fn near_misses_are_suggested() {
        let keys = ["coap.ack_timeout_ms", "coap.nstart", "fw.cert_file", "http.public_url"];
        let near = |k: &str| closest(k, keys.iter().copied());
        assert_eq!(near("coap.ack_timout_ms"), Some("coap.ack_timeout_ms"));
        assert_eq!(near("coap.nstrat"), Some("coap.nstart"));
        assert_eq!(near("http.cert_file"), Some("fw.cert_file"));
        assert_eq!(near("http.publicurl"), Some("http.public_url"));
        assert_eq!(near("totally.unrelated"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
