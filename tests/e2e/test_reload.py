"""Policy reload on SIGHUP (ATTACKS.md 60): a config with a syntax error, an unscoped role or a
policy that does not validate is refused and the last good one keeps serving; a valid new policy
applies to the very next exchange, and its version (the first 16 hex digits of the file's SHA-256)
is in the audit records. A changed listener is reported as needing a restart, not applied."""

from __future__ import annotations

import copy
import hashlib
import json
import signal

import pytest
import requests

from harness import DEFAULT_CONDITIONS, free_port, role, run_cli, to_toml, wait_until

REFUSED = "config reload refused; the last good config keeps serving"
RELOADED = "config reloaded"
NEEDS_RESTART = "config reloaded, but this setting needs a restart to change"


def versions(broker) -> list[str]:
    return [r["policy_version"] for r in broker.audit()]


def file_version(path) -> str:
    """README: a config's version is the first 16 hex digits of the SHA-256 of its file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def events(broker, message: str) -> list[dict]:
    """The broker's log events (`serve` logs JSON lines) with exactly this message."""
    out = []
    for line in broker.stderr().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(e, dict) and e.get("fields", {}).get("message") == message:
            out.append(e)
    return out


def hup_with(broker, text: str, outcome: str) -> list[dict]:
    """Writes the config, sends SIGHUP and waits for one more `outcome` event (REFUSED or
    RELOADED, the last line either path logs); returns the events logged since."""
    broker.config_path.write_text(text)
    before = {m: len(events(broker, m)) for m in (REFUSED, RELOADED, NEEDS_RESTART)}
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(events(broker, outcome)) > before[outcome], 10, what=f"{outcome!r} logged")
    after = {m: events(broker, m) for m in before}
    # exactly one reload happened, with exactly this outcome
    for m in (REFUSED, RELOADED):
        assert len(after[m]) == before[m] + (m == outcome), (m, before, {k: len(v) for k, v in after.items()})
    return after[NEEDS_RESTART][before[NEEDS_RESTART]:]


def test_bad_configs_are_refused_and_a_good_one_applies_next(broker, mock_issuer, ephemera_bin):
    assert broker.exchange(mock_issuer.token()).status == 200
    good_version = versions(broker)[-1]
    # computed here from the file's bytes, and the same as `ephemera check` states
    assert good_version == file_version(broker.config_path)
    checked = run_cli(ephemera_bin, ["check", "--config", str(broker.config_path)])
    assert checked.returncode == 0 and checked.stdout.strip().endswith(f"version {good_version}"), checked
    release = mock_issuer.token(ref="refs/heads/release")
    assert broker.exchange(release).reason == "policy_denied"

    # 1. a syntax error; 2. a role that pins nothing; 3. raw Cedar that does not validate
    unscoped = dict(broker.config)
    unscoped["roles"] = [dict(role("deploy", "mock"), conditions={"ref": "refs/heads/main"})]
    invalid = dict(broker.config)
    invalid["roles"] = [dict(role("deploy", "mock"), policy="permit(principal, action, resource) when { principal.nope == 1 };")]
    for text in (to_toml(broker.config) + "\n[[roles]\n", to_toml(unscoped), to_toml(invalid)):
        hup_with(broker, text, REFUSED)
        # the refusal names the version still in force
        assert events(broker, REFUSED)[-1]["fields"]["version"] == good_version
        r = broker.exchange(mock_issuer.token())
        assert r.status == 200, r  # the last good config serves
        assert versions(broker)[-1] == good_version

    # a valid new policy (release branch instead of main) applies to the very next exchange
    changed = dict(broker.config)
    changed["roles"] = [role("deploy", "mock", conditions=dict(DEFAULT_CONDITIONS, ref="refs/heads/release"))]
    text = to_toml(changed)
    assert hup_with(broker, text, RELOADED) == []  # nothing that needs a restart changed
    assert events(broker, RELOADED)[-1]["fields"]["version"] == file_version(broker.config_path)
    ok = broker.exchange(mock_issuer.token(ref="refs/heads/release"))
    assert ok.status == 200, ok
    assert broker.exchange(mock_issuer.token()).reason == "policy_denied"
    assert versions(broker)[-1] == file_version(broker.config_path) != good_version


def test_a_changed_listener_needs_a_restart_and_the_reload_says_so(broker, mock_issuer):
    # README: "Listener, state, audit and key-cache settings need a restart (a reload says so)".
    assert broker.exchange(mock_issuer.token()).status == 200
    release_only = [role("deploy", "mock", conditions=dict(DEFAULT_CONDITIONS, ref="refs/heads/release"))]
    # the twin: a policy change alone applies and reports nothing to restart
    policy_only = copy.deepcopy(broker.config)
    policy_only["roles"] = release_only
    assert hup_with(broker, to_toml(policy_only), RELOADED) == []
    assert broker.exchange(mock_issuer.token(ref="refs/heads/release")).status == 200

    # the same config with the listener moved: the policy part applies (back to main), the
    # listener does not, and the reload says which setting needs a restart
    moved = copy.deepcopy(broker.config)
    new_port = free_port()
    moved["server"]["listen"] = f"127.0.0.1:{new_port}"
    text = to_toml(moved)
    restart = hup_with(broker, text, RELOADED)
    assert [e["fields"]["key"] for e in restart] == ["server.listen"], restart
    assert all(e["level"] == "WARN" for e in restart), restart
    # the old listener still serves, under the new policy
    ok = broker.exchange(mock_issuer.token())
    assert ok.status == 200, ok
    assert broker.exchange(mock_issuer.token(ref="refs/heads/release")).reason == "policy_denied"
    assert versions(broker)[-1] == file_version(broker.config_path)
    # and nothing listens on the new address
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{new_port}/healthz", timeout=5)

    # the config in force kept the running listener: going back to it reports nothing
    assert hup_with(broker, to_toml(broker.config), RELOADED) == []
    # key-cache settings ([jwks]) are fixed at start too, and the reload says so
    cache = copy.deepcopy(broker.config)
    cache["jwks"] = {"refresh_cooldown": "1h"}
    restart = hup_with(broker, to_toml(cache), RELOADED)
    assert [e["fields"]["key"] for e in restart] == ["jwks"], restart
    assert broker.exchange(mock_issuer.token()).status == 200
