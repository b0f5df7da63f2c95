//! The native evaluator of a role written as conditions: the same decision Cedar takes on the
//! role's slice, in a few hundred nanoseconds instead of tens of microseconds, still taken on every
//! exchange. Cedar stays the engine (and the reference) for a role with raw `policy` text, and
//! for every role when `[policy] guardrails` are configured; the differential test below holds the
//! two to the same decision, the same failed conditions and the same determining policies.
//!
//! What it mirrors, from the slice `compile.rs` writes:
//! - the `permit` fires when `principal.iss` is the provider's issuer (`principal.provider` is the
//!   role's provider by construction);
//! - each condition's `forbid … unless { has && match }` fires when the value is absent or does
//!   not match; the value is what the Cedar request would carry: `iss`; `sub` (empty when the
//!   token has none, as the request sets it); a declared profile attribute; a raw claim's scalar
//!   text;
//! - exact is string equality; any-of is any alternative; a glob is Cedar's `like` with each `*`
//!   over any text, minus every match where one star's text could contain a `/` or `:` (the
//!   `!(like "…*/*…")` clauses);
//! - the revocation guardrail fires when a revocation key is in force.
//!
//! Allow when the permit fires and no forbid does; the determining policies are the permit on an
//! allow, else the forbids that fired, in id order.

use super::GUARDRAIL_REVOCATION;
use super::matcher::Matcher;

/// A condition's matcher, split once at load.
#[derive(Debug, Clone)]
pub(super) enum Native {
    Exact(String),
    /// The literal text between the stars (one more part than stars).
    Glob(Vec<String>),
    AnyOf(Vec<Native>),
}

impl Native {
    pub(super) fn of(m: &Matcher) -> Native {
        match m {
            Matcher::Exact(s) => Native::Exact(s.clone()),
            Matcher::Glob(p) => Native::Glob(p.split('*').map(str::to_owned).collect()),
            Matcher::AnyOf(ms) => Native::AnyOf(ms.iter().map(Native::of).collect()),
        }
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Native::Exact(s) => s == value,
            Native::AnyOf(ms) => ms.iter().any(|m| m.matches(value)),
            Native::Glob(parts) => {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                if !like(value, &parts) {
                    return false;
                }
                // refused when the text of any one star could hold a separator
                (0..parts.len() - 1).all(|star| {
                    ["/", ":"].iter().all(|sep| {
                        let mut with: Vec<&str> = Vec::with_capacity(parts.len() + 1);
                        with.extend_from_slice(&parts[..=star]);
                        with.push(sep);
                        with.extend_from_slice(&parts[star + 1..]);
                        !like(value, &with)
                    })
                })
            }
        }
    }
}

/// Cedar's `like`: `parts` are the literal texts between `*`s, each `*` any text (empty too).
/// Leftmost matching of the middle parts is exact for patterns whose only wildcard is `*`; the
/// literals are whole UTF-8 strings, so a byte match is a character match.
fn like(value: &str, parts: &[&str]) -> bool {
    let [first, middle @ .., last] = parts else {
        return parts.first().is_some_and(|only| *only == value);
    };
    let Some(rest) = value.strip_prefix(first) else { return false };
    let Some(mut rest) = rest.strip_suffix(last) else { return false };
    // the prefix and the suffix must not overlap
    if value.len() < first.len() + last.len() {
        return false;
    }
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The policies that determined a native decision (Cedar's `reason()`, in id order).
pub(super) fn determining(allow: bool, permit_id: &str, failed: &[&str], revoked: bool) -> Vec<String> {
    if allow {
        return vec![permit_id.to_owned()];
    }
    let mut ids: Vec<String> = failed.iter().map(|s| (*s).to_owned()).collect();
    if revoked {
        ids.push(GUARDRAIL_REVOCATION.to_owned());
    }
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Native {
        Native::of(&Matcher::Glob(p.into()))
    }

    #[test]
    fn like_is_cedars_like() {
        assert!(like("abc", &["abc"]));
        assert!(!like("abcd", &["abc"]));
        assert!(like("abc", &["a", "c"]));
        assert!(like("ac", &["a", "c"]));
        assert!(!like("a", &["a", "a"]), "prefix and suffix overlap");
        assert!(like("aa", &["a", "a"]));
        assert!(like("xaybz", &["x", "a", "b", "z"]));
        assert!(!like("xbyaz", &["x", "a", "b", "z"]));
        assert!(like("", &["", ""]));
        assert!(like("日本語", &["日", "語"]));
    }

    #[test]
    fn stars_stop_at_separators() {
        let g = glob("repo:acme/*");
        assert!(g.matches("repo:acme/app"));
        assert!(g.matches("repo:acme/"));
        assert!(!g.matches("repo:acme/app/x"));
        assert!(!g.matches("repo:acme/app:ref"));
        assert!(!g.matches("repo:other/app"));
        let g = glob("refs/heads/*-release");
        assert!(g.matches("refs/heads/v1-release"));
        assert!(!g.matches("refs/heads/a/b-release"));
        // several ways to match, one of which spans a separator: denied (as Cedar's clauses do)
        let g = glob("a*b*c");
        assert!(g.matches("abbc"));
        assert!(!g.matches("ab/bc"));
    }

    /// The differential test: generated roles (exact, any-of and glob conditions on profile
    /// attributes and raw claims, nested paths among them) and generated claim sets, with
    /// adversarial text for the glob rules (`/`, `:`, `*`, escapes, unicode, empty), decided by
    /// the native evaluator and by Cedar on the same compiled role: the same effect, the same
    /// conditions failed, the same determining policies and guardrails, for every case.
    #[test]
    fn the_native_evaluator_decides_as_cedar_does() {
        use crate::policy::{At, PolicyEngine, RoleSpec};
        use ephemera_providers::profile::{Profile, Workload};
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        use serde_json::{Map, Value, json};
        use std::collections::BTreeMap;

        const ISS: &str = "https://token.actions.githubusercontent.com";
        const ATOMS: &[&str] = &[
            "",
            "a",
            "b",
            "ab",
            "/",
            ":",
            "é",
            "日本",
            "\\",
            "\"",
            "'",
            "\n",
            "\t",
            "\u{0}",
            "a/b",
            "a:b",
            "-",
            ".",
            " ",
            "A",
            "main",
            "refs/heads/",
            "repo:acme/app",
            "\u{1F600}",
        ];
        const ATTRS: &[&str] =
            &["repository", "ref", "environment", "event_name", "workflow_ref", "actor", "sub", "iss"];
        const RAW: &[&str] = &["custom", "nested.inner", "a.b.c", "num", "flag", "missing"];

        // common values most of the time, so that exact values and patterns meet claims often
        const COMMON: &[&str] = &["main", "a", "a/b", "", "repo:acme/app"];
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => prop::sample::select(COMMON).prop_map(str::to_owned),
                1 => prop::sample::select(ATOMS).prop_map(str::to_owned),
                1 => prop::collection::vec(prop::sample::select(ATOMS), 0..4).prop_map(|v| v.concat()),
            ]
        }
        fn one() -> impl Strategy<Value = Matcher> {
            let with_stars = prop::collection::vec(
                prop_oneof![3 => prop::sample::select(ATOMS).prop_map(str::to_owned), 2 => Just("*".to_owned())],
                0..6,
            );
            let globs = prop::sample::select(&["*", "a*", "*b", "repo:*/app", "repo:acme/*", "*:*", "a*/*"][..]);
            prop_oneof![3 => text(), 1 => globs.prop_map(str::to_owned), 2 => with_stars.prop_map(|v| v.concat())]
                .prop_map(|s| if s.contains('*') { Matcher::Glob(s) } else { Matcher::Exact(s) })
        }
        fn matcher() -> impl Strategy<Value = Matcher> {
            prop_oneof![3 => one(), 1 => prop::collection::vec(one(), 1..4).prop_map(Matcher::AnyOf)]
        }
        let names = prop::sample::select([ATTRS, RAW].concat());
        let role = prop::collection::btree_map(names, matcher(), 1..4);
        let value = || {
            prop_oneof![4 => text().prop_map(Value::String), 1 => (0i64..3).prop_map(|n| json!(n)),
            1 => any::<bool>().prop_map(Value::Bool), 1 => Just(json!(["a"]))]
        };
        let attrs = prop::collection::btree_map(prop::sample::select(ATTRS), text(), 0..6);
        let claims = (
            prop::option::of(value()),
            prop::option::of(value()),
            prop::option::of(value()),
            prop::option::of(value()),
            prop::option::of(value()),
        )
            .prop_map(|(sub, custom, inner, abc, num)| {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                };
                put("sub", sub);
                put("custom", custom);
                put("nested", inner.map(|v| json!({ "inner": v })));
                put("a.b", abc.map(|v| json!({ "c": v })));
                put("num", num);
                m
            });
        let case =
            (role, prop::collection::vec((attrs, claims, prop::bool::weighted(0.1), prop::bool::weighted(0.1)), 50));
        let engine = PolicyEngine::new(RAW.iter().map(|s| (*s).to_owned()).collect(), BTreeMap::new(), None).unwrap();
        let mut runner = TestRunner::new(Config { cases: 2_000, failure_persistence: None, ..Config::default() });
        let decided = std::cell::Cell::new(0usize);
        let allowed = std::cell::Cell::new(0usize);
        runner
            .run(&case, |(conditions, sets)| {
                let spec = RoleSpec {
                    name: "r".into(),
                    profile: Profile::GithubActions,
                    issuer: ISS.into(),
                    provider: "gh".into(),
                    conditions: conditions.into_iter().map(|(k, m)| (k.to_owned(), m)).collect(),
                    policy: None,
                    allow_broad: true,
                    trust_anchors: 0,
                };
                let (role, _) = engine.compile(spec).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert!(role.native.is_some());
                for (attributes, claims, other_iss, revoked) in sets {
                    let workload = Workload {
                        subject: "s".into(),
                        task: "t".into(),
                        attributes: attributes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    };
                    let iss = if other_iss { "https://other.example" } else { ISS };
                    let keys = if revoked { vec!["task:gh:t".to_owned()] } else { vec![] };
                    let at = At { times: (100, 90, 400), revoked: &keys, details: None };
                    let native = engine.decide(&role, &workload, &claims, iss, &at);
                    let cedar = engine.decide_cedar(&role, &workload, &claims, iss, &at);
                    prop_assert!(cedar.errors.is_empty(), "{:?}", cedar.errors);
                    prop_assert_eq!(
                        serde_json::to_value(&native).unwrap(),
                        serde_json::to_value(&cedar).unwrap(),
                        "role {:?}, claims {:?}, attributes {:?}",
                        role.conditions(),
                        claims,
                        workload.attributes
                    );
                    decided.set(decided.get() + 1);
                    allowed.set(allowed.get() + usize::from(native.allows()));
                }
                Ok(())
            })
            .unwrap();
        // the generator reaches both outcomes, and the suite its size
        let (decided, allowed) = (decided.get(), allowed.get());
        println!("native vs Cedar: {decided} decisions, {allowed} allowed, all equal");
        assert!(decided >= 100_000, "{decided}");
        assert!(allowed > 1_000 && allowed < decided - 1_000, "{allowed} of {decided}");
    }
}
