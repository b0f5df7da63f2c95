//! `[[providers]]`: who may present assertions. An OIDC provider is an issuer, its audiences,
//! algorithms and key source, read through a profile; an attestation provider is a verifier of
//! the `attestation` crate over pinned roots.

use super::defaults::*;
use super::raw::RawProvider;
use super::{opt_secs, parse_duration};
use ephemera_attestation::Verifier;
use ephemera_providers::cache::KeySource;
use ephemera_providers::fetch::{self, IssuerProblem};
use ephemera_providers::profile::Profile;
use ephemera_providers::{Algorithm, KeySet, TokenRules};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A configured identity provider, ready to verify.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub profile: Profile,
    /// The issuer (for attestation, the provider's synthetic `urn:ephemera:…` issuer) and the
    /// leeway; for OIDC also audiences, algorithms and token limits.
    pub rules: TokenRules,
    pub kind: ProviderKind,
    /// github-actions, gitlab: the platform's webhook secret (task-end events).
    pub webhook_secret: Option<crate::secret::SharedSecret>,
}

/// The shortest webhook secret accepted, bytes.
const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// `webhook_secret_file`: read, trimmed, long enough; only for platforms that send task ends.
fn webhook_secret(
    key: &str,
    p: &RawProvider,
    profile: Option<Profile>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<crate::secret::SharedSecret> {
    let file = p.webhook_secret_file.as_ref()?;
    if !matches!(profile, Some(Profile::GithubActions | Profile::Gitlab)) {
        errs.push(format!(
            "{key}.webhook_secret_file: only github-actions and gitlab providers take task-end webhooks"
        ));
        return None;
    }
    let path = resolve(file);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let trimmed = text.trim();
            if trimmed.len() < MIN_WEBHOOK_SECRET_BYTES {
                errs.push(format!(
                    "{key}.webhook_secret_file: {}: the secret must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes",
                    path.display()
                ));
                return None;
            }
            Some(crate::secret::SharedSecret::new(trimmed.as_bytes().to_vec()))
        }
        Err(e) => {
            errs.push(format!("{key}.webhook_secret_file: {}: {e}", path.display()));
            None
        }
    }
}

/// What verifies a provider's assertions.
#[derive(Debug)]
pub enum ProviderKind {
    /// An OIDC issuer: tokens verify against these keys.
    Oidc { source: KeySource },
    /// An attestation verifier over pinned roots (it says whether a broker nonce is required).
    Attestation { verifier: Verifier },
}

/// Every `[[providers]]` entry, in order; a duplicate name is an error.
pub(super) fn build_all(
    raw: &[RawProvider],
    broker_issuer: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Vec<Arc<Provider>> {
    let mut providers: Vec<Arc<Provider>> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let key = format!("providers[{i}] (`{}`)", p.name);
        if providers.iter().any(|q| q.name == p.name) {
            errs.push(format!("{key}.name: duplicate provider name"));
        }
        if let Some(provider) = build(&key, p, broker_issuer, resolve, errs) {
            providers.push(Arc::new(provider));
        }
    }
    providers
}

fn parse_algorithms(key: &str, names: &Option<Vec<String>>, errs: &mut Vec<String>) -> Vec<Algorithm> {
    let Some(names) = names else {
        return vec![Algorithm::RS256, Algorithm::ES256];
    };
    let all = ephemera_providers::jose::ASYMMETRIC_ALGORITHMS;
    let mut out = Vec::new();
    for n in names {
        match ephemera_providers::jose::parse_alg(n, all) {
            Ok(a) => out.push(a),
            Err(_) => errs.push(format!(
                "{key}.algorithms: `{n}` is not allowed (asymmetric JWS algorithms only; never none or HS*)"
            )),
        }
    }
    if out.is_empty() {
        errs.push(format!("{key}.algorithms: at least one algorithm is required"));
    }
    out
}

/// One `[[providers]]` entry, checked and built (an OIDC issuer or an attestation verifier).
pub(super) fn build(
    key: &str,
    p: &RawProvider,
    broker_issuer: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<Provider> {
    let before = errs.len();
    if p.name.is_empty() {
        errs.push(format!("{key}.name: must not be empty"));
    } else if !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        // (the name is the namespace of revocation keys, `task:NAME:ID`: no `:` in it)
        errs.push(format!("{key}.name: letters, digits, `-`, `_` and `.` only"));
    }
    let profile = Profile::parse(&p.profile).map_err(|e| errs.push(format!("{key}.profile: {e}"))).ok();
    if let Some(profile) = profile.filter(|p| p.is_attestation()) {
        return build_attestation(key, p, profile, broker_issuer, resolve, errs);
    }
    match fetch::validate_issuer(&p.issuer) {
        Ok(_) => {}
        Err(IssuerProblem::HttpNotLoopback) if p.allow_insecure_issuer && p.jwks_file.is_some() => {}
        Err(e @ IssuerProblem::HttpNotLoopback) if p.allow_insecure_issuer => {
            errs.push(format!(
                "{key}.allow_insecure_issuer: only allowed with jwks_file (nothing may be fetched over http) ({e})"
            ));
        }
        Err(e) => errs.push(format!("{key}.issuer: `{}` {e}", p.issuer)),
    }
    if p.issuer.trim_end_matches('/') == broker_issuer.trim_end_matches('/') {
        errs.push(format!("{key}.issuer: is the broker's own issuer; broker credentials can never be exchanged again"));
    }
    if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
        errs.push(format!("{key}.audiences: at least one non-empty audience is required"));
    }
    let algorithms = parse_algorithms(key, &p.algorithms, errs);
    let mut rules = TokenRules::new(p.issuer.clone(), p.audiences.clone());
    rules.algorithms = algorithms;
    rules.leeway = opt_secs(&format!("{key}.leeway"), &p.leeway, DEFAULT_OIDC_LEEWAY_SECS, errs);
    if rules.leeway > MAX_OIDC_LEEWAY_SECS {
        errs.push(format!("{key}.leeway: at most 5m"));
    }
    // `allow_insecure_issuer` waives the https scheme only, never the profile's issuer shape: the
    // issuer is checked as if it were https (review C18).
    if let Some(profile) = profile
        && let Err(e) = profile.check_issuer(&p.issuer)
    {
        let as_https = p.issuer.strip_prefix("http://").map(|rest| format!("https://{rest}"));
        let waived = p.allow_insecure_issuer && as_https.is_some_and(|i| profile.check_issuer(&i).is_ok());
        if !waived {
            errs.push(format!("{key}.issuer: `{}` {e} (profile `{}`)", p.issuer, profile.name()));
        }
    }
    let default_lifetime = profile.map_or(rules.max_lifetime, Profile::default_max_lifetime);
    rules.max_lifetime = opt_secs(&format!("{key}.max_token_lifetime"), &p.max_token_lifetime, default_lifetime, errs);
    rules.max_age = opt_secs(&format!("{key}.max_token_age"), &p.max_token_age, rules.max_age, errs);
    rules.max_token_bytes = p.max_token_size.unwrap_or(rules.max_token_bytes);
    rules.allow_multiple_audiences = p.allow_multiple_audiences;
    let source = match (&p.jwks_file, &p.jwks_uri) {
        (Some(_), Some(_)) => {
            errs.push(format!("{key}: set jwks_file or jwks_uri, not both"));
            None
        }
        (Some(file), None) => {
            let path = resolve(file);
            match std::fs::read(&path) {
                Err(e) => {
                    errs.push(format!("{key}.jwks_file: {}: {e}", path.display()));
                    None
                }
                Ok(bytes) => match KeySet::from_json(&bytes) {
                    Ok(set) if set.keys().is_empty() => {
                        errs.push(format!("{key}.jwks_file: no usable key ({} ignored)", set.ignored().len()));
                        None
                    }
                    Ok(set) => Some(KeySource::Pinned(Arc::new(set))),
                    Err(e) => {
                        errs.push(format!("{key}.jwks_file: {e}"));
                        None
                    }
                },
            }
        }
        (None, Some(uri)) => match (url::Url::parse(uri), fetch::validate_issuer(&p.issuer)) {
            (Ok(u), Ok(iss)) => match fetch::check_jwks_uri(&iss, &u, p.jwks_hosts.as_deref().unwrap_or(&[])) {
                Ok(()) => Some(KeySource::JwksUrl { issuer: p.issuer.clone(), url: u }),
                Err(e) => {
                    errs.push(format!("{key}.jwks_uri: {e}"));
                    None
                }
            },
            (Err(e), _) => {
                errs.push(format!("{key}.jwks_uri: {e}"));
                None
            }
            (_, Err(_)) => None,
        },
        (None, None) => Some(KeySource::Discovery {
            issuer: p.issuer.clone(),
            jwks_hosts: p.jwks_hosts.clone().unwrap_or_default(),
        }),
    };
    let webhook_secret = webhook_secret(key, p, profile, resolve, errs);
    if errs.len() > before {
        return None;
    }
    Some(Provider {
        name: p.name.clone(),
        profile: profile?,
        rules,
        kind: ProviderKind::Oidc { source: source? },
        webhook_secret,
    })
}

fn read_certs(key: &str, path: &Path, errs: &mut Vec<String>) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    match CertificateDer::pem_file_iter(path) {
        Ok(it) => {
            let certs: Result<Vec<_>, _> = it.collect();
            match certs {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    errs.push(format!("{key}: {}: no PEM certificate", path.display()));
                    vec![]
                }
                Err(e) => {
                    errs.push(format!("{key}: {}: {e}", path.display()));
                    vec![]
                }
            }
        }
        Err(e) => {
            errs.push(format!("{key}: {}: {e}", path.display()));
            vec![]
        }
    }
}

fn build_attestation(
    key: &str,
    p: &RawProvider,
    profile: Profile,
    broker_issuer: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<Provider> {
    use ephemera_attestation::{ec2, nitro, x509pop};
    let before = errs.len();
    if !p.issuer.is_empty() || !p.audiences.is_empty() || p.jwks_file.is_some() || p.jwks_uri.is_some() {
        errs.push(format!("{key}: issuer, audiences and jwks_* are for OIDC providers, not `{}`", profile.name()));
    }
    let digest =
        |b: &[u8]| ephemera_providers::verify::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    // Parsed once, for the verifier and the rules alike (a bad value is one problem).
    let leeway =
        p.leeway.as_deref().and_then(|l| parse_duration(&format!("{key}.leeway"), l, errs)).map(|d| d.as_secs());
    // Bounded as for OIDC: a leeway of years would accept certificates long expired and keep
    // replay marks as long (review C19).
    if leeway.is_some_and(|l| l > MAX_OIDC_LEEWAY_SECS) {
        errs.push(format!("{key}.leeway: at most 5m"));
    }
    let (verifier, issuer) = match profile {
        Profile::Nitro => {
            let Some(file) = &p.root_cert_file else {
                errs.push(format!("{key}.root_cert_file: required (the AWS Nitro Enclaves root G1, PEM)"));
                return None;
            };
            let root = read_certs(&format!("{key}.root_cert_file"), &resolve(file), errs).into_iter().next()?;
            let der = root.as_ref().to_vec();
            let fingerprint = digest(&der);
            let verifier = match &p.root_sha256 {
                Some(pin) => nitro::NitroVerifier::with_pinned_sha256(der, pin),
                None => nitro::NitroVerifier::new(der),
            };
            match verifier {
                Ok(mut v) => {
                    if let Some(age) =
                        p.max_age.as_deref().and_then(|a| parse_duration(&format!("{key}.max_age"), a, errs))
                    {
                        if age.as_secs() > MAX_ATTESTATION_AGE_SECS {
                            errs.push(format!("{key}.max_age: at most 1h"));
                        }
                        v.max_age_secs = age.as_secs();
                    }
                    v.require_nonce = p.require_nonce.unwrap_or(true);
                    if let Some(l) = leeway {
                        v.leeway_secs = l;
                    }
                    (Verifier::Nitro(v), format!("urn:ephemera:nitro:{fingerprint}"))
                }
                Err(e) => {
                    errs.push(format!("{key}.root_cert_file: {e}"));
                    return None;
                }
            }
        }
        Profile::Ec2Iid => {
            let mut certs = Vec::new();
            for f in &p.certificate_files {
                certs.extend(
                    read_certs(&format!("{key}.certificate_files"), &resolve(f), errs)
                        .into_iter()
                        .map(|c| ("*".to_owned(), c)),
                );
            }
            for c in &p.certificates {
                certs.extend(
                    read_certs(&format!("{key}.certificates"), &resolve(&c.file), errs)
                        .into_iter()
                        .map(|d| (c.region.clone(), d)),
                );
            }
            if certs.is_empty() {
                errs.push(format!("{key}: certificate_files or certificates: AWS's published certificates are required (none is built in)"));
                return None;
            }
            match ec2::IidVerifier::new(certs) {
                Ok(mut v) => {
                    v.allow_legacy_crypto = p.allow_legacy_crypto;
                    (Verifier::Ec2(v), "urn:ephemera:aws-ec2-iid".to_owned())
                }
                Err(e) => {
                    errs.push(format!("{key}.certificates: {e}"));
                    return None;
                }
            }
        }
        _ => {
            let mut anchors = Vec::new();
            for f in &p.trust_anchor_files {
                anchors.extend(read_certs(&format!("{key}.trust_anchor_files"), &resolve(f), errs));
            }
            if anchors.is_empty() {
                errs.push(format!("{key}.trust_anchor_files: at least one CA certificate is required"));
                return None;
            }
            let fingerprint =
                digest(anchors.iter().flat_map(|a| a.as_ref().iter().copied()).collect::<Vec<u8>>().as_slice());
            let audience = p.pop_audience.clone().unwrap_or_else(|| broker_issuer.to_owned());
            let mut crls = Vec::new();
            for f in &p.crl_files {
                match std::fs::read(resolve(f)) {
                    Ok(b) if b.starts_with(b"-----BEGIN") => {
                        use rustls_pki_types::pem::PemObject;
                        match rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&b) {
                            Ok(der) => crls.push(der.as_ref().to_vec()),
                            Err(e) => errs.push(format!("{key}.crl_files: {}: {e}", f.display())),
                        }
                    }
                    Ok(b) => crls.push(b),
                    Err(e) => errs.push(format!("{key}.crl_files: {}: {e}", f.display())),
                }
            }
            let verifier = x509pop::PopVerifier::new(anchors, audience)
                .and_then(|v| if crls.is_empty() { Ok(v) } else { v.with_crls(&crls) })
                .map(|v| v.with_revoked_serials(p.revoked_serials.iter()))
                .map(|mut v| {
                    if let Some(l) = leeway {
                        v.leeway_secs = l;
                    }
                    v
                });
            match verifier {
                Ok(v) => (Verifier::X509(v), format!("urn:ephemera:x509-pop:{}", &fingerprint[..32])),
                Err(e) => {
                    errs.push(format!("{key}: {e}"));
                    return None;
                }
            }
        }
    };
    let mut rules = TokenRules::new(issuer, vec![]);
    rules.leeway = leeway.unwrap_or(DEFAULT_ATTESTATION_LEEWAY_SECS);
    if errs.len() > before {
        return None;
    }
    if p.webhook_secret_file.is_some() {
        errs.push(format!(
            "{key}.webhook_secret_file: only github-actions and gitlab providers take task-end webhooks"
        ));
        return None;
    }
    Some(Provider {
        name: p.name.clone(),
        profile,
        rules,
        kind: ProviderKind::Attestation { verifier },
        webhook_secret: None,
    })
}
