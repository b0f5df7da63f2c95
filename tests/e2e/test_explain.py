"""`ephemera explain` runs the server's decision functions: same token, same config, same reason;
it never marks a token used; `--at` evaluates at a chosen instant; bad configs exit 2."""

from __future__ import annotations

import json

import pytest

from harness import (
    LocalKey,
    good_claims,
    now,
    provider,
    role,
    run_cli,
    to_toml,
)


def explain(broker, token: str, tmp_path, role_name="deploy", at: int | None = None,
            json_out=True, config=None):
    tf = tmp_path / f"token-{abs(hash(token)) % 10**8}.jwt"
    tf.write_text(token + "\n")
    args = ["explain", "--config", str(config or broker.config_path), "--role", role_name,
            "--token-file", str(tf)]
    if at is not None:
        args += ["--at", str(at)]
    if json_out:
        args.append("--json")
    res = run_cli(broker.binary, args)
    doc = json.loads(res.stdout) if json_out and res.stdout.strip().startswith("{") else None
    return res, doc


DEFECTS = {
    "policy_ref": (dict(ref="refs/heads/dev"), "policy_denied"),
    "policy_repository": (dict(repository="acme/App"), "policy_denied"),
    "audience": (dict(aud="https://other.example"), "audience_mismatch"),
    "expired": ("expired", "token_expired"),
    "not_yet_valid": ("nbf", "token_not_yet_valid"),
    "unknown_kid": ("kid", "unknown_key"),
    "signature": ("sig", "signature_invalid"),
    "alg_none": ("none", "alg_not_allowed"),
    "issuer": (dict(iss="https://evil.example"), "issuer_not_trusted"),
}


def make_defective(mock, defect):
    t = now()
    spec, _ = DEFECTS[defect]
    if isinstance(spec, dict):
        return mock.token(**spec) if "iss" not in spec else mock.sign(good_claims(spec["iss"]))
    if spec == "expired":
        return mock.token(iat=t - 900, nbf=t - 900, exp=t - 300)
    if spec == "nbf":
        return mock.token(nbf=t + 3600, exp=t + 7200)
    if spec == "kid":
        return mock.token(header={"kid": "nope"})
    if spec == "sig":
        h, p, s = mock.token().split(".")
        return f"{h}.{p}.{s[:-6]}AAAAAA"
    if spec == "none":
        return mock.sign(good_claims(mock.issuer), header={"alg": "none"}, sign_alg="none")
    raise AssertionError(defect)


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_explain_agrees_with_the_server(broker, mock_issuer, tmp_path, defect):
    token = make_defective(mock_issuer, defect)
    expected = DEFECTS[defect][1]
    r = broker.exchange(token)
    assert r.status == 400 and r.reason == expected, r
    # explain at the server's own clock (its audit record's), so descriptions that state the
    # clock agree even when the second ticked between the two
    at = broker.audit_record(r.decision_id)["ts"]
    res, doc = explain(broker, token, tmp_path, at=at)
    assert res.returncode == 3, res
    assert doc["decision"] == "deny"
    assert doc["reason"] == expected == r.reason
    # the description is the server's, up to the decision id the server appends
    assert r.description.startswith(doc["error_description"]), (r.description, doc)
    # plain output names the reason too
    res, _ = explain(broker, token, tmp_path, json_out=False)
    assert res.returncode == 3
    assert f"DENY ({expected})" in res.stdout
    assert token not in res.stdout + res.stderr


def test_explain_names_the_failed_condition(broker, mock_issuer, tmp_path):
    token = mock_issuer.token(ref="refs/heads/dev", repository="ACME/app")
    res, doc = explain(broker, token, tmp_path)
    assert res.returncode == 3
    conds = {c["claim"]: c for c in doc["trace"]["decision"]["conditions"]}
    assert conds["ref"]["pass"] is False and conds["ref"]["got"] == "refs/heads/dev"
    assert conds["ref"]["expected"] == "refs/heads/main"
    assert conds["repository"]["pass"] is False and conds["repository"].get("hint")
    assert all(c["status"] == "pass" for c in doc["trace"]["checks"])


def test_explain_allows_a_good_token_and_does_not_spend_it(broker, mock_issuer, tmp_path):
    token = mock_issuer.token()
    for _ in range(2):
        res, doc = explain(broker, token, tmp_path)
        assert res.returncode == 0, res
        assert doc["decision"] == "allow" and doc["reason"] is None
        assert 0 < doc["trace"]["lifetime"] <= 300
        assert {c["status"] for c in doc["trace"]["checks"]} == {"pass"}
    res, _ = explain(broker, token, tmp_path, json_out=False)
    assert res.returncode == 0 and "decision: ALLOW" in res.stdout
    # the server exchange afterwards succeeds: explain marked nothing used
    r = broker.exchange(token)
    assert r.status == 200, r
    assert broker.exchange(token).reason == "token_replayed"


def test_explain_at_pins_the_clock(broker_factory, tmp_path):
    """Clock edges, deterministic through --at (leeway 60 s), on pinned keys."""
    key = LocalKey("p1", "EC")
    iss = "http://127.0.0.1:9/pinned"
    jwks = key.write_jwks(tmp_path / "jwks.json")
    b = broker_factory([provider("pinned", iss, jwks_file=str(jwks))], [role("deploy", "pinned")])
    T = 1_800_000_000

    def at(claims_over, when=T):
        c = good_claims(iss, iat=T - 100, nbf=T - 100, exp=T + 100)
        c.update(claims_over)
        return explain(b, key.sign(c), tmp_path, at=when)

    res, doc = at({})
    assert res.returncode == 0, res
    assert doc["trace"]["now"] == T and doc["trace"]["lifetime"] == 100
    # exp = now-59: verification passes (inside the leeway) but there is no lifetime left to give
    res, doc = at({"exp": T - 59})
    assert res.returncode == 3 and doc["reason"] == "token_expired"
    assert {c["status"] for c in doc["trace"]["checks"]} == {"pass"}
    # exp = now-61: the expiry check fails
    res, doc = at({"exp": T - 61})
    assert res.returncode == 3 and doc["reason"] == "token_expired"
    failed = [c["check"] for c in doc["trace"]["checks"] if c["status"] == "fail"]
    assert failed == ["expiry"]
    # nbf = now+60 passes, now+61 fails
    assert at({"nbf": T + 60})[0].returncode == 0
    res, doc = at({"nbf": T + 61})
    assert doc["reason"] == "token_not_yet_valid"
    # iat = now+60 passes, now+61 / now+120 fail
    assert at({"iat": T + 60})[0].returncode == 0
    assert at({"iat": T + 61})[1]["reason"] == "iat_in_future"
    assert at({"iat": T + 120})[1]["reason"] == "iat_in_future"
    # the same token a day later is expired; a day earlier not yet valid
    assert at({}, when=T + 86400)[1]["reason"] == "token_expired"
    assert at({}, when=T - 86400)[1]["reason"] in ("token_not_yet_valid", "iat_in_future")
    # lifetime is bounded by the assertion's exp at the chosen instant
    res, doc = at({"exp": T + 30})
    assert res.returncode == 0 and doc["trace"]["lifetime"] == 30


def test_explain_unknown_role(broker, mock_issuer, tmp_path):
    """explain runs on the operator's own config: an unknown role is a usage error (2, not the
    deny's 3) naming the roles there are (newcomer friction 9). Twin: a known role decides."""
    res, doc = explain(broker, mock_issuer.token(), tmp_path, role_name="nope")
    assert res.returncode == 2 and doc is None, res
    assert "no role `nope`" in res.stderr and "roles: deploy" in res.stderr, res.stderr
    res, doc = explain(broker, mock_issuer.token(), tmp_path, role_name="deploy")
    assert res.returncode == 0 and doc["decision"] == "allow", res


def test_explain_claims_names_the_issuer_binding(broker, tmp_path):
    """A synthetic claim set with another issuer: every condition may pass, and the deny names
    the issuer the role's permit is bound to, expected vs got (newcomer friction 8). Twin: the
    provider's own issuer is allowed."""
    provider_issuer = broker.config["providers"][0]["issuer"]
    good = dict(iss=provider_issuer, sub="repo:acme/app:ref:refs/heads/main", aud="x",
                repository="acme/app", ref="refs/heads/main")
    for iss, rc in ((provider_issuer, None), ("https://evil.example", 3)):
        f = tmp_path / f"claims-{rc}.json"
        f.write_text(json.dumps(dict(good, iss=iss)))
        res = run_cli(broker.binary, ["explain", "--config", str(broker.config_path), "--role", "deploy",
                                      "--claims", str(f), "--json"])
        doc = json.loads(res.stdout)
        rows = [c for c in doc["trace"]["decision"]["conditions"] if c["claim"] == "iss"]
        if rc is None:
            assert rows == [], rows
        else:
            assert res.returncode == 3 and doc["reason"] == "policy_denied", res
            [row] = rows
            assert row["pass"] is False and row["got"] == iss and provider_issuer in row["expected"], row
            assert "condition iss: expected" in doc["error_description"], doc


BAD_CONFIGS = {
    "unknown_key": (lambda c: c["server"].update(colour="red"), "colour"),
    "hs256": (lambda c: c["providers"][0].update(algorithms=["HS256"]), "algorithms"),
    "none_alg": (lambda c: c["providers"][0].update(algorithms=["none"]), "algorithms"),
    "role_provider": (lambda c: c["roles"][0].update(provider="ghost"), "provider"),
    "duration": (lambda c: c["roles"][0].update(max_ttl="fifteen"), "max_ttl"),
    "own_issuer": (lambda c: c["providers"][0].update(issuer=c["server"]["issuer"]), "issuer"),
    "http_issuer": (lambda c: c["providers"][0].update(issuer="http://ci.example.com"), "issuer"),
    "no_audience": (lambda c: c["providers"][0].update(audiences=[]), "audiences"),
}


@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
def test_bad_config_exits_2(broker, mock_issuer, tmp_path, bad):
    import copy
    cfg = copy.deepcopy(broker.config)
    mutate, key = BAD_CONFIGS[bad]
    mutate(cfg)
    path = tmp_path / f"bad-{bad}.toml"
    path.write_text(to_toml(cfg))
    token = mock_issuer.token()
    res, _ = explain(broker, token, tmp_path, config=path)
    assert res.returncode == 2, res
    # every problem is one `config error: <key>: ...` line (a TOML syntax error quotes the
    # offending source lines under its own)
    assert res.stderr.startswith("config error: "), res.stderr
    assert key in res.stderr
    for cmd in (["check", "--config", str(path)], ["serve", "--config", str(path)]):
        r2 = run_cli(broker.binary, cmd, timeout=30)
        assert r2.returncode == 2, (cmd, r2)
        assert "config error: " in r2.stderr
    # twin: the original config is fine
    assert run_cli(broker.binary, ["check", "--config", str(broker.config_path)]).returncode == 0
    assert broker.exchange(token).status == 200


def test_explain_missing_token_file_is_usage_error(broker, mock_issuer, tmp_path):
    path = tmp_path / "missing.jwt"
    args = ["explain", "--config", str(broker.config_path), "--role", "deploy", "--token-file", str(path)]
    res = run_cli(broker.binary, args)
    assert res.returncode == 2, res
    # the message names the file (a config error would name a config key instead)
    assert res.stderr.startswith(f"error: {path}: "), res.stderr
    assert "config error" not in res.stderr
    assert res.stdout == ""
    # the twin: the same command once the file exists
    path.write_text(mock_issuer.token() + "\n")
    res = run_cli(broker.binary, args)
    assert res.returncode == 0, res
    assert "decision: ALLOW" in res.stdout


def write_claims(tmp_path, claims: dict, name="claims.json"):
    path = tmp_path / name
    path.write_text(json.dumps(claims))
    return path


def test_explain_claims_evaluates_a_synthetic_claim_set(broker, mock_issuer, tmp_path):
    """README: `explain --claims CLAIMS.json` runs the profile and the role's conditions on claims
    alone (no signature), to write roles before any token exists."""
    T = 1_800_000_000
    claims = good_claims(mock_issuer.issuer, iat=T - 10, nbf=T - 10, exp=T + 100)
    fetches = mock_issuer.fetches()

    def run(c, role_name="deploy", json_out=True):
        args = ["explain", "--config", str(broker.config_path), "--role", role_name,
                "--claims", str(write_claims(tmp_path, c)), "--at", str(T)]
        res = run_cli(broker.binary, args + (["--json"] if json_out else []))
        return res, (json.loads(res.stdout) if json_out else None)

    res, doc = run(claims)
    assert res.returncode == 0, res
    assert doc["decision"] == "allow" and doc["reason"] is None
    assert doc["trace"]["now"] == T and doc["trace"]["lifetime"] == 100
    assert doc["trace"]["checks"] == [], "no verification: there is no token"
    conds = {c["claim"]: c for c in doc["trace"]["decision"]["conditions"]}
    assert set(conds) == {"sub", "repository", "ref"} and all(c["pass"] for c in conds.values())
    # the twin: one claim off, denied with that condition named
    res, doc = run(dict(claims, ref="refs/heads/dev"))
    assert res.returncode == 3, res
    assert doc["reason"] == "policy_denied"
    conds = {c["claim"]: c for c in doc["trace"]["decision"]["conditions"]}
    assert conds["ref"]["pass"] is False and conds["ref"]["got"] == "refs/heads/dev"
    # plain output
    res, _ = run(dict(claims, ref="refs/heads/dev"), json_out=False)
    assert res.returncode == 3 and "DENY (policy_denied)" in res.stdout
    # it never needed the issuer: no fetch of its discovery document or keys
    assert mock_issuer.fetches() == fetches
    # a claims file that is not a JSON object is a usage error naming the file
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = run_cli(broker.binary, ["explain", "--config", str(broker.config_path), "--role", "deploy",
                                  "--claims", str(bad)])
    assert res.returncode == 2 and res.stderr.startswith(f"error: {bad}: "), res
    # --claims and --token-file are one or the other
    res = run_cli(broker.binary, ["explain", "--config", str(broker.config_path), "--role", "deploy",
                                  "--claims", str(bad), "--token-file", str(bad)])
    assert res.returncode == 2 and "cannot be used with" in res.stderr, res


def test_explain_deny_names_the_closest_roles(broker, mock_issuer, tmp_path):
    """README: on a deny, explain names the closest roles: the same provider's other roles, fewest
    failed conditions first, each with the conditions it would fail."""
    # a token for the release branch, presented for `deploy`: `release` would allow it
    token = mock_issuer.token(ref="refs/heads/release")
    res, doc = explain(broker, token, tmp_path)
    assert res.returncode == 3 and doc["reason"] == "policy_denied", res
    assert doc["closest_roles"] == [{"role": "release", "allow": True, "failed": []}]
    res, _ = explain(broker, token, tmp_path, json_out=False)
    assert "closest role release: every condition passes" in res.stdout.splitlines()
    # a token neither role allows: `release` is named with the condition it fails
    res, doc = explain(broker, mock_issuer.token(ref="refs/heads/dev"), tmp_path)
    assert res.returncode == 3
    assert doc["closest_roles"] == [{"role": "release", "allow": False, "failed": [
        "condition ref: expected `refs/heads/release`, got `refs/heads/dev`"]}]
    # the same from a claim set
    claims = write_claims(tmp_path, good_claims(mock_issuer.issuer, ref="refs/heads/release"))
    res = run_cli(broker.binary, ["explain", "--config", str(broker.config_path), "--role", "deploy",
                                  "--claims", str(claims), "--json"])
    assert res.returncode == 3
    assert json.loads(res.stdout)["closest_roles"] == [{"role": "release", "allow": True, "failed": []}]
    # the twins: an allow names none, and neither does a deny before any policy ran
    res, doc = explain(broker, mock_issuer.token(), tmp_path)
    assert res.returncode == 0 and doc["closest_roles"] == []
    res, doc = explain(broker, make_defective(mock_issuer, "expired"), tmp_path)
    assert res.returncode == 3 and doc["reason"] == "token_expired" and doc["closest_roles"] == []
