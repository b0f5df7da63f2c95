"""The behaviour the design review (`/work/shared/reviews/2026-12-design.md`, section (b), "Behaviour
found while reading") found wrong, pinned as it is to be once fixed; each failure test has a
passing twin.

- Bug 1: a workload's revoke by assertion with an assertion issued before the replay store lost
  its memory (a new Redis epoch) is `replay_state_reset`, as `/v1/token` answers, not
  `token_replayed`.
- Bug 3: `ephemera dev` audit records carry the config version (16 lower-case hex digits).
- Bug 5: `ephemera grants --active` and `GET /v1/grants?active=true` list only the grants still
  in force (not expired, and not revoked by task, jti, subject, role or source issuer).
- Bug 6: a refused revoke by assertion (bad signature, policy denied, another task, replayed) is
  audited: one `deny` record with its reason, role, request and decision ids, and the answer's
  `error_description` ends with ` (decision <id>)`, as the token route's refusals do.
"""

from __future__ import annotations

import json
import re
import time

import jwt
import pytest
import requests

from harness import (
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    ID_TOKEN,
    Resp,
    check_error_hygiene,
    cloud_role,
    confirm_state,
    github_claims,
    github_provider,
    first_iat_accepted_after,
    run_cli,
    verify_broker_jwt,
    wait_until,
    wait_until_presentable,
)
from test_admin import JWT_CREDENTIAL, Admin, admin
from test_dev import DevBroker
import test_replicas
from test_replicas import shared_signing_key

POLICY_VERSION = re.compile(r"[0-9a-f]{16}")
DECISION_SUFFIX = re.compile(r" \(decision ([A-Za-z0-9_-]+)\)$")


def task_of(claims: dict) -> str:
    """The task the GitHub-Actions profile derives: repository id / run / attempt."""
    return f"{claims['repository_id']}/{claims['run_id']}/{claims['run_attempt']}"


def revoke_by_assertion(url: str, assertion: str, task: str, role: str = "deploy") -> Resp:
    """A workload ending its own task: `POST /v1/revoke` without the admin credential. Error
    answers are checked for hygiene like the token route's."""
    r = requests.post(url + "/v1/revoke", timeout=HTTP_TIMEOUT, data={
        "subject_token": assertion, "subject_token_type": ID_TOKEN, "audience": role, "task": task})
    try:
        body = r.json()
    except ValueError:
        body = None
    resp = Resp(r.status_code, r.headers, body, r.text)
    if resp.status != 200:
        check_error_hygiene(resp, [assertion])
    return resp


@pytest.fixture
def adm(broker_factory, mock_factory, tmp_path, request):
    """test_admin.py's broker: GitHub-profile providers `gh` and `gh2`, JWT roles `deploy`,
    `deploy2` (gh) and `other` (gh2), an admin token; its audit checked at teardown."""
    a = Admin(broker_factory, mock_factory, tmp_path)
    yield a
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed:
        a.check()


# ---- bug 1: revoke by assertion after a state reset ------------------------------------------------


# the redis-server fixture of test_replicas.py (a fixture found by its name in this module)
redis_server = test_replicas.redis_server


@pytest.fixture
def redis_broker(broker_factory, mock_issuer, redis_server, tmp_path):
    """One broker on redis-server (no persistence), a GitHub-profile provider and role `deploy`,
    and the admin credential (to confirm the state after a reset)."""
    (tmp_path / "admin.token").write_text(test_replicas.ADMIN_TOKEN)
    return broker_factory(
        providers=[github_provider("gh", mock_issuer.issuer)],
        roles=[cloud_role("deploy", "gh", JWT_CREDENTIAL)],
        server={"rate_limit_per_second": 0, "signing_key_file": shared_signing_key(tmp_path)},
        extra_config={"state": {"backend": "redis", "url": redis_server.url, "command_timeout": "2s"},
                      "admin": {"token_file": str(tmp_path / "admin.token")}},
    )


def reset_state(broker, redis_server, probe: str) -> Resp:
    """Restarts redis-server without its data; presents `probe`, an assertion issued before the
    restart and never used, at /v1/token until the broker is back on Redis (a bounded retry on the
    one answer that means "not reconnected yet"): the revocations are lost with the data, so it is
    503 `revocations_unverified` (review C5). Then the admin confirms, which starts the new epoch
    at that moment, after every assertion issued before (the guard refuses
    `iat - leeway - 1 < epoch`). Returns the answer to `probe` presented again, the caller's to
    assert."""
    redis_server.kill()
    redis_server.start()
    r = None
    for _ in range(50):
        r = broker.exchange(probe)
        if r.reason != "replay_store_unavailable":
            break
        time.sleep(0.2)
    assert (r.status, r.reason) == (503, "revocations_unverified"), r
    c = confirm_state(broker, test_replicas.ADMIN_TOKEN)
    assert c.status_code == 200 and c.json() == {"confirmed": redis_server.epoch()}, c.text
    return broker.exchange(probe)


def claims_after_the_epoch(redis_server, mock, **overrides) -> dict:
    """GitHub-shaped claims issued after the store's new epoch by more than the leeway (the epoch
    guard refuses `iat - leeway - 1 < epoch`, review S2/B3), once such an `iat` is presentable
    (an issuer clock ahead, inside the leeway, stands in for a minute's wait)."""
    epoch = redis_server.epoch()
    assert epoch is not None, "no epoch marker after the reset"
    iat = first_iat_accepted_after(epoch)
    wait_until_presentable(iat)
    return github_claims(mock.issuer, iat=iat, nbf=iat, exp=iat + 300, **overrides)


def test_revoke_by_an_assertion_from_before_a_state_reset_is_replay_state_reset(redis_broker, mock_issuer,
                                                                               redis_server):
    b, mock = redis_broker, mock_issuer
    claims = github_claims(mock.issuer)
    old = mock.sign(claims)
    probe = mock.sign(github_claims(mock.issuer, run_id=claims["run_id"]))
    # the token route's answer for such an assertion (the reference)
    ref = reset_state(b, redis_server, probe)
    assert (ref.status, ref.error, ref.reason) == (400, "invalid_request", "replay_state_reset"), ref
    # the revoke route answers the same
    r = revoke_by_assertion(b.url, old, task_of(claims))
    assert r.status == 400 and r.error == "invalid_request", r
    assert r.description.startswith("replay_state_reset:"), r
    # and nothing was revoked: a fresh assertion of that task (issued in the new epoch) still
    # exchanges
    ok = b.exchange(mock.sign(claims_after_the_epoch(redis_server, mock, run_id=claims["run_id"])))
    assert ok.status == 200, ok


def test_revoke_by_an_assertion_from_after_a_state_reset_ends_its_task(redis_broker, mock_issuer, redis_server):
    # the twin: after the same reset, an assertion issued in the new epoch ends its task
    b, mock = redis_broker, mock_issuer
    ref = reset_state(b, redis_server, mock.sign(github_claims(mock.issuer)))
    assert ref.status == 400 and ref.reason == "replay_state_reset", ref
    claims = claims_after_the_epoch(redis_server, mock)
    r = revoke_by_assertion(b.url, mock.sign(claims), task_of(claims))
    assert r.status == 200 and r.json["revoked"] == f"task:gh:{task_of(claims)}", r
    refused = b.exchange(mock.sign(claims_after_the_epoch(redis_server, mock, run_id=claims["run_id"])))
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert f"revoked (task:gh:{task_of(claims)})" in refused.description, refused


# ---- bug 3: dev audit records carry the config version ---------------------------------------------


def allow_record(audit_path, access_token: str) -> dict:
    """The one allow record of the credential `access_token` (by its jti)."""
    jti = jwt.decode(access_token, options={"verify_signature": False})["jti"]
    recs = [json.loads(line) for line in audit_path.read_text().splitlines() if line.strip()]
    allows = [r for r in recs if r["decision"] == "allow" and r.get("credential", {}).get("jti") == jti]
    assert len(allows) == 1, recs
    return allows[0]


def test_dev_audit_records_carry_the_config_version(ephemera_bin, tmp_path):
    dev = DevBroker(ephemera_bin, tmp_path)
    try:
        m = re.search(r"Audit log: (\S+)", dev.stderr())
        assert m, dev.stderr()
        r = dev.exchange(dev.demo_token())
        assert r.status_code == 200, r.text
        rec = allow_record(tmp_path / m.group(1), r.json()["access_token"])
    finally:
        dev.stop()
    assert POLICY_VERSION.fullmatch(rec.get("policy_version", "")), rec


def test_serve_audit_records_carry_the_config_version(broker, mock_issuer):
    # the twin: `serve` already does
    r = broker.exchange(mock_issuer.token())
    assert r.status == 200, r
    rec = allow_record(broker.audit_path, r.json["access_token"])
    assert POLICY_VERSION.fullmatch(rec.get("policy_version", "")), rec


# ---- bug 5: grants --active ------------------------------------------------------------------------

REVOKE_KEYS = ["task", "jti", "subject", "role", "issuer"]


def revoke_one_of_two(adm, key: str) -> tuple[str, str]:
    """Two grants in two tasks, one of them revoked (as admin) by `key`, which names only it;
    returns (the revoked grant's id, the other's)."""
    if key == "role":
        gone, kept = adm.credential("deploy2", run_id="501"), adm.credential("deploy", run_id="502")
    elif key == "issuer":
        gone, kept = adm.credential("other", mock=adm.mock2, run_id="501"), adm.credential("deploy", run_id="502")
    elif key == "subject":
        # the same repository id (the roles pin it), renamed: another subject
        gone, kept = adm.credential(run_id="501", repository="acme/renamed"), adm.credential(run_id="502")
    else:
        gone, kept = adm.credential(run_id="501"), adm.credential(run_id="502")
    gone_claims = verify_broker_jwt(adm.broker, gone)
    assert gone_claims["task"] == f"{GH_REPOSITORY_ID}/501/1"
    value = {"task": gone_claims["task"], "jti": gone_claims["jti"], "subject": gone_claims["sub"], "role": "deploy2",
             "issuer": adm.mock2.issuer}[key]
    # a task or subject is in its provider's namespace, and the admin names the provider (review C3)
    namespaced = key in ("task", "subject")
    r = adm.revoke(**{key: value}, **({"provider": "gh"} if namespaced else {}))
    assert r.status_code == 200 and r.json()["revoked"] == (f"{key}:gh:{value}" if namespaced else f"{key}:{value}"), \
        r.text
    assert adm.active(gone) is False and adm.active(kept) is True
    return gone_claims["jti"], verify_broker_jwt(adm.broker, kept)["jti"]


def listed_over_http(adm, params: dict | None = None) -> list[str]:
    r = requests.get(adm.url + "/v1/grants", params=params, headers=admin(), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return sorted(g["id"] for g in r.json()["grants"])


def listed_by_cli(adm, ephemera_bin, *flags: str) -> list[str]:
    res = run_cli(ephemera_bin, ["grants", "--broker", adm.url, "--admin-token-file", str(adm.token_file),
                                 "--json", *flags])
    assert res.returncode == 0, res
    return sorted(g["id"] for g in json.loads(res.stdout)["grants"])


@pytest.mark.parametrize("key", REVOKE_KEYS)
def test_grants_active_over_http_lists_only_grants_in_force(adm, key):
    gone, kept = revoke_one_of_two(adm, key)
    assert listed_over_http(adm, {"active": "true"}) == [kept], f"the grant revoked by {key} is listed"


@pytest.mark.parametrize("key", REVOKE_KEYS)
def test_grants_cli_active_lists_only_grants_in_force(adm, ephemera_bin, key):
    gone, kept = revoke_one_of_two(adm, key)
    assert listed_by_cli(adm, ephemera_bin, "--active") == [kept], f"the grant revoked by {key} is listed"


@pytest.mark.parametrize("key", REVOKE_KEYS)
def test_grants_without_active_list_every_unexpired_grant(adm, ephemera_bin, key):
    # the twin: without `active=true` (absent, or any other value) and without `--active`,
    # the revoked grant is listed beside the other
    gone, kept = revoke_one_of_two(adm, key)
    both = sorted([gone, kept])
    assert listed_over_http(adm) == both
    for value in ("false", "1", "", "TRUE", "yes"):
        assert listed_over_http(adm, {"active": value}) == both, value
    assert listed_by_cli(adm, ephemera_bin) == both


# ---- bug 6: a refused revoke by assertion is audited -----------------------------------------------

# the answer each refusal gets: (status, error, reason)
REFUSALS = {
    "signature_invalid": (400, "invalid_request", "signature_invalid"),
    "policy_denied": (400, "invalid_target", "policy_denied"),
    "task_mismatch": (403, "access_denied", "task_mismatch"),
    "token_replayed": (400, "invalid_request", "token_replayed"),
}


def refused_revoke(adm, case: str) -> tuple[Resp, str]:
    """A workload's revoke by assertion refused for `case`; returns the answer and the task named."""
    claims = github_claims(adm.mock.issuer)
    task = task_of(claims)
    if case == "signature_invalid":
        h, p, s = adm.mock.sign(claims).split(".")
        i = len(s) // 2
        assertion = f"{h}.{p}.{s[:i]}{'B' if s[i] == 'A' else 'A'}{s[i + 1:]}"
    elif case == "policy_denied":
        assertion = adm.mock.sign(dict(claims, ref="refs/heads/dev"))
    elif case == "task_mismatch":
        other = github_claims(adm.mock.issuer)
        assert task_of(other) != task
        assertion = adm.mock.sign(other)
    else:  # token_replayed: the assertion was already spent at /v1/token
        assertion = adm.mock.sign(claims)
        assert adm.broker.exchange(assertion).status == 200
    return revoke_by_assertion(adm.url, assertion, task), task


def deny_records(adm) -> list[dict]:
    return [r for r in adm.broker.audit() if r["decision"] == "deny"]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_revoke_by_assertion_is_audited(adm, case):
    before = deny_records(adm)
    r, task = refused_revoke(adm, case)
    assert (r.status, r.error, r.reason) == REFUSALS[case], r
    m = DECISION_SUFFIX.search(r.description)
    assert m, f"no ` (decision <id>)` at the end of the answer: {r.description!r}"
    decision_id = m.group(1)
    new = wait_until(lambda: deny_records(adm)[len(before):], timeout=10, what="the deny record")
    assert len(new) == 1, new
    rec = new[0]
    assert rec["decision_id"] == decision_id, rec
    assert rec["reason"] == case and rec["role"] == "deploy", rec
    assert isinstance(rec.get("request_id"), str) and rec["request_id"], rec
    # nothing was revoked: the task named still exchanges
    assert adm.broker.exchange(adm.assertion(run_id=task.split("/")[1])).status == 200


def test_refused_revokes_and_a_good_one_form_one_verified_chain(adm, ephemera_bin):
    answers = [refused_revoke(adm, case)[0] for case in REFUSALS]
    claims = github_claims(adm.mock.issuer)
    ok = revoke_by_assertion(adm.url, adm.mock.sign(claims), task_of(claims))
    assert ok.status == 200 and ok.json["revoked"] == f"task:gh:{task_of(claims)}", ok
    adm.revoked.append(ok.json["revoked"])
    res = run_cli(ephemera_bin, ["audit", "verify", str(adm.broker.audit_path)])
    assert res.returncode == 0, res
    recs = adm.broker.audit()
    ids = [DECISION_SUFFIX.search(a.description) for a in answers]
    assert all(ids), [a.description for a in answers]
    refused = [r for r in recs if r["decision_id"] in {m.group(1) for m in ids}]
    assert [(r["decision"], r["reason"]) for r in refused] == [("deny", case) for case in REFUSALS], refused
    assert recs[-1]["decision"] == "revoke" and recs[-1]["task"] == task_of(claims), recs[-1]


def test_a_good_revoke_by_assertion_writes_its_revoke_record(adm, ephemera_bin):
    # the twin: a revoke by assertion that succeeds writes one `revoke` record, no deny, and the
    # chain verifies
    claims = github_claims(adm.mock.issuer)
    before = adm.broker.audit()
    ok = revoke_by_assertion(adm.url, adm.mock.sign(claims), task_of(claims))
    assert ok.status == 200 and ok.json["revoked"] == f"task:gh:{task_of(claims)}", ok
    adm.revoked.append(ok.json["revoked"])
    new = adm.broker.audit()[len(before):]
    # the detail names the namespaced key; the record's `task` is the bare task
    assert [(r["decision"], r["task"], r["detail"]) for r in new] == \
        [("revoke", task_of(claims), f"revoked `task:gh:{task_of(claims)}`")], new
    res = run_cli(ephemera_bin, ["audit", "verify", str(adm.broker.audit_path)])
    assert res.returncode == 0, res
    assert adm.broker.exchange(adm.assertion(run_id=claims["run_id"])).reason == "policy_denied"
