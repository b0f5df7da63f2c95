"""Several replicas on one real redis-server: single use, readiness, fail-closed state, the epoch
guard, and graceful shutdown under load (issue 7; ATTACKS.md 43, 47, 55, 58)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (REDIS_ESTABLISHED_EPOCH, Broker, broker_config, ci_strict, first_iat_accepted_after, free_port,
                     provider, race, redis_epoch_key, role, wait_next_second, wait_until, wait_until_presentable)


class RedisServer:
    """A real redis-server on a free port, without persistence, that tests kill and restart.

    It starts established: its epoch marker is an old time (`seed_epoch`), as in a store that has
    served for a long time. The broker creates the marker only when it is absent, and refuses
    assertions issued within its leeway + 1 s of a marker it creates (review S2/B3), so a test on an
    empty Redis would start with that refusal. A restart (`kill`, `start`) loses everything,
    marker included: the tests of a Redis that lost its data; `seed_epoch` after it stands for a
    Redis that came back with its data."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.start()
        self.seed_epoch()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, what="redis-server up")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args) -> str | int | None:
        """One command over RESP (a simple, integer or bulk reply; nil is None); an error reply fails."""
        words = [str(a).encode() for a in args]
        payload = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(payload)
            f = s.makefile("rb")
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b"+":
                return rest
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            raise AssertionError(f"redis {args[0]}: {line!r}")

    def seed_epoch(self, prefix: str = "eph"):
        """An old epoch marker (overwriting any): the store looks established."""
        assert self.command("SET", redis_epoch_key(prefix), REDIS_ESTABLISHED_EPOCH) == "OK"

    def epoch(self, prefix: str = "eph") -> int | None:
        v = self.command("GET", redis_epoch_key(prefix))
        return None if v is None else int(v)

    def flushall(self):
        assert self.command("FLUSHALL") == "OK"

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        if ci_strict():
            pytest.fail("redis-server missing in CI (scripts/test installs it)")
        pytest.skip("redis-server not installed")
    r = RedisServer(tmp_path)
    yield r
    r.kill()


def shared_signing_key(tmp_path: Path) -> str:
    """One PKCS#8 P-256 key for every replica (they must sign alike)."""
    path = tmp_path / "broker-key.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def replicas(ephemera_bin, tmp_path, mock_issuer, redis_server):
    made = []

    def make(n: int = 2, **state):
        for i in range(n):
            workdir = tmp_path / f"replica{len(made)}"
            cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                                server={"rate_limit_per_second": 0, "signing_key_file": shared_signing_key(tmp_path),
                                        "issuer": "http://127.0.0.1/ephemera"})
            cfg["state"] = {"backend": "redis", "url": redis_server.url, "command_timeout": "2s", **state}
            made.append(Broker(ephemera_bin, workdir, cfg))
        return made[-n:]

    yield make
    for b in made:
        b.stop()
    for b in made:
        b.check_audit_invariants()


def test_a_token_used_on_one_replica_is_refused_on_the_other(replicas, mock_issuer):
    a, b = replicas()
    token = mock_issuer.token()
    assert a.exchange(token).status == 200
    r = b.exchange(token)
    assert r.status == 400 and r.reason == "token_replayed", r
    assert b.exchange(mock_issuer.token()).status == 200  # twin: a fresh token works on B


def test_concurrent_presentations_across_replicas_have_exactly_one_success(replicas, mock_issuer):
    a, b = replicas()
    token = mock_issuer.token()
    results = race([a, b], token)
    assert sorted(r.status for r in results).count(200) == 1, [r.status for r in results]
    assert all(r.reason == "token_replayed" for r in results if r.status != 200)


def test_redis_down_fails_closed_and_recovers_without_restart(replicas, mock_issuer, redis_server):
    a, b = replicas()
    assert a.get("/readyz").status_code == 200
    redis_server.kill()
    for broker in (a, b):
        r = broker.exchange(mock_issuer.token())
        assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "replay_store_unavailable", r
        assert r.headers.get("Retry-After")
        assert broker.get("/readyz").status_code == 503
    audit = [rec for rec in a.audit() if rec.get("reason") == "replay_store_unavailable"]
    assert audit and all(rec["decision"] == "deny" for rec in audit)
    redis_server.start()
    # it comes back with its data, as a Redis with persistence does: the epoch marker is there
    # (one restarted without it lost its data: test_a_redis_that_lost_its_data_does_not_reopen_replays)
    redis_server.seed_epoch()
    wait_until(lambda: a.get("/readyz").status_code == 200, 15, what="readiness back")
    wait_until(lambda: a.exchange(mock_issuer.token()).status == 200, 15, what="exchanges back")
    assert b.exchange(mock_issuer.token()).status == 200


def test_a_broker_started_while_redis_is_down_runs_unready_and_becomes_ready(replicas, mock_issuer, redis_server):
    # README: "A broker started while Redis is down runs, unready"; "when Redis comes back,
    # service resumes without a restart".
    redis_server.kill()
    (a,) = replicas(1)  # the harness returns once /healthz answers 200: it runs
    assert "state store not ready at start" in a.stderr()
    r = a.get("/readyz")
    assert r.status_code == 503 and r.json() == {"state": False, "audit": True}, r.text
    refused = a.exchange(mock_issuer.token())
    assert refused.status == 503 and refused.reason == "replay_store_unavailable", refused
    redis_server.start()
    # It comes back with its data (the marker overwritten, so even a connection the broker made
    # in between does not count). An empty Redis at the first connection is a new epoch:
    # test_a_first_start_on_an_empty_redis_refuses_assertions_issued_within_the_leeway.
    redis_server.seed_epoch()
    wait_until(lambda: a.get("/readyz").status_code == 200, 15, what="readiness once Redis is up")
    assert a.get("/readyz").json() == {"state": True, "audit": True}
    ok = a.exchange(mock_issuer.token())
    assert ok.status == 200, ok
    assert a.alive()


def test_a_full_memory_store_fails_closed(broker_factory, mock_issuer):
    # README error table: 503 `replay_store_unavailable` when the state store "is full; nothing is
    # allowed on a guess". The single-replica store never evicts a live entry to make room.
    b = broker_factory(issuer=mock_issuer, extra_config={"state": {"backend": "memory", "max_entries": 2}})
    first, second = mock_issuer.token(), mock_issuer.token()
    # the twin: the same broker below its cap issues credentials
    assert b.exchange(first).status == 200
    assert b.exchange(second).status == 200
    full = b.exchange(mock_issuer.token())
    assert full.status == 503 and full.error == "temporarily_unavailable", full
    assert full.reason == "replay_store_unavailable" and full.headers.get("Retry-After"), full
    assert "access_token" not in full.text
    rec = b.audit_record(full.decision_id)
    assert rec["decision"] == "deny" and "full" in rec["detail"], rec
    assert sum(r["decision"] == "allow" for r in b.audit()) == 2
    # a full store still knows what it holds: a replay is a replay, not "unavailable"
    again = b.exchange(first)
    assert again.status == 400 and again.reason == "token_replayed", again


def test_a_redis_that_lost_its_data_does_not_reopen_replays(replicas, mock_issuer, redis_server):
    (a,) = replicas(1)
    token = mock_issuer.token()
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert a.exchange(token).status == 200
    redis_server.kill()
    redis_server.start()  # no persistence: used ids and the epoch marker are gone
    # The new epoch starts at the first mark after the loss, in or after the token's iat second;
    # the guard refuses `iat - leeway - 1 < epoch` (review S2/B3), so the replay is refused even in
    # the token's own second (which `iat < epoch` let through, about 1 run in 5 under load).
    r = None
    # The connection manager reconnects on its own, with a backoff: a bounded retry (50 x 0.2 s)
    # on the one answer that means "not reconnected yet". Any other answer ends the loop and is
    # then asserted exactly, so the loop cannot hide a wrong verdict; it only waits out the reconnect.
    for _ in range(50):
        r = a.exchange(token)
        if r.reason != "replay_store_unavailable":
            break
        time.sleep(0.2)
    assert r.status == 400 and r.reason == "replay_state_reset", r
    epoch = redis_server.epoch()
    assert epoch is not None and epoch >= iat, (epoch, iat)
    assert f"reset at {epoch};" in r.description and "leeway" in r.description, r
    # The cost: an assertion issued now, within the leeway of the new epoch, is refused too ...
    soon = a.exchange(mock_issuer.token())
    assert soon.status == 400 and soon.reason == "replay_state_reset", soon
    # ... and the twin: one issued after the epoch by more than the leeway is accepted (an issuer
    # clock ahead, inside the leeway, stands in for a minute's wait), once.
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    fresh = mock_issuer.token(iat=later)
    assert a.exchange(fresh).status == 200
    again = a.exchange(fresh)
    assert again.status == 400 and again.reason == "token_replayed", again


def test_a_first_start_on_an_empty_redis_refuses_assertions_issued_within_the_leeway(
        replicas, mock_issuer, redis_server):
    """README: the first start against an empty Redis is an epoch like any reset (the broker cannot
    tell an empty Redis from one that lost its data): assertions issued within leeway + 1 s of it
    are refused `replay_state_reset`; clients retry with a fresh assertion. The twin: the first
    `iat` past the leeway is accepted, and the one before it is not."""
    redis_server.flushall()  # empty: no marker
    (a,) = replicas(1)
    assert a.get("/readyz").status_code == 200  # connected: the marker is set (SET NX at connect)
    epoch = redis_server.epoch()
    assert epoch is not None and epoch > REDIS_ESTABLISHED_EPOCH
    now = a.exchange(mock_issuer.token())
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    edge = a.exchange(mock_issuer.token(iat=later - 1))
    past = a.exchange(mock_issuer.token(iat=later))
    figures = {"iat=now": now.status, "iat=epoch+leeway": edge.status, "iat=epoch+leeway+1": past.status}
    print(f"first start on an empty Redis (epoch {epoch}, leeway 60 s): answers by iat {figures}")
    for r in (now, edge):
        assert r.status == 400 and r.reason == "replay_state_reset", r
        assert f"reset at {epoch};" in r.description, r
    assert past.status == 200, past
    assert redis_server.epoch() == epoch  # the marker is kept, not moved by the refusals


# ---- review S2 / fault review B3: the epoch compared with the leeway -------------------------


def test_b3_a_wipe_in_the_tokens_iat_second_does_not_reopen_its_replay(replicas, mock_issuer, redis_server):
    """Fault review B3 (same second): a token issued, used and wiped (FLUSHALL) within one
    wall-clock second, then replayed, was accepted (10 of 10) under `iat < epoch`. Each try starts
    on an established store; the try counts only if the new epoch is the token's iat second, and
    at least one must be (else the case did not happen)."""
    (a,) = replicas(1)
    tries = []
    for _ in range(5):
        redis_server.seed_epoch()
        t = wait_next_second()
        token = mock_issuer.token(iat=t, nbf=t)
        first = a.exchange(token)
        assert first.status == 200, first
        redis_server.flushall()
        replay = a.exchange(token)
        tries.append((replay, redis_server.epoch() == t))
    by_status = dict(Counter(f"{r.status} {r.reason}" for r, _ in tries))
    same = sum(1 for _, s in tries if s)
    print(f"B3 same second: {len(tries)} replays after FLUSHALL, answers by status {by_status}, "
          f"{same} with the new epoch in the token's iat second")
    assert same >= 1, "no try wiped the store within the token's iat second"
    for r, _ in tries:
        assert r.status == 400 and r.reason == "replay_state_reset", r
    # the twin: after that reset, an assertion issued past epoch + leeway is accepted, once
    epoch = redis_server.epoch()
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    fresh = mock_issuer.token(iat=later)
    ok = a.exchange(fresh)
    assert ok.status == 200, ok
    again = a.exchange(fresh)
    assert again.status == 400 and again.reason == "token_replayed", again


def test_b3_an_issuer_clock_ahead_within_the_leeway_does_not_reopen_a_replay(replicas, mock_issuer, redis_server):
    """Fault review B3 (issuer ahead): a token with `iat = now + 30` (accepted: inside the 60 s
    leeway) was used, Redis was flushed, and the replay 1 s later was accepted, because the new
    epoch (now + 1) was before its iat."""
    (a,) = replicas(1)
    issued = int(time.time()) + 30
    token = mock_issuer.token(iat=issued, nbf=None)
    first = a.exchange(token)
    assert first.status == 200, first
    before = a.exchange(token)  # the twin, before the wipe: the used mark refuses it
    assert before.status == 400 and before.reason == "token_replayed", before
    flushed = int(time.time())
    redis_server.flushall()
    wait_until(lambda: int(time.time()) > flushed, 3, interval=0.02, what="a second after the wipe")
    replay = a.exchange(token)
    epoch = redis_server.epoch()
    print(f"B3 issuer clock 30 s ahead: first {first.status}, replay {before.status} {before.reason}, "
          f"replay after FLUSHALL {replay.status} {replay.reason} (epoch {epoch}, iat {issued})")
    assert epoch is not None and epoch < issued  # the case: the new epoch is before the token's iat
    assert replay.status == 400 and replay.reason == "replay_state_reset", replay
    # the twin: an assertion issued past the new epoch + leeway is accepted
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    ok = a.exchange(mock_issuer.token(iat=later, nbf=None))
    assert ok.status == 200, ok


def test_graceful_shutdown_under_load_leaves_no_allow_without_its_audit_record(ephemera_bin, tmp_path, mock_issuer):
    workdir = tmp_path / "shutdown"
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                        server={"rate_limit_per_second": 0})
    b = Broker(ephemera_bin, workdir, cfg)
    tokens = [mock_issuer.token() for _ in range(120)]
    results = []
    lock = threading.Lock()

    def worker():
        # Exchanges back to back until the broker is gone, so requests are in flight when SIGTERM
        # comes; only a refused or dropped connection ends a worker. Anything else (an answer
        # that fails Broker.post_token's hygiene checks, a read timeout, a non-JSON body) fails
        # the test through the thread's exception, recorded below.
        while True:
            with lock:
                if not tokens:
                    return
                tok = tokens.pop()
            try:
                r = b.exchange(tok)
            except requests.ConnectionError:  # the listener is closed, or the connection was dropped
                with lock:
                    results.append(None)
                return
            with lock:
                results.append(r.status)

    errors = []

    def run():
        try:
            worker()
        except BaseException as e:  # noqa: BLE001 (re-raised in the test thread below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        # SIGTERM once a credential has left (the first 200): the workers keep exchanges in flight
        wait_until(lambda: 200 in results or errors, 60, what="the first 200 under load")
    finally:
        b.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        b.proc.wait(timeout=40)
        b.stop()
    assert not errors, errors
    assert b.proc.returncode == 0
    oks = results.count(200)
    allows = sum(1 for rec in b.audit() if rec["decision"] == "allow")
    assert oks >= 1 and oks == allows, (oks, allows, results)
    assert all(s in (200, 503, None) for s in results), results


# ---- ending a task, introspection and the grant inventory (issue 7 item 4, 5; ATTACKS.md 46) -----

ADMIN_TOKEN = "admin-" + "x" * 40


def github_claims(run_id: str, **extra) -> dict:
    c = {"repository": "acme/app", "repository_id": "123456", "repository_owner": "acme",
         "repository_owner_id": "42", "run_id": run_id, "run_attempt": "1", "event_name": "push",
         "ref": "refs/heads/main"}
    c.update(extra)
    return c


@pytest.fixture
def github_replicas(ephemera_bin, tmp_path, mock_issuer, redis_server):
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    made = []
    for i in range(2):
        workdir = tmp_path / f"gh{i}"
        prov = {"name": "gh", "profile": "github-actions", "issuer": mock_issuer.issuer, "audiences": ["ephemera-test"]}
        r = {"name": "deploy", "provider": "gh", "max_ttl": "15m",
             "conditions": {"repository_id": "123456", "ref": "refs/heads/main"},
             "credential": {"kind": "jwt", "audience": "https://partner.example"}}
        cfg = broker_config(workdir, [prov], [r],
                            server={"rate_limit_per_second": 0, "signing_key_file": shared_signing_key(tmp_path),
                                        "issuer": "http://127.0.0.1/ephemera"})
        cfg["state"] = {"backend": "redis", "url": redis_server.url, "command_timeout": "2s"}
        cfg["admin"] = {"token_file": str(tmp_path / "admin.token")}
        made.append(Broker(ephemera_bin, workdir, cfg))
    yield made
    for b in made:
        b.stop()


def admin(h=ADMIN_TOKEN):
    return {"Authorization": f"Bearer {h}"}


def assert_unauthorized(r: requests.Response):
    """README error table: an admin route without the admin bearer credential answers 401
    `invalid_client` / `unauthorized`, with `WWW-Authenticate: Bearer` (RFC 6750)."""
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "invalid_client" and body["error_description"].startswith("unauthorized:"), body
    assert r.headers.get("WWW-Authenticate") == "Bearer", dict(r.headers)
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)


def introspect(broker, token, auth=ADMIN_TOKEN):
    return broker.http.post(broker.url + "/v1/introspect", data={"token": token}, headers=admin(auth), timeout=10)


def test_a_task_ended_on_one_replica_is_refused_on_the_other(github_replicas, mock_issuer):
    a, b = github_replicas
    first = a.exchange(mock_issuer.token(**github_claims("7")))
    assert first.status == 200, first
    jwt_1 = first.json["access_token"]
    assert introspect(b, jwt_1).json()["active"] is True
    assert_unauthorized(introspect(b, jwt_1, auth="wrong"))

    # a fresh assertion of ANOTHER task cannot end this one
    r = a.http.post(a.url + "/v1/revoke", timeout=10, data={
        "task": "123456/7/1", "subject_token": mock_issuer.token(**github_claims("8")),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token", "audience": "deploy"})
    assert r.status_code == 403 and r.json()["error_description"].startswith("task_mismatch"), r.text
    # nor can an unauthenticated caller
    assert_unauthorized(a.http.post(a.url + "/v1/revoke", data={"task": "123456/7/1"}, timeout=10))

    # the workload ends its own task with a fresh assertion of it (the last step of a job)
    r = a.http.post(a.url + "/v1/revoke", timeout=10, data={
        "task": "123456/7/1", "subject_token": mock_issuer.token(**github_claims("7")),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token", "audience": "deploy"})
    # (the key is in the workload's provider's namespace, review C3)
    assert r.status_code == 200 and r.json()["revoked"] == "task:gh:123456/7/1", r.text

    # on the other replica, at once: a new assertion of that task is refused, the old JWT is inactive
    again = b.exchange(mock_issuer.token(**github_claims("7")))
    assert again.status == 400 and again.reason == "policy_denied", again
    assert "revoked (task:gh:123456/7/1)" in again.description, again
    assert introspect(b, jwt_1).json() == {"active": False}
    # twin: another run of the same repository is unaffected
    assert b.exchange(mock_issuer.token(**github_claims("8"))).status == 200


def test_incident_revocation_by_subject_and_the_grant_inventory(github_replicas, mock_issuer):
    a, b = github_replicas
    ok = a.exchange(mock_issuer.token(**github_claims("21")))
    assert ok.status == 200
    listed = b.http.get(b.url + "/v1/grants", headers=admin(), timeout=10)
    assert listed.status_code == 200
    grants = listed.json()["grants"]
    assert [g["task"] for g in grants] == ["123456/21/1"] and grants[0]["role"] == "deploy"
    assert grants[0]["provider"] == "gh", grants
    assert_unauthorized(b.http.get(b.url + "/v1/grants", timeout=10))
    # incident response: revoke the whole repository's workload identity (one provider
    # configured: `provider` may be left out, the key is in its namespace)
    subject = grants[0]["subject"]
    r = b.http.post(b.url + "/v1/revoke", data={"subject": subject}, headers=admin(), timeout=10)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:gh:{subject}", r.text
    refused = a.exchange(mock_issuer.token(**github_claims("22")))
    assert refused.status == 400 and f"revoked (subject:gh:{subject})" in refused.description, refused
    assert introspect(a, ok.json["access_token"]).json() == {"active": False}


def test_admin_routes_can_listen_apart(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    admin_port = free_port()
    workdir = tmp_path / "apart"
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    cfg["admin"] = {"token_file": str(tmp_path / "admin.token"), "listen": f"127.0.0.1:{admin_port}"}
    b = Broker(ephemera_bin, workdir, cfg)
    try:
        assert b.exchange(mock_issuer.token()).status == 200
        # the inventory is not on the public listener at all
        assert b.http.get(b.url + "/v1/grants", headers=admin(), timeout=10).status_code == 404
        apart = f"http://127.0.0.1:{admin_port}/v1/grants"
        wait_until(lambda: requests.get(apart, timeout=2).status_code in (200, 401), 10, what="admin listener")
        assert_unauthorized(requests.get(apart, timeout=10))
        listed = requests.get(apart, headers=admin(), timeout=10)
        assert listed.status_code == 200 and len(listed.json()["grants"]) == 1
        # the public routes are not on the admin listener
        assert requests.post(f"http://127.0.0.1:{admin_port}/v1/token", timeout=10).status_code == 404
    finally:
        b.stop()
