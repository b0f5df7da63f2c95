"""Several replicas on one real redis-server: single use, readiness, fail-closed state, the epoch
guard, and graceful shutdown under load (issue 7; ATTACKS.md 43, 47, 55, 58)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import Broker, broker_config, free_port, provider, role, wait_next_second, wait_until


class RedisServer:
    """A real redis-server on a free port, without persistence, that tests kill and restart."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.start()

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

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server missing in CI (scripts/test installs it)")
        pytest.skip("redis-server not installed")
    r = RedisServer(tmp_path)
    yield r
    r.kill()


@pytest.fixture
def replicas(ephemera_bin, tmp_path, mock_issuer, redis_server):
    made = []

    def make(n: int = 2, **state):
        for i in range(n):
            workdir = tmp_path / f"replica{len(made)}"
            cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                                server={"rate_limit_per_second": 0})
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
    results = []
    lock = threading.Lock()

    def fire(broker):
        r = broker.exchange(token)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=fire, args=(a if i % 2 else b,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
    wait_until(lambda: a.get("/readyz").status_code == 200, 15, what="readiness back")
    wait_until(lambda: a.exchange(mock_issuer.token()).status == 200, 15, what="exchanges back")
    assert b.exchange(mock_issuer.token()).status == 200


def test_a_redis_that_lost_its_data_does_not_reopen_replays(replicas, mock_issuer, redis_server):
    (a,) = replicas(1)
    token = mock_issuer.token()
    assert a.exchange(token).status == 200
    redis_server.kill()
    redis_server.start()  # no persistence: used ids and the epoch marker are gone
    wait_next_second()
    r = None
    for _ in range(20):  # the connection manager reconnects on its own
        r = a.exchange(token)
        if r.reason != "replay_store_unavailable":
            break
        time.sleep(0.2)
    assert r.status == 400 and r.reason == "replay_state_reset", r
    wait_next_second()
    assert a.exchange(mock_issuer.token()).status == 200  # issued after the new epoch


def test_graceful_shutdown_under_load_leaves_no_allow_without_its_audit_record(ephemera_bin, tmp_path, mock_issuer):
    workdir = tmp_path / "shutdown"
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                        server={"rate_limit_per_second": 0})
    b = Broker(ephemera_bin, workdir, cfg)
    tokens = [mock_issuer.token() for _ in range(60)]
    results = []
    lock = threading.Lock()

    def fire(tok):
        try:
            r = b.exchange(tok)
            with lock:
                results.append(r.status)
        except Exception:  # connection refused once the listener is closed
            with lock:
                results.append(None)

    threads = [threading.Thread(target=fire, args=(t,)) for t in tokens]
    for t in threads[:30]:
        t.start()
    time.sleep(0.05)
    b.proc.send_signal(signal.SIGTERM)
    for t in threads[30:]:
        t.start()
    for t in threads:
        t.join()
    b.proc.wait(timeout=40)
    assert b.proc.returncode == 0
    oks = results.count(200)
    allows = sum(1 for rec in b.audit() if rec["decision"] == "allow")
    assert oks >= 1 and oks == allows, (oks, allows, results)
    assert all(s in (200, 503, None) for s in results), results
