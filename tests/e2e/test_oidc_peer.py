"""The broker against a third-party OIDC issuer: npm's `oauth2-mock-server` (pinned in
tests/e2e/oidc-peer/package-lock.json, started by tests/e2e/oidc-peer/serve.js).

Every other e2e exchange meets the project's own mock issuer (mock_issuer.py), whose discovery
document, JWKS and JWTs are written by the same people who wrote the broker's reading of them. Here
discovery, the JWKS and the token signatures (RS256 and ES256, through `jose`) are another
implementation's: a successful exchange whose broker JWT PyJWT verifies, a key rotated in at the
issuer (an unknown kid makes the broker refetch; with the refetch held back by the cooldown, the
same token is `unknown_key`), and an audience mismatch. The attack modes (lying, trickling, huge
documents) stay with the project's mock, which can misbehave on purpose.

Installed by `npm ci --prefix tests/e2e/oidc-peer` (scripts/test); under CI=true a missing node,
npm or package fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from harness import (
    AUDIENCE,
    DEFAULT_SUB,
    PARTNER,
    STARTUP_TIMEOUT,
    provider,
    readline_within,
    require_peer,
    role,
    verify_broker_jwt,
)

PEER_DIR = Path(__file__).resolve().parent / "oidc-peer"
PACKAGE = PEER_DIR / "node_modules" / "oauth2-mock-server" / "package.json"
RSA_KID, EC_KID = "rsa-1", "ec-1"


def pinned_version() -> str:
    lock = json.loads((PEER_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/oauth2-mock-server"]["version"]


class OidcPeer:
    """serve.js in its own process: the issuer answers HTTP on a loopback port; the test asks it
    for tokens and new keys over stdin/stdout, one JSON line each way."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self._err = open(workdir / "oidc-peer.stderr", "wb")
        self.stderr_path = workdir / "oidc-peer.stderr"
        self.proc = subprocess.Popen(["node", str(PEER_DIR / "serve.js"), RSA_KID, EC_KID], cwd=PEER_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self._lock = threading.Lock()
        ready = self._read()
        assert ready.get("ready") is True, ready
        self.issuer = ready["issuer"]
        assert self.issuer == f"http://127.0.0.1:{ready['port']}"

    def _read(self) -> dict:
        line = readline_within(self.proc, STARTUP_TIMEOUT)  # a hung peer is killed, ending the read
        if not line:
            raise RuntimeError("oidc peer gave no answer:\n" + self.stderr_path.read_text(errors="replace"))
        return json.loads(line)

    def _call(self, **cmd) -> dict:
        with self._lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
            got = self._read()
        assert "error" not in got, got
        return got

    def token(self, kid: str, **claims) -> str:
        """A token the library builds and signs with key `kid`: its own iss, iat, nbf (iat - 10)
        and exp (iat + 300), plus the claims the default role allows, overridden by `claims`."""
        body = {"aud": AUDIENCE, "sub": DEFAULT_SUB, "repository": "acme/app", "ref": "refs/heads/main",
                "jti": uuid.uuid4().hex}
        body.update(claims)
        return self._call(op="token", kid=kid, claims=body, expires_in=300)["token"]

    def generate(self, alg: str, kid: str):
        assert self._call(op="generate", alg=alg, kid=kid) == {"kid": kid}

    def counts(self) -> dict:
        return self._call(op="counts")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # serve.js stops its server and exits at end of input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self._err.close()


@pytest.fixture
def oidc_peer(tmp_path):
    require_peer("node", shutil.which("node") is not None, "apt-get install nodejs (Debian) or the machine's Node.js")
    require_peer("oauth2-mock-server", PACKAGE.exists(), "npm ci --prefix tests/e2e/oidc-peer")
    installed = json.loads(PACKAGE.read_text())["version"]
    assert installed == pinned_version(), f"oauth2-mock-server {installed} installed, lockfile pins {pinned_version()}"
    peer = OidcPeer(tmp_path / "oidc-peer")
    yield peer
    peer.close()


def peer_broker(broker_factory, peer: OidcPeer, **jwks):
    return broker_factory([provider("peer", peer.issuer)], [role("deploy", "peer")], jwks=jwks or None)


@pytest.mark.parametrize("kid", [RSA_KID, EC_KID])
def test_a_third_party_issuers_token_is_exchanged_and_the_broker_jwt_verifies(broker_factory, oidc_peer, kid):
    b = peer_broker(broker_factory, oidc_peer)
    token = oidc_peer.token(kid)
    r = b.exchange(token)
    assert r.status == 200, r
    got = verify_broker_jwt(b, r.json["access_token"])
    assert got["aud"] == PARTNER and got["sub"] == DEFAULT_SUB and got["role"] == "deploy"
    (rec,) = [a for a in b.audit() if a["decision"] == "allow"]
    assert rec["issuer"] == oidc_peer.issuer and rec["subject"] == DEFAULT_SUB
    assert rec["credential"]["jti"] == got["jti"]
    # the keys came from the peer's own discovery document and JWKS, each fetched once
    counts = oidc_peer.counts()
    assert counts.get("/.well-known/openid-configuration") == 1 and counts.get("/jwks") == 1, counts
    # single use holds for its tokens too
    again = b.exchange(token)
    assert again.status == 400 and again.reason == "token_replayed", again


def test_a_key_rotated_in_at_the_issuer_is_picked_up_by_a_refetch(broker_factory, oidc_peer):
    eager = peer_broker(broker_factory, oidc_peer, refresh_cooldown="0s")
    # the twin: the same steps, but a refetch is held back for an hour after the first fetch
    held = peer_broker(broker_factory, oidc_peer, refresh_cooldown="1h")
    for b in (eager, held):
        assert b.exchange(oidc_peer.token(RSA_KID)).status == 200
    assert oidc_peer.counts().get("/jwks") == 2  # one fetch per broker, before the rotation

    oidc_peer.generate("ES256", "ec-2")
    # the broker holding back its refetch does not know the new kid...
    r = held.exchange(oidc_peer.token("ec-2"))
    assert r.status == 400 and r.reason == "unknown_key", r
    assert oidc_peer.counts().get("/jwks") == 2
    # ...the one allowed to refetch fetches the issuer's JWKS once and accepts the token
    r = eager.exchange(oidc_peer.token("ec-2"))
    assert r.status == 200, r
    verify_broker_jwt(eager, r.json["access_token"])
    assert oidc_peer.counts().get("/jwks") == 3
    # keys it knew stay valid beside the new one, without another fetch
    for kid in (RSA_KID, EC_KID, "ec-2"):
        assert eager.exchange(oidc_peer.token(kid)).status == 200
    assert oidc_peer.counts().get("/jwks") == 3


def test_an_audience_mismatch_is_refused(broker_factory, oidc_peer):
    b = peer_broker(broker_factory, oidc_peer)
    r = b.exchange(oidc_peer.token(EC_KID, aud="https://someone-else.example"))
    assert r.status == 400 and r.error == "invalid_request" and r.reason == "audience_mismatch", r
    assert not [a for a in b.audit() if a["decision"] == "allow"]
    # twin: the same token but for the broker's audience
    assert b.exchange(oidc_peer.token(EC_KID)).status == 200
