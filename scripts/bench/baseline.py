"""The baseline: a minimal hand-written token exchange in Python, as an ASGI app for uvicorn.

It does what Ephemera's benchmark role does, naively: JWKS fetched once at start; PyJWT RS256
verification with iss/aud/exp/nbf/iat required and the lifetime bounded; `repository` matched
against a glob whose `*` stops at `/` and `:`; `ref` exact; a replay check (a dict keyed by
`jti`, entries kept until the token's expiry); one audit JSON line appended, flushed and
fsynced per request; then an ES256 broker JWT minted with PyJWT. Errors are RFC 6749 JSON.

Configured by a JSON file named in `BASELINE_CONFIG`:
`{issuer, jwks_uri, audience, role, repository, ref, signing_key_file, broker_issuer,
partner_audience, audit_path, max_ttl, max_lifetime, leeway}`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
MAX_BODY = 65536
KID = "baseline"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Refused(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches any run of characters other than `/` and `:`; everything else is literal."""
    return re.compile("[^/:]*".join(re.escape(part) for part in pattern.split("*")))


def fetch_keys(jwks_uri: str) -> dict[str, Any]:
    with urllib.request.urlopen(jwks_uri, timeout=10) as resp:
        jwks = json.load(resp)
    return {k["kid"]: jwt.PyJWK(k).key for k in jwks["keys"] if k.get("kty") == "RSA"}


class Exchange:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.keys = fetch_keys(cfg["jwks_uri"])
        self.repository = glob_regex(cfg["repository"])
        with open(cfg["signing_key_file"], "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the signing key must be P-256")
        self.signing_key = key
        self.seen: dict[str, int] = {}
        self.audit = open(cfg["audit_path"], "a", encoding="utf-8")

    def verify(self, token: str) -> dict[str, Any]:
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            key = self.keys.get(kid)
            if key is None:
                raise Refused("invalid_request", f"unknown_key: no key {kid!r}")
            claims = jwt.decode(
                token, key, algorithms=["RS256"], audience=self.cfg["audience"],
                issuer=self.cfg["issuer"], leeway=self.cfg["leeway"],
                options={"require": ["iss", "aud", "exp", "nbf", "iat", "sub", "jti"]},
            )
        except jwt.PyJWTError as e:
            raise Refused("invalid_request", f"token_invalid: {e}") from None
        if claims["exp"] - claims["iat"] > self.cfg["max_lifetime"]:
            raise Refused("invalid_request", "lifetime_too_long")
        return claims

    def decide(self, claims: dict[str, Any]) -> None:
        repository, ref = claims.get("repository"), claims.get("ref")
        if not isinstance(repository, str) or not self.repository.fullmatch(repository):
            raise Refused("invalid_target", f"policy_denied: repository {repository!r}")
        if ref != self.cfg["ref"]:
            raise Refused("invalid_target", f"policy_denied: ref {ref!r}")

    def mark_used(self, claims: dict[str, Any], now: int) -> None:
        jti = claims["jti"]
        if self.seen.get(jti, 0) > now:
            raise Refused("invalid_request", "token_replayed")
        if len(self.seen) >= 1_000_000:
            self.seen = {j: exp for j, exp in self.seen.items() if exp > now}
        self.seen[jti] = claims["exp"] + self.cfg["leeway"]

    def write_audit(self, record: dict[str, Any]) -> None:
        self.audit.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.audit.flush()
        os.fsync(self.audit.fileno())

    def mint(self, claims: dict[str, Any], now: int, jti: str) -> tuple[str, int]:
        exp = min(now + self.cfg["max_ttl"], claims["exp"])
        body = {
            "iss": self.cfg["broker_issuer"], "sub": claims["sub"], "aud": self.cfg["partner_audience"],
            "iat": now, "nbf": now, "exp": exp, "jti": jti, "role": self.cfg["role"],
            "src_iss": claims["iss"],
        }
        return jwt.encode(body, self.signing_key, algorithm="ES256", headers={"kid": KID}), exp - now

    def exchange(self, form: dict[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str:
            values = form.get(name, [])
            if len(values) != 1:
                raise Refused("invalid_request", f"request_invalid: `{name}` must appear once")
            return values[0]

        if one("grant_type") != GRANT:
            raise Refused("unsupported_grant_type", "unsupported_grant_type")
        if one("subject_token_type") != ID_TOKEN:
            raise Refused("invalid_request", "unsupported_token_type")
        if one("audience") != self.cfg["role"]:
            raise Refused("invalid_target", "unknown_role")
        claims = self.verify(one("subject_token"))
        self.decide(claims)
        now = int(time.time())
        self.mark_used(claims, now)
        jti = secrets.token_urlsafe(16)
        self.write_audit({"time": now, "decision": "allow", "role": self.cfg["role"], "sub": claims["sub"],
                          "src_jti": claims["jti"], "jti": jti})
        token, expires_in = self.mint(claims, now, jti)
        return {"access_token": token, "issued_token_type": JWT_TYPE, "token_type": "Bearer",
                "expires_in": expires_in}


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if len(body) > MAX_BODY:
            raise Refused("invalid_request", "request_too_large", 413)
        if not message.get("more_body"):
            return body


async def respond(send: Send, status: int, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
               (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    with open(os.environ["BASELINE_CONFIG"], encoding="utf-8") as f:
        exchange = Exchange(json.load(f))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            return await respond(send, 200, {"ok": True})
        try:
            if scope["path"] != "/v1/token" or scope["method"] != "POST":
                raise Refused("invalid_request", "not found", 404)
            form = parse_qs((await read_body(receive)).decode(), keep_blank_values=True)
            await respond(send, 200, exchange.exchange(form))
        except Refused as e:
            await respond(send, e.status, {"error": e.error, "error_description": e.description})

    return app
