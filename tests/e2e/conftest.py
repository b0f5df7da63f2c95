"""Fixtures for Ephemera's end-to-end tests: the real binary against a mock issuer, on loopback.

- `ephemera_bin`: the broker binary (EPHEMERA_BIN, else $CARGO_TARGET_DIR/debug/ephemera, else
  <repo>/target/debug/ephemera); a missing binary errors every test that needs it.
- `canary`: a TCP listener that counts connections it should never get.
- `mock_factory` / `mock_issuer`: mock OIDC issuers in their own processes (mock_issuer.py).
- `broker_factory` / `broker`: `ephemera serve` with a config written to tmp_path; stderr, stdout
  and the audit log live there too. At teardown of a passing test the audit invariants are checked
  (one allow record per 200; one deny record with the same reason per rejection).

- `moto_bin`, `moto_factory` / `moto`: moto_server (a local STS) from the test virtualenv, one
  process per test on its own loopback port, with moto's request recorder on; a missing
  moto_server skips, or fails with CI=true. `broker_factory(extra_config=...)` adds top-level
  tables to the broker's config (e.g. `[gcp]`).

Environment: EPHEMERA_TEST_RUST_LOG sets the broker's RUST_LOG (default `info`).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from harness import (
    DEFAULT_CONDITIONS,
    Broker,
    Canary,
    MockIssuer,
    MotoServer,
    broker_config,
    find_binary,
    find_moto_server,
    provider,
    require_peer,
    role,
)


from skipguard import _fail_skip, pytest_make_collect_report  # noqa: F401 (a hook: under CI=true a skip fails)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    _fail_skip(rep, item.nodeid)
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


class MockPool:
    """Hands out fresh mock issuers, starting the next one in the background while a test runs
    (a Python process with its own RSA key takes a noticeable fraction of a second to start)."""

    def __init__(self, base):
        self.base = base
        self.n = 0
        self.lock = threading.Lock()
        self.pool = cf.ThreadPoolExecutor(max_workers=1)
        self.spare: cf.Future | None = None

    def _spawn(self) -> MockIssuer:
        with self.lock:
            self.n += 1
            d = self.base / f"issuer{self.n}"
        return MockIssuer(d)

    def get(self) -> MockIssuer:
        m = None
        if self.spare is not None:
            try:
                m = self.spare.result(timeout=60)
            except Exception:  # a failed spare: start one in the foreground instead
                m = None
            if m is not None and not m.alive:
                m.close()
                m = None
        self.spare = self.pool.submit(self._spawn)
        return m or self._spawn()

    def close(self):
        if self.spare is not None:
            try:
                self.spare.result(timeout=60).close()
            except Exception:
                pass
        self.pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def _mock_pool(tmp_path_factory):
    pool = MockPool(tmp_path_factory.mktemp("issuers"))
    yield pool
    pool.close()


@pytest.fixture
def mock_factory(_mock_pool):
    made: list[MockIssuer] = []

    def make() -> MockIssuer:
        m = _mock_pool.get()
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
             issuer: MockIssuer | None = None, check_invariants: bool = True,
             extra_config: dict | None = None) -> Broker:
        if providers is None:
            assert issuer is not None, "give providers or an issuer"
            providers = [provider("mock", issuer.issuer)]
        if roles is None:
            roles = [
                role("deploy", providers[0]["name"]),
                role("release", providers[0]["name"],
                     conditions=dict(DEFAULT_CONDITIONS, ref="refs/heads/release")),
            ]
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        cfg = broker_config(workdir, providers, roles, jwks=jwks, server=server)
        cfg.update(extra_config or {})  # more top-level tables, e.g. [gcp]
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


@pytest.fixture(scope="session")
def moto_bin():
    """moto_server from the test virtualenv (a missing one skips, or fails with CI=true)."""
    found = find_moto_server()
    require_peer("moto_server", found is not None, "pip install -r tests/requirements.txt installs moto[server]")
    return found


@pytest.fixture
def moto_factory(moto_bin, tmp_path):
    """Fresh moto_server processes for this test, each on its own loopback port."""
    made: list[MotoServer] = []

    def make() -> MotoServer:
        m = MotoServer(moto_bin, tmp_path / f"moto{len(made)}")
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def moto(moto_factory):
    return moto_factory()
