//! `ephemera dev`: the broker on embedded defaults with a demo issuer (`server/demo.rs`), for a
//! full exchange on one machine. NOT for production.

use super::EXIT_FAILURE;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::minting::jwt::BrokerSigner;
use crate::server::demo::{DEMO_ROLE, DemoIssuer, config_toml};
use std::process::ExitCode;
use std::sync::Arc;

pub(super) async fn dev(listen: &str) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let base = format!("http://{addr}");
    let demo = match BrokerSigner::generate() {
        Ok(s) => DemoIssuer { issuer: format!("{base}/demo"), signer: s },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // A new directory of our own, with a name nobody can predict (review C13): created 0700,
    // refused if it exists; the demo JWKS is a new file in it.
    let suffix = match crate::ids::random_id(9) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let dir = std::env::temp_dir().join(format!("ephemera-dev-{}-{suffix}", std::process::id()));
    let jwks_file = dir.join("demo-jwks.json");
    let audit = dir.join("audit.jsonl");
    let written = {
        use std::io::Write;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&jwks_file)?
                .write_all(demo.signer.jwks().to_string().as_bytes())
        })
    };
    if let Err(e) = written {
        eprintln!("error: {}: {e}", dir.display());
        return ExitCode::from(EXIT_FAILURE);
    }
    let text = config_toml(&addr.to_string(), &base, &demo.issuer, &jwks_file, &audit);
    let config = match Config::from_text(&text, &dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: dev config: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    eprintln!(
        "\nephemera dev: DEVELOPMENT MODE - NOT FOR PRODUCTION. The demo issuer at {base}/demo signs any claims it is sent;\n\
         state is in memory; keys are generated now and forgotten at exit. Audit log: {audit}\n\n\
         Get a demo GitHub-Actions-shaped token and exchange it for a broker JWT (role `{role}`):\n\n  \
         curl -s {base}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d subject_token_type=urn:ietf:params:oauth:token-type:id_token -d audience={role} --data-urlencode \"subject_token=$(curl -s -X POST {base}/demo/token)\"\n\n\
         Try a token the role refuses (another branch):\n\n  \
         curl -s {base}/v1/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d subject_token_type=urn:ietf:params:oauth:token-type:id_token -d audience={role} --data-urlencode \"subject_token=$(curl -s -X POST {base}/demo/token -d '{{\"ref\":\"refs/heads/dev\"}}')\"\n\n\
         Broker JWKS: {base}/.well-known/jwks.json\n",
        audit = audit.display(),
        role = DEMO_ROLE,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    super::serve::serve(config, Some((demo, clock)), Some(listener), None).await
}
