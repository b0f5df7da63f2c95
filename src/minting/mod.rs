//! Credential minting. A minter takes a decision that was already allowed and audited; it never
//! decides anything itself.

pub mod aws;
pub mod gcp;
pub mod jwt;
