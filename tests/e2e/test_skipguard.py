"""The global skip guard (skipguard.py) works: under CI=true a skipped test fails the run unless it
is allow-listed with a reason; without CI a skip stays a skip. Each case runs a small pytest session
in a subprocess with the guard loaded as the real conftest loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TESTS = '''
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("a peer is missing")

@pytest.mark.skipif(True, reason="condition fired")
def test_skipif():
    pass

@pytest.fixture
def peer():
    pytest.skip("fixture says no")

def test_fixture_skip(peer):
    pass

@pytest.mark.xfail(strict=True, reason="known gap")
def test_known_gap():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("a_module_that_is_not_installed_anywhere")

def test_never_collected():
    pass
'''


def run(tmp_path: Path, ci: str | None, allow: str = "", body: str = TESTS):
    (tmp_path / "conftest.py").write_text("from skipguard import pytest_runtest_makereport, pytest_make_collect_report  # noqa\n")
    (tmp_path / "test_inner.py").write_text(body)
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    (tmp_path / "SKIPS.allow").write_text(allow)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(HERE)
    env["EPHEMERA_SKIPS_ALLOW"] = str(tmp_path / "SKIPS.allow")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)


def test_skips_fail_under_ci(tmp_path):
    r = run(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    # (a skip in the setup phase — a fixture, a fired skipif — is reported as an error)
    assert "1 failed, 2 passed, 1 xfailed, 2 errors" in r.stdout, r.stdout
    assert r.stdout.count("skipped under CI=true") >= 3, r.stdout
    assert "a peer is missing" in r.stdout and "fixture says no" in r.stdout


def test_any_ci_value_counts(tmp_path):
    for value in ("1", "True"):
        r = run(tmp_path, value)
        assert r.returncode == 1, (value, r.stdout)


def test_skips_stay_skips_without_ci(tmp_path):
    """The passing twin: the same session outside CI (or CI=false) skips and passes."""
    for value in (None, "false", "0"):
        r = run(tmp_path, value)
        assert r.returncode == 0, (value, r.stdout + r.stderr)
        assert "2 passed, 3 skipped, 1 xfailed" in r.stdout, r.stdout


def test_allow_listed_skips_pass_under_ci(tmp_path):
    allow = ("pytest:test_inner.py::test_skips  # the peer cannot exist here\n"
             "pytest:test_inner.py::test_skipif  # ditto\n"
             "pytest:test_inner.py::test_fixture_skip  # ditto\n")
    r = run(tmp_path, "true", allow)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 3 skipped, 1 xfailed" in r.stdout, r.stdout


def test_an_entry_needs_a_reason(tmp_path):
    r = run(tmp_path, "true", "pytest:test_inner.py::test_skips\n")
    assert r.returncode != 0
    assert "needs its reason" in r.stdout + r.stderr


def test_a_skipped_module_fails_under_ci(tmp_path):
    r = run(tmp_path, "true", body=MODULE_SKIP)
    assert r.returncode != 0, r.stdout
    assert "skipped under CI=true" in r.stdout, r.stdout
    r = run(tmp_path, None, body=MODULE_SKIP)
    assert r.returncode == 0 and "1 passed, 1 skipped" in r.stdout, r.stdout


# ---- the Rust half: scripts/check-skips over a cargo test log and the Rust sources

CHECK = HERE.parents[1] / "scripts" / "check-skips"
RESULT = "test result: ok. 3 passed; 0 failed; {} ignored; 0 measured; 0 filtered out; finished in 0.01s\n"
IGNORED_FN = "#[test]\n#[ignore = \"needs a peer\"]\nfn talks_to_peer() {}\n"


def check_skips(tmp_path: Path, ci: str | None, *, ignored: int, source: str = "", allow: str = ""):
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "lib.rs").write_text("#[test]\nfn plain() {}\n" + source)
    (tmp_path / "SKIPS.allow").write_text(allow)
    log = tmp_path / "cargo-test.log"
    log.write_text(RESULT.format(0) + RESULT.format(ignored))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(EPHEMERA_SKIPS_ROOT=str(tmp_path), EPHEMERA_SKIPS_ALLOW=str(tmp_path / "SKIPS.allow"))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(["bash", str(CHECK), str(log)], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_rust_ignore_fails_under_ci(tmp_path):
    r = check_skips(tmp_path, "true", ignored=1, source=IGNORED_FN)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "src/lib.rs:4 (talks_to_peer)" in r.stderr and "ignored 1 tests" in r.stderr, r.stderr


def test_rust_ignored_count_fails_under_ci_even_without_the_attribute(tmp_path):
    r = check_skips(tmp_path, "true", ignored=2)
    assert r.returncode == 1 and "ignored 2 tests" in r.stderr, r.stderr


def test_rust_twins_pass(tmp_path):
    """No ignore at all passes; an allow-listed ignore passes under CI; outside CI it warns only."""
    r = check_skips(tmp_path, "true", ignored=0)
    assert r.returncode == 0 and "0 ignored Rust tests" in r.stdout, r.stdout + r.stderr
    r = check_skips(tmp_path, "true", ignored=1, source=IGNORED_FN,
                    allow="rust:talks_to_peer  # the peer cannot run here\n")
    assert r.returncode == 0 and "1 ignored Rust tests, 1 allowed" in r.stdout, r.stdout + r.stderr
    r = check_skips(tmp_path, None, ignored=1, source=IGNORED_FN)
    assert r.returncode == 0 and "a warning only" in r.stderr, r.stderr
