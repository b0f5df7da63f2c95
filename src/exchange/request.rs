//! Stage 0: the request as the RFC 8693 form said it. Form-level problems only; what the
//! transport refuses before a form exists (method, headers, size, query string) is the server's.

use super::error::{Class, ExchangeError, Refusal};
use crate::secret::SubjectToken;
use ephemera_providers::error::escape_untrusted;
use std::collections::HashMap;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub use crate::minting::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
/// Attestation token types (each is one verifier of the `attestation` crate).
pub const ATTESTATION_TOKEN_TYPES: &[&str] = &[
    "urn:ephemera:token-type:nitro-attestation",
    "urn:ephemera:token-type:aws-ec2-iid",
    "urn:ephemera:token-type:x509-pop",
];

/// Most form fields accepted in one request.
pub const MAX_FORM_FIELDS: usize = 32;

/// A token exchange request, as the form said it.
#[derive(Debug)]
pub struct ExchangeRequest {
    pub subject_token: SubjectToken,
    pub subject_token_type: String,
    pub role: String,
    pub requested_token_type: Option<String>,
    /// RFC 9396 `authorization_details` (JSON text), checked against the role in `details.rs`.
    pub authorization_details: Option<String>,
}

/// A malformed request, before any token is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestProblem {
    Missing(&'static str),
    Duplicate(String),
    TooManyFields,
    ConflictingTarget,
    ActorUnsupported,
    ActorIncomplete,
    RequestedTypeUnsupported,
    /// A workload's revocation names no `task`.
    TaskRequired,
}

impl std::fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestProblem::Missing(p) => write!(f, "parameter `{p}` is required"),
            RequestProblem::Duplicate(p) => write!(f, "parameter `{p}` appears more than once"),
            RequestProblem::TooManyFields => write!(f, "more than {MAX_FORM_FIELDS} form fields"),
            RequestProblem::ConflictingTarget => f.write_str("`audience` and `resource` name different roles"),
            RequestProblem::ActorUnsupported => f.write_str("delegation (`actor_token`) is not supported"),
            RequestProblem::ActorIncomplete => f.write_str("`actor_token` and `actor_token_type` must come together"),
            RequestProblem::RequestedTypeUnsupported => f.write_str(
                "`requested_token_type` must be the jwt, access_token or urn:ephemera:token-type:aws-credentials type",
            ),
            RequestProblem::TaskRequired => f.write_str("`task` is required"),
        }
    }
}

/// Parses an RFC 8693 form body. Duplicate parameters are refused (a second `subject_token`
/// must not mean something to one parser and nothing to another); unknown ones are ignored as
/// RFC 6749 §3.2 requires.
pub fn parse_form(body: &[u8]) -> Result<ExchangeRequest, ExchangeError> {
    let bad = ExchangeError::InvalidRequest;
    let mut fields: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(body) {
        if fields.len() >= MAX_FORM_FIELDS {
            return Err(bad(RequestProblem::TooManyFields));
        }
        if fields.iter().any(|(f, _)| *f == k) {
            return Err(bad(RequestProblem::Duplicate(escape_untrusted(&k, 32))));
        }
        fields.push((k.into_owned(), v.into_owned()));
    }
    let mut take = |name: &str| fields.iter().position(|(k, _)| k == name).map(|i| fields.swap_remove(i).1);
    let grant = take("grant_type").ok_or(bad(RequestProblem::Missing("grant_type")))?;
    if grant != GRANT_TOKEN_EXCHANGE {
        return Err(ExchangeError::UnsupportedGrantType);
    }
    let subject_token =
        take("subject_token").filter(|t| !t.is_empty()).ok_or(bad(RequestProblem::Missing("subject_token")))?;
    let subject_token = SubjectToken::new(subject_token);
    let subject_token_type = take("subject_token_type").ok_or(bad(RequestProblem::Missing("subject_token_type")))?;
    match (take("actor_token"), take("actor_token_type")) {
        (None, None) => {}
        (Some(_), Some(_)) => return Err(bad(RequestProblem::ActorUnsupported)),
        _ => return Err(bad(RequestProblem::ActorIncomplete)),
    }
    let role = match (take("audience").filter(|s| !s.is_empty()), take("resource").filter(|s| !s.is_empty())) {
        (Some(a), Some(r)) if a != r => return Err(bad(RequestProblem::ConflictingTarget)),
        (Some(a), _) => a,
        (None, Some(r)) => r,
        (None, None) => return Err(bad(RequestProblem::Missing("audience"))),
    };
    let requested_token_type = take("requested_token_type");
    if requested_token_type.as_deref().is_some_and(|t| {
        t != TOKEN_TYPE_JWT && t != TOKEN_TYPE_ACCESS_TOKEN && t != crate::minting::TOKEN_TYPE_AWS_CREDENTIALS
    }) {
        return Err(bad(RequestProblem::RequestedTypeUnsupported));
    }
    let authorization_details = take("authorization_details");
    Ok(ExchangeRequest { subject_token, subject_token_type, role, requested_token_type, authorization_details })
}

/// The form of an admin request (revoke, introspect): names to values, no repeats.
pub fn parse_admin_form(body: &[u8]) -> Result<HashMap<String, String>, Refusal> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.len() >= MAX_FORM_FIELDS {
            return Err(Refusal::new(Class::TooLarge, "invalid_request", "request_too_large", "too many form fields"));
        }
        if out.insert(k.clone().into_owned(), v.into_owned()).is_some() {
            return Err(Refusal::new(
                Class::Rejected,
                "invalid_request",
                "request_invalid",
                "a parameter appears more than once",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Result<ExchangeRequest, ExchangeError> {
        parse_form(s.as_bytes())
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=abc&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&audience=deploy";

    #[test]
    fn form_rules() {
        assert!(form(BASE).is_ok_and(|r| r.role == "deploy"));
        assert!(matches!(
            form(&format!("{BASE}&subject_token=x")),
            Err(ExchangeError::InvalidRequest(RequestProblem::Duplicate(_)))
        ));
        assert!(matches!(
            form(&BASE.replace("token-exchange", "refresh_token")),
            Err(ExchangeError::UnsupportedGrantType)
        ));
        assert!(matches!(form("grant_type=refresh_token&refresh_token=x"), Err(ExchangeError::UnsupportedGrantType)));
        assert!(matches!(
            form(&format!("{BASE}&actor_token=x")),
            Err(ExchangeError::InvalidRequest(RequestProblem::ActorIncomplete))
        ));
        assert!(matches!(
            form(&format!("{BASE}&resource=other")),
            Err(ExchangeError::InvalidRequest(RequestProblem::ConflictingTarget))
        ));
        let many: String = (0..40).map(|i| format!("&f{i}=1")).collect();
        assert!(matches!(
            form(&format!("{BASE}{many}")),
            Err(ExchangeError::InvalidRequest(RequestProblem::TooManyFields))
        ));
        let no_type = BASE.replace("&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token", "");
        assert!(matches!(
            form(&no_type),
            Err(ExchangeError::InvalidRequest(RequestProblem::Missing("subject_token_type")))
        ));
    }
}
