"""Durable single-node state (issue 14; security review C2, fault review B1/B2): `[state] backend =
"file"`, the default of `serve`, keeps used assertions, revocations and the grant inventory in one
file, each change committed before the caller is answered, and reloads them at start. A state file
that is new while the audit log beside it has records means the state was lost: the broker starts
an epoch and refuses what may have been used before it (`replay_state_reset`). The memory backend
forgets at a restart, as the README says, and warns so at start.

Real processes: the broker is ended with SIGTERM or SIGKILL and started again on the same config,
audit log and state file (crash_util.Served). Assertions are signed in process with a pinned key.
"""

from __future__ import annotations

import collections
import json
import random
import re
import threading
import time

import jwt
import pytest
import requests

from crash_util import Gate, Served, audit_verify
from harness import (
    DEFAULT_CONDITIONS,
    LocalKey,
    broker_config,
    good_claims,
    now,
    provider,
    role,
    wait_until,
)

ISSUER = "http://127.0.0.1:9/pinned"  # pinned keys: nothing is fetched from it
ADMIN_TOKEN = "admin-" + "d" * 40
OTHER_SUB = "repo:acme/other:ref:refs/heads/main"
LEEWAY = 3  # seconds, the provider's: keeps the epoch test short


@pytest.fixture(scope="module")
def key():
    return LocalKey("durable-1", kty="EC")


def assertion(key: LocalKey, **claims) -> str:
    return key.sign(good_claims(ISSUER, **claims))


@pytest.fixture
def served(ephemera_bin, tmp_path, key):
    """make(state=..., leeway=..., admin=...): a Served broker on a pinned provider, two roles
    (`deploy` for DEFAULT_SUB, `other` for OTHER_SUB), no rate limit. `state=None` leaves the
    `[state]` table out (the default of `serve`)."""
    made: list[Served] = []
    jwks = key.write_jwks(tmp_path / "jwks.json")
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)

    def make(state: dict | None, *, leeway: int | None = None) -> Served:
        workdir = tmp_path / f"served{len(made)}"
        prov = provider("pinned", ISSUER, jwks_file=str(jwks))
        if leeway is not None:
            prov["leeway"] = f"{leeway}s"
        roles = [role("deploy", "pinned"),
                 role("other", "pinned", conditions=dict(DEFAULT_CONDITIONS, sub=OTHER_SUB))]
        cfg = broker_config(workdir, [prov], roles, server={"rate_limit_per_second": 0})
        cfg["admin"] = {"token_file": str(tmp_path / "admin.token")}
        if state is None:
            del cfg["state"]
        else:
            cfg["state"] = dict(state)
        s = Served(ephemera_bin, workdir, cfg)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def grants(b) -> list[dict]:
    r = b.http.get(b.url + "/v1/grants", headers=admin(), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["grants"]


def refused(r, reason: str):
    assert r.status == 400 and r.reason == reason, r
    assert "access_token" not in r.text


# ---- 1. single use across a restart -------------------------------------------------------------

# (state table, how the first process ends): the file backend named, the default of `serve` (no
# [state] table), and an explicit path; ended gracefully and killed.
FILE_CASES = {
    "file-term": ({"backend": "file"}, "term"),
    "file-kill": ({"backend": "file"}, "kill"),
    "default-kill": (None, "kill"),
    "path-kill": ({"backend": "file", "path": "EXPLICIT"}, "kill"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_used_assertion_stays_used_across_a_restart(served, key, tmp_path, case):
    state, how = FILE_CASES[case]
    if state and state.get("path") == "EXPLICIT":
        state = dict(state, path=str(tmp_path / "elsewhere.redb"))
    s = served(state)
    b = s.current
    used, unused = assertion(key), assertion(key)
    assert b.exchange(used).status == 200
    refused(b.exchange(used), "token_replayed")
    b = s.restart(how)
    refused(b.exchange(used), "token_replayed")
    assert s.state_path.is_file() and s.state_path.stat().st_size > 0, s.state_path
    # twins: a fresh assertion is exchanged, and so is one issued before the restart but never
    # used (a restart on the kept file starts no epoch: nothing was lost)
    assert b.exchange(assertion(key)).status == 200
    assert b.exchange(unused).status == 200
    refused(b.exchange(unused), "token_replayed")
    s.check_audit_invariants()
    allows = [r for r in s.current.audit() if r["decision"] == "allow"]
    assert len(allows) == 3, allows


@pytest.mark.parametrize("how", ["term", "kill"])
def test_memory_state_forgets_a_used_assertion_at_restart(served, key, how):
    """The documented behaviour of `memory` (README; review C2, B2): a restart reopens the replay
    window. The twin of the test above: the same steps on `file` refuse the replay."""
    s = served({"backend": "memory"})
    b = s.current
    used = assertion(key)
    assert b.exchange(used).status == 200
    refused(b.exchange(used), "token_replayed")
    b = s.restart(how)
    again = b.exchange(used)
    assert again.status == 200, again
    s.check_audit_invariants()
    assert [r["decision"] for r in s.current.audit()] == ["allow", "deny", "allow"]


def test_memory_backend_warns_at_start_that_a_restart_forgets(served):
    mem = served({"backend": "memory"})
    assert "a restart forgets" in mem.current.stderr(), mem.current.stderr()[-2000:]
    # twin: the file backend (the default) does not warn
    dflt = served(None)
    assert "a restart forgets" not in dflt.current.stderr()
    assert dflt.state_path.is_file()


# ---- 2. revocations and the grant inventory across kill -9 ---------------------------------------

@pytest.mark.parametrize("backend", ["file", "memory"])
def test_a_revocation_and_the_grant_inventory_survive_kill_9(served, key, backend):
    s = served({"backend": backend})
    b = s.current
    ok = b.exchange(assertion(key))
    assert ok.status == 200, ok
    jti = jwt.decode(ok.json["access_token"], options={"verify_signature": False})["jti"]
    before = grants(b)
    assert [g["id"] for g in before] == [jti], before
    assert before[0]["provider"] == "pinned", before
    subject = before[0]["subject"]
    # one provider: `provider` may be left out; the key is in its namespace (review C3)
    r = b.http.post(b.url + "/v1/revoke", data={"subject": subject}, headers=admin(), timeout=30)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:pinned:{subject}", r.text
    refused(b.exchange(assertion(key)), "policy_denied")

    b = s.restart("kill")
    after = b.exchange(assertion(key))
    # twin: another subject is not revoked
    assert b.exchange(assertion(key, sub=OTHER_SUB), role="other").status == 200
    if backend == "file":
        refused(after, "policy_denied")
        assert f"revoked (subject:pinned:{subject})" in after.description, after
        listed = grants(b)
        # (the inventory marks it revoked now: issue 16)
        assert dict(before[0], revoked=True) in listed, (before, listed)
    else:  # memory forgets the revocation and the inventory (README; review C2)
        assert after.status == 200, after
        assert jti not in [g["id"] for g in grants(b)]
    s.check_audit_invariants()


# ---- 3. a lost state file starts an epoch ---------------------------------------------------------

def test_a_lost_state_file_starts_an_epoch(served, key):
    s = served({"backend": "file"}, leeway=LEEWAY)
    b = s.current
    used, unused = assertion(key), assertion(key)
    assert b.exchange(used).status == 200
    s.end("kill")
    s.state_path.unlink()  # the audit log stays: the state was lost, not never made
    started = now()
    b = s.start_again()
    up = now()  # the epoch is the broker's clock at start: within [started, up]
    # both may have been used before the loss (one was): refused, however fresh
    refused(b.exchange(used), "replay_state_reset")
    refused(b.exchange(unused), "replay_state_reset")
    assert "state was lost" in b.stderr(), b.stderr()[-2000:]
    # issued at the restart's first second, within the leeway of the epoch: it too may have been
    # accepted before it (iat - leeway - 1 < epoch), so it is refused
    refused(b.exchange(assertion(key, iat=started + LEEWAY)), "replay_state_reset")
    # twin: issued more than leeway + 1 s after the start (an iat within the leeway ahead of the
    # clock, once the clock is past the start's second) is exchanged
    wait_until(lambda: now() > up, timeout=5, interval=0.02, what="a second after the start")
    t = now()
    fresh = assertion(key, iat=t + LEEWAY)
    assert b.exchange(fresh).status == 200
    refused(b.exchange(fresh), "token_replayed")
    # the epoch is kept in the file: a further restart still refuses what came before it
    b = s.restart("kill")
    refused(b.exchange(unused), "replay_state_reset")
    refused(b.exchange(fresh), "token_replayed")
    assert b.exchange(assertion(key, iat=now() + LEEWAY)).status == 200
    s.check_audit_invariants()


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_journal_lost_after_a_crash_starts_an_epoch(served, key, how):
    """README (state backends): every change is appended to the state file's journal and flushed
    before the answer, and committed to the file at a clean stop; a journal missing after a crash
    lost changes, so it starts an epoch. The twin (`term`): after a clean stop the file alone is
    whole (a backup copied while the broker was stopped): no epoch, the used assertion stays used."""
    s = served({"backend": "file"}, leeway=LEEWAY)
    b = s.current
    used, unused = assertion(key), assertion(key)
    assert b.exchange(used).status == 200
    journal = s.state_path.with_name(s.state_path.name + ".journal")
    s.end(how)
    assert journal.exists()
    journal.unlink()
    b = s.start_again()
    if how == "kill":
        refused(b.exchange(used), "replay_state_reset")
        refused(b.exchange(unused), "replay_state_reset")
        assert "journal is missing" in b.stderr(), b.stderr()[-2000:]
    else:
        assert "journal is missing" not in b.stderr() and "state was lost" not in b.stderr()
        refused(b.exchange(used), "token_replayed")
        assert b.exchange(unused).status == 200
    s.check_audit_invariants()


@pytest.mark.parametrize("log", ["kept", "moved"])
def test_marks_made_with_a_grant_are_rebuilt_from_the_audit_log_after_a_crash(served, key, log):
    """README (state backends): a mark made with its grant is not flushed by the state file: the
    allow record naming both is flushed before the credential leaves, and after a crash the marks
    made since the last checkpoint are rebuilt from the audit log (`kept`: the used assertion is a
    replay and its grant is listed). The twin (`moved`): a log moved away by something other than
    the broker's own rotation no longer holds the record the checkpoint followed, so the marks
    since are unknown and an epoch begins (fail closed)."""
    s = served({"backend": "file"}, leeway=LEEWAY)
    b = s.current
    # (until the log has a record whose position the state file stores, marks are journaled)
    for _ in range(2):
        assert b.exchange(assertion(key)).status == 200
    used = assertion(key)
    ok = b.exchange(used)
    assert ok.status == 200, ok
    jti = jwt.decode(ok.json["access_token"], options={"verify_signature": False})["jti"]
    allow = [json.loads(line) for line in s.audit_path.read_text().splitlines()][-1]
    assert allow["decision"] == "allow" and allow["credential"]["jti"] == jti, allow
    assert re.fullmatch(r"[0-9a-f]{64}", allow["replay"]["id"]) and allow["replay"]["until"] > now(), allow
    assert used not in s.audit_path.read_text()
    s.end("kill")
    if log == "moved":
        for p in (s.audit_path, s.audit_path.with_name(s.audit_path.name + ".head")):
            p.rename(p.with_name("moved-" + p.name))
    b = s.start_again()
    if log == "kept":
        assert "rebuilt from the audit log" in b.stderr(), b.stderr()[-2000:]
        refused(b.exchange(used), "token_replayed")
        assert jti in [g["id"] for g in grants(b)]
        assert b.exchange(assertion(key)).status == 200
        s.check_audit_invariants()
    else:
        assert "no longer holds the record" in b.stderr(), b.stderr()[-2000:]
        refused(b.exchange(used), "replay_state_reset")
        up = now()  # (the epoch began at the start, at or before this second)
        wait_until(lambda: now() > up, timeout=5, interval=0.02, what="a second after the start")
        assert b.exchange(assertion(key, iat=now() + LEEWAY)).status == 200


def test_a_first_start_has_no_epoch(served, key):
    """The twin of the test above: a new state file beside an empty audit log is a first start,
    not a loss; an assertion issued before it is exchanged."""
    s = served({"backend": "file"}, leeway=LEEWAY)
    old = assertion(key, iat=now() - 10, nbf=now() - 10)
    s.end("kill")
    s.state_path.unlink()
    s.audit_path.unlink(missing_ok=True)
    b = s.start_again()
    assert "state was lost" not in b.stderr()
    assert b.exchange(old).status == 200
    refused(b.exchange(old), "token_replayed")


# ---- 4. kill -9 under load ------------------------------------------------------------------------

KILLS = 10
CLIENTS = 2
SAMPLE = 20


def test_kill_9_under_load_keeps_single_use_and_the_audit_trail(served, key, ephemera_bin):
    """The acceptance test of issue 14: exchanges by two client threads, each with fresh
    assertions, and `kill -9` of the broker at random points, restarted each time on the same
    files. After every restart: `audit verify` passes, every credential a
    client received has its allow record, and assertions answered 200 before the kill are refused
    as replays."""
    s = served({"backend": "file"})
    rng = random.Random()
    gate = Gate(CLIENTS)
    lock = threading.Lock()
    gen = [0]  # which process the clients talk to (a new session for each)
    oks: list[tuple[int, str, str]] = []  # (process, assertion, credential jti)
    statuses: collections.Counter = collections.Counter()
    errors: list[BaseException] = []

    def client():
        session, mine = None, -1
        while gate.passage():
            with lock:
                g, b = gen[0], s.current
            if g != mine:
                if session:
                    session.close()
                session, mine = requests.Session(), g
            tok = assertion(key)
            try:
                r = b.exchange(tok, session=session, timeout=30)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):  # killed mid-answer
                with lock:
                    statuses["no answer"] += 1
                continue
            with lock:
                statuses[r.status] += 1
                if r.status == 200:
                    jti = jwt.decode(r.json["access_token"], options={"verify_signature": False})["jti"]
                    oks.append((g, tok, jti))
        if session:
            session.close()

    def run():
        try:
            client()
        except BaseException as e:  # noqa: BLE001 (reported by the test thread)
            errors.append(e)
            gate.stop()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    per_kill = []
    try:
        for k in range(KILLS):
            start = len(oks)
            # the load runs for a random while; the kill lands wherever the exchanges are
            wait_until(lambda: len(oks) > start or errors, timeout=60, what="a 200 under load")
            time.sleep(rng.uniform(0.3, 1.5))
            s.end("kill")
            gate.close()
            assert not errors, errors
            b = s.start_again()
            with lock:
                gen[0] += 1
            res = audit_verify(ephemera_bin, s.audit_path)
            verified = res.returncode == 0
            allowed = {r["credential"]["jti"] for r in b.audit() if r["decision"] == "allow"}
            missing = [j for _, _, j in oks if j not in allowed]
            assert not missing, f"kill {k + 1}: credentials without an allow record: {missing[:5]}"
            before = [tok for g, tok, _ in oks if g == k]
            sample = before[-3:] + rng.sample(before[:-3], min(SAMPLE - 3, max(0, len(before) - 3)))
            for tok in sample:
                refused(b.exchange(tok), "token_replayed")
            per_kill.append((k + 1, len(before), len(sample), verified, res.stderr.strip()[-200:]))
            # (fault review B1: a kill between the log's flush and the head's update left the head
            # behind and the restarted broker forked the chain; the head is now reconciled at open)
            assert verified, f"kill {k + 1}: audit verify failed: {res.stdout}{res.stderr}"
            gate.open()
    finally:
        gate.stop()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors

    print(f"\nkills: {KILLS}; credentials: {len(oks)}; answers by status: {dict(statuses)}")
    for k, n, sampled, verified, why in per_kill:
        print(f"  kill {k}: {n} credentials before it, {sampled} replays refused, "
              f"audit verify {'ok' if verified else 'FAILED: ' + why}")
    assert len(per_kill) == KILLS and all(n > 0 for _, n, _, _, _ in per_kill), per_kill
