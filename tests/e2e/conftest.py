"""Fixtures for Ephemera's end-to-end tests: the real binary against a mock issuer, on loopback.

- `ephemera_bin`: the broker binary (EPHEMERA_BIN, else $CARGO_TARGET_DIR/debug/ephemera, else
  <repo>/target/debug/ephemera); a missing binary errors every test that needs it.
- `canary`: a TCP listener that counts connections it should never get.
- `mock_factory` / `mock_issuer`: mock OIDC issuers in their own processes (mock_issuer.py).
- `broker_factory` / `broker`: `ephemera serve` with a config written to tmp_path; stderr, stdout
  and the audit log live there too. At teardown of a passing test the audit invariants are checked
  (one allow record per 200; one deny record with the same reason per rejection).

Environment: EPHEMERA_TEST_RUST_LOG sets the broker's RUST_LOG (default `info`).
"""

from __future__ import annotations

import pytest

from harness import (
    Broker,
    Canary,
    MockIssuer,
    broker_config,
    find_binary,
    provider,
    role,
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture(scope="session")
def ephemera_bin():
    return find_binary()


@pytest.fixture
def canary():
    c = Canary()
    yield c
    c.close()


@pytest.fixture
def mock_factory(tmp_path):
    made: list[MockIssuer] = []

    def make(port: int = 0) -> MockIssuer:
        m = MockIssuer(tmp_path / f"issuer{len(made)}", port=port)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def mock_issuer(mock_factory):
    return mock_factory()


@pytest.fixture
def broker_factory(ephemera_bin, tmp_path, request):
    made: list[tuple[Broker, bool]] = []

    def make(providers=None, roles=None, *, jwks=None, server=None, env=None, rust_log=None,
             issuer: MockIssuer | None = None, check_invariants: bool = True) -> Broker:
        if providers is None:
            assert issuer is not None, "give providers or an issuer"
            providers = [provider("mock", issuer.issuer)]
        if roles is None:
            roles = [
                role("deploy", providers[0]["name"]),
                role("release", providers[0]["name"],
                     conditions={"repository": "acme/app", "ref": "refs/heads/release"}),
            ]
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        cfg = broker_config(workdir, providers, roles, jwks=jwks, server=server)
        b = Broker(ephemera_bin, workdir, cfg, env=env, rust_log=rust_log)
        made.append((b, check_invariants))
        return b

    yield make
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    try:
        if passed:
            for b, check in made:
                if check:
                    b.check_audit_invariants()
    finally:
        for b, _ in made:
            b.stop()


@pytest.fixture
def broker(broker_factory, mock_issuer):
    return broker_factory(issuer=mock_issuer)
