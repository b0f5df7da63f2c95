//! Stage 3: who the verified assertion names. A token's claims are read by its provider's
//! profile; an attestation document's evidence is flattened into policy strings. The result,
//! [`Subject`], carries everything the later stages need: the workload and claims for policy,
//! and the facts single use and the grant are keyed by.

use super::error::ExchangeError;
use super::trace::Trace;
use super::verify::{Proof, Verified};
use crate::config::{ProviderKind, Role};
use ephemera_attestation::Evidence;
use ephemera_providers::VerifiedToken;
use ephemera_providers::profile::{Workload, scalar_text};
use serde_json::{Map, Value};
use std::sync::Arc;

/// How long the replay store remembers replayable evidence (EC2 instance identity documents).
pub const REPLAYABLE_MEMORY: i64 = 366 * 24 * 3600;

/// What the assertion says about itself, for single use and the grant.
#[derive(Debug)]
pub(super) struct Facts {
    /// The assertion's issuer (for attestation, the provider's synthetic issuer).
    pub(super) issuer: String,
    /// When the assertion was issued.
    pub(super) issued_at: i64,
    /// The earliest moment the broker could have accepted it (`iat` less the provider's leeway,
    /// less one second for whole-second clocks): the replay store refuses it when its memory
    /// began later (an epoch reset), since it may have been used before (review S2/B3).
    pub(super) used_since: i64,
    /// When it stops being valid (`exp`, or the document's deadline).
    pub(super) not_after: i64,
    /// What single use is keyed by, and until when it is remembered.
    pub(super) replay_id: String,
    pub(super) replay_until: i64,
    /// RFC 7800 confirmation for a broker JWT: (member, value).
    pub(super) cnf: Option<(&'static str, String)>,
    /// A broker nonce (base64url) to consume with the grant.
    pub(super) nonce: Option<String>,
    /// The evidence can be replayed (EC2 instance identity documents).
    pub(super) replayable: bool,
}

/// The workload a verified assertion names, for a role. Only this module makes one.
#[derive(Debug)]
pub(crate) struct Subject {
    pub(super) role: Arc<Role>,
    pub(super) workload: Workload,
    /// The claims (or evidence attributes) as verified.
    pub(super) claims: Map<String, Value>,
    pub(super) facts: Facts,
}

/// Stage 3. Writes the workload (and an attestation's evidence) into `trace`.
pub(super) fn workload(verified: Verified, now: i64, trace: &mut Trace) -> Result<Subject, ExchangeError> {
    let (role, proof) = verified.into_parts();
    match proof {
        Proof::Token(token) => from_token(role, token, trace),
        Proof::Evidence(evidence) => from_evidence(role, &evidence, now, trace),
    }
}

fn from_token(role: Arc<Role>, token: VerifiedToken, trace: &mut Trace) -> Result<Subject, ExchangeError> {
    let workload = role.provider.profile.workload(&token).map_err(ExchangeError::Profile)?;
    trace.workload = Some(workload.clone());
    let facts = Facts {
        issuer: token.issuer().to_owned(),
        issued_at: token.issued_at(),
        used_since: token.issued_at() - role.provider.rules.leeway as i64 - 1,
        not_after: token.expires_at(),
        replay_id: token.replay_id().to_owned(),
        replay_until: token.expires_at() + role.provider.rules.leeway as i64,
        cnf: None,
        nonce: None,
        replayable: false,
    };
    Ok(Subject { role, workload, claims: token.into_claims(), facts })
}

fn from_evidence(role: Arc<Role>, evidence: &Evidence, now: i64, trace: &mut Trace) -> Result<Subject, ExchangeError> {
    let provider = &role.provider;
    // Evidence attributes as policy strings (lists joined with `,`), beside `iss` and `sub`.
    let mut attributes = std::collections::BTreeMap::new();
    let mut claims = Map::new();
    for (k, v) in evidence.attributes() {
        let text = match v {
            Value::Array(a) => Some(a.iter().filter_map(scalar_text).collect::<Vec<_>>().join(",")),
            other => scalar_text(other),
        };
        if let Some(t) = text {
            attributes.insert(k.clone(), t.clone());
            claims.insert(k.clone(), Value::String(t));
        }
    }
    claims.insert("iss".into(), Value::String(provider.rules.issuer.clone()));
    claims.insert("sub".into(), Value::String(evidence.subject().to_owned()));
    trace.evidence = Some(claims.clone());
    let workload = Workload {
        subject: evidence.subject().to_owned(),
        task: format!("attestation:{}", &evidence.replay_id()[..evidence.replay_id().len().min(32)]),
        attributes,
    };
    trace.workload = Some(workload.clone());
    if evidence.debug() && !role.allow_debug {
        return Err(ExchangeError::DebugEnclave);
    }
    let required = matches!(&provider.kind, ProviderKind::Attestation { verifier } if verifier.requires_nonce());
    let nonce = match (required, evidence.nonce()) {
        (_, Some(n)) => Some(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, n)),
        (true, None) => return Err(ExchangeError::NonceInvalid("the document carries no broker nonce")),
        (false, None) => None,
    };
    let facts = Facts {
        issuer: provider.rules.issuer.clone(),
        issued_at: evidence.issued_at(),
        used_since: evidence.issued_at() - provider.rules.leeway as i64 - 1,
        not_after: evidence.not_after(),
        replay_id: evidence.replay_id().to_owned(),
        // Replayable evidence (an EC2 IID is the same for the instance's life) is remembered far
        // beyond the credential's cap: a year, after which such a document would be a year old.
        replay_until: if evidence.replayable() {
            now + REPLAYABLE_MEMORY
        } else {
            evidence.not_after() + provider.rules.leeway as i64
        },
        cnf: evidence.key_binding().map(|k| {
            let (member, value) = k.cnf_member();
            (member, value.to_owned())
        }),
        nonce,
        replayable: evidence.replayable(),
    };
    Ok(Subject { role, workload, claims, facts })
}

/// `explain --claims`: the workload of a synthetic claim set (no signature, no verification), for
/// writing roles before any token exists. Times default to now and five minutes from now.
pub(super) fn from_claims(
    role: Arc<Role>,
    claims: &Map<String, Value>,
    now: i64,
    trace: &mut Trace,
) -> Result<Subject, ExchangeError> {
    let jti = claims.get("jti").and_then(|v| v.as_str());
    let workload =
        role.provider.profile.workload_from_claims(claims, jti, "synthetic").map_err(ExchangeError::Profile)?;
    trace.workload = Some(workload.clone());
    let num = |k: &str, d: i64| claims.get(k).and_then(Value::as_i64).unwrap_or(d);
    let (issued_at, not_after) = (num("iat", now), num("exp", now + 300));
    let facts = Facts {
        issuer: claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
        issued_at,
        used_since: issued_at - role.provider.rules.leeway as i64 - 1,
        not_after,
        replay_id: String::new(),
        replay_until: not_after,
        cnf: None,
        nonce: None,
        replayable: false,
    };
    Ok(Subject { role, workload, claims: claims.clone(), facts })
}
