"""Cached issuer keys across a reload, and flushing them by hand (security review C1; C15).

- The key cache is keyed by where the keys come from (issuer, discovery or `jwks_uri`,
  `jwks_hosts`), never by the provider's name, and a SIGHUP reload forgets the sources the new
  config no longer names: a provider moved to another `jwks_uri` or `issuer` refuses a token signed
  with a key of the old source (`unknown_key`, or `keys_unavailable` when the new source cannot be
  had), although the old key set was served with `Cache-Control: max-age=86400` and would still be
  fresh for 24 h.
- `POST /v1/keys/flush` (admin bearer, `provider=NAME`) forgets one provider's cached keys now,
  whatever the refresh cooldown: a key the issuer rotated out of its JWKS (compromised) verifies
  tokens until the flush, and is refused `unknown_key` after it. The flush is audited (`revoke`);
  without the admin bearer it is a 401, and a missing or unknown provider a 400.
- A reload that adds the first AWS role to a broker started without one mints (both cloud minters
  exist from the start).

The issuers here are a small loopback HTTP server in this module serving fixed documents (so
both the old and the new key set stay served), and tokens are signed by the test's own keys."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness import (
    AWS_CREDENTIALS_TYPE,
    AWS_ROLE_ARN,
    HTTP_TIMEOUT,
    PARTNER,
    LocalKey,
    aws_broker_env,
    cloud_role,
    github_claims,
    github_provider,
    good_claims,
    provider,
    role,
    to_toml,
)
from test_reload import RELOADED, hup_with

ADMIN_TOKEN = "admin-" + "k" * 40
MAX_AGE = 86400  # a day: the key set is fresh through every step of these tests


class IssuerDocs:
    """Loopback HTTP server for issuer documents: each path answers its JSON document with
    `Cache-Control: max-age=86400` (404 for a path it has none for); counts the GETs per path."""

    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.gets: Counter = Counter()
        self._lock = threading.Lock()
        docs = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                with docs._lock:
                    docs.gets[self.path] += 1
                    doc = docs.docs.get(self.path)
                if doc is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"max-age={MAX_AGE}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        self._t = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._t.start()

    def serve(self, path: str, doc: dict):
        with self._lock:
            self.docs[path] = doc

    def serve_issuer(self, name: str, *keys: LocalKey) -> str:
        """An issuer at `/<name>` with discovery and its JWKS at `/<name>/jwks`; its identifier."""
        issuer = f"{self.url}/{name}"
        self.serve(f"/{name}/.well-known/openid-configuration", {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"})
        self.serve(f"/{name}/jwks", {"keys": [k.public_jwk() for k in keys]})
        return issuer

    def count(self, path: str) -> int:
        with self._lock:
            return self.gets[path]

    def close(self):
        self._srv.shutdown()
        self._srv.server_close()


@pytest.fixture
def docs():
    d = IssuerDocs()
    yield d
    d.close()


def admin_config(tmp_path) -> dict:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    return {"admin": {"token_file": str(token_file)}}


def reload_with(broker, change) -> dict:
    """Reloads `broker` with its start config changed by `change` (asserted applied)."""
    cfg = copy.deepcopy(broker.config)
    change(cfg)
    assert hup_with(broker, to_toml(cfg), RELOADED) == []
    return cfg


# ------------------------------------------------------------------------------------------------
# C1: a reload that moves a provider to another key source


@pytest.mark.parametrize("new_source", ["serves other keys", "serves nothing"])
def test_a_reload_moving_jwks_uri_forgets_the_old_key_set(broker_factory, docs, new_source):
    old, new = LocalKey("old-key"), LocalKey("new-key")
    issuer = docs.url
    docs.serve("/old/jwks", old.jwks())
    if new_source == "serves other keys":
        docs.serve("/new/jwks", new.jwks())
    b = broker_factory([provider("p", issuer, jwks_uri=f"{issuer}/old/jwks")], [role("deploy", "p")])
    r = b.exchange(old.sign(good_claims(issuer)))
    assert r.status == 200, r
    assert docs.count("/old/jwks") == 1

    reload_with(b, lambda c: c["providers"][0].update(jwks_uri=f"{issuer}/new/jwks"))
    # the old key set is fresh for a day more, but it is not the provider's source any longer
    r = b.exchange(old.sign(good_claims(issuer)))
    if new_source == "serves other keys":
        assert (r.status, r.reason) == (400, "unknown_key"), r
        # the twin: the new source's key verifies
        ok = b.exchange(new.sign(good_claims(issuer)))
        assert ok.status == 200, ok
    else:
        assert (r.status, r.reason) == (503, "keys_unavailable"), r
    assert docs.count("/new/jwks") >= 1 and docs.count("/old/jwks") == 1
    print(f"jwks_uri moved, new source {new_source}: old key -> {r.status} {r.reason}")


def test_a_reload_changing_the_issuer_forgets_the_old_issuers_keys(broker_factory, docs):
    old, new = LocalKey("old-key"), LocalKey("new-key")
    one = docs.serve_issuer("one", old)
    two = docs.serve_issuer("two", new)
    b = broker_factory([provider("p", one)], [role("deploy", "p")])  # discovery
    r = b.exchange(old.sign(good_claims(one)))
    assert r.status == 200, r

    reload_with(b, lambda c: c["providers"][0].update(issuer=two))
    # a token claiming the new issuer, signed with the old issuer's (still cached) key
    r = b.exchange(old.sign(good_claims(two)))
    assert (r.status, r.reason) == (400, "unknown_key"), r
    assert docs.count("/two/.well-known/openid-configuration") == 1 and docs.count("/two/jwks") == 1
    # the twins: the new issuer's key verifies its token; the old issuer is not trusted any more
    ok = b.exchange(new.sign(good_claims(two)))
    assert ok.status == 200, ok
    assert b.exchange(old.sign(good_claims(one))).reason == "issuer_not_trusted"
    assert docs.count("/one/jwks") == 1


# ------------------------------------------------------------------------------------------------
# POST /v1/keys/flush


def flush(broker, data: dict | None, token: str | None = ADMIN_TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(broker.url + "/v1/keys/flush", data=data, headers=headers, timeout=HTTP_TIMEOUT)


def assert_refusal(r: requests.Response, status: int, error: str, reason: str):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) <= {"error", "error_description"} and body["error"] == error, body
    assert body.get("error_description", "").startswith(reason), body


def test_flush_forgets_cached_keys_so_a_key_rotated_out_is_refused(broker_factory, docs, tmp_path):
    current, compromised = LocalKey("current"), LocalKey("compromised")
    issuer = docs.url
    docs.serve("/rot/jwks", {"keys": [current.public_jwk(), compromised.public_jwk()]})
    docs.serve("/idle/jwks", current.jwks())
    b = broker_factory(
        [provider("p", issuer, jwks_uri=f"{issuer}/rot/jwks"), provider("idle", issuer, jwks_uri=f"{issuer}/idle/jwks")],
        [role("deploy", "p"), role("idle", "idle")],
        jwks={"refresh_cooldown": "1h"},  # no refetch on its own within the test
        extra_config=admin_config(tmp_path),
    )
    assert b.exchange(compromised.sign(good_claims(issuer))).status == 200
    # the issuer rotates the compromised key out; the cached set (fresh for a day) still has it
    docs.serve("/rot/jwks", current.jwks())
    r = b.exchange(compromised.sign(good_claims(issuer)))
    assert r.status == 200, r
    assert docs.count("/rot/jwks") == 1

    r = flush(b, {"provider": "p"})
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json() == {"flushed": "p", "cached": True}
    # the next token refetches, whatever the cooldown: the compromised key is gone
    r = b.exchange(compromised.sign(good_claims(issuer)))
    assert (r.status, r.reason) == (400, "unknown_key"), r
    assert docs.count("/rot/jwks") == 2
    ok = b.exchange(current.sign(good_claims(issuer)))
    assert ok.status == 200, ok
    # a provider with nothing cached: answered, `cached: false`, nothing fetched
    r = flush(b, {"provider": "idle"})
    assert r.status_code == 200 and r.json() == {"flushed": "idle", "cached": False}, r.text
    assert docs.count("/idle/jwks") == 0

    # refused flushes: no admin bearer, a wrong one, no provider, an unknown provider
    assert_refusal(flush(b, {"provider": "p"}, token=None), 401, "invalid_client", "unauthorized")
    assert_refusal(flush(b, {"provider": "p"}, token="admin-" + "x" * 40), 401, "invalid_client", "unauthorized")
    assert_refusal(flush(b, {}), 400, "invalid_request", "request_invalid")
    assert_refusal(flush(b, {"provider": "nope"}), 400, "invalid_request", "request_invalid")
    # ... and none of them flushed anything: the next token is verified from the cache
    ok = b.exchange(current.sign(good_claims(issuer)))
    assert ok.status == 200, ok
    assert docs.count("/rot/jwks") == 2

    # each flush answered 200 is audited, under the config in force; the refused ones are not
    recs = [rec for rec in b.audit() if rec["decision"] == "revoke"]
    assert [rec["detail"] for rec in recs] == ["flushed the cached keys of provider `p`",
                                               "flushed the cached keys of provider `idle`"], recs
    version = b.audit()[0]["policy_version"]
    assert all(rec["policy_version"] == version for rec in recs), recs
    print(f"fetches of the rotated JWKS: {docs.count('/rot/jwks')} (one before, one after the flush)")


# ------------------------------------------------------------------------------------------------
# C15: a reload that adds the first AWS role


def test_a_reload_adding_the_first_aws_role_mints(broker_factory, mock_issuer, moto):
    jwt_role = cloud_role("deploy", "github", {"kind": "jwt", "audience": PARTNER})
    b = broker_factory(providers=[github_provider("github", mock_issuer.issuer)], roles=[jwt_role],
                       env=aws_broker_env(moto.url))
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer))).status == 200

    aws_role = cloud_role("aws-deploy", "github", {"kind": "aws", "role_arn": AWS_ROLE_ARN})
    reload_with(b, lambda c: c["roles"].append(aws_role))
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role="aws-deploy")
    assert r.status == 200, r
    assert r.json["issued_token_type"] == AWS_CREDENTIALS_TYPE
    assert r.json["credentials"]["SessionToken"] == r.json["access_token"]
    [sent] = moto.recorded("AssumeRole")
    assert dict(sent["form"])["RoleArn"] == AWS_ROLE_ARN
    # the role from the start still mints its JWT beside it
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer))).status == 200
