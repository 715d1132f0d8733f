//! `ops/ringmail.toml.example` tells the truth: loaded as the daemon loads a config
//! file (`Config::parse`), it equals `Config::default()` key by key, and it shows
//! every key. Both sides are serialized to JSON and walked together, so a mismatch
//! names its key path.
//!
//! What the example must show for a key, by the kind of its default:
//! - a value (number, string, bool, list): the key uncommented, with the default;
//! - `None` (an optional key, absent by default; TOML has no null): the key commented
//!   out, `# key = <illustration>`, under its `[section]`, and not set;
//! - a top-level array of tables, empty by default (`[[egress]]`, and `RULE_LISTS`,
//!   which `Config` does not serialize): a commented-out `# [[name]]` entry, none set;
//! - a key in `REQUIRED` (no usable default: `Config::check` refuses it): the key
//!   uncommented with a working value, which is not compared.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Config;

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/ringmail.toml.example");

/// Keys whose default the daemon refuses; the example gives a working value instead.
const REQUIRED: &[&str] = &["dns.nameservers"];

/// Arrays of tables left out of `Config`'s serialization (`policy`'s rule types are not
/// `Serialize`); checked apart: shown commented, none set.
const RULE_LISTS: &[&str] = &["site", "bounce_rule"];

/// Every way `text` departs from `Config::default()`, one line per key path.
fn mismatches(text: &str) -> Vec<String> {
    let loaded = Config::parse(text, EXAMPLE_PATH).unwrap_or_else(|error| panic!("{error}"));
    let uncommented: toml::Value = toml::from_str(text).unwrap_or_else(|error| panic!("{error}"));
    let commented = commented_keys(text);
    let default = serde_json::to_value(Config::default()).unwrap();
    let loaded_value = serde_json::to_value(&loaded).unwrap();
    let example = Example { uncommented: &uncommented, commented: &commented };
    let mut found = Vec::new();
    example.walk("", &default, &loaded_value, &mut found);
    if !loaded.sites.is_empty() || !loaded.bounce_rules.is_empty() {
        found.push("site/bounce_rule: the example sets entries; default none (show them commented)".into());
    }
    for name in RULE_LISTS {
        if !commented.contains(&format!("[[{name}]]")) {
            found.push(format!("{name}: missing from the example (show a commented-out `# [[{name}]]` entry)"));
        }
    }
    found
}

struct Example<'a> {
    /// The example as TOML: only what is not commented out.
    uncommented: &'a toml::Value,
    /// `section.key` of each commented-out `# key = ...` line, and `[[name]]` of each
    /// commented-out array-of-tables header.
    commented: &'a BTreeSet<String>,
}

impl Example<'_> {
    fn walk(&self, path: &str, default: &Value, loaded: &Value, found: &mut Vec<String>) {
        if let Value::Object(keys) = default {
            for (key, default) in keys {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                self.walk(&path, default, &loaded[key.as_str()], found);
            }
            return;
        }
        let shown = self.uncommented(path).is_some();
        let top_level = !path.contains('.');
        if default.is_null() {
            if !loaded.is_null() || shown {
                found.push(format!("{path}: example {loaded} vs default None (show it commented out)"));
            } else if !self.commented.contains(path) {
                let (section, key) = path.rsplit_once('.').unwrap_or(("", path));
                found.push(format!(
                    "{path}: missing from the example (show it commented out: `# {key} = ...` in [{section}])"
                ));
            }
        } else if top_level && default.is_array() {
            if loaded != default {
                found.push(format!("{path}: example {loaded} vs default {default} (show entries commented out)"));
            }
            if !self.commented.contains(&format!("[[{path}]]")) {
                found.push(format!("{path}: missing from the example (show a commented-out `# [[{path}]]` entry)"));
            }
        } else if !shown {
            found.push(format!("{path}: missing from the example (default {default})"));
        } else if loaded != default && !REQUIRED.contains(&path) {
            found.push(format!("{path}: example {loaded} vs default {default}"));
        }
    }

    fn uncommented(&self, path: &str) -> Option<&toml::Value> {
        path.split('.').try_fold(self.uncommented, |value, key| value.get(key))
    }
}

/// The commented-out keys of `text`, as `section.key`, and commented-out `[[name]]`
/// headers. A commented `[[name]]` opens its section, as it will once uncommented.
fn commented_keys(text: &str) -> BTreeSet<String> {
    let bare =
        |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        let (commented, content) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if let Some(name) = content.strip_prefix("[[").and_then(|rest| rest.strip_suffix("]]")).filter(|n| bare(n)) {
            section = name.to_string();
            if commented {
                keys.insert(format!("[[{name}]]"));
            }
        } else if let Some(name) = content.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).filter(|n| bare(n))
        {
            section = name.to_string();
        } else if let Some((key, _)) = content.split_once('=').filter(|(key, _)| commented && bare(key.trim())) {
            keys.insert(format!("{section}.{}", key.trim()));
        }
    }
    keys
}

fn example() -> String {
    std::fs::read_to_string(EXAMPLE_PATH).unwrap_or_else(|error| panic!("{EXAMPLE_PATH}: {error}"))
}

#[test]
fn example_shows_every_key_with_its_default() {
    let found = mismatches(&example());
    assert!(found.is_empty(), "{EXAMPLE_PATH} vs Config::default():\n{}", found.join("\n"));
}

#[test]
fn a_wrong_missing_or_set_key_is_named() {
    let text = example();
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from), "the example no longer has {from:?}");
        mismatches(&text.replacen(from, to, 1))
    };
    let found = edit("relay_networks = []\n", "relay_networks = [\"127.0.0.1/32\"]\n");
    assert_eq!(found, ["smtp.relay_networks: example [\"127.0.0.1/32\"] vs default []"]);
    let found = edit("\ntimeout_ms = 5000\n", "\n");
    assert_eq!(found, ["dns.timeout_ms: missing from the example (default 5000)"]);
    let found = edit("# hostname = \"mx.example.com\"\n", "hostname = \"mx.example.com\"\n");
    assert_eq!(found, ["smtp.hostname: example \"mx.example.com\" vs default None (show it commented out)"]);
    let found = edit("# path = \"/var/log/ringmail/delivery.jsonl\"\n", "");
    assert_eq!(found, ["log.path: missing from the example (show it commented out: `# path = ...` in [log])"]);
    let found = edit("nameservers = [\"127.0.0.1:53\"]\n", "nameservers = [\"192.0.2.53:53\"]\n");
    assert!(found.is_empty(), "a required key's value is not compared: {found:?}");
}
