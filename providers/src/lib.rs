//! OIDC identity providers for Ephemera.
//!
//! What this crate does: verifies OIDC ID tokens strictly (structure, header, algorithm/key fit,
//! signature, typed registered claims, times against an injected clock), fetches and caches
//! issuers' discovery documents and key sets within bounds, and names every failure by the check
//! that failed.
//!
//! What it does not do: decide whether a verified token may have a credential (that is the
//! broker's policy), remember used tokens (the broker's state store), or trust anything in a
//! token header to locate keys (`jku`, `x5u`, `jwk`, `x5c` are never read).

#![forbid(unsafe_code)]

pub mod cache;
pub mod error;
pub mod fetch;
pub mod jose;
pub mod jwks;
pub mod profile;
pub mod resolve;
pub mod verify;

pub use ephemera_untrusted::json;

pub use cache::{CacheSettings, KeyCache, KeySource};
pub use error::{CHECKS, Check, VerifyError};
pub use jsonwebtoken::Algorithm;
pub use jwks::KeySet;
pub use verify::{TokenRules, VerifiedToken, verify_jws, verify_token};
