"""Issue 17 (part): the GitHub Action in examples/github-action/, run the way a runner runs it.

The action is a JavaScript action (only JavaScript and container actions have a post step) whose
main.js and post.js run ephemera-action.sh; the tests run the script with bash and, for the whole
path, through `node main.js` / `node post.js`. Around it, what a GitHub-hosted job has:

- the step's environment: `INPUT_<NAME>` for every input of action.yml (its default when the
  workflow gives none: the runner does the same), `RUNNER_OS`/`RUNNER_ARCH`/`RUNNER_TEMP`/
  `RUNNER_TOOL_CACHE`, `GITHUB_REPOSITORY_ID`/`GITHUB_RUN_ID`/`GITHUB_RUN_ATTEMPT`, and the files
  `GITHUB_ENV`, `GITHUB_OUTPUT`, `GITHUB_STATE`, `GITHUB_PATH`; the post step gets what the main
  step saved as `STATE_<name>`, and later steps the variables and PATH entries it exported;
- a fake `ACTIONS_ID_TOKEN_REQUEST_URL` endpoint: checks the runtime bearer token and answers a
  fresh GitHub-shaped ID token (a mock issuer's) for the audience asked for;
- a fake release server (http on 127.0.0.1) serving a tarball made by `scripts/release` from the
  binary under test (EPHEMERA_RELEASE_BIN when set), in a copy of the repository whose
  checksums.txt that run of `scripts/release --pin` pinned: exactly what a release does;
- a real broker with the admin credential, to introspect the job's broker JWT and read its audit.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import tarfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from harness import (
    AUDIENCE,
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    PARTNER,
    REPO,
    cloud_role,
    free_port,
    github_claims,
    github_provider,
    require_module,
    require_peer,
    verify_broker_jwt,
)

ACTION = REPO / "examples" / "github-action"
SCRIPT_NAME = "ephemera-action.sh"
ROLE = "partner"
ADMIN_TOKEN = "admin-action-" + "g" * 40
BEARER = "ghs_runtime-token-of-this-job-0123456789"
# The job: the task the github-actions profile derives is REPOSITORY_ID/RUN_ID/RUN_ATTEMPT.
RUN_ATTEMPT = "1"
ARCH = {"x86_64": ("X64", "x86_64-unknown-linux-gnu"), "aarch64": ("ARM64", "aarch64-unknown-linux-gnu")}
NO_PIN = "no SHA-256 pinned for ephemera {version} {target}: give the sha256 input or use a released version"


def script_default(name: str) -> str:
    """A `NAME=value` default at the top of ephemera-action.sh."""
    return re.search(rf"^{name}=(\S+)$", (ACTION / SCRIPT_NAME).read_text(), re.M).group(1)


def action_yml() -> dict:
    return require_module("yaml").safe_load((ACTION / "action.yml").read_text())


def env_file(path: Path) -> dict[str, str]:
    """A runner file of `name=value` lines (the action writes no `name<<DELIMITER` blocks)."""
    out = {}
    for line in path.read_text().splitlines():
        assert "=" in line and "<<" not in line.split("=", 1)[0], line
        name, value = line.split("=", 1)
        out[name] = value
    return out


# ---- fakes --------------------------------------------------------------------------------------


class FakeIdTokenEndpoint:
    """ACTIONS_ID_TOKEN_REQUEST_URL: `{"value": ID token}` for the job's runtime bearer token, a new
    token (new `jti`) for every request, for the `audience` asked for, signed by the mock issuer.
    `claims` may be changed between requests (a job whose claims the role no longer allows)."""

    def __init__(self, mock, claims: dict):
        self.claims = claims
        self.requests: list[dict] = []
        self.issued: list[str] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization") or ""
                fake.requests.append({"auth": auth, "query": q})
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or token != BEARER:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                aud = q.get("audience", ["https://github.com/acme"])[0]
                token = mock.sign(dict(fake.claims, aud=aud, jti=uuid.uuid4().hex))
                fake.issued.append(token)
                body = json.dumps({"count": 1, "value": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/_apis/distributedtask/token?api-version=2.0"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def audiences(self) -> list[str]:
        return [r["query"]["audience"][0] for r in self.requests]

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class FakeReleaseServer:
    """Release downloads: GET of a path in `files` answers the file, anything else 404."""

    def __init__(self):
        self.files: dict[str, Path] = {}
        self.requests: list[str] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                fake.requests.append(self.path)
                f = fake.files.get(self.path)
                if f is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(f.stat().st_size))
                self.end_headers()
                with f.open("rb") as src:
                    shutil.copyfileobj(src, self.wfile, 1 << 20)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/releases/download"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def serve(self, version: str, asset: str, path: Path) -> None:
        self.files[f"/releases/download/v{version}/{asset}"] = path

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ---- the release (scripts/release in a copy of the repository) ---------------------------------


def copy_repo(dest: Path) -> Path:
    """What scripts/release reads and writes: itself, Cargo.toml, README.md (and license files),
    and the action directory whose checksums.txt `--pin` writes."""
    (dest / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "release", dest / "scripts" / "release")
    for f in ["Cargo.toml", "README.md", *(p.name for p in REPO.glob("LICENSE*"))]:
        shutil.copy2(REPO / f, dest / f)
    shutil.copytree(ACTION, dest / "examples" / "github-action")
    return dest


def release_binary(ephemera_bin: Path) -> Path:
    """The stripped release binary when scripts/test built it, else the binary under test."""
    found = os.environ.get("EPHEMERA_RELEASE_BIN")
    return Path(found) if found else ephemera_bin


class Release:
    def __init__(self, root: Path, binary: Path):
        self.repo = copy_repo(root / "repo")
        self.dist = root / "dist"
        self.binary = binary
        self.result = self.run("--binary", str(binary), "--out", str(self.dist), "--pin")
        assert self.result.returncode == 0, self.result.stderr
        [self.tarball] = self.dist.glob("ephemera-*.tar.gz")
        m = re.fullmatch(r"ephemera-(\d+\.\d+\.\d+)-(.+)\.tar\.gz", self.tarball.name)
        self.version, self.target = m.group(1), m.group(2)
        self.sha256 = hashlib.sha256(self.tarball.read_bytes()).hexdigest()
        self.action = self.repo / "examples" / "github-action"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.repo / "scripts" / "release"), *args], capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def release(tmp_path_factory, ephemera_bin) -> Release:
    return Release(tmp_path_factory.mktemp("release"), release_binary(ephemera_bin))


def evil_tarball(path: Path, version: str, target: str, marker: Path) -> Path:
    """A well-formed release tarball whose `ephemera` records that it ran (in `marker`)."""
    body = f"#!/bin/sh\necho ran >> '{marker}'\necho 'ephemera 6.6.6'\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(f"ephemera-{version}-{target}/ephemera")
        info.size, info.mode = len(body), 0o755
        t.addfile(info, io.BytesIO(body))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


# ---- the job ------------------------------------------------------------------------------------


class Job:
    """One GitHub Actions job around the action: the runner's files and variables, the fakes, the
    broker. `main()`/`post()` run the action's steps; `step()` a later step of the job."""

    def __init__(self, broker_factory, mock, tmp_path: Path):
        self.tmp = tmp_path
        self.run_id = str(5_000_000_000 + uuid.uuid4().int % 1_000_000_000)
        self.task = f"{GH_REPOSITORY_ID}/{self.run_id}/{RUN_ATTEMPT}"
        self.ids = FakeIdTokenEndpoint(mock, github_claims(mock.issuer, run_id=self.run_id, run_attempt=RUN_ATTEMPT))
        self.releases = FakeReleaseServer()
        admin_file = tmp_path / "admin.token"
        admin_file.write_text(ADMIN_TOKEN)
        port = free_port()
        self.broker_url = f"http://127.0.0.1:{port}"
        # the broker URL is an audience too: the action's default audience
        self.broker = broker_factory(
            providers=[github_provider("github", mock.issuer, audiences=[AUDIENCE, self.broker_url])],
            roles=[cloud_role(ROLE, "github", {"kind": "jwt", "audience": PARTNER})],
            server={"listen": f"127.0.0.1:{port}", "issuer": self.broker_url},
            extra_config={"admin": {"token_file": str(admin_file)}}, check_invariants=False)
        assert self.broker.url == self.broker_url
        arch = ARCH.get(platform.machine())
        assert arch, f"no release target for {platform.machine()}"
        self.runner_arch, self.target = arch
        self.tool_cache = tmp_path / "toolcache"
        self.runner_temp = tmp_path / "runner-temp"
        self.tool_cache.mkdir()
        self.runner_temp.mkdir()
        self.github_env = tmp_path / "github_env"
        self.github_path = tmp_path / "github_path"
        self.github_env.write_text("")
        self.github_path.write_text("")
        self.state: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.n = 0

    def close(self):
        self.ids.close()
        self.releases.close()
        # the installed binaries are large; the tmp dir outlives the test
        shutil.rmtree(self.tool_cache, ignore_errors=True)
        shutil.rmtree(self.runner_temp, ignore_errors=True)

    # -- the environment of a step
    def base_env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "/usr/bin:/bin")
        entries = [p for p in self.github_path.read_text().splitlines() if p]
        env = {"PATH": ":".join([*reversed(entries), path]), "HOME": str(self.tmp), "LANG": "C.UTF-8",
               "CI": "true", "GITHUB_ACTIONS": "true",
               "RUNNER_OS": "Linux", "RUNNER_ARCH": self.runner_arch, "RUNNER_TEMP": str(self.runner_temp),
               "RUNNER_TOOL_CACHE": str(self.tool_cache),
               "GITHUB_REPOSITORY": "acme/app", "GITHUB_REPOSITORY_ID": GH_REPOSITORY_ID,
               "GITHUB_RUN_ID": self.run_id, "GITHUB_RUN_ATTEMPT": RUN_ATTEMPT,
               "GITHUB_ENV": str(self.github_env), "GITHUB_PATH": str(self.github_path),
               "ACTIONS_ID_TOKEN_REQUEST_URL": self.ids.url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": BEARER}
        env.update(env_file(self.github_env))  # what earlier steps exported
        return env

    def _files(self, env: dict) -> tuple[Path, Path]:
        self.n += 1
        out, state = self.tmp / f"github_output.{self.n}", self.tmp / f"github_state.{self.n}"
        out.write_text("")
        state.write_text("")
        env.update(GITHUB_OUTPUT=str(out), GITHUB_STATE=str(state))
        return out, state

    def _run(self, action: Path, step: str, env: dict, runner: str) -> subprocess.CompletedProcess:
        if runner == "node":
            cmd = ["node", str(action / f"{step}.js")]
        else:
            cmd = ["bash", str(action / SCRIPT_NAME), step]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
                           cwd=self.tmp)
        # the log as the runner shows it: a masked value is `***` (the test credentials stay out of logs)
        log = r.stdout + r.stderr
        for secret in commands(r.stdout, "add-mask"):
            log = log.replace(secret, "***")
        print(f"--- {step} ({runner}) exit {r.returncode}\n{log}")
        return r

    def main(self, action: Path = ACTION, runner: str = "bash", overrides: dict | None = None,
             **inputs: str) -> subprocess.CompletedProcess:
        """The main step with `inputs` (names as in action.yml; `_` for `-`); every other input
        of action.yml gets its default, as the runner does. `overrides` changes the environment."""
        inputs = {k.replace("_", "-"): v for k, v in inputs.items()}
        declared = yaml_inputs(action)
        assert set(inputs) <= set(declared), set(inputs) - set(declared)
        env = self.base_env()
        for name, spec in declared.items():
            env[f"INPUT_{name.upper()}"] = inputs.get(name, str(spec.get("default", "")))
        env.update(overrides or {})
        out, state = self._files(env)
        r = self._run(action, "main", env, runner)
        self.outputs = env_file(out)
        self.state = env_file(state)
        return r

    def post(self, action: Path = ACTION, runner: str = "bash") -> subprocess.CompletedProcess:
        env = self.base_env()
        env.update({f"STATE_{k}": v for k, v in self.state.items()})
        self._files(env)
        return self._run(action, "post", env, runner)

    def step(self, script: str) -> subprocess.CompletedProcess:
        """A later `run:` step of the job (the action's exports in its environment)."""
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=self.base_env(),
                              timeout=60, stdin=subprocess.DEVNULL)

    # -- the broker
    def active(self, token: str) -> bool:
        r = requests.post(self.broker.url + "/v1/introspect", data={"token": token},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["active"]

    def revocations(self) -> list[dict]:
        return [r for r in self.broker.audit() if r["decision"] == "revoke"]

    def decisions(self) -> list[tuple[str, str | None]]:
        return [(r["decision"], r.get("reason")) for r in self.broker.audit()]


def yaml_inputs(action: Path) -> dict:
    return require_module("yaml").safe_load((action / "action.yml").read_text())["inputs"]


@pytest.fixture
def job(broker_factory, mock_issuer, tmp_path):
    j = Job(broker_factory, mock_issuer, tmp_path)
    yield j
    j.close()


def require_node():
    require_peer("node", shutil.which("node") is not None, "apt-get install nodejs; scripts/test installs it")


def commands(stdout: str, name: str) -> list[str]:
    """The data of the `::NAME::` workflow commands in a step's output."""
    return [line[len(name) + 4:] for line in stdout.splitlines() if line.startswith(f"::{name}::")]


def assert_not_logged(r: subprocess.CompletedProcess, secrets: list[str], masked: list[str] = ()):
    """No secret in the step's log except in its own `::add-mask::` line (which the runner
    consumes before anything is shown)."""
    for s in secrets:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if s in ln]
        expected = [f"::add-mask::{s}"] if s in masked else []
        assert lines == expected, f"a secret in the log: {lines}"


# ---- the action's metadata ----------------------------------------------------------------------


def test_the_action_is_a_javascript_action_whose_post_step_always_runs():
    """action.yml: `node24`, main.js and post.js, `post-if: always()` (the post step also runs
    when a later step of the job failed: that is when ending the task matters). Its inputs are
    the ones the script reads, its defaults the script's."""
    a = action_yml()
    assert a["runs"] == {"using": "node24", "main": "main.js", "post": "post.js", "post-if": "always()"}
    for js, step in (("main.js", "main"), ("post.js", "post")):
        assert f"require('./run')('{step}');" in (ACTION / js).read_text()
    assert "spawnSync('bash'" in (ACTION / "run.js").read_text()
    script = (ACTION / SCRIPT_NAME).read_text()
    read = set(re.findall(r"^\s*input \S+ (\S+)", script, re.M))
    assert read == set(a["inputs"]), read ^ set(a["inputs"])
    assert {n for n, i in a["inputs"].items() if i.get("required")} == {"broker", "role"}
    assert a["inputs"]["version"]["default"] == script_default("DEFAULT_VERSION")
    assert a["inputs"]["release-url"]["default"] == script_default("DEFAULT_RELEASE_URL")
    assert a["inputs"]["end-task"]["default"] == "true" and a["inputs"]["format"]["default"] == "github-env"
    assert set(a["outputs"]) == {"ephemera-path", "version", "expires-at", "task", "credential-file", "token-type",
                                 "issued-token-type"}
    # the written outputs are the declared ones
    written = set(re.findall(r"^\s*output (\S+) ", script, re.M))
    assert written == set(a["outputs"]), written ^ set(a["outputs"])
    # a versioned action: the example workflow and the docs use the tag of the release it installs
    tag = f"ephemera-dev/ephemera/examples/github-action@v{a['inputs']['version']['default']}"
    assert tag in (REPO / "examples" / "github-actions-workflow.yml").read_text()
    assert tag in (REPO / "docs" / "github-action.md").read_text()


# ---- the whole path -----------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["bash", "node"])
def test_main_installs_the_pinned_release_exchanges_and_post_ends_the_task(job, release, runner):
    """main: downloads the release for the runner, checks its pinned SHA-256, installs it in the
    tool cache and on the job's PATH, exchanges the job's ID token (asked for the `audience`
    input), exports the credential to later steps, masked; its outputs. post: `ephemera end-task`
    with a fresh ID token ends the job's task: the broker JWT that main obtained now introspects
    `active: false`, and the audit has the workload's revocation of its task."""
    if runner == "node":
        require_node()
    asset = release.tarball.name
    assert release.target == job.target, "the release is for this machine"
    job.releases.serve(release.version, asset, release.tarball)
    r = job.main(release.action, runner, broker=job.broker.url, role=ROLE, audience=AUDIENCE,
                 release_url=job.releases.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert job.releases.requests == [f"/releases/download/v{release.version}/{asset}"]
    assert f"SHA-256 of {asset} verified: {release.sha256}" in r.stdout

    installed = job.tool_cache / "ephemera" / release.version / release.target / "ephemera"
    assert installed.is_file() and os.access(installed, os.X_OK)
    assert job.github_path.read_text() == f"{installed.parent}\n"
    exported = env_file(job.github_env)
    assert set(exported) == {"EPHEMERA_TOKEN", "EPHEMERA_TOKEN_EXPIRES_AT"}
    token = exported["EPHEMERA_TOKEN"]
    claims = verify_broker_jwt(job.broker, token)
    assert claims["task"] == job.task
    expires_at = dt.datetime.fromtimestamp(int(exported["EPHEMERA_TOKEN_EXPIRES_AT"]), dt.timezone.utc)
    assert job.outputs == {"ephemera-path": str(installed), "version": release.version, "task": job.task,
                           "expires-at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert job.state == {"ephemera": str(installed), "broker": job.broker.url, "role": ROLE, "audience": AUDIENCE,
                         "end_task": "true", "exchanged": "true"}
    assert job.ids.audiences() == [AUDIENCE]
    assert_not_logged(r, [token, *job.ids.issued], masked=[token])
    assert commands(r.stdout, "add-mask") == [token]
    assert job.active(token) is True

    # a later step: `ephemera` on PATH is the installed one, the credential in its environment
    later = job.step('command -v ephemera; test -n "$EPHEMERA_TOKEN" && ephemera --version')
    assert later.returncode == 0, later.stderr
    assert later.stdout.splitlines()[0] == str(installed)
    assert later.stdout.splitlines()[1].startswith(f"ephemera {release.version}")

    p = job.post(release.action, runner)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"ended task:github:{job.task} (1 live grant)" in p.stdout
    assert commands(p.stdout, "warning") == [] and commands(p.stdout, "error") == []
    assert len(job.ids.issued) == 2 and job.ids.audiences() == [AUDIENCE, AUDIENCE]  # a fresh ID token
    assert job.active(token) is False
    [rev] = job.revocations()
    assert (rev["task"], rev["detail"]) == (job.task, f"revoked `task:github:{job.task}`"), rev
    assert_not_logged(p, [token, *job.ids.issued])
    assert job.decisions()[0] == ("allow", None)


def test_a_tampered_release_is_refused_before_anything_is_extracted(job, release):
    """The pinned hash is the real tarball's; the server answers another (a well-formed tarball
    whose `ephemera` would record that it ran). main refuses on the hash: nothing extracted or
    installed, nothing on PATH, no ID token asked for, nothing saved for post; post then sends
    nothing. The passing twin: the whole path above, with the real tarball."""
    marker = job.tmp / "evil-ran"
    evil = evil_tarball(job.tmp / release.tarball.name, release.version, release.target, marker)
    job.releases.serve(release.version, release.tarball.name, evil)
    r = job.main(release.action, broker=job.broker.url, role=ROLE, audience=AUDIENCE, release_url=job.releases.url)
    assert r.returncode == 1
    got = hashlib.sha256(evil.read_bytes()).hexdigest()
    assert commands(r.stdout, "error") == [
        f"SHA-256 mismatch for {release.tarball.name}: expected {release.sha256}, got {got}; "
        "nothing was extracted or installed"]
    assert len(job.releases.requests) == 1
    assert list(job.tool_cache.iterdir()) == [] and not marker.exists()
    assert list(job.runner_temp.iterdir()) == [], "the download is deleted"
    assert job.github_path.read_text() == "" and job.github_env.read_text() == ""
    assert job.state == {} and job.outputs == {}
    assert job.ids.requests == [] and job.broker.audit() == []

    p = job.post(release.action)
    assert p.returncode == 0
    assert commands(p.stdout, "notice") == ["ephemera: nothing to end (the main step handed out no credential)"]
    assert job.ids.requests == [] and job.broker.audit() == []


def test_without_a_pin_the_install_is_refused_and_the_sha256_input_pins(job, release, tmp_path):
    """An action whose checksums.txt pins nothing for the version: refused with the message, and
    nothing downloaded. The twin: the `sha256` input is the pin; with the hash of the tarball served
    (here the recording one) it is extracted and run — so the tampering test above would have
    seen an extraction."""
    bare = tmp_path / "bare-action"
    shutil.copytree(ACTION, bare)
    (bare / "checksums.txt").write_text("# nothing pinned\n")
    inputs = dict(broker=job.broker.url, role=ROLE, audience=AUDIENCE, release_url=job.releases.url)
    r = job.main(bare, version=release.version, **inputs)
    assert r.returncode == 1
    assert commands(r.stdout, "error") == [NO_PIN.format(version=release.version, target=release.target)]
    assert job.releases.requests == [] and job.ids.requests == [] and job.state == {}

    marker = tmp_path / "evil-ran"
    evil = evil_tarball(tmp_path / release.tarball.name, release.version, release.target, marker)
    job.releases.serve(release.version, release.tarball.name, evil)
    r = job.main(bare, version=release.version, sha256=hashlib.sha256(evil.read_bytes()).hexdigest().upper(),
                 **inputs)
    assert r.returncode == 1
    assert commands(r.stdout, "error") == [f"the release of ephemera {release.version} holds ephemera 6.6.6"]
    assert marker.read_text() == "ran\n"
    assert (job.tool_cache / "ephemera" / release.version / release.target / "ephemera").is_file()
    assert job.ids.requests == [] and job.state == {}


def test_the_runner_platform_picks_the_release_or_is_refused(job, tmp_path):
    """Linux/X64 and Linux/ARM64 have releases (the target names the asset: seen in the no-pin
    refusal, before any download); any other runner is refused with a clear error."""
    bare = tmp_path / "bare-action"
    shutil.copytree(ACTION, bare)
    (bare / "checksums.txt").write_text("")
    inputs = dict(broker=job.broker.url, role=ROLE, release_url=job.releases.url, version="0.1.0")
    for arch, target in (("X64", "x86_64-unknown-linux-gnu"), ("ARM64", "aarch64-unknown-linux-gnu")):
        r = job.main(bare, overrides={"RUNNER_OS": "Linux", "RUNNER_ARCH": arch}, **inputs)
        assert r.returncode == 1 and commands(r.stdout, "error") == [NO_PIN.format(version="0.1.0", target=target)]
    for os_, arch in (("macOS", "ARM64"), ("Windows", "X64"), ("Linux", "ARM"), ("Linux", "X86"), ("", "")):
        r = job.main(bare, overrides={"RUNNER_OS": os_, "RUNNER_ARCH": arch}, **inputs)
        assert r.returncode == 1
        [err] = commands(r.stdout, "error")
        shown = f"RUNNER_OS={os_ or 'unset'}, RUNNER_ARCH={arch or 'unset'}"
        assert err.startswith(f"no ephemera release for this runner ({shown})"), err
        assert "Linux/X64 and Linux/ARM64" in err and "ephemera input" in err
    assert job.releases.requests == [] and job.ids.requests == [] and job.broker.audit() == []


def test_the_release_url_is_https_or_loopback(job, release):
    """The download carries no secret but its bytes become a binary: https only (the hash is the
    check, TLS the second one). http is allowed on loopback for these tests; the passing twin is
    the whole path above, downloading from http://127.0.0.1."""
    for url in ("http://example.com/releases/download", "ftp://127.0.0.1/releases",
                "http://127.0.0.1:80@example.com/releases", "http://127.0.0.1.example.com/releases"):
        r = job.main(release.action, broker=job.broker.url, role=ROLE, release_url=url)
        assert r.returncode == 1, url
        [err] = commands(r.stdout, "error")
        assert err.startswith("input release-url: "), err
    assert job.releases.requests == [] and job.ids.requests == [] and list(job.tool_cache.iterdir()) == []


# ---- the post step ------------------------------------------------------------------------------


def test_end_task_false_leaves_the_credential_to_its_expiry(job, ephemera_bin):
    """`end-task: false`: post sends nothing and says so; the credential stays active. (The
    `ephemera` input: a binary already installed, nothing downloaded.)"""
    r = job.main(broker=job.broker.url, role=ROLE, audience=AUDIENCE, ephemera=str(ephemera_bin), end_task="false")
    assert r.returncode == 0, r.stdout + r.stderr
    assert job.releases.requests == [] and job.github_path.read_text() == ""
    assert job.outputs["ephemera-path"] == str(Path(ephemera_bin).resolve())
    token = env_file(job.github_env)["EPHEMERA_TOKEN"]
    assert job.state["end_task"] == "false"
    p = job.post()
    assert p.returncode == 0
    assert commands(p.stdout, "notice") == [
        f"ephemera: end-task is false: the credentials of task {job.task} stay valid until they expire"]
    assert len(job.ids.requests) == 1 and job.revocations() == []
    assert job.active(token) is True


def test_a_failed_exchange_leaves_post_nothing_to_end(job, ephemera_bin):
    """The broker refuses main's exchange (the job's claims are not the role's): main fails with
    the broker's reason, saves nothing, and post sends nothing."""
    job.ids.claims = dict(job.ids.claims, ref="refs/heads/feature")
    r = job.main(broker=job.broker.url, role=ROLE, audience=AUDIENCE, ephemera=str(ephemera_bin))
    assert r.returncode == 1
    [(decision, reason)] = job.decisions()
    assert decision == "deny" and reason and reason in r.stderr, r.stderr
    assert commands(r.stdout, "error") == [f"the exchange for role {ROLE} at {job.broker.url} failed (above)"]
    assert job.state == {} and job.github_env.read_text() == ""
    p = job.post()
    assert p.returncode == 0
    assert commands(p.stdout, "notice") == ["ephemera: nothing to end (the main step handed out no credential)"]
    assert len(job.ids.requests) == 1 and len(job.broker.audit()) == 1


def test_a_refused_end_task_is_a_warning_with_the_brokers_reason(job, ephemera_bin):
    """The broker refuses to end the task (the job's claims changed: the role's policy, checked
    now, no longer allows them): post warns with the broker's reason and exits 0 (the job's work
    is done); the credential stays active. The twin: the whole path above, where it ends."""
    r = job.main(broker=job.broker.url, role=ROLE, audience=AUDIENCE, ephemera=str(ephemera_bin))
    assert r.returncode == 0, r.stdout + r.stderr
    token = env_file(job.github_env)["EPHEMERA_TOKEN"]
    job.ids.claims = dict(job.ids.claims, ref="refs/heads/feature")
    p = job.post()
    assert p.returncode == 0, p.stdout + p.stderr
    [warning] = commands(p.stdout, "warning")
    denials = [rec for rec in job.broker.audit() if rec["decision"] == "deny"]
    assert len(denials) == 1 and denials[0]["reason"], denials
    print("post's warning:", warning)
    assert warning.startswith("ephemera end-task failed (exit 1): the task's credentials stay valid until they expire")
    assert denials[0]["reason"] in warning
    assert len(job.ids.requests) == 2 and job.revocations() == []
    assert job.active(token) is True
    assert_not_logged(p, [token, *job.ids.issued])


# ---- format json --------------------------------------------------------------------------------


def test_format_json_keeps_the_answer_in_a_private_file_and_no_secret_in_outputs(job, ephemera_bin):
    """`format: json`: the broker's answer in a 0600 file under RUNNER_TEMP (output
    `credential-file`), its secret masked, its non-secret fields as outputs; nothing exported
    to the environment. No `audience` input: the ID token is asked for the broker URL. post ends
    the task and deletes the file."""
    r = job.main(broker=job.broker.url, role=ROLE, format="json", ephemera=str(ephemera_bin))
    assert r.returncode == 0, r.stdout + r.stderr
    assert job.ids.audiences() == [job.broker.url]
    cred = Path(job.outputs["credential-file"])
    assert cred.parent == job.runner_temp and stat.S_IMODE(cred.stat().st_mode) == 0o600
    answer = json.loads(cred.read_text())
    token = answer["access_token"]
    verify_broker_jwt(job.broker, token)
    assert job.outputs["token-type"] == answer["token_type"]
    assert job.outputs["issued-token-type"] == answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    expires = dt.datetime.strptime(job.outputs["expires-at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert expires > dt.datetime.now(dt.timezone.utc)
    assert set(job.outputs) == {"ephemera-path", "version", "task", "credential-file", "token-type",
                                "issued-token-type", "expires-at"}
    assert all(token not in v for v in [*job.outputs.values(), *job.state.values()])
    assert job.github_env.read_text() == ""
    assert commands(r.stdout, "add-mask") == [token]
    assert_not_logged(r, [token, *job.ids.issued], masked=[token])
    assert job.state["credential_file"] == str(cred) and job.state["audience"] == job.broker.url

    p = job.post()
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"ended task:github:{job.task} (1 live grant)" in p.stdout
    assert commands(p.stdout, "warning") == [] and commands(p.stdout, "error") == []
    assert not cred.exists()
    assert job.active(token) is False
    [rev] = job.revocations()
    assert (rev["task"], rev["detail"]) == (job.task, f"revoked `task:github:{job.task}`"), rev


# ---- the repository's pins and scripts/release --------------------------------------------------


def test_the_repository_pins_are_well_formed_and_the_default_install_is_honest(job):
    """checksums.txt holds `sha256sum` lines only (and comments). With the action's default
    version: unpinned (no release published yet), the install is refused with the message before
    any download; once a release pins it, the default downloads that asset (here from a server
    that has none)."""
    version = yaml_inputs(ACTION)["version"]["default"]
    pins = {}
    for line in (ACTION / "checksums.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-f]{64})  (ephemera-\d+\.\d+\.\d+-[a-z0-9_]+-unknown-linux-gnu\.tar\.gz)", line)
        assert m, f"not a sha256sum line: {line!r}"
        assert m.group(2) not in pins, f"pinned twice: {m.group(2)}"
        pins[m.group(2)] = m.group(1)
    asset = f"ephemera-{version}-{job.target}.tar.gz"
    r = job.main(broker=job.broker.url, role=ROLE, release_url=job.releases.url)
    assert r.returncode == 1
    print(f"checksums.txt pins {sorted(pins)}; the default version {version} is "
          f"{'pinned' if asset in pins else 'not pinned'} for {job.target}")
    if asset not in pins:
        assert commands(r.stdout, "error") == [NO_PIN.format(version=version, target=job.target)]
        assert job.releases.requests == []
    else:
        assert job.releases.requests == [f"/releases/download/v{version}/{asset}"]
        assert commands(r.stdout, "error") == [f"download of {job.releases.url}/v{version}/{asset} failed"]
    assert job.ids.requests == [] and job.state == {}


def test_scripts_release_is_reproducible_and_pins_the_tarball(release, tmp_path):
    """The same binary gives the same bytes (so anyone can check a pin by rebuilding); the
    tarball holds ephemera-VERSION-TARGET/{ephemera, README.md} with owner 0, mtime 0 and fixed
    modes, gzipped without name or time; SHA256SUMS and the action's checksums.txt (--pin) hold
    its line, and the pin replaced the "no release is published yet" line. The twin: a binary
    whose --version is not Cargo.toml's version is refused."""
    again = release.run("--binary", str(release.binary), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / release.tarball.name).read_bytes() == release.tarball.read_bytes()

    cargo = re.search(r'^\[package\][^\[]*?^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M | re.S)
    assert release.version == cargo.group(1)
    raw = release.tarball.read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\x00\x00\x00\x00", "gzip -n: no name, no mtime"
    name = f"ephemera-{release.version}-{release.target}"
    with tarfile.open(release.tarball) as t:
        members = {m.name: m for m in t.getmembers()}
        expected = {name, f"{name}/ephemera", f"{name}/README.md", *(f"{name}/{p.name}" for p in REPO.glob("LICENSE*"))}
        assert set(members) == expected
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
        assert members[f"{name}/ephemera"].mode == 0o755 and members[f"{name}/README.md"].mode == 0o644
        assert t.extractfile(f"{name}/ephemera").read() == release.binary.read_bytes()
    line = f"{release.sha256}  {release.tarball.name}"
    assert (release.dist / "SHA256SUMS").read_text() == line + "\n"
    pins = (release.action / "checksums.txt").read_text()
    assert pins.splitlines()[-1] == line and pins.count(release.tarball.name) == 1
    assert "No release is published yet" in (ACTION / "checksums.txt").read_text()
    assert "No release is published yet" not in pins
    assert f"{release.dist}/{release.tarball.name}" in release.result.stdout

    liar = tmp_path / "liar"
    liar.write_text("#!/bin/sh\necho 'ephemera 9.9.9 (commit 000000000000)'\n")
    liar.chmod(0o755)
    bad = release.run("--binary", str(liar), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert f"--version says `ephemera 9.9.9 (commit 000000000000)`, Cargo.toml says {release.version}" in bad.stderr
    assert not (tmp_path / "bad").exists() or list((tmp_path / "bad").iterdir()) == []
