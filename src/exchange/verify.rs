//! Stages 1–2: classify the request (its token type, its role, the role's provider) and verify
//! the assertion: a JWT against its issuer's keys, or an attestation document against the
//! provider's pinned root. The result, [`Verified`], is the only way into stage 3.

use super::error::ExchangeError;
use super::request::{ATTESTATION_TOKEN_TYPES, ExchangeRequest, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};
use super::trace::{CheckOutcome, CheckStatus, TokenSummary, Trace};
use crate::config::{Config, Provider, ProviderKind, Role};
use crate::secret::SubjectToken;
use ephemera_attestation::{Evidence, Verifier};
use ephemera_providers::error::escape_untrusted;
use ephemera_providers::{KeyCache, KeySource, VerifiedToken, VerifyError};
use std::sync::Arc;

/// What verified: a token's claims or an attestation document's evidence.
#[derive(Debug)]
pub(super) enum Proof {
    Token(VerifiedToken),
    Evidence(Evidence),
}

/// An assertion that verified, for a role that exists and takes its token type. Only [`verify`]
/// makes one.
#[derive(Debug)]
pub(crate) struct Verified {
    role: Arc<Role>,
    proof: Proof,
}

impl Verified {
    pub(super) fn into_parts(self) -> (Arc<Role>, Proof) {
        (self.role, self.proof)
    }
}

/// The role a request names, if the config has it.
pub(super) fn role(config: &Config, name: &str) -> Result<Arc<Role>, ExchangeError> {
    config.roles.get(name).cloned().ok_or_else(|| ExchangeError::UnknownRole(escape_untrusted(name, 64)))
}

/// Stages 1–2. Writes the provider, the checks and the token summary into `trace`.
pub(super) async fn verify(
    keys: &KeyCache,
    config: &Config,
    req: &ExchangeRequest,
    now: i64,
    trace: &mut Trace,
) -> Result<Verified, ExchangeError> {
    let t = req.subject_token_type.as_str();
    if !(t == TOKEN_TYPE_ID_TOKEN || t == TOKEN_TYPE_JWT || ATTESTATION_TOKEN_TYPES.contains(&t)) {
        return Err(ExchangeError::UnsupportedTokenType(escape_untrusted(t, 80)));
    }
    let role = role(config, &req.role)?;
    let provider = role.provider.clone();
    trace.provider = Some(provider.name.clone());
    trace.profile = Some(provider.profile.name());
    if !provider.profile.token_types().contains(&t) {
        return Err(ExchangeError::UnsupportedTokenType(format!(
            "{} (role `{}` takes {})",
            escape_untrusted(t, 80),
            role.name,
            provider.profile.token_types().join(" or ")
        )));
    }
    let source = match &provider.kind {
        ProviderKind::Attestation { verifier } => {
            let evidence = attest(verifier, &req.subject_token, now, trace)?;
            return Ok(Verified { role, proof: Proof::Evidence(evidence) });
        }
        ProviderKind::Oidc { source } => source,
    };
    let verified = verify_token(keys, &provider, source, &req.subject_token, now).await;
    trace.record_checks(verified.as_ref().err());
    let token = verified.map_err(ExchangeError::Token)?;
    trace.token = Some(TokenSummary {
        issuer: token.issuer().to_owned(),
        subject: token.subject().to_owned(),
        audience: token.audience().to_owned(),
        issued_at: token.issued_at(),
        not_before: token.not_before(),
        expires_at: token.expires_at(),
        alg: format!("{:?}", token.alg()),
        kid: token.kid().map(str::to_owned),
    });
    Ok(Verified { role, proof: Proof::Token(token) })
}

/// A JWT: shape and size, the issuer's keys (fetched or cached), the signature, the claims (one
/// call into the providers crate); a failure is refined by the provider's profile (a look-alike
/// issuer, a platform's own words).
async fn verify_token(
    keys: &KeyCache,
    provider: &Provider,
    source: &KeySource,
    token: &SubjectToken,
    now: i64,
) -> Result<VerifiedToken, VerifyError> {
    keys.verify(&provider.name, source, &provider.rules, token.expose(), now)
        .await
        .map_err(|e| provider.profile.refine(e))
}

/// An attestation document, by the provider's verifier.
fn attest(verifier: &Verifier, token: &SubjectToken, now: i64, trace: &mut Trace) -> Result<Evidence, ExchangeError> {
    let verified = verifier.verify(token.expose(), now);
    trace.checks = vec![CheckOutcome {
        check: "attestation",
        description: "document structure, signature, certificate chain to the pinned root at its time and now, freshness",
        status: if verified.is_ok() { CheckStatus::Pass } else { CheckStatus::Fail },
        detail: verified.as_ref().err().map(ToString::to_string),
    }];
    verified.map_err(ExchangeError::Attestation)
}
