"""Revocation keys in their provider's namespace (security review C3), through the real binary.

A broker with two providers: `github` (github-actions profile: the task is
`REPO_ID/RUN_ID/RUN_ATTEMPT`) and `partner` (oidc profile: the task is the token's `jti`, which the
partner's issuer chooses freely). Before the fix, the partner could end "its own task" named as a
GitHub job's task (`task:ID`) and so end that job; now a workload's revocation is stored as
`task:<its provider>:<task>`, an admin's as `task:PROVIDER:ID` / `subject:PROVIDER:S`, and one
provider's revocations never touch another's workloads.

Also: the github-actions profile's default lifetime cap (no `max_token_lifetime` configured) is
6 h, as GitHub-hosted runners have issued tokens with `exp - iat = 21600` and `nbf = iat - 300`
(issue 14's real-world input).
"""

from __future__ import annotations

import uuid

import pytest
import requests

from harness import (
    AUDIENCE,
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    ID_TOKEN,
    PARTNER,
    Resp,
    broker_config,
    cloud_role,
    github_claims,
    github_provider,
    now,
    provider,
    role,
    run_cli,
    to_toml,
    verify_broker_jwt,
)

ADMIN_TOKEN = "admin-" + "n" * 40
JWT_CREDENTIAL = {"kind": "jwt", "audience": PARTNER}
RUN_ID = "9876543210"
# The task the github-actions profile derives for RUN_ID, attempt 1 (the review's reproduction).
GH_TASK = f"{GH_REPOSITORY_ID}/{RUN_ID}/1"
# The subject the github-actions profile derives from github_claims (owner@id/name@id).
GH_SUBJECT = f"repo:acme@987654/app@{GH_REPOSITORY_ID}"
PARTNER_SUB = "partner-svc"


def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Namespaces:
    """The broker of the review's reproduction: providers `github` and `partner` (one mock issuer
    each), roles `deploy` (github, the GitHub job), `partner-role` (partner, sub `partner-svc`) and
    `partner-mirror` (partner, a sub equal to the GitHub job's subject string)."""

    def __init__(self, broker_factory, mock_factory, tmp_path):
        self.gh, self.partner = mock_factory(), mock_factory()
        token_file = tmp_path / "admin.token"
        token_file.write_text(ADMIN_TOKEN)
        self.broker = broker_factory(
            providers=[github_provider("github", self.gh.issuer), provider("partner", self.partner.issuer)],
            roles=[cloud_role("deploy", "github", JWT_CREDENTIAL),
                   role("partner-role", "partner", conditions={"sub": PARTNER_SUB}),
                   role("partner-mirror", "partner", conditions={"sub": GH_SUBJECT})],
            server={"rate_limit_per_second": 0},
            extra_config={"admin": {"token_file": str(token_file)}},
        )

    @property
    def url(self) -> str:
        return self.broker.url

    def github_token(self, **overrides) -> str:
        """A fresh GitHub-shaped token of the job RUN_ID (attempt 1)."""
        return self.gh.sign(github_claims(self.gh.issuer, run_id=RUN_ID, run_attempt="1", **overrides))

    def partner_token(self, sub: str = PARTNER_SUB, jti: str | None = None) -> str:
        t = now()
        claims = {"iss": self.partner.issuer, "aud": AUDIENCE, "sub": sub, "iat": t, "nbf": t, "exp": t + 300,
                  "jti": uuid.uuid4().hex if jti is None else jti}
        return self.partner.sign(claims)

    def revoke_own_task(self, assertion: str, task: str, role_name: str) -> Resp:
        """A workload ending its own task: `POST /v1/revoke` with its assertion, no admin credential."""
        r = requests.post(self.url + "/v1/revoke", timeout=HTTP_TIMEOUT, data={
            "task": task, "subject_token": assertion, "subject_token_type": ID_TOKEN, "audience": role_name})
        return Resp(r.status_code, r.headers, r.json(), r.text)

    def admin_revoke(self, **form) -> requests.Response:
        return requests.post(self.url + "/v1/revoke", data=form, headers=admin(), timeout=HTTP_TIMEOUT)

    def active(self, token: str) -> bool:
        r = requests.post(self.url + "/v1/introspect", data={"token": token}, headers=admin(), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["active"]

    def credential(self, token: str, role_name: str) -> str:
        r = self.broker.exchange(token, role=role_name)
        assert r.status == 200, r
        return r.json["access_token"]

    def revoke_records(self) -> list[tuple]:
        return [(r.get("task"), r["detail"]) for r in self.broker.audit() if r["decision"] == "revoke"]


@pytest.fixture
def ns(broker_factory, mock_factory, tmp_path):
    return Namespaces(broker_factory, mock_factory, tmp_path)


# ---- a workload ending "its own task" -------------------------------------------------------------


def test_a_partner_token_whose_jti_is_a_github_task_does_not_end_that_github_job(ns):
    """Review C3's reproduction: the partner names the GitHub job's task as its own (its `jti`);
    its revocation is in its own namespace, and the GitHub job keeps exchanging."""
    job = ns.credential(ns.github_token(), "deploy")
    claims = verify_broker_jwt(ns.broker, job)
    assert (claims["task"], claims["provider"]) == (GH_TASK, "github"), claims

    r = ns.revoke_own_task(ns.partner_token(jti=GH_TASK), GH_TASK, "partner-role")
    assert r.status == 200 and r.json["revoked"] == f"task:partner:{GH_TASK}", r
    # the audit: the detail names the namespaced key, the record's task is the bare task
    assert ns.revoke_records() == [(GH_TASK, f"revoked `task:partner:{GH_TASK}`")]

    fresh = ns.broker.exchange(ns.github_token(), role="deploy")
    assert fresh.status == 200, fresh  # before the fix: policy_denied, revoked (task:GH_TASK)
    assert ns.active(job) is True
    # what the partner did end is its own: a partner token of that task is refused
    mine = ns.broker.exchange(ns.partner_token(jti=GH_TASK), role="partner-role")
    assert mine.status == 400 and mine.reason == "policy_denied", mine
    assert f"revoked (task:partner:{GH_TASK})" in mine.description, mine


def test_the_github_job_ending_its_own_task_is_refused_after(ns):
    # the twin: the GitHub job's own revocation ends it (key task:github:…), its live JWT included
    job = ns.credential(ns.github_token(), "deploy")
    r = ns.revoke_own_task(ns.github_token(), GH_TASK, "deploy")
    assert r.status == 200 and r.json["revoked"] == f"task:github:{GH_TASK}", r
    assert ns.revoke_records() == [(GH_TASK, f"revoked `task:github:{GH_TASK}`")]
    fresh = ns.broker.exchange(ns.github_token(), role="deploy")
    assert fresh.status == 400 and fresh.reason == "policy_denied", fresh
    assert f"revoked (task:github:{GH_TASK})" in fresh.description, fresh
    assert ns.active(job) is False
    # a partner token with that task string as its jti is another provider's task: allowed
    assert ns.broker.exchange(ns.partner_token(jti=GH_TASK), role="partner-role").status == 200


# ---- an admin's subject revocation ---------------------------------------------------------------


@pytest.mark.parametrize("revoked, spared", [("partner", "github"), ("github", "partner")])
def test_an_admin_subject_revocation_in_one_provider_spares_the_same_subject_in_the_other(ns, revoked, spared):
    """The same subject string in both providers (the partner's `sub` copies the GitHub job's
    subject): an admin revokes it in one provider (`provider=`); the other provider's workload of
    that subject keeps exchanging and its live JWT stays active. Both directions."""
    tokens = {"github": lambda: ns.github_token(), "partner": lambda: ns.partner_token(sub=GH_SUBJECT)}
    roles = {"github": "deploy", "partner": "partner-mirror"}
    live = {p: ns.credential(tokens[p](), roles[p]) for p in roles}
    assert {p: verify_broker_jwt(ns.broker, t)["sub"] for p, t in live.items()} == \
        {"github": GH_SUBJECT, "partner": GH_SUBJECT}
    listed = requests.get(ns.url + "/v1/grants", headers=admin(), timeout=HTTP_TIMEOUT)
    assert listed.status_code == 200, listed.text
    assert sorted((g["provider"], g["subject"]) for g in listed.json()["grants"]) == \
        [("github", GH_SUBJECT), ("partner", GH_SUBJECT)]

    r = ns.admin_revoke(subject=GH_SUBJECT, provider=revoked)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:{revoked}:{GH_SUBJECT}", r.text
    refused = ns.broker.exchange(tokens[revoked](), role=roles[revoked])
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert f"revoked (subject:{revoked}:{GH_SUBJECT})" in refused.description, refused
    assert ns.active(live[revoked]) is False
    # the other provider's workload of the same subject string is untouched
    assert ns.broker.exchange(tokens[spared](), role=roles[spared]).status == 200
    assert ns.active(live[spared]) is True


# ---- provider names -------------------------------------------------------------------------------


def check_provider_name(ephemera_bin, tmp_path, name: str):
    """`ephemera check` on a config whose one provider (and its role) is called `name`."""
    cfg = broker_config(tmp_path, [provider(name, "https://ci.example.com")], [role("deploy", name)])
    path = tmp_path / "ephemera.toml"
    path.write_text(to_toml(cfg))
    return run_cli(ephemera_bin, ["check", "--config", str(path)])


@pytest.mark.parametrize("name", ["git:hub", "git hub", "a/b", "g\u00efthub"])
def test_a_provider_name_outside_the_namespace_charset_is_a_config_error(ephemera_bin, tmp_path, name):
    """A provider's name is the namespace of its keys (`task:NAME:ID`): no `:` (the key would read
    two ways), nor anything but ASCII letters, digits, `-`, `_` and `.`."""
    r = check_provider_name(ephemera_bin, tmp_path, name)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"providers[0] (`{name}`).name: letters, digits, `-`, `_` and `.` only" in r.stderr, r.stderr


def test_a_provider_name_of_letters_digits_dash_underscore_and_dot_loads(ephemera_bin, tmp_path):
    # the twin
    r = check_provider_name(ephemera_bin, tmp_path, "gh-1.x_Y")
    assert r.returncode == 0 and r.stdout.startswith("ok: 1 provider(s)"), (r.returncode, r.stdout, r.stderr)


# ---- the github-actions profile's lifetime cap ---------------------------------------------------


@pytest.fixture
def github_only(broker_factory, mock_issuer):
    """One github-actions provider without `max_token_lifetime`: the profile's default cap."""
    prov = github_provider("github", mock_issuer.issuer)
    assert "max_token_lifetime" not in prov
    return broker_factory(providers=[prov], roles=[cloud_role("deploy", "github", JWT_CREDENTIAL)])


def six_hour_token(mock, lifetime: int) -> str:
    """A GitHub-hosted runner's token as observed: nbf = iat - 300, exp = iat + lifetime."""
    t = now()
    return mock.sign(github_claims(mock.issuer, iat=t, nbf=t - 300, exp=t + lifetime))


def test_a_github_token_of_six_hours_is_accepted_by_the_profile_default(github_only, mock_issuer):
    r = github_only.exchange(six_hour_token(mock_issuer, 21600))
    print(f"github-actions default cap: exp - iat = 21600 -> {r.status} {r.reason or ''}")
    assert r.status == 200, r  # before: 400 lifetime_too_long


def test_a_github_token_a_second_over_six_hours_is_lifetime_too_long(github_only, mock_issuer):
    # the twin: one second more is over the cap
    r = github_only.exchange(six_hour_token(mock_issuer, 21601))
    print(f"github-actions default cap: exp - iat = 21601 -> {r.status} {r.reason or ''}")
    assert (r.status, r.error, r.reason) == (400, "invalid_request", "lifetime_too_long"), r
