//! Ephemera, the broker: turns a platform-issued assertion into a short-lived credential after
//! verifying it, deciding on it and auditing the decision, all on every exchange.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the server and `explain` call the
//! same [`exchange::Evaluator`] functions. `docs/ARCHITECTURE.md` has the map; in short:
//!
//! | module | holds | never imports |
//! |---|---|---|
//! | [`exchange`] | the pipeline, one file per stage; `Evaluator`, `Broker` | `server`, `cli`, HTTP |
//! | [`minting`] | credential kinds: plan, then mint | `policy`, `exchange`, `config` |
//! | [`policy`] | Cedar schema, compiled roles, decisions, lint | `config`, `state`, `minting` |
//! | [`config`] | TOML → checked `Config`, one builder per section | `exchange`, `server` |
//! | [`state`], [`audit`] | shared state; the hash-chained audit log | `exchange`, `policy`, `config` |
//! | [`server`] | HTTP: routes, limits, refusal → status | `cli` |
//! | [`cli`] | the commands | — |
//! | [`clock`], [`secret`], [`ids`] | leaves | any module |

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod exchange;
pub(crate) mod ids;
pub mod minting;
pub mod notify;
pub mod policy;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
