"""The admin routes (README "Running several replicas"): `POST /v1/introspect` (RFC 7662) on every
way a JWT can fail to be the broker's live credential, `POST /v1/revoke` by each key an admin may
name (`task`, `jti`, `role`, `issuer`; `subject` is in test_replicas.py), `GET /v1/grants?role=R`
and `ephemera grants --role R`, and the 401 every admin route answers without the admin bearer
credential. One broker on in-memory state; its signing key is the test's, so the test can sign
exactly what the broker would, changed in one place."""

from __future__ import annotations

import json
import re
import types

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (
    Broker,
    GH_REPOSITORY_ID,
    PARTNER,
    cloud_role,
    github_claims,
    github_provider,
    now,
    run_cli,
    verify_broker_jwt,
)

ADMIN_TOKEN = "admin-" + "y" * 40
JWT_CREDENTIAL = {"kind": "jwt", "audience": PARTNER}


def admin(token: str = ADMIN_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def write_signing_key(path):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


class Admin:
    """A broker with two GitHub-profile providers (two mock issuers) and three JWT roles:
    `deploy` and `deploy2` (same provider, same conditions) and `other` (the second issuer)."""

    def __init__(self, broker_factory, mock_factory, tmp_path, *, issuer: str | None = None,
                 key_path=None, key=None):
        self.mock, self.mock2 = mock_factory(), mock_factory()
        self.key_path = key_path or tmp_path / "broker-key.pem"
        self.key = key or write_signing_key(self.key_path)
        self.token_file = tmp_path / "admin.token"
        self.token_file.write_text(ADMIN_TOKEN)
        server = {"signing_key_file": str(self.key_path), "rate_limit_per_second": 0}
        if issuer:
            server["issuer"] = issuer
        self.broker = broker_factory(
            providers=[github_provider("gh", self.mock.issuer), github_provider("gh2", self.mock2.issuer)],
            roles=[cloud_role("deploy", "gh", JWT_CREDENTIAL), cloud_role("deploy2", "gh", JWT_CREDENTIAL),
                   cloud_role("other", "gh2", JWT_CREDENTIAL)],
            server=server,
            extra_config={"admin": {"token_file": str(self.token_file)}},
            check_invariants=False,  # `check` below: the same invariants, plus the revoke records
        )
        self.revoked: list[str] = []  # the keys of the revocations answered 200

    @property
    def url(self) -> str:
        return self.broker.url

    def assertion(self, mock=None, **claims) -> str:
        mock = mock or self.mock
        return mock.sign(github_claims(mock.issuer, **claims))

    def credential(self, role: str = "deploy", mock=None, **claims) -> str:
        """A broker JWT from a fresh exchange (asserted 200)."""
        r = self.broker.exchange(self.assertion(mock, **claims), role=role)
        assert r.status == 200, r
        return r.json["access_token"]

    def introspect(self, token: str, auth: str = ADMIN_TOKEN) -> requests.Response:
        return requests.post(self.url + "/v1/introspect", data={"token": token}, headers=admin(auth), timeout=30)

    def active(self, token: str) -> bool:
        r = self.introspect(token)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["active"] is False:
            assert body == {"active": False}, body  # an inactive answer says nothing more (RFC 7662 §2.2)
        return body["active"]

    def revoke(self, **key) -> requests.Response:
        r = requests.post(self.url + "/v1/revoke", data=key, headers=admin(), timeout=30)
        if r.status_code == 200:
            self.revoked.append(r.json()["revoked"])
        return r

    def check(self):
        """The harness's audit invariants over the exchange records, and one `revoke` record per
        revocation answered 200 (a revocation is audited too, but is no /v1/token answer)."""
        recs = self.broker.audit()
        revokes = [r for r in recs if r["decision"] == "revoke"]
        assert [r["detail"] for r in revokes] == [f"revoked `{k}`" for k in self.revoked], revokes
        exchanges = [r for r in recs if r["decision"] != "revoke"]
        Broker.check_audit_invariants(types.SimpleNamespace(audit=lambda: exchanges,
                                                            responses=self.broker.responses))

    def sign_as_broker(self, claims: dict, header: dict, key=None) -> str:
        """`claims` signed as the broker signs (ES256, its header), with the broker's key or `key`."""
        return jwt.encode(claims, key or self.key, algorithm="ES256",
                          headers={k: v for k, v in header.items() if k != "alg"})


@pytest.fixture
def adm(broker_factory, mock_factory, tmp_path, request):
    a = Admin(broker_factory, mock_factory, tmp_path)
    yield a
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed:
        a.check()


def assert_unauthorized(r: requests.Response):
    """README error table: 401 `invalid_client`, reason `unauthorized`; RFC 6750 challenge."""
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "invalid_client", body
    assert re.match(r"^unauthorized: ", body["error_description"]), body
    assert r.headers.get("WWW-Authenticate") == "Bearer", dict(r.headers)
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)


# ---- introspection --------------------------------------------------------------------------------


def test_a_fresh_credential_is_active_with_its_claims(adm):
    token = adm.credential()
    claims = verify_broker_jwt(adm.broker, token)
    r = adm.introspect(token)
    assert r.status_code == 200, r.text
    # RFC 7662 members: active, token_type, and the JWT's own claims as the broker signed them
    assert r.json() == {"active": True, "token_type": "Bearer", **claims}, (r.json(), claims)
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "role", "task", "provider", "src_iss"}
    assert claims["role"] == "deploy" and claims["provider"] == "gh" and claims["src_iss"] == adm.mock.issuer


def test_introspection_checks_the_signature(adm):
    token = adm.credential()
    header, claims = jwt.get_unverified_header(token), verify_broker_jwt(adm.broker, token)
    h, p, s = token.split(".")
    # forged: the signature's bytes flipped (raw r||s: still 64 bytes, still canonical base64url)
    sig = jwt.utils.base64url_decode(s)
    flipped = bytes(b ^ 0xFF for b in sig[:8]) + sig[8:]
    assert adm.active(f"{h}.{p}.{jwt.utils.base64url_encode(flipped).decode()}") is False
    # re-signed: the same header (the broker's kid) and claims, signed by another P-256 key
    attacker = ec.generate_private_key(ec.SECP256R1())
    resigned = adm.sign_as_broker(claims, header, key=attacker)
    assert jwt.get_unverified_header(resigned)["kid"] == header["kid"]
    assert adm.active(resigned) is False
    # the payload changed under the broker's signature (another role)
    other = jwt.utils.base64url_encode(json.dumps(dict(claims, role="deploy2")).encode()).decode()
    assert adm.active(f"{h}.{other}.{s}") is False
    # alg none with the broker's kid
    none_header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT", "kid": header["kid"]})
                                             .encode()).decode()
    assert adm.active(f"{none_header}.{p}.") is False
    # the twins: the token as issued, and the same claims signed with the broker's own key
    assert adm.active(token) is True
    assert adm.active(adm.sign_as_broker(claims, header)) is True


def test_introspection_checks_exp(adm):
    token = adm.credential()
    header, claims = jwt.get_unverified_header(token), verify_broker_jwt(adm.broker, token)
    t = now()
    # signed with the broker's own key: only exp is wrong (long past: no clock skew can reach it)
    assert adm.active(adm.sign_as_broker(dict(claims, exp=t - 600, iat=t - 900, nbf=t - 900), header)) is False
    # the twin: the same claims and key with an exp ahead
    assert adm.active(adm.sign_as_broker(dict(claims, exp=t + 600, iat=t - 900, nbf=t - 900), header)) is True


def test_introspection_checks_iss(adm):
    token = adm.credential()
    header, claims = jwt.get_unverified_header(token), verify_broker_jwt(adm.broker, token)
    # signed with the broker's own key: only iss is wrong
    for iss in ("https://other-broker.example", adm.broker.issuer + "/", ""):
        assert adm.active(adm.sign_as_broker(dict(claims, iss=iss), header)) is False, iss
    assert adm.active(adm.sign_as_broker(dict(claims), header)) is True  # the twin


def test_a_credential_of_another_broker_with_the_same_key_is_inactive(broker_factory, mock_factory, tmp_path):
    # Broker B signs with A's key file but has its own issuer: its JWTs verify under A's JWKS and
    # only `iss` tells them apart.
    a = Admin(broker_factory, mock_factory, tmp_path)
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = Admin(broker_factory, mock_factory, b_dir, issuer="http://127.0.0.1/other-broker",
              key_path=a.key_path, key=a.key)
    from_b = b.credential()
    assert jwt.get_unverified_header(from_b)["kid"] == jwt.get_unverified_header(a.credential())["kid"]
    assert a.active(from_b) is False
    assert b.active(from_b) is True  # the twin: at its own broker it is active
    assert a.active(a.credential()) is True
    a.check()
    b.check()


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "e30.e30.", "x" * 20_000])
def test_garbage_is_inactive(adm, garbage):
    assert adm.active(garbage) is False
    assert adm.active(adm.credential()) is True  # the twin


def test_an_upstream_assertion_is_not_a_broker_credential(adm):
    # a token the broker accepts as input (the issuer's ID token) is not one it issued
    assertion = adm.assertion()
    assert adm.active(assertion) is False
    assert adm.broker.exchange(assertion).status == 200  # and it is a good assertion


def test_introspection_needs_a_token_parameter(adm):
    r = requests.post(adm.url + "/v1/introspect", data={}, headers=admin(), timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert r.json()["error_description"].startswith("request_invalid:"), r.text


# ---- revocation by each key ------------------------------------------------------------------------


def test_revoke_by_jti_ends_that_grant_only(adm):
    one, two = adm.credential(run_id="101"), adm.credential(run_id="101")
    jti = verify_broker_jwt(adm.broker, one)["jti"]
    r = adm.revoke(jti=jti)
    assert r.status_code == 200 and r.json()["revoked"] == f"jti:{jti}", r.text
    assert r.json()["until"] - now() in range(12 * 3600 - 120, 12 * 3600 + 1)  # README: 12 h
    assert adm.active(one) is False
    # the twins: another grant of the same task and role stays active, and the workload may
    # still exchange (a jti names one credential, not a workload)
    assert adm.active(two) is True
    assert adm.active(adm.credential(run_id="101")) is True


def test_revoke_by_role(adm):
    in_role, beside = adm.credential("deploy2", run_id="201"), adm.credential("deploy", run_id="201")
    r = adm.revoke(role="deploy2")
    assert r.status_code == 200 and r.json()["revoked"] == "role:deploy2", r.text
    assert adm.active(in_role) is False
    refused = adm.broker.exchange(adm.assertion(run_id="202"), role="deploy2")
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert "revoked (role:deploy2)" in refused.description, refused
    # the twins: the same workload's credential of another role, and a new exchange for it
    assert adm.active(beside) is True
    assert adm.active(adm.credential("deploy", run_id="202")) is True


def test_revoke_by_issuer(adm):
    from_second, from_first = adm.credential("other", mock=adm.mock2), adm.credential("deploy")
    r = adm.revoke(issuer=adm.mock2.issuer)
    assert r.status_code == 200 and r.json()["revoked"] == f"issuer:{adm.mock2.issuer}", r.text
    assert adm.active(from_second) is False
    refused = adm.broker.exchange(adm.assertion(mock=adm.mock2), role="other")
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert f"revoked (issuer:{adm.mock2.issuer})" in refused.description, refused
    # the twins: the other issuer's credential and exchanges are untouched
    assert adm.active(from_first) is True
    assert adm.active(adm.credential("deploy")) is True


def test_revoke_by_task_as_admin(adm):
    task = f"{GH_REPOSITORY_ID}/301/1"
    ended, other_run = adm.credential(run_id="301"), adm.credential(run_id="302")
    # the same task string from the second provider (its issuer mints the same repository id)
    same_task_gh2 = adm.credential("other", mock=adm.mock2, run_id="301")
    assert verify_broker_jwt(adm.broker, ended)["task"] == task
    assert verify_broker_jwt(adm.broker, same_task_gh2)["task"] == task
    r = adm.revoke(task=task, provider="gh")  # an admin needs no assertion of the task
    assert r.status_code == 200 and r.json()["revoked"] == f"task:gh:{task}", r.text
    assert adm.active(ended) is False
    refused = adm.broker.exchange(adm.assertion(run_id="301"), role="deploy2")  # any role
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert f"revoked (task:gh:{task})" in refused.description, refused
    # the twins: another run of the same repository, and the same task string in provider gh2
    # (a task lives in its provider's namespace, review C3)
    assert adm.active(other_run) is True
    assert adm.active(adm.credential(run_id="302")) is True
    assert adm.active(same_task_gh2) is True
    assert adm.active(adm.credential("other", mock=adm.mock2, run_id="301")) is True


@pytest.mark.parametrize("kind", ["task", "subject"])
def test_an_admin_task_or_subject_revocation_names_a_configured_provider(adm, kind):
    """Two providers: a `task` or `subject` revocation must say whose (`provider`), and the
    provider must be configured; the twin names one and is stored in its namespace."""
    credential = adm.credential("other", mock=adm.mock2, run_id="303")
    value = verify_broker_jwt(adm.broker, credential)["task" if kind == "task" else "sub"]
    for form, description in [
        ({kind: value}, "request_invalid: name the provider whose task or subject this is (`provider`)"),
        ({kind: value, "provider": "nope"}, "request_invalid: no provider `nope`"),
        ({kind: value, "provider": ""}, "request_invalid: no provider ``"),
    ]:
        r = adm.revoke(**form)
        assert r.status_code == 400, (form, r.text)
        assert r.json() == {"error": "invalid_request", "error_description": description}, (form, r.text)
    assert adm.active(credential) is True  # nothing was revoked by the refusals
    r = adm.revoke(**{kind: value, "provider": "gh2"})
    assert r.status_code == 200 and r.json()["revoked"] == f"{kind}:gh2:{value}", r.text
    assert adm.active(credential) is False


@pytest.mark.parametrize("form", [{}, {"task": "x", "jti": "y"}, {"role": ""}, {"nope": "x"}])
def test_an_admin_revocation_names_exactly_one_key(adm, form):
    r = adm.revoke(**form)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert r.json()["error_description"].startswith("request_invalid: give exactly one of"), r.text
    assert adm.revoke(role="nope").status_code == 200  # the twin: one key


# ---- the grant inventory, filtered ---------------------------------------------------------------


def test_grants_filter_by_role_over_http_and_the_cli(adm, ephemera_bin):
    jtis = {}
    for role_name in ("deploy", "deploy2", "deploy2"):
        jtis.setdefault(role_name, []).append(verify_broker_jwt(adm.broker, adm.credential(role_name))["jti"])

    def listed(**params):
        r = requests.get(adm.url + "/v1/grants", params=params, headers=admin(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["grants"]

    # the twin: unfiltered, every grant
    assert sorted(g["id"] for g in listed()) == sorted(jtis["deploy"] + jtis["deploy2"])
    only = listed(role="deploy2")
    assert sorted(g["id"] for g in only) == sorted(jtis["deploy2"]) and {g["role"] for g in only} == {"deploy2"}
    assert [g["id"] for g in listed(role="deploy")] == jtis["deploy"]
    assert listed(role="nope") == []

    cli = lambda *a: run_cli(ephemera_bin, ["grants", "--broker", adm.url, "--admin-token-file",
                                            str(adm.token_file), *a])
    res = cli("--role", "deploy2", "--json")
    assert res.returncode == 0, res
    assert json.loads(res.stdout)["grants"] == only
    res = cli("--json")
    assert res.returncode == 0 and len(json.loads(res.stdout)["grants"]) == 3, res
    # the table: a header, then one line per grant of that role
    res = cli("--role", "deploy")
    assert res.returncode == 0, res
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["GRANT", "ROLE"] and len(lines) == 2, res.stdout
    assert lines[1].split()[:2] == [jtis["deploy"][0], "deploy"], res.stdout
    # a wrong admin credential: the CLI fails (exit 1) and says why
    (adm.token_file.parent / "wrong.token").write_text("wrong-" + "z" * 40)
    res = run_cli(ephemera_bin, ["grants", "--broker", adm.url, "--admin-token-file",
                                 str(adm.token_file.parent / "wrong.token"), "--role", "deploy"])
    assert res.returncode == 1 and "HTTP 401" in res.stderr and "unauthorized" in res.stderr, res


# ---- 401 on every admin route ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "wrong-" + "z" * 40, "", ADMIN_TOKEN + "x", "Basic"])
def test_admin_routes_answer_401_without_the_admin_credential(adm, auth):
    token = adm.credential()
    if auth is None:
        headers = {}
    elif auth == "Basic":
        headers = {"Authorization": f"Basic {ADMIN_TOKEN}"}  # the right secret, the wrong scheme
    else:
        headers = admin(auth)
    assert_unauthorized(requests.post(adm.url + "/v1/introspect", data={"token": token}, headers=headers, timeout=30))
    assert_unauthorized(requests.get(adm.url + "/v1/grants", headers=headers, timeout=30))
    assert_unauthorized(requests.post(adm.url + "/v1/revoke", data={"role": "deploy"}, headers=headers, timeout=30))
    # nothing was revoked; the twins with the admin credential answer
    assert adm.active(token) is True
    assert requests.get(adm.url + "/v1/grants", headers=admin(), timeout=30).status_code == 200
