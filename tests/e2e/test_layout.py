"""The layout guard (scripts/check-layout) works: on synthetic trees it passes a clean layout, names
each forbidden import by `path:line`, prints each import cycle with an example per edge, and ignores
comments, strings and test-only references for cycles. No broker binary is needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-layout"

NO_HTTP = "(the pipeline knows no HTTP; only server does)"
POLICY = "(policy never reads state; policy is plain data in, decision out)"
VERIFIERS = "(two separate verifier crates)"
LEAF = "(a leaf module uses no other module)"

# A clean tree: every module the rules name is either absent (state, audit, minting) or keeps them.
CLEAN = {
    "src/lib.rs": "pub mod cli;\npub mod clock;\npub mod config;\npub mod exchange;\npub mod ids;\n"
                  "pub mod policy;\npub mod server;\n",
    "src/main.rs": "use ephemera::cli;\nfn main() { crate::cli::run() }\n",
    "src/clock.rs": "//! The clock: a leaf (naming itself is no use of another module).\npub struct Clock;\n"
                    "pub fn now() -> crate::clock::Clock { Clock }\n",
    "src/ids.rs": "//! Ids: a leaf.\npub fn random_id() -> String { String::new() }\n",
    "src/policy.rs": "//! Policy.\npub struct Decision;\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    "src/config.rs": "use crate::policy::Decision;\npub struct Config;\n",
    "src/exchange/mod.rs": "//! The pipeline (it never says `axum`, see crate::server for that).\nmod verify;\n"
                           "use crate::{config::Config, clock};\nuse super::policy::Decision;\n"
                           "const WHY: &str = \"no axum, no crate::server\";\npub struct Broker;\n",
    "src/exchange/verify.rs": "use crate::ids::random_id;\nuse super::Broker;\npub fn verify() {}\n",
    "src/server/mod.rs": "use axum::Router;\nuse http::StatusCode;\nuse crate::exchange::Broker;\n",
    "src/cli.rs": "use crate::{server, exchange::Broker};\n",
    "providers/Cargo.toml": "[package]\nname = \"ephemera-providers\"\n\n[dependencies]\nserde = \"1\"\n",
    "providers/src/lib.rs": "//! Not ephemera_attestation.\npub fn verify() {}\n",
    "attestation/Cargo.toml": "[package]\nname = \"ephemera-attestation\"\n\n[dependencies]\n"
                              "# not ephemera-providers\nserde = \"1\"\n",
    "attestation/src/lib.rs": "pub fn verify() {}\n",
}
CLEAN_EDGES = ["cli -> exchange", "cli -> server", "config -> policy", "exchange -> clock",
               "exchange -> config", "exchange -> ids", "exchange -> policy", "server -> exchange"]

# modules no rule names, for the cycle cases
CYCLE_FREE = {
    "src/lib.rs": "pub mod alpha;\npub mod beta;\npub mod gamma;\n",
    "src/alpha.rs": "use crate::beta::B;\npub struct A;\n",
    "src/beta.rs": "use crate::{\n    gamma::{deep::D, G},\n};\npub struct B;\n",
    "src/gamma/mod.rs": "pub mod deep;\npub struct G;\n",
    "src/gamma/deep.rs": "pub struct D;\n",
}

VIOLATION = re.compile(r"^[\w./-]+:\d+: [\w-]+ uses \S+ \([^()]+\)$")
CYCLE = re.compile(r"^cycle: \w+( -> \w+)+$")
EDGE = re.compile(r"^  \w+ -> \w+: [\w./-]+:\d+$")
SUMMARY = re.compile(r"^layout (ok: \d+ modules, \d+ edges, no cycle"
                     r"|FAILED: forbidden imports: \d+, cycles: \d+( or more)? \(\d+ modules, \d+ edges\))$")


def tree(tmp_path: Path, files: dict[str, str], **changes: str) -> Path:
    """Writes files with changes applied (a change's path spelt with `__` for `/`)."""
    files = dict(files)
    for key, text in changes.items():
        files[key.replace("__", "/")] = text
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def check(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args, str(root)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def violations(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stdout.splitlines() if VIOLATION.match(line)]


def test_a_clean_tree_passes(tmp_path):
    r = check(tree(tmp_path, CLEAN))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "layout ok: 7 modules, 8 edges, no cycle\n"


def test_graph_prints_the_edges(tmp_path):
    r = check(tree(tmp_path, CLEAN), "--graph")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == CLEAN_EDGES


@pytest.mark.parametrize("changes, expected", [
    ({"src__exchange__verify.rs": "use crate::ids::random_id;\nuse super::Broker;\nuse axum::Router;\n"},
     [f"src/exchange/verify.rs:3: exchange uses axum {NO_HTTP}"]),
    ({"src__config.rs": "use crate::policy::Decision;\nfn f() -> http::StatusCode { todo!() }\n"},
     [f"src/config.rs:2: config uses http:: {NO_HTTP}"]),
    ({"src__ids.rs": "pub fn random_id() -> String {\n    crate::clock::Clock;\n    String::new()\n}\n"},
     [f"src/ids.rs:2: ids uses crate::clock {LEAF}"]),
    ({"attestation__src__lib.rs": "use ephemera_providers::json;\npub fn verify() {}\n"},
     [f"attestation/src/lib.rs:1: attestation uses ephemera_providers {VERIFIERS}"]),
    ({"attestation__Cargo.toml": CLEAN["attestation/Cargo.toml"] + "ephemera-providers = { path = \"../providers\" }\n"},
     [f"attestation/Cargo.toml:7: attestation uses ephemera-providers {VERIFIERS}"]),
    ({"providers__src__lib.rs": "pub fn verify() {}\n\nuse ephemera_attestation::Evidence;\n"},
     [f"providers/src/lib.rs:3: providers uses ephemera_attestation {VERIFIERS}"]),
    ({"providers__src__lib.rs": "pub fn verify() { ephemera::exchange::run() }\n"},
     ["providers/src/lib.rs:1: providers uses ephemera:: (a verifier crate never uses the broker)"]),
], ids=["axum-in-exchange", "http-in-config", "leaf-uses-crate", "attestation-src-uses-providers",
        "attestation-cargo-depends-on-providers", "providers-uses-attestation", "providers-uses-broker"])
def test_each_rule_kind_names_the_violation(tmp_path, changes, expected):
    r = check(tree(tmp_path, CLEAN, **changes))
    assert r.returncode == 1, r.stdout
    assert violations(r) == expected, r.stdout
    assert "cycle:" not in r.stdout
    assert r.stdout.splitlines()[-1].startswith("layout FAILED: forbidden imports: 1, cycles: 0 (7 modules, ")


def test_server_using_cli_is_forbidden(tmp_path):
    server = "use axum::Router;\nuse crate::exchange::Broker;\n\nuse crate::cli::run;\n"
    r = check(tree(tmp_path, CLEAN, **{"src__server__mod.rs": server}))
    assert r.returncode == 1, r.stdout
    assert violations(r) == ["src/server/mod.rs:4: server uses crate::cli "
                             "(the CLI is an edge; the server never calls it)"], r.stdout
    assert "cycle: cli -> server -> cli\n" in r.stdout


GROUPED = "use crate::{server::App, clock};\nuse crate::config::Config;\npub struct Broker;\n"
GROUPED_LINES = "use crate::{\n    clock,\n    server::{App, routes},\n};\npub struct Broker;\n"
VIA_SUPER = "use crate::clock;\nuse super::server::App;\npub struct Broker;\n"


@pytest.mark.parametrize("file, text, line", [
    ("src__exchange__mod.rs", GROUPED, 1),
    ("src__exchange__mod.rs", GROUPED_LINES, 3),
    ("src__exchange__mod.rs", VIA_SUPER, 2),
    ("src__exchange__verify.rs", "use super::super::{ids, server};\n", 1),
], ids=["grouped", "grouped-over-lines", "super-from-the-root-file", "super-super-from-a-child-file"])
def test_a_use_in_any_spelling_counts(tmp_path, file, text, line):
    """A `crate::server` reached through a group or supers is still exchange → server (and a cycle)."""
    r = check(tree(tmp_path, CLEAN, **{file: text}))
    assert r.returncode == 1, r.stdout
    path = file.replace("__", "/")
    assert violations(r) == [f"{path}:{line}: exchange uses crate::server {NO_HTTP}"], r.stdout
    assert "cycle: exchange -> server -> exchange\n" in r.stdout
    assert f"  exchange -> server: {path}:{line}\n" in r.stdout


def test_super_from_a_child_file_stays_in_its_module(tmp_path):
    """The passing twin: in src/exchange/verify.rs one `super::` is exchange, so `super::server` is
    exchange's own `server`, not the top-level module."""
    r = check(tree(tmp_path, CLEAN, **{"src__exchange__verify.rs": "use super::server::Local;\nuse crate::ids::random_id;\n"}))
    assert r.returncode == 0, r.stdout


def test_policy_using_config_is_forbidden_and_a_cycle(tmp_path):
    r = check(tree(tmp_path, CLEAN, **{"src__policy.rs": "//! Policy.\nuse crate::config::X;\npub struct Decision;\n"}))
    assert r.returncode == 1, r.stdout
    assert violations(r) == [f"src/policy.rs:2: policy uses crate::config {POLICY}"], r.stdout
    assert ("cycle: config -> policy -> config\n"
            "  config -> policy: src/config.rs:1\n"
            "  policy -> config: src/policy.rs:2\n") in r.stdout


def test_test_code_counts_for_forbidden_imports(tmp_path):
    text = "pub struct Decision;\n\n#[cfg(test)]\nmod tests {\n    use crate::config::Config;\n}\n"
    r = check(tree(tmp_path, CLEAN, **{"src__policy.rs": text}))
    assert r.returncode == 1, r.stdout
    assert violations(r) == [f"src/policy.rs:5: policy uses crate::config {POLICY}"], r.stdout
    assert "cycle:" not in r.stdout


def test_comments_and_strings_do_not_count(tmp_path):
    """Forbidden names in comments, doc comments and string literals are not uses (the passing twin
    of the axum and cli cases above)."""
    exchange = ('//! Knows no axum; crate::server does.\n'
                '/* use axum::Router; /* nested: crate::cli */ still a comment */\n'
                'use crate::clock; // crate::server\n'
                '/// see `crate::cli::run` and http::StatusCode\n'
                'pub struct Broker;\n'
                'const A: &str = "axum crate::server \\" crate::cli";\n'
                'const B: &str = r#"use crate::server::App; "tower" "#;\n'
                'const C: char = \'"\';\n'
                'fn f<\'a>(x: &\'a str) -> &\'a str { x }\n')
    ids = 'pub fn random_id() -> String {\n    // crate::clock\n    String::from("crate::clock")\n}\n'
    r = check(tree(tmp_path, CLEAN, **{"src__exchange__mod.rs": exchange, "src__ids.rs": ids}))
    assert r.returncode == 0, r.stdout
    # the twin: the same file with one real use after the literals
    r = check(tree(tmp_path, CLEAN, **{"src__exchange__mod.rs": exchange + "use crate::cli::run;\n"}))
    assert r.returncode == 1, r.stdout
    assert violations(r) == ["src/exchange/mod.rs:10: exchange uses crate::cli "
                             "(the CLI is an edge; the pipeline never calls it)"], r.stdout


def test_a_two_module_cycle_fails(tmp_path):
    r = check(tree(tmp_path, CYCLE_FREE, **{"src__beta.rs": "pub struct B;\nfn f() -> crate::alpha::A { crate::alpha::A }\n"}))
    assert r.returncode == 1, r.stdout
    assert r.stdout == ("cycle: alpha -> beta -> alpha\n"
                        "  alpha -> beta: src/alpha.rs:1\n"
                        "  beta -> alpha: src/beta.rs:2\n"
                        "layout FAILED: forbidden imports: 0, cycles: 1 (3 modules, 2 edges)\n")


def test_a_three_module_cycle_fails(tmp_path):
    """alpha → beta (crate::), beta → gamma (a nested group over lines), gamma → alpha (from
    src/gamma/deep.rs through super::super)."""
    r = check(tree(tmp_path, CYCLE_FREE, **{"src__gamma__deep.rs": "pub struct D;\nuse super::super::alpha;\n"}))
    assert r.returncode == 1, r.stdout
    assert r.stdout == ("cycle: alpha -> beta -> gamma -> alpha\n"
                        "  alpha -> beta: src/alpha.rs:1\n"
                        "  beta -> gamma: src/beta.rs:2\n"
                        "  gamma -> alpha: src/gamma/deep.rs:2\n"
                        "layout FAILED: forbidden imports: 0, cycles: 1 (3 modules, 3 edges)\n")


def test_the_same_modules_without_the_closing_edge_pass(tmp_path):
    r = check(tree(tmp_path, CYCLE_FREE))
    assert r.returncode == 0, r.stdout
    assert r.stdout == "layout ok: 3 modules, 2 edges, no cycle\n"


@pytest.mark.parametrize("beta", [
    "pub struct B;\n\n#[cfg(test)]\nmod tests {\n    use crate::alpha::A;\n    #[test]\n    fn t() { let _ = A; }\n}\n",
    "pub struct B;\n#[cfg(test)]\n#[allow(unused)]\nfn helper() -> crate::alpha::A { crate::alpha::A }\n",
], ids=["mod-tests", "cfg-test-item"])
def test_a_test_only_reference_is_not_a_cycle(tmp_path, beta):
    r = check(tree(tmp_path, CYCLE_FREE, **{"src__beta.rs": beta}))
    assert r.returncode == 0, r.stdout
    assert r.stdout == "layout ok: 3 modules, 1 edges, no cycle\n"
    # the twin: the same code without #[cfg(test)] is a cycle
    r = check(tree(tmp_path, CYCLE_FREE, **{"src__beta.rs": beta.replace("#[cfg(test)]\n", "")}))
    assert r.returncode == 1 and "cycle: alpha -> beta -> alpha\n" in r.stdout, r.stdout


def test_a_test_module_file_is_test_code(tmp_path):
    files = {"src__gamma__mod.rs": "pub struct G;\n#[cfg(test)]\nmod tests;\n",
             "src__gamma__tests.rs": "use crate::alpha::A;\n",
             "src__alpha.rs": "use crate::gamma::G;\n"}
    r = check(tree(tmp_path, CYCLE_FREE, **files))
    assert r.returncode == 0, r.stdout
    files["src__gamma__mod.rs"] = "pub struct G;\nmod tests;\n"
    r = check(tree(tmp_path, CYCLE_FREE, **files))
    assert r.returncode == 1 and "cycle: alpha -> gamma -> alpha\n" in r.stdout, r.stdout


def test_code_after_a_test_module_still_counts(tmp_path):
    beta = "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n\npub fn after() -> crate::alpha::A { todo!() }\n"
    r = check(tree(tmp_path, CYCLE_FREE, **{"src__beta.rs": beta}))
    assert r.returncode == 1, r.stdout
    assert "  beta -> alpha: src/beta.rs:6\n" in r.stdout


def test_usage_errors(tmp_path):
    assert check(tmp_path).returncode == 2  # no src/
    assert check(tree(tmp_path, CLEAN), "--bogus").returncode == 2


def test_the_repository_passes():
    """The real tree keeps the layout of docs/ARCHITECTURE.md: no cycle, no forbidden import, and
    every part the rules name is there (a rule on a missing module would be skipped silently)."""
    r = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("layout ok: ") and SUMMARY.match(lines[0]), r.stdout
    for part in ["exchange", "minting", "policy", "config", "state", "audit", "server", "cli"]:
        assert (ROOT / "src" / part / "mod.rs").is_file(), part
    for leaf in ["clock", "secret", "ids"]:
        assert (ROOT / "src" / f"{leaf}.rs").is_file(), leaf
