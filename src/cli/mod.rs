//! The command line. Exit codes: 0 ok (or allow), 1 runtime failure, 2 usage or config error,
//! 3 denied (`explain`) or findings (`check`, `audit verify`).
//!
//! | file | command |
//! |---|---|
//! | `serve.rs` | `serve` (and SIGHUP reload) |
//! | `dev.rs` | `dev`: the broker on embedded defaults with a demo issuer |
//! | `explain.rs` | `explain`: the server's own evaluation, printed |
//! | `grants.rs` | `grants`: the inventory of a running broker |
//! | `client.rs` | `exchange`: the workload's side of an exchange |
//! | `output.rs` | stdout that survives a closed pipe, the log set-up |

mod admin;
mod client;
mod dev;
mod explain;
pub(crate) mod output;
mod serve;

use crate::config::Config;
use clap::{Parser, Subcommand, ValueEnum};
use output::{init_tracing, outln};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(crate) const EXIT_OK: u8 = 0;
pub(crate) const EXIT_FAILURE: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_DENY: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "ephemera",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EPHEMERA_COMMIT"), ")"),
    about = "Workload identity federation broker: platform assertions in, short-lived credentials out"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum TokenTypeArg {
    /// An OIDC ID token (JWT)
    IdToken,
    /// A JWT
    Jwt,
    /// An AWS Nitro Enclaves attestation document (raw CBOR or base64)
    NitroAttestation,
    /// An X.509 proof of possession (compact JWS with x5c)
    X509Pop,
    /// An EC2 instance identity document (PKCS#7, or the JSON document + signature form)
    AwsEc2Iid,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the broker with a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the broker on embedded defaults with a demo issuer (NOT for production).
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Explain the decision the server would take on a token for a role (nothing is marked used).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        role: String,
        #[arg(long, required_unless_present = "claims", conflicts_with = "claims")]
        token_file: Option<PathBuf>,
        /// A JSON file of claims to evaluate against the policies (no signature, no verification).
        #[arg(long)]
        claims: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "id-token")]
        token_type: TokenTypeArg,
        /// Evaluate at this UNIX time instead of now.
        #[arg(long)]
        at: Option<i64>,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
        /// RFC 9396 authorization details (a JSON array), as a request would carry them.
        #[arg(long)]
        authorization_details: Option<String>,
    },
    /// Load and check a config; print every problem.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Exchange an assertion at a broker and print the credential (client side).
    Exchange(client::ExchangeArgs),
    /// End this workload's own task at a broker with a fresh assertion of it (client side): every
    /// grant of the task is then revoked. The GitHub Action's post step.
    EndTask(client::EndTaskArgs),
    /// List the credentials a broker handed out that have not expired (admin).
    Grants {
        /// The broker's base URL (its admin listener when `[admin] listen` is set).
        #[arg(long)]
        broker: String,
        /// A file holding the admin bearer credential.
        #[arg(long)]
        admin_token_file: PathBuf,
        /// Only this role's grants.
        #[arg(long)]
        role: Option<String>,
        /// Only grants still in force: not revoked by their task, jti, subject, role or issuer
        /// (expired grants leave the inventory on their own).
        #[arg(long)]
        active: bool,
        #[arg(long)]
        json: bool,
    },
    /// End a task, or revoke a grant, subject, role or issuer, at a running broker (admin).
    /// A revocation that ends no live grant is refused unless --force.
    Revoke {
        #[arg(long)]
        broker: String,
        #[arg(long)]
        admin_token_file: PathBuf,
        #[arg(long, group = "target", allow_hyphen_values = true)]
        task: Option<String>,
        #[arg(long, group = "target", allow_hyphen_values = true)]
        subject: Option<String>,
        /// A grant id (a broker JWT's `jti`).
        #[arg(long, group = "target", allow_hyphen_values = true)]
        grant: Option<String>,
        #[arg(long, group = "target", allow_hyphen_values = true)]
        role: Option<String>,
        #[arg(long, group = "target", allow_hyphen_values = true)]
        issuer: Option<String>,
        /// The provider whose task or subject this is (when several are configured).
        #[arg(long)]
        provider: Option<String>,
        /// Record the revocation even if it ends no live grant (a task not yet seen).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// The revocations in force at a running broker (admin).
    Revocations {
        #[command(subcommand)]
        command: RevocationsCommand,
    },
    /// RFC 7662 introspection of a broker JWT (admin); exit 0 active, 3 inactive.
    Introspect {
        #[arg(long)]
        broker: String,
        #[arg(long)]
        admin_token_file: PathBuf,
        /// The broker JWT.
        #[arg(long)]
        token_file: PathBuf,
        /// Take one use of a use-limited token.
        #[arg(long)]
        consume: bool,
    },
    /// Write a new signing key (PKCS#8 PEM, mode 0600; never overwrites).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// RSA-2048 instead of P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RevocationsCommand {
    /// List them, by key.
    List {
        #[arg(long)]
        broker: String,
        #[arg(long)]
        admin_token_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Lift one (an admin's mistake undone; audited).
    Remove {
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[arg(long)]
        broker: String,
        #[arg(long)]
        admin_token_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's hash chain; with several files, a rotated set oldest first
    /// (`PATH.YYYYMMDDTHHMMSSZ`… then `PATH`), the chain across them too.
    Verify {
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

pub(crate) fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_USAGE)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => {
            init_tracing(true);
            let path = config.clone();
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            serve::serve(config, None, None, Some(path)).await
        }
        Command::Dev { listen } => {
            init_tracing(false);
            dev::dev(&listen).await
        }
        Command::Explain { config, role, token_file, claims, token_type, at, json, authorization_details } => {
            init_tracing(false);
            let input = match (token_file, claims) {
                (Some(t), _) => explain::Input::Token(t),
                (None, Some(c)) => explain::Input::Claims(c),
                (None, None) => return ExitCode::from(EXIT_USAGE),
            };
            explain::explain(&config, role, input, token_type, at, json, authorization_details).await
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) if !c.preflight().is_empty() || !crate::server::tls::check(&c).is_empty() => {
                for e in c.preflight().into_iter().chain(crate::server::tls::check(&c)) {
                    eprintln!("config error: {e}");
                }
                ExitCode::from(EXIT_USAGE)
            }
            Ok(c) => {
                for f in &c.findings {
                    outln!("{}: role `{}`: {}: {}", f.severity, f.role, f.code, f.message);
                }
                outln!("ok: {} provider(s), {} role(s), version {}", c.providers.len(), c.roles.len(), c.version);
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Exchange(args) => client::run(args).await,
        Command::EndTask(args) => client::end_task(args).await,
        Command::Grants { broker, admin_token_file, role, active, json } => {
            match admin::Admin::new(&broker, &admin_token_file) {
                Ok(a) => admin::grants(a, role.as_deref(), active, json).await,
                Err(code) => code,
            }
        }
        Command::Revoke { broker, admin_token_file, task, subject, grant, role, issuer, provider, force, json } => {
            let target = match (&task, &subject, &grant, &role, &issuer) {
                (Some(v), ..) => ("task", v),
                (_, Some(v), ..) => ("subject", v),
                (_, _, Some(v), ..) => ("jti", v),
                (_, _, _, Some(v), _) => ("role", v),
                (.., Some(v)) => ("issuer", v),
                _ => {
                    eprintln!("error: give one of --task, --subject, --grant, --role, --issuer");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let target = admin::Target { kind: target.0, value: target.1, provider: provider.as_deref() };
            match admin::Admin::new(&broker, &admin_token_file) {
                Ok(a) => admin::revoke(a, target, force, json).await,
                Err(code) => code,
            }
        }
        Command::Revocations { command: RevocationsCommand::List { broker, admin_token_file, json } } => {
            match admin::Admin::new(&broker, &admin_token_file) {
                Ok(a) => admin::revocations_list(a, json).await,
                Err(code) => code,
            }
        }
        Command::Revocations { command: RevocationsCommand::Remove { key, broker, admin_token_file } } => {
            match admin::Admin::new(&broker, &admin_token_file) {
                Ok(a) => admin::revocations_remove(a, &key).await,
                Err(code) => code,
            }
        }
        Command::Introspect { broker, admin_token_file, token_file, consume } => {
            match admin::Admin::new(&broker, &admin_token_file) {
                Ok(a) => admin::introspect(a, &token_file, consume).await,
                Err(code) => code,
            }
        }
        Command::Keygen { out, rsa } => admin::keygen(&out, rsa),
        Command::Audit { command: AuditCommand::Verify { files } } => {
            // a file that is not there is a usage error, not a tampered log
            if let Some(missing) = files.iter().find(|f| !f.exists()) {
                eprintln!("error: {}: no such file", missing.display());
                return ExitCode::from(EXIT_USAGE);
            }
            let checked = match files.as_slice() {
                [one] => crate::audit::verify_chain(one).map_err(|e| format!("audit log {}: {e}", one.display())),
                set => crate::audit::verify_set(set).map_err(|e| format!("audit log set: {e}")),
            };
            match checked {
                Ok(n) => {
                    outln!("ok: {n} records, hash chain intact");
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_DENY)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant id is base64url and starts with `-` one time in 64: it is a value, not a flag.
    #[test]
    fn ids_starting_with_a_hyphen_are_values() {
        let base = ["ephemera", "revoke", "--broker", "http://b", "--admin-token-file", "t"];
        for flag in ["--grant", "--task", "--subject", "--role", "--issuer"] {
            let cli = Cli::try_parse_from(base.iter().copied().chain([flag, "-3N3Jip"]))
                .unwrap_or_else(|e| panic!("{flag}: {e}"));
            let Command::Revoke { task, subject, grant, role, issuer, .. } = cli.command else { panic!("not revoke") };
            let got = [task, subject, grant, role, issuer].into_iter().flatten().collect::<Vec<_>>();
            assert_eq!(got, ["-3N3Jip"], "{flag}");
        }
        let cli = Cli::try_parse_from([
            "ephemera",
            "revocations",
            "remove",
            "-x",
            "--broker",
            "http://b",
            "--admin-token-file",
            "t",
        ])
        .unwrap();
        let Command::Revocations { command: RevocationsCommand::Remove { key, .. } } = cli.command else {
            panic!("not remove")
        };
        assert_eq!(key, "-x");
        // Its twin: an unknown flag is still refused.
        assert!(Cli::try_parse_from(base.iter().copied().chain(["--grnat", "x"])).is_err());
    }
}
