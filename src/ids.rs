//! Identifiers the broker makes: request and decision ids, credential `jti`s, nonces.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes as URL-safe base64 (ids, `jti`s).
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's DRBG; failure here means the process cannot produce ids at all.
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        tracing::error!("system randomness unavailable");
    }
    URL_SAFE_NO_PAD.encode(buf)
}
