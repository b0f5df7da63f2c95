"""The HTTP surface of /v1/token (ATTACKS.md F 48–52): size limits, deep nesting, HTTP semantics,
slowloris, rate limit and error hygiene. Error hygiene (52) is asserted on every error answer the
suite receives through `Broker.post_token`; raw-socket answers are checked here explicitly."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from harness import (
    GRANT,
    ID_TOKEN,
    HTTP_TIMEOUT,
    Resp,
    b64url,
    check_error_hygiene,
    good_claims,
    signature_segment,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def form(token: str, role: str = "deploy", **extra) -> dict:
    d = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN,
         "audience": role}
    d.update(extra)
    return d


def raw_request(broker, request: bytes, timeout: float = 20) -> tuple[int | None, bytes, str]:
    """Sends raw bytes; returns (status or None, body, how the connection ended)."""
    host, port = broker.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    ended = "closed"
    data = b""
    try:
        try:
            s.sendall(request)
        except OSError as e:
            ended = f"send failed: {e.__class__.__name__}"
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    cl = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                    if cl and len(body) >= int(cl[0].split(b":")[1]):
                        ended = "answered"
                        break
        except socket.timeout:
            ended = "timeout"
        except OSError as e:
            ended = f"reset: {e.__class__.__name__}"
    finally:
        s.close()
    status = None
    if data.startswith(b"HTTP/1."):
        status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2], ended


def assert_json_error(resp, status, reason, error="invalid_request"):
    assert resp.status == status, resp
    assert resp.error == error, resp
    assert resp.reason == reason, resp
    assert resp.headers.get("Cache-Control") == "no-store", resp.headers
    assert resp.headers.get("Content-Type", "").startswith("application/json")


# ---- F 48: oversized input ---------------------------------------------------------------------


def test_ten_mib_body_is_413(broker, mock_issuer):
    r = broker.post_token(b"a=" + b"b" * (10 * 1024 * 1024), headers=FORM)
    assert_json_error(r, 413, "request_too_large")
    # chunked, without a Content-Length
    r = broker.post_token((b"a" * 65536 for _ in range(160)), headers=FORM)
    assert_json_error(r, 413, "request_too_large")
    assert broker.alive()
    assert broker.exchange(mock_issuer.token()).status == 200


def test_one_mib_subject_token_is_413(broker, mock_issuer):
    big = "x" * (1024 * 1024)
    r = broker.post_token(form(big))
    assert_json_error(r, 413, "request_too_large")
    assert big[:64] not in broker.stderr()
    assert broker.exchange(mock_issuer.token()).status == 200


def test_body_limit_edge(broker_factory, mock_issuer):
    b = broker_factory(issuer=mock_issuer, server={"max_body_size": 4096})
    token = mock_issuer.token()
    r = b.post_token(form(token, padding="p" * 4096))
    assert_json_error(r, 413, "request_too_large")
    assert b.exchange(token).status == 200


def test_ten_thousand_form_fields(broker, mock_issuer):
    token = mock_issuer.token()
    # 10,000 distinct short names: about 50 KB, under the body limit, over the field limit
    names = [f"{i:x}" for i in range(10_000)]
    body = "&".join(f"{n}=" for n in names) + "&" + "&".join(f"{k}={v}" for k, v in form("x").items())
    assert len(body) < 64 * 1024
    r = broker.post_token(body, headers=FORM)
    assert r.status in (400, 413), r
    assert r.reason in ("request_too_large", "request_invalid"), r
    assert r.status == 413 and r.reason == "request_too_large", "README: more than 32 fields is 413"
    # 33 fields is over the limit too; 32 is fine
    extra = {f"x{i}": "1" for i in range(29)}
    r = broker.post_token(form(token, **extra))
    assert_json_error(r, 413, "request_too_large")
    extra = {f"x{i}": "1" for i in range(28)}
    assert broker.post_token(form(token, **extra)).status == 200


def _headers_request(broker, token: str, headers: list[tuple[str, str]]) -> bytes:
    body = requests.models.RequestEncodingMixin._encode_params(form(token)).encode()
    host = broker.url.removeprefix("http://")
    req = (f"POST /v1/token HTTP/1.1\r\nHost: {host}\r\n"
           f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n")
    req += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return req.encode() + b"\r\n" + body


def test_too_many_headers_is_431(broker, mock_issuer):
    token = mock_issuer.token()
    status, _, ended = raw_request(broker, _headers_request(
        broker, token, [(f"X-Pad-{i}", "a" * 100) for i in range(1000)]))
    # documented behaviour: hyper answers 431 with an empty body and closes
    assert status == 431 or (status is None and ended != "answered"), (status, ended)
    assert broker.alive()
    assert broker.exchange(token).status == 200  # not consumed


@pytest.mark.parametrize("shape", ["one_header", "ninety_headers"])
def test_100_kib_of_headers_is_refused(broker, mock_issuer, shape):
    token = mock_issuer.token()
    headers = ([("X-Big", "a" * (100 * 1024))] if shape == "one_header"
               else [(f"X-Pad-{i}", "a" * 1150) for i in range(90)])
    assert sum(len(k) + len(v) + 4 for k, v in headers) >= 100 * 1024
    status, body, ended = raw_request(broker, _headers_request(broker, token, headers))
    assert broker.alive()
    assert status in (400, 413, 431) or (status is None and ended != "answered"), \
        (status, body[:200], ended)
    # the exchange never reached the pipeline: the token is still unused
    assert broker.exchange(token).status == 200


# ---- F 49: deep nesting --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.parametrize("closed", [False, True])
def test_deeply_nested_json_in_token(broker, mock_issuer, where, closed):
    levels = 5000 if closed else 11000
    nest = "[" * levels + ("]" * levels if closed else "")
    claims = good_claims(mock_issuer.issuer)
    if where == "header":
        header_raw = '{"alg":"RS256","typ":"JWT","kid":"k1","x":' + nest + ("}" if closed else "")
        token = mock_issuer.sign(claims, header_raw=header_raw)
    else:
        payload_raw = json.dumps(claims)[:-1] + ',"x":' + nest + ("}" if closed else "")
        token = mock_issuer.sign(payload_raw=payload_raw)
    assert len(token) <= 16 * 1024, len(token)
    r = broker.exchange(token)
    assert_json_error(r, 400, "malformed_token")
    assert broker.alive()
    # twin: a modest nesting depth is fine
    claims["x"] = json.loads("[" * 20 + "]" * 20)
    assert broker.exchange(mock_issuer.sign(claims)).status == 200


def test_hundred_thousand_brackets_over_the_size_limit(broker, mock_issuer):
    token = b64url(b'{"alg":"RS256","x":' + b"[" * 100_000) + "." + b64url(b"{}") + ".c2ln"
    r = broker.exchange(token)
    # refused on size before any parsing: the body limit (413) or the token limit (400)
    assert r.status in (400, 413) and r.reason == "request_too_large", r
    assert broker.alive()


def test_huge_number_in_payload(broker, mock_issuer):
    claims = good_claims(mock_issuer.issuer)
    payload_raw = json.dumps(claims)[:-1] + ',"n":1' + "0" * 8000 + "}"
    r = broker.exchange(mock_issuer.sign(payload_raw=payload_raw))
    assert r.status == 400 and r.reason in ("malformed_token", "request_too_large"), r
    payload_raw = json.dumps(claims)[:-1] + ',"n":1e400}'
    r = broker.exchange(mock_issuer.sign(payload_raw=payload_raw))
    assert_json_error(r, 400, "malformed_token")
    assert broker.alive()


# ---- F 51: HTTP semantics ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(broker, mock_issuer, method):
    token = mock_issuer.token()
    r = broker.http.request(method, broker.url + "/v1/token", data=form(token), timeout=HTTP_TIMEOUT)
    resp = Resp(r.status_code, r.headers, r.json(), r.text)
    assert resp.status == 405, resp
    assert r.headers.get("Allow") == "POST"
    assert resp.error == "invalid_request"
    check_error_hygiene(resp, [token])
    assert broker.exchange(token).status == 200


def test_get_with_token_in_query_string(broker, mock_issuer):
    token = mock_issuer.token()
    r = broker.http.get(broker.url + "/v1/token", params=form(token), timeout=HTTP_TIMEOUT)
    resp = Resp(r.status_code, r.headers, r.json(), r.text)
    assert resp.status in (400, 405), resp
    check_error_hygiene(resp, [token])
    assert signature_segment(token) not in broker.stderr()


def test_token_in_query_string_of_a_post(broker, mock_issuer):
    token = mock_issuer.token()
    r = broker.post_token(form(token), params={"subject_token": token}, secrets=[token])
    assert_json_error(r, 400, "request_invalid")
    assert "query" in r.description
    assert broker.exchange(token).status == 200  # twin: the same request without a query string
    assert signature_segment(token) not in broker.stderr()


def test_token_in_the_path(broker, mock_issuer):
    token = mock_issuer.token()
    r = broker.http.post(f"{broker.url}/v1/token/{token}", data=form(token), timeout=HTTP_TIMEOUT)
    resp = Resp(r.status_code, r.headers, r.json() if r.text else None, r.text)
    assert resp.status in (400, 404, 405), resp
    assert token not in r.text and signature_segment(token) not in r.text
    assert signature_segment(token) not in broker.stderr()
    assert broker.exchange(token).status == 200


@pytest.mark.parametrize("param", ["grant_type", "subject_token", "subject_token_type", "audience"])
def test_duplicate_parameters(broker, mock_issuer, param):
    token = mock_issuer.token()
    pairs = list(form(token).items()) + [(param, form(token)[param])]
    r = broker.post_token(pairs, secrets=[token])
    assert_json_error(r, 400, "request_invalid")
    assert param in r.description
    assert broker.exchange(token).status == 200


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", "multipart/form-data", None])
def test_content_type_must_be_form(broker, mock_issuer, ctype):
    token = mock_issuer.token()
    headers = {"Content-Type": ctype} if ctype else {}
    body = json.dumps(form(token)) if ctype == "application/json" else \
        requests.models.RequestEncodingMixin._encode_params(form(token))
    r = broker.post_token(body.encode(), headers=headers, secrets=[token])
    assert_json_error(r, 415, "request_invalid")
    # twin, with charset parameter and odd case
    r = broker.post_token(
        requests.models.RequestEncodingMixin._encode_params(form(token)).encode(),
        headers={"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"})
    assert r.status == 200, r


def test_subject_token_type(broker, mock_issuer):
    token = mock_issuer.token()
    d = form(token)
    del d["subject_token_type"]
    assert_json_error(broker.post_token(d), 400, "request_invalid")
    for t in ["urn:ietf:params:oauth:token-type:access_token",
              "urn:ietf:params:oauth:token-type:saml2", "urn:ephemera:token-type:nitro-attestation",
              "bogus\"\\\u00e9", ""]:
        r = broker.post_token(form(token, subject_token_type=t))
        assert_json_error(r, 400, "unsupported_token_type")
    assert broker.post_token(form(token, subject_token_type="urn:ietf:params:oauth:token-type:jwt")).status == 200


def test_missing_parameters(broker, mock_issuer):
    token = mock_issuer.token()
    for missing in ("grant_type", "subject_token", "audience"):
        d = form(token)
        del d[missing]
        r = broker.post_token(d)
        assert_json_error(r, 400, "request_invalid")
        assert missing in r.description
    r = broker.post_token(form(""))
    assert_json_error(r, 400, "request_invalid")
    assert broker.exchange(token).status == 200


def test_conflicting_audience_and_resource(broker, mock_issuer):
    token = mock_issuer.token()
    r = broker.post_token(form(token, resource="release"))
    assert_json_error(r, 400, "request_invalid")
    assert broker.post_token(form(token, resource="deploy")).status == 200


def test_actor_token(broker, mock_issuer):
    token = mock_issuer.token()
    actor = mock_issuer.token()
    for extra in ({"actor_token": actor},
                  {"actor_token_type": ID_TOKEN},
                  {"actor_token": actor, "actor_token_type": ID_TOKEN}):
        r = broker.post_token(form(token, **extra), secrets=[token, actor])
        assert_json_error(r, 400, "request_invalid")
    assert broker.exchange(token).status == 200


def test_requested_token_type(broker, mock_issuer):
    r = broker.post_token(form(mock_issuer.token(),
                               requested_token_type="urn:ietf:params:oauth:token-type:refresh_token"))
    assert_json_error(r, 400, "request_invalid")
    r = broker.post_token(form(mock_issuer.token(),
                               requested_token_type="urn:ietf:params:oauth:token-type:jwt"))
    assert r.status == 200


def test_unknown_parameters_are_ignored(broker, mock_issuer):
    r = broker.post_token(form(mock_issuer.token(), scope="read write", client_id="x"))
    assert r.status == 200, r
    assert "refresh_token" not in r.json and "scope" not in r.json


# ---- F 50: slowloris -----------------------------------------------------------------------------


def test_slowloris_connections_are_dropped(broker_factory, mock_issuer):
    b = broker_factory(issuer=mock_issuer, server={"header_read_timeout": "2s"})
    host, port = b.url.removeprefix("http://").split(":")
    request = f"POST /v1/token HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode() + b"a" * 100
    n = 50
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.setblocking(False)
        socks.append(s)
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    legit: list = []

    def legit_exchange():
        time.sleep(0.5)
        legit.append(b.exchange(mock_issuer.token(), session=requests.Session()))

    t = threading.Thread(target=legit_exchange)
    t.start()
    i = 0
    while len(closed_at) < n and time.monotonic() - opened < 15:
        for k, s in enumerate(socks):
            if k in closed_at:
                continue
            try:
                if i < len(request):
                    s.send(request[i:i + 1])
            except OSError:
                closed_at[k] = time.monotonic() - opened
                continue
            try:
                d = s.recv(4096)
                if d == b"" or d.startswith(b"HTTP/1.1 408") or d:
                    closed_at[k] = time.monotonic() - opened
            except BlockingIOError:
                pass
            except OSError:
                closed_at[k] = time.monotonic() - opened
        i += 1
        time.sleep(1.0 if len(closed_at) < n else 0)
    t.join(timeout=HTTP_TIMEOUT)
    for s in socks:
        s.close()
    assert len(closed_at) == n, f"{n - len(closed_at)} slow connections still open after 15 s"
    # header_read_timeout is 2 s: every one is dropped within ~5 s (generous on a loaded box)
    assert max(closed_at.values()) < 6, sorted(closed_at.values())[-5:]
    assert legit and legit[0].status == 200, legit
    assert b.alive()


# ---- request timeout ---------------------------------------------------------------------------------


def test_request_timeout_answer_is_an_audited_rfc6749_error(broker_factory, mock_issuer):
    mock_issuer.set_mode(trickle={"/.well-known/openid-configuration": 1.0})
    b = broker_factory(issuer=mock_issuer, jwks={"fetch_timeout": "5s"},
                       server={"request_timeout": "1s"}, check_invariants=False)
    token = mock_issuer.token()
    r = b.http.post(b.url + "/v1/token", data=form(token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 503, r.text
    assert r.elapsed.total_seconds() < 4
    assert r.headers.get("Retry-After"), dict(r.headers)
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)
    resp = Resp(r.status_code, r.headers, r.json() if r.text else None, r.text)
    check_error_hygiene(resp, [token])
    assert resp.error == "temporarily_unavailable", resp
    assert resp.decision_id, resp
    assert b.audit_record(resp.decision_id)["decision"] == "deny"


def test_fetch_timeout_inside_request_timeout_is_an_rfc6749_503(broker_factory, mock_issuer):
    """Twin of the above: with fetch_timeout (1s) under request_timeout (5s) the same stuck issuer
    gives a proper, audited 503 keys_unavailable."""
    mock_issuer.set_mode(trickle={"/.well-known/openid-configuration": 1.0})
    b = broker_factory(issuer=mock_issuer, jwks={"fetch_timeout": "1s"},
                       server={"request_timeout": "5s"})
    r = b.exchange(mock_issuer.token())
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "keys_unavailable"
    assert r.headers.get("Retry-After")


# ---- rate limit ------------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(broker_factory, mock_issuer):
    b = broker_factory(issuer=mock_issuer, server={"rate_limit_per_second": 1, "rate_limit_burst": 3})
    tokens = [mock_issuer.token() for _ in range(5)]
    answers = [b.exchange(t) for t in tokens]
    limited = [r for r in answers if r.status == 429]
    assert limited, answers
    r = limited[0]
    assert r.error == "temporarily_unavailable" and r.reason == "rate_limited", r
    assert r.headers.get("Retry-After")
    # a rate-limited request did not consume its token
    idx = answers.index(r)
    time.sleep(1.5)
    assert b.exchange(tokens[idx]).status == 200


# ---- F 52: error hygiene, explicitly ---------------------------------------------------------------


def test_error_descriptions_never_echo_untrusted_text(broker, mock_issuer):
    token = mock_issuer.token()
    evil = 'role"\\\u00e9\u202e\r\n<script>' + "x" * 500
    r = broker.post_token(form(token, role=evil))
    assert_json_error(r, 400, "unknown_role", error="invalid_target")
    assert '"' not in r.description and "\\" not in r.description
    assert len(r.description) < 400
    r = broker.exchange(mock_issuer.token(aud='evil"aud\\' + "\u0000"))
    assert_json_error(r, 400, "audience_mismatch")
    r = broker.exchange(mock_issuer.token(repository="acme/\u0430pp"), role="deploy")
    assert_json_error(r, 400, "policy_denied", error="invalid_target")
    every = [resp for resp, _ in broker.responses if resp.status != 200]
    assert len(every) == 3
    for resp, secrets in broker.responses:
        if resp.status != 200:
            check_error_hygiene(resp, secrets)
