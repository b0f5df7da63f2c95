"""README claims that tests/CLAIMS.md had marked UNTESTED, each pinned by the real binary with its
passing twin: log levels, `serve`'s exit code on a runtime failure, relative config paths, the
config checks (`server.issuer`, `leeway`, `max_ttl`, the redis signing key, the admin token),
`jwks_uri` without discovery, conditions on nested raw claims, lint warnings, raw Cedar that does
not count as a pin, the replay key of an ECDSA token without `jti`, the client's `--cache-dir`
for any format, the Redis round trips of an exchange, AWS credentials loaded only at the first
mint, and the `token_type_refused` and `task_mismatch` answers.

Each test's docstring quotes the README line it pins (README.md as of tests/CLAIMS.md)."""

from __future__ import annotations

import base64
import contextlib
import concurrent.futures
import json
import os
import shutil
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (
    AUDIENCE,
    AWS_ROLE_ARN,
    DEFAULT_CONDITIONS,
    GH_CONDITIONS,
    HTTP_TIMEOUT,
    ID_TOKEN,
    PARTNER,
    REDIS_ESTABLISHED_EPOCH,
    STARTUP_TIMEOUT,
    Broker,
    Canary,
    LocalKey,
    b64url,
    broker_config,
    cloud_role,
    free_port,
    github_claims,
    github_provider,
    good_claims,
    provider,
    read_audit,
    redis_epoch_key,
    require_peer,
    role,
    run_cli,
    to_toml,
    verify_broker_jwt,
    wait_until,
    with_overrides,
)

# P-256's group order n (FIPS 186-4 D.1.2.3): (r, s) and (r, n - s) are both valid ECDSA signatures.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def check(ephemera_bin, tmp_path: Path, cfg: dict, name: str = "ephemera.toml"):
    """`ephemera check` on `cfg` written to tmp_path/name."""
    path = tmp_path / name
    path.write_text(to_toml(cfg))
    return run_cli(ephemera_bin, ["check", "--config", str(path)])


def offline_config(tmp_path: Path, **role_over) -> dict:
    """A config `check` accepts without any network: an https OIDC issuer (nothing is fetched at
    load) and the default role."""
    r = role("deploy", "ci")
    r.update(role_over)
    return broker_config(tmp_path, [provider("ci", "https://ci.example.com")], [r])


def pem_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def log_events(broker: Broker) -> list[dict]:
    """The broker's JSON log lines (stderr), parsed."""
    out = []
    for line in broker.stderr().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


# ---- Commands: log levels and exit codes (README 73, 785-786) -----------------------------------


def test_debug_adds_a_log_line_per_exchange_and_info_has_none(broker_factory, mock_issuer):
    """README 73: "the audit log is the per-exchange record, `RUST_LOG=debug` adds a log line per
    exchange"; 785-786: "No per-exchange log line at `info`"."""
    def run(level):
        b = broker_factory(issuer=mock_issuer, rust_log=level)
        ok = b.exchange(mock_issuer.token())
        assert ok.status == 200, ok
        denied = b.exchange(mock_issuer.token(ref="refs/heads/dev"))
        assert denied.status == 400 and denied.reason == "policy_denied", denied
        allow_id = next(r["decision_id"] for r in b.audit() if r["decision"] == "allow")
        return b, allow_id, denied.decision_id

    def lines_for(b, decision_id):
        return [e for e in log_events(b) if e.get("fields", {}).get("decision_id") == decision_id]

    b, allow_id, deny_id = run("debug")
    wait_until(lambda: lines_for(b, deny_id), 10, what="the debug line of the denial")
    issued = lines_for(b, allow_id)
    assert [e["fields"]["message"] for e in issued] == ["credential issued"], issued
    assert issued[0]["level"] == "DEBUG" and issued[0]["fields"]["role"] == "deploy", issued
    assert [e["fields"]["message"] for e in lines_for(b, deny_id)] == ["exchange denied"]
    assert lines_for(b, deny_id)[0]["fields"]["reason"] == "policy_denied"

    # the twin at info: the same two exchanges, no line that names either decision
    b, allow_id, deny_id = run("info")
    b.stop()  # every line the broker wrote is in the file
    events = log_events(b)
    assert any(e.get("fields", {}).get("message") == "ephemera serving" for e in events), events[:5]
    assert lines_for(b, allow_id) == [] and lines_for(b, deny_id) == [], events
    assert not [e for e in events if e.get("fields", {}).get("message") in ("credential issued", "exchange denied")]


def test_serve_exits_1_when_its_listen_address_is_taken(ephemera_bin, tmp_path, mock_issuer):
    """README 73: `serve` exits "1 runtime failure, 2 config error": a listen address already bound
    is a runtime failure (the config is fine), named in the message."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    workdir = tmp_path / "broker"
    workdir.mkdir()
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role()], port=port)
    path = workdir / "ephemera.toml"
    path.write_text(to_toml(cfg))
    try:
        assert run_cli(ephemera_bin, ["check", "--config", str(path)]).returncode == 0  # a good config
        r = run_cli(ephemera_bin, ["serve", "--config", str(path)], env={"RUST_LOG": "info"})
    finally:
        taken.close()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert f"error: cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr[-2000:]
    # the twin: the same config once the address is free serves
    b = Broker(ephemera_bin, workdir, cfg)
    try:
        assert b.config["server"]["listen"] == f"127.0.0.1:{port}"  # (not moved to another port)
        assert b.get("/healthz").status_code == 200
        assert b.exchange(mock_issuer.token()).status == 200
    finally:
        b.stop()


# ---- Configuration (README 101-102, 107, 141, 143, 152) -----------------------------------------


def test_relative_paths_are_relative_to_the_config_file(ephemera_bin, tmp_path):
    """README 101-102: "Relative paths are relative to the config file": the audit log, a pinned
    JWKS and the signing key, written relatively, are found beside the config while the broker
    runs from another working directory."""
    conf = tmp_path / "conf"
    elsewhere = tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    key = LocalKey("pinned-1", kty="EC")
    key.write_jwks(conf / "keys.json")
    pem_key(conf / "broker-key.pem")
    issuer = "https://ci.example.com"
    port = free_port()
    cfg = {
        "server": {"listen": f"127.0.0.1:{port}", "issuer": f"http://127.0.0.1:{port}",
                   "signing_key_file": "broker-key.pem"},
        "state": {"backend": "memory"},
        "audit": {"path": "audit.jsonl"},
        "providers": [provider("ci", issuer, jwks_file="keys.json")],
        "roles": [role("deploy", "ci")],
    }
    (conf / "ephemera.toml").write_text(to_toml(cfg))
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "broker.stderr", "wb") as err:
        proc = subprocess.Popen([str(ephemera_bin), "serve", "--config", str(conf / "ephemera.toml")],
                                cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, RUST_LOG="info"))
        try:
            def healthy():
                if proc.poll() is not None:
                    raise AssertionError((tmp_path / "broker.stderr").read_text()[-2000:])
                try:
                    return requests.get(url + "/healthz", timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            wait_until(healthy, STARTUP_TIMEOUT, interval=0.02, what="the broker up")
            token = key.sign(good_claims(issuer))
            r = requests.post(url + "/v1/token", timeout=HTTP_TIMEOUT, data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
                "subject_token_type": ID_TOKEN, "audience": "deploy"})
            assert r.status_code == 200, r.text  # the pinned keys were read from conf/keys.json
            jwks = requests.get(url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    # the audit log is beside the config, not in the working directory
    assert [rec["decision"] for rec in read_audit(conf / "audit.jsonl")] == ["allow"]
    assert not (elsewhere / "audit.jsonl").exists() and list(elsewhere.iterdir()) == []
    # the broker signs with conf/broker-key.pem (not a generated key)
    pub = serialization.load_pem_private_key((conf / "broker-key.pem").read_bytes(), None).public_key().public_numbers()
    assert [(k["x"], k["y"]) for k in jwks["keys"]] == [
        (b64url(pub.x.to_bytes(32, "big")), b64url(pub.y.to_bytes(32, "big")))], jwks


@pytest.mark.parametrize("issuer, ok", [
    ("http://broker.example.com", False),
    ("http://10.0.0.5:8080", False),
    ("https://broker.example.com", True),
    ("http://127.0.0.1:8080", True),
])
def test_server_issuer_is_https_or_loopback_http(ephemera_bin, tmp_path, issuer, ok):
    """README 107: `issuer = "https://broker.example.com"  # iss of broker JWTs; https, or http on
    loopback`."""
    cfg = offline_config(tmp_path)
    cfg["server"]["issuer"] = issuer
    r = check(ephemera_bin, tmp_path, cfg)
    if ok:
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ok: 1 provider(s), 1 role(s)"), r.stdout
    else:
        assert r.returncode == 2, r.stdout
        assert f"server.issuer: `{issuer}` uses http on a host that is not loopback" in r.stderr, r.stderr


@pytest.mark.parametrize("with_uri", [True, False])
def test_a_provider_with_jwks_uri_skips_discovery(broker_factory, mock_issuer, with_uri):
    """README 141: `jwks_uri = "…"  # skip discovery`: the keys are fetched from it and the
    discovery document never is; the twin without it reads discovery first."""
    extra = {"jwks_uri": mock_issuer.issuer + "/jwks"} if with_uri else {}
    b = broker_factory(providers=[provider("mock", mock_issuer.issuer, **extra)])
    mock_issuer.reset_counts()
    r = b.exchange(mock_issuer.token())
    assert r.status == 200, r
    assert mock_issuer.fetches() == ((0, 1) if with_uri else (1, 1))


@pytest.mark.parametrize("leeway, ok", [("6m", False), ("301s", False), ("5m", True), ("300s", True)])
def test_leeway_is_at_most_5m(ephemera_bin, tmp_path, leeway, ok):
    """README 143: `leeway = "60s"  # for exp, nbf, iat; at most 5m`."""
    cfg = offline_config(tmp_path)
    cfg["providers"][0]["leeway"] = leeway
    r = check(ephemera_bin, tmp_path, cfg)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2, r.stdout
        assert "providers[0] (`ci`).leeway: at most 5m" in r.stderr, r.stderr


@pytest.mark.parametrize("max_ttl, ok", [("13h", False), ("0s", False), ("12h", True), ("1s", True)])
def test_role_max_ttl_is_within_1s_and_12h(ephemera_bin, tmp_path, max_ttl, ok):
    """README 152: `max_ttl = "15m"  # 1s..12h`."""
    r = check(ephemera_bin, tmp_path, offline_config(tmp_path, max_ttl=max_ttl))
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2, r.stdout
        assert "roles[0] (`deploy`).max_ttl: must be between 1s and 12h" in r.stderr, r.stderr


# ---- Trust policy: raw claims by dotted path (README 189-190) -----------------------------------


@pytest.mark.parametrize("path, nested", [
    ("kubernetes.io.pod.name", {"kubernetes.io": {"pod": {"name": "runner-1"}}}),
    ("google.compute_engine.project_id", {"google": {"compute_engine": {"project_id": "runner-1"}}}),
])
def test_a_condition_reads_a_nested_raw_claim_by_dotted_path(broker_factory, mock_issuer, path, nested):
    """README 189-190: "any other name reads the raw claim, nested ones by dotted path
    (`google.compute_engine.project_id`, `kubernetes.io.pod.name`)" — `kubernetes.io` itself has a
    dot — "A claim the token lacks fails its condition"."""
    b = broker_factory(issuer=mock_issuer, roles=[role("deploy", "mock",
                                                       conditions=dict(DEFAULT_CONDITIONS, **{path: "runner-1"}))])
    r = b.exchange(mock_issuer.token(**nested))
    assert r.status == 200, r

    def other(d):  # the same nesting, another value at the leaf
        return {k: other(v) for k, v in d.items()} if isinstance(d, dict) else "runner-2"

    r = b.exchange(mock_issuer.token(**other(nested)))
    assert r.status == 400 and r.error == "invalid_target" and r.reason == "policy_denied", r
    assert f"condition {path}: expected `runner-1`, got `runner-2`" in r.description, r
    # the value at the top level under the dotted name's last segment is not the nested claim
    leaf = path.rsplit(".", 1)[1]
    r = b.exchange(mock_issuer.token(**{leaf: "runner-1"}))
    assert r.status == 400 and r.reason == "policy_denied" and f"condition {path}:" in r.description, r


# ---- Strict by default (README 249-250, 262-263) ------------------------------------------------


def gh_role(conditions: dict, **extra) -> dict:
    r = cloud_role("gh-deploy", "github", {"kind": "jwt", "audience": PARTNER}, conditions=conditions)
    r.update(extra)
    return r


def test_a_lint_warning_is_printed_by_check_and_logged_at_every_start(broker_factory, mock_issuer, ephemera_bin,
                                                                       tmp_path):
    """README 249-250: "a warning is printed by `check` and logged at every start": a GitHub role
    pinning `repository` by name only warns `name_only_identity`; the twin pinning
    `repository_id` does not."""
    def findings(b):
        # (the finding's text is its `detail` field: it was a second `message` member that hid
        # the event's name from a JSON reader, which keeps the last of two)
        events = [json.loads(line) for line in b.stderr().splitlines() if line.startswith("{")]
        return [e["fields"] for e in events if e.get("fields", {}).get("message") == "policy finding"]

    def run(conditions):
        b = broker_factory(providers=[github_provider("github", mock_issuer.issuer)], roles=[gh_role(conditions)])
        r = run_cli(ephemera_bin, ["check", "--config", str(b.config_path)])
        assert r.returncode == 0, r.stderr
        # a second start of the same config logs it again
        again = broker_factory(providers=[github_provider("github", mock_issuer.issuer)], roles=[gh_role(conditions)])
        return r.stdout, findings(b), findings(again)

    # (`event_name` beside `ref`: `ref` alone draws ref_any_trigger, review C11)
    by_name = {"repository": "acme/app", "ref": "refs/heads/main", "event_name": "push"}
    out, first, second = run(by_name)
    assert "warning: role `gh-deploy`: name_only_identity: pins `repository` by name only" in out, out
    for logged in (first, second):
        assert [(f["role"], f["code"]) for f in logged] == [("gh-deploy", "name_only_identity")], logged
        assert all("pins `repository` by name only" in f["detail"] for f in logged), logged
    # the twin: pinned by id, nothing to warn about
    out, first, second = run({"repository_id": "123456789", "ref": "refs/heads/main", "event_name": "push"})
    assert "warning" not in out and out.startswith("ok: 1 provider(s), 1 role(s)"), out
    assert first == second == []


RAW_PIN = ('permit(principal is Ephemera::GithubWorkload, action, resource) '
           'when { principal.repository_id == "123456789" };')


@pytest.mark.parametrize("variant", ["pin_in_raw_cedar_only", "allow_broad", "pin_in_conditions"])
def test_raw_cedar_is_not_analysed_for_a_pin(ephemera_bin, tmp_path, variant):
    """README 262-263: "A role that does not pin its workload is refused with `policy_unscoped`
    unless it says `allow_broad = true` ... Raw Cedar is not analysed: the role's conditions must
    pin the identity"."""
    conditions = {"ref": "refs/heads/main", "event_name": "push"}
    extra = {"policy": RAW_PIN}
    if variant == "allow_broad":
        extra["allow_broad"] = True
    if variant == "pin_in_conditions":
        conditions["repository_id"] = "123456789"
    cfg = broker_config(tmp_path, [github_provider("github", "https://token.actions.githubusercontent.com")],
                        [gh_role(conditions, **extra)])
    r = check(ephemera_bin, tmp_path, cfg)
    if variant == "pin_in_raw_cedar_only":
        assert r.returncode == 2, r.stdout
        assert "roles[0] (`gh-deploy`): policy_unscoped: does not pin the workload's identity" in r.stderr, r.stderr
    elif variant == "allow_broad":
        assert r.returncode == 0, r.stderr
        assert "warning: role `gh-deploy`: allow_broad:" in r.stdout, r.stdout
    else:
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stdout, r.stdout


# ---- Single use without jti: never the signature (README 342-343) -------------------------------


def malleate(token: str) -> str:
    """The same header.payload with the ES256 signature (r, s) re-encoded as (r, n - s)."""
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert len(raw) == 64, len(raw)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return ".".join([head, payload, b64url(r + (P256_N - s).to_bytes(32, "big"))])


def test_an_ecdsa_token_without_jti_reencoded_is_still_a_replay(broker, mock_issuer):
    """README 342-343: "Keyed by (`iss`, `jti`), or without `jti` by SHA-256 of `header.payload` —
    never the signature, which ECDSA lets anyone re-encode". Both orders are played, so whichever
    of s and n - s is the high one is presented first once (a broker that refused high-s
    signatures would show here as `signature_invalid`)."""
    mock_issuer.add_key("ec1", kty="EC")
    for first_malleated in (False, True):
        # (no jti: a claim tells the two rounds' header.payload apart)
        token = mock_issuer.sign(good_claims(mock_issuer.issuer, jti=None, round=int(first_malleated)), key="ec1")
        assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "ES256"
        twin = malleate(token)
        assert twin != token and twin.split(".")[:2] == token.split(".")[:2]
        first, second = (twin, token) if first_malleated else (token, twin)
        r = broker.exchange(first)
        assert r.status == 200, r  # the twin: the first presentation, in either encoding, is good
        r = broker.exchange(second)
        assert r.status == 400 and r.reason == "token_replayed", r
    # and a fresh ECDSA signature over the very same header.payload (a new random k) is the same
    # assertion too
    claims = good_claims(mock_issuer.issuer, jti=None, round=2)
    one = mock_issuer.sign(claims, key="ec1")
    other = mock_issuer.sign(claims, key="ec1")
    assert one.split(".")[:2] == other.split(".")[:2] and one != other
    assert broker.exchange(one).status == 200
    r = broker.exchange(other)
    assert r.status == 400 and r.reason == "token_replayed", r


# ---- The exchange client: --cache-dir keeps the answer for any format (README 619) --------------


def test_any_format_given_a_cache_dir_keeps_the_answer(broker_factory, mock_issuer, ephemera_bin, tmp_path):
    """README 619: "for `credential-process` and `gcp-executable` (or any format given
    `--cache-dir`) the client keeps the broker's answer": `--format json --cache-dir D` twice with
    one assertion is one exchange and the same answer; the twin without `--cache-dir` presents the
    assertion again and is refused as a replay."""
    b = broker_factory(issuer=mock_issuer, check_invariants=False)  # the client gets the answers
    token_file = tmp_path / "token"
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("EPHEMERA_CACHE_DIR", "XDG_RUNTIME_DIR")}
    env["HOME"] = str(tmp_path / "home")

    def run(*extra):
        return subprocess.run([str(ephemera_bin), "exchange", "--broker", b.url, "--role", "deploy", "--token-file",
                               str(token_file), "--format", "json", *extra], capture_output=True, text=True,
                              env=env, timeout=60, stdin=subprocess.DEVNULL)

    def decisions():
        return [(r["decision"], r.get("reason")) for r in b.audit()]

    token_file.write_text(mock_issuer.token())
    first = run("--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    second = run("--cache-dir", str(cache))
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["access_token"] == json.loads(first.stdout)["access_token"]
    verify_broker_jwt(b, json.loads(second.stdout)["access_token"])
    assert decisions() == [("allow", None)]
    assert len(list(cache.iterdir())) == 1

    # the twin: a new assertion, no --cache-dir: the second run reaches the broker and is a replay
    token_file.write_text(mock_issuer.token())
    assert run().returncode == 0
    again = run()
    assert again.returncode == 1 and "token_replayed" in again.stderr, again.stderr
    assert decisions() == [("allow", None), ("allow", None), ("deny", "token_replayed")]
    assert not (tmp_path / "home").exists()  # json without --cache-dir keeps nothing anywhere


# ---- Running several replicas (README 674, 683, 690-691) ----------------------------------------


@pytest.mark.parametrize("with_key", [False, True])
def test_redis_requires_the_signing_key_file(ephemera_bin, tmp_path, with_key):
    """README 674: `signing_key_file = "broker-key.pem"  # the same key for every replica:
    required with redis`."""
    cfg = offline_config(tmp_path)
    cfg["state"] = {"backend": "redis", "url": "redis://127.0.0.1:6379"}
    if with_key:
        cfg["server"]["signing_key_file"] = str(pem_key(tmp_path / "broker-key.pem"))
    r = check(ephemera_bin, tmp_path, cfg)
    if with_key:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2, r.stdout
        assert "server.signing_key_file: required with the redis backend" in r.stderr, r.stderr


@pytest.mark.parametrize("length, ok", [(31, False), (32, True)])
def test_the_admin_token_has_at_least_32_characters(ephemera_bin, tmp_path, length, ok):
    """README 683: `token_file = "admin.token"  # a bearer credential (32+ characters)`; the
    newline a file ends with does not count."""
    token_file = tmp_path / "admin.token"
    token_file.write_text("a" * length + "\n")
    cfg = offline_config(tmp_path)
    cfg["admin"] = {"token_file": str(token_file)}
    r = check(ephemera_bin, tmp_path, cfg)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2, r.stdout
        assert f"admin.token_file: {token_file}: the credential must be at least 32 characters" in r.stderr, r.stderr
        assert "a" * 31 not in r.stderr


class Monitor:
    """`MONITOR` on a redis-server: every command it executes, as seen by the server; the commands
    a Lua script runs are tagged `lua` rather than with a client address."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)
        self.sock.sendall(b"MONITOR\r\n")
        self.buf = b""
        assert self._line() == "+OK"

    def _line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "redis closed the MONITOR connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def until_marker(self, port: int) -> list[tuple[str, list[str]]]:
        """Every command executed up to now, as (source, words): a marker command sent from
        another connection ends the list, so nothing is cut short. The source is `lua` for the
        commands a script ran."""
        marker = f"end-{os.urandom(6).hex()}"
        with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as s:
            s.sendall(f"ECHO {marker}\r\n".encode())
            s.recv(64)
        seen = []
        while True:
            line = self._line()  # +1700000000.123456 [0 127.0.0.1:5555] "MGET" "..."
            src = line.split("[", 1)[1].split("]", 1)[0].split(" ", 1)[1]
            words = shlex.split(line.split("] ", 1)[1])
            if words[0].upper() == "ECHO" and words[1] == marker:
                return seen
            seen.append((src, words))

    def commands_until_marker(self, port: int) -> list[str]:
        """Every command clients sent up to now (not those a script ran), in order."""
        return [words[0].upper() for src, words in self.until_marker(port) if src != "lua"]

    def close(self):
        self.sock.close()


def test_an_exchange_makes_one_redis_round_trip(ephemera_bin, tmp_path, mock_issuer):
    """README 1187-1199: marking is "a Lua script: the epoch check, `SET NX PXAT`, and for a fresh
    mark the grant record, in one round trip"; "An exchange makes one Redis round trip for its
    state" (the revocation check, the mark and the grant record in one script: issue 18); "Any
    refusal before the spend looks the revocations up first". Counted with MONITOR on a real
    redis-server around one exchange, once the broker has loaded its script (its very first mark
    on a server that never saw the script costs the EVALSHA that answers NOSCRIPT and the load:
    see the first count below)."""
    with redis_backed_broker(ephemera_bin, tmp_path, mock_issuer) as (port, b):

        def one_exchange():
            mon = Monitor(port)
            try:
                r = b.exchange(mock_issuer.token())
                assert r.status == 200, r
                return mon.commands_until_marker(port)
            finally:
                mon.close()

        # the first spend on a server that has not seen the script: EVALSHA answers NOSCRIPT, the
        # redis crate sends SCRIPT LOAD and EVALSHA again (three round trips, once per server's
        # script cache: after a Redis restart or SCRIPT FLUSH too)
        assert one_exchange() == ["EVALSHA", "SCRIPT", "EVALSHA"]
        for _ in range(3):
            assert one_exchange() == ["EVALSHA"]
        # the twin of the count: a denied exchange never spends, it looks the revocations up (one
        # MGET, so its refusal can name a revocation in force) and stops; the count is of the
        # exchange, not of the connection
        mon = Monitor(port)
        try:
            r = b.exchange(mock_issuer.token(ref="refs/heads/dev"))
            assert r.status == 400 and r.reason == "policy_denied", r
            r = b.exchange(mock_issuer.token())
            assert r.status == 200, r
            assert mon.commands_until_marker(port) == ["MGET", "EVALSHA"]
        finally:
            mon.close()


# ---- AWS: credentials are loaded at the first mint (README 418-419) -----------------------------


def start_redis(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A redis-server on a free port, answering, with an established store (its epoch marker long
    past), as in test_replicas.py: a first start on an empty Redis would refuse assertions issued
    within the leeway (review S2/B3)."""
    require_peer("redis-server", shutil.which("redis-server") is not None,
                 "apt-get install redis-server (scripts/test installs it)")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def up():
        try:
            return redis_call(port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until(up, 15, what="redis-server up")
        assert redis_call(port, "SET", redis_epoch_key(), str(REDIS_ESTABLISHED_EPOCH)).startswith(b"+OK")
    except BaseException:
        redis.kill()
        raise
    return redis, port


@contextlib.contextmanager
def redis_backed_broker(ephemera_bin, tmp_path: Path, mock_issuer):
    """(port, broker): a redis-server ([`start_redis`]) and a broker on the mock issuer with its
    state there; once the body is done, the broker stops cleanly and its audit log keeps the
    invariants; both are stopped whatever happens."""
    redis, port = start_redis(tmp_path)
    b = None
    try:
        workdir = tmp_path / "broker"
        cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role()],
                            server={"signing_key_file": str(pem_key(tmp_path / "broker-key.pem"))})
        cfg["state"] = {"backend": "redis", "url": f"redis://127.0.0.1:{port}", "command_timeout": "5s"}
        b = Broker(ephemera_bin, workdir, cfg)
        yield port, b
        b.stop()
        b.check_audit_invariants()
    finally:
        if b is not None:
            b.stop()
        redis.kill()
        redis.wait(timeout=10)


def redis_call(port: int, *args: str) -> bytes:
    """One command in RESP to the redis-server on `port`; its raw answer."""
    msg = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(msg)
        out = b""
        while not out.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def mark_calls(mon: Monitor, port: int) -> list[int]:
    """The mark script's calls clients sent up to now, each as the number of marks it carried
    (the script's first argument; the other scripts, the outbox's lease, are left out)."""
    return [int(words[3 + int(words[2])]) for src, words in mon.until_marker(port)
            if src != "lua" and words[0].upper() == "EVALSHA"
            and words[3:5] == [redis_epoch_key(), redis_epoch_key().replace("epoch", "seq")]]


def test_marks_waiting_at_the_same_moment_go_to_redis_in_one_call(ephemera_bin, tmp_path, mock_issuer):
    """README (Running several replicas): "the marks of exchanges waiting at the same moment go in
    one script call (up to 64; each still decided on its own, in order, atomically)". Redis is
    paused for writes (CLIENT PAUSE) while the first of eight concurrent exchanges is in its call:
    the others wait behind it and go in one call, so MONITOR sees at most two mark calls carrying
    eight marks, each answered on its own (eight 200s, eight allow records, each a replay when
    presented again). The twin: one at a time, a call each."""
    with redis_backed_broker(ephemera_bin, tmp_path, mock_issuer) as (port, b):
        assert b.exchange(mock_issuer.token()).status == 200  # (the script is loaded)
        mon = Monitor(port)
        try:
            for _ in range(4):
                assert b.exchange(mock_issuer.token()).status == 200
            assert mark_calls(mon, port) == [1, 1, 1, 1], "one at a time: a call each"
            tokens = [mock_issuer.token() for _ in range(8)]
            assert redis_call(port, "CLIENT", "PAUSE", "1500", "WRITE").startswith(b"+OK")
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(b.exchange, tokens))
            assert [a.status for a in answers] == [200] * 8, answers
            calls = mark_calls(mon, port)
        finally:
            mon.close()
        assert sum(calls) == 8 and len(calls) <= 2, calls
        jtis = {jwt.decode(a.json["access_token"], options={"verify_signature": False})["jti"] for a in answers}
        allows = [r for r in b.audit() if r["decision"] == "allow"]
        assert jtis <= {r["credential"]["jti"] for r in allows} and len(jtis) == 8
        # each was marked: presented again, each is a replay
        for t in tokens[:3]:
            r = b.exchange(t)
            assert r.status == 400 and r.reason == "token_replayed", r


def aws_lookup_env(canary_url: str, sts_url: str) -> dict:
    """An environment with no static AWS credentials in which every other source of the SDK's
    default chain (and of its region) is a canary: the container endpoint, the instance metadata
    service; STS itself is another canary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": canary_url + "/credentials",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": canary_url,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4",
        "AWS_ENDPOINT_URL_STS": sts_url,
        "AWS_ENDPOINT_URL": sts_url,
        "AWS_EC2_METADATA_DISABLED": "false",
        "RUST_LOG": "info",
    })
    return env


def test_explain_and_check_never_look_for_aws_credentials(broker_factory, mock_issuer, ephemera_bin, tmp_path,
                                                            canary):
    """README 418-419: the broker's AWS identity "is loaded at the first mint (so `explain` and
    `check` never look for AWS credentials)". The twin: `serve` with the same environment, at its
    first AWS mint, does look (the canary counts it)."""
    sts = Canary()
    try:
        env = aws_lookup_env(canary.url, sts.url)
        b = broker_factory(providers=[github_provider("github", mock_issuer.issuer)],
                           roles=[cloud_role("aws-deploy", "github", {"kind": "aws", "role_arn": AWS_ROLE_ARN})],
                           env=env)
        assert canary.connections == 0 and sts.connections == 0  # starting does not look either
        r = subprocess.run([str(ephemera_bin), "check", "--config", str(b.config_path)], capture_output=True,
                           text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        claims = tmp_path / "claims.json"
        claims.write_text(json.dumps(github_claims(mock_issuer.issuer)))
        token = tmp_path / "token.jwt"
        token.write_text(mock_issuer.sign(github_claims(mock_issuer.issuer)))
        for source in (["--claims", str(claims)], ["--token-file", str(token)]):
            r = subprocess.run([str(ephemera_bin), "explain", "--config", str(b.config_path), "--role", "aws-deploy",
                                *source], capture_output=True, text=True, env=env, timeout=60,
                               stdin=subprocess.DEVNULL)
            assert r.returncode == 0 and "decision: ALLOW" in r.stdout, (r.stdout, r.stderr)
        assert canary.connections == 0 and sts.connections == 0

        # the twin: an exchange through `serve` mints, and minting looks for the credentials
        r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), "aws-deploy")
        # (no credential anywhere: the SDK cannot sign, so STS is never called)
        assert r.status == 503 and r.reason == "upstream_unavailable", r
        assert canary.connections >= 1, "the SDK did not look for credentials at the first mint"
        assert sts.connections == 0
        assert [rec["decision"] for rec in b.audit()] == ["allow", "mint_failed"]
    finally:
        sts.close()


# ---- Undocumented-until-now slugs: token_type_refused, task_mismatch -----------------------------


def gitlab_claims(issuer: str, **overrides) -> dict:
    t = int(time.time())
    c = {"iss": issuer, "aud": AUDIENCE, "sub": "project_path:acme/app:ref_type:branch:ref:main",
         "project_path": "acme/app", "project_id": "4242", "namespace_path": "acme", "namespace_id": "77",
         "ref": "main", "ref_type": "branch", "ref_protected": "true", "pipeline_id": "9001", "job_id": "123456",
         "iat": t, "nbf": t, "exp": t + 300, "jti": os.urandom(8).hex()}
    return with_overrides(c, overrides)


def test_a_gitlab_v1_token_is_refused_token_type_refused(broker_factory, mock_issuer):
    """README errors table: 400 `invalid_request` `token_type_refused`: "GitLab `CI_JOB_JWT` v1: an
    issuer without a scheme, or no `aud`"; the twin, a v2 `id_tokens` token, is allowed."""
    gitlab = {"name": "gitlab", "profile": "gitlab", "issuer": mock_issuer.issuer, "audiences": [AUDIENCE]}
    gl_role = cloud_role("gl-deploy", "gitlab", {"kind": "jwt", "audience": PARTNER},
                         conditions={"project_id": "4242", "ref": "main"})
    b = broker_factory(providers=[gitlab], roles=[gl_role])
    host = mock_issuer.issuer.split("://", 1)[1]
    for v1 in (gitlab_claims(host), gitlab_claims(mock_issuer.issuer, aud=None)):
        r = b.exchange(mock_issuer.sign(v1), "gl-deploy")
        assert r.status == 400 and r.error == "invalid_request" and r.reason == "token_type_refused", r
        assert "use id_tokens" in r.description, r
    r = b.exchange(mock_issuer.sign(gitlab_claims(mock_issuer.issuer)), "gl-deploy")
    assert r.status == 200, r


def test_revoke_with_another_tasks_assertion_is_task_mismatch(broker_factory, mock_issuer):
    """README errors table: 403 `access_denied` `task_mismatch`: "`/v1/revoke`: the workload's
    assertion belongs to another task than the one it names"; the twin names its own task."""
    b = broker_factory(providers=[github_provider("github", mock_issuer.issuer)],
                       roles=[cloud_role("gh", "github", {"kind": "jwt", "audience": PARTNER},
                                         conditions=dict(GH_CONDITIONS))])

    def revoke(task, claims):
        return b.http.post(b.url + "/v1/revoke", timeout=HTTP_TIMEOUT, data={
            "task": task, "subject_token": mock_issuer.sign(claims), "subject_token_type": ID_TOKEN,
            "audience": "gh"})

    mine = github_claims(mock_issuer.issuer, run_id="7001", run_attempt="1")
    task = f"{mine['repository_id']}/7001/1"
    other = github_claims(mock_issuer.issuer, run_id="7002", run_attempt="1")
    r = revoke(task, other)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["error"] == "access_denied", body
    assert body["error_description"].split(":", 1)[0] == "task_mismatch", body
    assert r.headers.get("Cache-Control") == "no-store"
    r = revoke(task, mine)
    assert r.status_code == 200 and r.json()["revoked"] == f"task:github:{task}", r.text
