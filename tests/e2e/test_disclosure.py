"""What a denial reveals to the caller: `[server] detail` (README "What a denial reveals").

`"full"` gives every failed check with expected vs got; `"reason"` the reason slug
and what failed, without values; `"none"` the slug only. Every answer keeps its `(decision ID)`,
and the audit record always has the full detail."""

from __future__ import annotations

import re

import pytest

from harness import AUDIENCE, now

# Values that only the full detail may carry: the claim the workload presented, the value the
# role expects, the audience the token named and the one the provider takes, the broker's clock.
DEV_REF = "refs/heads/dev-disclosure-canary"
MAIN_REF = "refs/heads/main"
OTHER_AUD = "aud-disclosure-canary"


def refusals(broker, mock):
    """One policy denial, one audience mismatch, one expired token; each with the values its full
    description would show."""
    t = now()
    return [
        ("policy_denied", broker.exchange(mock.token(ref=DEV_REF)), [DEV_REF, MAIN_REF]),
        ("audience_mismatch", broker.exchange(mock.token(aud=OTHER_AUD)), [OTHER_AUD, AUDIENCE]),
        ("token_expired", broker.exchange(mock.token(iat=t - 900, nbf=t - 900, exp=t - 300)), [str(t - 300)]),
    ]


# What each mode answers, by reason: a regex over the whole error_description (the decision id
# suffix included).
SUFFIX = r" \(decision [A-Za-z0-9_-]+\)$"
EXPECTED = {
    "full": {
        "policy_denied": r"^policy_denied: policy denied role `deploy`: condition ref: expected "
                         + re.escape(f"`{MAIN_REF}`, got `{DEV_REF}`") + SUFFIX,
        "audience_mismatch": r"^audience_mismatch: audience mismatch: token aud .*" + re.escape(OTHER_AUD)
                             + r".* does not include any of .*" + re.escape(AUDIENCE) + r".*" + SUFFIX,
        "token_expired": r"^token_expired: token expired: broker clock \d+, token iat \d+ nbf \d+ exp \d+, "
                         r"leeway \d+s" + SUFFIX,
    },
    "reason": {
        "policy_denied": r"^policy_denied: role `deploy`: condition ref" + SUFFIX,
        "audience_mismatch": r"^audience_mismatch: check audience failed" + SUFFIX,
        "token_expired": r"^token_expired: check expiry failed" + SUFFIX,
    },
    "none": {
        "policy_denied": r"^policy_denied" + SUFFIX,
        "audience_mismatch": r"^audience_mismatch" + SUFFIX,
        "token_expired": r"^token_expired" + SUFFIX,
    },
}


@pytest.mark.parametrize("mode", ["full", "reason", "none"])
def test_detail_mode_decides_what_a_denial_reveals(broker_factory, mock_issuer, mode):
    # "none" answers `policy_denied (decision …)` without a colon, which the teardown's audit
    # invariant (reason = text before the first colon) cannot read: this test checks every answer
    # against its audit record itself, in every mode.
    # "reason" is serve's default (review C16): no key at all
    server = {"detail": None} if mode == "reason" else {"detail": mode}
    b = broker_factory(issuer=mock_issuer, server=server, check_invariants=False)
    for reason, r, values in refusals(b, mock_issuer):
        desc = r.description
        assert r.status == 400, r
        assert re.match(EXPECTED[mode][reason], desc), (mode, reason, desc)
        if mode != "full":
            # the values are not in the answer, wherever they might be put
            leaked = [v for v in values if v in desc]
            assert not leaked, (mode, reason, desc)
            assert not re.search(r"\d{6,}", desc.rsplit(" (decision", 1)[0]), desc  # no clock value
        # the decision id in the answer finds the audit record, which has everything
        m = re.search(r"\(decision ([A-Za-z0-9_-]+)\)$", desc)
        assert m, desc
        rec = b.audit_record(m.group(1))
        assert rec["decision"] == "deny" and rec["reason"] == reason, rec
        assert all(v in rec["detail"] for v in values), (rec["detail"], values)
        assert re.match(EXPECTED["full"][reason], rec["detail"] + " (decision x)"), rec["detail"]
    # the twin, in every mode: a token the role allows is answered with a credential
    assert b.exchange(mock_issuer.token()).status == 200
    assert sum(rec["decision"] == "allow" for rec in b.audit()) == 1


def test_an_unknown_detail_mode_is_a_config_error(ephemera_bin, tmp_path, mock_issuer):
    from harness import broker_config, free_port, provider, role, run_cli, to_toml

    def check(detail):
        cfg = broker_config(tmp_path, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                            port=free_port(), server={"detail": detail})
        path = tmp_path / f"{detail}.toml"
        path.write_text(to_toml(cfg))
        return run_cli(ephemera_bin, ["check", "--config", str(path)])

    bad = check("values")
    assert bad.returncode == 2 and "server.detail: `values` is not one of full, reason, none" in bad.stderr, bad
    assert check("reason").returncode == 0, check("reason")  # the twin
