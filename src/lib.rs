//! Ephemera, the broker: turns a platform-issued assertion into a short-lived credential after
//! verifying it, deciding on it and auditing the decision, all on every exchange.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the server and `explain` call the
//! same [`exchange::Broker`] functions.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod exchange;
pub mod ids;
pub mod minting;
pub mod policy;
pub mod secret;
pub mod server;
pub mod state;
