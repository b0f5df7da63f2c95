//! Assembling an evaluator and a broker from a checked config: the one composition root the
//! server, `explain`, the tests and the benches share.

use super::{Broker, Evaluator};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::config::{Config, StateBackend};
use crate::minting::jwt::BrokerSigner;
use crate::minting::{Minters, aws::AwsMinter, gcp::GcpMinter};
use crate::state::StateStore;
use crate::state::file::{FileStore, Wal, WalMark};
use crate::state::memory::MemoryStore;
use ephemera_providers::KeyCache;
use std::sync::Arc;

/// The state store `config` names, opened as of `now`. A new state file beside an audit log that
/// already has records means the state was lost: the file store then starts an epoch.
/// With `audit` (the serving broker's log, when it audits), the file backend writes the marks
/// made with a grant behind it ([`Wal`]).
fn open_state(config: &Config, now: i64, audit: Option<&AuditLog>) -> Result<Arc<dyn StateStore>, String> {
    Ok(match &config.state {
        StateBackend::Memory { max_entries } => {
            tracing::warn!(
                "state backend `memory`: a restart forgets used assertions, nonces, revocations and grants (use `file`, the default, or `redis`)"
            );
            Arc::new(MemoryStore::new(*max_entries))
        }
        StateBackend::File { path, max_entries } => {
            let audited = std::fs::metadata(&config.audit_path).is_ok_and(|m| m.len() > 0);
            let from_audit = || {
                crate::audit::revocations(&config.audit_path)
                    .into_iter()
                    .map(|(key, at)| (key, at + super::REVOCATION_TTL))
                    .collect()
            };
            let wal = audit.map(|log| {
                let at = log.path().to_path_buf();
                Wal {
                    position: log.position(),
                    after: Box::new(move |hash: &str| {
                        crate::audit::allowed_after(&at, hash).map(|all| all.into_iter().map(allowed_mark).collect())
                    }),
                }
            });
            Arc::new(
                FileStore::open(path, *max_entries, now, audited, from_audit, wal)
                    .map_err(|e| format!("state file {e}"))?,
            )
        }
        StateBackend::Redis { url, timeout, prefix } => {
            let audited = std::fs::metadata(&config.audit_path).is_ok_and(|m| m.len() > 0);
            Arc::new(crate::state::redis::RedisStore::new(url, *timeout, prefix, !audited)?)
        }
    })
}

/// The mark and the grant an allow record names (its `replay` and `credential`).
fn allowed_mark(a: crate::audit::Allowed) -> WalMark {
    let grant = crate::state::Grant {
        id: a.credential.jti,
        subject: a.subject,
        task: a.task,
        role: a.role,
        kind: a.credential.kind,
        issued_at: a.ts,
        expires_at: a.credential.expires_at,
        issuer: a.issuer,
        provider: a.provider,
        audience: a.credential.audience,
        session: a.credential.session,
    };
    (a.replay.id, a.replay.until, grant)
}

impl Evaluator {
    /// An evaluator over `config`: its key cache and its state store (read for revocations).
    /// An evaluator alone never grants (`explain`): the file backend's file belongs to the
    /// serving broker, which holds its lock, so such an evaluator reads an empty memory store
    /// instead and says so.
    pub fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Evaluator, String> {
        let state: Arc<dyn StateStore> = match &config.state {
            StateBackend::File { path, max_entries } => {
                eprintln!(
                    "note: revocations in the state file {} are not read (the serving broker holds it)",
                    path.display()
                );
                Arc::new(MemoryStore::new(*max_entries))
            }
            StateBackend::Memory { max_entries } => Arc::new(MemoryStore::new(*max_entries)),
            StateBackend::Redis { .. } => open_state(&config, clock.now(), None)?,
        };
        Evaluator::with_state(config, clock, state)
    }

    /// An evaluator over `config` and a state store made elsewhere (tests).
    pub fn with_state(config: Config, clock: Arc<dyn Clock>, state: Arc<dyn StateStore>) -> Result<Evaluator, String> {
        let http = ephemera_providers::fetch::http_client(
            &config.cache.limits,
            Arc::new(ephemera_providers::resolve::SystemLookup),
            config.allow_private_addresses,
        )?;
        let keys = KeyCache::new(config.cache.clone(), http);
        Ok(Evaluator { config: arc_swap::ArcSwap::from_pointee(config), keys, state, clock })
    }
}

impl Broker {
    /// A broker over `config`. Without `signer`, the config's `signing_key_file` (or, without
    /// one, a key generated now, with a warning).
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        audit: AuditLog,
        signer: Option<BrokerSigner>,
    ) -> Result<Broker, String> {
        let state = open_state(&config, clock.now(), config.safety.audit.then_some(&audit))?;
        let evaluator = Evaluator::with_state(config, clock, state)?;
        Broker::with_evaluator(evaluator, audit, signer)
    }

    /// A broker granting on `evaluator`.
    pub fn with_evaluator(
        evaluator: Evaluator,
        audit: AuditLog,
        signer: Option<BrokerSigner>,
    ) -> Result<Broker, String> {
        let config = evaluator.config();
        let mut signer = match (signer, &config.server.signing_key_file) {
            (Some(s), _) => s,
            (None, Some(path)) => BrokerSigner::from_pem_file(path).map_err(|e| e.to_string())?,
            (None, None) => {
                tracing::warn!(
                    "no server.signing_key_file: using a generated key; broker tokens stop verifying when the process exits"
                );
                BrokerSigner::generate().map_err(|e| e.to_string())?
            }
        };
        for path in &config.server.publish_key_files {
            let other = BrokerSigner::from_pem_file(path).map_err(|e| format!("server.publish_key_files: {e}"))?;
            signer.publish(&other);
        }
        // Both cloud minters exist whatever the first config's roles: each loads its credentials
        // on first use, so a reload that adds the first AWS or GCP role can mint (review C15).
        let aws = Some(AwsMinter::new());
        let gcp = Some(GcpMinter::new(config.gcp_iam_url.clone())?);
        Ok(Broker {
            evaluator,
            audit,
            minters: Minters::new(signer, aws, gcp),
            counted: Default::default(),
            outbox_kick: tokio::sync::Notify::new(),
            push_client: crate::notify::client(),
        })
    }
}
