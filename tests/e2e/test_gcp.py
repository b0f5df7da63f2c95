"""GCP access tokens through IAM Credentials, and GCP trusting the broker itself (issue 5 items 5, 6
and 10; ATTACKS 44 GCP part, 53 and 57).

Google is played by gcp_double.py, a test double of the OAuth token endpoint, STS and IAM
Credentials that verifies what it receives with PyJWT. The broker authenticates as itself
exactly as in production: gcp_auth reads GOOGLE_APPLICATION_CREDENTIALS, a service account key
file (generated here) whose `token_uri` points at the double. google-auth is the client that
consumes what the broker hands out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gcp_double import GcpDouble
from harness import (
    ACCESS_TOKEN_TYPE,
    JWT_TYPE,
    REPO,
    cloud_role,
    github_claims,
    github_provider,
    require_module,
    run_cli,
    now,
    signature_segment,
    verify_broker_jwt,
)

BROKER_SA = "ephemera-broker@ephemera-test.iam.gserviceaccount.com"
TARGET_SA = "deployer@acme-prod.iam.gserviceaccount.com"
DELEGATE_SA = "hop@acme-prod.iam.gserviceaccount.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ROLE = "gcp-deploy"

# Workload identity federation: the pool provider and the audience broker JWTs carry for it.
PROJECT_NUMBER = "123456789012"
POOL_PROVIDER = (f"//iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
                 "workloadIdentityPools/ephemera/providers/broker")
WIF_AUDIENCE = "https:" + POOL_PROVIDER
WIF_ROLE = "gcp-wif"
EXAMPLE = REPO / "examples" / "gcp-external-account.json"


@pytest.fixture(autouse=True)
def _peers():
    require_module("google.auth")


@pytest.fixture
def double():
    d = GcpDouble()
    yield d
    d.close()


def write_key_file(tmp_path: Path, double: GcpDouble, email: str = BROKER_SA, register: bool = True) -> tuple[Path, str]:
    """A service account key file like `gcloud iam service-accounts keys create` writes, with its
    token_uri at the double; the double knows the public part (unless `register` is false)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "project_id": "ephemera-test",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": email,
        "client_id": "104217651234567890123",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": double.token_uri,
    }
    path = tmp_path / "broker-sa.json"
    path.write_text(json.dumps(info))
    if register:
        double.add_service_account_key(email, key.public_key())
    return path, pem


def gcp_credential(**extra) -> dict:
    c = {"kind": "gcp", "service_account": TARGET_SA, "scopes": SCOPES}
    c.update(extra)
    return c


def start_broker(broker_factory, mock, double, key_path, *, credential=None, rust_log=None, max_ttl="15m"):
    return broker_factory(
        providers=[github_provider("github", mock.issuer)],
        roles=[cloud_role(ROLE, "github", credential or gcp_credential(), max_ttl=max_ttl)],
        env={"GOOGLE_APPLICATION_CREDENTIALS": str(key_path)},
        extra_config={"gcp": {"iam_credentials_url": double.url}},
        rust_log=rust_log,
    )


def allow_records(broker) -> list[dict]:
    return [a for a in broker.audit() if a["decision"] == "allow"]


def whoami(double: GcpDouble, token: str) -> dict:
    """google-auth consumes the token: an authorized request to a protected resource."""
    import google.oauth2.credentials
    from google.auth.transport.requests import AuthorizedSession

    creds = google.oauth2.credentials.Credentials(token)
    assert creds.valid
    r = AuthorizedSession(creds).get(double.url + "/v1/whoami", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_exchange_mints_an_access_token_for_the_bounded_lifetime(broker_factory, mock_issuer, double, tmp_path):
    key_path, _ = write_key_file(tmp_path, double)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path, max_ttl="1h")  # ATTACKS 44 (GCP)
    t = now()
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer, iat=t - 60, nbf=t - 60, exp=t + 120)),
                   role=ROLE)
    assert r.status == 200, r
    body = r.json
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body and "credentials" not in body
    # the real remaining lifetime, counted from the broker's clock at the decision
    [rec] = allow_records(b)
    assert body["expires_in"] == t + 120 - rec["ts"]
    assert rec["credential"] == {"kind": "gcp", "jti": rec["credential"]["jti"], "expires_at": t + 120}
    token = body["access_token"]
    assert token.startswith("ya29.a0")

    # the broker authenticated as itself: a JWT-bearer grant the double verified
    [grant] = double.calls_to("token")
    assert grant.verdict == "ok" and grant.body["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    # generateAccessToken with the broker's own token, the role's scopes and the bounded lifetime
    [gen] = double.calls_to("generate")
    assert gen.verdict == "ok", gen.verdict
    assert gen.path == f"/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken"
    assert gen.bearer == grant.issued
    assert gen.extra["caller"] == f"serviceAccount:{BROKER_SA}"
    assert gen.body == {"scope": SCOPES, "lifetime": f"{body['expires_in']}s", "delegates": []}
    assert gen.issued == token

    # google-auth uses it, as the target service account
    me = whoami(double, token)
    assert me["principal"] == f"serviceAccount:{TARGET_SA}" and me["scopes"] == SCOPES
    assert me["expires_in"] <= 120


def test_the_roles_max_ttl_is_the_lifetime_google_sees(broker_factory, mock_issuer, double, tmp_path):
    key_path, _ = write_key_file(tmp_path, double)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path, max_ttl="90s")
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert r.status == 200, r
    assert r.json["expires_in"] == 90
    assert double.calls_to("generate")[0].body["lifetime"] == "90s"
    # the broker's own token is reused (gcp_auth caches it): one JWT-bearer grant for two mints
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE).status == 200
    assert len(double.calls_to("token")) == 1 and len(double.calls_to("generate")) == 2


def test_delegates_are_sent_as_a_chain(broker_factory, mock_issuer, double, tmp_path):
    key_path, _ = write_key_file(tmp_path, double)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", DELEGATE_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path,
                     credential=gcp_credential(delegates=[DELEGATE_SA]))
    # the delegate may not yet act for the target: Google refuses the chain
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert (r.status, r.reason) == (502, "upstream_refused"), r
    # the twin: with the link in place, the chain works
    double.allow_impersonation(f"serviceAccount:{DELEGATE_SA}", TARGET_SA)
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert r.status == 200, r
    gen = double.calls_to("generate")[-1]
    assert gen.body["delegates"] == [f"projects/-/serviceAccounts/{DELEGATE_SA}"]
    assert whoami(double, r.json["access_token"])["principal"] == f"serviceAccount:{TARGET_SA}"


def test_iam_refusing_is_a_502_audited_and_the_assertion_is_spent(broker_factory, mock_issuer, double, tmp_path):
    """ATTACKS 57 (GCP): IAM refuses after the assertion was consumed."""
    key_path, _ = write_key_file(tmp_path, double)
    b = start_broker(broker_factory, mock_issuer, double, key_path)
    token = mock_issuer.sign(github_claims(mock_issuer.issuer))
    r = b.exchange(token, role=ROLE)  # the broker may not impersonate the target
    assert (r.status, r.error, r.reason) == (502, "server_error", "upstream_refused"), r
    assert "HTTP 403" in r.description and "access_token" not in r.text
    assert double.calls_to("generate")[0].status == 403
    recs = [x for x in b.audit() if x.get("decision_id") == r.decision_id]
    assert [x["decision"] for x in recs] == ["allow", "mint_failed"], recs
    assert recs[1]["reason"] == "upstream_refused" and recs[1]["credential"]["kind"] == "gcp"
    # the twin: granted, a fresh assertion works; the spent one is a replay
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    assert b.exchange(token, role=ROLE).reason == "token_replayed"
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE).status == 200


def test_iam_unavailable_is_a_retryable_503(broker_factory, mock_issuer, double, tmp_path):
    key_path, _ = write_key_file(tmp_path, double)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path)
    double.fail("generate", 503)
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert (r.status, r.error, r.reason) == (503, "temporarily_unavailable", "upstream_unavailable"), r
    recs = [x for x in b.audit() if x.get("decision_id") == r.decision_id]
    assert [x["decision"] for x in recs] == ["allow", "mint_failed"]
    double.clear_failures()
    assert b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE).status == 200


def test_a_broker_key_google_does_not_know_is_refused_before_iam(broker_factory, mock_issuer, double, tmp_path):
    key_path, _ = write_key_file(tmp_path, double, register=False)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path)
    r = b.exchange(mock_issuer.sign(github_claims(mock_issuer.issuer)), role=ROLE)
    assert (r.status, r.reason) == (502, "upstream_refused"), r
    assert "own Google credentials" in r.description
    assert double.calls_to("token") and all(c.status == 400 for c in double.calls_to("token"))
    assert double.calls_to("generate") == []


def test_gcp_tokens_never_reach_logs_or_audit(broker_factory, mock_issuer, double, tmp_path):
    """ATTACKS 53 (GCP): at RUST_LOG=trace, neither the tokens minted for workloads nor the
    broker's own Google token nor its private key reach stdout, stderr or the audit log."""
    key_path, pem = write_key_file(tmp_path, double)
    double.allow_impersonation(f"serviceAccount:{BROKER_SA}", TARGET_SA)
    b = start_broker(broker_factory, mock_issuer, double, key_path, rust_log="trace")
    assertions = []
    for _ in range(2):
        assertions.append(mock_issuer.sign(github_claims(mock_issuer.issuer)))
        assert b.exchange(assertions[-1], role=ROLE).status == 200
    double.fail("generate", 403)
    assertions.append(mock_issuer.sign(github_claims(mock_issuer.issuer)))
    assert b.exchange(assertions[-1], role=ROLE).status == 502
    b.stop()
    texts = {
        "stderr": b.stderr_path.read_text(errors="replace"),
        "stdout": b.stdout_path.read_text(errors="replace"),
        "audit": b.audit_path.read_text(errors="replace"),
    }
    assert "TRACE" in texts["stderr"], "RUST_LOG=trace was not in effect"
    issued = [t.token for t in double.issued()]
    assert len(issued) == 3, issued  # the broker's own token and two minted ones
    needles = {f"token {t[:12]}": t for t in issued}
    needles.update({f"token tail {t[:12]}": t[-24:] for t in issued})
    body = "".join(pem.strip().splitlines()[1:-1])
    needles.update({f"key chunk {i}": body[i:i + 40] for i in range(0, len(body) - 40, 40)})
    for i, a in enumerate(assertions):
        needles[f"assertion {i}"] = a
        needles[f"assertion signature {i}"] = signature_segment(a)
    leaks = [(name, where) for name, n in needles.items() for where, text in texts.items() if n in text]
    assert not leaks, f"secrets found in output: {leaks[:10]}"
    assert not any("ya29." in text for text in texts.values())
    # the twin: the refusal is logged, with what is not secret
    assert "generateAccessToken refused" in texts["stderr"] and TARGET_SA in texts["stderr"]


# ---- GCP trusting the broker: broker JWTs as a workload identity pool's subject token ----------


def wif_broker(broker_factory, mock):
    # google-auth runs `ephemera exchange`, which talks to this broker: the answers never pass
    # through the harness (and a kept answer never reaches the broker at all), so the teardown
    # invariant has no answers to count. Each test using it asserts the broker's whole audit log
    # instead (decision and reason of every record, in order), which is the stronger check.
    return broker_factory(
        providers=[github_provider("github", mock.issuer)],
        roles=[cloud_role(WIF_ROLE, "github", {"kind": "jwt", "audience": WIF_AUDIENCE}, max_ttl="10m")],
        check_invariants=False,
    )


def external_account_info(ephemera_bin, broker, token_file: Path, double: GcpDouble, *,
                          impersonate: bool) -> dict:
    """examples/gcp-external-account.json with this test's broker, token file and double."""
    info = json.loads(EXAMPLE.read_text())
    info["audience"] = POOL_PROVIDER
    info["token_url"] = double.url + "/v1/token"
    info["credential_source"]["executable"]["command"] = (
        f"{ephemera_bin} exchange --broker {broker.url} --role {WIF_ROLE} --token-file {token_file} "
        "--format gcp-executable")
    if impersonate:
        info["service_account_impersonation_url"] = (
            f"{double.url}/v1/projects/-/serviceAccounts/{TARGET_SA}:generateAccessToken")
    else:
        info.pop("service_account_impersonation_url", None)
    return info


def trust_broker(double: GcpDouble, broker, allowed=(WIF_AUDIENCE,)):
    double.trust_issuer(audience=POOL_PROVIDER, issuer=broker.issuer,
                        jwks_uri=broker.url + "/.well-known/jwks.json", allowed_audiences=list(allowed),
                        principal=f"principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
                                  "workloadIdentityPools/ephemera")


def test_the_example_external_account_config_is_what_google_auth_expects():
    info = json.loads(EXAMPLE.read_text())
    assert info["type"] == "external_account"
    assert info["subject_token_type"] == JWT_TYPE
    assert info["token_url"] == "https://sts.googleapis.com/v1/token"
    exe = info["credential_source"]["executable"]
    assert "--format gcp-executable" in exe["command"] and exe["command"].split()[:2] == ["ephemera", "exchange"]
    assert 5000 <= exe["timeout_millis"] <= 120000
    from google.auth import pluggable

    creds = pluggable.Credentials.from_info(info, scopes=SCOPES)  # google-auth parses it
    assert creds.service_account_email


@pytest.mark.parametrize("impersonate", [False, True], ids=["federated-token", "impersonated-sa"])
def test_google_auth_runs_ephemera_exchange_as_its_executable_source(
        broker_factory, mock_issuer, double, ephemera_bin, tmp_path, monkeypatch, impersonate):
    from google.auth import exceptions, pluggable
    from google.auth.transport.requests import Request

    b = wif_broker(broker_factory, mock_issuer)
    trust_broker(double, b)
    double.allow_impersonation(f"principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/"
                               f"workloadIdentityPools/ephemera/subject/{github_subject()}", TARGET_SA)
    token_file = tmp_path / "id-token"
    claims = github_claims(mock_issuer.issuer)
    token_file.write_text(mock_issuer.sign(claims))
    info = external_account_info(ephemera_bin, b, token_file, double, impersonate=impersonate)
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    monkeypatch.setenv("EPHEMERA_CACHE_DIR", str(tmp_path / "cache"))

    creds = pluggable.Credentials.from_info(info, scopes=SCOPES)
    creds.refresh(Request())

    # the double's STS verified the broker JWT (signature by the broker's JWKS, iss, aud)
    [sts] = double.calls_to("sts")
    assert sts.verdict == "ok", sts.verdict
    assert sts.body["audience"] == POOL_PROVIDER
    assert sts.body["subject_token_type"] == JWT_TYPE
    subject = sts.extra["subject_claims"]
    assert subject["iss"] == b.issuer and subject["aud"] == WIF_AUDIENCE
    assert subject["sub"] == github_subject() and subject["role"] == WIF_ROLE
    # google-auth holds the double's access token, no Google secret was ever in the broker
    if impersonate:
        [gen] = double.calls_to("generate")
        assert gen.bearer == sts.issued and gen.verdict == "ok"
        assert creds.token == gen.issued
        assert whoami(double, creds.token)["principal"] == f"serviceAccount:{TARGET_SA}"
    else:
        assert double.calls_to("generate") == []
        assert creds.token == sts.issued
        assert whoami(double, creds.token)["principal"].endswith("/subject/" + subject["sub"])
    assert creds.valid

    # the negative twin: a denied workload; google-auth reports the broker's reason
    token_file.write_text(mock_issuer.sign(github_claims(mock_issuer.issuer, ref="refs/heads/dev")))
    creds = pluggable.Credentials.from_info(info, scopes=SCOPES)
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(Request())
    assert "policy_denied" in str(e.value) and "refs/heads/dev" in str(e.value)
    assert len(double.calls_to("sts")) == 1, "nothing reached Google"
    # the broker audited both decisions
    assert [(r["decision"], r.get("reason")) for r in b.audit()] == [("allow", None), ("deny", "policy_denied")]


def test_google_sts_refuses_a_broker_jwt_for_another_audience(
        broker_factory, mock_issuer, double, ephemera_bin, tmp_path, monkeypatch):
    """The double really checks `aud` (google-auth itself checks nothing of the JWT)."""
    from google.auth import exceptions, pluggable
    from google.auth.transport.requests import Request

    b = wif_broker(broker_factory, mock_issuer)
    trust_broker(double, b, allowed=("https://iam.googleapis.com/projects/999/other",))
    token_file = tmp_path / "id-token"
    token_file.write_text(mock_issuer.sign(github_claims(mock_issuer.issuer)))
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    monkeypatch.setenv("EPHEMERA_CACHE_DIR", str(tmp_path / "cache"))
    creds = pluggable.Credentials.from_info(
        external_account_info(ephemera_bin, b, token_file, double, impersonate=False), scopes=SCOPES)
    with pytest.raises(exceptions.GoogleAuthError) as e:
        creds.refresh(Request())
    assert "invalid_grant" in str(e.value) and "Audience" in str(e.value)
    assert double.calls_to("sts")[0].verdict.startswith("invalid_grant")
    # the broker allowed and minted; it is Google that refused
    assert [(x["decision"], x.get("reason")) for x in b.audit()] == [("allow", None)]


def test_gcp_executable_output_is_googles_executable_response(broker_factory, mock_issuer, ephemera_bin, tmp_path):
    b = wif_broker(broker_factory, mock_issuer)
    token_file = tmp_path / "id-token"
    token_file.write_text(mock_issuer.sign(github_claims(mock_issuer.issuer)))
    output_file = tmp_path / "google-output.json"
    args = ["exchange", "--broker", b.url, "--role", WIF_ROLE, "--token-file", str(token_file),
            "--format", "gcp-executable"]
    env = {"EPHEMERA_CACHE_DIR": str(tmp_path / "cache"), "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE": str(output_file)}
    out = run_cli(ephemera_bin, args, env=env)
    after = int(time.time())
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)
    assert set(resp) == {"version", "success", "token_type", "id_token", "expiration_time"}
    assert (resp["version"], resp["success"], resp["token_type"]) == (1, True, JWT_TYPE)
    claims = verify_broker_jwt(b, resp["id_token"], audience=WIF_AUDIENCE)
    [rec] = b.audit()
    assert rec["decision"] == "allow" and rec["credential"]["expires_at"] == claims["exp"]
    # the client counts expires_in from its own clock once the answer is in: between the broker's
    # decision (the record's ts) and the moment the client process had ended
    assert claims["exp"] <= resp["expiration_time"] <= claims["exp"] + (after - rec["ts"]), (resp, rec, after)
    # Google's libraries asked for an output file: the same response is there, owner-only
    assert json.loads(output_file.read_text()) == resp
    assert output_file.stat().st_mode & 0o077 == 0

    # Run again for the same assertion (as google-auth does long before the token ends): the kept
    # answer, not a replay refused by the broker
    again = run_cli(ephemera_bin, args, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["id_token"] == resp["id_token"]
    # the twin: without the cache the broker sees the replay, and Google's error response says so
    refused = run_cli(ephemera_bin, args + ["--no-cache"], env=env)
    assert refused.returncode == 1
    err = json.loads(refused.stdout)
    assert (err["version"], err["success"], err["code"]) == (1, False, "invalid_request")
    assert "token_replayed" in err["message"] and "token_replayed" in refused.stderr
    # one exchange for the first two runs, the replay for the third
    assert [(x["decision"], x.get("reason")) for x in b.audit()] == [("allow", None), ("deny", "token_replayed")]


def github_subject() -> str:
    """The broker's `sub` for the cloud tests' GitHub workload (by immutable ids)."""
    from harness import GH_OWNER_ID, GH_REPOSITORY_ID

    return f"repo:acme@{GH_OWNER_ID}/app@{GH_REPOSITORY_ID}"
