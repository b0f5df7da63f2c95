//! Identifiers the broker makes: request and decision ids, credential `jti`s, nonces. They come
//! from the system's randomness; if it fails, no id is made (never a predictable one).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The system's randomness did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("system randomness unavailable")]
pub struct RandomnessUnavailable;

/// `bytes` random bytes as URL-safe base64 (ids, `jti`s, nonces).
pub(crate) fn random_id(bytes: usize) -> Result<String, RandomnessUnavailable> {
    random_id_from(bytes, |buf| aws_lc_rs::rand::fill(buf).map_err(|_| RandomnessUnavailable))
}

/// [`random_id`] from `fill` (aws-lc's DRBG in the broker; a failing one in tests).
fn random_id_from(
    bytes: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), RandomnessUnavailable>,
) -> Result<String, RandomnessUnavailable> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf).inspect_err(|_| tracing::error!("system randomness unavailable"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review (b) bug 4: when the randomness fails, no id is made. The old code logged and
    /// returned the zero-filled buffer (`AAAAAAAAAAAAAAAA` as a nonce, a `jti`, a decision id).
    #[test]
    fn a_failed_fill_is_an_error_not_zeros() {
        assert_eq!(random_id_from(12, |_| Err(RandomnessUnavailable)), Err(RandomnessUnavailable));
        // the twin: a fill that works gives its bytes, base64url
        let ok = random_id_from(3, |b| {
            b.copy_from_slice(&[0xfb, 0xff, 0x01]);
            Ok(())
        });
        assert_eq!(ok.as_deref(), Ok("-_8B"));
        let a = random_id(16).unwrap_or_default();
        assert_eq!(a.len(), 22);
        assert_ne!(a, random_id(16).unwrap_or_default());
    }
}
