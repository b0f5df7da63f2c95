//! Ending live AWS sessions: STS cannot recall a session, but IAM can deny it. A role that says
//! `end_sessions_on_revoke` names its sessions `eph-TASKHASH-GRANTHASH` (`super::ending_session_name`);
//! a revocation puts an inline policy on the role that denies every action to sessions whose
//! `aws:userid` (`ROLEID:SESSIONNAME`, which the session cannot change) matches, for tokens issued
//! before the revocation, and removes it once the last such session has expired.
//!
//! The broker's AWS identity needs `iam:PutRolePolicy` and `iam:DeleteRolePolicy` on the role.
//! IAM is eventually consistent: a deny takes effect within seconds, usually, not at once.

use super::{AwsError, AwsMinter, FALLBACK_REGION, classify, default_timeouts};
use aws_sdk_iam::error::ProvideErrorMetadata;
use serde_json::json;

/// The inline policy's name: `ephemera-revoked-TASKHASH[-GRANTHASH]` (IAM: `[\w+=,.@-]`, ≤ 128).
pub fn deny_policy_name(task_hash: &str, grant_hash: Option<&str>) -> String {
    match grant_hash {
        Some(g) => format!("ephemera-revoked-{task_hash}-{g}"),
        None => format!("ephemera-revoked-{task_hash}"),
    }
}

/// The deny: every action, for sessions named `eph-TASKHASH-*` (or the one grant's session),
/// issued before `revoked_at` (RFC 3339): a later session of the task could only come from a
/// fresh exchange, which the revocation refuses anyway.
pub fn deny_document(task_hash: &str, grant_hash: Option<&str>, revoked_at: &str) -> String {
    let session = format!("*:eph-{task_hash}-{}", grant_hash.unwrap_or("*"));
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "EphemeraRevoked",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringLike": {"aws:userid": session},
                "DateLessThan": {"aws:TokenIssueTime": revoked_at},
            },
        }],
    })
    .to_string()
}

/// The role's name in its ARN (`arn:aws:iam::ACCOUNT:role/PATH/NAME` → `NAME`).
pub fn role_name(role_arn: &str) -> &str {
    role_arn.rsplit('/').next().unwrap_or(role_arn)
}

impl AwsMinter {
    async fn iam(&self) -> aws_sdk_iam::Client {
        let shared = self
            .shared
            .get_or_init(|| async { aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await })
            .await;
        // (IAM is global: the shared region, or the fallback; endpoint overrides by the SDK's own
        // environment, `AWS_ENDPOINT_URL_IAM`)
        let mut b = aws_sdk_iam::config::Builder::from(shared).timeout_config(default_timeouts());
        if shared.region().is_none() {
            b = b.region(aws_sdk_iam::config::Region::from_static(FALLBACK_REGION));
        }
        aws_sdk_iam::Client::from_conf(b.build())
    }

    /// `iam:PutRolePolicy` of `document` named `name` on the role.
    pub async fn put_deny(&self, role_arn: &str, name: &str, document: &str) -> Result<(), AwsError> {
        let out = self
            .iam()
            .await
            .put_role_policy()
            .role_name(role_name(role_arn))
            .policy_name(name)
            .policy_document(document)
            .send()
            .await;
        out.map(|_| ()).map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let err = classify(e.code(), status, "PutRolePolicyFailed");
            tracing::warn!(code = e.code().unwrap_or("-"), status, role_arn, policy = name, "iam:PutRolePolicy failed");
            err
        })
    }

    /// `iam:DeleteRolePolicy`; a policy already gone is fine.
    pub async fn remove_deny(&self, role_arn: &str, name: &str) -> Result<(), AwsError> {
        let out = self.iam().await.delete_role_policy().role_name(role_name(role_arn)).policy_name(name).send().await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                tracing::warn!(
                    code = e.code().unwrap_or("-"),
                    status,
                    role_arn,
                    policy = name,
                    "iam:DeleteRolePolicy failed"
                );
                Err(classify(e.code(), status, "DeleteRolePolicyFailed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deny_matches_the_tasks_sessions_issued_before_the_revocation() {
        let doc: serde_json::Value =
            serde_json::from_str(&deny_document("0123456789abcdef", None, "2026-12-03T10:00:00Z")).unwrap();
        let c = &doc["Statement"][0]["Condition"];
        assert_eq!(c["StringLike"]["aws:userid"], "*:eph-0123456789abcdef-*");
        assert_eq!(c["DateLessThan"]["aws:TokenIssueTime"], "2026-12-03T10:00:00Z");
        assert_eq!(doc["Statement"][0]["Effect"], "Deny");
        let one: serde_json::Value =
            serde_json::from_str(&deny_document("0123456789abcdef", Some("89abcdef"), "x")).unwrap();
        assert_eq!(one["Statement"][0]["Condition"]["StringLike"]["aws:userid"], "*:eph-0123456789abcdef-89abcdef");
        assert_eq!(role_name("arn:aws:iam::123456789012:role/path/deploy"), "deploy");
        assert_eq!(deny_policy_name("0123456789abcdef", None), "ephemera-revoked-0123456789abcdef");
    }
}
