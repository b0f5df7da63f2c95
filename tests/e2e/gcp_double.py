"""A test double of Google's token services, for Ephemera's end-to-end tests. Not Google: a small
HTTP server on 127.0.0.1 that implements the documented request and response shapes of

- the OAuth 2.0 token endpoint for service-account JWT-bearer grants (``POST /token``,
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, an RS256 ``assertion`` signed with
  the service account's key; answers ``{access_token, expires_in, token_type}``);
- Security Token Service token exchange (``POST /v1/token``, RFC 8693 form; answers
  ``{access_token, issued_token_type, token_type, expires_in}``), as a workload identity pool
  provider that trusts one OIDC issuer (the broker) and one allowed audience;
- IAM Credentials ``POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken`` (JSON
  ``{scope, lifetime: "Ns", delegates}``; answers ``{accessToken, expireTime}``);
- and one protected resource, ``GET /v1/whoami``, answering who a bearer token belongs to.

It checks what it receives the way Google does, with independent code (PyJWT and
``cryptography``, never the broker's): the assertion's signature against the registered key's
public part, its ``iss``, ``aud`` (this token endpoint), ``iat``/``exp`` and ``scope``; the
subject token's signature against the trusted issuer's JWKS, its ``iss``, ``aud``, ``exp``; the
``Authorization`` bearer of IAM calls is a token it issued, unexpired, whose principal may
impersonate the target; the lifetime is ``^[0-9]+s$`` and at most 3600 s; scopes are present;
delegates are ``projects/-/serviceAccounts/EMAIL``. Every request is recorded (with its verdict)
for the tests to assert on, and the tokens it issues start with ``ya29.`` like Google's, so tests
can grep logs for them.

Used in-process (``GcpDouble()`` starts a thread) by tests/e2e/test_gcp.py; ``python
gcp_double.py --port N`` runs it alone (it then trusts nothing until configured in code).

Why a double: there is no installable emulator of Google's STS or IAM Credentials. Each rule it
enforces is taken from Google's documentation, so its fidelity can be checked against these:

- Token endpoint, JWT-bearer grant: "Using OAuth 2.0 for Server to Server Applications"
  (https://developers.google.com/identity/protocols/oauth2/service-account, "Preparing to make
  an authorized API call" / "Forming the JWT claim set"): ``grant_type`` is
  ``urn:ietf:params:oauth:grant-type:jwt-bearer``; the assertion is RS256 (the only algorithm
  Google supports there), signed with the service account's key; ``iss`` is the service
  account's email, ``aud`` is the token endpoint (the key file's ``token_uri``), ``scope`` is a
  space-delimited list, ``exp`` at most 1 hour after ``iat``; ``sub`` (a user to impersonate) is
  domain-wide delegation (refused here as ``unauthorized_client``, not set up); the answer is
  ``{access_token, expires_in, token_type}``.
- STS: "Method: token" of the Security Token Service API
  (https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token, and its
  ``GoogleIdentityStsV1ExchangeTokenRequest``): ``grantType`` must be
  ``urn:ietf:params:oauth:grant-type:token-exchange``, ``requestedTokenType`` must be
  ``urn:ietf:params:oauth:token-type:access_token``, ``audience`` is the pool provider's full
  resource name, ``scope`` is required when exchanging an external credential, and
  ``subjectTokenType`` is ``…:jwt`` or ``…:id_token`` for an OIDC provider.
- The subject token's checks: "Configure Workload Identity Federation with other identity
  providers" (https://cloud.google.com/iam/docs/workload-identity-federation-with-other-providers)
  and the ``WorkloadIdentityPoolProvider.Oidc`` reference
  (https://cloud.google.com/iam/docs/reference/rest/v1/projects.locations.workloadIdentityPools.providers):
  signature by the issuer's JWKS (RS256 or ES256), ``iss`` equal to the provider's issuer,
  ``aud`` one of ``allowedAudiences`` (the tests configure Google's default explicitly: the
  provider's resource name with ``https:``; the empty-list default itself is not modelled),
  ``exp`` not passed; the federated principal is
  ``principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/POOL/subject/SUB``
  ("Identify principals" in the same guide).
- IAM Credentials: "Method: projects.serviceAccounts.generateAccessToken"
  (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
  the path is ``/v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken`` (the ``-`` wildcard
  is required); ``scope`` is required, at least one value; ``lifetime`` is a protobuf Duration in
  its JSON form (``"3600s"``, "Duration" in the protobuf JSON mapping,
  https://protobuf.dev/programming-guides/json/) of at most 3600 s unless an organization policy
  allows up to 12 h (not modelled); ``delegates`` are ``projects/-/serviceAccounts/{EMAIL}``, each
  holding ``roles/iam.serviceAccountTokenCreator`` on the next, the last one on the target
  (refused with 403 ``PERMISSION_DENIED`` otherwise); the caller authenticates with a Google
  access token as ``Authorization: Bearer`` (401 ``UNAUTHENTICATED`` otherwise); the answer is
  ``{accessToken, expireTime}`` (RFC 3339). Error bodies are Google's JSON error shape
  (https://cloud.google.com/apis/design/errors, ``{"error": {code, message, status}}``).

What it does not model: quotas, organization policies, Google's token formats beyond the
``ya29.`` prefix, and ``/v1/whoami`` (a stand-in for any protected API) knows only the tokens the
double issued itself.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
MAX_LIFETIME = 3600
_GENERATE = re.compile(r"^/v1/projects/-/serviceAccounts/([^/]+):generateAccessToken$")
_DELEGATE = re.compile(r"^projects/-/serviceAccounts/([^/]+@[^/]+)$")
_LIFETIME = re.compile(r"^([0-9]+)s$")


@dataclass
class Issued:
    token: str
    principal: str
    scopes: list[str]
    expires_at: float
    kind: str  # "oauth" (JWT bearer), "sts" (federated), "iam" (generateAccessToken)


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    verdict: str = ""
    issued: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


class GcpDouble:
    """The double, listening on 127.0.0.1 in a background thread."""

    def __init__(self, port: int = 0):
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.tokens: dict[str, Issued] = {}
        self.sa_keys: dict[str, Any] = {}  # client_email -> public key
        self.can_impersonate: dict[str, set[str]] = {}  # principal -> service accounts
        self.pool: dict | None = None  # {audience, issuer, jwks_uri, allowed_audiences, principal}
        self.status_override: dict[str, tuple[int, dict]] = {}  # "generate" | "token" | "sts"
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_uri = self.url + "/token"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # ---- configuration -------------------------------------------------------------------------
    def add_service_account_key(self, client_email: str, public_key) -> None:
        """Registers a service account key (what `gcloud iam service-accounts keys create` makes)."""
        self.sa_keys[client_email] = public_key

    def allow_impersonation(self, principal: str, service_account: str) -> None:
        """`roles/iam.serviceAccountTokenCreator` for `principal` on `service_account`."""
        self.can_impersonate.setdefault(principal, set()).add(service_account)

    def trust_issuer(self, *, audience: str, issuer: str, jwks_uri: str, allowed_audiences: list[str],
                     principal: str) -> None:
        """A workload identity pool provider: `audience` is its full resource name
        (//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X);
        tokens from `issuer` (keys at `jwks_uri`) with an `aud` in `allowed_audiences` map to
        `principal`."""
        self.pool = {"audience": audience, "issuer": issuer, "jwks_uri": jwks_uri,
                     "allowed_audiences": list(allowed_audiences), "principal": principal}

    def fail(self, endpoint: str, status: int, error: dict | None = None) -> None:
        """Answers `endpoint` ("token", "sts", "generate") with `status` from now on."""
        self.status_override[endpoint] = (status, error or {})

    def clear_failures(self) -> None:
        self.status_override.clear()

    # ---- inspection ----------------------------------------------------------------------------
    def calls_to(self, kind: str) -> list[Call]:
        """kind: "token", "sts", "generate", "whoami"."""
        with self.lock:
            return [c for c in self.calls if c.extra.get("kind") == kind]

    def issued(self, kind: str | None = None) -> list[Issued]:
        with self.lock:
            return [t for t in self.tokens.values() if kind is None or t.kind == kind]

    # ---- HTTP ----------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str):
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = urlsplit(h.path).path
        headers = {k.lower(): v for k, v in h.headers.items()}
        ctype = headers.get("content-type", "")
        if "json" in ctype:
            try:
                body: Any = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode(errors="replace")
        elif "x-www-form-urlencoded" in ctype:
            body = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        else:
            body = raw.decode(errors="replace")
        call = Call(method, path, headers, body)
        try:
            if method == "POST" and path == "/token":
                call.extra["kind"] = "token"
                status, out = self._oauth_token(call)
            elif method == "POST" and path == "/v1/token":
                call.extra["kind"] = "sts"
                status, out = self._sts_token(call)
            elif method == "POST" and _GENERATE.match(unquote(path)):
                call.extra["kind"] = "generate"
                status, out = self._generate(call, unquote(_GENERATE.match(unquote(path)).group(1)))
            elif method == "GET" and path == "/v1/whoami":
                call.extra["kind"] = "whoami"
                status, out = self._whoami(call)
            else:
                status, out = 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
        except Exception as e:  # a bug in the double shows up in the test, not as a hang
            status, out = 500, {"error": {"code": 500, "message": f"double failed: {e!r}", "status": "INTERNAL"}}
        call.status = status
        with self.lock:
            self.calls.append(call)
        data = json.dumps(out).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _issue(self, principal: str, scopes: list[str], lifetime: int, kind: str) -> Issued:
        prefix = {"oauth": "ya29.c.", "sts": "ya29.d.", "iam": "ya29.a0"}[kind]
        tok = Issued(prefix + secrets.token_urlsafe(48), principal, scopes, time.time() + lifetime, kind)
        with self.lock:
            self.tokens[tok.token] = tok
        return tok

    @staticmethod
    def _oauth_error(call: Call, status: int, error: str, description: str) -> tuple[int, dict]:
        call.verdict = f"{error}: {description}"
        return status, {"error": error, "error_description": description}

    @staticmethod
    def _google_error(call: Call, status: int, state: str, message: str) -> tuple[int, dict]:
        call.verdict = f"{state}: {message}"
        return status, {"error": {"code": status, "message": message, "status": state}}

    def _override(self, endpoint: str, call: Call):
        if endpoint in self.status_override:
            status, err = self.status_override[endpoint]
            call.verdict = f"scripted {status}"
            return status, err or {"error": {"code": status, "message": "scripted", "status": "SCRIPTED"}}
        return None

    # POST /token: service account JWT bearer grant
    def _oauth_token(self, call: Call):
        if (o := self._override("token", call)) is not None:
            return o
        form = call.body if isinstance(call.body, dict) else {}
        if form.get("grant_type") != JWT_BEARER:
            return self._oauth_error(call, 400, "unsupported_grant_type", "expected the JWT bearer grant")
        assertion = form.get("assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as e:
            return self._oauth_error(call, 400, "invalid_grant", f"malformed assertion: {e}")
        if header.get("alg") != "RS256":
            return self._oauth_error(call, 400, "invalid_grant", "assertion must be RS256")
        iss = unverified.get("iss")
        key = self.sa_keys.get(iss)
        if key is None:
            return self._oauth_error(call, 400, "invalid_grant", "Invalid JWT Signature.")
        try:
            # `sub` (a user to act as, domain-wide delegation) may be absent or null
            claims = jwt.decode(assertion, key, algorithms=["RS256"], audience=self.token_uri, issuer=iss,
                                options={"require": ["iss", "aud", "iat", "exp"], "verify_sub": False}, leeway=30)
        except jwt.PyJWTError as e:
            return self._oauth_error(call, 400, "invalid_grant", f"Invalid JWT: {e}")
        if claims.get("sub") is not None:
            return self._oauth_error(call, 400, "unauthorized_client", "domain-wide delegation is not set up")
        if claims["exp"] - claims["iat"] > 3600:
            return self._oauth_error(call, 400, "invalid_grant", "Invalid JWT: exp too far from iat")
        scopes = str(claims.get("scope", "")).split()
        if not scopes:
            return self._oauth_error(call, 400, "invalid_scope", "no scope in the assertion")
        tok = self._issue(f"serviceAccount:{iss}", scopes, 3599, "oauth")
        call.verdict, call.issued = "ok", tok.token
        return 200, {"access_token": tok.token, "expires_in": 3599, "token_type": "Bearer"}

    # POST /v1/token: STS token exchange for a workload identity pool
    def _sts_token(self, call: Call):
        if (o := self._override("sts", call)) is not None:
            return o
        form = call.body if isinstance(call.body, dict) else {}
        pool = self.pool
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return self._oauth_error(call, 400, "invalid_request", "grant_type must be token-exchange")
        if form.get("requested_token_type") != ACCESS_TOKEN:
            return self._oauth_error(call, 400, "invalid_request", "requested_token_type must be access_token")
        if form.get("subject_token_type") not in SUBJECT_TYPES:
            return self._oauth_error(call, 400, "invalid_request", "unsupported subject_token_type")
        if pool is None or form.get("audience") != pool["audience"]:
            return self._oauth_error(call, 400, "invalid_target", "unknown workload identity pool provider")
        scopes = form.get("scope", "").split()
        if not scopes:
            return self._oauth_error(call, 400, "invalid_scope", "scope is required")
        subject = form.get("subject_token", "")
        try:
            key = jwt.PyJWKClient(pool["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(subject)
            claims = jwt.decode(subject, key.key, algorithms=["RS256", "ES256"], audience=pool["allowed_audiences"],
                                issuer=pool["issuer"], options={"require": ["iss", "aud", "sub", "exp", "iat"]})
        except jwt.PyJWTError as e:
            return self._oauth_error(call, 400, "invalid_grant", f"The subject token is invalid: {e}")
        call.extra["subject_claims"] = claims
        lifetime = max(1, min(3600, int(claims["exp"] - time.time())))
        tok = self._issue(f"{pool['principal']}/subject/{claims['sub']}", scopes, lifetime, "sts")
        call.verdict, call.issued = "ok", tok.token
        return 200, {"access_token": tok.token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer",
                     "expires_in": lifetime}

    def _caller(self, call: Call) -> Issued | None:
        bearer = call.bearer
        with self.lock:
            tok = self.tokens.get(bearer or "")
        if tok is None or tok.expires_at < time.time():
            return None
        return tok

    # POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken
    def _generate(self, call: Call, sa: str):
        if (o := self._override("generate", call)) is not None:
            return o
        caller = self._caller(call)
        if caller is None:
            return self._google_error(call, 401, "UNAUTHENTICATED",
                                      "Request had invalid authentication credentials.")
        call.extra["caller"] = caller.principal
        body = call.body if isinstance(call.body, dict) else None
        if body is None:
            return self._google_error(call, 400, "INVALID_ARGUMENT", "body must be JSON")
        unknown = set(body) - {"scope", "lifetime", "delegates"}
        if unknown:
            return self._google_error(call, 400, "INVALID_ARGUMENT", f"unknown fields {sorted(unknown)}")
        scopes = body.get("scope")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s for s in scopes):
            return self._google_error(call, 400, "INVALID_ARGUMENT", "scope must be a non-empty list")
        lifetime = 3600
        if "lifetime" in body:
            m = _LIFETIME.match(str(body["lifetime"]))
            if not m:
                return self._google_error(call, 400, "INVALID_ARGUMENT", "lifetime must be like 3600s")
            lifetime = int(m.group(1))
            if not 1 <= lifetime <= MAX_LIFETIME:
                return self._google_error(call, 400, "INVALID_ARGUMENT", "lifetime out of range")
        call.extra["lifetime"] = lifetime
        delegates = body.get("delegates") or []  # google-auth sends null for none
        chain = []
        for d in delegates if isinstance(delegates, list) else [None]:
            m = _DELEGATE.match(d or "")
            if not m:
                return self._google_error(call, 400, "INVALID_ARGUMENT", f"bad delegate {d!r}")
            chain.append(m.group(1))
        # each link of the chain may create tokens for the next
        principal = caller.principal
        for link in chain + [sa]:
            if link not in self.can_impersonate.get(principal, set()):
                return self._google_error(call, 403, "PERMISSION_DENIED",
                                          f"Permission 'iam.serviceAccounts.getAccessToken' denied on {link}")
            principal = f"serviceAccount:{link}"
        tok = self._issue(f"serviceAccount:{sa}", list(scopes), lifetime, "iam")
        call.verdict, call.issued = "ok", tok.token
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tok.expires_at))
        return 200, {"accessToken": tok.token, "expireTime": expire}

    # GET /v1/whoami: a protected resource
    def _whoami(self, call: Call):
        caller = self._caller(call)
        if caller is None:
            return self._google_error(call, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        call.verdict = "ok"
        return 200, {"principal": caller.principal, "scopes": caller.scopes, "kind": caller.kind,
                     "expires_in": int(caller.expires_at - time.time())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    d = GcpDouble(a.port)
    print(f"READY {d.port}", flush=True)
    try:
        d.thread.join()
    except KeyboardInterrupt:
        d.close()


if __name__ == "__main__":
    main()
