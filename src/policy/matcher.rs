//! Conditions: what a role's `conditions` table compiles to. A matcher is exact, a glob or any
//! of several; it compiles to a Cedar expression.

use serde::Serialize;

/// What a condition accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Matcher {
    Exact(String),
    Glob(String),
    AnyOf(Vec<Matcher>),
}

impl Matcher {
    /// From a config value: a string (exact, or a glob when it holds `*`) or an array of them.
    pub fn parse(v: &toml::Value) -> Result<Matcher, String> {
        let one = |s: &str| if s.contains('*') { Matcher::Glob(s.to_owned()) } else { Matcher::Exact(s.to_owned()) };
        match v {
            toml::Value::String(s) => Ok(one(s)),
            toml::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map(one).ok_or_else(|| "array members must be strings".to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map(Matcher::AnyOf),
            toml::Value::Array(_) => Err("an empty array matches nothing".into()),
            other => Err(format!("expected a string or an array of strings, got {}", other.type_str())),
        }
    }

    /// Every alternative is an exact value (a pin, not a pattern).
    pub fn is_exact(&self) -> bool {
        match self {
            Matcher::Exact(_) => true,
            Matcher::Glob(_) => false,
            Matcher::AnyOf(m) => m.iter().all(Matcher::is_exact),
        }
    }

    /// The exact values this matcher accepts, every alternative of a list included (a lint
    /// that checks values must see them all, review C10).
    pub(super) fn exact_values(&self) -> Vec<&str> {
        match self {
            Matcher::Exact(v) => vec![v.as_str()],
            Matcher::Glob(_) => vec![],
            Matcher::AnyOf(m) => m.iter().flat_map(Matcher::exact_values).collect(),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Matcher::Exact(s) | Matcher::Glob(s) => s.clone(),
            Matcher::AnyOf(m) => format!("one of [{}]", m.iter().map(Matcher::describe).collect::<Vec<_>>().join(", ")),
        }
    }

    pub(super) fn cedar(&self, target: &str) -> String {
        match self {
            Matcher::Exact(s) => format!("{target} == {}", cedar_str(s)),
            Matcher::Glob(p) => {
                let parts: Vec<&str> = p.split('*').collect();
                let join = |star: Option<(usize, &str)>| -> String {
                    let mut out = String::new();
                    for (i, lit) in parts.iter().enumerate() {
                        out.push_str(&like_escape(lit));
                        if i + 1 < parts.len() {
                            match star {
                                Some((j, sep)) if j == i => out.push_str(&format!("*{sep}*")),
                                _ => out.push('*'),
                            }
                        }
                    }
                    format!("\"{out}\"")
                };
                let mut clauses = vec![format!("{target} like {}", join(None))];
                for i in 0..parts.len().saturating_sub(1) {
                    for sep in ["/", ":"] {
                        clauses.push(format!("!({target} like {})", join(Some((i, sep)))));
                    }
                }
                format!("({})", clauses.join(" && "))
            }
            Matcher::AnyOf(m) => format!("({})", m.iter().map(|x| x.cedar(target)).collect::<Vec<_>>().join(" || ")),
        }
    }
}

/// A Cedar string literal.
pub(super) fn cedar_str(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

/// A literal for inside a Cedar `like` pattern (escapes, with `*` already split out).
fn like_escape(s: &str) -> String {
    s.escape_default().to_string()
}

/// Where a condition reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A normalised attribute of the profile.
    Attribute,
    /// A raw claim (dotted path for nested claims).
    Claim,
}

/// One condition of a role.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub claim: String,
    pub matcher: Matcher,
    pub source: Source,
}

impl Condition {
    pub(super) fn policy_id(&self, role: &str) -> String {
        format!("role:{role}/condition:{}", self.claim)
    }

    pub(super) fn cedar_expr(&self) -> String {
        let (obj, key) = match self.source {
            Source::Attribute => ("principal", cedar_str(&self.claim)),
            Source::Claim => ("context.claims", cedar_str(&self.claim)),
        };
        format!("{obj} has {key} && {}", self.matcher.cedar(&format!("{obj}[{key}]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_compiles_so_stars_stop_at_separators() {
        let m = Matcher::Glob("repo:acme/*".into());
        let e = m.cedar("x");
        assert!(e.contains(r#"x like "repo:acme/*""#), "{e}");
        assert!(e.contains(r#"!(x like "repo:acme/*/*")"#), "{e}");
        assert!(e.contains(r#"!(x like "repo:acme/*:*")"#), "{e}");
    }

    #[test]
    fn string_literals_are_escaped() {
        assert_eq!(cedar_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
