"""Discovery and JWKS (ATTACKS.md C 23–30) and keys smuggled in tokens (A 4, 5): the broker
against a scriptable mock issuer, with the mock's per-path counters and a canary listener that
must never be contacted."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import datetime
import os
import uuid

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from harness import (
    LocalKey,
    b64url,
    good_claims,
    now,
    provider,
    role,
    wait_until,
)

DISCO = "/.well-known/openid-configuration"
JWKS = "/jwks"

# Short cache timings: a 1 s TTL and cooldown, so a provider that was refused recovers as soon as
# the broker's whole-second clock has moved on. No test here sleeps for them: where a test needs a
# refetch it polls (`recovers`), and where it asserts that no refetch happens it uses a cooldown of
# an hour, so the verdict cannot depend on how fast the machine is. The exact clock arithmetic
# (cooldown, TTL, stale window, max-age bounds) is `providers/tests/cache.rs`, with an injected clock.
FAST = {"default_ttl": "1s", "min_ttl": "1s", "refresh_cooldown": "1s", "stale_window": "3s",
        "fetch_timeout": "2s"}


def recovers(broker, token: str, role: str = "deploy", timeout: float = 20):
    """Polls one exchange of `token` until it is answered 200 (a refused presentation does not
    spend the token) and returns that answer: the provider's next fetch, once its cooldown has
    ended, succeeded."""
    return wait_until(lambda: (lambda r: r if r.status == 200 else None)(broker.exchange(token, role)),
                      timeout=timeout, interval=0.2, what="the provider to recover")


def assert_reject(resp, reason, error="invalid_request", status=400):
    assert resp.status == status, resp
    assert resp.error == error, resp
    assert resp.reason == reason, resp


def assert_unavailable(resp, detail=None):
    assert resp.status == 503, resp
    assert resp.error == "temporarily_unavailable", resp
    assert resp.reason == "keys_unavailable", resp
    assert resp.headers.get("Retry-After"), "503 without Retry-After"
    if detail:
        assert detail in resp.description, resp


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pinned_setup(tmp_path, key: LocalKey, name="pinned", issuer="http://127.0.0.1:9/pinned"):
    """A provider with its keys pinned from a file (never fetched) and a role for it."""
    path = key.write_jwks(tmp_path / f"{name}-jwks.json")
    return (provider(name, issuer, jwks_file=str(path)),
            role(f"{name}-role", name, conditions={"sub": "pinned-workload"}),
            issuer)


def pinned_token(key: LocalKey, issuer: str) -> str:
    return key.sign(good_claims(issuer, sub="pinned-workload"))


# ---- C 23: issuers not on the allowlist ------------------------------------------------------


def test_issuer_not_on_allowlist_causes_no_connection(broker, mock_issuer, canary):
    assert broker.exchange(mock_issuer.token()).status == 200
    before = mock_issuer.counts()
    for iss in ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:6379",
                "https://attacker.test", "file:///etc/passwd", canary.url,
                mock_issuer.issuer + "/", mock_issuer.issuer.replace("http:", "https:")]:
        r = broker.exchange(mock_issuer.sign(good_claims(iss)))
        assert_reject(r, "issuer_not_trusted")
    assert canary.connections == 0
    assert mock_issuer.counts() == before
    assert broker.exchange(mock_issuer.token()).status == 200


# ---- B 22: two issuers publishing the same kid ------------------------------------------------


def test_same_kid_at_two_issuers_is_not_confused(broker_factory, mock_factory):
    a, b_ = mock_factory(), mock_factory()  # both publish their own, different, `k1`
    br = broker_factory([provider("a", a.issuer), provider("b", b_.issuer)],
                        [role("deploy", "a"), role("deploy-b", "b")])
    assert br.exchange(a.token()).status == 200
    assert br.exchange(b_.token(), role="deploy-b").status == 200
    # claims iss=B, signed with A's k1 (the kid B also publishes)
    forged = a.sign(good_claims(b_.issuer))
    assert_reject(br.exchange(forged, role="deploy-b"), "signature_invalid")
    # and presented to A's role it is another issuer's token
    assert_reject(br.exchange(forged, role="deploy"), "issuer_not_trusted")


# ---- C 29: rotation ----------------------------------------------------------------------------


def test_unknown_kid_inside_the_cooldown_causes_no_fetch(broker_factory, mock_issuer):
    """The cooldown is wired through: with `refresh_cooldown = "1h"` a kid the issuer has just
    published is not fetched for, however often it is presented (a broker that refetched on every
    unknown kid would fetch, find K2 and answer 200)."""
    b = broker_factory(issuer=mock_issuer, jwks={"refresh_cooldown": "1h"})
    assert b.exchange(mock_issuer.token()).status == 200
    assert mock_issuer.fetches() == (1, 1)
    mock_issuer.add_key("k2", "RSA")  # published at once
    for _ in range(3):
        assert_reject(b.exchange(mock_issuer.token(key="k2")), "unknown_key")
    assert mock_issuer.fetches() == (1, 1)
    assert b.exchange(mock_issuer.token(key="k1")).status == 200


def test_unknown_kid_triggers_exactly_one_refresh(broker_factory, mock_issuer):
    """With a 1 s cooldown, presentations of an unknown kid are answered unknown_key without a
    fetch until the cooldown ends; the first one after it refreshes once. Counted exactly: each
    poll below stops at the first presentation that refreshed."""
    b = broker_factory(issuer=mock_issuer, jwks={"refresh_cooldown": "1s"})
    assert b.exchange(mock_issuer.token()).status == 200
    assert mock_issuer.fetches() == (1, 1)

    # K2 exists at the issuer but is not published yet: a refresh, then still unknown_key
    mock_issuer.add_key("k2", "RSA", publish=False)

    def refreshed_without_k2():
        assert_reject(b.exchange(mock_issuer.token(key="k2")), "unknown_key")
        return mock_issuer.fetches()[1] >= 2

    wait_until(refreshed_without_k2, timeout=20, interval=0.2, what="a refresh for the unknown kid")
    assert mock_issuer.fetches() == (2, 2)

    # the issuer publishes K2: the first K2 token after the cooldown refreshes once and succeeds
    mock_issuer.publish("k2")
    recovers(b, mock_issuer.token(key="k2"))
    assert mock_issuer.fetches() == (3, 3)
    # both keys are cached now (TTL 300 s by default): no more fetches
    for key in ("k2", "k1", "k2"):
        assert b.exchange(mock_issuer.token(key=key)).status == 200
    assert mock_issuer.fetches() == (3, 3)


def test_rotation_k1_tokens_refused_after_ttl(broker_factory, mock_issuer):
    """ATTACKS 29: K2 added and used (one refresh); K1 removed: K1 tokens are refused once the
    cache TTL (1 s) has passed and a cooldown allows the refetch (how soon, in seconds, is
    `providers/tests/cache.rs`; here `wait_until` bounds it)."""
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    assert b.exchange(mock_issuer.token()).status == 200
    # a stock of K1-signed tokens made while the issuer still holds K1
    stock = [mock_issuer.token(key="k1", exp=now() + 600) for _ in range(100)]
    mock_issuer.rotate(add="k2")
    before = mock_issuer.fetches()
    recovers(b, mock_issuer.token(key="k2"))
    assert mock_issuer.fetches()[1] == before[1] + 1

    mock_issuer.rotate(remove="k1")

    def k1_refused():
        r = b.exchange(stock.pop())
        return r if r.status != 200 else None

    r = wait_until(k1_refused, timeout=20, interval=0.25, what="K1 tokens refused after rotation")
    assert_reject(r, "unknown_key")
    # stays refused, and K2 keeps working
    assert_reject(b.exchange(stock.pop()), "unknown_key")
    assert b.exchange(mock_issuer.token(key="k2")).status == 200


# ---- C 28: unknown-kid flood -------------------------------------------------------------------


def test_unknown_kid_flood_is_rate_limited(broker_factory, mock_issuer):
    # the per-client rate limit (default burst 200) is raised so that it does not answer first
    # an hour of cooldown: however long the flood takes on a loaded machine, it is inside it
    b = broker_factory(issuer=mock_issuer, jwks={"refresh_cooldown": "1h"},
                       server={"rate_limit_burst": 10_000, "rate_limit_per_second": 10_000})
    attacker = LocalKey("attacker")
    claims = good_claims(mock_issuer.issuer)
    flood = [attacker.sign(dict(claims, jti=uuid.uuid4().hex), kid=f"kid-{uuid.uuid4().hex}")
             for _ in range(200)]
    legit = [mock_issuer.token() for _ in range(5)]

    def send(tok):
        with requests.Session() as s:
            return b.exchange(tok, session=s)

    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        flood_f = [pool.submit(send, t) for t in flood[:100]]
        legit_f = [pool.submit(send, t) for t in legit]
        flood_f += [pool.submit(send, t) for t in flood[100:]]
        flood_r = [f.result() for f in flood_f]
        legit_r = [f.result() for f in legit_f]
    assert all(r.status == 400 and r.reason == "unknown_key" for r in flood_r), \
        {(r.status, r.reason) for r in flood_r}
    assert all(r.status == 200 for r in legit_r), legit_r
    # a cold cache: the first request fetches; every other one is inside the cooldown
    assert mock_issuer.fetches() == (1, 1), mock_issuer.counts()
    assert b.alive()


# ---- C 30: outage ------------------------------------------------------------------------------


def test_outage_stale_keys_then_503_then_recovery(broker_factory, mock_issuer):
    """Two brokers on one issuer, the same 1 s TTL, differing only in the stale window: an hour
    (keys keep serving through the outage, whatever the load) and none (fail closed as soon as
    the TTL has passed and the refresh failed). The window arithmetic itself is
    `providers/tests/cache.rs` (`outage_serves_stale_keys_then_fails_closed_then_recovers`)."""
    ttl = {"default_ttl": "1s", "min_ttl": "1s", "refresh_cooldown": "1s", "fetch_timeout": "2s"}
    stale = broker_factory(issuer=mock_issuer, jwks=dict(ttl, stale_window="1h"))
    closed = broker_factory(issuer=mock_issuer, jwks=dict(ttl, stale_window="0s"))
    stock = [mock_issuer.token(exp=now() + 600) for _ in range(150)]
    attacker = LocalKey("not-published")
    assert stale.exchange(stock.pop()).status == 200
    assert closed.exchange(stock.pop()).status == 200
    mock_issuer.kill()

    def unavailable():
        r = closed.exchange(stock.pop())
        return r if r.status == 503 else None

    # past the TTL the refresh fails: without a stale window the provider fails closed
    r = wait_until(unavailable, timeout=20, interval=0.25, what="503 once the TTL has passed")
    assert_unavailable(r, "keys older than the stale window")
    assert "connection failed" in r.description, r
    # the twin, later still (so its TTL has passed too): the old keys keep serving
    r = stale.exchange(stock.pop())
    assert r.status == 200, f"stale keys should still serve during the outage: {r}"
    wait_until(lambda: "issuer key refresh failed" in stale.stderr(), timeout=10,
               what="a logged refresh failure")
    # an unknown kid during the outage is 503 keys_unavailable, retryable: the broker could not
    # ask the issuer whether the key exists (fault review, test 4a: it was a permanent-looking
    # unknown_key); the twin after the issuer is back: unknown_key
    r = stale.exchange(attacker.sign(good_claims(mock_issuer.issuer)))
    assert_unavailable(r, "the issuer could not be asked")

    mock_issuer.revive()
    recovers(closed, stock.pop())
    assert stale.exchange(stock.pop()).status == 200
    wait_until(lambda: (lambda r: r if r.reason == "unknown_key" else None)(
        stale.exchange(attacker.sign(good_claims(mock_issuer.issuer)))), timeout=10, interval=0.5,
        what="unknown_key once the issuer answers again")
    assert closed.proc.poll() is None and stale.proc.poll() is None


def test_cold_start_with_issuer_down_503_other_provider_works(broker_factory, mock_issuer,
                                                             tmp_path, canary):
    stock = [mock_issuer.token(exp=now() + 600) for _ in range(100)]
    mock_issuer.kill()
    key = LocalKey("pinned-1", "EC")
    # the pinned provider's issuer names the canary: a fetch for it would be seen there
    p2, r2, iss2 = pinned_setup(tmp_path, key, issuer=canary.url + "/pinned")
    b = broker_factory([provider("mock", mock_issuer.issuer), p2], [role("deploy", "mock"), r2],
                       jwks=FAST)
    r = b.exchange(stock.pop())
    assert_unavailable(r, "connection failed")
    # the pinned provider goes on, without fetching anything
    r = b.exchange(pinned_token(key, iss2), role="pinned-role")
    assert r.status == 200, r
    assert canary.connections == 0

    mock_issuer.revive()
    recovers(b, stock.pop())
    assert canary.connections == 0


# ---- C 24: discovery lies ----------------------------------------------------------------------


@pytest.mark.parametrize("lie", ["trailing_slash", "https", "other_host"])
def test_discovery_issuer_mismatch(broker_factory, mock_factory, lie):
    a, b_iss = mock_factory(), mock_factory()
    claimed = {
        "trailing_slash": a.issuer + "/",
        "https": a.issuer.replace("http:", "https:"),
        "other_host": b_iss.issuer,
    }[lie]
    a.set_mode(discovery_issuer=claimed)
    br = broker_factory([provider("a", a.issuer), provider("b", b_iss.issuer)],
                        [role("deploy", "a"), role("deploy-b", "b")], jwks=FAST)
    r = br.exchange(a.token())
    assert_unavailable(r, "discovery_issuer_mismatch")
    assert a.count(JWKS) == 0, "the JWKS of a lying issuer must not be fetched"
    # the other issuer is not affected
    assert br.exchange(b_iss.token(), role="deploy-b").status == 200
    # twin: the issuer stops lying; after the cooldown the provider recovers
    a.reset_modes()
    recovers(br, a.token())


@pytest.mark.parametrize("where", ["localhost_other_port", "same_ip_other_port", "metadata_ip",
                                   "https_other_host", "userinfo"])
def test_jwks_uri_off_the_issuer_host(broker_factory, mock_issuer, canary, where):
    uri = {
        "localhost_other_port": f"http://localhost:{canary.port}/jwks",
        "same_ip_other_port": f"http://127.0.0.1:{canary.port}/jwks",
        "metadata_ip": "http://169.254.169.254/latest/meta-data/jwks",
        "https_other_host": "https://attacker.test/jwks",
        "userinfo": mock_issuer.issuer.replace("http://", "http://user:pw@") + "/jwks",
    }[where]
    mock_issuer.set_mode(jwks_uri=uri)
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    r = b.exchange(mock_issuer.token())
    assert_unavailable(r, "jwks_uri_rejected")
    assert canary.connections == 0
    assert mock_issuer.count(JWKS) == 0
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token())


def test_jwks_hosts_allows_a_listed_host(broker_factory, mock_issuer):
    """Twin of the above: a jwks_uri on another host is fine when the provider lists that host in
    jwks_hosts (here `localhost`, which resolves to loopback, so private addresses are allowed)."""
    mock_issuer.set_mode(jwks_uri=f"http://localhost:{mock_issuer.port}/jwks")
    p = provider("mock", mock_issuer.issuer, jwks_hosts=["localhost"])
    b = broker_factory([p], [role("deploy", "mock")], jwks=dict(FAST, allow_private_addresses=True))
    assert b.exchange(mock_issuer.token()).status == 200
    assert mock_issuer.fetches() == (1, 1)
    # without the listing, the same discovery document is refused
    b2 = broker_factory([provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                        jwks=dict(FAST, allow_private_addresses=True))
    assert_unavailable(b2.exchange(mock_issuer.token()), "jwks_uri_rejected")


def test_max_document_size(broker_factory, mock_issuer):
    b = broker_factory(issuer=mock_issuer, jwks=dict(FAST, max_document_size=256))
    assert_unavailable(b.exchange(mock_issuer.token()), "body exceeds 256 bytes")
    b2 = broker_factory(issuer=mock_issuer, jwks=dict(FAST, max_document_size=8192))
    assert b2.exchange(mock_issuer.token()).status == 200


def test_jwks_uri_over_http_for_an_https_issuer_is_refused(broker_factory, mock_issuer, canary,
                                                          tmp_path):
    """A non-loopback http jwks_uri is refused at config load for jwks_uri, and a discovery
    pointing at http on a non-loopback host is refused at fetch time (metadata_ip case above)."""
    b = broker_factory(issuer=mock_issuer)
    cfg = dict(b.config)
    cfg["providers"] = [provider("x", "https://issuer.example", jwks_uri="http://issuer.example/jwks")]
    cfg["roles"] = [role("deploy", "x")]
    from harness import run_cli, to_toml
    path = tmp_path / "http-jwks.toml"
    path.write_text(to_toml(cfg))
    res = run_cli(b.binary, ["check", "--config", str(path)])
    assert res.returncode == 2, res
    assert "jwks_uri" in res.stderr
    # twin: the same config with an https jwks_uri passes
    cfg["providers"] = [provider("x", "https://issuer.example", jwks_uri="https://issuer.example/jwks")]
    path.write_text(to_toml(cfg))
    res = run_cli(b.binary, ["check", "--config", str(path)])
    assert res.returncode == 0, res
    assert canary.connections == 0


# ---- C 25: redirects and DNS rebinding ----------------------------------------------------------


@pytest.mark.parametrize("allow_private", [False, True])
def test_issuer_hostname_resolving_to_loopback(broker_factory, mock_issuer, allow_private):
    """An issuer named by a hostname that resolves to 127.0.0.1 (`localhost`, the rebinding
    shape) is refused at connect time unless jwks.allow_private_addresses; IP literals are taken
    as configured (every other test here uses one)."""
    iss = f"http://localhost:{mock_issuer.port}"
    mock_issuer.set_mode(discovery_issuer=iss, jwks_uri=iss + "/jwks")
    jwks = dict(FAST, allow_private_addresses=allow_private)
    b = broker_factory([provider("mock", iss)], [role("deploy", "mock")], jwks=jwks)
    r = b.exchange(mock_issuer.sign(good_claims(iss)))
    if allow_private:
        assert r.status == 200, r
        assert mock_issuer.fetches() == (1, 1)
    else:
        assert_unavailable(r)
        assert mock_issuer.fetches() == (0, 0), "no connection may be made to a private address"



@pytest.mark.parametrize("path", [DISCO, JWKS])
def test_redirect_is_never_followed(broker_factory, mock_issuer, canary, path):
    mock_issuer.set_mode(redirect={path: canary.url + "/latest/meta-data/"})
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    r = b.exchange(mock_issuer.token())
    assert_unavailable(r)
    assert "redirect" in r.description
    assert canary.connections == 0
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token())
    assert canary.connections == 0


def test_proxy_environment_is_ignored(broker_factory, mock_issuer, canary):
    """README (Fetching): no proxy. The broker runs with every proxy variable naming the canary
    (and an empty NO_PROXY, so nothing is exempted): its fetches still go straight to the issuer.
    A client that honoured the environment would send them to the canary."""
    assert "REQUEST_METHOD" not in os.environ  # a CGI environment makes clients ignore proxies
    proxy = {name: canary.url for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY",
                                           "https_proxy", "http_proxy", "all_proxy")}
    b = broker_factory(issuer=mock_issuer, env=dict(proxy, NO_PROXY="", no_proxy=""))
    assert b.exchange(mock_issuer.token()).status == 200
    assert mock_issuer.fetches() == (1, 1)
    assert canary.connections == 0


# ---- C 26: oversized and slow responses --------------------------------------------------------


@pytest.mark.parametrize("path", [JWKS, DISCO])
@pytest.mark.parametrize("content_length", [True, False])
def test_ten_mib_document(broker_factory, mock_issuer, path, content_length):
    mock_issuer.set_mode(big={path: {"bytes": 10 * 1024 * 1024, "content_length": content_length}})
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    rss_before = rss_kib(b.proc.pid)
    r = b.exchange(mock_issuer.token())
    assert_unavailable(r, f"body exceeds {100 * 1024} bytes")
    assert b.alive()
    # the body was not buffered: RSS grew far less than 10 MiB
    assert rss_kib(b.proc.pid) - rss_before < 8 * 1024
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token())


@pytest.mark.parametrize("path", [DISCO, JWKS])
def test_trickling_issuer_times_out(broker_factory, mock_issuer, path):
    mock_issuer.set_mode(trickle={path: 1.0})
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    # fetch_timeout (2 s) ends the fetch long before the trickle would (one byte a second)
    assert_unavailable(b.exchange(mock_issuer.token()), "timed out")
    assert b.alive()
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token())


@pytest.mark.parametrize("path", [DISCO, JWKS])
def test_trickling_issuer_does_not_hold_up_other_providers(broker_factory, mock_issuer, tmp_path,
                                                          path):
    """While one provider's fetch is stuck on a trickling issuer, another provider's exchange is
    answered. The stuck fetch has a 20 s fetch_timeout, so it is still pending when the other
    answer arrives however loaded the machine is; killing the issuer then ends it."""
    mock_issuer.set_mode(trickle={path: 1.0})
    key = LocalKey("pinned-1", "EC")
    p2, r2, iss2 = pinned_setup(tmp_path, key)
    b = broker_factory([provider("mock", mock_issuer.issuer), p2], [role("deploy", "mock"), r2],
                       jwks=dict(FAST, fetch_timeout="20s"))
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(b.exchange, mock_issuer.token(), session=requests.Session())
        wait_until(lambda: mock_issuer.count(path) >= 1 or slow.done(), timeout=20,
                   what="the broker's fetch to reach the trickling issuer")
        other = b.exchange(pinned_token(key, iss2), role="pinned-role")
        assert other.status == 200, other
        assert not slow.done(), f"the stuck exchange ended first: {slow.result()}"
        mock_issuer.kill()
        r = slow.result()
    assert_unavailable(r)
    assert b.alive()


@pytest.mark.parametrize("status", [500, 404, 503])
def test_issuer_error_status_is_503_for_that_provider(broker_factory, mock_issuer, status):
    mock_issuer.set_mode(status={JWKS: status})
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    r = b.exchange(mock_issuer.token())
    assert_unavailable(r, str(status))
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token())


def test_jwks_with_too_many_keys_is_refused(broker_factory, mock_issuer):
    junk = [{"kty": "oct", "kid": f"j{i}", "k": b64url(os.urandom(16))} for i in range(101)]
    mock_issuer.set_mode(extra_keys=junk)
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    # k1 and the 101 junk keys
    assert_unavailable(b.exchange(mock_issuer.token()), "jwks holds 102 keys, over the limit of 100")
    mock_issuer.set_mode(extra_keys=junk[:50])
    recovers(b, mock_issuer.token())


# ---- A 4: keys smuggled in through the header --------------------------------------------------


def _self_signed_x5c() -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    t = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(t - datetime.timedelta(days=1))
            .not_valid_after(t + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def test_jku_x5u_jwk_x5c_headers_are_ignored(broker, mock_issuer, canary):
    mock_issuer.add_key("evil", "RSA", publish=False)
    evil_jwk = mock_issuer.jwk("evil")
    smuggle = {"jku": canary.url + "/jwks.json", "x5u": canary.url + "/cert.pem"}
    claims = lambda: good_claims(mock_issuer.issuer)  # noqa: E731

    # attacker-signed, attacker kid: unknown_key
    r = broker.exchange(mock_issuer.sign(claims(), key="evil", header=smuggle))
    assert_reject(r, "unknown_key")
    # attacker-signed under the real kid: signature_invalid
    r = broker.exchange(mock_issuer.sign(claims(), key="evil", header=dict(smuggle, kid="k1")))
    assert_reject(r, "signature_invalid")
    # embedded jwk of the attacker key
    r = broker.exchange(mock_issuer.sign(claims(), key="evil", header={"jwk": evil_jwk}))
    assert_reject(r, "unknown_key")
    r = broker.exchange(mock_issuer.sign(claims(), key="evil", header={"jwk": evil_jwk, "kid": "k1"}))
    assert_reject(r, "signature_invalid")
    # without a kid, the issuer's only key (k1) is the one tried
    r = broker.exchange(mock_issuer.sign(claims(), key="evil", header={"jwk": evil_jwk, "kid": None}))
    assert_reject(r, "signature_invalid")
    # an attacker-made x5c chain
    r = broker.exchange(mock_issuer.sign(claims(), key="evil",
                                         header={"x5c": _self_signed_x5c()}))
    assert_reject(r, "unknown_key")
    assert canary.connections == 0

    # twin: the same header members on a token signed by the real key are ignored
    r = broker.exchange(mock_issuer.sign(claims(), key="k1", header=smuggle))
    assert r.status == 200, r
    r = broker.exchange(mock_issuer.sign(claims(), key="k1", embed_jwk=True))
    assert r.status == 200, r
    r = broker.exchange(mock_issuer.sign(claims(), key="k1",
                                         header={"x5c": _self_signed_x5c()}))
    assert r.status == 200, r
    assert canary.connections == 0


# ---- A 5: kid abuse ----------------------------------------------------------------------------


def test_kid_abuse(broker, mock_issuer, canary):
    """README: a kid is 1-256 printable ASCII characters. Within that, a kid is only ever a name to
    look up in the issuer's JWKS (unknown_key); outside it, it is refused before any lookup."""
    assert broker.exchange(mock_issuer.token()).status == 200
    long_printable = "L" * 200
    cases = {
        "../../../../dev/null": "unknown_key",
        "'OR'1'='1'--": "unknown_key",
        "http://169.254.169.254/": "unknown_key",
        canary.url + "/": "unknown_key",
        long_printable: "unknown_key",
        "K" * 256: "unknown_key",
        "K" * 257: "kid_invalid",
        "k" * 4096: "kid_invalid",
        "a\x00b": "kid_invalid",
        "a\r\nb": "kid_invalid",
        "k1\u0430": "kid_invalid",  # a Cyrillic а after k1
        # the broker takes "printable" as visible (0x21-0x7E, `is_ascii_graphic`): no space
        "' OR 1=1--": "kid_invalid",
    }
    for kid, reason in cases.items():
        r = broker.exchange(mock_issuer.sign(good_claims(mock_issuer.issuer), header={"kid": kid}))
        assert_reject(r, reason)
        if kid == long_printable:
            rec = broker.audit_record(r.decision_id)
            assert long_printable not in rec["detail"], "audit keeps the kid truncated"
        for rec in broker.audit():
            assert "\n" not in rec.get("detail", "") and "\x00" not in rec.get("detail", "")
    # a header kid that is not valid UTF-8 once decoded (lone surrogate escape): the header is
    # not JSON the strict parser takes
    r = broker.exchange(mock_issuer.sign(
        good_claims(mock_issuer.issuer),
        header_raw='{"alg":"RS256","typ":"JWT","kid":"\\ud800"}'))
    assert_reject(r, "malformed_token")
    assert canary.connections == 0
    assert broker.exchange(mock_issuer.token()).status == 200


def test_typ_jwt_in_any_case_is_accepted(broker, mock_issuer):
    """README: `typ`, when present, is `JWT` or `application/jwt`, in any case (exactly: another
    type that merely contains it is refused)."""
    for typ in ["JWT", "jwt", "Jwt", "application/jwt", "application/JWT", "APPLICATION/JWT"]:
        assert broker.exchange(mock_issuer.token(header={"typ": typ})).status == 200, typ
        assert_reject(broker.exchange(mock_issuer.token(header={"typ": "at+" + typ})), "typ_not_allowed")
    # and without a typ at all
    assert broker.exchange(mock_issuer.token(header={"typ": None})).status == 200


# ---- C 27: JWKS hygiene ------------------------------------------------------------------------


def test_token_without_kid_when_two_rsa_keys(broker_factory, mock_factory):
    two, one = mock_factory(), mock_factory()
    two.add_key("k2", "RSA")
    b = broker_factory([provider("two", two.issuer), provider("one", one.issuer)],
                       [role("deploy", "two"), role("single", "one")])
    r = b.exchange(two.sign(good_claims(two.issuer), header={"kid": None}))
    assert_reject(r, "unknown_key")
    assert b.exchange(two.token()).status == 200
    # twin: with exactly one key, a token without kid is accepted
    assert b.exchange(one.sign(good_claims(one.issuer), header={"kid": None}), role="single").status == 200


@pytest.mark.parametrize("variant", ["use_enc", "private_members", "duplicate_kid", "key_ops",
                                     "alg_mismatch"])
def test_ignored_jwks_entries(broker_factory, mock_issuer, variant):
    mock_issuer.add_key("k2", "RSA")
    if variant == "use_enc":
        mock_issuer.set_mode(jwk_overrides={"k2": {"use": "enc"}})
    elif variant == "private_members":
        mock_issuer.set_mode(jwk_overrides={"k2": {"d": "$private"}})
    elif variant == "duplicate_kid":
        mock_issuer.set_mode(extra_keys=[mock_issuer.jwk("k2")])
    elif variant == "key_ops":
        mock_issuer.set_mode(jwk_overrides={"k2": {"key_ops": ["encrypt"]}})
    elif variant == "alg_mismatch":
        mock_issuer.set_mode(jwk_overrides={"k2": {"alg": "ES256"}})
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    assert_reject(b.exchange(mock_issuer.token(key="k2")), "unknown_key")
    # the document as a whole was not refused: K1 still works
    assert b.exchange(mock_issuer.token(key="k1")).status == 200
    # twin: the same key published cleanly is accepted
    mock_issuer.reset_modes()
    recovers(b, mock_issuer.token(key="k2"))


def test_symmetric_jwks_entry_is_never_an_hmac_key(broker_factory, mock_issuer):
    import hashlib
    import hmac
    secret = os.urandom(32)
    mock_issuer.set_mode(extra_keys=[{"kty": "oct", "kid": "sym", "k": b64url(secret), "alg": "HS256"}])
    b = broker_factory(issuer=mock_issuer, jwks=FAST)
    assert b.exchange(mock_issuer.token()).status == 200
    claims = good_claims(mock_issuer.issuer)

    def hs(header):
        import json
        si = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return si + "." + b64url(hmac.new(secret, si.encode(), hashlib.sha256).digest())

    assert_reject(b.exchange(hs({"alg": "HS256", "kid": "sym", "typ": "JWT"})), "alg_not_allowed")
    assert_reject(b.exchange(hs({"alg": "RS256", "kid": "sym", "typ": "JWT"})), "unknown_key")
    assert b.exchange(mock_issuer.token()).status == 200
