"""AWS STS sessions against moto_server, a real (mock) STS on loopback, and boto3 as the client
that uses them (issue 5 items 1-4 and 9; ATTACKS 44 AWS part, 53 and 57).

The broker is configured only through the AWS SDK's standard environment (test credentials,
AWS_REGION, AWS_ENDPOINT_URL_STS). moto's request recorder keeps the AssumeRole requests exactly
as the broker sent them: moto does not read Tags/TransitiveTagKeys nor enforce Policy, so the
tests read them from the recording (tests/broker/aws_request.rs checks the same request in Rust, field
by field, against a recording STS double).
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from harness import (
    AWS_ACCOUNT,
    AWS_CREDENTIALS_TYPE,
    AWS_ROLE_ARN,
    aws_broker_env,
    cloud_role,
    github_claims,
    github_provider,
    now,
    require_module,
    session_name,
    signature_segment,
)

ROLE = "aws-deploy"
READ_ONLY = "arn:aws:iam::aws:policy/ReadOnlyAccess"
CREDENTIAL_KEYS = {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}


def aws_credential(**extra) -> dict:
    c = {
        "kind": "aws",
        "role_arn": AWS_ROLE_ARN,
        "session_tags": {"Repository": "repository", "Environment": "environment", "RunId": "run_id",
                         "Workflow": "workflow"},
        "transitive_tag_keys": ["Repository"],
        "external_id": "ephemera-e2e",
    }
    c.update(extra)
    return c


def start_broker(broker_factory, mock, moto, *, max_ttl="15m", rust_log=None, credential: dict | None = None):
    return broker_factory(
        providers=[github_provider("github", mock.issuer)],
        roles=[cloud_role(ROLE, "github", credential or aws_credential(), max_ttl=max_ttl)],
        env=aws_broker_env(moto.url),
        rust_log=rust_log,
    )


def sts_client(moto, creds: dict):
    boto3 = require_module("boto3")
    return boto3.client(
        "sts",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def parse_time(s: str) -> int:
    return int(dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


def assume_role_requests(moto) -> list[dict]:
    return [dict(r["form"]) | {"_pairs": r["form"]} for r in moto.recorded("AssumeRole")]


def allow_record(broker) -> dict:
    """The one allow record (the broker's clock at the decision is its `ts`)."""
    [rec] = [a for a in broker.audit() if a["decision"] == "allow"]
    return rec


@pytest.fixture(autouse=True)
def _peers():
    require_module("boto3")


def test_exchange_mints_a_session_boto3_uses_with_the_derived_session_name(broker_factory, mock_issuer, moto):
    b = start_broker(broker_factory, mock_issuer, moto, credential=aws_credential(policy_arns=[READ_ONLY]))
    claims = github_claims(mock_issuer.issuer)
    r = b.exchange(mock_issuer.sign(claims), role=ROLE)
    assert r.status == 200, r
    body = r.json
    assert body["issued_token_type"] == AWS_CREDENTIALS_TYPE
    assert body["token_type"] == "N_A"
    assert "refresh_token" not in body, "nothing is renewable without a fresh assertion"
    creds = body["credentials"]
    # AWS's credential_process shape, exactly
    assert set(creds) == CREDENTIAL_KEYS
    assert creds["Version"] == 1
    assert creds["AccessKeyId"].startswith("ASIA") or creds["AccessKeyId"].startswith("FSIA"), creds["AccessKeyId"]
    assert body["access_token"] == creds["SessionToken"]
    # the assertion's remaining lifetime at the decision (the allow record's ts)
    rec = allow_record(b)
    assert body["expires_in"] == claims["exp"] - rec["ts"]
    # Expiration is the broker's deadline (decision + expires_in), not STS's 900 s
    assert parse_time(creds["Expiration"]) == rec["credential"]["expires_at"] == rec["ts"] + body["expires_in"]

    # boto3, with the minted credentials, is the assumed role with the derived session name
    ident = sts_client(moto, creds).get_caller_identity()
    expected = session_name(ROLE, claims)
    assert ident["Arn"] == f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/deploy/{expected}"
    assert ident["Account"] == AWS_ACCOUNT

    # what the broker sent, as moto recorded it (through the real SDK), field by field
    [assume] = moto.recorded("AssumeRole")
    assert assume["method"] == "POST"
    headers = {k.lower(): v for k, v in assume["headers"].items()}
    assert headers["content-type"].startswith("application/x-www-form-urlencoded")
    [sent] = assume_role_requests(moto)
    assert sent["Action"] == "AssumeRole" and sent["Version"] == "2011-06-15"
    assert sent["RoleArn"] == AWS_ROLE_ARN
    assert sent["RoleSessionName"] == expected
    # the workload in its provider's namespace; a hash follows since `:` and `/` were replaced (S3)
    si = sent["SourceIdentity"]
    assert re.fullmatch(f"github=repo-acme@{claims['repository_owner_id']}-app@{claims['repository_id']}-[0-9a-f]{{8}}",
                        si), si
    assert sent["ExternalId"] == "ephemera-e2e"
    # 300 s of authority still asks STS for its minimum of 900 s: the policy ends the authority
    assert sent["DurationSeconds"] == "900"
    policy = json.loads(sent["Policy"])
    assert policy == {"Version": "2012-10-17", "Statement": [
        {"Sid": "EphemeraWithinRole", "Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Sid": "EphemeraDeadline", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"DateGreaterThan": {"aws:CurrentTime": creds["Expiration"]}}},
        # no chaining into a role whose session the deadline would not bind (review S7)
        {"Sid": "EphemeraNoChaining", "Effect": "Deny", "Resource": "*",
         "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWithSAML",
                    "sts:GetFederationToken"]},
    ]}
    # tags in the mapping's (sorted) order, values from the claims as signed
    tags = [(sent[f"Tags.member.{n}.Key"], sent[f"Tags.member.{n}.Value"]) for n in range(1, 5)]
    assert tags == [("Environment", "prod"), ("Repository", "acme/app"), ("RunId", claims["run_id"]),
                    ("Workflow", "Deploy")]
    assert sent["TransitiveTagKeys.member.1"] == "Repository"
    assert sent["PolicyArns.member.1.arn"] == READ_ONLY
    # nothing else travels (no MFA serial, no token code, no provider id): the whole form
    expected_fields = {"Action", "Version", "RoleArn", "RoleSessionName", "SourceIdentity", "ExternalId",
                       "DurationSeconds", "Policy", "TransitiveTagKeys.member.1", "PolicyArns.member.1.arn"}
    expected_fields |= {f"Tags.member.{n}.{part}" for n in range(1, 5) for part in ("Key", "Value")}
    assert {k for k, _ in sent["_pairs"]} == expected_fields
    assert len(sent["_pairs"]) == len(expected_fields), "no field twice"
    # the broker signed with its own identity from the SDK environment
    auth = headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEPHEMERABROKER01/"), auth
    assert "/us-east-1/sts/aws4_request" in auth
    assert aws_broker_env(moto.url)["AWS_SECRET_ACCESS_KEY"] not in assume["body"] + auth


def test_a_session_is_bound_to_the_assertion_not_to_stss_900_seconds(broker_factory, mock_issuer, moto):
    """ATTACKS 44 (AWS): 120 s left on the assertion, a role allowing an hour."""
    b = start_broker(broker_factory, mock_issuer, moto, max_ttl="1h")
    t = now()
    claims = github_claims(mock_issuer.issuer, iat=t - 60, nbf=t - 60, exp=t + 120)
    r = b.exchange(mock_issuer.sign(claims), role=ROLE)
    assert r.status == 200, r
    # the real remaining lifetime, counted from the broker's clock at the decision
    assert r.json["expires_in"] == claims["exp"] - allow_record(b)["ts"]
    assert "refresh_token" not in r.json
    deadline = parse_time(r.json["credentials"]["Expiration"])
    assert deadline == claims["exp"], "the authority ends with the assertion"
    [sent] = assume_role_requests(moto)
    assert sent["DurationSeconds"] == "900", "STS's minimum; the policy, not the timer, ends the authority"
    cond = [s for s in json.loads(sent["Policy"])["Statement"] if s["Effect"] == "Deny"][0]["Condition"]
    assert parse_time(cond["DateGreaterThan"]["aws:CurrentTime"]) == claims["exp"]


def test_the_roles_max_ttl_bounds_the_session_too(broker_factory, mock_issuer, moto):
    b = start_broker(broker_factory, mock_issuer, moto, max_ttl="1m")
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert r.status == 200, r
    assert r.json["expires_in"] == 60
    [sent] = assume_role_requests(moto)
    assert sent["DurationSeconds"] == "900"
    # the twin: a role allowing more than STS's minimum asks STS for exactly that
    moto.reset_recording()
    b2 = start_broker(broker_factory, mock_issuer, moto, max_ttl="1h")
    t = now()
    r = b2.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer, exp=t + 1800)), role=ROLE)
    assert r.status == 200, r
    assert r.json["expires_in"] == t + 1800 - allow_record(b2)["ts"]
    [sent] = assume_role_requests(moto)
    assert int(sent["DurationSeconds"]) == r.json["expires_in"]


def test_a_claim_sts_would_refuse_as_a_tag_is_refused_before_the_assertion_is_spent(
        broker_factory, mock_issuer, moto):
    b = start_broker(broker_factory, mock_issuer, moto)
    bad = mock_issuer.sign(github_claims(mock_issuer.issuer, workflow="Deploy; rm -rf"))
    r = b.exchange(bad, role=ROLE)
    assert (r.status, r.error, r.reason) == (400, "invalid_request", "tag_invalid"), r
    assert "Workflow" in r.description and "rm -rf" not in r.description
    assert moto.recorded("AssumeRole") == [], "nothing reached STS"
    # not spent: the same assertion is refused for the same reason, not as a replay
    assert b.exchange(bad, role=ROLE).reason == "tag_invalid"
    # the twin: a workflow name STS accepts
    ok = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer, workflow="Deploy: prod/eu = 1")), role=ROLE)
    assert ok.status == 200, ok
    [sent] = assume_role_requests(moto)
    assert "Deploy: prod/eu = 1" in [sent[k] for k in sent if k.endswith(".Value")]


def test_a_missing_claim_leaves_its_tag_out(broker_factory, mock_issuer, moto):
    b = start_broker(broker_factory, mock_issuer, moto)
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer, environment=None)), role=ROLE)
    assert r.status == 200, r
    [sent] = assume_role_requests(moto)
    keys = sorted(v for k, v in sent.items() if k.startswith("Tags.member.") and k.endswith(".Key"))
    assert keys == ["Repository", "RunId", "Workflow"]


def test_sts_down_is_retryable_audited_and_the_assertion_is_spent(broker_factory, mock_issuer, moto):
    """ATTACKS 57: minting fails after the assertion was consumed."""
    b = start_broker(broker_factory, mock_issuer, moto)
    # the twin first: with STS up the same broker mints
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE).status == 200
    moto.kill()
    token = mock_issuer.sign(github_claims(mock_issuer.issuer))
    r = b.exchange(token, role=ROLE, timeout=120)
    assert (r.status, r.error, r.reason) == (503, "temporarily_unavailable", "upstream_unavailable"), r
    assert set(r.json) <= {"error", "error_description"}, "no credential in the body"
    assert "credentials" not in r.text and "access_token" not in r.text
    # the documented answer (README, "When the cloud says no"): only STS's error code travels,
    # here the SDK's for a connection that was refused
    assert r.description == f"upstream_unavailable: AWS STS is unavailable (`unreachable`) (decision {r.decision_id})", \
        r.description
    # the audit: the allow (durable before minting) and then mint_failed, same decision id
    recs = [x for x in b.audit() if x.get("decision_id") == r.decision_id]
    assert [x["decision"] for x in recs] == ["allow", "mint_failed"], recs
    assert recs[1]["reason"] == "upstream_unavailable"
    assert recs[1]["credential"]["kind"] == "aws"
    # the assertion is spent: retrying it is a replay, even once STS is back, and it never
    # reaches STS again (no double mint); the client needs a fresh assertion
    moto.revive()
    moto.reset_recording()
    again = b.exchange(token, role=ROLE)
    assert again.reason == "token_replayed", again
    assert moto.recorded("AssumeRole") == []
    fresh = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert fresh.status == 200, fresh
    assert len(moto.recorded("AssumeRole")) == 1


def test_sts_refusing_is_a_502_not_invalid_grant(broker_factory, mock_issuer, moto):
    b = start_broker(broker_factory, mock_issuer, moto)
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE).status == 200
    moto.enforce_auth()  # moto's IAM knows no broker key: InvalidClientTokenId
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert (r.status, r.error, r.reason) == (502, "server_error", "upstream_refused"), r
    assert r.description == (
        "upstream_refused: AWS STS refused AssumeRole (`InvalidClientTokenId`): check the role's trust policy "
        f"and the broker's identity (decision {r.decision_id})"), r.description
    assert r.error != "invalid_grant"
    recs = [x for x in b.audit() if x.get("decision_id") == r.decision_id]
    assert [x["decision"] for x in recs] == ["allow", "mint_failed"], recs
    assert recs[1]["reason"] == "upstream_refused"


def test_aws_secrets_never_reach_logs_or_audit(broker_factory, mock_issuer, moto):
    """ATTACKS 53: at RUST_LOG=trace, the secret access key and session token of every minted
    session, the broker's own secret key and the assertions stay out of stdout, stderr and the
    audit log. The access key id (not secret) is logged: the positive twin that the search sees
    the log at all."""
    b = start_broker(broker_factory, mock_issuer, moto, rust_log="trace")
    minted, assertions = [], []
    for _ in range(2):
        tok = mock_issuer.sign(github_claims(mock_issuer.issuer))
        assertions.append(tok)
        r = b.exchange(tok, role=ROLE)
        assert r.status == 200, r
        minted.append(r.json["credentials"])
    # a failed mint too
    moto.kill()
    tok = mock_issuer.sign(github_claims(mock_issuer.issuer))
    assertions.append(tok)
    assert b.exchange(tok, role=ROLE, timeout=120).status == 503
    b.stop()
    texts = {
        "stderr": b.stderr_path.read_text(errors="replace"),
        "stdout": b.stdout_path.read_text(errors="replace"),
        "audit": b.audit_path.read_text(errors="replace"),
    }
    assert "TRACE" in texts["stderr"], "RUST_LOG=trace was not in effect"
    needles = {"broker secret key": aws_broker_env(moto.url)["AWS_SECRET_ACCESS_KEY"]}
    for i, c in enumerate(minted):
        needles[f"secret {i}"] = c["SecretAccessKey"]
        needles[f"session token {i}"] = c["SessionToken"]
        for j in range(0, len(c["SessionToken"]) - 32, 32):
            needles[f"session token {i} chunk {j}"] = c["SessionToken"][j:j + 32]
    for i, a in enumerate(assertions):
        needles[f"assertion {i}"] = a
        needles[f"assertion signature {i}"] = signature_segment(a)
    leaks = [(name, where) for name, n in needles.items() for where, text in texts.items() if n in text]
    assert not leaks, f"secrets found in output: {leaks[:10]}"
    # the twin: what is not secret is there
    assert minted[0]["AccessKeyId"] in texts["stderr"]
    assert "sts:AssumeRole failed" in texts["stderr"]
