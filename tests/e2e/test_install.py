"""Issue 17 (part): what the binary says it is, and the systemd unit in examples/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from harness import require_peer, run_cli

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "systemd" / "ephemera.service"


def test_version_names_the_release_and_the_commit(ephemera_bin):
    """`ephemera --version` prints the package version and the commit it was built from; in a
    git checkout (CI builds the binary from it) that is HEAD."""
    res = run_cli(ephemera_bin, ["--version"])
    assert res.returncode == 0, res
    m = re.fullmatch(r"ephemera (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown)\)\n", res.stdout)
    assert m, res.stdout
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert m.group(1) == version
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True)
    # under CI the binary is built from this checkout (scripts/test): it names HEAD
    if os.environ.get("CI") and head.returncode == 0 and not os.environ.get("EPHEMERA_COMMIT"):
        assert m.group(2) == head.stdout.strip(), (m.group(2), head.stdout)


def verified(tmp_path: Path, ephemera_bin, text: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` of the unit text, its ExecStart pointed at the binary under test
    (verify checks that the command exists)."""
    unit = tmp_path / "ephemera.service"
    unit.write_text(text.replace("/usr/local/bin/ephemera", str(ephemera_bin)))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path, ephemera_bin):
    """The unit passes `systemd-analyze verify` with nothing to say, runs as a dynamic user with
    the usual hardening, and `systemd-analyze security` rates its exposure low. The twin: a
    mistyped setting is reported."""
    require_peer("systemd-analyze", shutil.which("systemd-analyze") is not None,
                 "apt-get install systemd; scripts/test installs it")
    text = UNIT.read_text()
    ok = verified(tmp_path, ephemera_bin, text)
    assert ok.returncode == 0 and ok.stdout.strip() == "" and ok.stderr.strip() == "", ok
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=ephemera", "NoNewPrivileges=yes",
                    "CapabilityBoundingSet=\n", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in text, setting
    bad = verified(tmp_path, ephemera_bin, text.replace("ProtectSystem=strict", "ProtectSystem=stricto"))
    assert "Failed to parse protect system value" in bad.stderr, bad
    unit = tmp_path / "ephemera.service"
    unit.write_text(text.replace("/usr/local/bin/ephemera", str(ephemera_bin)))
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for ephemera.service: ([0-9.]+)", sec.stdout + sec.stderr)
    assert m and float(m.group(1)) <= 2.0, sec.stdout[-400:]
    print(f"  systemd-analyze security: exposure {m.group(1)}")
    # the unit's serve command is one the binary takes
    res = run_cli(ephemera_bin, ["serve", "--help"])
    assert res.returncode == 0 and "--config" in res.stdout, res


def release_binary() -> Path:
    """The stripped release binary scripts/test builds (EPHEMERA_RELEASE_BIN); under CI its absence
    is a failure."""
    path = os.environ.get("EPHEMERA_RELEASE_BIN", "")
    require_peer("the release binary (EPHEMERA_RELEASE_BIN)", bool(path) and Path(path).is_file(),
                 "scripts/test builds it: cargo build --release --locked --bin ephemera")
    return Path(path)


def sections(binary: Path) -> set[str]:
    """The ELF section names of a binary (binutils' readelf)."""
    res = subprocess.run(["readelf", "-S", "-W", str(binary)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"\]\s+(\.\S+)", res.stdout))


def test_the_release_binary_is_stripped_and_small(ephemera_bin):
    """The release profile keeps no debug info (the binary was 173 MB with line tables): no
    .debug_* section, and under 64 MiB. Its twin: the debug binary the other tests run has them,
    so the check can see them. The size is printed (README, "Install")."""
    require_peer("readelf", shutil.which("readelf") is not None, "apt-get install binutils")
    release = release_binary()
    size = release.stat().st_size
    print(f"  release binary: {size:,} bytes ({size / 2**20:.1f} MiB)")
    assert not {s for s in sections(release) if s.startswith(".debug")}, sections(release)
    assert size < 64 * 2**20, size
    assert {".debug_info", ".debug_line"} <= sections(Path(ephemera_bin))
    res = run_cli(release, ["--version"])
    assert res.returncode == 0 and res.stdout.startswith("ephemera "), res
