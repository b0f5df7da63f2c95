"""The README's promises are pinned: every reason slug of the README's error table is asserted by an
end-to-end test, or, for an answer no request can provoke (the system's randomness failing), by a
Rust unit test (a documented answer no test produces is either unreachable — README listed
`binding_mismatch`, which no route could answer — or untested), and every test the claims map
(tests/CLAIMS.md) names exists."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def error_table_slugs(readme: str) -> set[str]:
    section = readme[readme.index("\n## Errors"):]
    section = section[:section.index("\n## ", 5)]
    slugs = set()
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("| ") and len(cells) > 4:
            slugs.update(re.findall(r"`([a-z_]+)`", cells[3]))
    return slugs


def unit_tests(text: str) -> str:
    """The test modules of a Rust file: everything from its `#[cfg(test)]` on."""
    return text[text.index("#[cfg(test)]"):] if "#[cfg(test)]" in text else ""


def asserted_slugs() -> str:
    e2e = [p.read_text() for p in sorted(HERE.glob("test_*.py")) if p.name != "test_docs.py"]
    rust = [unit_tests(p.read_text()) for p in sorted((REPO / "src").rglob("*.rs"))]
    return "\n".join(e2e + rust)


def test_every_documented_reason_is_asserted_by_a_test():
    slugs = error_table_slugs((REPO / "README.md").read_text())
    assert len(slugs) > 40, sorted(slugs)  # the table was found and read
    tests = asserted_slugs()
    missing = sorted(s for s in slugs if not re.search(rf"[\"']{s}[\"']", tests))
    assert missing == [], f"README error table lists reasons no e2e test asserts: {missing}"


def test_the_slug_check_sees_a_missing_slug():
    """The twin: a table with a slug no test names is caught."""
    readme = ("\n## Errors\n\n| HTTP | `error` | reason slugs | when |\n|---|---|---|---|\n"
              "| 400 | `invalid_request` | `token_replayed`, `no_such_reason_anywhere` | x |\n\n## Next\n")
    slugs = error_table_slugs(readme)
    assert slugs == {"token_replayed", "no_such_reason_anywhere"}
    tests = asserted_slugs()
    assert re.search(r"[\"']token_replayed[\"']", tests)
    assert not re.search(r"[\"']no_such_reason_anywhere[\"']", tests)
    # a slug that the broker's code names but only outside its tests does not count
    assert "policy_unscoped" in (REPO / "src/policy/lint.rs").read_text()
    assert not re.search(r"[\"']policy_unscoped[\"']", unit_tests((REPO / "src/policy/lint.rs").read_text()))


def claims_map_tests(text: str) -> set[tuple[str, str]]:
    """(file, name) of every test the claims map names (`path/to/file.rs::name`, `...py::name`)."""
    return set(re.findall(r"`((?:tests|src|providers|attestation|untrusted)/[\w/.-]+\.(?:py|rs))::(\w+)(?:\[[^`]*\])?`", text))


def defined(file: Path, name: str) -> bool:
    text = file.read_text() if file.exists() else ""
    pattern = rf"^\s*def {name}\(" if file.suffix == ".py" else rf"\bfn {name}\b"
    return re.search(pattern, text, re.M) is not None


def test_every_test_the_claims_map_names_exists():
    named = claims_map_tests((REPO / "tests" / "CLAIMS.md").read_text())
    assert len(named) > 200, len(named)  # the map was found and read
    missing = sorted(f"{f}::{n}" for f, n in named if not defined(REPO / f, n))
    assert missing == [], f"tests/CLAIMS.md names tests that do not exist: {missing}"


def test_the_claims_check_sees_a_missing_test():
    """The twin: a name that exists passes, one that does not is caught, in both languages."""
    text = ("`tests/e2e/test_docs.py::test_every_test_the_claims_map_names_exists`, "
            "`tests/broker/admin_routes.rs::garbage_is_inactive`, `tests/e2e/test_docs.py::test_nothing_by_this_name`, "
            "`tests/broker/admin_routes.rs::no_fn_by_this_name`")
    named = claims_map_tests(text)
    assert len(named) == 4
    assert sorted(n for f, n in named if not defined(REPO / f, n)) == ["no_fn_by_this_name", "test_nothing_by_this_name"]
