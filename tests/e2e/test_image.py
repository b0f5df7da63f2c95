"""Issue 17 (part A): Ephemera's OCI image, built offline by scripts/build-image (FROM scratch: the
binary, the libraries ldd names, the CA bundle, a non-root user, two volumes; docs/container.md).

The image is built once per module from the binary under test (EPHEMERA_RELEASE_BIN, the stripped
release binary; under CI its absence fails, locally EPHEMERA_BIN is used) into the default podman
store under a unique tag, with its OCI archive beside it, and removed at the end.
- What `podman image inspect` shows, and what the image's root filesystem holds (read from the OCI
  archive: every entry accounted for, owners and modes, no shell); the binary runs from it under
  `chroot`, and checks examples/oci/ephemera.toml there.
- The image run with podman: the config missing exits 2 with the config error; the example config
  serves on the published port; a full exchange against a mock issuer (host network), the token
  checked against the broker's JWKS, the process not root; after `podman restart` the state and
  audit on the mounted /var/lib/ephemera are still there (a replayed assertion is still refused).
Running needs a runtime that works here: the first of a few `podman run` variants that runs
`ephemera --version` in the image is used for every run (printed); when none does, the run tests
skip with each variant's error (under CI=true that skip fails unless tests/SKIPS.allow lists it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import tarfile
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness import (
    GH_OWNER_ID,
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    STARTUP_TIMEOUT,
    AUDIENCE,
    Broker,
    ci_strict,
    find_binary,
    free_port,
    github_claims,
    read_audit,
    require_peer,
    run_cli,
    to_toml,
    verify_broker_jwt,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-image"
EXAMPLE = ROOT / "examples" / "oci" / "ephemera.toml"
UID = 65532
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ADMIN_TOKEN = "image-admin-" + "e" * 40
VERSION_RE = re.compile(r"ephemera (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown)\)\n")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if check:
        assert res.returncode == 0, f"podman {' '.join(args)}: {res.returncode}\n{res.stderr[-3000:]}"
    return res


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- the image -------------------------------------------------------------------------------------


@dataclass
class Image:
    tag: str
    binary: Path
    version: str  # the binary's `--version` line
    archive: Path  # the OCI archive build-image wrote
    build_output: str

    def layers(self) -> list[tarfile.TarFile]:
        """The layers of the archive's one manifest, in order."""
        outer = tarfile.open(self.archive)
        blob = lambda digest: outer.extractfile("blobs/" + digest.replace(":", "/"))
        index = json.load(outer.extractfile("index.json"))
        assert len(index["manifests"]) == 1, index
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        return [tarfile.open(fileobj=blob(layer["digest"]), mode="r:*") for layer in manifest["layers"]]


@pytest.fixture(scope="module")
def image_bin() -> Path:
    """The stripped release binary (EPHEMERA_RELEASE_BIN); locally, without it, the debug binary."""
    found = os.environ.get("EPHEMERA_RELEASE_BIN")
    if found:
        assert Path(found).is_file() and os.access(found, os.X_OK), f"EPHEMERA_RELEASE_BIN={found} is no executable"
        return Path(found)
    if ci_strict():
        pytest.fail("EPHEMERA_RELEASE_BIN is not set (scripts/test builds the release binary and exports it)")
    return find_binary()


@pytest.fixture(scope="module")
def image(image_bin, tmp_path_factory):
    require_peer("podman", shutil.which("podman") is not None,
                 "apt-get install podman buildah; scripts/test installs them")
    require_peer("buildah", shutil.which("buildah") is not None,
                 "apt-get install podman buildah; scripts/test installs them")
    d = tmp_path_factory.mktemp("image")
    tag = f"localhost/ephemera-test:{uuid.uuid4().hex[:12]}"
    archive = d / "ephemera-oci.tar"
    t0 = time.monotonic()
    res = subprocess.run([str(BUILD), "--binary", str(image_bin), "--tag", tag, "--oci-archive", str(archive)],
                         capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert res.returncode == 0, f"build-image: {res.returncode}\n{res.stderr[-4000:]}\n{res.stdout}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\n  image {tag}: built in {took:.1f} s from {image_bin} ({image_bin.stat().st_size / 1e6:.1f} MB), "
          f"{size / 1e6:.1f} MB; OCI archive {archive.stat().st_size / 1e6:.1f} MB")
    version = run_cli(image_bin, ["--version"]).stdout
    yield Image(tag, image_bin, version, archive, res.stdout)
    leftovers = podman("ps", "-a", "-q", "--filter", f"ancestor={tag}", check=False).stdout.split()
    if leftovers:
        podman("rm", "-f", "-t", "0", *leftovers, check=False)
    podman("rmi", "-f", tag, check=False)


def test_build_image_refuses_a_missing_binary_and_unknown_arguments(tmp_path):
    """The script's own failures, without building: a binary that is not there (given, or the
    default under $CARGO_TARGET_DIR) is exit 1 naming it (no image), an unknown argument exit 2. (The build from a real binary is the `image` fixture.)"""
    res = subprocess.run([str(BUILD), "--binary", str(tmp_path / "nope"), "--tag", "localhost/ephemera-test:never"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and f"no executable binary at `{tmp_path / 'nope'}`" in res.stderr, res
    if shutil.which("podman"):
        assert podman("image", "exists", "localhost/ephemera-test:never", check=False).returncode == 1
    # without --binary: $CARGO_TARGET_DIR/release/ephemera
    res = subprocess.run([str(BUILD), "--tag", "localhost/ephemera-test:never"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, CARGO_TARGET_DIR=str(tmp_path)))
    assert res.returncode == 1 and f"no executable binary at `{tmp_path}/release/ephemera`" in res.stderr, res
    res = subprocess.run([str(BUILD), "--frobnicate"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown argument `--frobnicate`" in res.stderr, res


def test_image_config_entrypoint_user_volumes_port_and_labels(image):
    """`podman image inspect`: `ephemera serve --config /etc/ephemera/ephemera.toml`, a numeric
    non-root user that /etc/passwd names `ephemera`, the config and state volumes, port 8080, and
    OCI labels whose version and revision are what the binary's `--version` says."""
    info = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    cfg = info["Config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/ephemera", "serve"], cfg
    assert cfg["Cmd"] == ["--config", "/etc/ephemera/ephemera.toml"], cfg
    assert cfg["User"] == f"{UID}:{UID}", cfg  # numeric: Kubernetes' runAsNonRoot can check it
    assert set(cfg["Volumes"]) == {"/etc/ephemera", "/var/lib/ephemera"}, cfg
    assert set(cfg["ExposedPorts"]) == {"8080/tcp"}, cfg
    assert cfg["WorkingDir"] == "/var/lib/ephemera", cfg
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64"), (info["Os"], info["Architecture"])

    m = VERSION_RE.fullmatch(image.version)
    assert m, image.version
    cargo_version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == m.group(1) == cargo_version, labels
    assert labels["org.opencontainers.image.revision"] == m.group(2), labels
    assert labels["org.opencontainers.image.source"] == "https://github.com/ephemera-dev/ephemera", labels
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0", labels
    assert labels["org.opencontainers.image.title"] == "ephemera", labels
    # the image is what build-image says it built, and its archive holds the same image
    assert image.build_output.startswith(f"built {image.tag} ({m.group(1)}, commit {m.group(2)}) image "), \
        image.build_output
    outer = tarfile.open(image.archive)
    index = json.load(outer.extractfile("index.json"))
    manifest = json.load(outer.extractfile("blobs/" + index["manifests"][0]["digest"].replace(":", "/")))
    assert manifest["config"]["digest"] == "sha256:" + info["Id"], (manifest["config"], info["Id"])


def image_id(tag: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def test_the_same_binary_builds_the_same_image(image, tmp_path):
    """Reproducible: `build-image --context-only DIR` and the `podman build` command it prints give
    the image id of the fixture's build (every file root-owned with mtime 0, the timestamp 0), and so
    does the build of the default binary, $CARGO_TARGET_DIR/release/ephemera. The twin: the binary
    with one byte appended gives another image."""
    tags = [f"localhost/ephemera-test:{uuid.uuid4().hex[:12]}" for _ in range(3)]
    try:
        ctx = tmp_path / "context"
        res = subprocess.run([str(BUILD), "--binary", str(image.binary), "--tag", tags[0], "--context-only", str(ctx)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res
        assert sorted(p.name for p in ctx.iterdir()) == ["Containerfile", "rootfs.tar"]
        command = res.stdout.splitlines()[1].strip()
        assert command.startswith("podman build "), res.stdout
        res = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert image_id(tags[0]) == image_id(image.tag)

        target = tmp_path / "target"
        (target / "release").mkdir(parents=True)
        shutil.copy2(image.binary, target / "release" / "ephemera")
        res = subprocess.run([str(BUILD), "--tag", tags[1]], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
        assert res.returncode == 0, res.stderr[-3000:]
        assert image_id(tags[1]) == image_id(image.tag)

        other = tmp_path / "ephemera"
        other.write_bytes(image.binary.read_bytes() + b"\0")
        other.chmod(0o755)
        res = subprocess.run([str(BUILD), "--binary", str(other), "--tag", tags[2]],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert image_id(tags[2]) != image_id(image.tag)
    finally:
        podman("rmi", "-f", *tags, check=False)


def ldd_paths(binary: Path) -> set[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
    paths = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            paths.add(parts[2])
        elif parts and parts[0].startswith("/"):
            paths.add(parts[0])
    return paths


def test_the_image_holds_only_the_listed_files(image):
    """Every entry of the image's root filesystem is accounted for: the binary (the very file under
    test), the libraries `ldd` names (this host's), the host's CA bundle, /etc/passwd and /etc/group
    (root and ephemera 65532 only), /etc/nsswitch.conf, the two volume directories owned by
    ephemera, and the root-owned directories above them. No shell, no symlink, no setuid file."""
    layers = image.layers()
    assert len(layers) == 1, f"{len(layers)} layers"
    members = {m.name.rstrip("/").removeprefix("./"): (m, layer) for layer in layers for m in layer.getmembers()}
    files = {
        "usr/local/bin/ephemera": image.binary,
        "etc/ssl/certs/ca-certificates.crt": CA_BUNDLE,
        "etc/passwd": None,
        "etc/group": None,
        "etc/nsswitch.conf": None,
    }
    libs = ldd_paths(image.binary)
    assert any("libc.so" in p for p in libs), libs
    files.update({p.lstrip("/"): Path(p) for p in libs})
    volumes = {"etc/ephemera": 0o750, "var/lib/ephemera": 0o700}
    parents = {str(p) for f in [*files, *volumes] for p in Path(f).parents if str(p) != "."}
    expected = set(files) | set(volumes) | parents
    assert set(members) == expected, (sorted(set(members) - expected), sorted(expected - set(members)))
    assert "bin/sh" not in members and "bin" not in members

    def content(name: str) -> bytes:
        m, layer = members[name]
        return layer.extractfile(m).read()

    for name, (m, _) in members.items():
        mode = m.mode & 0o7777  # (the layer's modes may carry the file type bits too)
        assert not m.issym() and not m.islnk() and not mode & 0o6000, (name, m.type, oct(mode))
        if name in volumes:
            assert m.isdir() and (m.uid, m.gid, mode) == (UID, UID, volumes[name]), (name, m.uid, oct(mode))
        elif name in files:
            assert m.isfile() and (m.uid, m.gid) == (0, 0) and not mode & 0o022, (name, m.uid, oct(mode))
            if files[name] is not None:
                assert hashlib.sha256(content(name)).hexdigest() == sha256(files[name]), name
        else:
            assert m.isdir() and (m.uid, m.gid, mode) == (0, 0, 0o755), (name, m.uid, oct(mode))
    assert members["usr/local/bin/ephemera"][0].mode & 0o7777 == 0o755
    passwd = content("etc/passwd").decode().splitlines()
    assert passwd == ["root:x:0:0:root:/root:/sbin/nologin",
                      f"ephemera:x:{UID}:{UID}:ephemera:/var/lib/ephemera:/sbin/nologin"], passwd
    assert content("etc/group").decode().splitlines() == ["root:x:0:", f"ephemera:x:{UID}:"]
    print(f"  {len(members)} entries: {len(libs)} libraries "
          f"({', '.join(sorted(Path(p).name for p in libs))}), uncompressed "
          f"{sum(m.size for m, _ in members.values()) / 1e6:.1f} MB")


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory) -> Path:
    """The image's root filesystem unpacked (owners kept: the tests run as root, as podman does)."""
    d = tmp_path_factory.mktemp("rootfs")
    d.chmod(0o755)  # the image's / (a fresh temporary directory is 0700: ephemera could not enter it)
    for layer in image.layers():
        layer.extractall(d, numeric_owner=True, filter="fully_trusted")
    return d


def config_dir(image: Image, d: Path) -> str:
    """Fills a directory to mount at /etc/ephemera: the example config (as given), a signing key
    made by the binary under test, the admin token. Returns the key's kid."""
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, d / "ephemera.toml")
    res = run_cli(image.binary, ["keygen", "--out", str(d / "broker-key.pem")])
    m = re.search(r"kid ([A-Za-z0-9_-]+)\)", res.stdout)
    assert res.returncode == 0 and m, res
    (d / "admin.token").write_text(ADMIN_TOKEN)
    return m.group(1)


def test_the_binary_runs_from_the_image_root_filesystem(image, rootfs):
    """`chroot ROOTFS /usr/local/bin/ephemera --version`, as root and as ephemera, says what the
    binary says on the host: the libraries in the image are enough. There, `ephemera check` accepts
    examples/oci/ephemera.toml with its key and token in /etc/ephemera; the twin: without the signing
    key, the config error names it (exit 2)."""
    chroot = shutil.which("chroot")
    require_peer("chroot", chroot is not None, "coreutils")
    for user in ([], [f"--userspec={UID}:{UID}"]):
        res = subprocess.run([chroot, *user, str(rootfs), "/usr/local/bin/ephemera", "--version"],
                             capture_output=True, text=True, timeout=60, env={})
        assert res.returncode == 0 and res.stdout == image.version, (user, res)

    etc = rootfs / "etc" / "ephemera"

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([chroot, f"--userspec={UID}:{UID}", str(rootfs), "/usr/local/bin/ephemera",
                               "check", "--config", "/etc/ephemera/ephemera.toml"],
                              capture_output=True, text=True, timeout=60, env={})

    try:
        config_dir(image, etc)
        for f in etc.iterdir():
            os.chown(f, UID, UID)
        ok = check()
        assert ok.returncode == 0 and ok.stdout.startswith("ok: 1 provider(s), 1 role(s)"), ok
        (etc / "broker-key.pem").unlink()
        bad = check()
        assert bad.returncode == 2 and "server.signing_key_file" in bad.stderr \
            and "/etc/ephemera/broker-key.pem`: No such file or directory" in bad.stderr, bad
    finally:
        for f in list(etc.iterdir()):
            f.unlink()


# ---- running the image ---------------------------------------------------------------------------


def run_variants() -> list[tuple[str, list[str]]]:
    """`podman run` options to try, plainest first. Where the process may not raise its limits
    (no CAP_SYS_RESOURCE: podman asks for nofile 1048576 as root), the container gets limits within
    ours; where crun refuses the cgroup layout ("cgroups in hybrid mode"), runc may not."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    out = [("defaults", []), ("limits within ours", limits)]
    if shutil.which("runc"):
        out += [("runc", ["--runtime", "runc"]), ("runc, limits within ours", ["--runtime", "runc", *limits])]
    out += [("no cgroups, limits within ours", ["--cgroups=disabled", *limits])]
    return out


@pytest.fixture(scope="module")
def run_opts(image) -> list[str]:
    """The options of the first variant that runs `ephemera --version` in the image; the run tests
    skip with every variant's error when none does."""
    errors = []
    for name, opts in run_variants():
        res = podman("run", "--rm", "--network=host", *opts, "--entrypoint", "/usr/local/bin/ephemera",
                     image.tag, "--version", check=False)
        if res.returncode == 0 and res.stdout == image.version:
            print(f"\n  podman run works here with: {name} {' '.join(opts)}")
            return opts
        errors.append(f"{name}: exit {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}")
    pytest.skip("this sandbox cannot run a container: " + " | ".join(errors))


class ContainerBroker(Broker):
    """The image run by podman as a harness Broker: the config written to a directory mounted at
    /etc/ephemera (read-only), state and audit in one mounted at /var/lib/ephemera (both `:U`, so the
    container's user owns them), host networking so that the container reaches the mock issuer on
    127.0.0.1 and the tests reach it. `audit_path` is the audit log on the host."""

    def __init__(self, image: Image, workdir: Path, config: dict, run_opts: list[str]):
        self.image = image
        self.etc = workdir / "etc"
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.run_opts = run_opts
        self.name = f"ephemera-test-{uuid.uuid4().hex[:12]}"
        self.cid: str | None = None
        super().__init__(Path("/usr/local/bin/ephemera"), workdir, config)
        self.audit_path = self.state / Path(config["audit"]["path"]).relative_to("/var/lib/ephemera")

    def _start(self):
        self.config_path = self.etc / "ephemera.toml"
        self.config_path.write_text(to_toml(self.config))
        res = podman("run", "-d", "--name", self.name, "--network=host", *self.run_opts,
                     "-v", f"{self.etc}:/etc/ephemera:ro,U", "-v", f"{self.state}:/var/lib/ephemera:U",
                     self.image.tag)
        self.cid = res.stdout.strip()
        self.wait_healthy()

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def wait_healthy(self):
        def healthy():
            if not self.running():
                raise AssertionError(f"the container exited:\n{self.stderr()[-4000:]}")
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, timeout=STARTUP_TIMEOUT, interval=0.05, what="the container's /healthz")

    def restart(self):
        podman("restart", self.name)
        self.wait_healthy()

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout)

    def alive(self) -> bool:
        return self.running() and super().alive()

    def stop(self):
        if self.cid:
            podman("rm", "-f", "-t", "10", self.name, check=False)
            self.cid = None
        self.http.close()

    def stderr(self) -> str:
        return podman("logs", self.name, check=False).stderr


@pytest.fixture
def container_factory(image, run_opts, tmp_path, request):
    made: list[ContainerBroker] = []

    def make(config: dict) -> ContainerBroker:
        workdir = tmp_path / f"container{len(made)}"
        config_dir(image, workdir / "etc")  # the key and the token; the broker writes `config` over the example
        c = ContainerBroker(image, workdir, config, run_opts)
        made.append(c)
        return c

    yield make
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    try:
        if passed:
            for c in made:
                c.check_audit_invariants()
    finally:
        for c in made:
            c.stop()


def example_config_for(mock_issuer, port: int, admin_port: int) -> dict:
    """examples/oci/ephemera.toml, with the mock issuer as its GitHub provider and loopback ports
    (the container shares the host's network here)."""
    cfg = tomllib.loads(EXAMPLE.read_text())
    cfg["server"]["listen"] = f"127.0.0.1:{port}"
    cfg["server"]["issuer"] = f"http://127.0.0.1:{port}"
    cfg["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    [prov] = cfg["providers"]
    prov["issuer"] = mock_issuer.issuer
    prov["audiences"] = [AUDIENCE]
    [role] = cfg["roles"]
    assert (role["conditions"]["repository_id"], role["conditions"]["repository_owner_id"]) == \
        (GH_REPOSITORY_ID, GH_OWNER_ID), role
    return cfg


def test_without_a_config_the_container_exits_with_the_config_error(image, run_opts):
    """The image run as documented but with nothing mounted at /etc/ephemera exits 2 with the config
    error naming the file. (The twin, the same image with the config, is the exchange test.)"""
    res = podman("run", "--rm", "--network=none", *run_opts, image.tag, check=False, timeout=60)
    assert res.returncode == 2, res
    assert "config error: /etc/ephemera/ephemera.toml: No such file or directory" in res.stderr, res


def test_the_example_config_serves_on_the_published_port(image, run_opts, tmp_path):
    """examples/oci/ephemera.toml unchanged, with its key and token, the documented way: the config
    directory read-only, a named volume for the state, port 8080 published (the default network).
    /healthz answers and the JWKS publishes the mounted key's kid."""
    etc = tmp_path / "etc"
    kid = config_dir(image, etc)
    port = free_port()
    volume = f"ephemera-test-{uuid.uuid4().hex[:12]}"
    name = f"ephemera-test-{uuid.uuid4().hex[:12]}"
    try:
        podman("run", "-d", "--name", name, *run_opts, "-p", f"127.0.0.1:{port}:8080",
               "-v", f"{etc}:/etc/ephemera:ro,U", "-v", f"{volume}:/var/lib/ephemera", image.tag)
        url = f"http://127.0.0.1:{port}"

        def up():
            assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", \
                podman("logs", name, check=False).stderr[-3000:]
            try:
                return requests.get(url + "/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=STARTUP_TIMEOUT, what="the published /healthz")
        jwks = requests.get(url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()
        logs = podman("logs", name).stderr
        serving = [json.loads(line) for line in logs.splitlines() if '"ephemera serving"' in line]
        assert len(serving) == 1, logs[-3000:]
        assert serving[0]["fields"]["listen"] == "0.0.0.0:8080", serving
        assert [k["kid"] for k in jwks["keys"]] == [kid], jwks
        # the state went to the named volume, owned by the image's user
        mountpoint = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
        state = mountpoint / "audit.jsonl.state"
        assert state.is_file() and state.stat().st_uid == UID, sorted(p.name for p in mountpoint.iterdir())
    finally:
        podman("rm", "-f", "-t", "10", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)


def test_exchange_against_the_running_image_survives_a_restart(image, container_factory, mock_issuer):
    """The image serving examples/oci/ephemera.toml (the mock issuer as its GitHub provider): a full
    exchange, the broker JWT verified with PyJWT against the JWKS the container publishes, the grant
    in the inventory on the admin listener; the broker process is uid 65532 with no capabilities,
    and what it wrote on the state volume is its own. After `podman restart`: the same signing key
    (the first token still verifies), the replayed assertion still refused (`token_replayed`: the
    state file on the volume), a fresh one allowed, and the audit log on the volume goes on."""
    port, admin_port = free_port(), free_port()
    cfg = example_config_for(mock_issuer, port, admin_port)
    b = container_factory(cfg)

    claims = lambda: github_claims(mock_issuer.issuer, environment="production")
    used = mock_issuer.sign(claims())
    r = b.exchange(used, role="deploy-prod")
    assert r.status == 200, r
    token = r.json["access_token"]
    verified = verify_broker_jwt(b, token)
    assert verified["iss"] == f"http://127.0.0.1:{port}", verified
    grants = requests.get(f"http://127.0.0.1:{admin_port}/v1/grants",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=HTTP_TIMEOUT)
    assert grants.status_code == 200, grants.text
    assert [(g["id"], g["role"]) for g in grants.json()["grants"]] == [(verified["jti"], "deploy-prod")], grants.text

    status = dict(line.split(":", 1) for line in Path(f"/proc/{b.pid()}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(UID)] * 4, status["Uid"]
    assert int(status["CapEff"], 16) == 0, status["CapEff"]
    written = sorted(p.name for p in b.state.iterdir())
    assert {"audit.jsonl", "audit.jsonl.state"} <= set(written), written
    assert {p.stat().st_uid for p in b.state.iterdir()} == {UID}, written

    r = b.exchange(used, role="deploy-prod")
    assert r.status == 400 and r.reason == "token_replayed", r
    before = read_audit(b.audit_path)
    jwks = requests.get(b.url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()

    b.restart()
    assert requests.get(b.url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json() == jwks
    assert verify_broker_jwt(b, token)["jti"] == verified["jti"]
    r = b.exchange(used, role="deploy-prod")
    assert r.status == 400 and r.reason == "token_replayed", r
    r = b.exchange(mock_issuer.sign(claims()), role="deploy-prod")
    assert r.status == 200, r
    after = read_audit(b.audit_path)
    assert after[:len(before)] == before and len(after) == len(before) + 2, (len(before), len(after))
    res = run_cli(image.binary, ["audit", "verify", str(b.audit_path)])
    assert res.returncode == 0, res
    print(f"  answers in order: {[x.status for x, _ in b.responses]} (a restart before the third)")
