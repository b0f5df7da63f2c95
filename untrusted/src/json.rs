//! Strict JSON for untrusted documents: duplicate member names are an error (serde_json's maps keep
//! the last one silently, which lets `{"alg":"RS256","alg":"none"}` mean two things to two parsers).
//! Nesting depth is bounded by serde_json's recursion limit (128).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a JSON document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// The same member name twice in one object.
    #[error("duplicate member `{0}`")]
    Duplicate(String),
    /// Not JSON, too deep, a number out of range, or trailing bytes.
    #[error("invalid json: {0}")]
    Syntax(String),
    /// Valid JSON, but not an object at the top level.
    #[error("top-level value is not an object")]
    NotAnObject,
}

struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

/// Marker prefix so a duplicate can be told apart from other serde errors without string guessing
/// on serde_json's own messages.
const DUP_MARKER: &str = "\u{0}ephemera-duplicate:";

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        serde_json::Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(StrictValue(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            match out.entry(key) {
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(v);
                }
                serde_json::map::Entry::Occupied(e) => {
                    return Err(de::Error::custom(format_args!("{DUP_MARKER}{}", e.key())));
                }
            }
        }
        Ok(StrictValue(Value::Object(out)))
    }
}

/// Parses `bytes` as one JSON object, refusing duplicate member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de::Deserialize::deserialize(&mut de).and_then(|v: StrictValue| {
        de.end()?;
        Ok(v)
    });
    match parsed {
        Ok(StrictValue(Value::Object(m))) => Ok(m),
        Ok(_) => Err(StrictJsonError::NotAnObject),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix(DUP_MARKER) {
                Some(rest) => {
                    // serde_json appends " at line L column C"; the member name is what matters.
                    let name = rest.rsplit_once(" at line ").map_or(rest, |(n, _)| n);
                    Err(StrictJsonError::Duplicate(name.to_owned()))
                }
                None => Err(StrictJsonError::Syntax(e.classify_str().to_owned())),
            }
        }
    }
}

trait Classify {
    fn classify_str(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io => "io error",
            Category::Syntax => "syntax error or value out of range",
            Category::Data => "unexpected value",
            Category::Eof => "unexpected end of input",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert_eq!(parse_object(br#"{"alg":"RS256","alg":"none"}"#), Err(StrictJsonError::Duplicate("alg".into())));
        assert_eq!(parse_object(br#"{"a":{"sub":"a","sub":"b"}}"#), Err(StrictJsonError::Duplicate("sub".into())));
        assert!(parse_object(br#"{"alg":"RS256","x":{"alg":"none"}}"#).is_ok());
    }

    #[test]
    fn non_objects_deep_nesting_and_huge_numbers_are_refused() {
        assert_eq!(parse_object(b"[1]"), Err(StrictJsonError::NotAnObject));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse_object(deep.as_bytes()), Err(StrictJsonError::Syntax(_))));
        assert!(matches!(parse_object(br#"{"exp":1e400}"#), Err(StrictJsonError::Syntax(_))));
        assert!(matches!(parse_object(br#"{"a":1} x"#), Err(StrictJsonError::Syntax(_))));
    }
}
