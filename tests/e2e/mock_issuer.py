#!/usr/bin/env python3
"""A scriptable mock OIDC issuer for Ephemera's end-to-end tests.

Run as a standalone process:

    python mock_issuer.py --port 0 --state-dir DIR

It prints one line ``READY <port>`` on stdout once it listens on 127.0.0.1. Its state (keys and
modes) is saved in ``DIR/state.json`` on every change, so a killed issuer can be revived on the
same port with the same keys (request counters start again from zero).

Issuer surface (counted per path in ``GET /control/counts``):

- ``GET /.well-known/openid-configuration``: ``{"issuer", "jwks_uri", ...}``
- ``GET /jwks``: the published public keys (plus any scripted junk)

Control API (never counted):

- ``POST /control/sign``: JSON ``{claims, header, key, payload_raw, header_raw, sign_alg,
  signature, embed_jwk}`` answers ``{"token": ...}``.

  * ``key`` names the signing key (default ``k1``); the default header is
    ``{"alg": <RS256|ES256 by key type>, "typ": "JWT", "kid": <key>}``; ``header`` members are
    merged over it, and a member set to ``null`` is removed.
  * ``header_raw`` / ``payload_raw``: exact JSON text for the segment (duplicate members etc.).
  * ``sign_alg``: the algorithm really used to sign, when it should differ from the header:
    ``none`` (empty signature), ``HS256-pubkey-pem`` (HMAC-SHA256 keyed with the key's public
    PEM), ``HS256-pubkey-der``, or any PyJWT algorithm name.
  * ``signature``: a literal signature segment to use instead.
  * ``embed_jwk``: put the signing key's public JWK in the header as ``jwk``.
- ``POST /control/keys`` ``{"kid", "kty": "RSA"|"EC", "publish": true}``: add a key
  (RSA-2048 or P-256).
- ``POST /control/keys/remove`` ``{"kid"}``: stop publishing and forget a key.
- ``POST /control/keys/publish`` ``{"kid", "publish": bool}``
- ``POST /control/rotate`` ``{"add": kid, "kty", "remove": kid}``: publish a new key and retire
  an old one in one step.
- ``GET /control/keys``: kids, types, published flags.
- ``GET /control/jwk?kid=K[&private=1]``: a key's JWK.
- ``POST /control/mode``: merge modes (below); ``POST /control/reset-modes``.
- ``GET /control/counts``; ``POST /control/counts/reset``.

Modes (``POST /control/mode``):

- ``discovery_issuer``: the ``issuer`` discovery claims (a lie when it differs).
- ``jwks_uri``: the ``jwks_uri`` discovery names.
- ``status``: ``{path: code}``: answer that path with that status.
- ``redirect``: ``{path: location}``: answer 302 to that location.
- ``big``: ``{path: {"bytes": N, "content_length": bool}}``: a body of N bytes.
- ``trickle``: ``{path: seconds}``: send the body one byte every ``seconds``.
- ``drop``: ``[path, ...]``: close the connection without an answer.
- ``extra_keys``: JWKs appended to the published set as they are.
- ``jwk_overrides``: ``{kid: {member: value}}`` merged into that key's published JWK; the value
  ``"$private"`` adds every private member of the real key.
- ``max_age``: ``Cache-Control: max-age`` on the JWKS.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/jwks"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class State:
    def __init__(self, state_dir: str):
        self.lock = threading.RLock()
        self.path = os.path.join(state_dir, "state.json")
        self.keys: dict[str, dict] = {}  # kid -> {"kty", "pem", "published"}
        self.private: dict[str, object] = {}
        self.modes: dict = {}
        self.counts: dict[str, int] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            self.keys = saved["keys"]
            self.modes = saved.get("modes", {})
            for kid, k in self.keys.items():
                self.private[kid] = serialization.load_pem_private_key(
                    k["pem"].encode(), password=None
                )
        else:
            self.add_key("k1", "RSA", True)

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"keys": self.keys, "modes": self.modes}, f)
        os.replace(tmp, self.path)

    def add_key(self, kid: str, kty: str, publish: bool) -> None:
        if kty == "RSA":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kty == "EC":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported kty {kty}")
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        with self.lock:
            self.keys[kid] = {"kty": kty, "pem": pem, "published": publish}
            self.private[kid] = key
            self.save()

    def jwk(self, kid: str, private: bool = False) -> dict:
        k = self.keys[kid]
        key = self.private[kid]
        obj = key if private else key.public_key()
        if k["kty"] == "RSA":
            jwk = RSAAlgorithm.to_jwk(obj, as_dict=True)
            jwk["alg"] = "RS256"
        else:
            jwk = ECAlgorithm.to_jwk(obj, as_dict=True)
            jwk["alg"] = "ES256"
        jwk["kid"] = kid
        jwk["use"] = "sig"
        return jwk

    def jwks(self) -> dict:
        with self.lock:
            keys = []
            overrides = self.modes.get("jwk_overrides", {})
            for kid, k in self.keys.items():
                if not k["published"]:
                    continue
                jwk = self.jwk(kid)
                for m, v in overrides.get(kid, {}).items():
                    if v == "$private":
                        priv = self.jwk(kid, private=True)
                        for pm in ("d", "p", "q", "dp", "dq", "qi"):
                            if pm in priv:
                                jwk[pm] = priv[pm]
                    elif v is None:
                        jwk.pop(m, None)
                    else:
                        jwk[m] = v
                keys.append(jwk)
            keys.extend(self.modes.get("extra_keys", []))
            return {"keys": keys}

    def sign(self, req: dict) -> str:
        kid = req.get("key", "k1")
        with self.lock:
            if kid not in self.keys:
                raise KeyError(f"no key {kid}")
            kty = self.keys[kid]["kty"]
            key = self.private[kid]
        default_alg = "RS256" if kty == "RSA" else "ES256"
        if req.get("header_raw") is not None:
            header_bytes = req["header_raw"].encode()
            header_alg = None
        else:
            header = {"alg": default_alg, "typ": "JWT", "kid": kid}
            for m, v in (req.get("header") or {}).items():
                if v is None:
                    header.pop(m, None)
                else:
                    header[m] = v
            if req.get("embed_jwk"):
                header["jwk"] = self.jwk(kid)
            header_alg = header.get("alg")
            header_bytes = json.dumps(header, separators=(",", ":")).encode()
        if req.get("payload_raw") is not None:
            payload_bytes = req["payload_raw"].encode()
        else:
            payload_bytes = json.dumps(req.get("claims") or {}, separators=(",", ":")).encode()
        signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}"
        msg = signing_input.encode()
        sign_alg = req.get("sign_alg") or header_alg or default_alg
        if "signature" in req:
            sig = req["signature"]
        elif sign_alg == "none":
            sig = ""
        elif sign_alg in ("HS256-pubkey-pem", "HS256-pubkey-der"):
            enc = (
                serialization.Encoding.PEM
                if sign_alg.endswith("pem")
                else serialization.Encoding.DER
            )
            secret = key.public_key().public_bytes(
                enc, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            sig = b64url(hmac.new(secret, msg, hashlib.sha256).digest())
        else:
            algo = get_default_algorithms()[sign_alg]
            sig = b64url(algo.sign(msg, key))
        return f"{signing_input}.{sig}"


def make_handler(state: State, issuer: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "mock-issuer/1"
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype="application/json", headers=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj, headers=None):
            self._send(status, json.dumps(obj).encode(), headers=headers)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else {}

        # ---- issuer surface -------------------------------------------------------------
        def _issuer_get(self, path: str):
            with state.lock:
                state.counts[path] = state.counts.get(path, 0) + 1
                modes = json.loads(json.dumps(state.modes))
            if path in modes.get("drop", []):
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            if path in modes.get("status", {}):
                return self._json(int(modes["status"][path]), {"error": "scripted"})
            if path in modes.get("redirect", {}):
                self.send_response(302)
                self.send_header("Location", modes["redirect"][path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == DISCOVERY:
                doc = {
                    "issuer": modes.get("discovery_issuer", issuer),
                    "jwks_uri": modes.get("jwks_uri", issuer + JWKS),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                }
                body = json.dumps(doc).encode()
                headers = {}
            elif path == JWKS:
                body = json.dumps(state.jwks()).encode()
                headers = {}
                if "max_age" in modes:
                    headers["Cache-Control"] = f"max-age={int(modes['max_age'])}"
            else:
                return self._json(404, {"error": "not found"})
            if path in modes.get("big", {}):
                return self._big(modes["big"][path])
            if path in modes.get("trickle", {}):
                return self._trickle(body, float(modes["trickle"][path]))
            return self._send(200, body, headers=headers)

        def _big(self, spec: dict):
            n = int(spec.get("bytes", 10 * 1024 * 1024))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if spec.get("content_length", True):
                self.send_header("Content-Length", str(n))
            self.end_headers()
            # A JSON document that would be valid if it were read to the end.
            head = b'{"keys":[],"pad":"'
            tail = b'"}'
            chunk = b"A" * 65536
            try:
                self.wfile.write(head)
                left = n - len(head) - len(tail)
                while left > 0:
                    c = chunk[: min(left, len(chunk))]
                    self.wfile.write(c)
                    left -= len(c)
                self.wfile.write(tail)
            except OSError:
                pass
            self.close_connection = True

        def _trickle(self, body: bytes, interval: float):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            deadline = time.monotonic() + 120
            try:
                self.wfile.flush()
                for b in body:
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(interval)
            except OSError:
                pass
            self.close_connection = True

        # ---- control ----------------------------------------------------------------------
        def do_GET(self):
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            if u.path == "/control/counts":
                with state.lock:
                    return self._json(200, dict(state.counts))
            if u.path == "/control/keys":
                with state.lock:
                    return self._json(
                        200,
                        {
                            kid: {"kty": k["kty"], "published": k["published"]}
                            for kid, k in state.keys.items()
                        },
                    )
            if u.path == "/control/jwk":
                kid = q["kid"][0]
                with state.lock:
                    if kid not in state.keys:
                        return self._json(404, {"error": "no such key"})
                    return self._json(200, state.jwk(kid, private=bool(q.get("private"))))
            if u.path == "/control/pem":
                kid = q["kid"][0]
                with state.lock:
                    key = state.private[kid]
                pub = key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
                return self._send(200, pub, ctype="text/plain")
            if u.path == "/control/modes":
                with state.lock:
                    return self._json(200, state.modes)
            return self._issuer_get(u.path)

        def do_POST(self):
            u = urlsplit(self.path)
            try:
                body = self._body()
            except ValueError as e:
                return self._json(400, {"error": f"bad json: {e}"})
            try:
                if u.path == "/control/sign":
                    return self._json(200, {"token": state.sign(body)})
                if u.path == "/control/keys":
                    state.add_key(body["kid"], body.get("kty", "RSA"), body.get("publish", True))
                    return self._json(200, {"ok": True})
                if u.path == "/control/keys/remove":
                    with state.lock:
                        state.keys.pop(body["kid"], None)
                        state.private.pop(body["kid"], None)
                        state.save()
                    return self._json(200, {"ok": True})
                if u.path == "/control/rotate":
                    # add a new key and retire an old one in one step
                    if body.get("add"):
                        state.add_key(body["add"], body.get("kty", "RSA"), True)
                    if body.get("remove"):
                        with state.lock:
                            state.keys.pop(body["remove"], None)
                            state.private.pop(body["remove"], None)
                            state.save()
                    return self._json(200, {"ok": True})
                if u.path == "/control/keys/publish":
                    with state.lock:
                        state.keys[body["kid"]]["published"] = bool(body.get("publish", True))
                        state.save()
                    return self._json(200, {"ok": True})
                if u.path == "/control/mode":
                    with state.lock:
                        for k, v in body.items():
                            if v is None:
                                state.modes.pop(k, None)
                            else:
                                state.modes[k] = v
                        state.save()
                    return self._json(200, state.modes)
                if u.path == "/control/reset-modes":
                    with state.lock:
                        state.modes = {}
                        state.save()
                    return self._json(200, {})
                if u.path == "/control/counts/reset":
                    with state.lock:
                        state.counts = {}
                    return self._json(200, {})
            except (KeyError, ValueError, TypeError) as e:
                return self._json(400, {"error": f"{type(e).__name__}: {e}"})
            return self._json(404, {"error": "not found"})

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.state_dir, exist_ok=True)
    state = State(args.state_dir)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    # The issuer URL is only known once bound; the handler reads it from here.
    holder = {"issuer": ""}

    class Server(ThreadingHTTPServer):
        pass

    srv = Server(("127.0.0.1", args.port), None)  # type: ignore[arg-type]
    port = srv.server_address[1]
    holder["issuer"] = f"http://127.0.0.1:{port}"
    srv.RequestHandlerClass = make_handler(state, holder["issuer"])
    print(f"READY {port}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
