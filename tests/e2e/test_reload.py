"""Policy reload on SIGHUP (ATTACKS.md 60): a config with a syntax error, an unscoped role or a
policy that does not validate is refused and the last good one keeps serving; a valid new policy
applies to the very next exchange, and its version is in the audit records."""

from __future__ import annotations

import signal

from harness import DEFAULT_CONDITIONS, role, to_toml, wait_until


def versions(broker) -> list[str]:
    return [r["policy_version"] for r in broker.audit()]


def hup_with(broker, text: str):
    broker.config_path.write_text(text)
    before = broker.stderr().count("config reload")
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: broker.stderr().count("config reload") > before, 10, what="reload logged")


def test_bad_configs_are_refused_and_a_good_one_applies_next(broker, mock_issuer):
    assert broker.exchange(mock_issuer.token()).status == 200
    good_version = versions(broker)[-1]
    release = mock_issuer.token(ref="refs/heads/release")
    assert broker.exchange(release).reason == "policy_denied"

    # 1. a syntax error; 2. a role that pins nothing; 3. raw Cedar that does not validate
    unscoped = dict(broker.config)
    unscoped["roles"] = [dict(role("deploy", "mock"), conditions={"ref": "refs/heads/main"})]
    invalid = dict(broker.config)
    invalid["roles"] = [dict(role("deploy", "mock"), policy="permit(principal, action, resource) when { principal.nope == 1 };")]
    for text in (to_toml(broker.config) + "\n[[roles]\n", to_toml(unscoped), to_toml(invalid)):
        hup_with(broker, text)
        assert "config reload refused" in broker.stderr()
        r = broker.exchange(mock_issuer.token())
        assert r.status == 200, r  # the last good config serves
        assert versions(broker)[-1] == good_version

    # a valid new policy (release branch instead of main) applies to the very next exchange
    changed = dict(broker.config)
    changed["roles"] = [role("deploy", "mock", conditions=dict(DEFAULT_CONDITIONS, ref="refs/heads/release"))]
    hup_with(broker, to_toml(changed))
    ok = broker.exchange(mock_issuer.token(ref="refs/heads/release"))
    assert ok.status == 200, ok
    assert broker.exchange(mock_issuer.token()).reason == "policy_denied"
    assert versions(broker)[-1] != good_version
