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
    let config_file = dir.join("ephemera-dev.toml");
    let admin_file = dir.join("admin.token");
    // an admin credential of its own, so every admin path can be tried on localhost
    let admin_token = match crate::ids::random_id(24) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let text = format!(
        "{}
[admin]
token_file = \"{}\"
",
        config_toml(&addr.to_string(), &base, &demo.issuer, &jwks_file, &audit),
        admin_file.display()
    );
    let written = {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let new_file = |path: &std::path::Path, bytes: &[u8]| {
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?.write_all(bytes)
        };
        std::fs::DirBuilder::new().mode(0o700).create(&dir).and_then(|()| {
            new_file(&jwks_file, demo.signer.jwks().to_string().as_bytes())?;
            new_file(&admin_file, admin_token.as_bytes())?;
            // the config `dev` runs, on disk: `explain` and `check` can read what the server reads
            new_file(&config_file, text.as_bytes())
        })
    };
    if let Err(e) = written {
        eprintln!("error: {}: {e}", dir.display());
        return ExitCode::from(EXIT_FAILURE);
    }
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
         Broker JWKS: {base}/.well-known/jwks.json\n\n\
         The config this server runs is {config}: explain a token against it with\n\n  \
         curl -s -X POST {base}/demo/token > token.jwt && ephemera explain --config {config} --role {role} --token-file token.jwt\n\n\
         Admin credential (dev only): {admin_token}  (in {admin}); try the admin paths:\n\n  \
         ephemera grants --broker {base} --admin-token-file {admin}\n  \
         curl -s {base}/v1/revoke -H \"Authorization: Bearer $(cat {admin})\" -d task=123456789/1/1\n",
        audit = audit.display(),
        role = DEMO_ROLE,
        config = config_file.display(),
        admin = admin_file.display(),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    super::serve::serve(config, Some((demo, clock)), Some(listener), None).await
}
