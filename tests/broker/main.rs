//! The broker's integration tests, as one binary (one link of the whole broker instead of one per
//! file, as `attestation/tests/attestation/` and ripgrep do): each module is one part's tests
//! through the library's public API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin_routes;
mod attestation_exchange;
mod aws_request;
mod examples;
mod harness;
mod policy;
mod profiles_corpus;
mod redis_state;
