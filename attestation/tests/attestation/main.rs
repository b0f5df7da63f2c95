//! One integration-test binary for the attestation verifiers (one link, one harness).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ec2;
mod harness;
mod nitro;
mod x509pop;
