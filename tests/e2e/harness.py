"""Helpers for Ephemera's end-to-end tests: the broker binary, the mock issuer process, a canary
listener, in-process signing keys, config writing, the exchange client and audit reading.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MOCK_ISSUER = HERE / "mock_issuer.py"

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

AUDIENCE = "ephemera-test"
DEFAULT_SUB = "repo:acme/app:ref:refs/heads/main"
# The default role pins the workload's identity (`sub`, which the broker requires of a role)
# and two more claims.
DEFAULT_CONDITIONS = {"sub": DEFAULT_SUB, "repository": "acme/app", "ref": "refs/heads/main"}
PARTNER = "https://partner.example"

# RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
_RFC6749 = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")
_DECISION = re.compile(r"\(decision ([A-Za-z0-9_-]+)\)$")

# Generous timeouts: the machine may be loaded.
HTTP_TIMEOUT = 30
STARTUP_TIMEOUT = 30


# ------------------------------------------------------------------------------------------------
# small utilities


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def now() -> int:
    return int(time.time())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signature_segment(token: str) -> str:
    return token.rsplit(".", 1)[-1]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""):
    """Polls `pred` until it returns a truthy value; returns that value or raises."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


def wait_next_second(min_fraction_left: float = 0.8) -> int:
    """Waits, polling the clock, until early in a fresh second so that a request made now lands in
    the same second at the broker; returns that second. (A condition, not a fixed sleep: the
    broker's clock is whole seconds, and some guarantees — the Redis epoch — are stated in them.)"""
    t = time.time()
    if 1 - (t % 1) < min_fraction_left:
        wait_until(lambda: int(time.time()) > int(t), timeout=5, interval=0.02, what="the next second")
    return int(time.time())


def with_overrides(claims: dict, overrides: dict) -> dict:
    """`claims` with each override applied: a value replaces the claim, `None` removes it."""
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def readline_within(proc: subprocess.Popen, timeout: float):
    """The next line of `proc`'s stdout; `readline` blocks, so a hung process is killed after
    `timeout`, which ends the read (with an empty line)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        return proc.stdout.readline()
    finally:
        timer.cancel()


def race(brokers: list, token: str, presentations: int = 40) -> list:
    """Presents one token `presentations` times at once, spread over `brokers`; the answers."""
    results = []
    lock = threading.Lock()

    def fire(broker):
        r = broker.exchange(token)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=fire, args=(brokers[i % len(brokers)],)) for i in range(presentations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ------------------------------------------------------------------------------------------------
# the Redis state store's epoch (test_replicas.py, test_redis_topologies.py)

# The epoch a test writes into a Redis before a broker first connects, so the store looks
# established (it has been in use for a long time). The broker only sets the marker when it is
# absent (`SET NX` at connect, or the mark script), so it keeps this one.
REDIS_ESTABLISHED_EPOCH = 1
# The default `leeway` of an OIDC provider (src/config/defaults.rs), seconds.
DEFAULT_LEEWAY = 60


def redis_epoch_key(prefix: str = "eph") -> str:
    """The broker's epoch marker (src/state/redis.rs: `{key_prefix}:meta:epoch`, whole UNIX seconds)."""
    return "{" + prefix + "}:meta:epoch"


def redis_confirmed_key(prefix: str = "eph") -> str:
    """The epoch whose revocations an admin (or a first deployment) confirmed (src/state/redis.rs:
    `{key_prefix}:meta:revocations`, review C5). Revocations are answered only while it equals the
    epoch marker; otherwise every exchange is 503 `revocations_unverified` until
    `POST /v1/state/confirm`."""
    return "{" + prefix + "}:meta:revocations"


def redis_seq_key(prefix: str = "eph") -> str:
    """The mark counter (src/state/redis.rs: `{key_prefix}:meta:seq`, INCR by every mark): a value
    below the highest a broker has seen is a rollback, a new epoch (fault review B4)."""
    return "{" + prefix + "}:meta:seq"


def confirm_state(broker, admin_token: str) -> requests.Response:
    """`POST /v1/state/confirm` (admin bearer, empty form body): the revocations lost with the
    shared state are re-asserted; answers `{"confirmed": EPOCH}` (review C5)."""
    return broker.http.post(broker.url + "/v1/state/confirm", headers={"Authorization": f"Bearer {admin_token}"},
                            timeout=HTTP_TIMEOUT)


def first_iat_accepted_after(epoch: int, leeway: int = DEFAULT_LEEWAY) -> int:
    """The earliest `iat` the epoch guard accepts after the marker was (re)created at `epoch`: an
    assertion is refused `replay_state_reset` while `iat - leeway - 1 < epoch` (review S2/B3)."""
    return epoch + leeway + 1


def wait_until_presentable(iat: int, leeway: int = DEFAULT_LEEWAY) -> None:
    """Polls the clock until an assertion issued at `iat` is no longer "issued in the future"
    (the verifier refuses `iat > now + leeway`)."""
    wait_until(lambda: int(time.time()) + leeway >= iat, timeout=leeway + 5, interval=0.02,
               what=f"iat {iat} within the leeway of the clock")


def find_binary() -> Path:
    candidates = []
    if os.environ.get("EPHEMERA_BIN"):
        candidates.append(Path(os.environ["EPHEMERA_BIN"]))
    else:
        if os.environ.get("CARGO_TARGET_DIR"):
            candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "ephemera")
        candidates.append(REPO / "target" / "debug" / "ephemera")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(
        "ephemera binary not found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "); build it with `cargo build` or set EPHEMERA_BIN"
    )


def good_claims(issuer: str, **overrides) -> dict:
    """GitHub-shaped claims that the default `deploy` role allows; `None` removes a claim."""
    t = now()
    c = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": DEFAULT_SUB,
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "iat": t,
        "nbf": t,
        "exp": t + 300,
        "jti": uuid.uuid4().hex,
    }
    return with_overrides(c, overrides)


# ------------------------------------------------------------------------------------------------
# TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Path):
        return json.dumps(str(v))
    raise TypeError(f"cannot write {type(v)} to TOML")


def to_toml(cfg: dict) -> str:
    """Writes {table: {k: v}} and {array_of_tables: [{...}]} as TOML."""
    out = []
    for name, val in cfg.items():
        if isinstance(val, list):
            for item in val:
                out.append(f"[[{name}]]")
                out.extend(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in item.items())
                out.append("")
        else:
            out.append(f"[{name}]")
            out.extend(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in val.items())
            out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# canary


class Canary:
    """A TCP listener that should never be contacted; counts every connection it accepts."""

    def __init__(self):
        self.connections = 0
        self._lock = threading.Lock()
        canary = self

        class H(socketserver.BaseRequestHandler):
            def handle(self):
                with canary._lock:
                    canary.connections += 1
                try:
                    self.request.settimeout(1)
                    self.request.recv(1024)
                    self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except OSError:
                    pass

        class S(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._srv = S(("127.0.0.1", 0), H)
        self.port = self._srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._t = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05})
        self._t.daemon = True
        self._t.start()

    def close(self):
        self._srv.shutdown()
        self._srv.server_close()


# ------------------------------------------------------------------------------------------------
# in-process keys (pinned providers, attacker keys)


class LocalKey:
    """A key held by the test itself: an attacker's key, or a pinned provider's key."""

    def __init__(self, kid: str, kty: str = "RSA"):
        self.kid = kid
        self.kty = kty
        if kty == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"

    def public_jwk(self) -> dict:
        algo = RSAAlgorithm if self.kty == "RSA" else ECAlgorithm
        jwk = algo.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def jwks(self) -> dict:
        return {"keys": [self.public_jwk()]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def sign(self, claims: dict, header: dict | None = None, kid: Any = "default") -> str:
        h = {"typ": "JWT"}
        if kid == "default":
            h["kid"] = self.kid
        elif kid is not None:
            h["kid"] = kid
        h.update(header or {})
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=h)

    def pem_public(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


# ------------------------------------------------------------------------------------------------
# mock issuer process


class MockIssuer:
    """The mock OIDC issuer (tests/e2e/mock_issuer.py) in its own process."""

    def __init__(self, state_dir: Path, port: int = 0):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = port
        self._log = None
        self.start()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()

    def start(self):
        self._log = open(self.state_dir / "mock_issuer.stderr", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(MOCK_ISSUER), "--port", str(self.port), "--state-dir", str(self.state_dir)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        line = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        line = readline_within(self.proc, STARTUP_TIMEOUT)  # READY is the first line
        if not line.startswith(b"READY ") or time.monotonic() > deadline:
            err = (self.state_dir / "mock_issuer.stderr").read_text(errors="replace")
            raise RuntimeError(f"mock issuer did not start: {line!r}\n{err}")
        self.port = int(line.split()[1])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """Takes the issuer down hard (connections to its port are then refused)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if self._log:
            self._log.close()
            self._log = None

    def revive(self):
        """Starts the issuer again on the same port with the same keys and modes."""
        assert not self.alive
        deadline = time.monotonic() + 15
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self):
        self.kill()
        self.http.close()

    # control API
    def _post(self, path: str, body: dict) -> Any:
        r = self.http.post(self.issuer + path, json=body, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, f"mock {path}: {r.status_code} {r.text}"
        return r.json()

    def _get(self, path: str, **params) -> requests.Response:
        r = self.http.get(self.issuer + path, params=params, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, f"mock {path}: {r.status_code} {r.text}"
        return r

    def sign(self, claims: dict | None = None, *, key: str = "k1", header: dict | None = None,
             header_raw: str | None = None, payload_raw: str | None = None,
             sign_alg: str | None = None, signature: str | None = None,
             embed_jwk: bool = False) -> str:
        body: dict = {"key": key}
        if claims is not None:
            body["claims"] = claims
        if header is not None:
            body["header"] = header
        if header_raw is not None:
            body["header_raw"] = header_raw
        if payload_raw is not None:
            body["payload_raw"] = payload_raw
        if sign_alg is not None:
            body["sign_alg"] = sign_alg
        if signature is not None:
            body["signature"] = signature
        if embed_jwk:
            body["embed_jwk"] = True
        return self._post("/control/sign", body)["token"]

    def token(self, key: str = "k1", header: dict | None = None, **claim_overrides) -> str:
        """A good token from this issuer for the default role, with claim overrides."""
        return self.sign(good_claims(self.issuer, **claim_overrides), key=key, header=header)

    def add_key(self, kid: str, kty: str = "RSA", publish: bool = True):
        self._post("/control/keys", {"kid": kid, "kty": kty, "publish": publish})

    def remove_key(self, kid: str):
        self._post("/control/keys/remove", {"kid": kid})

    def rotate(self, add: str | None = None, remove: str | None = None, kty: str = "RSA"):
        self._post("/control/rotate", {"add": add, "remove": remove, "kty": kty})

    def publish(self, kid: str, publish: bool = True):
        self._post("/control/keys/publish", {"kid": kid, "publish": publish})

    def set_mode(self, **modes):
        return self._post("/control/mode", modes)

    def reset_modes(self):
        self._post("/control/reset-modes", {})

    def counts(self) -> dict:
        return self._get("/control/counts").json()

    def count(self, path: str) -> int:
        return self.counts().get(path, 0)

    def fetches(self) -> tuple[int, int]:
        c = self.counts()
        return c.get("/.well-known/openid-configuration", 0), c.get("/jwks", 0)

    def reset_counts(self):
        self._post("/control/counts/reset", {})

    def jwk(self, kid: str, private: bool = False) -> dict:
        params = {"kid": kid}
        if private:
            params["private"] = "1"
        return self._get("/control/jwk", **params).json()

    def public_pem(self, kid: str) -> bytes:
        return self._get("/control/pem", kid=kid).content


# ------------------------------------------------------------------------------------------------
# broker process


@dataclass
class Resp:
    status: int
    headers: Any
    json: Any
    text: str
    elapsed: float = 0.0

    @property
    def error(self) -> str | None:
        return self.json.get("error") if isinstance(self.json, dict) else None

    @property
    def description(self) -> str:
        return (self.json or {}).get("error_description", "") if isinstance(self.json, dict) else ""

    @property
    def reason(self) -> str | None:
        d = self.description
        return d.split(":", 1)[0] if d else None

    @property
    def decision_id(self) -> str | None:
        m = _DECISION.search(self.description)
        return m.group(1) if m else None

    def __repr__(self):
        return f"Resp({self.status}, {self.text[:300]!r})"


def check_error_hygiene(resp: Resp, secrets: Iterable[str] = ()) -> None:
    """ATTACKS 52: the body of an error holds only the RFC 6749 members, the description keeps
    to the RFC 6749 character set, and nothing secret is echoed."""
    assert isinstance(resp.json, dict), f"error body is not a JSON object: {resp.text[:200]!r}"
    assert set(resp.json) <= {"error", "error_description", "error_uri"}, resp.json
    assert isinstance(resp.json.get("error"), str) and resp.json["error"], resp.json
    assert _RFC6749.match(resp.json["error"]), resp.json
    desc = resp.json.get("error_description", "")
    assert isinstance(desc, str)
    assert _RFC6749.match(desc), f"error_description outside the RFC 6749 charset: {desc!r}"
    for s in secrets:
        if not s or len(s) < 16:
            continue
        assert s not in desc, "error_description echoes a secret"
        if s.count(".") == 2:
            sig = signature_segment(s)
            if len(sig) >= 16:
                assert sig not in desc, "error_description echoes a signature segment"


class Broker:
    """`ephemera serve` in its own process, with its config, stderr and audit file in a dir."""

    def __init__(self, binary: Path, workdir: Path, config: dict, env: dict | None = None,
                 rust_log: str | None = None):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.audit_path = Path(config["audit"]["path"])
        self.config_path = self.workdir / "ephemera.toml"
        self.stderr_path = self.workdir / "broker.stderr"
        self.stdout_path = self.workdir / "broker.stdout"
        self.env = dict(os.environ)
        self.env["RUST_LOG"] = rust_log or os.environ.get("EPHEMERA_TEST_RUST_LOG", "info")
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.http = requests.Session()
        self.responses: list[tuple[Resp, list[str]]] = []  # every /v1/token answer
        self._start()

    @property
    def url(self) -> str:
        return f"http://{self.config['server']['listen']}"

    @property
    def issuer(self) -> str:
        return self.config["server"]["issuer"]

    def _start(self):
        for attempt in range(3):
            self.config_path.write_text(to_toml(self.config))
            self._out = open(self.stdout_path, "ab")
            self._err = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config_path)],
                stdout=self._out,
                stderr=self._err,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    r = requests.get(self.url + "/healthz", timeout=2)
                    if r.status_code == 200:
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.01)
            err = self.stderr_path.read_text(errors="replace")
            self.stop()
            if "cannot listen" in err and attempt < 2:
                # another process took the port between bind(0) and our start: pick a new one
                port = free_port()
                self.config["server"]["listen"] = f"127.0.0.1:{port}"
                self.config["server"]["issuer"] = f"http://127.0.0.1:{port}"
                continue
            raise RuntimeError(f"broker did not become healthy:\n{err[-4000:]}")

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return requests.get(self.url + "/healthz", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f:
                f.close()
        self.http.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # ---- requests ----------------------------------------------------------------------------
    def post_token(self, data: Any = None, *, headers: dict | None = None, params: Any = None,
                   secrets: Iterable[str] = (), session: requests.Session | None = None,
                   timeout: float = HTTP_TIMEOUT) -> Resp:
        """POSTs to /v1/token and records the answer. Error answers are checked for hygiene."""
        s = session or self.http
        t0 = time.monotonic()
        r = s.post(self.url + "/v1/token", data=data, headers=headers, params=params,
                   timeout=timeout)
        resp = _resp(r, time.monotonic() - t0)
        secrets = list(secrets)
        if isinstance(data, dict):
            secrets += [v for k, v in data.items() if k in ("subject_token", "actor_token") and isinstance(v, str)]
        self.responses.append((resp, secrets))
        if resp.status != 200:
            check_error_hygiene(resp, secrets)
            assert resp.headers.get("Cache-Control") == "no-store", \
                f"error answer without Cache-Control: no-store: {dict(resp.headers)}"
        return resp

    def exchange(self, token: str, role: str = "deploy", *, token_type: str = ID_TOKEN,
                 extra: dict | None = None, session: requests.Session | None = None,
                 timeout: float = HTTP_TIMEOUT) -> Resp:
        data = {
            "grant_type": GRANT,
            "subject_token": token,
            "subject_token_type": token_type,
            "audience": role,
        }
        data.update(extra or {})
        return self.post_token(data, session=session, timeout=timeout)

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url + path, timeout=HTTP_TIMEOUT)

    # ---- audit -------------------------------------------------------------------------------
    def audit(self) -> list[dict]:
        return read_audit(self.audit_path)

    def audit_record(self, decision_id: str) -> dict:
        recs = [r for r in self.audit() if r.get("decision_id") == decision_id]
        assert len(recs) == 1, f"expected one audit record for decision {decision_id}, got {recs}"
        return recs[0]

    def record_answer(self, resp: Resp, secrets: Iterable[str] = ()) -> Resp:
        """Counts an answer to /v1/token that did not come through `post_token` (a raw request),
        so the teardown invariants see it."""
        self.responses.append((resp, list(secrets)))
        return resp

    def check_audit_invariants(self):
        """Every 200 has an allow record and vice versa; every exchange-level rejection has a
        deny record with the same reason and decision id. A failed mint is an `allow` followed by
        `mint_failed` with the same decision id: it answered 502 or 503 with that reason, never a
        200 (the allow was made durable before minting, so it is counted with the failure)."""
        recs = self.audit()
        by_id: dict[str, list[dict]] = {}
        for r in recs:
            by_id.setdefault(r["decision_id"], []).append(r)
        failed_mints = {d for d, rs in by_id.items() if [x["decision"] for x in rs] == ["allow", "mint_failed"]}
        for d, rs in by_id.items():
            kinds = [x["decision"] for x in rs]
            # (a `revoke` record is an admin or workload revocation: its own decision, no exchange)
            assert kinds in (["allow"], ["deny"], ["allow", "mint_failed"], ["revoke"]), \
                f"decision {d}: records {kinds} (expected allow, deny, allow then mint_failed, or revoke)"
        allows = [r for r in recs if r["decision"] == "allow" and r["decision_id"] not in failed_mints]
        oks = [r for r, _ in self.responses if r.status == 200]
        assert len(oks) == len(allows), f"{len(oks)} 200 responses but {len(allows)} allow records"
        for r, _ in self.responses:
            if r.status == 200 or r.decision_id is None:
                continue
            rs = by_id.get(r.decision_id)
            assert rs is not None, f"no audit record for {r}"
            rec = rs[-1]
            assert rec.get("reason") == r.reason, (rec, r)
            if r.decision_id in failed_mints:
                assert r.status in (502, 503), (r, rs)
            else:
                assert rec["decision"] == "deny", rec
        answered_failures = {r.decision_id for r, _ in self.responses if r.status in (502, 503)}
        assert failed_mints <= answered_failures, \
            f"mint_failed decisions {sorted(failed_mints - answered_failures)} without a 502/503 answer"


def _resp(r: requests.Response, elapsed: float) -> Resp:
    try:
        body = r.json()
    except ValueError:
        body = None
    return Resp(r.status_code, r.headers, body, r.text, elapsed)


def read_audit(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def broker_config(workdir: Path, providers: list[dict], roles: list[dict], *,
                  jwks: dict | None = None, server: dict | None = None,
                  port: int | None = None) -> dict:
    port = port or free_port()
    # `detail = "full"` (the tests read expected-vs-got descriptions); serve's default is
    # "reason": pass {"detail": None} to leave the key out
    srv = {"listen": f"127.0.0.1:{port}", "issuer": f"http://127.0.0.1:{port}", "detail": "full"}
    srv.update(server or {})
    srv = {k: v for k, v in srv.items() if v is not None}
    cfg: dict = {
        "server": srv,
        "state": {"backend": "memory"},
        "audit": {"path": str(Path(workdir) / "audit.jsonl")},
    }
    if jwks:
        cfg["jwks"] = jwks
    cfg["providers"] = providers
    cfg["roles"] = roles
    return cfg


def provider(name: str, issuer: str, **extra) -> dict:
    p = {"name": name, "profile": "oidc", "issuer": issuer, "audiences": [AUDIENCE]}
    p.update(extra)
    return p


def role(name: str = "deploy", provider_name: str = "mock", *, max_ttl: str = "15m",
         conditions: dict | None = None, audience: str = PARTNER) -> dict:
    return {
        "name": name,
        "provider": provider_name,
        "max_ttl": max_ttl,
        "conditions": dict(DEFAULT_CONDITIONS) if conditions is None else conditions,
        "credential": {"kind": "jwt", "audience": audience},
    }


def run_cli(binary: Path, args: list[str], timeout: float = 60, env: dict | None = None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout,
                          env=e, stdin=subprocess.DEVNULL)


def verify_broker_jwt(broker: Broker, token: str, audience: str = PARTNER) -> dict:
    """Verifies a broker JWT independently with PyJWT and the broker's published JWKS."""
    client = jwt.PyJWKClient(broker.url + "/.well-known/jwks.json", cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        issuer=broker.issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )


# ------------------------------------------------------------------------------------------------
# cloud peers (added for the AWS, GCP and client tests; nothing above depends on this)

AWS_ACCOUNT = "123456789012"
AWS_ROLE_ARN = f"arn:aws:iam::{AWS_ACCOUNT}:role/deploy"
AWS_CREDENTIALS_TYPE = "urn:ephemera:token-type:aws-credentials"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# The GitHub workload the cloud tests use (ids as GitHub's tokens carry them: strings).
GH_REPOSITORY_ID = "123456789"
GH_OWNER_ID = "987654"
GH_CONDITIONS = {"repository_id": GH_REPOSITORY_ID, "repository_owner_id": GH_OWNER_ID,
                 "ref": "refs/heads/main"}


def ci_strict() -> bool:
    """True when running under CI: `CI` set to anything but empty, `0` or `false` (any case).
    CI runners set `CI=true`, but `CI=1` or `CI=True` must not quietly turn failures into skips."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_peer(what: str, found: bool, how: str) -> None:
    """A missing test peer (moto_server, boto3, google-auth, curl) skips the test, except under
    CI (`ci_strict()`), where it fails: CI never passes by not running a test."""
    if found:
        return
    import pytest

    msg = f"{what} is not installed ({how})"
    if ci_strict():
        pytest.fail(msg)
    pytest.skip(msg)


def require_module(name: str):
    """Imports a test peer library, or skips (fails with CI=true) when it is not installed."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        require_peer(name, False, "pip install -r tests/requirements.txt")


def github_claims(issuer: str, **overrides) -> dict:
    """GitHub-Actions-shaped claims that the cloud tests' roles allow; `None` removes a claim."""
    t = now()
    c = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "repository_id": GH_REPOSITORY_ID,
        "repository_owner": "acme",
        "repository_owner_id": GH_OWNER_ID,
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "event_name": "push",
        "environment": "prod",
        "workflow": "Deploy",
        "run_id": str(4_000_000_000 + int(uuid.uuid4().int % 1_000_000_000)),
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "iat": t,
        "nbf": t,
        "exp": t + 300,
        "jti": uuid.uuid4().hex,
    }
    return with_overrides(c, overrides)


def github_provider(name: str, issuer: str, **extra) -> dict:
    p = {"name": name, "profile": "github-actions", "issuer": issuer, "audiences": [AUDIENCE]}
    p.update(extra)
    return p


def cloud_role(name: str, provider_name: str, credential: dict, *, max_ttl: str = "15m",
               conditions: dict | None = None) -> dict:
    return {
        "name": name,
        "provider": provider_name,
        "max_ttl": max_ttl,
        "conditions": dict(GH_CONDITIONS) if conditions is None else conditions,
        "credential": credential,
    }


def session_name(role_name: str, claims: dict) -> str:
    """The RoleSessionName the broker derives for a GitHub workload (role/repo id/run/attempt,
    STS's charset), for names that fit in 64 characters."""
    raw = f"{role_name}/{claims['repository_id']}/{claims['run_id']}/{claims['run_attempt']}"
    out = re.sub(r"[^A-Za-z0-9_+=,.@-]", "-", raw)
    assert len(out) <= 64
    return out


def aws_broker_env(sts_url: str) -> dict:
    """The broker's own AWS identity and STS endpoint, through the SDK's standard environment
    only; nothing from the developer's own AWS setup leaks in."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIDEPHEMERABROKER01",
        "AWS_SECRET_ACCESS_KEY": "ephemera-broker-test-secret-key-0000000001",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_STS": sts_url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PROFILE": "",
        "AWS_SESSION_TOKEN": "",
    }


def find_moto_server() -> Path | None:
    """moto_server from the virtualenv running the tests, else from PATH."""
    import shutil

    here = Path(sys.executable).parent / "moto_server"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("moto_server")
    return Path(found) if found else None


class MotoServer:
    """moto_server (moto's mock AWS as a standalone HTTP server) on 127.0.0.1, with moto's request
    recorder on, so tests read the AssumeRole requests the broker really sent."""

    def __init__(self, binary: Path, workdir: Path, port: int = 0):
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recording = self.workdir / "moto_recording.jsonl"
        self.recording.write_text("")
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        for attempt in range(3):
            env = dict(os.environ)
            env.update({"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording),
                        "AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto"})
            self._log = open(self.workdir / "moto_server.log", "ab")
            self.proc = subprocess.Popen([str(self.binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
                                         env=env)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    requests.get(self.url + "/moto-api/reset-auth", timeout=2)
                    return
                except requests.RequestException:
                    time.sleep(0.05)
            self.kill()
            if attempt < 2:
                self.port = free_port()
        log = (self.workdir / "moto_server.log").read_text(errors="replace")
        raise RuntimeError(f"moto_server did not start:\n{log[-3000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """Takes STS down hard: connections to its port are then refused."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log:
            self._log.close()
            self._log = None

    def revive(self):
        """Starts moto again on the same port (its state is gone; the recording stays)."""
        assert not self.alive
        port = self.port
        deadline = time.monotonic() + 15
        while True:
            try:
                self.start()
                if self.port == port:
                    return
                raise RuntimeError(f"moto came back on {self.port}, not {port}")
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                self.port = port
                time.sleep(0.2)

    def close(self):
        self.kill()

    def enforce_auth(self):
        """From now on moto checks every request's credentials against its own IAM, which knows
        none: STS then refuses the broker (InvalidClientTokenId, HTTP 403)."""
        r = requests.post(self.url + "/moto-api/reset-auth", data="0", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text

    def reset_recording(self):
        self.recording.write_text("")

    def recorded(self, action: str | None = None) -> list[dict]:
        """The requests moto received, oldest first, each as {method, url, headers, form}; with
        `action`, only the form posts of that Action (AssumeRole, GetCallerIdentity, ...)."""
        from urllib.parse import parse_qsl

        out = []
        for line in self.recording.read_text().splitlines():
            if not line.strip():
                continue
            e = json.loads(line)
            body = e.get("body") or ""
            if e.get("body_encoded"):
                body = base64.b64decode(body).decode("utf-8", errors="replace")
            form = parse_qsl(body, keep_blank_values=True) if isinstance(body, str) else []
            rec = {"method": e["method"], "url": e["url"], "headers": e.get("headers", {}), "form": form,
                   "body": body}
            if action is None or dict(form).get("Action") == action:
                out.append(rec)
        return out
