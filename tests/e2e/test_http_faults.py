"""Bad input and held connections through the binary (review C21, fault review B7, tests 7 and 8):
the fault review's 2,000 malformed requests, every answer RFC 6749 JSON; a body that trickles
answered 408 within `header_read_timeout`, not held for the 60 s backstop; at most 256 connections
open per client address, the next one answered 503 `too_many_connections` and closed.

Everything goes over raw sockets to 127.0.0.1 (and 127.0.0.2 for the connection cap's twin)."""

from __future__ import annotations

import base64
import gc
import json
import random
import re
import select
import socket
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from harness import (
    GRANT,
    ID_TOKEN,
    Resp,
    b64url,
    b64url_json,
    good_claims,
    wait_until,
)

# RFC 6749 §5.2: error and error_description are %x20-21 / %x23-5B / %x5D-7E.
_RFC6749 = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]+$")
FORM_CT = "application/x-www-form-urlencoded"

# The routes of src/server/mod.rs (public and admin on one listener), and paths no route has.
ROUTES = [
    "/v1/token", "/v1/nonce", "/v1/revoke", "/v1/introspect", "/v1/grants", "/v1/keys/flush",
    "/v1/state/confirm", "/.well-known/jwks.json", "/.well-known/openid-configuration",
    "/healthz", "/readyz", "/admin", "/admin/", "/admin/login", "/admin/logout", "/admin/revoke",
]
UNKNOWN_PATHS = ["/", "/v1", "/v1/", "/v1/tokens", "/v1/token/x", "/.well-known/", "/.well-known/other",
                 "/admin/x", "/%2e%2e/etc/passwd", "/v2/token"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
# A 200 that is not an error: the read routes (healthz answers `ok` as text), and a nonce.
LEGIT_200 = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/.well-known/jwks.json"),
             ("GET", "/.well-known/openid-configuration"), ("POST", "/v1/nonce")}
# The inventory page's answers that are pages, not errors: its address and the page without a
# session redirect (303, no body), the login form is HTML (200). Its refusals are RFC 6749 JSON
# to a client that does not ask for HTML, like every other route's.
LEGIT_PAGES = {("GET", "/admin"): 303, ("GET", "/admin/"): 303, ("GET", "/admin/login"): 200}
# Input that is not HTTP/1.x at all: closing without an answer is allowed for it (and only it).
SILENT_OK = {"h2_preface"}

# Malformed HTTP that the parser itself refuses (no route sees it).
PARSER_400 = {"HTTP/9.9", "NUL in header value", "NUL in header name", "NUL in path", "duplicate CL",
              "CL not a number", "CL overflow", "obs-fold", "bad method char", "header without colon",
              "TLS ClientHello", "bare CR", "space before colon"}

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
FUZZ_SEED = 0x7B0D
FUZZ_TOTAL = 2000
# How many of each category (the fault review's test 7, t7_badinput.py); they add up to 2,000.
FUZZ_PLAN = {
    "route_method": 300,     # every route and unknown path × GET/POST/PUT/DELETE/PATCH, then random
    "garbage_body": 220,     # random bytes under random media types
    "invalid_utf8": 150,     # in form names and values (raw and %-encoded), path, header values
    "big_headers": 60,       # 17 KB to 1 MB of headers
    "many_headers": 60,      # 100–2000 headers
    "nested_json": 80,       # JSON nested 50–40,000 deep in a token's header or payload
    "many_segments": 30,     # tokens of 10,000 segments
    "base64_1mb_body": 20,   # a 1 MB base64 body
    "token_60kb": 40,        # 60 KB tokens
    "malformed_http": 300,   # CL/TE, bad chunking, NULs, bare LF/CR, HTTP/9.9, obs-fold, bad CL ...
    "mutated_token": 500,    # valid tokens with one thing changed
    "many_fields": 160,      # 33–5000 form fields
    "long_url": 60,          # 60 KB URLs
    "h2_preface": 12,        # an HTTP/2 client on the HTTP/1.1 port
    "incomplete_body": 8,    # /v1/token whose body never completes: 408 after header_read_timeout
}
assert sum(FUZZ_PLAN.values()) == FUZZ_TOTAL


# ------------------------------------------------------------------------------------------------
# raw HTTP


@dataclass
class Answer:
    status: int | None
    headers: dict
    body: bytes
    ended: str  # answered, closed (EOF with no complete answer), timeout, reset
    raw: bytes = b""
    elapsed: float = 0.0

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def rfc6749(self) -> bool:
        """An RFC 6749 §5.2 error: a JSON object (application/json) with `error` and
        `error_description`, both in the RFC's character set, and nothing else but `error_uri`."""
        j = self.json
        return (self.headers.get("content-type", "").startswith("application/json")
                and isinstance(j, dict) and set(j) <= {"error", "error_description", "error_uri"}
                and isinstance(j.get("error"), str) and bool(_RFC6749.match(j["error"]))
                and isinstance(j.get("error_description"), str)
                and bool(_RFC6749.match(j["error_description"])))

    def reason(self) -> str | None:
        j = self.json
        if isinstance(j, dict) and isinstance(j.get("error_description"), str):
            return j["error_description"].split(":", 1)[0]
        return None

    def as_resp(self) -> Resp:
        return Resp(self.status or 0, self.headers, self.json, self.body.decode("utf-8", "replace"), self.elapsed)


def _parse(data: bytes) -> tuple[int | None, dict, bytes, bool]:
    """(status, lower-cased headers, body, complete) of what came back so far."""
    while re.match(rb"HTTP/1\.[01] 1\d\d ", data) and b"\r\n\r\n" in data:
        data = data.split(b"\r\n\r\n", 1)[1]  # an interim answer (100 Continue) before the answer
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not data.startswith(b"HTTP/1."):
        return None, {}, b"", False
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, {}, b"", False
    headers = {}
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    cl = headers.get("content-length")
    complete = cl is not None and cl.isdigit() and len(body) >= int(cl)
    return status, headers, body, complete


def _read_answer(s: socket.socket, deadline: float, data: bytes = b"") -> tuple[bytes, str]:
    while True:
        _, _, _, complete = _parse(data)
        if complete:
            return data, "answered"
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except OSError as e:
            return data, f"reset ({e.__class__.__name__})"
        if not d:
            return data, "closed"
        data += d


def send_raw(port: int, data: bytes, *, read_timeout: float, source: str | None = None) -> Answer:
    """Sends `data` on a fresh connection (from `source`) and reads one answer. The bytes go out
    in 64 KiB pieces and sending stops as soon as the server has something to say (it may answer
    a request whose headers are too large and close before reading the rest)."""
    t0 = time.monotonic()
    deadline = t0 + read_timeout
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source:
            s.bind((source, 0))
        s.settimeout(read_timeout)
        s.connect(("127.0.0.1", port))
        view = memoryview(data)
        i = 0
        while i < len(data):
            try:
                i += s.send(view[i:i + 65536])
            except (socket.timeout, OSError):
                break  # the server stopped reading (or closed): read what it said
            if select.select([s], [], [], 0)[0]:
                break
        raw, ended = _read_answer(s, deadline)
    finally:
        s.close()
    status, headers, body, complete = _parse(raw)
    return Answer(status, headers, body, ended if complete or ended != "answered" else "closed", raw,
                  time.monotonic() - t0)


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes | None = None, *, content_type: str | None = None) -> bytes:
    h = [("Host", "127.0.0.1")]
    if content_type:
        h.append(("Content-Type", content_type))
    h += headers or []
    if body is not None:
        h.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def token_form(token: str, role: str = "deploy", **extra) -> bytes:
    d = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN, "audience": role}
    d.update(extra)
    return urllib.parse.urlencode(d).encode()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def port_of(broker) -> int:
    return int(broker.url.rsplit(":", 1)[1])


def faults_broker(broker_factory, mock_issuer, **server):
    """A broker with no rate limit (thousands of requests come from one address) and a short
    `header_read_timeout` unless the test names one."""
    srv = {"rate_limit_per_second": 0, "header_read_timeout": "2s"}
    srv.update(server)
    return broker_factory(issuer=mock_issuer, server=srv)


# ------------------------------------------------------------------------------------------------
# the 2,000 malformed requests (fault review test 7)


@dataclass
class Case:
    category: str
    sub: str
    method: str
    path: str
    data: bytes
    read_timeout: float = 3.0
    # the answer, filled in by the run
    answer: Answer | None = field(default=None, repr=False)


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "big") if n else b""


def _rand_b64(rng: random.Random, n: int) -> str:
    return b64url(_rand_bytes(rng, n))


def _sig(rng: random.Random) -> str:
    return _rand_b64(rng, 256)


def _mutate(rng: random.Random, token: str) -> tuple[str, str]:
    """One change to a valid RS256 token; none of them leaves it valid (a changed character is
    never a segment's last, whose spare bits a lenient base64 decoder could ignore)."""
    h, p, s = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    def flip(seg: str) -> str:
        i = rng.randrange(len(seg) - 1)
        c = rng.choice(alphabet.replace(seg[i], ""))
        return seg[:i] + c + seg[i + 1:]

    kind = rng.choice(["flip_header", "flip_payload", "flip_signature", "drop_signature", "empty_signature",
                       "swap_segments", "truncate", "insert_junk", "alg_none", "alg_hs256", "extra_segment",
                       "two_segments", "upper", "bearer_prefix", "padding", "whitespace", "payload_claims",
                       "double_token"])
    if kind == "flip_header":
        t = f"{flip(h)}.{p}.{s}"
    elif kind == "flip_payload":
        t = f"{h}.{flip(p)}.{s}"
    elif kind == "flip_signature":
        t = f"{h}.{p}.{flip(s)}"
    elif kind == "drop_signature":
        t = f"{h}.{p}"
    elif kind == "empty_signature":
        t = f"{h}.{p}."
    elif kind == "swap_segments":
        t = f"{p}.{h}.{s}"
    elif kind == "truncate":
        t = token[:rng.randrange(1, len(token) - 1)]
    elif kind == "insert_junk":
        i = rng.randrange(len(token))
        t = token[:i] + rng.choice(["+", "/", "=", "%", " ", "\t", "\x00", "é", "\u202e", ".."]) + token[i:]
    elif kind in ("alg_none", "alg_hs256"):
        hdr = json.loads(_b64dec(h))
        hdr["alg"] = "none" if kind == "alg_none" else "HS256"
        t = f"{b64url_json(hdr)}.{p}.{'' if kind == 'alg_none' else s}"
    elif kind == "extra_segment":
        t = f"{token}.{_rand_b64(rng, 8)}"
    elif kind == "two_segments":
        t = f"{h}..{s}"
    elif kind == "upper":
        t = token.upper()
    elif kind == "bearer_prefix":
        t = "Bearer " + token
    elif kind == "padding":
        t = f"{h}==.{p}.{s}"
    elif kind == "whitespace":
        t = f" {token}\n"
    elif kind == "payload_claims":
        claims = json.loads(_b64dec(p))
        claims[rng.choice(["sub", "aud", "iss", "exp", "ref"])] = rng.choice([None, 0, [], {}, "x" * 100, -1, 1e308])
        t = f"{h}.{b64url_json(claims)}.{s}"
    else:  # double_token
        t = f"{token}{token}"
    return kind, t


def _b64dec(seg: str) -> str:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)).decode()


def _nested(rng: random.Random, depth: int) -> str:
    return rng.choice([lambda d: "[" * d + "]" * d,
                       lambda d: '{"a":' * d + "1" + "}" * d,
                       lambda d: '{"a":[' * d + "]}" * d])(depth)


def build_cases(rng: random.Random, tokens: list[str], issuer: str) -> list[Case]:
    cases: list[Case] = []

    def add(cat, sub, method, path, data, **kw):
        cases.append(Case(cat, sub, method, path, data, **kw))

    def some_body() -> tuple[bytes | None, str | None]:
        k = rng.randrange(4)
        if k == 0:
            return None, None
        if k == 1:
            return token_form(rng.choice(tokens)), FORM_CT
        if k == 2:
            return _rand_bytes(rng, rng.randrange(1, 512)), rng.choice([FORM_CT, "application/json", None])
        return b"", FORM_CT

    # every route and unknown path × every method, then random pairs
    pairs = [(m, r) for r in ROUTES + UNKNOWN_PATHS[:4] for m in METHODS]
    while len(pairs) < FUZZ_PLAN["route_method"]:
        pairs.append((rng.choice(METHODS), rng.choice(ROUTES + UNKNOWN_PATHS)))
    for m, r in pairs[:FUZZ_PLAN["route_method"]]:
        body, ct = (None, None) if m in ("GET", "DELETE") else some_body()
        add("route_method", f"{m} {r}", m, r, request_bytes(m, r, body=body, content_type=ct))

    for _ in range(FUZZ_PLAN["garbage_body"]):
        path = rng.choice(["/v1/token"] * 4 + ROUTES + UNKNOWN_PATHS)
        n = rng.choice([1, 7, 100, 1000, 4096, 30000, 70000])
        ct = rng.choice([FORM_CT, "application/json", "application/octet-stream", "text/plain", None,
                         FORM_CT + "; charset=utf-16"])
        add("garbage_body", f"{n}B", "POST", path, request_bytes("POST", path, body=_rand_bytes(rng, n), content_type=ct))

    for _ in range(FUZZ_PLAN["invalid_utf8"]):
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])
        where = rng.choice(["value_raw", "value_pct", "name_raw", "path", "header", "whole"])
        tok = rng.choice(tokens)
        if where == "value_raw":
            body = token_form(tok)[:-6] + bad + b"&x=" + bad
            add("invalid_utf8", where, "POST", "/v1/token", request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT))
        elif where == "value_pct":
            body = b"grant_type=" + urllib.parse.quote(GRANT).encode() + b"&audience=dep" + \
                urllib.parse.quote_from_bytes(bad).encode() + b"&subject_token_type=" + \
                urllib.parse.quote(ID_TOKEN).encode() + b"&subject_token=" + urllib.parse.quote(tok).encode()
            add("invalid_utf8", where, "POST", "/v1/token", request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT))
        elif where == "name_raw":
            body = token_form(tok) + b"&" + bad + b"=1"
            path = rng.choice(["/v1/token", "/v1/nonce", "/v1/revoke", "/v1/introspect"])
            add("invalid_utf8", where, "POST", path, request_bytes("POST", path, body=body, content_type=FORM_CT))
        elif where == "path":
            path = rng.choice(ROUTES)
            data = b"GET " + path.encode() + bad + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            add("invalid_utf8", where, "GET", path, data)
        elif where == "header":
            body = token_form(tok)
            data = request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT)
            data = data.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nX-Bad: a" + bad)
            add("invalid_utf8", where, "POST", "/v1/token", data)
        else:
            body = bad * rng.randrange(1, 200)
            add("invalid_utf8", where, "POST", "/v1/token", request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT))

    for _ in range(FUZZ_PLAN["big_headers"]):
        size = int(17 * 1024 * (1024 / 17) ** rng.random())  # 17 KB .. 1 MB, log-uniform
        path = rng.choice(["/v1/token", "/v1/token", "/v1/nonce", "/healthz", "/v1/revoke", "/nope"])
        shape = rng.choice(["one", "several"])
        if shape == "one":
            hs = [("X-Big", "a" * size)]
        else:
            each = 4000
            hs = [(f"X-Big-{i}", "b" * each) for i in range(max(1, size // each))]
        body = token_form(rng.choice(tokens)) if path != "/healthz" else None
        m = "GET" if path == "/healthz" else "POST"
        add("big_headers", f"{shape} {size // 1024}KiB {m} {path}", m, path,
            request_bytes(m, path, hs, body, content_type=FORM_CT if body else None), read_timeout=5.0)

    for _ in range(FUZZ_PLAN["many_headers"]):
        n = int(100 * 20 ** rng.random())  # 100 .. 2000
        path = rng.choice(["/v1/token", "/v1/token", "/v1/nonce", "/healthz", "/readyz", "/nope"])
        m = "GET" if path in ("/healthz", "/readyz") else "POST"
        body = token_form(rng.choice(tokens)) if m == "POST" else None
        hs = [(f"X-H{i}", str(i)) for i in range(n)]
        add("many_headers", f"{n} headers {m} {path}", m, path,
            request_bytes(m, path, hs, body, content_type=FORM_CT if body else None))

    for _ in range(FUZZ_PLAN["nested_json"]):
        depth = int(50 * 800 ** rng.random())  # 50 .. 40,000
        nest = _nested(rng, depth)
        where = rng.choice(["payload", "header", "header_claim"])
        if where == "payload":
            tok = b64url_json({"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + b64url(nest.encode()) + "." + _sig(rng)
        elif where == "header":
            tok = b64url(nest.encode()) + "." + b64url_json(good_claims(issuer)) + "." + _sig(rng)
        else:
            tok = b64url(('{"alg":"RS256","kid":"k1","x":' + nest + "}").encode()) + "." + \
                b64url_json(good_claims(issuer)) + "." + _sig(rng)
        add("nested_json", f"{where} depth {depth}", "POST", "/v1/token",
            request_bytes("POST", "/v1/token", body=token_form(tok), content_type=FORM_CT))

    for _ in range(FUZZ_PLAN["many_segments"]):
        seg = rng.choice(["a", "", "eyJ9", _rand_b64(rng, 3)])
        tok = ".".join([seg] * 10000)
        add("many_segments", f"10000 x {seg!r}", "POST", "/v1/token",
            request_bytes("POST", "/v1/token", body=token_form(tok), content_type=FORM_CT))

    for _ in range(FUZZ_PLAN["base64_1mb_body"]):
        body = base64.b64encode(_rand_bytes(rng, 1024 * 1024))
        if rng.random() < 0.5:
            body = b"subject_token=" + body
        path = rng.choice(["/v1/token", "/v1/token", "/v1/nonce", "/v1/revoke", "/v1/introspect", "/nope"])
        add("base64_1mb_body", path, "POST", path, request_bytes("POST", path, body=body, content_type=FORM_CT),
            read_timeout=5.0)

    for _ in range(FUZZ_PLAN["token_60kb"]):
        c = good_claims(issuer, pad="p" * 44000)
        tok = b64url_json({"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + b64url_json(c) + "." + _sig(rng)
        tok = tok[:60 * 1024] if rng.random() < 0.3 else tok
        add("token_60kb", f"{len(tok)}B", "POST", "/v1/token",
            request_bytes("POST", "/v1/token", body=token_form(tok), content_type=FORM_CT))

    malformed = _malformed_kinds(tokens)
    for _ in range(FUZZ_PLAN["malformed_http"]):
        sub, data = rng.choice(malformed)
        data = data(rng) if callable(data) else data
        add("malformed_http", sub, *_target(data), data)

    for _ in range(FUZZ_PLAN["mutated_token"]):
        kind, tok = _mutate(rng, rng.choice(tokens))
        add("mutated_token", kind, "POST", "/v1/token",
            request_bytes("POST", "/v1/token", body=token_form(tok), content_type=FORM_CT))

    for _ in range(FUZZ_PLAN["many_fields"]):
        n = int(33 * (5000 / 33) ** rng.random())  # 33 .. 5000
        fields = [("grant_type", GRANT), ("subject_token", rng.choice(tokens)),
                  ("subject_token_type", ID_TOKEN), ("audience", "deploy")]
        fields += [(f"f{i}", "v") for i in range(n - len(fields))]
        rng.shuffle(fields)
        path = rng.choice(["/v1/token", "/v1/token", "/v1/nonce", "/v1/revoke", "/v1/introspect"])
        add("many_fields", f"{n} fields {path}", "POST", path,
            request_bytes("POST", path, body=urllib.parse.urlencode(fields).encode(), content_type=FORM_CT))

    for _ in range(FUZZ_PLAN["long_url"]):
        path = rng.choice(ROUTES + UNKNOWN_PATHS)
        m = rng.choice(["GET", "POST"])
        n = 60 * 1024 - rng.randrange(0, 2048)
        target = rng.choice([path + "?q=" + "x" * n, path + "/" + "y" * n,
                             path + "?" + "&".join(f"k{i}=v" for i in range(n // 8)),
                             "/" + "%41" * (n // 3)])
        body = token_form(rng.choice(tokens)) if m == "POST" else None
        add("long_url", f"{m} {path} {len(target)}B", m, path,
            request_bytes(m, target, body=body, content_type=FORM_CT if body else None))

    for i in range(FUZZ_PLAN["h2_preface"]):
        add("h2_preface", "prior knowledge" if i % 2 else "preface only", "PRI", "*",
            H2_PREFACE if i % 2 else H2_PREFACE[:24])

    for i in range(FUZZ_PLAN["incomplete_body"]):
        body = token_form(rng.choice(tokens))
        sub = ["half the body", "headers only", "Content-Length 1000000000", "chunked, no last chunk"][i % 4]
        if sub == "half the body":
            data = request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT)[:-len(body) // 2]
        elif sub == "headers only":
            data = request_bytes("POST", "/v1/token", body=body, content_type=FORM_CT)[:-len(body)]
        elif sub == "Content-Length 1000000000":
            data = request_bytes("POST", "/v1/token", [("Content-Length", "1000000000")], content_type=FORM_CT) + body
        else:
            data = request_bytes("POST", "/v1/token", [("Transfer-Encoding", "chunked")], content_type=FORM_CT) + \
                f"{len(body):x}\r\n".encode() + body + b"\r\n"
        add("incomplete_body", sub, "POST", "/v1/token", data, read_timeout=8.0)

    assert len(cases) == FUZZ_TOTAL, len(cases)
    rng.shuffle(cases)
    return cases


def _malformed_kinds(tokens: list[str]) -> list[tuple[str, object]]:
    """Malformed HTTP/1.1, each a request the server can see the end of (so it answers at once)."""
    form = token_form(tokens[0])
    chunked = f"{len(form):x}\r\n".encode() + form + b"\r\n0\r\n\r\n"
    post_head = b"POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + FORM_CT.encode() + b"\r\n"
    kinds: list[tuple[str, object]] = [
        ("CL and TE", post_head + b"Content-Length: " + str(len(chunked)).encode()
         + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked),
        ("TE then CL", post_head + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked),
        ("TE gzip, not chunked", post_head + b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"),
        ("TE chunked twice", post_head + b"Transfer-Encoding: chunked, chunked\r\n\r\n" + chunked),
        ("TE xchunked", post_head + b"Transfer-Encoding: xchunked\r\n\r\n" + chunked),
        ("bad chunk size", post_head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk size overflow", post_head + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ("chunk without CRLF", post_head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"),
        ("negative chunk", post_head + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n"),
        ("chunked to /v1/nonce, bad size", b"POST /v1/nonce HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n\r\n"),
        ("chunked to /v1/revoke, bad size", b"POST /v1/revoke HTTP/1.1\r\nHost: x\r\nContent-Type: " + FORM_CT.encode()
         + b"\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n\r\n"),
        ("chunked to unknown path, bad size", b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n\r\n"),
        ("NUL in header value", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n"),
        ("NUL in header name", b"POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-\x00A: a\r\nContent-Length: 0\r\n\r\n"),
        ("NUL in path", b"GET /heal\x00thz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("NULs only", b"\x00" * 200 + b"\r\n\r\n"),
        ("bare LF", b"GET /nope HTTP/1.1\nHost: 127.0.0.1\n\n"),
        ("bare LF POST", b"POST /v1/token HTTP/1.1\nHost: x\nContent-Type: " + FORM_CT.encode()
         + b"\nContent-Length: " + str(len(form)).encode() + b"\n\n" + form),
        ("bare CR", b"GET /healthz HTTP/1.1\rHost: 127.0.0.1\r\r"),
        ("HTTP/9.9", b"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n"),
        ("HTTP/2.0 line", b"POST /v1/token HTTP/2.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"),
        ("HTTP/1.1x", b"GET /healthz HTTP/1.1x\r\nHost: 127.0.0.1\r\n\r\n"),
        ("no version", b"GET /healthz\r\nHost: 127.0.0.1\r\n\r\n"),
        ("lowercase version", b"GET /healthz http/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("duplicate CL", post_head + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
        ("CL list", post_head + b"Content-Length: 3, 5\r\n\r\nabcde"),
        ("CL not a number", post_head + b"Content-Length: abc\r\n\r\n"),
        ("CL negative", post_head + b"Content-Length: -1\r\n\r\n"),
        ("CL overflow", post_head + b"Content-Length: 99999999999999999999999\r\n\r\n"),
        ("CL plus sign", post_head + b"Content-Length: +5\r\n\r\nabcde"),
        ("CL hex", post_head + b"Content-Length: 0x5\r\n\r\nabcde"),
        ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\r\n b\r\n\r\n"),
        ("obs-fold token", post_head + b"X-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n"),
        ("space before colon", b"GET /healthz HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n"),
        ("header without colon", b"GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n"),
        ("empty header name", b"GET /healthz HTTP/1.1\r\n: x\r\n\r\n"),
        ("bad method char", b"G(T /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("lowercase method", b"post /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"),
        ("long method", b"X" * 5000 + b" /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("space in path", b"GET /v1/to ken HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("control char in path", b"GET /v1/\x01token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("path not starting with /", b"GET v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("absolute-form", b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("CONNECT", b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n"),
        ("TRACE", b"TRACE /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("OPTIONS token", b"OPTIONS /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("no Host", b"POST /v1/token HTTP/1.1\r\nContent-Type: " + FORM_CT.encode() + b"\r\nContent-Length: "
         + str(len(form)).encode() + b"\r\n\r\n" + form),
        ("two Hosts", b"GET /v1/grants HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("Expect 100-continue", post_head + b"Expect: 100-continue\r\nContent-Length: "
         + str(len(form)).encode() + b"\r\n\r\n" + form),
        ("Expect unknown", post_head + b"Expect: 200-ok\r\nContent-Length: 0\r\n\r\n"),
        ("Upgrade h2c", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
        ("Upgrade websocket", b"GET /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
         b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
        ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32 + b"\x00\x00\x02\x13\x01\x01\x00"
         + b"\r\n\r\n"),
        ("request line only CRLFs", b"\r\n\r\n\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("garbage line", lambda rng: _rand_bytes(rng, rng.randrange(1, 300)).replace(b"\r\n", b"")
         + b"\r\n\r\n"),
        ("garbage header line", lambda rng: b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
         + _rand_bytes(rng, 40).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n\r\n"),
    ]
    return kinds


def _target(data: bytes) -> tuple[str, str]:
    """The method and path a raw request names, as a lenient server would read them ("?" when
    there is none): leading empty lines skipped, an absolute-form target reduced to its path."""
    m = re.match(rb"(?:\r?\n)*([!-~]+) (?:https?://[^/ ]*)?(/[^ ?\r\n]*)", data)
    if not m:
        return "?", "?"
    return m.group(1).decode(), m.group(2).decode("latin-1")


def _run_case(port: int, c: Case) -> Case:
    c.answer = send_raw(port, c.data, read_timeout=c.read_timeout)
    return c


def test_two_thousand_malformed_requests_get_rfc6749_json(broker_factory, mock_issuer):
    """The fault review's test 7 (seeded): 2,000 malformed requests over raw sockets. Every answer
    is HTTP with an RFC 6749 JSON body, except a 200 (a read route, a nonce, or a valid token in
    a request lenient parsing accepts), counted apart; what the parser refuses is 400
    `request_invalid` or 431 `request_too_large`; only an HTTP/2 preface may be closed without an
    answer; the bodies that never complete are answered 408 `request_timeout` after
    `header_read_timeout` (2 s); the broker stays up, an exchange works after, and RSS grows by
    less than 50 MiB. On the binary before C21/B7 (1a4edaf): 294 answers were the parser's empty
    400/431, and the 8 unfinished bodies had no answer within 8 s."""
    b = faults_broker(broker_factory, mock_issuer)
    port = port_of(b)
    # a warm-up exchange (keys fetched, pools filled) before the RSS baseline
    assert b.exchange(mock_issuer.token()).status == 200
    tokens = [mock_issuer.token() for _ in range(8)]
    cases = build_cases(random.Random(FUZZ_SEED), tokens, mock_issuer.issuer)
    rss_before = rss_kib(b.proc.pid)
    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(lambda c: _run_case(port, c), cases))
    rss_after = rss_kib(b.proc.pid)
    assert b.proc.poll() is None, "the broker died under the malformed requests"

    by_status: Counter = Counter()
    legit_200: Counter = Counter()
    not_json: list[Case] = []
    silent: list[Case] = []
    rfc = 0
    for c in done:
        a = c.answer
        if a.status is None:
            silent.append(c)
            continue
        by_status[a.status] += 1
        exchanged = c.path == "/v1/token" and a.status == 200 and isinstance(a.json, dict) \
            and "access_token" in a.json
        if a.status == 200 and ((c.method, c.path) in LEGIT_200 or exchanged):
            # a read route, a nonce, or a valid token in a request lenient parsing accepts
            legit_200[f"{c.method} {c.path}"] += 1
        elif LEGIT_PAGES.get((c.method, c.path)) == a.status:
            legit_200[f"{c.method} {c.path} {a.status}"] += 1
        elif a.rfc6749():
            rfc += 1
        else:
            not_json.append(c)
        if c.path == "/v1/token" and (exchanged or a.as_resp().decision_id):
            b.record_answer(a.as_resp())  # the teardown's audit invariants see the exchange answers
    incomplete = [c for c in done if c.category == "incomplete_body"]
    summary = [
        f"{len(done)} requests (seed {FUZZ_SEED:#x}); answers by status: {dict(sorted(by_status.items()))}",
        f"RFC 6749 JSON: {rfc}; legitimate 200s: {sum(legit_200.values())} {dict(legit_200)}; "
        f"not RFC 6749 JSON: {len(not_json)} by category {dict(Counter(c.category for c in not_json))}",
        f"no answer: {len(silent)} by category {dict(Counter(c.category for c in silent))} "
        f"(ended: {dict(Counter(c.answer.ended for c in silent))})",
        f"incomplete bodies: {[(c.sub, c.answer.status, c.answer.reason(), round(c.answer.elapsed, 1)) for c in incomplete]}",
        f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB",
    ]
    malformed = Counter((c.sub, c.answer.status, c.answer.reason()) for c in done if c.category == "malformed_http")
    summary.append("malformed HTTP: " + "; ".join(f"{k[0]} -> {k[1]} {k[2]} x{n}" for k, n in sorted(malformed.items(), key=str)))
    for c in not_json[:15]:
        summary.append(f"  not JSON: {c.category}/{c.sub}: {c.answer.raw[:120]!r}")
    for c in silent[:15]:
        summary.append(f"  no answer: {c.category}/{c.sub} ({c.answer.ended}) sent {c.data[:60]!r}")
    print("\n".join(summary))

    # the broker stays up and serves an exchange after
    assert b.alive()
    ok = b.exchange(mock_issuer.token(), session=requests.Session())
    assert ok.status == 200, ok
    assert rss_after - rss_before < 50 * 1024, f"RSS grew {rss_before} -> {rss_after} KiB"
    # every answer is RFC 6749 JSON but a read route's 200
    n_not_json = len(not_json)
    assert n_not_json == 0, f"{n_not_json} answers are not RFC 6749 JSON:\n" + "\n".join(summary)
    # only what is not HTTP/1.x at all goes unanswered, and it is a handful
    assert {c.category for c in silent} <= SILENT_OK, "\n".join(summary)
    assert len(silent) <= FUZZ_PLAN["h2_preface"], "\n".join(summary)
    # a body that never completes is a 408, answered and closed
    for c in incomplete:
        a = c.answer
        assert a.status == 408 and a.reason() == "request_timeout" and a.json["error"] == "invalid_request", \
            f"{c.sub}: {a.raw[:200]!r} ({a.ended})"
        assert a.headers.get("connection") == "close", a.headers
    # what the parser refuses is 400 request_invalid, headers over its bounds 431 request_too_large
    for c in done:
        a = c.answer
        if c.category == "malformed_http" and c.sub in PARSER_400:
            assert (a.status, a.reason()) == (400, "request_invalid"), f"{c.sub}: {a.raw[:200]!r}"
        if a.status == 431:
            assert a.reason() == "request_too_large", f"{c.category}/{c.sub}: {a.raw[:200]!r}"
    # and the bulk really was refused as what it is, not all one thing
    assert by_status[400] > 500 and by_status[405] >= 40 and by_status[404] >= 10, summary[0]
    assert sum(legit_200.values()) > 0, "no read route answered 200: the counts would prove nothing"


# ------------------------------------------------------------------------------------------------
# slow bodies (fault review test 8, review C21)


def _slow_body_head(port: int, length: int = 100) -> bytes:
    return (f"POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {FORM_CT}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_trickling_body_is_answered_408_while_others_are_served(broker_factory, mock_issuer):
    """20 connections send the headers of a `POST /v1/token` with `Content-Length: 100`, then one
    byte every 0.5 s: each is answered 408 `request_timeout` (RFC 6749 JSON, audited,
    `connection: close`) once `header_read_timeout` (2 s) has passed, well before the old 60 s
    backstop (bounded at 15 s, nothing finer is asserted). Twin: a normal client keeps exchanging
    meanwhile, every exchange 200. Before C21: held 60 s, then an empty 503."""
    b = faults_broker(broker_factory, mock_issuer)
    port = port_of(b)
    n = 20
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(_slow_body_head(port))
        s.setblocking(False)
        socks.append(s)
    got = {k: b"" for k in range(n)}
    ended: dict[int, str] = {}
    sent = 0

    stop = threading.Event()
    normal: list = []

    def normal_client():
        session = requests.Session()
        while not stop.is_set():
            normal.append(b.exchange(mock_issuer.token(), session=session))

    t = threading.Thread(target=normal_client)
    t.start()

    def one_byte_each_then_all_answered() -> bool:
        nonlocal sent
        for k, s in enumerate(socks):
            if k in ended:
                continue
            try:
                d = s.recv(65536)
                if d == b"":
                    ended[k] = "closed"
                    continue
                got[k] += d
            except BlockingIOError:
                pass
            except OSError as e:
                ended[k] = f"reset ({e.__class__.__name__})"
                continue
            if _parse(got[k])[3]:
                ended[k] = "answered"
                continue
            if sent < 99:  # never the 100th byte
                try:
                    s.send(b"a")
                except OSError:
                    pass
        sent += 1
        return len(ended) == n

    t0 = time.monotonic()
    try:
        wait_until(one_byte_each_then_all_answered, timeout=15, interval=0.5,
                   what=f"an answer on all {n} slow-body connections (before the 60 s backstop)")
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join(timeout=60)
        for s in socks:
            s.close()
    answers = [Answer(*_parse(got[k])[:3], ended[k], got[k]) for k in range(n)]
    print(f"slow bodies: {n} answered by {Counter(a.status for a in answers)} within {took:.1f} s "
          f"({sent} half-second rounds); normal exchanges meanwhile: {Counter(r.status for r in normal)}")
    for a in answers:
        assert a.ended == "answered", a
        assert a.status == 408 and a.rfc6749(), a.raw[:300]
        assert a.json["error"] == "invalid_request" and a.reason() == "request_timeout", a.json
        assert a.headers.get("connection") == "close", a.headers
        assert a.headers.get("cache-control") == "no-store", a.headers
        assert a.as_resp().decision_id, a.json  # audited: the teardown finds its deny record
        b.record_answer(a.as_resp())
    assert normal and all(r.status == 200 for r in normal), Counter(r.status for r in normal)
    assert b.alive()


# ------------------------------------------------------------------------------------------------
# the connection cap (review C21)


def _established_to(port: int) -> int:
    """Established TCP connections whose local port is the broker's (the server's side, counted
    by the kernel whether or not the broker has accepted them yet)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "01":
                n += 1
    return n


def _raw_exchange(port: int, token: str, source: str) -> Answer:
    data = request_bytes("POST", "/v1/token", [("Connection", "close")], token_form(token), content_type=FORM_CT)
    return send_raw(port, data, read_timeout=20, source=source)


def test_connections_past_256_per_address_get_503_and_another_address_is_served(broker_factory, mock_issuer):
    """256 idle connections from 127.0.0.1 (each mid-way through a request line; header_read_timeout
    30 s keeps them open): the 257th from 127.0.0.1 is answered at once, without sending a byte,
    503 `temporarily_unavailable` / `too_many_connections` as RFC 6749 JSON, and closed. Twins: a
    connection from 127.0.0.2 is served (an exchange, 200), and once ten of the 256 are closed,
    127.0.0.1 is served again. Before C21 there was no cap: the 257th was simply admitted."""
    b = faults_broker(broker_factory, mock_issuer, header_read_timeout="30s")
    port = port_of(b)
    token_other, token_again = mock_issuer.token(), mock_issuer.token()
    b.http.close()
    # nothing of ours is still open to the broker, so the 256 below are all 127.0.0.1 has there
    gc.collect()  # a health check's connection can outlive its session in a reference cycle
    wait_until(lambda: _established_to(port) == 0, timeout=10, what="no connection open to the broker")
    idle = []
    over_closed = False
    try:
        for _ in range(256):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.1", 0))
            s.sendall(b"GET /healthz HT")
            idle.append(s)
        wait_until(lambda: _established_to(port) == 256, timeout=10, what="256 connections established")
        # the 257th from 127.0.0.1 sends nothing: it is answered and closed all the same
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.1", 0)) as s257:
            t0 = time.monotonic()
            raw, ended = _read_answer(s257, t0 + 5)
            status, headers, body, _ = _parse(raw)
            over = Answer(status, headers, body, ended, raw, time.monotonic() - t0)
            if ended == "answered":
                over_then, _ = _read_answer(s257, time.monotonic() + 5, b"x")  # EOF next
                over_closed = over_then == b"x"
        # another address is not held up
        other = _raw_exchange(port, token_other, "127.0.0.2")
        b.record_answer(other.as_resp())
        # the idle ones are still open (the cap did not close them)
        still_open = 0
        for s in idle:
            s.setblocking(False)
            try:
                s.recv(1)  # EOF or bytes: the broker closed it or answered it
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        for s in idle[:10]:
            s.close()
        idle = idle[10:]

        def served_again():
            a = send_raw(port, request_bytes("GET", "/healthz", [("Connection", "close")]), read_timeout=5,
                         source="127.0.0.1")
            return a if a.status == 200 else None

        again = wait_until(served_again, timeout=10, interval=0.1, what="127.0.0.1 served after ten closed")
        again_exchange = _raw_exchange(port, token_again, "127.0.0.1")
        b.record_answer(again_exchange.as_resp())
    finally:
        for s in idle:
            s.close()
    print(f"connection cap: 257th from 127.0.0.1 -> {over.status} {over.reason()} ({over.ended}, "
          f"{over.elapsed * 1000:.0f} ms); 127.0.0.2 exchange -> {other.status}; idle still open: "
          f"{still_open}/256; after closing 10: healthz {again.status}, exchange {again_exchange.status}")
    assert over.status == 503 and over.rfc6749(), f"{over.raw[:300]!r} ({over.ended})"
    assert over.json["error"] == "temporarily_unavailable" and over.reason() == "too_many_connections", over.json
    assert over.headers.get("connection") == "close" and over.ended == "answered", over
    assert over_closed, "the refused connection was left open"
    assert still_open == 256, still_open
    assert other.status == 200, other.raw[:300]
    assert again_exchange.status == 200, again_exchange.raw[:300]
