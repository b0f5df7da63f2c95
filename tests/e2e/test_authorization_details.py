"""Transaction-scoped grants (issue 15, spec C; RFC 9396 `authorization_details`): a role declares
the detail types a request may carry (`[[roles.authorization_details]]`: `type`, `fields`,
`required`) and may require them. A valid request is granted them: the token response echoes them
(RFC 9396 §7), the broker JWT carries the claim, introspection returns it and the allow record has
them. Each malformed request is 400 `invalid_authorization_details` (RFC 9396 §5), audited
`authorization_details_invalid`, and does not spend the assertion (the same one works once
corrected). Cedar sees them as `context.authorization_details.TYPE.FIELD` (a `Set<String>`);
`ephemera explain --authorization-details` decides with them; on an AWS role a granted `aws_iam`
detail becomes the session policy's only Allow (read from the AssumeRole request moto recorded)."""

from __future__ import annotations

import json

import pytest
import requests

from harness import (
    AWS_CREDENTIALS_TYPE,
    HTTP_TIMEOUT,
    aws_broker_env,
    cloud_role,
    github_claims,
    github_provider,
    provider,
    role,
    run_cli,
    verify_broker_jwt,
)
from test_aws import assume_role_requests, aws_credential

ADMIN_TOKEN = "admin-" + "r" * 40
INCIDENT_API = "incident-api"
INCIDENT_RECORD = {"type": "incident_record", "fields": ["record_id", "project"], "required": ["record_id"]}
GOOD = [{"type": "incident_record", "record_id": "INC-42", "project": "alpha"}]
INVALID = ("invalid_authorization_details", "authorization_details_invalid")  # (error, audit reason)

# The Cedar role: allowed only for details naming project `alpha` and nothing else.
ALPHA_ONLY = ('permit(principal, action, resource) when { '
              'context.authorization_details.incident_record.project.contains("alpha") && '
              '["alpha"].containsAll(context.authorization_details.incident_record.project) };')


def jwt_role(name: str, *, details: list | None = None, required: bool = False, policy: str | None = None) -> dict:
    r = role(name, "mock", audience=INCIDENT_API)
    if details is not None:
        r["authorization_details"] = details
    if required:
        r["require_authorization_details"] = True
    if policy is not None:
        r["policy"] = policy
    return r


@pytest.fixture
def broker(broker_factory, mock_issuer, tmp_path):
    """One broker, four jwt roles for incident-api: `incident` (incident_record, required),
    `optional` (incident_record, not required), `bare` (declares none) and `cedar` (incident_record,
    the ALPHA_ONLY policy); the admin credential."""
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    return broker_factory(
        providers=[provider("mock", mock_issuer.issuer)],
        roles=[jwt_role("incident", details=[INCIDENT_RECORD], required=True),
               jwt_role("optional", details=[INCIDENT_RECORD]),
               jwt_role("bare"),
               jwt_role("cedar", details=[INCIDENT_RECORD], policy=ALPHA_ONLY)],
        server={"rate_limit_per_second": 0},
        extra_config={"admin": {"token_file": str(tmp_path / "admin.token")}},
    )


def ask(broker, assertion: str, role_name: str, details=None, raw: str | None = None):
    """An exchange for `role_name` with `details` (JSON-encoded here) or `raw` as the form's
    `authorization_details`; neither: the parameter is left out."""
    extra = {}
    if raw is not None:
        extra["authorization_details"] = raw
    elif details is not None:
        extra["authorization_details"] = json.dumps(details)
    return broker.exchange(assertion, role=role_name, extra=extra)


def introspect(broker, token: str) -> dict:
    r = requests.post(broker.url + "/v1/introspect", data={"token": token},
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def refused_invalid(broker, r, what: str = ""):
    assert (r.status, r.error, r.reason) == (400, *INVALID), (what, r)
    assert "access_token" not in r.text
    rec = broker.audit_record(r.decision_id)
    assert (rec["decision"], rec["reason"]) == ("deny", INVALID[1]), rec


# ---- granted: the response, the JWT, introspection, the audit -----------------------------------------


def test_granted_details_are_echoed_signed_introspected_and_audited(broker, mock_issuer):
    details = [{"type": "incident_record", "record_id": "INC-42", "project": ["alpha", "beta"]},
               {"type": "incident_record", "record_id": "INC-43"}]
    r = ask(broker, mock_issuer.token(), "incident", details)
    assert r.status == 200, r
    assert r.json["authorization_details"] == details, r.json  # RFC 9396 §7: as granted
    token = r.json["access_token"]
    claims = verify_broker_jwt(broker, token, audience=INCIDENT_API)
    assert claims["authorization_details"] == details, claims
    assert introspect(broker, token) == {"active": True, "token_type": "Bearer", **claims}
    [allow] = [a for a in broker.audit() if a["decision"] == "allow"]
    assert allow["authorization_details"] == details, allow
    # the twin: a role that declares types but does not require them grants none when asked none,
    # and nothing carries the member
    r = ask(broker, mock_issuer.token(), "optional")
    assert r.status == 200, r
    assert "authorization_details" not in r.json
    claims = verify_broker_jwt(broker, r.json["access_token"], audience=INCIDENT_API)
    assert "authorization_details" not in claims
    assert "authorization_details" not in introspect(broker, r.json["access_token"])
    allow = [a for a in broker.audit() if a["decision"] == "allow"][-1]
    assert "authorization_details" not in allow or allow["authorization_details"] in (None, []), allow


# ---- refused, and not spent ---------------------------------------------------------------------------

# (what, role, the bad request as (details, raw), the corrected details (None: leave them out))
BAD = {
    "unknown_type": ("incident", [{"type": "payment_record", "record_id": "INC-42"}], None, GOOD),
    "unknown_field": ("incident", [{"type": "incident_record", "record_id": "INC-42", "owner": "bob"}], None, GOOD),
    "missing_required_field": ("incident", [{"type": "incident_record", "project": "alpha"}], None, GOOD),
    "number_value": ("incident", [{"type": "incident_record", "record_id": 42}], None, GOOD),
    "object_value": ("incident", [{"type": "incident_record", "record_id": {"id": "INC-42"}}], None, GOOD),
    "list_of_numbers": ("incident", [{"type": "incident_record", "record_id": "INC-42", "project": [1]}], None, GOOD),
    "not_json": ("incident", None, "[{type: incident_record}", GOOD),
    "not_an_array": ("incident", {"type": "incident_record", "record_id": "INC-42"}, None, GOOD),
    "array_of_strings": ("incident", ["incident_record"], None, GOOD),
    "no_type": ("incident", [{"record_id": "INC-42"}], None, GOOD),
    "missing_while_required": ("incident", None, None, GOOD),
    "empty_while_required": ("incident", [], None, GOOD),
    "on_a_role_declaring_none": ("bare", GOOD, None, None),
    # RFC 9396 bounds of the spec: at most 8 objects, 16 entries a value, 256 bytes an entry
    "nine_objects": ("incident", [dict(GOOD[0], record_id=f"INC-{i}") for i in range(9)], None,
                     [dict(GOOD[0], record_id=f"INC-{i}") for i in range(8)]),
    "seventeen_entries": ("incident", [dict(GOOD[0], project=[f"p{i}" for i in range(17)])], None,
                          [dict(GOOD[0], project=[f"p{i}" for i in range(16)])]),
    "entry_of_257_bytes": ("incident", [dict(GOOD[0], record_id="I" * 257)], None,
                           [dict(GOOD[0], record_id="I" * 256)]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_details_are_refused_and_the_assertion_is_not_spent(broker, mock_issuer, case):
    role_name, details, raw, corrected = BAD[case]
    assertion = mock_issuer.token()
    r = ask(broker, assertion, role_name, details, raw)
    print(f"\n{case}: {r.status} {r.description[:200]}")
    refused_invalid(broker, r, case)
    again = ask(broker, assertion, role_name, details, raw)  # refused the same way, not as a replay
    refused_invalid(broker, again, case)
    # the twin: the same assertion, corrected, is granted (and then spent)
    ok = ask(broker, assertion, role_name, corrected)
    assert ok.status == 200, (case, ok)
    if corrected is None:
        assert "authorization_details" not in ok.json
    else:
        assert ok.json["authorization_details"] == corrected
    replay = ask(broker, assertion, role_name, corrected)
    assert replay.status == 400 and replay.reason == "token_replayed", replay


# ---- Cedar: context.authorization_details -----------------------------------------------------------------

# (details, allowed by ALPHA_ONLY): a string value is a one-element set, objects of one type merge,
# an absent field is the empty set
CEDAR = {
    "alpha": (GOOD, True),
    "alpha_as_a_list": ([dict(GOOD[0], project=["alpha"])], True),
    "alpha_twice": ([GOOD[0], dict(GOOD[0], record_id="INC-43")], True),
    "beta": ([dict(GOOD[0], project="beta")], False),
    "alpha_and_beta_merged": ([GOOD[0], dict(GOOD[0], record_id="INC-43", project="beta")], False),
    "no_project": ([{"type": "incident_record", "record_id": "INC-42"}], False),
    "no_details": (None, False),
}


@pytest.mark.parametrize("case", list(CEDAR))
def test_a_cedar_policy_decides_on_the_details(broker, mock_issuer, case):
    details, allowed = CEDAR[case]
    assertion = mock_issuer.token()
    r = ask(broker, assertion, "cedar", details)
    if allowed:
        assert r.status == 200, (case, r)
        assert r.json.get("authorization_details") == details
        return
    # README error table: a policy deny is 400 `invalid_target`, `policy_denied`
    assert (r.status, r.error, r.reason) == (400, "invalid_target", "policy_denied"), (case, r)
    # the twin: the same assertion (a deny spends nothing) with project alpha only is allowed
    ok = ask(broker, assertion, "cedar", GOOD)
    assert ok.status == 200, ok


# ---- explain ------------------------------------------------------------------------------------------------


def explain(broker, tmp_path, token: str, role_name: str, details=None):
    tf = tmp_path / "explain-token.jwt"
    tf.write_text(token + "\n")
    args = ["explain", "--config", str(broker.config_path), "--role", role_name, "--token-file", str(tf), "--json"]
    if details is not None:
        args += ["--authorization-details", json.dumps(details)]
    res = run_cli(broker.binary, args)
    doc = json.loads(res.stdout) if res.stdout.strip().startswith("{") else None
    return res, doc


def mentions(doc, needle) -> bool:
    """`needle` is a value somewhere in the JSON document."""
    if doc == needle:
        return True
    if isinstance(doc, dict):
        return any(mentions(v, needle) for v in doc.values())
    if isinstance(doc, list):
        return any(mentions(v, needle) for v in doc)
    return False


def test_explain_decides_with_the_details(broker, mock_issuer, tmp_path):
    token = mock_issuer.token()
    res, doc = explain(broker, tmp_path, token, "cedar", GOOD)
    assert res.returncode == 0, (res.returncode, res.stdout[-1500:], res.stderr[-1500:])
    assert doc["decision"] == "allow", doc
    assert mentions(doc, GOOD) or mentions(doc, GOOD[0]), "explain does not show the details"
    beta = [dict(GOOD[0], project="beta")]
    res, doc = explain(broker, tmp_path, token, "cedar", beta)
    assert res.returncode == 3, (res.returncode, res.stdout[-1500:], res.stderr[-1500:])
    assert (doc["decision"], doc["reason"]) == ("deny", "policy_denied"), doc
    # invalid details, or none on a role requiring them: the server's refusal, as a deny
    res, doc = explain(broker, tmp_path, token, "incident", [{"type": "nope"}])
    assert res.returncode == 3 and doc["reason"] == INVALID[1], (res.returncode, doc, res.stderr[-800:])
    res, doc = explain(broker, tmp_path, token, "incident")
    assert res.returncode == 3 and doc["reason"] == INVALID[1], (res.returncode, doc, res.stderr[-800:])
    # explain spent nothing: the server grants the same assertion, and agrees with explain
    assert ask(broker, token, "cedar", beta).reason == "policy_denied"
    assert ask(broker, token, "cedar", GOOD).status == 200


# ---- AWS: an `aws_iam` detail is the session policy ------------------------------------------------------

AWS_IAM = {"type": "aws_iam", "fields": ["actions", "resources"], "required": ["actions", "resources"]}
S3_READ = [{"type": "aws_iam", "actions": ["s3:GetObject", "s3:ListBucket"],
            "resources": ["arn:aws:s3:::acme-incidents", "arn:aws:s3:::acme-incidents/INC-42/*"]}]


def as_list(v) -> list:
    """An IAM `Action`/`Resource`: a string is a one-element list."""
    return [v] if isinstance(v, str) else v


def test_an_aws_iam_detail_becomes_the_session_policy(broker_factory, mock_issuer, moto):
    aws_role = cloud_role("aws-incident", "github", aws_credential())
    aws_role["authorization_details"] = [AWS_IAM]
    b = broker_factory(providers=[github_provider("github", mock_issuer.issuer)], roles=[aws_role],
                       env=aws_broker_env(moto.url))
    assertion = mock_issuer.sign(github_claims(mock_issuer.issuer))
    # refused before STS: a detail without its required `resources`; the assertion is not spent
    r = b.exchange(assertion, role="aws-incident",
                   extra={"authorization_details": json.dumps([{"type": "aws_iam", "actions": ["s3:GetObject"]}])})
    refused_invalid(b, r, "aws_iam without resources")
    assert moto.recorded("AssumeRole") == [], "nothing reached STS"
    # the twin: the same assertion with both lists
    r = b.exchange(assertion, role="aws-incident", extra={"authorization_details": json.dumps(S3_READ)})
    assert r.status == 200, r
    assert r.json["issued_token_type"] == AWS_CREDENTIALS_TYPE
    assert r.json["authorization_details"] == S3_READ
    [sent] = assume_role_requests(moto)
    policy = json.loads(sent["Policy"])
    print(f"\nsession policy: {json.dumps(policy)}")
    statements = policy["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert len(allows) == 1, allows  # the detail's Allow, not the role's `*` beside it
    assert sorted(as_list(allows[0]["Action"])) == sorted(S3_READ[0]["actions"]), allows
    assert sorted(as_list(allows[0]["Resource"])) == sorted(S3_READ[0]["resources"]), allows
    assert set(allows[0]) <= {"Sid", "Effect", "Action", "Resource"}, allows  # no condition that widens it
    # still bound to the deadline
    deadline = [s for s in statements if s.get("Sid") == "EphemeraDeadline"]
    assert deadline and deadline[0]["Effect"] == "Deny" and deadline[0]["Action"] == "*", statements
    assert deadline[0]["Condition"] == {"DateGreaterThan": {"aws:CurrentTime": r.json["credentials"]["Expiration"]}}
    [allow] = [a for a in b.audit() if a["decision"] == "allow"]
    assert allow["authorization_details"] == S3_READ, allow
    # the twin of the policy: without details the role's session policy is the usual `*` within the role
    moto.reset_recording()
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role="aws-incident")
    assert r.status == 200, r
    [sent] = assume_role_requests(moto)
    allows = [s for s in json.loads(sent["Policy"])["Statement"] if s["Effect"] == "Allow"]
    assert allows == [{"Sid": "EphemeraWithinRole", "Effect": "Allow", "Action": "*", "Resource": "*"}], allows
