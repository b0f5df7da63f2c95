//! Assembling an evaluator and a broker from a checked config: the one composition root the
//! server, `explain`, the tests and the benches share.

use super::{Broker, Evaluator};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::config::{Config, StateBackend};
use crate::minting::jwt::BrokerSigner;
use crate::minting::{CredentialKind, Minters, aws::AwsMinter, gcp::GcpMinter};
use crate::state::StateStore;
use crate::state::memory::MemoryStore;
use ephemera_providers::KeyCache;
use std::sync::Arc;

impl Evaluator {
    /// An evaluator over `config`: its key cache and its state store (read for revocations).
    pub fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Evaluator, String> {
        let state: Arc<dyn StateStore> = match &config.state {
            StateBackend::Memory { max_entries } => Arc::new(MemoryStore::new(*max_entries)),
            StateBackend::Redis { url, timeout, prefix } => {
                Arc::new(crate::state::redis::RedisStore::new(url, *timeout, prefix)?)
            }
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
        let evaluator = Evaluator::build(config, clock)?;
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
        let needs = |kind| config.roles.values().any(|r| r.credential.kind() == kind);
        let aws = needs(CredentialKind::Aws).then(AwsMinter::new);
        let gcp = if needs(CredentialKind::Gcp) { Some(GcpMinter::new(config.gcp_iam_url.clone())?) } else { None };
        Ok(Broker { evaluator, audit, minters: Minters::new(signer, aws, gcp) })
    }
}
