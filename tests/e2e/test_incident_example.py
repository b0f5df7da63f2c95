"""The use-limited, record-scoped grant example (issue 15 part F), end to end: the broker on
examples/incident-reader.toml (with its commented introspector block uncommented, the mock issuer
in place of the agents' issuer, loopback ports and files in the test's folder; everything else as
the file says) and examples/incident_api.py as its own process, asked over HTTP as an agent would.

The API checks the record the token names BEFORE consuming it: a read of another record is
refused and leaves the token's one use for the record it was issued for.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib

import pytest
import requests

from harness import (
    HTTP_TIMEOUT,
    REPO,
    Broker,
    free_port,
    good_claims,
    readline_within,
    verify_broker_jwt,
)

EXAMPLE = REPO / "examples" / "incident-reader.toml"
API = REPO / "examples" / "incident_api.py"
ROLE = "incident-reader"
AUDIENCE = "incident-api"
ADMIN_TOKEN = "admin-" + "i" * 40
API_CREDENTIAL = "incident-api-" + "c" * 40


def load_api_module():
    spec = importlib.util.spec_from_file_location("incident_api", API)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_config(workdir, issuer: str) -> dict:
    """The example as the broker will run it here: its `[[admin.introspectors]]` block
    uncommented (the credential file written in `workdir`), plus an admin credential for the
    test's own checks."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[admin.introspectors]]")
    end = start
    while end < len(lines) and lines[end].startswith("# "):
        end += 1
    lines[start:end] = [line[2:] for line in lines[start:end]]
    cfg = tomllib.loads("\n".join(lines) + "\n")
    [introspector] = cfg["admin"]["introspectors"]
    assert introspector["audiences"] == [AUDIENCE], introspector
    (workdir / introspector["token_file"]).write_text(API_CREDENTIAL + "\n")
    introspector["token_file"] = str(workdir / introspector["token_file"])
    (workdir / "admin.token").write_text(ADMIN_TOKEN)
    cfg["admin"]["token_file"] = str(workdir / "admin.token")
    port = free_port()
    cfg["server"].update({"listen": f"127.0.0.1:{port}", "issuer": f"http://127.0.0.1:{port}", "detail": "full"})
    cfg["audit"]["path"] = str(workdir / cfg["audit"]["path"])
    [prov] = cfg["providers"]
    prov["issuer"] = issuer
    return cfg


class Example:
    def __init__(self, ephemera_bin, mock, tmp_path):
        self.mock = mock
        workdir = tmp_path / "broker"
        workdir.mkdir()
        self.cfg = example_config(workdir, mock.issuer)
        self.broker = Broker(ephemera_bin, workdir, self.cfg)
        [self.role] = self.cfg["roles"]
        [self.provider] = self.cfg["providers"]
        self.api_proc = subprocess.Popen(
            [sys.executable, str(API), "--broker", self.broker.url, "--credential-file",
             self.cfg["admin"]["introspectors"][0]["token_file"], "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "incident_api.stderr", "wb"), stdin=subprocess.DEVNULL)
        line = readline_within(self.api_proc, 30).decode()
        assert line.startswith("listening on http://127.0.0.1:"), (line, (tmp_path / "incident_api.stderr").read_text())
        self.api = line.split()[-1]
        self.answers: dict[str, int] = {}

    def close(self):
        if self.api_proc.poll() is None:
            self.api_proc.terminate()
            self.api_proc.wait(timeout=10)
        self.api_proc.stdout.close()
        self.broker.stop()

    def assertion(self) -> str:
        """The agent's ID token, as the example's provider and role conditions want it."""
        return self.mock.sign(good_claims(self.mock.issuer, aud=self.provider["audiences"][0], repository=None,
                                          ref=None, **self.role["conditions"]))

    def exchange(self, details, assertion: str | None = None):
        """The agent's exchange; `details` (a list) sent as `authorization_details`, None: none."""
        extra = {} if details is None else {"authorization_details": json.dumps(details)}
        return self.broker.exchange(assertion or self.assertion(), role=ROLE, extra=extra)

    def token_for(self, record_id: str) -> str:
        details = [{"type": "incident_record", "record_id": record_id}]
        r = self.exchange(details)
        assert r.status == 200, r
        assert r.json["authorization_details"] == details, r.json  # RFC 9396 §7: echoed as granted
        claims = verify_broker_jwt(self.broker, r.json["access_token"], audience=AUDIENCE)
        assert claims["max_uses"] == 1 and claims["authorization_details"] == details, claims
        return r.json["access_token"]

    def read(self, record_id: str, token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        r = requests.get(f"{self.api}/incidents/{record_id}", headers=headers, timeout=HTTP_TIMEOUT)
        self.answers[str(r.status_code)] = self.answers.get(str(r.status_code), 0) + 1
        return r

    def introspect(self, token: str) -> dict:
        """The admin's plain introspection (takes no use)."""
        r = requests.post(self.broker.url + "/v1/introspect", data={"token": token},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def example(ephemera_bin, mock_issuer, tmp_path):
    e = Example(ephemera_bin, mock_issuer, tmp_path)
    yield e
    e.close()


def test_the_example_config_passes_check(ephemera_bin):
    """As committed (the introspector block commented out), from the repository's root."""
    res = subprocess.run([str(ephemera_bin), "check", "--config", str(EXAMPLE.relative_to(REPO))],
                         capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res
    assert res.stdout.startswith("ok: 1 provider(s), 1 role(s)"), res.stdout


def test_a_record_is_read_once_with_a_token_naming_it(example):
    records = load_api_module().RECORDS
    token = example.token_for("INC-1")
    assert example.introspect(token)["uses_remaining"] == 1
    first = example.read("INC-1", token)
    assert first.status_code == 200, first.text
    assert first.json() == records["INC-1"]
    # the one use is spent: the same token again is refused, and the broker says it is used up
    again = example.read("INC-1", token)
    assert again.status_code == 403, again.text
    assert example.introspect(token) == {"active": False}
    # the twin: a fresh token reads the record
    assert example.read("INC-1", example.token_for("INC-1")).status_code == 200
    print(f"incident_read_once: answers by status {example.answers}")
    example.broker.check_audit_invariants()


def test_a_token_for_another_record_is_refused_without_spending_its_use(example):
    records = load_api_module().RECORDS
    token = example.token_for("INC-1")
    other = example.read("INC-2", token)
    assert other.status_code == 403, other.text
    assert other.json()["error"] == "insufficient_scope" and "id" not in other.json(), other.text
    # checked before consuming: the use is still there, and reads the record it names
    state = example.introspect(token)
    assert state["active"] is True and state["uses_remaining"] == 1, state
    ok = example.read("INC-1", token)
    assert ok.status_code == 200 and ok.json() == records["INC-1"], ok.text
    assert example.read("INC-1", token).status_code == 403
    print(f"incident_other_record: answers by status {example.answers}")
    example.broker.check_audit_invariants()


def test_the_api_wants_a_token_and_the_role_wants_authorization_details(example):
    # no bearer token: 401 with the RFC 6750 challenge
    r = example.read("INC-1", None)
    assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Bearer", r.text
    # something that is no broker JWT: inactive to the broker, 403
    assert example.read("INC-1", "not-a-jwt").status_code == 403
    # the role requires authorization_details: an exchange without them is refused, and the
    # assertion is not spent (RFC 9396 §5); the twin with them is issued
    assertion = example.assertion()
    refused = example.exchange(None, assertion)
    assert (refused.status, refused.error) == (400, "invalid_authorization_details"), refused
    # a field the role does not declare, and another record type
    for bad in ([{"type": "incident_record", "record_id": "INC-1", "severity": "high"}],
                [{"type": "incident_note", "record_id": "INC-1"}]):
        r = example.exchange(bad, assertion)
        assert (r.status, r.error) == (400, "invalid_authorization_details"), (bad, r)
    details = [{"type": "incident_record", "record_id": "INC-1"}]
    ok = example.exchange(details, assertion)  # the same assertion: not spent by the refusals
    assert ok.status == 200, ok
    assert example.read("INC-1", ok.json["access_token"]).status_code == 200
    print(f"incident_refusals: answers by status {example.answers}")
    example.broker.check_audit_invariants()
