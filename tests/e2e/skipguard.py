"""A skip under CI=true is a failure: the project's global guard against tests that pass CI by not
running.

Loaded by conftest.py (`pytest_plugins`). With `CI` set to anything but empty, `0` or `false`,
every skipped test (a `pytest.skip`, a `skipif` that fired, an `importorskip`, a skip in a fixture,
a skipped module) is reported as failed, unless its node id is on the allow-list
`tests/SKIPS.allow`, where each entry carries the reason it may skip. `xfail` is not a skip: a strict
xfail already fails when it passes. The Rust side (`#[ignore]`) is checked by `scripts/check-skips`
against the same list.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import ci_strict  # any CI but empty, 0 or false

# (EPHEMERA_SKIPS_ALLOW points elsewhere: the guard's own test uses it)
ALLOW_LIST = Path(os.environ.get("EPHEMERA_SKIPS_ALLOW") or Path(__file__).resolve().parents[1] / "SKIPS.allow")


def allowed_ids(path: Path = ALLOW_LIST) -> set[str]:
    """Entries of the allow-list: `pytest:<node id>` or `rust:<test name>`, then `#` and the
    reason. An entry without a reason is refused: an unexplained skip is what the guard is for."""
    ids = set()
    if not path.exists():
        return ids
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, reason = line.partition("#")
        if not reason.strip():
            raise pytest.UsageError(f"{path}:{n}: an allowed skip needs its reason after `#`")
        ids.add(entry.strip())
    return ids


def _fail_skip(report, nodeid: str) -> None:
    if not ci_strict() or not report.skipped or hasattr(report, "wasxfail"):
        return
    if f"pytest:{nodeid}" in allowed_ids():
        return
    why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true ({why}); a skip passes CI without testing anything: install what "
        f"it needs in scripts/test, or put `pytest:{nodeid}` with its reason in {ALLOW_LIST.name}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    _fail_skip(rep, item.nodeid)
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    rep = yield
    _fail_skip(rep, collector.nodeid)
    return rep
