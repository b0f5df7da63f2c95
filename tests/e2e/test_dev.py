"""`ephemera dev`: embedded defaults with a demo issuer, for trying the broker on one machine."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat
import subprocess
import time

import jwt
import pytest
import requests

from harness import GRANT, ID_TOKEN, PARTNER, HTTP_TIMEOUT, STARTUP_TIMEOUT, free_port, require_peer


class DevBroker:
    def __init__(self, binary, tmp_path):
        self.tmp = tmp_path
        self.stderr_path = tmp_path / "dev.stderr"
        env = dict(os.environ, TMPDIR=str(tmp_path), RUST_LOG="info")
        for attempt in range(3):
            port = free_port()
            self._err = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen([str(binary), "dev", "--listen", f"127.0.0.1:{port}"],
                                         stdout=subprocess.DEVNULL, stderr=self._err,
                                         stdin=subprocess.DEVNULL, env=env)
            self.url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            self.stop()
            if "cannot listen" not in self.stderr() or attempt == 2:
                raise RuntimeError(f"dev broker did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()

    def demo_token(self, overrides: dict | None = None) -> str:
        r = requests.post(self.url + "/demo/token", json=overrides, timeout=HTTP_TIMEOUT) \
            if overrides else requests.post(self.url + "/demo/token", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.text.strip()

    def exchange(self, token: str, role: str = "demo") -> requests.Response:
        return requests.post(self.url + "/v1/token", data={
            "grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN,
            "audience": role}, timeout=HTTP_TIMEOUT)


@pytest.fixture
def dev(ephemera_bin, tmp_path):
    d = DevBroker(ephemera_bin, tmp_path)
    yield d
    d.stop()


def test_dev_says_it_is_not_for_production_and_prints_a_curl(dev):
    err = dev.stderr()
    assert re.search(r"not for production", err, re.IGNORECASE), err
    assert "curl " in err and f"{dev.url}/v1/token" in err
    assert f"{dev.url}/demo/token" in err


def test_dev_demo_exchange_verifies_with_pyjwt(dev):
    token = dev.demo_token()
    r = dev.exchange(token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and "refresh_token" not in body
    assert r.headers["Cache-Control"] == "no-store"
    client = jwt.PyJWKClient(dev.url + "/.well-known/jwks.json", cache_keys=False)
    key = client.get_signing_key_from_jwt(body["access_token"])
    claims = jwt.decode(body["access_token"], key.key, algorithms=["ES256"], audience=PARTNER,
                        issuer=dev.url)
    demo = jwt.decode(token, options={"verify_signature": False})
    # sub is the workload's subject as the demo role's profile names it (not necessarily the
    # token's own `sub` string)
    assert claims["sub"] and "acme" in claims["sub"] and claims["role"] == "demo"
    assert claims["src_iss"] == demo["iss"]
    assert claims["exp"] <= demo["exp"]
    assert body["expires_in"] == claims["exp"] - claims["iat"]
    # the broker's discovery document points at that JWKS
    disco = requests.get(dev.url + "/.well-known/openid-configuration", timeout=HTTP_TIMEOUT).json()
    assert disco["issuer"] == dev.url
    assert disco["jwks_uri"] == dev.url + "/.well-known/jwks.json"
    # and the same demo token a second time is a replay
    r = dev.exchange(token)
    assert r.status_code == 400 and r.json()["error_description"].startswith("token_replayed: ")


def test_dev_demo_token_for_another_branch_is_denied(dev):
    r = dev.exchange(dev.demo_token({"ref": "refs/heads/dev"}))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_target"
    assert body["error_description"].startswith("policy_denied: ")
    assert "ref" in body["error_description"] and "refs/heads/dev" in body["error_description"]
    # twin
    assert dev.exchange(dev.demo_token({"ref": "refs/heads/main"})).status_code == 200


@pytest.mark.parametrize("body", ["[1,2]", '"ref"', "null", "42", "{not json"])
def test_dev_demo_issuer_rejects_non_object_overrides(dev, body):
    r = requests.post(dev.url + "/demo/token", data=body, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400
    assert r.text == "body must be a JSON object of claims to set\n"
    # the twin: an empty object of overrides signs the default demo token, which the role allows
    ok = requests.post(dev.url + "/demo/token", data="{}", timeout=HTTP_TIMEOUT)
    assert ok.status_code == 200, ok.text
    assert ok.headers["Content-Type"].startswith("text/plain")
    assert dev.exchange(ok.text.strip()).status_code == 200


def test_dev_printed_curl_works(dev):
    for tool in ("curl", "bash"):
        require_peer(tool, shutil.which(tool) is not None, "apt-get install curl bash; scripts/test installs curl")
    lines = [ln.strip() for ln in dev.stderr().splitlines() if ln.strip().startswith("curl ")]
    assert len(lines) >= 2, dev.stderr()
    out = subprocess.run(["bash", "-c", lines[0]], capture_output=True, text=True, timeout=60)
    assert '"access_token"' in out.stdout, out
    out = subprocess.run(["bash", "-c", lines[1]], capture_output=True, text=True, timeout=60)
    assert "policy_denied" in out.stdout, out


@pytest.mark.parametrize("method,path,allow", [
    ("PUT", "/demo/jwks", "GET,HEAD"), ("POST", "/demo/.well-known/openid-configuration", "GET,HEAD"),
    ("GET", "/demo/token", "POST"), ("DELETE", "/demo/token", "POST"),
])
def test_dev_demo_routes_answer_a_wrong_method_in_json(dev, method, path, allow):
    """Fault review B7: the demo routes answered a wrong method with an empty 405. Now the same
    RFC 6749 JSON 405 as the broker's own routes; the twin: the right method works."""
    r = requests.request(method, dev.url + path, timeout=HTTP_TIMEOUT)
    assert r.status_code == 405 and r.headers.get("Allow") == allow, (r.status_code, r.headers, r.text)
    assert r.json()["error"] == "invalid_request" and r.json()["error_description"].startswith("method_not_allowed")
    right = requests.request("GET" if allow.startswith("GET") else "POST", dev.url + path, data="{}" if allow == "POST" else None,
                             timeout=HTTP_TIMEOUT)
    assert right.status_code == 200, right.text


def test_dev_works_in_a_new_private_directory_of_its_own(dev):
    """Security review C13: `dev` used `$TMPDIR/ephemera-dev-<pid>`, accepted it if it existed and
    followed symlinks in it, so a local user could pre-create it and make `dev` overwrite files.
    Now the directory has an unpredictable name, is created new with mode 0700, and the demo JWKS
    is a new file in it. The twin: the audit log is written there as before."""
    m = re.search(r"Audit log: (\S+)", dev.stderr())
    assert m, dev.stderr()
    audit = pathlib.Path(m.group(1))
    d = audit.parent
    assert d.parent == dev.tmp, d
    assert re.fullmatch(rf"ephemera-dev-{dev.proc.pid}-[A-Za-z0-9_-]{{12}}", d.name), d.name
    assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)
    assert not (d / "demo-jwks.json").is_symlink() and (d / "demo-jwks.json").is_file()
    # a directory at the old predictable name is not used (nothing was written into it)
    assert not (dev.tmp / f"ephemera-dev-{dev.proc.pid}").exists()


def test_dev_writes_its_config_and_prints_the_explain_command_and_an_admin_credential(dev, ephemera_bin):
    """Newcomer frictions 5 and 9: the config `dev` runs is on disk, and the printed `explain`
    command checks a demo token against it (allow); the printed admin credential lists grants,
    and a wrong credential is refused (the twin)."""
    for tool in ("curl", "bash"):
        require_peer(tool, shutil.which(tool) is not None, "apt-get install curl bash; scripts/test installs curl")
    [explain_line] = [ln.strip() for ln in dev.stderr().splitlines() if "ephemera explain --config" in ln]
    config = pathlib.Path(re.search(r"--config (\S+)", explain_line).group(1))
    assert config.is_file() and stat.S_IMODE(config.stat().st_mode) == 0o600, config
    cmd = explain_line.replace("ephemera explain", f"'{ephemera_bin}' explain")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, cwd=dev.tmp)
    assert out.returncode == 0 and "decision: ALLOW" in out.stdout, out
    m = re.search(r"Admin credential \(dev only\): (\S+)\s+\(in (\S+)\)", dev.stderr())
    assert m, dev.stderr()
    token, token_file = m.group(1), pathlib.Path(m.group(2))
    assert token_file.read_text() == token and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    base = re.search(r"(http://127\.0\.0\.1:\d+)/demo", dev.stderr()).group(1)
    r = requests.get(base + "/v1/grants", headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and "grants" in r.json(), r.text
    r = requests.get(base + "/v1/grants", headers={"Authorization": "Bearer " + "x" * 32}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, r.text
    res = subprocess.run([str(ephemera_bin), "grants", "--broker", base, "--admin-token-file", str(token_file)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res
