"""Use-limited grants (issue 15, spec A): a jwt role's `max_uses` puts the claim `max_uses` in its
broker JWTs, and partners spend them at `POST /v1/introspect` with `consume=true`, each use taken
atomically. Plain introspection reports `uses_remaining` and never takes one; a partner credential
([[admin.introspectors]]) consumes tokens of its audiences only; a token without `max_uses` is
answered as usual; a revoked or expired token loses no use; `max_uses` on a non-jwt role is a
config error. Atomicity: 50 concurrent consumers on two replicas sharing one redis-server, and on
one replica with the file (default) and memory backends; use counts survive a restart on the file
backend."""

from __future__ import annotations

import threading
from collections import Counter

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

import test_replicas
from crash_util import Served
from harness import (
    HTTP_TIMEOUT,
    broker_config,
    cloud_role,
    github_provider,
    now,
    provider,
    role,
    run_cli,
    to_toml,
    verify_broker_jwt,
)

ADMIN_TOKEN = test_replicas.ADMIN_TOKEN  # the replicas' admin credential too
PARTNER_TOKEN = "partner-" + "q" * 40  # the incident API's own introspector credential
INCIDENT_API = "incident-api"
OTHER_API = "other-api"

# the redis-server fixture and the two-replica factory of test_replicas.py (fixtures found by
# their names in this module)
redis_server = test_replicas.redis_server
replicas = test_replicas.replicas


def jwt_role(name: str, audience: str, max_uses: int | None = None) -> dict:
    r = role(name, "mock", audience=audience)
    if max_uses is not None:
        r["max_uses"] = max_uses
    return r


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def introspect(url: str, token: str, auth: str = ADMIN_TOKEN, consume: str | None = None,
               session: requests.Session | None = None) -> requests.Response:
    data = {"token": token}
    if consume is not None:
        data["consume"] = consume
    return (session or requests).post(url + "/v1/introspect", data=data, headers=bearer(auth),
                                      timeout=HTTP_TIMEOUT)


def answer(url: str, token: str, auth: str = ADMIN_TOKEN, consume: str | None = None) -> dict:
    r = introspect(url, token, auth, consume)
    assert r.status_code == 200, r.text
    body = r.json()
    if body["active"] is False:
        assert body == {"active": False}, body  # an inactive answer says nothing more (RFC 7662 §2.2)
    return body


class UseLimited:
    """A broker on one mock issuer, with the admin credential, a partner credential for
    `incident-api`, and three jwt roles: `incident` (incident-api, max_uses 3), `other`
    (other-api, max_uses 3) and `plain` (incident-api, no max_uses). Its signing key is the
    test's, so the test can sign what the broker would, changed in one place."""

    def __init__(self, broker_factory, mock, tmp_path, max_uses: int = 3, state: dict | None = None):
        self.mock = mock
        self.key_path = test_replicas.shared_signing_key(tmp_path)
        self.key = serialization.load_pem_private_key(open(self.key_path, "rb").read(), None)
        (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
        (tmp_path / "partner.token").write_text(PARTNER_TOKEN)
        extra = {"admin": {"token_file": str(tmp_path / "admin.token"),
                           "introspectors": [{"token_file": str(tmp_path / "partner.token"),
                                              "audiences": [INCIDENT_API]}]}}
        if state is not None:
            extra["state"] = state
        self.broker = broker_factory(
            providers=[provider("mock", mock.issuer)],
            roles=[jwt_role("incident", INCIDENT_API, max_uses), jwt_role("other", OTHER_API, max_uses),
                   jwt_role("plain", INCIDENT_API)],
            server={"signing_key_file": self.key_path, "rate_limit_per_second": 0},
            extra_config=extra,
        )
        self.url = self.broker.url

    def credential(self, role_name: str = "incident") -> str:
        r = self.broker.exchange(self.mock.token(), role=role_name)
        assert r.status == 200, r
        return r.json["access_token"]

    def claims(self, token: str, audience: str = INCIDENT_API) -> dict:
        return verify_broker_jwt(self.broker, token, audience=audience)


@pytest.fixture
def ul(broker_factory, mock_issuer, tmp_path):
    return UseLimited(broker_factory, mock_issuer, tmp_path)


# ---- the claim, consumption, plain introspection ---------------------------------------------------


def test_exactly_max_uses_consumes_are_active_then_the_token_is_spent(ul):
    token = ul.credential()
    claims = ul.claims(token)
    assert claims["max_uses"] == 3, claims  # the broker JWT carries the limit
    audit_before = len(ul.broker.audit())
    answers = [answer(ul.url, token, consume="true") for _ in range(4)]
    print(f"\n4 consumes of a max_uses=3 token: "
          f"{[(a['active'], a.get('uses_remaining')) for a in answers]}")
    for a, left in zip(answers, (2, 1, 0)):
        # RFC 7662 members: active, token_type, the JWT's claims as signed, and the count left
        assert a == {"active": True, "token_type": "Bearer", **claims, "uses_remaining": left}, a
    assert answers[3] == {"active": False}
    # spent: plain introspection says so too, and further consumes stay inactive
    assert answer(ul.url, token) == {"active": False}
    assert answer(ul.url, token, consume="true") == {"active": False}
    # a winning consume writes no audit record, and exhaustion is no error (hot path)
    assert len(ul.broker.audit()) == audit_before, ul.broker.audit()[audit_before:]
    # the twin: another grant of the same role is untouched by this one's uses
    other = ul.credential()
    assert answer(ul.url, other)["uses_remaining"] == 3
    assert answer(ul.url, other, consume="true")["uses_remaining"] == 2


def test_plain_introspection_reports_uses_and_never_takes_one(ul):
    token = ul.credential()
    claims = ul.claims(token)
    for _ in range(5):
        assert answer(ul.url, token) == {"active": True, "token_type": "Bearer", **claims, "uses_remaining": 3}
    # `consume=false` and `consume=0` are plain introspection
    for value in ("false", "0"):
        assert answer(ul.url, token, consume=value)["uses_remaining"] == 3, value
    # the twin: a consume takes one, which plain introspection then reports
    assert answer(ul.url, token, consume="true")["uses_remaining"] == 2
    assert answer(ul.url, token)["uses_remaining"] == 2
    assert answer(ul.url, token, consume="1")["uses_remaining"] == 1  # `1` consumes like `true`
    assert answer(ul.url, token)["uses_remaining"] == 1


def test_consume_on_a_token_without_max_uses_is_plain_introspection(ul):
    token = ul.credential("plain")
    claims = ul.claims(token)
    assert "max_uses" not in claims
    expected = {"active": True, "token_type": "Bearer", **claims}
    for _ in range(5):  # no counting: as often as asked, no max_uses/uses_remaining members
        assert answer(ul.url, token, consume="true") == expected
    assert answer(ul.url, token) == expected
    # the twin: a use-limited token under the same consumes is counted
    limited = ul.credential()
    assert [answer(ul.url, limited, consume="true")["active"] for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("value", ["yes", "TRUEish", "2", "-1", "truefalse", ""])
def test_a_bad_consume_value_is_400_and_takes_no_use(ul, value):
    token = ul.credential()
    r = introspect(ul.url, token, consume=value)
    assert r.status_code == 400, (value, r.text)
    assert r.json()["error"] == "invalid_request", r.text
    assert set(r.json()) <= {"error", "error_description"}, r.text
    assert answer(ul.url, token)["uses_remaining"] == 3, "a refused request took a use"
    # the twin: `true` consumes
    assert answer(ul.url, token, consume="true")["uses_remaining"] == 2


# ---- partners ------------------------------------------------------------------------------------------


def test_a_partner_consumes_only_tokens_of_its_audience(ul):
    theirs = ul.credential("other")  # other-api: not the partner's
    mine = ul.credential("incident")  # incident-api: the partner's
    for _ in range(4):
        assert answer(ul.url, theirs, auth=PARTNER_TOKEN, consume="true") == {"active": False}
        assert answer(ul.url, theirs, auth=PARTNER_TOKEN) == {"active": False}
    # nothing was consumed: the admin sees every use left, and can take them
    assert answer(ul.url, theirs)["uses_remaining"] == 3
    assert answer(ul.url, theirs, consume="true")["uses_remaining"] == 2
    # the twin: the partner consumes a token of its own audience, as often as it allows
    claims = ul.claims(mine)
    got = [answer(ul.url, mine, auth=PARTNER_TOKEN, consume="true") for _ in range(4)]
    assert got[:3] == [{"active": True, "token_type": "Bearer", **claims, "uses_remaining": n} for n in (2, 1, 0)]
    assert got[3] == {"active": False}
    assert answer(ul.url, mine) == {"active": False}  # spent for the admin too


def test_a_partner_without_a_known_credential_cannot_consume(ul):
    token = ul.credential()
    r = introspect(ul.url, token, auth="partner-" + "x" * 40, consume="true")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assert answer(ul.url, token)["uses_remaining"] == 3  # nothing taken
    assert answer(ul.url, token, auth=PARTNER_TOKEN, consume="true")["uses_remaining"] == 2  # the twin


# ---- revoked and expired tokens lose no use ------------------------------------------------------------


def test_a_revoked_token_is_inactive_to_consume(ul):
    revoked, beside = ul.credential(), ul.credential()
    jti = ul.claims(revoked)["jti"]
    r = requests.post(ul.url + "/v1/revoke", data={"jti": jti}, headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["revoked"] == f"jti:{jti}", r.text
    for auth in (ADMIN_TOKEN, PARTNER_TOKEN):
        assert answer(ul.url, revoked, auth=auth, consume="true") == {"active": False}
        assert answer(ul.url, revoked, auth=auth) == {"active": False}
    # the twin: a grant of the same role and workload, not revoked, consumes
    assert answer(ul.url, beside, consume="true")["uses_remaining"] == 2


def test_an_expired_token_is_inactive_to_consume_and_loses_no_use(ul):
    token = ul.credential()
    header, claims = jwt.get_unverified_header(token), ul.claims(token)
    t = now()

    def signed(**changes) -> str:
        # the same claims (the same jti, the same use counter) signed with the broker's own key
        return jwt.encode(dict(claims, **changes), ul.key, algorithm="ES256",
                          headers={k: v for k, v in header.items() if k != "alg"})
    expired = signed(exp=t - 600, iat=t - 900, nbf=t - 900)
    for _ in range(4):
        assert answer(ul.url, expired, consume="true") == {"active": False}
    # the twin: the same jti within its lifetime still has every use (the expired copies took none)
    assert answer(ul.url, signed(), consume="true")["uses_remaining"] == 2
    assert answer(ul.url, token)["uses_remaining"] == 2


# ---- config ----------------------------------------------------------------------------------------------

AWS_CREDENTIAL = {"kind": "aws", "role_arn": "arn:aws:iam::123456789012:role/deploy"}


def offline_config(tmp_path, roles: list[dict]) -> dict:
    """A config `check` accepts without any network (a GitHub provider, nothing fetched at load)."""
    return broker_config(tmp_path, [github_provider("github", "https://token.actions.githubusercontent.com")], roles)


def check(ephemera_bin, tmp_path, cfg: dict, name: str):
    path = tmp_path / name
    path.write_text(to_toml(cfg))
    return path, run_cli(ephemera_bin, ["check", "--config", str(path)])


def test_max_uses_on_a_non_jwt_role_is_a_config_error(ephemera_bin, tmp_path):
    aws = dict(cloud_role("aws-deploy", "github", AWS_CREDENTIAL), max_uses=3)
    path, r = check(ephemera_bin, tmp_path, offline_config(tmp_path, [aws]), "aws.toml")
    print(f"\ncheck, max_uses on an aws role: exit {r.returncode}: {r.stderr.strip()[:300]}")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    # the key named as every config error names one (not a parse error of an unknown field)
    assert "roles[0] (`aws-deploy`).max_uses:" in r.stderr, r.stderr
    # serve refuses to start on it, naming the key
    s = run_cli(ephemera_bin, ["serve", "--config", str(path)], env={"RUST_LOG": "info"})
    assert s.returncode == 2, (s.returncode, s.stderr[-2000:])
    assert "roles[0] (`aws-deploy`).max_uses:" in s.stderr, s.stderr[-2000:]
    # the twins: the same aws role without max_uses, and a jwt role with it, are good configs
    aws.pop("max_uses")
    _, r = check(ephemera_bin, tmp_path, offline_config(tmp_path, [aws]), "aws-ok.toml")
    assert r.returncode == 0, r.stderr
    jwt_ok = dict(cloud_role("jwt-deploy", "github", {"kind": "jwt", "audience": INCIDENT_API}), max_uses=3)
    _, r = check(ephemera_bin, tmp_path, offline_config(tmp_path, [jwt_ok]), "jwt-ok.toml")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value, ok", [(0, False), (1, True), (10000, True), (10001, False)])
def test_max_uses_is_between_1_and_10000(ephemera_bin, tmp_path, value, ok):
    r_ = dict(cloud_role("jwt-deploy", "github", {"kind": "jwt", "audience": INCIDENT_API}), max_uses=value)
    _, r = check(ephemera_bin, tmp_path, offline_config(tmp_path, [r_]), "c.toml")
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2, (r.returncode, r.stdout)
        assert "roles[0] (`jwt-deploy`).max_uses:" in r.stderr, r.stderr


# ---- durable: the file backend keeps the counts -----------------------------------------------------


@pytest.mark.parametrize("how", ["term", "kill"])
def test_uses_survive_a_restart_on_the_file_backend(ephemera_bin, tmp_path, mock_issuer, how):
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    workdir = tmp_path / "served"
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [jwt_role("incident", INCIDENT_API, 3)],
                        server={"signing_key_file": test_replicas.shared_signing_key(tmp_path),
                                "rate_limit_per_second": 0})
    cfg["state"] = {"backend": "file"}
    cfg["admin"] = {"token_file": str(tmp_path / "admin.token")}
    s = Served(ephemera_bin, workdir, cfg)
    try:
        r = s.current.exchange(mock_issuer.token(), role="incident")
        assert r.status == 200, r
        token = r.json["access_token"]
        assert answer(s.current.url, token, consume="true")["uses_remaining"] == 2
        assert answer(s.current.url, token, consume="true")["uses_remaining"] == 1
        b = s.restart(how)
        assert s.state_path.is_file(), s.state_path
        # the count came back: one use left, then spent
        assert answer(b.url, token)["uses_remaining"] == 1
        assert answer(b.url, token, consume="true")["uses_remaining"] == 0
        assert answer(b.url, token, consume="true") == {"active": False}
        b = s.restart(how)
        assert answer(b.url, token) == {"active": False}, "spent stays spent across a restart"
        # the twin: a fresh grant after the restarts has all its uses
        r = b.exchange(mock_issuer.token(), role="incident")
        assert r.status == 200, r
        assert answer(b.url, r.json["access_token"], consume="true")["uses_remaining"] == 2
        s.check_audit_invariants()
    finally:
        s.close()


# ---- atomic under concurrency ------------------------------------------------------------------------------


def consume_race(urls: list[str], token: str, consumers: int = 50) -> list[tuple[int, dict]]:
    """`consumers` threads, released together, each consuming `token` once at urls[i % len(urls)];
    the answers as (index of the url, body)."""
    barrier = threading.Barrier(consumers)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def fire(i: int):
        with requests.Session() as s:
            barrier.wait(timeout=60)
            r = introspect(urls[i % len(urls)], token, consume="true", session=s)
        assert r.status_code == 200, r.text
        with lock:
            results.append((i % len(urls), r.json()))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == consumers, f"{consumers - len(results)} consumers failed (see their tracebacks)"
    return results


def check_race(results: list[tuple[int, dict]], max_uses: int, where: str):
    actives = [(i, b) for i, b in results if b["active"]]
    per = Counter(i for i, _ in actives)
    print(f"\n{where}: {len(results)} concurrent consumes of a max_uses={max_uses} token: "
          f"{len(actives)} active (by replica {dict(sorted(per.items()))}), {len(results) - len(actives)} inactive")
    assert len(actives) == max_uses, [b for _, b in actives]
    # each use was taken once: the winners' counts are max_uses-1 .. 0, each exactly once
    assert sorted(b["uses_remaining"] for _, b in actives) == list(range(max_uses)), actives
    assert all(b == {"active": False} for _, b in results if not b["active"])


def test_fifty_consumers_on_two_replicas_sharing_redis_win_exactly_max_uses(replicas, mock_issuer):
    a, b = replicas(2, roles=[jwt_role("incident", INCIDENT_API, 5)])
    r = a.exchange(mock_issuer.token(), role="incident")
    assert r.status == 200, r
    token = r.json["access_token"]
    # both replicas see the same full count before the race (the twin of the race's answer)
    assert {answer(x.url, token)["uses_remaining"] for x in (a, b)} == {5}
    results = consume_race([a.url, b.url], token)
    check_race(results, 5, "two replicas on one redis-server")
    for x in (a, b):
        assert answer(x.url, token) == {"active": False}


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_fifty_consumers_on_one_replica_win_exactly_max_uses(broker_factory, mock_issuer, tmp_path, backend):
    u = UseLimited(broker_factory, mock_issuer, tmp_path, max_uses=5, state={"backend": backend})
    token = u.credential()
    assert answer(u.url, token)["uses_remaining"] == 5
    check_race(consume_race([u.url], token), 5, f"one replica, {backend} backend")
    assert answer(u.url, token) == {"active": False}
