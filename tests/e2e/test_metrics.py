"""Prometheus metrics (issue 16, spec M): `GET /metrics` on the admin router, behind the admin
bearer credential, scraped by a REAL Prometheus server (Debian's `prometheus`, started here on
loopback with its own config and storage in tmp) with `authorization: {credentials_file: ...}`.
The test produces known traffic and asks Prometheus, through its HTTP API and PromQL, for the counts
it produced; the other families of the spec are checked in the scrape (and in Prometheus).
The twins: `/metrics` without (or with a wrong) admin credential is 401, a Prometheus job with a
wrong credential sees its target down with the 401, and `/metrics` is not on the public listener
when `[admin] listen` is set (it is, behind the credential, when it is not)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import jwt
import pytest
import requests

from harness import HTTP_TIMEOUT, PARTNER, STARTUP_TIMEOUT, free_port, require_peer, wait_until

ADMIN_TOKEN = "admin-" + "m" * 40

# Every family of spec M, with its Prometheus type.
FAMILIES = {
    "ephemera_exchanges_total": "counter",
    "ephemera_exchange_duration_seconds": "histogram",
    "ephemera_key_fetches_total": "counter",
    "ephemera_key_cache_lookups_total": "counter",
    "ephemera_state_duration_seconds": "histogram",
    "ephemera_state_errors_total": "counter",
    "ephemera_audit_queue_depth": "gauge",
    "ephemera_audit_fsync_duration_seconds": "histogram",
    "ephemera_grants_live": "gauge",
    "ephemera_revocations_total": "counter",
    "ephemera_outbox_deliveries_total": "counter",
    "ephemera_build_info": "gauge",
}


def jwt_id(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---- the Prometheus text format, read as Prometheus reads it ------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict, float]]]:
    """(family -> TYPE, samples as (name, labels, value)) of a text-format scrape."""
    types: dict[str, str] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a text-format sample line: {line!r}"
        labels = dict(_LABEL.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def series(samples, name: str, **labels) -> list[tuple[dict, float]]:
    return [(lb, v) for n, lb, v in samples if n == name and all(lb.get(k) == w for k, w in labels.items())]


# ---- a real Prometheus ----------------------------------------------------------------------------


def job(target: str, credentials_file: Path, tls: dict | None = None) -> dict:
    """A scrape job as an operator would write it (docs/production.md): the admin credential from
    a file; with `tls`, https and that `tls_config` (ca_file, cert_file, key_file)."""
    j = {
        "metrics_path": "/metrics",
        "scheme": "https" if tls is not None else "http",
        "authorization": {"type": "Bearer", "credentials_file": str(credentials_file)},
        "static_configs": [{"targets": [target]}],
    }
    if tls is not None:
        j["tls_config"] = tls
    return j


class Prometheus:
    """`prometheus` on a free loopback port, scraping `jobs` (name -> `job(...)`) every second;
    its TSDB, config and log in `workdir`."""

    def __init__(self, binary: str, workdir: Path, jobs: dict[str, dict]):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [dict(job_name=name, **j) for name, j in jobs.items()],
        }
        # YAML is a superset of JSON: the config needs no YAML library
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "prometheus.log"
        self.proc = None
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL)
            try:
                wait_until(self._ready, timeout=STARTUP_TIMEOUT, interval=0.1, what="prometheus /-/ready")
                return
            except AssertionError:
                self.close()
                if "address already in use" not in self.log() or attempt == 2:
                    raise RuntimeError(f"prometheus did not start:\n{self.log()[-4000:]}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def targets(self) -> dict[str, dict]:
        """The active targets by job name."""
        r = requests.get(self.url + "/api/v1/targets", params={"state": "active"}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return {t["labels"]["job"]: t for t in r.json()["data"]["activeTargets"]}

    def target_scraped(self, job: str) -> dict | None:
        """The target of `job` once it has been scraped at least once (health up or down)."""
        t = self.targets().get(job)
        return t if t and t["health"] in ("up", "down") else None

    def query(self, promql: str) -> list[tuple[dict, float]]:
        """An instant query through the HTTP API: (labels, value) per series."""
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def prometheus_bin():
    found = shutil.which("prometheus")
    require_peer("prometheus", found is not None, "scripts/test installs Debian's package: apt-get install prometheus")
    return found


@pytest.fixture
def prometheus_factory(prometheus_bin, tmp_path):
    made: list[Prometheus] = []

    def make(jobs: dict[str, dict]) -> Prometheus:
        p = Prometheus(prometheus_bin, tmp_path / f"prometheus{len(made)}", jobs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def by(rows: list[tuple[dict, float]], *keys: str) -> dict[tuple, float]:
    """PromQL rows keyed by label values (Prometheus drops a label whose value is empty: "")."""
    return {tuple(m.get(k, "") for k in keys): v for m, v in rows}


# ---- the tests ---------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_counts_the_test_produced(broker_factory, mock_issuer, prometheus_factory,
                                                         ephemera_bin, tmp_path, request):
    """Known traffic, then PromQL through a real Prometheus: 3 allows, 2 `policy_denied` and 1
    `token_replayed` for role `deploy`, 1 `unknown_role`, 1 admin revocation of a grant whose SET
    is delivered to a receiver; the live grants (every unexpired one, the revoked one included),
    the build info, the stage histograms, the issuer's key fetch and cache hits, the file state
    store's and the audit log's timings. One more allow afterwards is seen at a later scrape."""
    from test_ssf_push import Receiver

    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    admin_port = free_port()
    receiver = Receiver()  # the partner told of a revoked grant of its audience (a SET, 202)
    request.addfinalizer(receiver.close)
    b = broker_factory(issuer=mock_issuer, server={"rate_limit_per_second": 0},
                       extra_config={"state": {"backend": "file"},
                                     "admin": {"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}"},
                                     "events": {"receivers": [{"audience": PARTNER, "endpoint": receiver.endpoint}]}})
    admin_url = f"http://127.0.0.1:{admin_port}"

    # the traffic
    tokens = [mock_issuer.token() for _ in range(3)]
    answers = [b.exchange(t) for t in tokens]
    assert [a.status for a in answers] == [200] * 3, answers
    for _ in range(2):
        r = b.exchange(mock_issuer.token(ref="refs/heads/release"))  # deploy pins refs/heads/main
        assert r.reason == "policy_denied", r
    r = b.exchange(tokens[0])
    assert r.reason == "token_replayed", r
    unknown = "no-such-role-" + uuid.uuid4().hex[:8]
    r = b.exchange(mock_issuer.token(), role=unknown)
    assert r.status == 400 and r.reason == "unknown_role", r
    # an admin revokes the third grant (/v1/revoke is on the public listener: workloads end their
    # own tasks there): its SET is pushed to the receiver (the outbox delivers it)
    rv = requests.post(b.url + "/v1/revoke", data={"jti": jwt_id(answers[2].json["access_token"])},
                       headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    assert rv.status_code == 200 and rv.json()["matched"] == 1, rv.text
    wait_until(lambda: receiver.accepted(), timeout=60, interval=0.1, what="the SET pushed to the receiver")

    # the scrape, fetched directly: the admin credential is required
    direct = requests.get(admin_url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200, direct.text
    assert direct.headers.get("Content-Type", "").startswith("text/plain"), direct.headers
    types, samples = parse_exposition(direct.text)
    # a family appears with its first event: every one but the state store's errors (none here;
    # test_a_failing_state_store_is_counted makes them)
    missing = {f: k for f, k in FAMILIES.items() if types.get(f) != k and f != "ephemera_state_errors_total"}
    assert not missing, f"families missing or of another type in the scrape: {missing} (TYPEs: {types})"
    assert not series(samples, "ephemera_state_errors_total"), "state errors counted without a failure"
    assert ADMIN_TOKEN not in direct.text

    # a real Prometheus, with the credential in a file as an operator would configure it
    wrong_file = tmp_path / "wrong.token"
    wrong_file.write_text("admin-" + "w" * 40)
    prom = prometheus_factory({"ephemera": job(f"127.0.0.1:{admin_port}", token_file),
                               "ephemera-wrong-credential": job(f"127.0.0.1:{admin_port}", wrong_file)})
    target = wait_until(lambda: prom.target_scraped("ephemera"), timeout=60, interval=0.25,
                        what="prometheus to scrape the broker")
    assert target["health"] == "up", f"scrape failed: {target.get('lastError')}"
    assert target["scrapeUrl"] == f"http://127.0.0.1:{admin_port}/metrics", target

    exchanges = wait_until(lambda: prom.query('sum by (outcome, reason) (ephemera_exchanges_total{role="deploy"})'),
                           timeout=30, interval=0.25, what="the exchange counts in prometheus")
    got = by(exchanges, "outcome", "reason")
    print(f"\nPromQL sum by (outcome, reason) (ephemera_exchanges_total{{role=\"deploy\"}}): {got}")
    assert got == {("allow", ""): 3, ("deny", "policy_denied"): 2, ("deny", "token_replayed"): 1}, got
    per_provider = by(prom.query('sum by (provider) (ephemera_exchanges_total{role="deploy"})'), "provider")
    assert per_provider == {("mock",): 6}, per_provider
    unknown_rows = prom.query('sum by (outcome) (ephemera_exchanges_total{reason="unknown_role"})')
    assert by(unknown_rows, "outcome") == {("deny",): 1}, unknown_rows
    # a label never takes a value the request chose (an unknown role name would be a new series
    # per request: unbounded cardinality)
    assert prom.query(f'ephemera_exchanges_total{{role="{unknown}"}}') == []
    assert unknown not in direct.text
    assert by(prom.query("sum by (outcome) (ephemera_exchanges_total)"), "outcome") \
        == {("allow",): 3, ("deny",): 4}

    revocations = by(prom.query("sum by (source) (ephemera_revocations_total)"), "source")
    print(f"PromQL sum by (source) (ephemera_revocations_total): {revocations}")
    assert revocations == {("admin",): 1}, revocations
    deliveries = by(prom.query("sum by (kind, result) (ephemera_outbox_deliveries_total)"), "kind", "result")
    print(f"PromQL sum by (kind, result) (ephemera_outbox_deliveries_total): {deliveries}")
    assert deliveries == {("set", "delivered"): 1}, deliveries
    live = prom.query("ephemera_grants_live")
    print(f"PromQL ephemera_grants_live: {live}")
    assert [v for _, v in live] == [3], live
    build = prom.query("ephemera_build_info")
    assert len(build) == 1 and build[0][1] == 1, build
    # `ephemera 0.1.0 (commit …)`: the version is the second word
    version = subprocess.run([str(ephemera_bin), "--version"], capture_output=True, text=True).stdout.split()[1]
    assert build[0][0].get("version") == version, (build, version)
    # the config version, as the audit records name it (the first 16 hex digits of the file's SHA-256)
    assert build[0][0].get("config_version") == b.audit()[0]["policy_version"], build

    # the stage histograms: each stage timed the exchanges that reached it
    stages = by(prom.query("sum by (stage) (ephemera_exchange_duration_seconds_count)"), "stage")
    print(f"PromQL sum by (stage) (ephemera_exchange_duration_seconds_count): {stages}")
    assert set(stages) >= {("verify",), ("decide",), ("grant",), ("total",)}, stages
    assert stages[("grant",)] >= 3 and stages[("decide",)] >= 6 and stages[("total",)] >= 6, stages
    # the buckets form a histogram PromQL can read (cumulative `le` buckets ending in +Inf)
    quantile = prom.query('histogram_quantile(0.99, sum by (le) (ephemera_exchange_duration_seconds_bucket{stage="total"}))')
    assert len(quantile) == 1 and 0 < quantile[0][1] < float("inf"), quantile
    # the issuer's keys: fetched once (ok), then found in the cache. (Spec M said an `issuer`
    # label; the broker labels them with the provider's name, like the exchanges: a bounded set.)
    fetches = by(prom.query("sum by (provider, result) (ephemera_key_fetches_total)"), "provider", "result")
    lookups = by(prom.query("sum by (provider, result) (ephemera_key_cache_lookups_total)"), "provider", "result")
    print(f"PromQL key fetches: {fetches}; key cache lookups: {lookups}")
    assert fetches.get(("mock", "ok"), 0) >= 1 and ("mock", "error") not in fetches, fetches
    assert lookups.get(("mock", "hit"), 0) >= 1 and set(lookups) <= {("mock", "hit"), ("mock", "miss")}, lookups
    # the file state store and the audit log were timed; nothing failed
    state_ops = by(prom.query("sum by (op) (ephemera_state_duration_seconds_count)"), "op")
    assert state_ops and all(v >= 1 for v in state_ops.values()), state_ops
    assert prom.query("sum(ephemera_state_errors_total) > 0") == []
    fsyncs = prom.query("sum(ephemera_audit_fsync_duration_seconds_count)")
    assert fsyncs and fsyncs[0][1] >= 1, fsyncs  # allows are fsynced (group commits: at most one per allow)
    assert [v for _, v in prom.query("ephemera_audit_queue_depth")] == [0]

    # the twin job: the wrong credential is refused, and Prometheus says so
    wrong = wait_until(lambda: prom.target_scraped("ephemera-wrong-credential"), timeout=60, interval=0.25,
                       what="the wrong-credential job's first scrape")
    assert wrong["health"] == "down" and "401" in wrong["lastError"], wrong
    assert [v for _, v in prom.query('up{job="ephemera-wrong-credential"}')] == [0]
    assert [v for _, v in prom.query('up{job="ephemera"}')] == [1]

    # live: one more allow is seen at a later scrape
    assert b.exchange(mock_issuer.token()).status == 200
    wait_until(lambda: by(prom.query('sum by (outcome) (ephemera_exchanges_total{role="deploy",outcome="allow"})'),
                          "outcome") == {("allow",): 4},
               timeout=30, interval=0.25, what="the fourth allow in prometheus")


def test_metrics_require_the_admin_credential(broker_factory, mock_issuer, tmp_path):
    """`/metrics` answers 401 without the admin bearer credential and with a wrong one (the twin
    of the 200 with it); with `[admin] listen` it is on the admin listener only (404 on the public
    one); without, it is on the public listener, behind the same credential."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    admin_port = free_port()
    split = broker_factory(issuer=mock_issuer, extra_config={
        "admin": {"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}"}})
    one = broker_factory(issuer=mock_issuer, extra_config={"admin": {"token_file": str(token_file)}})
    answers = {}
    for name, url in (("admin listener", f"http://127.0.0.1:{admin_port}"), ("public, no admin listener", one.url)):
        none = requests.get(url + "/metrics", timeout=HTTP_TIMEOUT)
        wrong = requests.get(url + "/metrics", headers=bearer("admin-" + "x" * 40), timeout=HTTP_TIMEOUT)
        right = requests.get(url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
        answers[name] = (none.status_code, wrong.status_code, right.status_code)
        assert none.status_code == 401 and none.json()["error"] == "invalid_client", none.text
        assert wrong.status_code == 401 and "ephemera_" not in wrong.text, wrong.text
        assert right.status_code == 200 and "ephemera_build_info" in right.text, right.text
    public = requests.get(split.url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    answers["public, with an admin listener"] = public.status_code
    print(f"\n/metrics without, wrong, right credential: {answers}")
    assert public.status_code == 404, public.text


def test_prometheus_scrapes_a_tls_admin_listener_with_a_client_certificate(ephemera_bin, mock_issuer,
                                                                           prometheus_factory, tmp_path):
    """Metrics and TLS together, as docs/production.md configures them: the admin listener serves
    HTTPS and requires a client certificate of its client CA (`[admin] client_ca_file`); a
    Prometheus job with `tls_config` (the CA, its client certificate and key) and the admin
    credential scrapes it, and PromQL sees the exchange made. The twin job, the same without the
    client certificate, is down (the handshake fails)."""
    from test_tls import PKI, TlsBroker
    from harness import broker_config, provider, role

    pki = PKI(tmp_path / "pki")
    pki.install_server_cert()
    client_cert, client_key = pki.client_cert(pki.client_ca, "prometheus")
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    port, admin_port = free_port(), free_port()
    cfg = broker_config(tmp_path / "broker", [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                        server={"issuer": f"https://127.0.0.1:{port}", "tls_cert_file": str(pki.cert_file),
                                "tls_key_file": str(pki.key_file)}, port=port)
    cfg["admin"] = {"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}",
                    "client_ca_file": str(pki.client_ca_file)}
    b = TlsBroker(ephemera_bin, tmp_path / "broker", cfg, pki.ca_file)
    try:
        assert b.exchange(mock_issuer.token()).status == 200
        target = f"127.0.0.1:{admin_port}"
        with_cert = {"ca_file": str(pki.ca_file), "cert_file": client_cert, "key_file": client_key}
        prom = prometheus_factory({"ephemera-tls": job(target, token_file, with_cert),
                                   "ephemera-tls-no-client-cert": job(target, token_file, {"ca_file": str(pki.ca_file)})})
        up = wait_until(lambda: prom.target_scraped("ephemera-tls"), timeout=60, interval=0.25,
                        what="prometheus to scrape the TLS admin listener")
        assert up["health"] == "up", f"scrape failed: {up.get('lastError')}"
        assert up["scrapeUrl"] == f"https://{target}/metrics", up
        allows = wait_until(lambda: prom.query('sum(ephemera_exchanges_total{outcome="allow"})'), timeout=30,
                            interval=0.25, what="the allow in prometheus")
        assert [v for _, v in allows] == [1], allows
        down = wait_until(lambda: prom.target_scraped("ephemera-tls-no-client-cert"), timeout=60, interval=0.25,
                          what="the job without a client certificate to be scraped")
        print(f"\nwith a client certificate: {up['health']}; without: {down['health']} ({down['lastError'][:200]})")
        assert down["health"] == "down", down
        b.check_audit_invariants()
    finally:
        b.stop()


def test_a_failing_state_store_is_counted(broker_factory, mock_issuer, tmp_path):
    """`ephemera_state_errors_total{op}`: a broker whose Redis does not answer (nothing listens on
    its port) refuses the exchange 503 `replay_store_unavailable`, and the scrape counts the failed
    operations by `op` (the twin, in the test above: a healthy store counts none)."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    dead = free_port()  # nothing listens here
    key = tmp_path / "broker-key.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    b = broker_factory(issuer=mock_issuer, server={"signing_key_file": str(key)},
                       extra_config={"state": {"backend": "redis", "url": f"redis://127.0.0.1:{dead}"},
                                     "admin": {"token_file": str(token_file)}})
    before = requests.get(b.url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    assert before.status_code == 200, before.text
    r = b.exchange(mock_issuer.token())
    assert r.status == 503 and r.reason == "replay_store_unavailable", r
    after = requests.get(b.url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT)
    types, samples = parse_exposition(after.text)
    errors = {lb.get("op"): v for lb, v in series(samples, "ephemera_state_errors_total")}
    print(f"\nephemera_state_errors_total by op, Redis down: {errors}")
    assert types.get("ephemera_state_errors_total") == "counter", types
    assert errors and all(op for op in errors) and sum(errors.values()) >= 1, errors
    exchanges = {(lb["outcome"], lb["reason"]): v for lb, v in series(samples, "ephemera_exchanges_total")}
    assert exchanges == {("deny", "replay_store_unavailable"): 1}, exchanges
