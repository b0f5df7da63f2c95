"""Policy reload on SIGHUP (ATTACKS.md 60): a config with a syntax error, an unscoped role or a
policy that does not validate is refused and the last good one keeps serving; a valid new policy
applies to the very next exchange, and its version (the first 16 hex digits of the file's SHA-256)
is in the audit records. A config that changes a setting fixed at start (the listeners, the
signing keys, the HTTP limits, state, audit, the key cache, the GCP endpoint) is refused whole
(review C14): each such key is logged as an error, nothing of the file applies — not even its
policy —, and the last good config keeps serving; the same policy change alone then applies.
(What a reload does to cached issuer keys: test_reload_keys.py.)"""

from __future__ import annotations

import copy
import hashlib
import json
import signal

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import DEFAULT_CONDITIONS, free_port, role, run_cli, to_toml, wait_until

REFUSED = "config reload refused; the last good config keeps serving"
RELOADED = "config reloaded"
NEEDS_RESTART = "config reload refused: this setting needs a restart to change"

RELEASE_ONLY = [role("deploy", "mock", conditions=dict(DEFAULT_CONDITIONS, ref="refs/heads/release"))]


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
    """Writes the config, sends SIGHUP, waits for the reload's last line (REFUSED or RELOADED,
    whichever it is) and asserts it is `outcome`; returns the needs-a-restart events logged since."""
    broker.config_path.write_text(text)
    before = {m: len(events(broker, m)) for m in (REFUSED, RELOADED, NEEDS_RESTART)}
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: sum(len(events(broker, m)) for m in (REFUSED, RELOADED)) > before[REFUSED] + before[RELOADED],
               10, what="the reload's outcome logged")
    after = {m: events(broker, m) for m in before}
    got = {m: len(after[m]) - before[m] for m in (REFUSED, RELOADED)}
    # exactly one reload happened, with exactly this outcome
    assert got == {REFUSED: outcome == REFUSED, RELOADED: outcome == RELOADED}, \
        f"expected {outcome!r}, the reload logged {got}"
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
        assert hup_with(broker, text, REFUSED) == []  # refused for its errors, not for a restart
        # the refusal names the version still in force
        assert events(broker, REFUSED)[-1]["fields"]["version"] == good_version
        r = broker.exchange(mock_issuer.token())
        assert r.status == 200, r  # the last good config serves
        assert versions(broker)[-1] == good_version

    # a valid new policy (release branch instead of main) applies to the very next exchange
    changed = dict(broker.config)
    changed["roles"] = RELEASE_ONLY
    text = to_toml(changed)
    assert hup_with(broker, text, RELOADED) == []  # nothing that needs a restart changed
    assert events(broker, RELOADED)[-1]["fields"]["version"] == file_version(broker.config_path)
    ok = broker.exchange(mock_issuer.token(ref="refs/heads/release"))
    assert ok.status == 200, ok
    assert broker.exchange(mock_issuer.token()).reason == "policy_denied"
    assert versions(broker)[-1] == file_version(broker.config_path) != good_version


def assert_refused_whole(broker, mock_issuer, changed: dict, key: str, good_version: str):
    """`changed` (a start-fixed setting changed, and the policy moved to the release branch) is
    refused naming `key`, and none of it applies: the old policy decides, under the old version."""
    restart = hup_with(broker, to_toml(changed), REFUSED)
    assert [e["fields"]["key"] for e in restart] == [key], restart
    assert all(e["level"] == "ERROR" for e in restart), restart
    assert events(broker, REFUSED)[-1]["fields"]["version"] == good_version
    ok = broker.exchange(mock_issuer.token())
    assert ok.status == 200, ok  # main still allowed: the file's policy did not apply either
    assert broker.exchange(mock_issuer.token(ref="refs/heads/release")).reason == "policy_denied"
    assert versions(broker)[-2:] == [good_version, good_version]
    assert file_version(broker.config_path) != good_version


def assert_policy_alone_applies(broker, mock_issuer):
    """The twin: the same policy change without the start-fixed setting applies, naming nothing."""
    policy_only = copy.deepcopy(broker.config)
    policy_only["roles"] = RELEASE_ONLY
    assert hup_with(broker, to_toml(policy_only), RELOADED) == []
    ok = broker.exchange(mock_issuer.token(ref="refs/heads/release"))
    assert ok.status == 200, ok
    assert broker.exchange(mock_issuer.token()).reason == "policy_denied"
    assert versions(broker)[-1] == file_version(broker.config_path)


def test_a_changed_listener_needs_a_restart_and_the_reload_says_so(broker, mock_issuer):
    # README: a reload that changes a setting fixed at start is refused whole, naming the keys; a
    # moved listener with a policy change: neither applies (the name is the one tests/CLAIMS.md cites)
    assert broker.exchange(mock_issuer.token()).status == 200
    good_version = versions(broker)[-1]
    moved = copy.deepcopy(broker.config)
    new_port = free_port()
    moved["server"]["listen"] = f"127.0.0.1:{new_port}"
    moved["roles"] = RELEASE_ONLY
    assert_refused_whole(broker, mock_issuer, moved, "server.listen", good_version)
    # the old listener serves (above) and nothing listens on the new address
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{new_port}/healthz", timeout=5)
    assert_policy_alone_applies(broker, mock_issuer)


def write_signing_key(path):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


# (the key the refusal names, a change of the config dict fixed at start; `d` is a scratch dir)
START_FIXED = {
    "server.max_body_size": ("server.max_body_size", lambda c, d: c["server"].update(max_body_size=4096)),
    "server.header_read_timeout": ("server.header_read_timeout",
                                   lambda c, d: c["server"].update(header_read_timeout="3s")),
    "server.request_timeout": ("server.request_timeout", lambda c, d: c["server"].update(request_timeout="7s")),
    "server.rate_limit_per_second": ("server.rate_limit_per_second",
                                     lambda c, d: c["server"].update(rate_limit_per_second=0)),
    "server.rate_limit_burst": ("server.rate_limit_burst", lambda c, d: c["server"].update(rate_limit_burst=3)),
    "server.signing_key_file": ("server.signing_key_file",
                                lambda c, d: c["server"].update(signing_key_file=write_signing_key(d / "next.pem"))),
    "server.publish_key_files": ("server.publish_key_files",
                                 lambda c, d: c["server"].update(publish_key_files=[write_signing_key(d / "pub.pem")])),
    "admin.listen": ("admin.listen", lambda c, d: c["admin"].update(listen=f"127.0.0.1:{free_port()}")),
    "audit.path": ("audit.path", lambda c, d: c["audit"].update(path=str(d / "elsewhere.jsonl"))),
    "state.max_entries": ("state", lambda c, d: c["state"].update(max_entries=1000)),
    "jwks.allow_private_addresses": ("jwks", lambda c, d: c.update(jwks={"allow_private_addresses": True})),
    "jwks.refresh_cooldown": ("jwks", lambda c, d: c.update(jwks={"refresh_cooldown": "1h"})),
    "gcp.iam_credentials_url": ("gcp.iam_credentials_url",
                                lambda c, d: c.update(gcp={"iam_credentials_url": f"http://127.0.0.1:{free_port()}"})),
}


@pytest.mark.parametrize("setting", list(START_FIXED))
def test_a_reload_changing_a_start_fixed_setting_is_refused_naming_it(broker_factory, mock_issuer, tmp_path, setting):
    key, change = START_FIXED[setting]
    token_file = tmp_path / "admin.token"
    token_file.write_text("admin-" + "z" * 40)
    broker = broker_factory(issuer=mock_issuer, extra_config={"admin": {"token_file": str(token_file)}})
    assert broker.exchange(mock_issuer.token()).status == 200
    good_version = versions(broker)[-1]
    changed = copy.deepcopy(broker.config)
    change(changed, tmp_path)
    changed["roles"] = RELEASE_ONLY
    assert_refused_whole(broker, mock_issuer, changed, key, good_version)
    if setting == "audit.path":
        assert not (tmp_path / "elsewhere.jsonl").exists()  # records still go to the audit log in force
    assert_policy_alone_applies(broker, mock_issuer)
    print(f"{setting}: refused naming `{key}`; the policy change alone applied")
