"""The exchange client never wastes an assertion on its own mistake (issue 16 part Cl; newcomer
frictions 2 and 10).

- `--format github-env` without `$GITHUB_ENV` exits 2 before anything is sent: the same assertion
  then exchanges fine.
- `--format credential-process` asks for AWS credentials (`requested_token_type`), so a JWT role is
  refused `requested_type_mismatch` before the assertion is spent; `gcp-executable` asks for an
  access token, `json` and `env` ask for nothing.
- 429 and 503 answers that say the assertion was not spent are retried (`--retries N`, default 3,
  backoff from 0.5 s doubling, `Retry-After` honoured), each retry printed; a 4xx never is; a 503
  for a spent assertion is retried only with `--github-actions`, which fetches a fresh ID token.
  The 429s and 503s come from a small proxy in front of a real broker (`FlakyProxy`).
- Errors name the URL tried and the cause: connection refused, DNS; a `--broker` without a scheme
  suggests `http://`; a `--broker` ending in `/v1/token` is not doubled.

The client is run as the real binary against a real broker; each test asserts the broker's whole
audit log (`decisions`), as test_client.py does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

from harness import (
    AUDIENCE,
    AWS_CREDENTIALS_TYPE,
    HTTP_TIMEOUT,
    JWT_TYPE,
    free_port,
    github_claims,
    verify_broker_jwt,
)
from test_client import AWS_ROLE, JWT_ROLE, FakeGithubTokenEndpoint, decisions, start_broker

# what a job's environment may hold that would change the client's behaviour under test
_CLIENT_ENV = ("GITHUB_ENV", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
               "EPHEMERA_CACHE_DIR", "EPHEMERA_ID_TOKEN")
# `retrying in 0.5s: broker unavailable (HTTP 503, temporarily_unavailable): keys_unavailable: ...`
# (the spec's `retrying in Xs: <reason>`, with the answer as the client prints a failure)
RETRYING = re.compile(r"retrying in ([0-9.]+)s: (?:broker unavailable \(HTTP \d+, [a-z_]+\): )?([a-z_]+)\b")
# the reasons of a 429/503 that say the assertion was not spent (spec Cl)
UNSPENT_503 = ["keys_unavailable", "replay_store_unavailable", "revocations_unverified", "request_timeout",
               "too_many_connections"]


def client_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV}
    env["EPHEMERA_CACHE_DIR"] = str(tmp_path / "exchange-cache")
    env.update(extra)
    return env


def client(ephemera_bin, broker_url: str, role: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(ephemera_bin), "exchange", "--broker", broker_url, "--role", role, *args],
                          capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def fresh_token(mock, tmp_path: Path, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(mock.sign(github_claims(mock.issuer)))
    return path


def retries(stderr: str) -> list[tuple[float, str]]:
    return [(float(m.group(1)), m.group(2)) for m in RETRYING.finditer(stderr)]


def refusal(status: int, reason: str, text: str = "canned by the test proxy", retry_after: int | None = None):
    error = "temporarily_unavailable" if status in (429, 503) else "invalid_request"
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return status, headers, {"error": error, "error_description": f"{reason}: {text}"}


class FlakyProxy:
    """A broker front that answers the first POSTs with canned answers (status, headers, JSON body)
    and passes every later one through to the real broker; records every POST's path and form."""

    def __init__(self, target: str, canned: list):
        self.canned = list(canned)
        self.posts: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        proxy = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.posts.append({"path": self.path, "form": parse_qs(body.decode(), keep_blank_values=True)})
                    answer = proxy.canned.pop(0) if proxy.canned else None
                if answer is None:
                    r = requests.post(target + self.path, data=body, timeout=HTTP_TIMEOUT,
                                      headers={"Content-Type": self.headers.get("Content-Type", "")})
                    status, headers, raw = r.status_code, {"Cache-Control": "no-store"}, r.content
                else:
                    status, headers, doc = answer
                    headers = dict(headers, **{"Cache-Control": "no-store"})
                    raw = json.dumps(doc).encode()
                with proxy.lock:
                    proxy.statuses.append(status)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def subject_tokens(self) -> list[str]:
        return [p["form"]["subject_token"][0] for p in self.posts]

    def figures(self) -> str:
        return "answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(Counter(self.statuses).items()))

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def proxies():
    made: list[FlakyProxy] = []

    def make(target: str, canned: list = ()) -> FlakyProxy:
        p = FlakyProxy(target, list(canned))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# ---- formats that cannot work are refused before anything is spent ---------------------------


@pytest.mark.parametrize("github_env", ["unset", "empty"])
def test_github_env_format_without_github_env_sends_nothing(broker_factory, mock_issuer, ephemera_bin, tmp_path,
                                                            github_env):
    b = start_broker(broker_factory, mock_issuer)
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path, **({"GITHUB_ENV": ""} if github_env == "empty" else {}))
    out = client(ephemera_bin, b.url, JWT_ROLE, "--token-file", str(token), "--format", "github-env", env=env)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "GITHUB_ENV" in out.stderr and out.stdout == "", out
    assert decisions(b) == [], "nothing reached the broker"
    # ... so the same assertion is still good
    out = client(ephemera_bin, b.url, JWT_ROLE, "--token-file", str(token), "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    verify_broker_jwt(b, json.loads(out.stdout)["access_token"])
    # the twin: with $GITHUB_ENV, github-env works
    github_env_file = tmp_path / "github_env"
    github_env_file.write_text("")
    out = client(ephemera_bin, b.url, JWT_ROLE, "--token-file", str(fresh_token(mock_issuer, tmp_path, "t2")),
                 "--format", "github-env", env=dict(env, GITHUB_ENV=str(github_env_file)))
    assert out.returncode == 0, out.stderr
    exported = dict(line.split("=", 1) for line in github_env_file.read_text().splitlines())
    verify_broker_jwt(b, exported["EPHEMERA_TOKEN"])
    assert decisions(b) == [("allow", None), ("allow", None)]


def test_credential_process_on_a_jwt_role_is_refused_before_spending(broker_factory, mock_issuer, ephemera_bin,
                                                                      tmp_path, proxies):
    """Newcomer friction 2: the client spent the assertion (and kept the unusable answer) before
    finding the role hands out no AWS credentials. Now it asks for AWS credentials and the broker
    refuses the mismatch before marking the assertion used."""
    b = start_broker(broker_factory, mock_issuer)
    proxy = proxies(b.url)  # passes everything through: to read what the client asked for
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path)
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), "--format", "credential-process",
                 env=env)
    assert out.returncode == 1 and out.stdout == "", out
    assert "broker refused (HTTP 400, invalid_request): requested_type_mismatch" in out.stderr, out.stderr
    assert proxy.posts[0]["form"]["requested_token_type"] == [AWS_CREDENTIALS_TYPE]
    assert len(proxy.posts) == 1, "a refusal is not retried"
    cache = Path(env["EPHEMERA_CACHE_DIR"])
    assert not cache.exists() or list(cache.iterdir()) == [], "a refusal is not kept"
    # the same assertion then works with a format the role can give
    out = client(ephemera_bin, b.url, JWT_ROLE, "--token-file", str(token), "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    verify_broker_jwt(b, json.loads(out.stdout)["access_token"])
    assert decisions(b) == [("deny", "requested_type_mismatch"), ("allow", None)]


def test_each_format_asks_for_its_token_type(broker_factory, mock_issuer, moto, ephemera_bin, tmp_path, proxies):
    """The twin of the refusal above: credential-process on an AWS role (moto's STS) works; and what
    each format sends as `requested_token_type`."""
    b = start_broker(broker_factory, mock_issuer, moto)
    proxy = proxies(b.url)
    env = client_env(tmp_path)
    cases = [("json", JWT_ROLE, None), ("env", JWT_ROLE, None),
             ("gcp-executable", JWT_ROLE, [JWT_TYPE]),
             ("credential-process", AWS_ROLE, [AWS_CREDENTIALS_TYPE])]
    for i, (fmt, role_name, requested) in enumerate(cases):
        token = fresh_token(mock_issuer, tmp_path, f"token-{fmt}")
        out = client(ephemera_bin, proxy.url, role_name, "--token-file", str(token), "--format", fmt, env=env)
        assert out.returncode == 0, (fmt, out.stderr)
        assert proxy.posts[i]["form"].get("requested_token_type") == requested, (fmt, proxy.posts[i]["form"])
    creds = json.loads(out.stdout)
    assert creds["Version"] == 1 and creds["AccessKeyId"], creds
    assert decisions(b) == [("allow", None)] * 4


def test_the_broker_refuses_a_requested_type_the_role_cannot_give(broker_factory, mock_issuer, moto):
    """Broker side, without the client: the AWS credentials type asked of a JWT role is refused
    before the assertion is marked used (the same token then exchanges); asked of an AWS role it is
    granted."""
    b = start_broker(broker_factory, mock_issuer, moto)
    token = mock_issuer.sign(github_claims(mock_issuer.issuer))
    r = b.exchange(token, JWT_ROLE, extra={"requested_token_type": AWS_CREDENTIALS_TYPE})
    assert r.status == 400 and r.error == "invalid_request" and r.reason == "requested_type_mismatch", r
    r = b.exchange(token, JWT_ROLE)
    assert r.status == 200, r
    token = mock_issuer.sign(github_claims(mock_issuer.issuer))
    r = b.exchange(token, AWS_ROLE, extra={"requested_token_type": AWS_CREDENTIALS_TYPE})
    assert r.status == 200 and r.json["issued_token_type"] == AWS_CREDENTIALS_TYPE, r
    # an unknown type is still refused
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), JWT_ROLE,
                   extra={"requested_token_type": "urn:example:nope"})
    assert r.status == 400 and r.error == "invalid_request", r
    assert [d for d, _ in decisions(b)] == ["deny", "allow", "allow", "deny"], decisions(b)
    assert decisions(b)[0] == ("deny", "requested_type_mismatch")


# ---- retries --------------------------------------------------------------------------------------


def test_429_is_retried_honouring_retry_after(broker_factory, mock_issuer, ephemera_bin, tmp_path, proxies):
    b = start_broker(broker_factory, mock_issuer)
    proxy = proxies(b.url, [refusal(429, "rate_limited", retry_after=1)] * 2)
    token = fresh_token(mock_issuer, tmp_path)
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), env=client_env(tmp_path))
    print(proxy.figures())
    assert out.returncode == 0, out.stderr
    verify_broker_jwt(b, json.loads(out.stdout)["access_token"])
    waits = retries(out.stderr)
    assert [r for _, r in waits] == ["rate_limited"] * 2, out.stderr
    assert all(w >= 1 for w, _ in waits), ("Retry-After: 1 is honoured", waits)
    assert proxy.statuses == [429, 429, 200]
    assert set(proxy.subject_tokens()) == {token.read_text()}, "the same assertion each time"
    assert decisions(b) == [("allow", None)]


@pytest.mark.parametrize("reason", UNSPENT_503)
def test_503_for_an_unspent_assertion_is_retried_with_backoff(broker_factory, mock_issuer, ephemera_bin, tmp_path,
                                                              proxies, reason):
    b = start_broker(broker_factory, mock_issuer)
    proxy = proxies(b.url, [refusal(503, reason)] * 2)
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(fresh_token(mock_issuer, tmp_path)),
                 env=client_env(tmp_path))
    print(reason, proxy.figures())
    assert out.returncode == 0, out.stderr
    # no Retry-After: 0.5 s, then doubled
    assert retries(out.stderr) == [(0.5, reason), (1.0, reason)], out.stderr
    assert proxy.statuses == [503, 503, 200]
    assert decisions(b) == [("allow", None)]


def test_a_400_is_never_retried(broker_factory, mock_issuer, ephemera_bin, tmp_path, proxies):
    b = start_broker(broker_factory, mock_issuer)
    proxy = proxies(b.url, [refusal(400, "malformed_token")])
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path)
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 1, out.stderr
    assert "broker refused (HTTP 400, invalid_request): malformed_token" in out.stderr, out.stderr
    assert retries(out.stderr) == [] and "retrying" not in out.stderr
    assert proxy.statuses == [400], "one request: a 4xx is not retried"
    # the twin: the proxy now passes through, and the (unspent) assertion exchanges
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 0, out.stderr
    assert decisions(b) == [("allow", None)]


def test_retries_bounds_the_attempts(broker_factory, mock_issuer, ephemera_bin, tmp_path, proxies):
    """`--retries 0` fails on the first 429, `--retries 1` after one retry, the default (3) after
    three; each failure is "broker unavailable", not "refused", and the unspent assertion then
    exchanges."""
    b = start_broker(broker_factory, mock_issuer)
    env = client_env(tmp_path)
    for n, extra in ((0, ["--retries", "0"]), (1, ["--retries", "1"]), (3, [])):
        proxy = proxies(b.url, [refusal(429, "rate_limited", retry_after=1)] * (n + 1))
        token = fresh_token(mock_issuer, tmp_path, f"token-{n}")
        out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), *extra, env=env)
        print(f"--retries {n}:", proxy.figures())
        assert out.returncode == 1, (n, out.stderr)
        assert "broker unavailable" in out.stderr and "rate_limited" in out.stderr, out.stderr
        assert "broker refused" not in out.stderr, out.stderr
        assert len(retries(out.stderr)) == n, (n, out.stderr)
        assert proxy.statuses == [429] * (n + 1)
        out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(token), *extra, env=env)
        assert out.returncode == 0 and retries(out.stderr) == [], (n, out.stderr)
    assert decisions(b) == [("allow", None)] * 3


def test_a_spent_assertion_is_retried_only_with_a_fresh_github_token(broker_factory, mock_issuer, ephemera_bin,
                                                                     tmp_path, proxies):
    """A 503 `upstream_unavailable` comes after the assertion was marked used: a token file cannot
    be retried, a GitHub Actions job asks GitHub for a new ID token and retries."""
    b = start_broker(broker_factory, mock_issuer)
    env = client_env(tmp_path)
    proxy = proxies(b.url, [refusal(503, "upstream_unavailable")])
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(fresh_token(mock_issuer, tmp_path)), env=env)
    assert out.returncode == 1 and "broker unavailable" in out.stderr and "upstream_unavailable" in out.stderr, \
        out.stderr
    assert retries(out.stderr) == [] and proxy.statuses == [503]
    # the twin: with --github-actions, retried with a new ID token
    fake = FakeGithubTokenEndpoint(mock_issuer, github_claims(mock_issuer.issuer))
    try:
        proxy = proxies(b.url, [refusal(503, "upstream_unavailable")])
        gh = dict(env, ACTIONS_ID_TOKEN_REQUEST_URL=fake.url, ACTIONS_ID_TOKEN_REQUEST_TOKEN=fake.BEARER)
        out = client(ephemera_bin, proxy.url, JWT_ROLE, "--github-actions", "--audience", AUDIENCE, "--no-cache",
                     env=gh)
        print(proxy.figures())
        assert out.returncode == 0, out.stderr
        assert [r for _, r in retries(out.stderr)] == ["upstream_unavailable"], out.stderr
        assert proxy.statuses == [503, 200]
        assert len(fake.requests) == 2 and len(set(proxy.subject_tokens())) == 2, "a fresh ID token for the retry"
    finally:
        fake.close()
    assert decisions(b) == [("allow", None)]


# ---- errors name the URL and the cause ----------------------------------------------------------


def test_connection_refused_names_the_url(broker_factory, mock_issuer, ephemera_bin, tmp_path):
    b = start_broker(broker_factory, mock_issuer)
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path)
    port = free_port()
    out = client(ephemera_bin, f"http://127.0.0.1:{port}", JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 1, out.stderr
    assert f"http://127.0.0.1:{port}/v1/token" in out.stderr and "connection refused" in out.stderr, out.stderr
    # the twin: the broker that listens
    out = client(ephemera_bin, b.url, JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 0, out.stderr
    assert decisions(b) == [("allow", None)]


def test_an_unknown_host_says_dns(broker_factory, mock_issuer, ephemera_bin, tmp_path):
    b = start_broker(broker_factory, mock_issuer)
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path)
    out = client(ephemera_bin, "https://no-such-host.invalid", JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 1, out.stderr
    assert "https://no-such-host.invalid/v1/token" in out.stderr and "DNS" in out.stderr, out.stderr
    # the twin: a name that resolves
    port = b.url.rsplit(":", 1)[1]
    out = client(ephemera_bin, f"http://localhost:{port}", JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 0, out.stderr
    assert decisions(b) == [("allow", None)]


@pytest.mark.parametrize("host", [
    "127.0.0.1",
    # `localhost:PORT` parses as a URL whose scheme is `localhost`: the client still suggests http://
    "localhost",
])
def test_a_broker_without_a_scheme_suggests_http(broker_factory, mock_issuer, ephemera_bin, tmp_path, host):
    b = start_broker(broker_factory, mock_issuer)
    token = fresh_token(mock_issuer, tmp_path)
    env = client_env(tmp_path)
    port = b.url.rsplit(":", 1)[1]
    out = client(ephemera_bin, f"{host}:{port}", JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 2, out.stderr
    assert re.search(rf"did you mean `?http://{re.escape(host)}:{port}", out.stderr), out.stderr
    assert decisions(b) == []
    # the twin: the suggestion works
    out = client(ephemera_bin, f"http://{host}:{port}", JWT_ROLE, "--token-file", str(token), env=env)
    assert out.returncode == 0, out.stderr
    assert decisions(b) == [("allow", None)]


def test_a_broker_url_ending_in_the_token_route_is_not_doubled(broker_factory, mock_issuer, ephemera_bin, tmp_path,
                                                               proxies):
    b = start_broker(broker_factory, mock_issuer)
    proxy = proxies(b.url)
    env = client_env(tmp_path)
    out = client(ephemera_bin, proxy.url + "/v1/token", JWT_ROLE, "--token-file",
                 str(fresh_token(mock_issuer, tmp_path)), env=env)
    assert out.returncode == 0, out.stderr
    verify_broker_jwt(b, json.loads(out.stdout)["access_token"])
    # the twin: the base URL reaches the same route
    out = client(ephemera_bin, proxy.url, JWT_ROLE, "--token-file", str(fresh_token(mock_issuer, tmp_path, "t2")),
                 env=env)
    assert out.returncode == 0, out.stderr
    assert [p["path"] for p in proxy.posts] == ["/v1/token", "/v1/token"]
    assert decisions(b) == [("allow", None)] * 2
