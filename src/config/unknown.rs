//! Reading the TOML shape with every unknown key reported at once, each with its path and the
//! nearest known name ("did you mean"), instead of serde stopping at the first one.
//!
//! The text is parsed once into a TOML table (a syntax error stops here: TOML cannot be read past
//! it), then read into [`RawConfig`] again and again: each unknown key found is noted and taken
//! out, until the shape reads or another kind of problem stops it.

use super::raw::RawConfig;

/// Most unknown keys reported before giving up (a file that is not an ephemera config at all).
const MAX_UNKNOWN: usize = 50;

/// The raw config and the problems of its shape: every unknown key (one with a near known name
/// not given is read as that name, so what follows is still checked: `max_tll` as `max_ttl`).
/// `None` when the shape could not be read at all.
pub(super) fn parse(text: &str, toml_error: impl Fn(&toml::de::Error) -> String) -> (Option<RawConfig>, Vec<String>) {
    match parse_inner(text, toml_error) {
        Ok((raw, errs)) => (Some(raw), errs),
        Err(errs) => (None, errs),
    }
}

fn parse_inner(
    text: &str,
    toml_error: impl Fn(&toml::de::Error) -> String,
) -> Result<(RawConfig, Vec<String>), Vec<String>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| vec![toml_error(&e)])?;
    let mut errs = Vec::new();
    // sections set aside after another kind of problem, so the rest is still read for unknown keys
    let mut set_aside: Vec<String> = Vec::new();
    loop {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) if set_aside.is_empty() => return Ok((raw, errs)),
            Ok(_) => return Err(errs),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().to_string().lines().next().unwrap_or_default().to_owned();
                match unknown_field(&message) {
                    Some((key, expected)) if errs.len() < MAX_UNKNOWN => {
                        let at = if path == "." || path.is_empty() { key.to_owned() } else { path.clone() };
                        let at = if at.ends_with(key) { at } else { format!("{at}.{key}") };
                        let near = suggestion(key, &expected).map(str::to_owned);
                        let hint = near
                            .as_ref()
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_else(|| format!("; known here: {}", expected.join(", ")));
                        errs.push(format!("{at}: unknown key{hint}"));
                        if !remove(&mut table, &path, key, near.as_deref()) {
                            return Err(errs);
                        }
                    }
                    _ => {
                        let root = path == "." || path.is_empty();
                        // a section set aside is missing now: that is not a problem of the file
                        if root && set_aside.iter().any(|s| message == format!("missing field `{s}`")) {
                            return Err(errs);
                        }
                        let at = if root { String::new() } else { format!("{path}: ") };
                        errs.push(format!("{at}{message}"));
                        let section = path.split(['.', '[']).next().unwrap_or_default().to_owned();
                        if root || table.remove(&section).is_none() || errs.len() >= MAX_UNKNOWN {
                            return Err(errs);
                        }
                        set_aside.push(section);
                    }
                }
            }
        }
    }
}

/// `unknown field `x`, expected one of `a`, `b`` (or `expected `a``): the key and the names.
fn unknown_field(message: &str) -> Option<(&str, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    Some((key, expected))
}

/// The known name nearest to `key`, if it is near enough to be the one meant.
pub(super) fn suggestion<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

/// Takes `key` out of the table at `path` (`a.b[2].c`, or the key itself at its end); its value
/// goes under `rename` when that name is not there already (the name it was meant to be).
fn remove(table: &mut toml::Table, path: &str, key: &str, rename: Option<&str>) -> bool {
    let mut segments: Vec<String> = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        match part.split_once('[') {
            Some((name, idx)) => {
                if !name.is_empty() {
                    segments.push(name.to_owned());
                }
                for i in idx.split('[') {
                    segments.push(format!("[{}", i.trim_end_matches(']')));
                }
            }
            None => segments.push(part.to_owned()),
        }
    }
    if segments.last().is_some_and(|s| s == key) {
        segments.pop();
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let removed = {
        let mut node = Some(&mut root);
        for s in &segments {
            node = node.and_then(|n| match s.strip_prefix('[') {
                Some(i) => i.parse::<usize>().ok().and_then(|i| n.get_mut(i)),
                None => n.get_mut(s.as_str()),
            });
        }
        node.and_then(toml::Value::as_table_mut).is_some_and(|t| match t.remove(key) {
            Some(v) => {
                if let Some(r) = rename.filter(|r| !t.contains_key(*r)) {
                    t.insert(r.to_owned(), v);
                }
                true
            }
            None => false,
        })
    };
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_named_with_a_suggestion() {
        let text = r#"
[server]
listen = "127.0.0.1:1"
issuer = "https://b.example"
colour = "red"
[audit]
path = "a.jsonl"
[[providers]]
name = "p"
profile = "oidc"
issuer = "https://ci.example.com"
audience = ["x"]
[[roles]]
name = "r"
provider = "p"
max_tll = "15m"
credential = { kind = "jwt", audience = "a", audiance = "b" }
"#;
        let (_, errs) = parse(text, |e| e.to_string());
        let all = errs.join("\n");
        assert!(all.contains("server.colour: unknown key"), "{all}");
        assert!(all.contains("providers[0].audience: unknown key; did you mean `audiences`?"), "{all}");
        assert!(all.contains("max_tll: unknown key; did you mean `max_ttl`?"), "{all}");
        assert!(all.contains("audiance"), "{all}");
    }

    #[test]
    fn suggestions_are_only_for_near_names() {
        let known = vec!["audiences".to_owned(), "issuer".to_owned()];
        assert_eq!(suggestion("audience", &known), Some("audiences"));
        assert_eq!(suggestion("zebra", &known), None);
    }
}
