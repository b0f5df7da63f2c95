"""Rotating the broker's signing key under live consumers (ATTACKS.md 59), and the audit log under
faults: a sink that fails while the broker runs means no credential without its durable record,
and the log it leaves once the fault clears verifies (ATTACKS.md 56; review C4, fault B5); a log
deleted or rotated while serving is followed to a new file at its path (B6); a head left behind by
a crash is reported as such and rolled forward (B1, C20); a symlinked log or head is refused at
start (C13)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import (PARTNER, Broker, broker_config, provider, read_audit, require_peer, role, run_cli, to_toml,
                     wait_until)


def write_key(path: Path, key=None) -> str:
    """Writes `key` (default: a fresh P-256 key) as a PKCS#8 PEM file."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def start(ephemera_bin, workdir: Path, mock_issuer, port: int, **server) -> Broker:
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")], port=port,
                        server=server)
    return Broker(ephemera_bin, workdir, cfg)


def test_key_rotation_with_a_caching_consumer_has_no_verification_failure(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    port = free_port()
    k1, k2 = write_key(tmp_path / "k1.pem"), write_key(tmp_path / "k2.pem")
    # 1. sign with K1, publish K2 ahead of its use
    b = start(ephemera_bin, tmp_path / "step1", mock_issuer, port, signing_key_file=k1, publish_key_files=[k2])
    t1 = b.exchange(mock_issuer.token()).json["access_token"]
    # A consumer that never refetches (README: "tested with a PyJWT consumer that never
    # refetches"): its cache outlives the test and its unknown-kid refetch is held off for an
    # hour, so a kid missing from the set it fetched at step 1 fails the decode instead of
    # sending it back to the broker. Its fetches are counted as well.
    consumer = jwt.PyJWKClient(b.url + "/.well-known/jwks.json", cache_jwk_set=True, lifespan=3600,
                               cooldown_duration=3600)
    fetches = []
    fetch_data = consumer.fetch_data

    def counted_fetch():
        fetches.append(1)
        return fetch_data()

    consumer.fetch_data = counted_fetch
    decode = lambda tok: jwt.decode(tok, consumer.get_signing_key_from_jwt(tok).key, algorithms=["ES256"],
                                    audience=PARTNER, issuer=b.issuer)
    assert decode(t1)["sub"]
    kid_1 = jwt.get_unverified_header(t1)["kid"]
    assert len(fetches) == 1
    step1_kids = {k.key_id for k in consumer.get_jwk_set().keys}
    assert len(step1_kids) == 2 and kid_1 in step1_kids, step1_kids  # K1 signing, K2 published ahead
    b.stop()
    # 2. sign with K2, still publish K1 (tokens already out keep verifying)
    b = start(ephemera_bin, tmp_path / "step2", mock_issuer, port, signing_key_file=k2, publish_key_files=[k1])
    t2 = b.exchange(mock_issuer.token()).json["access_token"]
    kid_2 = jwt.get_unverified_header(t2)["kid"]
    assert kid_2 != kid_1
    assert step1_kids == {kid_1, kid_2}  # K2 was in the JWKS the consumer cached at step 1
    # the consumer never refetched: K2 came from its step-1 cache
    assert decode(t2)["sub"] and decode(t1)["sub"]
    assert len(fetches) == 1, f"the consumer refetched the JWKS {len(fetches) - 1} times"
    b.stop()
    # 3. retire K1: it leaves the JWKS
    b = start(ephemera_bin, tmp_path / "step3", mock_issuer, port, signing_key_file=k2)
    kids = [k["kid"] for k in b.get("/.well-known/jwks.json").json()["keys"]]
    assert kids == [kid_2]
    assert decode(b.exchange(mock_issuer.token()).json["access_token"])["sub"]
    assert len(fetches) == 1
    b.stop()


def jti(resp) -> str:
    return jwt.decode(resp.json["access_token"], options={"verify_signature": False})["jti"]


def allow_jtis(path: Path) -> list[str]:
    return [r["credential"]["jti"] for r in read_audit(path) if r["decision"] == "allow"]


def chains(path: Path) -> bool:
    """Each line's `prev` is the SHA-256 of the line before (the first's: none to check)."""
    lines = path.read_bytes().splitlines()
    return all(json.loads(b)["prev"] == hashlib.sha256(a).hexdigest() for a, b in zip(lines, lines[1:]))


def ignoring_sigxfsz(binary: Path, workdir: Path) -> Path:
    """A launcher that starts `binary` with SIGXFSZ ignored (the fault review's method): a write
    past the file-size limit then fails with EFBIG instead of killing the process. `exec` keeps
    the PID, so the limit can be changed on the broker itself. Its stderr goes through a pipe (as
    under journald or a container runtime) to the harness's file, written by `cat`, which the
    limit does not reach: the fault is the audit sink's alone."""
    path = workdir / "ephemera-ignoring-sigxfsz"
    path.write_text(f"#!{shutil.which('bash')}\ntrap '' XFSZ\nexec '{binary}' \"$@\" 2> >(exec cat >&2)\n")
    path.chmod(0o755)
    return path


def sigxfsz_ignored(pid: int) -> bool:
    ignored = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("SigIgn:"))
    return bool(int(ignored, 16) >> (signal.SIGXFSZ - 1) & 1)


def test_an_audit_sink_that_cannot_write_means_no_credential(ephemera_bin, tmp_path, mock_issuer):
    """A sink that fails while the broker runs (review C4, fault B5): the broker's file-size limit
    is lowered under it, so the next record is cut short (EFBIG) and later writes fail. No
    credential while it fails; once the limit is raised the same process mints again, and the log
    it leaves verifies: the torn bytes were cut back, every line is JSON, every credential has its
    allow record."""
    require_peer("bash", shutil.which("bash") is not None, "to start the broker with SIGXFSZ ignored")
    cfg = broker_config(tmp_path, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ignoring_sigxfsz(ephemera_bin, tmp_path), tmp_path, cfg)
    pid = b.proc.pid
    assert os.path.samefile(f"/proc/{pid}/exe", ephemera_bin)  # the shell exec'd the broker: the limit is its own
    assert sigxfsz_ignored(pid)  # else the limit would kill it rather than fail its writes
    delivered, figures = [], {}

    def exchange(phase: str, token: str | None = None):
        r = b.exchange(token or mock_issuer.token())
        figures.setdefault(phase, collections.Counter())[f"{r.status} {r.reason or 'ok'}"] += 1
        if r.status == 200:
            delivered.append(jti(r))
        else:
            assert "access_token" not in r.text and "credentials" not in (r.json or {}), r
        return r

    try:
        limited_at = fail_and_recover(b, pid, exchange, mock_issuer)
    finally:
        b.stop()
    print(f"\naudit sink with the file-size limit at {limited_at} bytes, then raised (answers by status):")
    for phase, counts in figures.items():
        print(f"  {phase:8} {dict(counts)}")
    res = run_cli(ephemera_bin, ["audit", "verify", str(b.audit_path)])
    print(f"  audit verify: exit {res.returncode} {(res.stdout + res.stderr).strip()}")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = b.audit_path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the log does not end in a newline"
    recs = [json.loads(line) for line in lines[:-1]]  # every line is one JSON record
    # every credential delivered has its allow record, and no allow record is left of a write that failed
    assert len(delivered) == 8 and sorted(allow_jtis(b.audit_path)) == sorted(delivered), recs


def fail_and_recover(b: Broker, pid: int, exchange, mock_issuer) -> int:
    """Three exchanges; the file-size limit lowered under the audit log: four exchanges and a
    replay; the limit raised: five exchanges. Returns the limit that was set."""
    for _ in range(3):
        assert exchange("before").status == 200
    # room for part of one more record: the next write is cut short, and every one after it fails
    size = b.audit_path.stat().st_size
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + 100, hard))  # `prlimit --pid PID --fsize=N:`
    token = mock_issuer.token()
    r = exchange("limited", token)
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "audit_unavailable", r
    assert r.headers.get("Retry-After"), r
    # the assertion was spent before the audit failed: a retry with it is refused as a replay (a
    # broker that had not spent it would answer 503 audit_unavailable again). The deny answer goes
    # out although its own record cannot be written either (a deny record is only logged on failure).
    again = exchange("limited", token)
    assert again.status == 400 and again.reason == "token_replayed", again
    # and fresh assertions still meet the broken sink, not a refusal of their own
    for _ in range(3):
        fresh = exchange("limited")
        assert fresh.status == 503 and fresh.reason == "audit_unavailable", fresh
    assert b.get("/readyz").status_code == 503
    # the limit raised: the same process, no restart, mints again and is ready again
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
    for _ in range(5):
        r = exchange("raised")
        assert r.status == 200, r
    assert b.get("/readyz").status_code == 200
    assert b.proc.pid == pid and b.alive()
    return size + 100


def serve_or_exit(ephemera_bin, cfg: dict, workdir: Path) -> tuple[int | None, str]:
    """Runs `ephemera serve` on `cfg` until it exits or answers /healthz. Returns its exit code
    (None: it started, and is stopped) and its stderr."""
    path = workdir / "ephemera.toml"
    path.write_text(to_toml(cfg))
    with open(workdir / "serve.stderr", "wb") as err:
        proc = subprocess.Popen([str(ephemera_bin), "serve", "--config", str(path)], stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL)

    def settled():
        if proc.poll() is not None:
            return True
        try:
            return requests.get(f"http://{cfg['server']['listen']}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(settled, timeout=30, what="the broker exits or starts")
    finally:
        code = proc.poll()
        if code is None:
            proc.terminate()
            proc.wait(timeout=10)
    return code, (workdir / "serve.stderr").read_text(errors="replace")


@pytest.mark.parametrize("linked", ["audit.jsonl", "audit.jsonl.head"])
def test_a_symlinked_audit_path_is_refused_at_start(ephemera_bin, tmp_path, mock_issuer, linked):
    """The log and its head are never opened through a symlink (review C13): a planted link would
    have the broker append to, or overwrite the start of, whatever it points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    workdir = tmp_path / "linked"
    workdir.mkdir()
    os.symlink(victim, workdir / linked)
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    code, err = serve_or_exit(ephemera_bin, cfg, workdir)
    assert code is not None, f"the broker started on a symlinked {linked}"
    assert code != 0 and f"audit log {workdir / 'audit.jsonl'}: Too many levels of symbolic links" in err, (code, err)
    assert victim.read_text() == "precious\n"
    # the twin: the same config with regular files at the path starts, mints and records
    os.unlink(workdir / linked)
    for f in ("audit.jsonl", "audit.jsonl.head"):
        assert not (workdir / f).is_symlink()
    b = Broker(ephemera_bin, workdir, cfg)
    try:
        assert b.exchange(mock_issuer.token()).status == 200
    finally:
        b.stop()
    assert [r["decision"] for r in read_audit(b.audit_path)] == ["allow"]
    assert run_cli(ephemera_bin, ["audit", "verify", str(b.audit_path)]).returncode == 0
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("how", ["deleted", "rotated"])
def test_a_deleted_or_rotated_audit_log_is_followed_to_a_new_file(ephemera_bin, tmp_path, mock_issuer, how):
    """`rm audit.jsonl`, or logrotate's `mv audit.jsonl audit.jsonl.1` without copytruncate, while
    the broker serves (fault B6): the records that follow go to a new file at the configured path,
    where readers look, and it verifies, then and after a restart (its head is the new file's, not
    the stale one of the file that went)."""
    cfg = broker_config(tmp_path, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ephemera_bin, tmp_path / "run1", cfg)
    log = b.audit_path
    first = [jti(b.exchange(mock_issuer.token())) for _ in range(3)]
    assert allow_jtis(log) == first
    if how == "deleted":
        log.unlink()
    else:
        log.rename(tmp_path / "audit.jsonl.1")
    answers = [b.exchange(mock_issuer.token()) for _ in range(3)]
    assert [r.status for r in answers] == [200] * 3, answers
    after = [jti(r) for r in answers]
    assert b.get("/readyz").status_code == 200
    b.stop()
    assert log.exists(), f"no audit log at {log} after it was {how}: the records went where no reader looks"
    assert allow_jtis(log) == after
    if how == "rotated":
        moved = tmp_path / "audit.jsonl.1"
        assert allow_jtis(moved) == first and chains(moved)  # the rotated file kept what came before
    res = run_cli(ephemera_bin, ["audit", "verify", str(log)])
    assert res.returncode == 0 and "3 records" in res.stdout, res.stdout + res.stderr
    # a restart continues the new file's chain
    b = Broker(ephemera_bin, tmp_path / "run2", cfg)
    try:
        last = b.exchange(mock_issuer.token())
        assert last.status == 200, last
    finally:
        b.stop()
    assert allow_jtis(log) == after + [jti(last)]
    res = run_cli(ephemera_bin, ["audit", "verify", str(log)])
    assert res.returncode == 0 and "4 records" in res.stdout, res.stdout + res.stderr


def test_an_audit_head_one_record_behind_is_reported_as_behind_and_rolled_forward(ephemera_bin, tmp_path,
                                                                                   mock_issuer):
    """A crash between the log's flush and the head's update leaves the head one record behind
    (fault B1, review C20), simulated by putting back the head saved one exchange earlier. `audit
    verify` says the head is behind, not that records were changed; the broker's next start rolls
    the head forward, and the chain goes on."""
    cfg = broker_config(tmp_path, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ephemera_bin, tmp_path / "run1", cfg)
    head = Path(str(b.audit_path) + ".head")
    for _ in range(2):
        assert b.exchange(mock_issuer.token()).status == 200
    saved = head.read_bytes()
    assert b.exchange(mock_issuer.token()).status == 200
    b.stop()
    res = run_cli(ephemera_bin, ["audit", "verify", str(b.audit_path)])
    assert res.returncode == 0 and "3 records" in res.stdout, res.stdout + res.stderr  # the twin: intact
    head.write_bytes(saved)
    res = run_cli(ephemera_bin, ["audit", "verify", str(b.audit_path)])
    assert res.returncode == 3, res
    assert "the head names record 2, 1 record(s) before the log's end" in res.stderr, res.stderr
    assert "changed or removed" not in res.stderr, res.stderr  # not called tampering
    b = Broker(ephemera_bin, tmp_path / "run2", cfg)
    try:
        assert b.exchange(mock_issuer.token()).status == 200
    finally:
        b.stop()
    res = run_cli(ephemera_bin, ["audit", "verify", str(b.audit_path)])
    assert res.returncode == 0 and "4 records" in res.stdout, res.stdout + res.stderr
    assert chains(b.audit_path) and len(allow_jtis(b.audit_path)) == 4


def write_rsa_key(path: Path, bits: int) -> str:
    return write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def test_an_rsa_signing_key_signs_rs256_that_pyjwt_verifies(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    key = write_rsa_key(tmp_path / "rsa.pem", 2048)
    b = start(ephemera_bin, tmp_path / "rsa", mock_issuer, free_port(), signing_key_file=key)
    token = b.exchange(mock_issuer.token()).json["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    jwks = b.get("/.well-known/jwks.json").json()["keys"]
    assert [(k["kty"], k["alg"]) for k in jwks] == [("RSA", "RS256")]
    assert b.get("/.well-known/openid-configuration").json()["id_token_signing_alg_values_supported"] == ["RS256"]
    consumer = jwt.PyJWKClient(b.url + "/.well-known/jwks.json")
    claims = jwt.decode(token, consumer.get_signing_key_from_jwt(token).key, algorithms=["RS256"],
                        audience=PARTNER, issuer=b.issuer)
    assert claims["role"] == "deploy"
    # a verifier that expects ES256 (the default) refuses it: the header names what really signed
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, consumer.get_signing_key_from_jwt(token).key, algorithms=["ES256"], audience=PARTNER)
    b.stop()


def test_a_short_rsa_signing_key_is_refused_at_start(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    workdir = tmp_path / "short"
    workdir.mkdir()
    key = write_rsa_key(tmp_path / "rsa1024.pem", 1024)
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")], port=free_port(),
                        server={"signing_key_file": key})
    path = workdir / "ephemera.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run([str(ephemera_bin), "serve", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr  # a config error
    assert "rsa1024.pem" in r.stderr and "2048 bits or more" in r.stderr, r.stderr
