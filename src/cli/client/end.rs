//! `ephemera end-task`: a workload ends its own task at the broker, so access ends with the job
//! even when no platform webhook reaches the broker (the GitHub Action's post step).
//!
//! It presents a fresh assertion of the task to `POST /v1/revoke` with the role (`audience`, as
//! on `/v1/token`) and the task; the
//! broker verifies the assertion, takes the role's policy decision now, checks that the assertion
//! belongs to the task, spends it, and revokes `task:PROVIDER:TASK`: every grant of the task
//! then introspects `active: false` and its pushes go out. The task is named, never guessed by
//! the broker: `--task`, or the platform's own variables (GitHub Actions:
//! `GITHUB_REPOSITORY_ID/GITHUB_RUN_ID/GITHUB_RUN_ATTEMPT`; GitLab CI:
//! `CI_PROJECT_ID/CI_PIPELINE_ID/CI_JOB_ID`), the same triples the profiles derive.
//!
//! Exit codes: 0 ended, 1 refused or unreachable (the broker's reason on stderr), 2 usage.

use super::{Source, check_broker_url, http_client, post_form};
use crate::cli::output::outln;
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(crate) struct EndTaskArgs {
    /// The broker's base URL (https, or http on a loopback address).
    #[arg(long)]
    pub broker: String,
    /// A role the task's assertion is allowed now (the one it exchanged for).
    #[arg(long)]
    pub role: String,
    #[command(flatten)]
    pub source: Source,
    /// The task to end (default: from GitHub Actions' or GitLab CI's variables).
    #[arg(long)]
    pub task: Option<String>,
    /// Print the broker's answer as JSON (`revoked`, `until`, `matched`).
    #[arg(long)]
    pub json: bool,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ephemera end-task: {msg}");
    ExitCode::from(code)
}

/// The task the platform's variables name, for the assertion source given.
fn platform_task(source: &Source, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let names: &[&str] = if source.github_actions {
        &["GITHUB_REPOSITORY_ID", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT"]
    } else if source.gitlab.is_some() {
        &["CI_PROJECT_ID", "CI_PIPELINE_ID", "CI_JOB_ID"]
    } else {
        return Err("give --task (only --github-actions and --gitlab name the task from the platform)".into());
    };
    let parts: Vec<String> = names.iter().filter_map(|n| var(n).filter(|v| !v.is_empty())).collect();
    if parts.len() != names.len() {
        return Err(format!("give --task, or set {}", names.join(", ")));
    }
    Ok(parts.join("/"))
}

pub(crate) async fn run(a: EndTaskArgs) -> ExitCode {
    if let Err(e) = a.source.check() {
        return fail(2, e);
    }
    let url = match check_broker_url(&a.broker) {
        Ok(u) => format!("{}/v1/revoke", u.as_str().trim_end_matches('/')),
        Err(e) => return fail(2, e),
    };
    let task = match a.task.clone().map_or_else(|| platform_task(&a.source, |n| std::env::var(n).ok()), Ok) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => return fail(1, e),
    };
    let token = match a.source.assertion(&http).await {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let form = [
        ("subject_token_type", crate::exchange::TOKEN_TYPE_ID_TOKEN),
        ("subject_token", token.expose()),
        ("audience", a.role.as_str()),
        ("task", task.as_str()),
    ];
    match post_form(&http, &url, &form).await {
        Ok(v) if a.json => {
            outln!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            let revoked = v.get("revoked").and_then(Value::as_str).unwrap_or_default();
            let matched = v.get("matched").and_then(Value::as_u64).unwrap_or_default();
            let grants = if matched == 1 { "grant" } else { "grants" };
            outln!("ended {revoked} ({matched} live {grants})");
            ExitCode::SUCCESS
        }
        Err(f) => fail(1, f.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn source(args: &[&str]) -> Source {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            s: Source,
        }
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).s
    }

    #[test]
    fn the_task_comes_from_the_platform_variables_or_is_asked_for() {
        let vars = |n: &str| {
            Some(
                match n {
                    "GITHUB_REPOSITORY_ID" => "7",
                    "GITHUB_RUN_ID" => "99",
                    "GITHUB_RUN_ATTEMPT" => "2",
                    "CI_PROJECT_ID" => "5",
                    "CI_PIPELINE_ID" => "6",
                    "CI_JOB_ID" => "8",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        assert_eq!(platform_task(&source(&["--github-actions"]), vars).unwrap(), "7/99/2");
        assert_eq!(platform_task(&source(&["--gitlab"]), vars).unwrap(), "5/6/8");
        // twins: a variable missing, or a source that names no task
        let partial = |n: &str| (n != "GITHUB_RUN_ATTEMPT").then(|| vars(n)).flatten();
        let e = platform_task(&source(&["--github-actions"]), partial).unwrap_err();
        assert!(e.contains("GITHUB_RUN_ATTEMPT"), "{e}");
        let e = platform_task(&source(&["--token-file", "f"]), vars).unwrap_err();
        assert!(e.contains("give --task"), "{e}");
    }
}
