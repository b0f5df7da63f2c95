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

mod client;
mod dev;
mod explain;
mod grants;
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
    version,
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
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's hash chain.
    Verify { file: PathBuf },
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
            Ok(c) if !c.preflight().is_empty() => {
                for e in c.preflight() {
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
        Command::Grants { broker, admin_token_file, role, active, json } => {
            grants::grants(&broker, &admin_token_file, role.as_deref(), active, json).await
        }
        Command::Audit { command: AuditCommand::Verify { file } } => match crate::audit::verify_chain(&file) {
            Ok(n) => {
                outln!("ok: {n} records, hash chain intact");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("audit log {}: {e}", file.display());
                ExitCode::from(EXIT_DENY)
            }
        },
    }
}
