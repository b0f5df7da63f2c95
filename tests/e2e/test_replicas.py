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
from types import SimpleNamespace

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (DEFAULT_SUB, REDIS_ESTABLISHED_EPOCH, Broker, broker_config, ci_strict, confirm_state,
                     first_iat_accepted_after, free_port, provider, race, redis_confirmed_key, redis_epoch_key,
                     redis_seq_key, role, wait_next_second, wait_until, wait_until_presentable)

ADMIN_TOKEN = "admin-" + "x" * 40
# a second workload (its own subject and role), to show what a subject revocation spares
OTHER_SUB = "repo:acme/other:ref:refs/heads/main"
OTHER_ROLE = role("other", "mock", conditions={"sub": OTHER_SUB, "repository": "acme/other", "ref": "refs/heads/main"})


def answer(r) -> str:
    """An answer for the figures: its status, and its reason slug when it has one."""
    return f"{r.status} {r.reason}" if r.reason else str(r.status)


class RedisServer:
    """A real redis-server on a free port, that tests kill and restart.

    No automatic persistence (`--save ''`, `--appendonly no`): a restart (`kill`, `start`) loses
    everything, marker included (the tests of a Redis that lost its data), unless the test took a
    snapshot with `save()` (`SAVE` writes `--dir`/`--dbfilename`, which the next `start` loads:
    a Redis that came back with its data as of that snapshot, review B4).

    It starts established: its epoch marker is an old time and its revocations are confirmed for
    that epoch (`seed_epoch`), as in a store that has served for a long time. The broker creates
    the marker only when it is absent, and refuses assertions issued within its leeway + 1 s of a
    marker it creates (review S2/B3), so a test on an empty Redis would start with that refusal.
    `seed_epoch` after a restart also stands for a Redis that came back with its data."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.start()
        self.seed_epoch()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def dump(self) -> Path:
        return self.workdir / "dump.rdb"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--dir", str(self.workdir), "--dbfilename", self.dump.name],
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
        """An old epoch marker and its revocations confirmed (overwriting any): the store looks
        established, as one that kept its data does (review C5: revocations are answered only while
        the confirmed epoch is the marker)."""
        assert self.command("SET", redis_epoch_key(prefix), REDIS_ESTABLISHED_EPOCH) == "OK"
        assert self.command("SET", redis_confirmed_key(prefix), REDIS_ESTABLISHED_EPOCH) == "OK"

    def _int(self, key: str) -> int | None:
        v = self.command("GET", key)
        return None if v is None else int(v)

    def epoch(self, prefix: str = "eph") -> int | None:
        return self._int(redis_epoch_key(prefix))

    def confirmed(self, prefix: str = "eph") -> int | None:
        return self._int(redis_confirmed_key(prefix))

    def seq(self, prefix: str = "eph") -> int | None:
        return self._int(redis_seq_key(prefix))

    def flushall(self):
        assert self.command("FLUSHALL") == "OK"

    def save(self):
        """A snapshot now (`SAVE`, synchronous): the next `start` comes back with this data."""
        assert self.command("SAVE") == "OK"
        assert self.dump.is_file(), self.dump

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


def replica_config(workdir: Path, tmp_path: Path, issuer: str, redis_url: str, roles: list | None = None,
                   **state) -> dict:
    """A replica on `redis_url` with the shared signing key and the admin credential."""
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN_TOKEN)
    cfg = broker_config(workdir, [provider("mock", issuer)], roles or [role("deploy", "mock")],
                        server={"rate_limit_per_second": 0, "signing_key_file": shared_signing_key(tmp_path),
                                "issuer": "http://127.0.0.1/ephemera"})
    cfg["state"] = {"backend": "redis", "url": redis_url, "command_timeout": "2s", **state}
    cfg["admin"] = {"token_file": str(admin_file)}
    return cfg


@pytest.fixture
def replicas(ephemera_bin, tmp_path, mock_issuer, redis_server):
    made = []

    def make(n: int = 2, roles: list | None = None, **state):
        for i in range(n):
            workdir = tmp_path / f"replica{len(made)}"
            made.append(Broker(ephemera_bin, workdir,
                               replica_config(workdir, tmp_path, mock_issuer.issuer, redis_server.url, roles, **state)))
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
    used = mock_issuer.token()
    assert a.exchange(used).status == 200
    # A snapshot of the store as it is when it goes down (nothing is written while it is down):
    # the restart below comes back with every key, as a Redis with persistence does.
    redis_server.save()
    seq = redis_server.seq()
    redis_server.kill()
    for broker in (a, b):
        r = broker.exchange(mock_issuer.token())
        assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "replay_store_unavailable", r
        assert r.headers.get("Retry-After")
        assert broker.get("/readyz").status_code == 503
    audit = [rec for rec in a.audit() if rec.get("reason") == "replay_store_unavailable"]
    assert audit and all(rec["decision"] == "deny" for rec in audit)
    redis_server.start()
    # It comes back with its data: the epoch marker, its confirmation and the mark counter are
    # there, so no admin confirmation is needed (one restarted without its data:
    # test_a_redis_that_lost_its_data_does_not_reopen_replays; from an older snapshot:
    # test_b4_a_restore_from_an_older_snapshot_does_not_reopen_a_replay).
    assert (redis_server.epoch(), redis_server.confirmed(), redis_server.seq()) == (
        REDIS_ESTABLISHED_EPOCH, REDIS_ESTABLISHED_EPOCH, seq)
    wait_until(lambda: a.get("/readyz").status_code == 200, 15, what="readiness back")
    wait_until(lambda: a.exchange(mock_issuer.token()).status == 200, 15, what="exchanges back")
    assert b.exchange(mock_issuer.token()).status == 200
    again = b.exchange(used)  # the used mark came back with the data
    assert again.status == 400 and again.reason == "token_replayed", again
    assert redis_server.epoch() == REDIS_ESTABLISHED_EPOCH
    assert not [rec for rec in a.audit() + b.audit() if rec["decision"] == "revoke"]  # nobody confirmed


def test_a_broker_started_while_redis_is_down_runs_unready_and_becomes_ready(replicas, mock_issuer, redis_server):
    # README: "A broker started while Redis is down runs, unready"; "when Redis comes back,
    # service resumes without a restart".
    redis_server.kill()
    (a,) = replicas(1)  # the harness returns once /healthz answers 200: it runs
    assert "state store not ready at start" in a.stderr()
    r = a.get("/readyz")
    assert r.status_code == 503 and {k: r.json()[k] for k in ("state", "audit")} == {"state": False, "audit": True}, r.text
    refused = a.exchange(mock_issuer.token())
    assert refused.status == 503 and refused.reason == "replay_store_unavailable", refused
    redis_server.start()
    # It comes back with its data (the marker overwritten, so even a connection the broker made
    # in between does not count). An empty Redis at the first connection is a new epoch:
    # test_a_first_start_on_an_empty_redis_refuses_assertions_issued_within_the_leeway.
    redis_server.seed_epoch()
    wait_until(lambda: a.get("/readyz").status_code == 200, 15, what="readiness once Redis is up")
    assert {k: a.get("/readyz").json()[k] for k in ("state", "audit")} == {"state": True, "audit": True}
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


def wait_reconnected(broker, token: str):
    """Presents `token` until the broker is back on a restarted Redis; returns that answer. The
    connection manager reconnects on its own, with a backoff: a bounded retry (50 x 0.2 s) on the
    one answer that means "not reconnected yet". Any other answer ends the loop and is the
    caller's to assert, so the loop cannot hide a wrong verdict."""
    r = None
    for _ in range(50):
        r = broker.exchange(token)
        if r.reason != "replay_store_unavailable":
            break
        time.sleep(0.2)
    return r


def assert_revocations_unverified(r):
    """README error table: 503 `temporarily_unavailable`, `revocations_unverified` (review C5)."""
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "revocations_unverified", r
    assert "nothing is allowed until an admin has re-asserted the revocations" in r.description, r
    assert r.headers.get("Retry-After"), dict(r.headers)
    assert "access_token" not in r.text


def confirm(broker) -> int:
    """The admin's confirmation (`POST /v1/state/confirm`); the confirmed epoch (the marker's
    value). One suffices, whenever the next mark comes (before beb62dc the first mark a second
    later took the lost counter for a rollback and started another, unconfirmed, epoch:
    test_c5_a_confirmation_holds_when_the_first_mark_after_it_comes_a_second_later)."""
    r = confirm_state(broker, ADMIN_TOKEN)
    assert r.status_code == 200, r.text
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)
    body = r.json()
    assert set(body) == {"confirmed"} and isinstance(body["confirmed"], int), body
    return body["confirmed"]


def assert_unready(broker):
    """`/readyz` 503 while the store's revocations cannot be trusted (review C5, B4)."""
    r = broker.get("/readyz")
    assert r.status_code == 503 and {k: r.json()[k] for k in ("state", "audit")} == {"state": False, "audit": True}, r.text


def assert_confirm_audited(broker, epoch: int):
    recs = [rec for rec in broker.audit() if rec["decision"] == "revoke" and "confirmed" in rec.get("detail", "")]
    assert [rec["detail"] for rec in recs][-1:] == [
        f"confirmed that the revocations lost with the state are re-asserted (epoch {epoch})"], recs


def test_a_redis_that_lost_its_data_does_not_reopen_replays(replicas, mock_issuer, redis_server):
    (a,) = replicas(1)
    token = mock_issuer.token()
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert a.exchange(token).status == 200
    redis_server.kill()
    redis_server.start()  # no persistence: used ids, revocations and the epoch marker are gone
    # Revocations are lost with the data (review C5): nothing is allowed, the replay and a fresh
    # assertion alike, until an admin has re-asserted them and confirmed.
    lost = [wait_reconnected(a, token), a.exchange(mock_issuer.token())]
    figures = {"before confirm": dict(Counter(answer(r) for r in lost))}
    for r in lost:
        assert_revocations_unverified(r)
    assert_unready(a)  # not ready: it cannot decide
    assert redis_server.epoch() is None  # refused before the mark: no marker was set
    epoch = confirm(a)
    assert_confirm_audited(a, epoch)
    assert (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch)
    assert a.get("/readyz").status_code == 200  # the twin: ready once confirmed
    # The new epoch starts at the confirmation, in or after the token's iat second; the guard
    # refuses `iat - leeway - 1 < epoch` (review S2/B3), so the replay is refused even in the
    # token's own second.
    r = a.exchange(token)
    assert r.status == 400 and r.reason == "replay_state_reset", r
    assert epoch >= iat, (epoch, iat)
    assert f"reset at {epoch};" in r.description and "leeway" in r.description, r
    # The cost: an assertion issued now, within the leeway of the new epoch, is refused too ...
    soon = a.exchange(mock_issuer.token())
    assert soon.status == 400 and soon.reason == "replay_state_reset", soon
    # ... and the twin: one issued after the epoch by more than the leeway is accepted (an issuer
    # clock ahead, inside the leeway, stands in for a minute's wait), once.
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    fresh = mock_issuer.token(iat=later)
    ok = a.exchange(fresh)
    again = a.exchange(fresh)
    figures["after confirm"] = {"replay": answer(r), "iat=now": f"{soon.status} {soon.reason}",
                                "iat=epoch+leeway+1": ok.status, "its replay": f"{again.status} {again.reason}"}
    print(f"Redis restarted without its data (epoch {epoch}): answers by status {figures}")
    assert ok.status == 200, ok
    assert again.status == 400 and again.reason == "token_replayed", again
    assert redis_server.epoch() == epoch


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
    # a first deployment (its audit log is empty) takes the empty store as whole and confirms it
    # itself (review C5); a broker with a past does not:
    # test_a_broker_with_a_past_does_not_take_an_empty_redis_as_new
    assert redis_server.confirmed() == epoch
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


def test_a_broker_with_a_past_does_not_take_an_empty_redis_as_new(ephemera_bin, tmp_path, mock_issuer,
                                                                   redis_server):
    """Review C5: a broker whose audit log has records, started against an empty Redis (wiped
    while the brokers were down), cannot tell it from a first deployment by the store alone; it
    does not confirm it: every exchange is 503 `revocations_unverified` until an admin has
    re-asserted the revocations and confirmed. (The broker before C5 took the empty store as new
    and served a revoked subject once past the new epoch's leeway.) The twin is the first
    deployment (empty audit log), which confirms at connect:
    test_a_first_start_on_an_empty_redis_refuses_assertions_issued_within_the_leeway."""
    cfg = replica_config(tmp_path / "run0", tmp_path, mock_issuer.issuer, redis_server.url,
                         [role("deploy", "mock"), OTHER_ROLE])
    first = Broker(ephemera_bin, tmp_path / "run0", cfg)
    runs = [first]
    try:
        used = mock_issuer.token()
        assert first.exchange(used).status == 200
        assert admin_revoke_subject(first, OTHER_SUB).status_code == 200
        assert_revoked(first.exchange(other_token(mock_issuer), role="other"), OTHER_SUB)
        first.stop()
        redis_server.kill()
        redis_server.start()  # the data is gone while no broker runs
        second = Broker(ephemera_bin, tmp_path / "run1", cfg)  # the same config: the same audit log
        runs.append(second)
        # connected (it set the marker, SET NX), not ready: the marker is not confirmed
        assert_unready(second)
        marker = redis_server.epoch()
        assert marker is not None and redis_server.confirmed() is None, (marker, redis_server.confirmed())
        # past that marker's leeway: only the (lost) revocation could refuse it
        past = first_iat_accepted_after(marker)
        wait_until_presentable(past)
        revoked = second.exchange(other_token(mock_issuer, iat=past), role="other")
        replay = second.exchange(used)
        print(f"a broker with a past on an empty Redis: before confirm, the revoked subject "
              f"{revoked.status} {revoked.reason}, a replay {replay.status} {replay.reason}")
        assert_revocations_unverified(revoked)
        assert_revocations_unverified(replay)
        assert admin_revoke_subject(second, OTHER_SUB).status_code == 200  # re-asserted
        assert_revocations_unverified(second.exchange(mock_issuer.token(iat=past)))  # not yet confirmed
        # the confirmation starts a new epoch now (the unconfirmed marker is not kept)
        epoch = confirm(second)
        assert epoch >= marker and (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch)
        assert second.get("/readyz").status_code == 200
        r = second.exchange(used)
        assert r.status == 400 and r.reason == "replay_state_reset", r
        later = first_iat_accepted_after(epoch)
        wait_until_presentable(later)
        assert_revoked(second.exchange(other_token(mock_issuer, iat=later), role="other"), OTHER_SUB)
        ok = second.exchange(mock_issuer.token(iat=later))
        assert ok.status == 200, ok
    finally:
        for b in runs:
            b.stop()
    # the harness's audit invariants over both runs' answers against the one log
    Broker.check_audit_invariants(SimpleNamespace(audit=second.audit, responses=first.responses + second.responses))


# ---- review S2 / fault review B3: the epoch compared with the leeway -------------------------


def test_b3_a_wipe_in_the_tokens_iat_second_does_not_reopen_its_replay(replicas, mock_issuer, redis_server):
    """Fault review B3 (same second): a token issued, used and wiped (FLUSHALL) within one
    wall-clock second, then replayed, was accepted (10 of 10) under `iat < epoch`. Since review C5
    the replay after the wipe is 503 `revocations_unverified` until an admin confirms, and the new
    epoch starts at the confirmation. Each try starts on an established store and confirms in
    the token's iat second; the try counts only if the new epoch is that second, and at least one
    must be (else the case did not happen)."""
    (a,) = replicas(1)
    tries = []
    for _ in range(5):
        redis_server.seed_epoch()
        t = wait_next_second()
        token = mock_issuer.token(iat=t, nbf=t)
        first = a.exchange(token)
        assert first.status == 200, first
        redis_server.flushall()
        lost = a.exchange(token)
        r = confirm_state(a, ADMIN_TOKEN)
        assert r.status_code == 200, r.text
        epoch = r.json()["confirmed"]
        replay = a.exchange(token)
        tries.append((lost, replay, epoch == t and redis_server.epoch() == t))
    by_status = {"before confirm": dict(Counter(answer(r) for r, _, _ in tries)),
                 "after confirm": dict(Counter(answer(r) for _, r, _ in tries))}
    same = sum(1 for _, _, s in tries if s)
    print(f"B3 same second: {len(tries)} replays after FLUSHALL, answers by status {by_status}, "
          f"{same} with the new epoch in the token's iat second")
    assert same >= 1, "no try wiped the store and confirmed within the token's iat second"
    for lost, r, _ in tries:
        assert_revocations_unverified(lost)
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
    epoch (now + 1) was before its iat. Since review C5 the replay after the wipe is 503
    `revocations_unverified` until an admin confirms; the confirmation starts the new epoch,
    still before the token's iat."""
    (a,) = replicas(1)
    issued = int(time.time()) + 30
    token = mock_issuer.token(iat=issued, nbf=None)
    first = a.exchange(token)
    assert first.status == 200, first
    before = a.exchange(token)  # the twin, before the wipe: the used mark refuses it
    assert before.status == 400 and before.reason == "token_replayed", before
    redis_server.flushall()
    lost = a.exchange(token)
    assert_revocations_unverified(lost)
    epoch = confirm(a)
    replay = a.exchange(token)
    print(f"B3 issuer clock 30 s ahead: first {first.status}, replay {before.status} {before.reason}, "
          f"replay after FLUSHALL {lost.status} {lost.reason}, after confirm {replay.status} {replay.reason} "
          f"(epoch {epoch}, iat {issued})")
    assert redis_server.epoch() == epoch
    assert epoch < issued  # the case: the new epoch is before the token's iat
    assert replay.status == 400 and replay.reason == "replay_state_reset", replay
    # the twin: an assertion issued past the new epoch + leeway is accepted
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    ok = a.exchange(mock_issuer.token(iat=later, nbf=None))
    assert ok.status == 200, ok


# ---- review C5: revocations lost with the data; fault review B4: a restore from an older snapshot ----


def two_workload_replica(replicas):
    (a,) = replicas(1, roles=[role("deploy", "mock"), OTHER_ROLE])
    return a


def other_token(mock_issuer, **claims) -> str:
    return mock_issuer.token(sub=OTHER_SUB, repository="acme/other", **claims)


def admin_revoke_subject(broker, subject: str) -> requests.Response:
    return broker.http.post(broker.url + "/v1/revoke", data={"subject": subject}, headers=admin(), timeout=10)


def assert_revoked(r, subject: str = DEFAULT_SUB):
    assert r.status == 400 and r.reason == "policy_denied", r
    assert f"revoked (subject:mock:{subject})" in r.description, r


def test_c5_revocations_lost_with_the_data_fail_closed_until_an_admin_confirms(replicas, mock_issuer, redis_server):
    """Security review C5, its reproduction through the binary on a redis-server without
    persistence (`--save ''`): a subject revoked, FLUSHALL, and the next fresh assertion of that
    subject was granted (200: the revocation had silently vanished). Now every exchange is 503
    `revocations_unverified` until an admin has re-asserted the revocations and confirmed; then
    the subject is refused again and another subject is served."""
    a = two_workload_replica(replicas)
    figures = {}
    assert a.exchange(mock_issuer.token()).status == 200
    r = admin_revoke_subject(a, DEFAULT_SUB)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:mock:{DEFAULT_SUB}", r.text
    revoked = a.exchange(mock_issuer.token())
    assert_revoked(revoked)
    spared = a.exchange(other_token(mock_issuer), role="other")
    assert spared.status == 200, spared  # the twin before the wipe: another subject is served
    figures["before FLUSHALL"] = {"revoked subject": f"{revoked.status} {revoked.reason}", "other": spared.status}

    redis_server.flushall()
    probe = a.exchange(other_token(mock_issuer), role="other")
    # An assertion of the revoked subject issued after any epoch the wipe may have started by
    # more than the leeway: the epoch guard (S2/B3) lets it through, so only the revocation
    # stands between it and a credential (the broker before C5 set the epoch at the probe's
    # mark and served this one: 200, the revocation had silently vanished).
    since = redis_server.epoch() or int(time.time())
    wait_until_presentable(first_iat_accepted_after(since))
    vanished = a.exchange(mock_issuer.token(iat=first_iat_accepted_after(since)))
    lost = [vanished, probe]
    figures["after FLUSHALL"] = {"revoked subject, iat past the leeway": f"{vanished.status} {vanished.reason}",
                                 "other": f"{probe.status} {probe.reason}"}
    for r in lost:
        assert_revocations_unverified(r)
    rec = a.audit_record(vanished.decision_id)
    assert rec["decision"] == "deny" and rec["reason"] == "revocations_unverified", rec
    assert "POST /v1/state/confirm" in rec["detail"], rec
    # re-asserting alone does not reopen: the confirmation does, once the admin has done it
    r = admin_revoke_subject(a, DEFAULT_SUB)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:mock:{DEFAULT_SUB}", r.text
    reasserted = a.exchange(other_token(mock_issuer), role="other")
    figures["re-asserted, not confirmed"] = f"{reasserted.status} {reasserted.reason}"
    assert_revocations_unverified(reasserted)

    epoch = confirm(a)
    assert_confirm_audited(a, epoch)
    assert (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch)
    # the store starts a new epoch: an assertion issued within its leeway is refused once ...
    soon = a.exchange(other_token(mock_issuer), role="other")
    assert soon.status == 400 and soon.reason == "replay_state_reset", soon
    # ... the revoked subject is refused by its re-asserted revocation (the decision comes first)
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    still = a.exchange(mock_issuer.token(iat=later))
    assert_revoked(still)
    ok = a.exchange(other_token(mock_issuer, iat=later), role="other")
    figures["after confirm"] = {"revoked subject": f"{still.status} {still.reason}", "other": ok.status}
    print(f"C5 (epoch {epoch}): answers by status {figures}")
    assert ok.status == 200, ok
    assert redis_server.epoch() == epoch


def test_c5_confirm_on_a_healthy_store_is_harmless(replicas, mock_issuer, redis_server):
    """The twin of the C5 test: confirming on a store that lost nothing changes nothing: the
    answer is its established epoch, used assertions stay used, revocations stay in force,
    exchanges go on. Only the admin may confirm."""
    a = two_workload_replica(replicas)
    used = mock_issuer.token()
    assert a.exchange(used).status == 200
    assert admin_revoke_subject(a, OTHER_SUB).status_code == 200
    assert_unauthorized(a.http.post(a.url + "/v1/state/confirm", timeout=10))
    assert_unauthorized(confirm_state(a, "wrong"))
    assert confirm(a) == REDIS_ESTABLISHED_EPOCH
    assert_confirm_audited(a, REDIS_ESTABLISHED_EPOCH)
    assert (redis_server.epoch(), redis_server.confirmed()) == (REDIS_ESTABLISHED_EPOCH, REDIS_ESTABLISHED_EPOCH)
    ok = a.exchange(mock_issuer.token())
    replay = a.exchange(used)
    revoked = a.exchange(other_token(mock_issuer), role="other")
    print(f"confirm on a healthy store: fresh {ok.status}, replay {replay.status} {replay.reason}, "
          f"revoked subject {revoked.status} {revoked.reason}")
    assert ok.status == 200, ok
    assert replay.status == 400 and replay.reason == "token_replayed", replay
    assert_revoked(revoked, OTHER_SUB)


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_confirm_is_refused_by_a_backend_that_keeps_its_revocations(broker_factory, mock_issuer, tmp_path, backend):
    """README: the memory and file backends keep their revocations (or rebuild them), so there is
    nothing to confirm: 400 `request_invalid`. The twin (Redis, 200):
    test_c5_confirm_on_a_healthy_store_is_harmless."""
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    b = broker_factory(issuer=mock_issuer, extra_config={"state": {"backend": backend},
                                                         "admin": {"token_file": str(tmp_path / "admin.token")}})
    r = confirm_state(b, ADMIN_TOKEN)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_request", body
    assert body["error_description"].startswith(
        "request_invalid: this state backend keeps its revocations: there is nothing to confirm"), body
    assert b.exchange(mock_issuer.token()).status == 200
    assert not [rec for rec in b.audit() if rec["decision"] == "revoke"]


def test_b4_a_restore_from_an_older_snapshot_does_not_reopen_a_replay(replicas, mock_issuer, redis_server):
    """Fault review B4 with a real RDB file: SAVE, exchange T, `kill -9` Redis, restart from
    dump.rdb, replay T: it was granted again (200): the snapshot kept the epoch marker and its
    confirmation, so nothing saw that every mark since the snapshot was gone. Now the revocation
    lookup reads the mark counter too: below what the broker has seen under that epoch, the store
    rolled back, a loss like any other (revocations made since the snapshot are gone too): every
    exchange is 503 `revocations_unverified` and `/readyz` 503 at once, before any mark. One
    confirmation starts a new epoch; then T's replay is `replay_state_reset`, and assertions issued
    past the new epoch + leeway are served."""
    (a,) = replicas(1)
    before = mock_issuer.token()
    assert a.exchange(before).status == 200
    redis_server.save()  # --dir D --dbfilename dump.rdb, no appendonly: the snapshot is all there is
    snapshot_seq = redis_server.seq()
    t = mock_issuer.token()
    assert a.exchange(t).status == 200
    seen = redis_server.seq()
    assert seen > snapshot_seq, (seen, snapshot_seq)
    redis_server.kill()  # SIGKILL: no save at shutdown
    redis_server.start()  # loads dump.rdb
    # what the snapshot held: the marker, its confirmation, and the counter as of the SAVE
    restored = (redis_server.epoch(), redis_server.confirmed(), redis_server.seq())
    assert restored == (REDIS_ESTABLISHED_EPOCH, REDIS_ESTABLISHED_EPOCH, snapshot_seq), (restored, snapshot_seq)
    lost = [wait_reconnected(a, t), a.exchange(before), a.exchange(mock_issuer.token())]
    answers = {"after the restore (T, the snapshot's token, a fresh one)": [answer(r) for r in lost]}
    for r in lost:
        assert_revocations_unverified(r)
    assert_unready(a)
    # refused before the mark: the restored store is untouched
    assert (redis_server.epoch(), redis_server.confirmed(), redis_server.seq()) == restored
    epoch = confirm(a)  # one confirmation: a new epoch, the counter lifted to what was seen
    assert epoch > REDIS_ESTABLISHED_EPOCH, epoch
    assert_confirm_audited(a, epoch)
    assert (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch)
    assert redis_server.seq() >= seen, (redis_server.seq(), seen)
    assert a.get("/readyz").status_code == 200
    again = [a.exchange(t), a.exchange(before)]
    answers["after confirm (T, the snapshot's token)"] = [answer(r) for r in again]
    for r in again:
        assert r.status == 400 and r.reason == "replay_state_reset", r
        assert f"reset at {epoch};" in r.description, r
    # the twin: an assertion issued past the new epoch + leeway is served, once
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    fresh = mock_issuer.token(iat=later)
    ok = a.exchange(fresh)
    answers["iat=epoch+leeway+1"] = ok.status
    print(f"B4 restore from an older RDB snapshot (new epoch {epoch}): answers {answers}")
    assert ok.status == 200, ok
    r = a.exchange(fresh)
    assert r.status == 400 and r.reason == "token_replayed", r
    assert redis_server.epoch() == epoch  # the confirmed epoch holds (no second rollback)


def test_c5_a_confirmation_holds_when_the_first_mark_after_it_comes_a_second_later(
        replicas, mock_issuer, redis_server):
    """A regression test (a strict xfail on d2a54b8): the mark counter is lost with the data, and
    the first mark a second after the confirmation took the loss for a rollback and started
    another epoch, not confirmed: 503 again until a second confirmation. One confirmation holds."""
    (a,) = replicas(1)
    assert a.exchange(mock_issuer.token()).status == 200
    redis_server.flushall()
    assert_revocations_unverified(a.exchange(mock_issuer.token()))
    epoch = confirm(a)
    wait_until(lambda: int(time.time()) > epoch, 3, interval=0.02, what="a second after the confirmation")
    soon = a.exchange(mock_issuer.token())  # the first mark after the confirmation
    assert soon.status == 400 and soon.reason == "replay_state_reset", soon
    assert f"reset at {epoch};" in soon.description, soon
    assert (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch), "the confirmed epoch was replaced"
    assert a.get("/readyz").status_code == 200
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    ok = a.exchange(mock_issuer.token(iat=later))
    assert ok.status == 200, ok


def test_b4_a_revocation_made_after_the_snapshot_does_not_vanish_on_a_restore(replicas, mock_issuer, redis_server):
    """A regression test (a strict xfail on d2a54b8, where a revocation did not move the mark
    counter, so a restore from a snapshot taken before it, with no mark since, looked whole and
    the revoked subject was served). Now the revocation moves the counter: after the restore the
    revoked subject is refused (503 `revocations_unverified`, as everything else) until the
    operator has re-asserted it and confirmed; then it is `policy_denied` again."""
    a = two_workload_replica(replicas)
    assert a.exchange(mock_issuer.token()).status == 200
    redis_server.save()
    snapshot_seq = redis_server.seq()
    assert admin_revoke_subject(a, DEFAULT_SUB).status_code == 200
    assert redis_server.seq() > snapshot_seq  # the revocation moved the counter
    assert_revoked(a.exchange(mock_issuer.token()))  # the twin, before the restore
    revoked_key = "{eph}:revoked:subject:mock:" + DEFAULT_SUB
    assert redis_server.command("GET", revoked_key) is not None
    redis_server.kill()
    redis_server.start()  # from the snapshot, which predates the revocation
    assert redis_server.command("GET", revoked_key) is None  # the revocation is gone with it
    lost = [wait_reconnected(a, mock_issuer.token()), a.exchange(other_token(mock_issuer), role="other")]
    figures = {"after the restore (revoked subject, other)": [answer(r) for r in lost]}
    for r in lost:
        assert_revocations_unverified(r)
    assert_unready(a)
    assert admin_revoke_subject(a, DEFAULT_SUB).status_code == 200  # the operator re-asserts it
    epoch = confirm(a)
    assert (redis_server.epoch(), redis_server.confirmed()) == (epoch, epoch)
    # (The re-assertion moved the counter back to what the broker had seen, so the confirmation
    # may find the store whole and keep the old epoch: the only write lost was that revocation.
    # When marks were lost too, that hides them:
    # test_b4_re_asserting_revocations_after_a_restore_does_not_hide_the_rollback.)
    later = max(first_iat_accepted_after(epoch), int(time.time()))
    wait_until_presentable(later)
    revoked = a.exchange(mock_issuer.token(iat=later))
    spared = a.exchange(other_token(mock_issuer, iat=later), role="other")
    figures["after re-assert and confirm (revoked subject, other)"] = [answer(revoked), answer(spared)]
    print(f"a revocation made after the snapshot, restore: answers {figures}")
    assert_revoked(revoked)
    assert spared.status == 200, spared


def test_b4_re_asserting_revocations_after_a_restore_does_not_hide_the_rollback(
        replicas, mock_issuer, redis_server):
    """(A regression test: a strict xfail on beb62dc, fixed since.) After a restore from an older snapshot the operator re-asserts the revocations, then
    confirms (README). One mark was lost (T's); one revocation re-asserted brings the counter back
    to what the broker saw. Until the confirmation everything must stay 503
    `revocations_unverified`, and T's replay must never be served. The twin without a
    re-assertion: test_b4_a_restore_from_an_older_snapshot_does_not_reopen_a_replay."""
    a = two_workload_replica(replicas)
    assert a.exchange(mock_issuer.token()).status == 200
    redis_server.save()
    t = mock_issuer.token()
    assert a.exchange(t).status == 200
    redis_server.kill()
    redis_server.start()  # from the snapshot: T's mark is gone
    assert_revocations_unverified(wait_reconnected(a, mock_issuer.token()))
    assert admin_revoke_subject(a, OTHER_SUB).status_code == 200  # the operator re-asserts
    replay = a.exchange(t)
    print(f"after a restore and one re-asserted revocation, not confirmed: T's replay {answer(replay)}, "
          f"/readyz {a.get('/readyz').status_code}")
    assert_revocations_unverified(replay)
    assert_unready(a)
    epoch = confirm(a)
    assert epoch > REDIS_ESTABLISHED_EPOCH, "the confirmation kept the rolled-back epoch"
    r = a.exchange(t)
    assert r.status == 400 and r.reason == "replay_state_reset", r


def test_b4_a_rollback_is_seen_by_a_replica_that_did_not_see_the_lost_writes(replicas, mock_issuer, redis_server):
    """(A regression test: a strict xfail on beb62dc, fixed since.) Two replicas; after the snapshot, A exchanges T and revokes a subject; Redis is restored
    from the snapshot. B (its own last write is in the snapshot) must not serve T's replay nor the
    revoked subject. The twin on the replica that made those writes:
    test_b4_a_restore_from_an_older_snapshot_does_not_reopen_a_replay and
    test_b4_a_revocation_made_after_the_snapshot_does_not_vanish_on_a_restore."""
    a, b = replicas(2, roles=[role("deploy", "mock"), OTHER_ROLE])
    assert a.exchange(mock_issuer.token()).status == 200
    assert b.exchange(mock_issuer.token()).status == 200
    redis_server.save()
    t = mock_issuer.token()
    assert a.exchange(t).status == 200
    assert admin_revoke_subject(a, OTHER_SUB).status_code == 200
    assert_revoked(b.exchange(other_token(mock_issuer), role="other"), OTHER_SUB)  # before the restore
    redis_server.kill()
    redis_server.start()
    on_b = [wait_reconnected(b, t), b.exchange(other_token(mock_issuer), role="other")]
    print(f"replica B after a restore that lost A's writes (T's replay, the revoked subject): "
          f"{[answer(r) for r in on_b]}")
    for r in on_b:
        assert_revocations_unverified(r)


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
