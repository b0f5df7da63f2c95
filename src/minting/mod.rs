//! Credential minting: everything a credential kind needs, and nothing that decides.
//!
//! A minter takes a decision that was already allowed and audited; it never decides anything
//! itself. Minting is two steps, so that nothing a cloud would refuse is found only after the
//! assertion is spent:
//!
//! 1. [`Minters::plan`] builds and checks the request (an AWS session's tags, a JWT's claim
//!    set) *before* the replay mark;
//! 2. [`Minters::mint`] carries the plan out, after the allow record is durable.
//!
//! A new credential kind is one file here (its settings, plan and call), one [`CredentialSpec`]
//! variant and one arm in each of the two `match`es below: the only `match` on a credential kind
//! in the broker. The compiler lists every arm a new kind still lacks.

pub mod aws;
pub mod gcp;
pub mod jwt;

use crate::clock::rfc3339;
use crate::secret::IssuedCredential;
use ephemera_providers::profile::Workload;
use serde::Serialize;

/// `issued_token_type` of a broker JWT (RFC 8693).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `issued_token_type` of a GCP access token.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `issued_token_type` of an AWS session (its `access_token` is the session token).
pub const TOKEN_TYPE_AWS_CREDENTIALS: &str = "urn:ephemera:token-type:aws-credentials";

/// The kinds of credential the broker hands out (the `kind` of a role's `credential` table, of
/// an audit record's `credential` and of an inventory grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    Jwt,
    Aws,
    Gcp,
}

impl CredentialKind {
    /// The RFC 8693 `issued_token_type` of this kind (what a client may ask for in
    /// `requested_token_type`).
    pub fn token_type(self) -> &'static str {
        match self {
            CredentialKind::Jwt => TOKEN_TYPE_JWT,
            CredentialKind::Aws => TOKEN_TYPE_AWS_CREDENTIALS,
            CredentialKind::Gcp => TOKEN_TYPE_ACCESS_TOKEN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::Aws => "aws",
            CredentialKind::Gcp => "gcp",
        }
    }
}

/// What a role hands out, checked at load.
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    /// A broker-signed JWT for this audience.
    Jwt { audience: String },
    /// An AWS STS session for this role.
    Aws(aws::AwsRole),
    /// A GCP access token for this service account.
    Gcp(gcp::GcpRole),
}

impl CredentialSpec {
    pub fn kind(&self) -> CredentialKind {
        match self {
            CredentialSpec::Jwt { .. } => CredentialKind::Jwt,
            CredentialSpec::Aws(_) => CredentialKind::Aws,
            CredentialSpec::Gcp(_) => CredentialKind::Gcp,
        }
    }
}

/// What a grant is made of, as the exchange proved it: the input of every plan.
#[derive(Debug)]
pub struct GrantFacts<'a> {
    /// The broker's issuer (`iss` of a broker JWT).
    pub issuer: &'a str,
    pub role: &'a str,
    pub provider: &'a str,
    /// The assertion's issuer (`src_iss`).
    pub source_issuer: &'a str,
    pub workload: &'a Workload,
    pub claims: &'a serde_json::Map<String, serde_json::Value>,
    /// RFC 7800 confirmation for a broker JWT: (member, value).
    pub cnf: Option<&'a (&'static str, String)>,
    /// The grant id (a broker JWT's `jti`).
    pub jti: &'a str,
    pub now: i64,
    /// Seconds the credential lives (already bounded by the decision).
    pub lifetime: i64,
    /// How many times partners may consume it (a broker JWT's `max_uses`).
    pub max_uses: Option<u32>,
    /// The RFC 9396 authorization details granted (a JWT claim; an AWS session policy).
    /// (The array as granted, checked by the exchange against the role.)
    pub details: Option<&'a serde_json::Value>,
}

/// A checked request for one credential, built before the assertion is spent; it borrows the
/// role's settings.
#[derive(Debug)]
pub struct MintPlan<'a> {
    lifetime: i64,
    expires_at: i64,
    kind: Planned<'a>,
}

#[derive(Debug)]
enum Planned<'a> {
    Jwt(serde_json::Value),
    Aws(&'a aws::AwsRole, aws::AssumeRequest),
    Gcp(&'a gcp::GcpRole),
}

impl MintPlan<'_> {
    /// An AWS session's name when its role ends sessions on revoke (the inventory keeps it, so a
    /// revocation can deny that session at IAM).
    pub fn ending_session(&self) -> Option<&str> {
        match &self.kind {
            Planned::Aws(role, req) if role.end_sessions_on_revoke => Some(&req.session_name),
            _ => None,
        }
    }
}

/// Why a credential could not be planned or minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A value the cloud would refuse (an AWS session tag); found before the assertion is spent.
    #[error("{0}")]
    Tag(aws::AwsError),
    /// This broker has no client for the kind.
    #[error("{0} minting is not set up in this broker")]
    NotSetUp(&'static str),
    /// The broker's own signature could not be computed.
    #[error("{0}")]
    Sign(jwt::SignerError),
    /// AWS STS refused or could not answer.
    #[error("{0}")]
    Aws(aws::AwsError),
    /// IAM Credentials refused or could not answer.
    #[error("{0}")]
    Gcp(gcp::GcpError),
}

impl MintError {
    /// The cloud that answered, when one did (`None`: the broker itself failed).
    pub fn upstream(&self) -> Option<(&'static str, bool)> {
        match self {
            MintError::Aws(e) => Some(("aws", e.is_retryable())),
            MintError::Gcp(e) => Some(("gcp", e.is_retryable())),
            MintError::Tag(_) | MintError::NotSetUp(_) | MintError::Sign(_) => None,
        }
    }
}

/// The RFC 8693 success response.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    #[serde(serialize_with = "expose_credential")]
    pub access_token: IssuedCredential,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: i64,
    /// AWS sessions: the credentials in the `credential_process` shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialProcess>,
    /// RFC 9396 §7: the authorization details granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
}

/// AWS's `credential_process` output (`Expiration` is the broker's deadline, so SDKs come back
/// for a fresh session, with a fresh assertion, when the authority ends).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CredentialProcess {
    pub version: u8,
    pub access_key_id: String,
    #[serde(serialize_with = "expose_credential")]
    pub secret_access_key: IssuedCredential,
    #[serde(serialize_with = "expose_credential")]
    pub session_token: IssuedCredential,
    pub expiration: String,
}

fn expose_credential<S: serde::Serializer>(c: &IssuedCredential, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.expose())
}

/// The broker's minters: its own signer always, a cloud client when a role needs one.
#[derive(Debug)]
pub struct Minters {
    jwt: jwt::BrokerSigner,
    aws: Option<aws::AwsMinter>,
    gcp: Option<gcp::GcpMinter>,
}

impl Minters {
    pub fn new(jwt: jwt::BrokerSigner, aws: Option<aws::AwsMinter>, gcp: Option<gcp::GcpMinter>) -> Self {
        Minters { jwt, aws, gcp }
    }

    /// The broker's signer (its JWKS, its algorithm).
    pub fn signer(&self) -> &jwt::BrokerSigner {
        &self.jwt
    }

    /// The AWS client, when this broker has one (ending sessions at IAM).
    pub fn aws(&self) -> Option<&aws::AwsMinter> {
        self.aws.as_ref()
    }

    /// Builds and checks the request for a credential, before the assertion is spent.
    pub fn plan<'a>(&self, spec: &'a CredentialSpec, g: &GrantFacts<'_>) -> Result<MintPlan<'a>, MintError> {
        let kind = match spec {
            CredentialSpec::Jwt { audience } => Planned::Jwt(jwt::claims(audience, g)),
            CredentialSpec::Aws(role) => Planned::Aws(role, aws::request(role, g)?),
            CredentialSpec::Gcp(role) => Planned::Gcp(role),
        };
        Ok(MintPlan { lifetime: g.lifetime, expires_at: g.now + g.lifetime, kind })
    }

    /// Mints what the plan says. Runs only after the allow record is durable.
    ///
    /// (See [`MintPlan::ending_session`] for what the inventory records first.)
    pub async fn mint(&self, plan: MintPlan<'_>) -> Result<TokenResponse, MintError> {
        let MintPlan { lifetime, expires_at, kind } = plan;
        match kind {
            Planned::Jwt(claims) => self.jwt.sign(&claims).map_err(MintError::Sign).map(|access_token| TokenResponse {
                access_token,
                issued_token_type: TOKEN_TYPE_JWT,
                token_type: "Bearer",
                expires_in: lifetime,
                credentials: None,
                authorization_details: None,
            }),
            Planned::Aws(role, req) => {
                let minter = self.aws.as_ref().ok_or(MintError::NotSetUp("AWS"))?;
                let s = minter.assume(role, &req).await.map_err(MintError::Aws)?;
                tracing::debug!(assumed_role = %s.assumed_role_arn, access_key_id = %s.access_key_id, sts_expiration = s.sts_expiration, "aws session minted");
                Ok(TokenResponse {
                    access_token: s.session_token.clone(),
                    issued_token_type: TOKEN_TYPE_AWS_CREDENTIALS,
                    token_type: "N_A",
                    expires_in: lifetime,
                    credentials: Some(CredentialProcess {
                        version: 1,
                        access_key_id: s.access_key_id,
                        secret_access_key: s.secret_access_key,
                        session_token: s.session_token,
                        expiration: rfc3339(expires_at),
                    }),
                    authorization_details: None,
                })
            }
            Planned::Gcp(role) => {
                let minter = self.gcp.as_ref().ok_or(MintError::NotSetUp("GCP"))?;
                let t = minter.mint(role, lifetime).await.map_err(MintError::Gcp)?;
                Ok(TokenResponse {
                    access_token: t.access_token,
                    issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
                    token_type: "Bearer",
                    expires_in: lifetime,
                    credentials: None,
                    authorization_details: None,
                })
            }
        }
    }
}
