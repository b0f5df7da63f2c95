//! Broker nonces: single-use, short-lived freshness for attestation documents and proofs of
//! possession. The exchange consumes one with its grant (`grant.rs`).

use super::Broker;
use super::error::{Class, Refusal};
use crate::ids::random_id;
use serde::Serialize;

/// How long a broker nonce lives.
pub const NONCE_TTL: i64 = 60;

/// A nonce handed out.
#[derive(Debug, Serialize)]
pub struct Nonce {
    pub nonce: String,
    pub expires_in: i64,
}

impl Broker {
    /// A nonce (256 bits, base64url), bound to the role named by the form's optional `audience`.
    pub async fn issue_nonce(&self, form: &[u8]) -> Result<Nonce, Refusal> {
        let mut binding = String::new();
        for (k, v) in form_urlencoded::parse(form) {
            if k == "audience" {
                if !binding.is_empty() {
                    return Err(Refusal::new(
                        Class::Rejected,
                        "invalid_request",
                        "request_invalid",
                        "parameter `audience` appears more than once",
                    ));
                }
                if !self.config().roles.contains_key(v.as_ref()) {
                    return Err(Refusal::new(Class::Rejected, "invalid_target", "unknown_role", "no such role"));
                }
                binding = v.into_owned();
            }
        }
        let value = random_id(32).map_err(|e| {
            Refusal::new(Class::Unavailable, "temporarily_unavailable", "randomness_unavailable", &e.to_string())
        })?;
        let now = self.evaluator.now();
        match self.evaluator.state.put_nonce(&value, &binding, now + NONCE_TTL, now).await {
            Ok(()) => Ok(Nonce { nonce: value, expires_in: NONCE_TTL }),
            Err(e) => {
                tracing::warn!(error = %e, "nonce not stored");
                Err(Refusal::new(
                    Class::Unavailable,
                    "temporarily_unavailable",
                    "replay_store_unavailable",
                    "nonces cannot be issued now",
                ))
            }
        }
    }
}
