//! What the command line prints: stdout that survives a closed pipe, and the log set-up.

/// `println!` that does not panic when stdout is closed (`ephemera explain … | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use outln;

/// Logs to stderr (JSON for `serve`), at `RUST_LOG` or info.
pub(crate) fn init_tracing(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // These crates print request and response bodies (credentials, tokens) at debug and trace:
    // they are capped at info whatever RUST_LOG says.
    for capped in CAPPED_LOG_TARGETS {
        if let Ok(d) = format!("{capped}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    // A log line that cannot be written (stderr on a full disk) is dropped: reporting it would
    // panic in `eprintln!` and take the request (or the audit writer) down with it.
    // colour only on a terminal: a redirected log gets no escape sequences (newcomer review)
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

/// Log targets never shown below info (they would print credentials).
pub(crate) const CAPPED_LOG_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_http_client",
    "aws_smithy_runtime_api",
    "aws_sdk_sts",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "rustls",
    "gcp_auth",
];
