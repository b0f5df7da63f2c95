"""AWS live sessions ended on revoke (issue 15 part E), against moto_server's STS and IAM.

A role whose credential says `end_sessions_on_revoke = true` names its sessions
`eph-<16 hex of SHA-256(provider \\0 task)>-<8 hex of SHA-256(grant jti)>`; a revocation that
ends a task with live sessions of such a role puts the inline policy `ephemera-revoked-<16 hex>`
on the IAM role — Deny everything to sessions of that task issued before the revocation — and
deletes it once the task's last session has expired. A revocation of one grant (`jti`) denies
that session only (`ephemera-revoked-<16 hex>-<8 hex>`). IAM calls come from the durable outbox, audited and retried; an
IAM failure never holds up the revocation itself.

moto stores the inline policies (read back with GetRolePolicy) and records every request (the
broker's are those signed with its access key). The broker reaches IAM through the SDK's standard
`AWS_ENDPOINT_URL_IAM`. An IAM that fails is either moto without the role (NoSuchEntity, which the
SDK does not retry: each request in the recording is one try of the broker's) or a stand-in
answering 500, later forwarding to moto.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import http.client
import json
import re
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness import (
    AWS_ACCOUNT,
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    Broker,
    aws_broker_env,
    cloud_role,
    github_claims,
    github_provider,
    now,
    require_module,
    session_name,
    wait_until,
)

ADMIN_TOKEN = "admin-" + "a" * 40
BROKER_KEY_ID = aws_broker_env("")["AWS_ACCESS_KEY_ID"]
SETUP_KEY_ID = "AKIDTESTSETUP0000001"  # the test's own IAM calls, told apart from the broker's
ENDING, PLAIN = "aws-end", "aws-plain"  # broker roles: on IAM roles `deploy` and `plain`
IAM_ROLE = {ENDING: "deploy", PLAIN: "plain"}
# the outbox retries from 1 s, doubling, capped at 60 s
IAM_TIMEOUT = 90
SESSION_NAME = re.compile(r"eph-([0-9a-f]{16})-[A-Za-z0-9_+=,.@-]{8}")


def role_arn(iam_role: str) -> str:
    return f"arn:aws:iam::{AWS_ACCOUNT}:role/{iam_role}"


def task_hash(provider: str, task: str) -> str:
    return hashlib.sha256(f"{provider}\0{task}".encode()).hexdigest()[:16]


def grant_hash(jti: str) -> str:
    return hashlib.sha256(jti.encode()).hexdigest()[:8]


def revoked_policy(h: str, revoked_at: str, grant: str = "*") -> dict:
    """The document part E names, exactly (for one grant's session: its hash in place of `*`)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "EphemeraRevoked", "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"StringLike": {"aws:userid": f"*:eph-{h}-{grant}"},
                      "DateLessThan": {"aws:TokenIssueTime": revoked_at}}}]}


def denied(document: dict, user_id: str) -> bool:
    """Whether the deny's `aws:userid` pattern (IAM StringLike: `*` and `?`) matches a session's
    user id (`ROLEID:SESSIONNAME`, as GetCallerIdentity answers it)."""
    pattern = document["Statement"][0]["Condition"]["StringLike"]["aws:userid"]
    return fnmatch.fnmatchcase(user_id, pattern)


def grants(b: Broker, role: str) -> list[dict]:
    r = requests.get(b.url + "/v1/grants", params={"role": role}, headers=admin(), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["grants"]


def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def parse_time(s: str) -> int:
    return int(dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


@pytest.fixture(autouse=True)
def _peers():
    require_module("boto3")


def client(moto, service: str, creds: dict | None = None):
    boto3 = require_module("boto3")
    if creds is None:
        return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1",
                            aws_access_key_id=SETUP_KEY_ID, aws_secret_access_key="test-setup-secret")
    return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def create_role(moto, iam_role: str):
    client(moto, "iam").create_role(RoleName=iam_role, AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{AWS_ACCOUNT}:root"},
                                                 "Action": "sts:AssumeRole"}]}))


def inline_policies(moto, iam_role: str) -> list[str]:
    return client(moto, "iam").list_role_policies(RoleName=iam_role)["PolicyNames"]


def broker_calls(moto, action: str) -> list[dict]:
    """The requests of `action` moto received from the broker (signed with its key), as forms."""
    out = []
    for r in moto.recorded(action):
        auth = {k.lower(): v for k, v in r["headers"].items()}.get("authorization", "")
        if f"Credential={BROKER_KEY_ID}/" in auth:
            out.append(dict(r["form"]))
    return out


def start(broker_factory, mock, moto, tmp_path, *, iam_url: str | None = None, max_ttl: str = "15m"):
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    env = aws_broker_env(moto.url)
    env["AWS_ENDPOINT_URL_IAM"] = iam_url or moto.url
    return broker_factory(
        providers=[github_provider("github", mock.issuer)],
        roles=[cloud_role(ENDING, "github", {"kind": "aws", "role_arn": role_arn(IAM_ROLE[ENDING]),
                                             "end_sessions_on_revoke": True}, max_ttl=max_ttl),
               cloud_role(PLAIN, "github", {"kind": "aws", "role_arn": role_arn(IAM_ROLE[PLAIN])}, max_ttl=max_ttl)],
        env=env,
        server={"rate_limit_per_second": 0},
        extra_config={"admin": {"token_file": str(tmp_path / "admin.token")}},
        check_invariants=False,  # check_exchanges: revocations and IAM calls are `revoke` records
    )


def session(b: Broker, mock, role: str, **claims) -> tuple[dict, dict]:
    """AWS credentials from a fresh exchange, and the claims of the assertion."""
    c = github_claims(mock.issuer, **claims)
    r = b.exchange(mock.sign(c), role=role)
    assert r.status == 200, r
    return r.json["credentials"], c


def revoke(b: Broker, **key) -> dict:
    """An admin revocation (answered 200); its audit record (`time` is the revocation time)."""
    r = requests.post(b.url + "/v1/revoke", data=key, headers=admin(), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    revoked = r.json()["revoked"]
    [rec] = [x for x in b.audit() if x["decision"] == "revoke" and x.get("detail") == f"revoked `{revoked}`"]
    return rec


def refused_as_revoked(b: Broker, mock, role: str, key: str, **claims):
    r = b.exchange(mock.sign(github_claims(mock.issuer, **claims)), role=role)
    assert r.status in (400, 403) and "access_token" not in r.text, r
    assert f"revoked ({key})" in r.description, r


def iam_records(b: Broker, policy: str) -> list[dict]:
    """The audit records of IAM calls done about `policy` (part E: `revoke`, the detail naming the
    role and the policy); failed tries are `failed_iam_records`."""
    return [r for r in b.audit() if r["decision"] == "revoke" and policy in (r.get("detail") or "")
            and not r["detail"].startswith("failed (")]


def failed_iam_records(b: Broker, policy: str) -> list[dict]:
    """The audit records of failed (retried) IAM calls about `policy`."""
    return [r for r in b.audit() if r["decision"] == "revoke" and policy in (r.get("detail") or "")
            and r["detail"].startswith("failed (")]


def check_exchanges(b: Broker):
    recs = [r for r in b.audit() if r["decision"] != "revoke"]
    Broker.check_audit_invariants(types.SimpleNamespace(audit=lambda: recs, responses=b.responses))


# ---- the deny policy ------------------------------------------------------------------------------


def test_revoking_a_task_denies_its_live_sessions_at_iam(broker_factory, mock_issuer, moto, tmp_path):
    create_role(moto, "deploy")
    create_role(moto, "plain")
    b = start(broker_factory, mock_issuer, moto, tmp_path)
    task = f"{GH_REPOSITORY_ID}/6001/1"
    h = task_hash("github", task)
    # two sessions of the task, one of another run of the same role, one of the role without
    # end_sessions_on_revoke (the same task)
    sessions = [session(b, mock_issuer, ENDING, run_id="6001")[0] for _ in range(2)]
    other_run, _ = session(b, mock_issuer, ENDING, run_id="6002")
    plain_creds, plain_claims = session(b, mock_issuer, PLAIN, run_id="6001")
    idents = [client(moto, "sts", c).get_caller_identity() for c in sessions]
    other_ident = client(moto, "sts", other_run).get_caller_identity()
    plain_ident = client(moto, "sts", plain_creds).get_caller_identity()
    # the sessions are named for their task and grant: from STS itself (the assumed-role ARN) and as sent
    prefix = f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/deploy/"
    assert all(i["Arn"].startswith(prefix) for i in idents + [other_ident]), idents
    names = [i["Arn"][len(prefix):] for i in idents]
    for name in names:
        m = SESSION_NAME.fullmatch(name)
        assert m and m.group(1) == h and len(name) <= 64, (name, h)
    assert names[0] != names[1]
    by_task = {g["id"]: g for g in grants(b, ENDING)}
    assert sorted(names) == sorted(f"eph-{h}-{grant_hash(j)}" for j, g in by_task.items() if g["task"] == task)
    assert SESSION_NAME.fullmatch(other_ident["Arn"][len(prefix):]).group(1) == task_hash(
        "github", f"{GH_REPOSITORY_ID}/6002/1")
    sent = [a["RoleSessionName"] for a in broker_calls(moto, "AssumeRole") if a["RoleArn"] == role_arn("deploy")]
    assert sent[:2] == names, (sent, names)
    # the twin role keeps the usual session name
    assert plain_ident["Arn"] == f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/plain/{session_name(PLAIN, plain_claims)}"
    assert inline_policies(moto, "deploy") == [] and broker_calls(moto, "PutRolePolicy") == []

    rec = revoke(b, task=task, provider="github")
    policy = f"ephemera-revoked-{h}"
    wait_until(lambda: inline_policies(moto, "deploy"), timeout=IAM_TIMEOUT, what="the inline deny policy")
    assert inline_policies(moto, "deploy") == [policy]
    got = client(moto, "iam").get_role_policy(RoleName="deploy", PolicyName=policy)["PolicyDocument"]
    if isinstance(got, str):
        got = json.loads(got)
    expected = revoked_policy(h, rec["time"])
    assert got == expected, got
    assert parse_time(rec["time"]) == rec["ts"]
    # it denies both sessions of the task, and neither the other run's nor the plain role's
    assert all(denied(got, i["UserId"]) for i in idents), idents
    assert not denied(got, other_ident["UserId"]) and not denied(got, plain_ident["UserId"])
    # one PutRolePolicy, as sent
    [put] = broker_calls(moto, "PutRolePolicy")
    assert (put["RoleName"], put["PolicyName"]) == ("deploy", policy), put
    assert json.loads(put["PolicyDocument"]) == expected, put["PolicyDocument"]
    # audited: a revoke record naming the role and the policy
    [audited] = wait_until(lambda: iam_records(b, policy), timeout=IAM_TIMEOUT, what="the PutRolePolicy audited")
    assert role_arn("deploy") in audited["detail"] and "PutRolePolicy" in audited["detail"], audited
    assert audited["task"] == task, audited
    # the twin: the role without the flag got no policy, and nothing was asked of IAM for it
    assert inline_policies(moto, "plain") == []
    assert all(c["RoleName"] != "plain" for c in broker_calls(moto, "PutRolePolicy"))
    # and the revocation itself holds at the broker; the other run is not revoked
    refused_as_revoked(b, mock_issuer, ENDING, f"task:github:{task}", run_id="6001")
    session(b, mock_issuer, ENDING, run_id="6002")
    print(f"session_end: PutRolePolicy {len(broker_calls(moto, 'PutRolePolicy'))}, "
          f"audit records {len(iam_records(b, policy))}")
    check_exchanges(b)


@pytest.mark.parametrize("kind", ["jti", "subject", "role"])
def test_a_revocation_by_jti_subject_or_role_ends_the_sessions_too(broker_factory, mock_issuer, moto, tmp_path,
                                                                  kind):
    """A subject or role revocation denies the task's sessions (the task's policy); a jti
    revocation denies that grant's session only (`ephemera-revoked-<task>-<grant>`), not the
    task's other session."""
    create_role(moto, "deploy")
    b = start(broker_factory, mock_issuer, moto, tmp_path)
    creds = [session(b, mock_issuer, ENDING, run_id="6101")[0] for _ in range(2)]
    idents = [client(moto, "sts", c).get_caller_identity() for c in creds]
    h = task_hash("github", f"{GH_REPOSITORY_ID}/6101/1")
    listed = {f"eph-{h}-{grant_hash(g['id'])}": g for g in grants(b, ENDING)}
    first = listed[idents[0]["Arn"].rsplit("/", 1)[1]]
    key = {"jti": {"jti": first["id"]}, "subject": {"subject": first["subject"], "provider": "github"},
           "role": {"role": ENDING}}[kind]
    assert inline_policies(moto, "deploy") == []
    rec = revoke(b, **key)
    wait_until(lambda: inline_policies(moto, "deploy"), timeout=IAM_TIMEOUT, what="the inline deny policy")
    one = grant_hash(first["id"]) if kind == "jti" else None
    policy = f"ephemera-revoked-{h}" + (f"-{one}" if one else "")
    assert inline_policies(moto, "deploy") == [policy]
    got = client(moto, "iam").get_role_policy(RoleName="deploy", PolicyName=policy)["PolicyDocument"]
    got = json.loads(got) if isinstance(got, str) else got
    assert got == revoked_policy(h, rec["time"], one or "*"), got
    assert denied(got, idents[0]["UserId"])
    # the task's other session: denied with the task, not with one grant
    assert denied(got, idents[1]["UserId"]) is (kind != "jti")
    check_exchanges(b)


def test_the_deny_policy_is_deleted_once_the_tasks_last_session_expired(broker_factory, mock_issuer, moto,
                                                                         tmp_path):
    """Two sessions of one task, ending 8 s and 30 s from now: the policy stays while the second
    lives (checked once the first has ended), and is deleted after it ends."""
    create_role(moto, "deploy")
    b = start(broker_factory, mock_issuer, moto, tmp_path, max_ttl="1m")
    t = now()
    short, _ = session(b, mock_issuer, ENDING, run_id="6201", iat=t, nbf=t, exp=t + 8)
    long_, _ = session(b, mock_issuer, ENDING, run_id="6201", iat=t, nbf=t, exp=t + 30)
    first_end, last_end = parse_time(short["Expiration"]), parse_time(long_["Expiration"])
    assert first_end < last_end, (short["Expiration"], long_["Expiration"])
    task = f"{GH_REPOSITORY_ID}/6201/1"
    h = task_hash("github", task)
    policy = f"ephemera-revoked-{h}"
    revoke(b, task=task, provider="github")
    wait_until(lambda: inline_policies(moto, "deploy"), timeout=IAM_TIMEOUT, what="the inline deny policy")
    assert inline_policies(moto, "deploy") == [policy]

    # the first session has ended (with a few seconds for the broker to act on it), the second not
    wait_until(lambda: time.time() >= first_end + 5, timeout=60, interval=0.2, what="the first session's end")
    present = inline_policies(moto, "deploy")
    assert time.time() < last_end, "the machine was too slow to look between the two ends"
    assert present == [policy], "deleted while a session of the task still lived"
    assert broker_calls(moto, "DeleteRolePolicy") == []

    wait_until(lambda: inline_policies(moto, "deploy") == [], timeout=last_end - now() + IAM_TIMEOUT, interval=0.5,
               what="the policy deleted after the last session ended")
    assert now() >= last_end
    [delete] = broker_calls(moto, "DeleteRolePolicy")
    assert (delete["RoleName"], delete["PolicyName"]) == ("deploy", policy), delete
    # audited: the put, then the delete
    details = [r["detail"] for r in wait_until(lambda: len(iam_records(b, policy)) == 2 and iam_records(b, policy),
                                                timeout=IAM_TIMEOUT, what="the delete audited")]
    assert details[0].startswith("done: iam:PutRolePolicy") and details[1].startswith("done: iam:DeleteRolePolicy"), \
        details
    assert all(f"`{policy}`" in d and role_arn("deploy") in d for d in details), details
    check_exchanges(b)


# ---- IAM failing ----------------------------------------------------------------------------------


class IamStandIn:
    """An IAM endpoint that answers 500 (AWS's `ServiceFailure` error) while `failing`, and
    otherwise forwards each request unchanged to moto. Counts the requests it failed."""

    def __init__(self, moto):
        self.moto = moto
        self.failing = True
        self.failed = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with stand_in._lock:
                    failing = stand_in.failing
                    if failing:
                        stand_in.failed += 1
                if failing:
                    payload = (b'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error>'
                               b"<Type>Receiver</Type><Code>ServiceFailure</Code><Message>stand-in failure"
                               b"</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId>"
                               b"</ErrorResponse>")
                    status, ctype = 500, "text/xml"
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", stand_in.moto.port, timeout=HTTP_TIMEOUT)
                    conn.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    payload, status = resp.read(), resp.status
                    ctype = resp.getheader("Content-Type") or "text/xml"
                    conn.close()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._srv = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self._srv.shutdown()
        self._srv.server_close()


@pytest.mark.parametrize("failure", ["role_missing", "iam_500"])
def test_iam_failing_is_retried_and_audited_and_never_blocks_the_revocation(broker_factory, mock_issuer, moto,
                                                                            tmp_path, failure):
    stand_in = IamStandIn(moto) if failure == "iam_500" else None
    try:
        if stand_in is not None:
            create_role(moto, "deploy")
        b = start(broker_factory, mock_issuer, moto, tmp_path, iam_url=stand_in.url if stand_in else None)
        session(b, mock_issuer, ENDING, run_id="6301")
        task = f"{GH_REPOSITORY_ID}/6301/1"
        h = task_hash("github", task)
        policy = f"ephemera-revoked-{h}"
        # the revocation is answered and holds while IAM fails
        rec = revoke(b, task=task, provider="github")
        refused_as_revoked(b, mock_issuer, ENDING, f"task:github:{task}", run_id="6301")
        if stand_in is not None:
            wait_until(lambda: stand_in.failed >= 2, timeout=IAM_TIMEOUT, what="IAM tried and failing")
        else:
            wait_until(lambda: len(broker_calls(moto, "PutRolePolicy")) >= 2, timeout=IAM_TIMEOUT,
                       what="PutRolePolicy tried twice (NoSuchEntity)")
        # a failed try is logged (a warning naming the role and the policy), audited, and retried
        wait_until(lambda: "iam:PutRolePolicy failed" in b.stderr(), timeout=IAM_TIMEOUT, what="the failure logged")
        failed_logged = [line for line in b.stderr().splitlines() if "iam:PutRolePolicy failed" in line]
        assert all(policy in line and role_arn("deploy") in line for line in failed_logged), failed_logged
        assert iam_records(b, policy) == [], "nothing is recorded as done while IAM fails"
        assert wait_until(lambda: failed_iam_records(b, policy), timeout=IAM_TIMEOUT, what="a failed IAM call audited")
        refused_as_revoked(b, mock_issuer, ENDING, f"task:github:{task}", run_id="6301")

        # IAM recovers: a later try of the outbox puts the policy
        if stand_in is not None:
            with stand_in._lock:
                stand_in.failing = False
        else:
            create_role(moto, "deploy")
        wait_until(lambda: inline_policies(moto, "deploy"), timeout=IAM_TIMEOUT, what="the policy after IAM recovered")
        assert inline_policies(moto, "deploy") == [policy]
        got = client(moto, "iam").get_role_policy(RoleName="deploy", PolicyName=policy)["PolicyDocument"]
        assert (json.loads(got) if isinstance(got, str) else got) == revoked_policy(h, rec["time"])
        [done] = wait_until(lambda: iam_records(b, policy), timeout=IAM_TIMEOUT, what="the put audited")
        assert done["detail"].startswith("done: iam:PutRolePolicy") and role_arn("deploy") in done["detail"], done
        tries = stand_in.failed if stand_in else len(broker_calls(moto, "PutRolePolicy")) - 1
        print(f"iam_{failure}: failed tries {tries}, audit records {len(iam_records(b, policy))}")
        check_exchanges(b)
    finally:
        if stand_in is not None:
            stand_in.close()
