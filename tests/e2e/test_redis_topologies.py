"""Replicas on the two Redis topologies the README names beside a plain server (README "Running
several replicas"): a Redis Cluster of three local redis-server processes (`--cluster-enabled yes`,
joined by `redis-cli --cluster create`), and a TLS-only redis-server (`rediss://`, rustls) whose
certificate a test CA signed. Against each: single use across two replicas, one winner among
concurrent presentations, and the epoch guard after FLUSHALL (revocations unverified until an
admin confirms, review C5), each with its passing twin. On the cluster, the acceptance of issue 14:
two replicas given the node that owns the `{eph}` slot share single use, revocations and the grant
inventory. test_replicas.py runs the same properties against a standalone plaintext server.

How the broker trusts a private CA for `rediss://`: the redis crate's rustls connector loads its
roots with rustls-native-certs, which reads `SSL_CERT_FILE` (and then only it) when that is set.
There is no `[state]` option for it; the tests give the broker `SSL_CERT_FILE=<test CA>`.

How the replicas reach the cluster: the broker's redis client is not cluster-aware (a single
`redis::Client` URL, no `cluster-async` feature), so a replica must be given the node that owns
the hash slot of its `{prefix}` tag; every key carries that tag, so one node serves all of them.
A replica given another node of the cluster gets MOVED answers and fails closed
(`test_a_replica_given_a_non_owner_cluster_node_fails_closed`, with the owner node as its twin).

redis-server and redis-cli come from Debian's redis-server/redis-tools (scripts/test installs
them); under CI=true their absence, or a redis-server built without TLS, fails these tests.
Everything listens on 127.0.0.1 and every process is stopped at teardown.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import (DEFAULT_SUB, REDIS_ESTABLISHED_EPOCH, Broker, broker_config, confirm_state,
                     first_iat_accepted_after, free_port, provider, race, redis_confirmed_key, redis_epoch_key,
                     require_peer, role, wait_until, wait_until_presentable)

CLI_TIMEOUT = 30
ADMIN_TOKEN = "admin-" + "y" * 40
# a second workload (its own subject and role), to show what a subject revocation spares
OTHER_SUB = "repo:acme/other:ref:refs/heads/main"
OTHER_ROLE = role("other", "mock", conditions={"sub": OTHER_SUB, "repository": "acme/other", "ref": "refs/heads/main"})


def answer(r) -> str:
    """An answer for the figures: its status, and its reason slug when it has one."""
    return f"{r.status} {r.reason}" if r.reason else str(r.status)


def need_redis_tools():
    how = "apt-get install redis-server redis-tools (scripts/test installs them)"
    require_peer("redis-server", shutil.which("redis-server") is not None, how)
    require_peer("redis-cli", shutil.which("redis-cli") is not None, how)


# ---- TLS material -------------------------------------------------------------------------------


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


@dataclass
class TlsFiles:
    ca: Path          # the CA that signed the server's certificate
    cert: Path
    key: Path
    other_ca: Path    # a CA that signed nothing here


def make_tls_files(d: Path) -> TlsFiles:
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca("ephemera e2e redis CA")
    _, other = make_ca("ephemera e2e unrelated CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem_key(key))
    return files


# ---- redis-server processes ---------------------------------------------------------------------


class RedisNode:
    """One redis-server on a free loopback port, in its own directory, without persistence:
    a cluster node (`cluster=True`) or a TLS-only server (`tls=...`, `--port 0`)."""

    def __init__(self, workdir: Path, *, cluster: bool = False, tls: TlsFiles | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "redis.log"
        for attempt in range(3):  # another process may take a port between bind(0) and the start
            self.port = free_port()
            self._start()
            wait_until(lambda: self.proc.poll() is not None or self.ping(), 15, interval=0.1, what="redis-server up")
            if self.proc.poll() is None:
                return
            self.proc.wait()
        raise RuntimeError(f"redis-server did not start:\n{self.log.read_text(errors='replace')[-2000:]}")

    def _start(self):
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--maxmemory-policy", "noeviction", "--dir", str(self.workdir), "--logfile", str(self.log)]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                     "--cluster-config-file", str(self.workdir / "nodes.conf"), "--cluster-node-timeout", "15000"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.addr}"

    def cli(self, *args: str) -> str:
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        out = subprocess.run(["redis-cli", *tls, "-h", "127.0.0.1", "-p", str(self.port), *args],
                             capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        return out.stdout.strip()

    def ping(self) -> bool:
        try:
            return self.cli("PING") == "PONG"
        except subprocess.TimeoutExpired:
            return False

    def keys(self) -> list[str]:
        return sorted(k for k in self.cli("KEYS", "*").splitlines() if k)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Cluster:
    def __init__(self, nodes: list[RedisNode]):
        self.nodes = nodes

    def slot(self, tag: str) -> int:
        return int(self.nodes[0].cli("CLUSTER", "KEYSLOT", tag))

    def owner(self, tag: str) -> RedisNode:
        """The node serving `tag`'s hash slot, by the cluster's own slot map (CLUSTER NODES)."""
        slot = self.slot(tag)
        for line in self.nodes[0].cli("CLUSTER", "NODES").splitlines():
            parts = line.split()
            addr = parts[1].split("@")[0]
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if not lo.isdigit():
                    continue
                if int(lo) <= slot <= int(hi or lo):
                    return next(n for n in self.nodes if n.addr == addr)
        raise AssertionError(f"no node serves slot {slot}")

    def ok(self) -> bool:
        return all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    need_redis_tools()
    base = tmp_path_factory.mktemp("redis-cluster")
    nodes: list[RedisNode] = []
    try:
        for i in range(3):
            nodes.append(RedisNode(base / f"node{i}", cluster=True))
        made = subprocess.run(["redis-cli", "--cluster", "create", *(n.addr for n in nodes),
                               "--cluster-replicas", "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        cluster = Cluster(nodes)
        wait_until(cluster.ok, 60, interval=0.2, what="cluster_state:ok on every node")
        yield cluster
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory):
    need_redis_tools()
    base = tmp_path_factory.mktemp("redis-tls")
    files = make_tls_files(base / "pki")
    try:
        node = RedisNode(base / "server", tls=files)
    except RuntimeError as e:
        # Debian builds redis-server with TLS; a build without it refuses --tls-port at start
        require_peer("redis-server with TLS support", "tls" not in str(e).lower(), "Debian's redis-server")
        raise
    yield node, files
    node.stop()


# ---- the store under test and the replicas on it ---------------------------------------------


@dataclass
class Store:
    name: str
    url: str                      # what the replicas are given
    env: dict                     # what the replicas' environment needs for it
    nodes: list[RedisNode]        # every node (the masters of a cluster)
    home: RedisNode               # the node holding the broker's keys

    def flushall(self):
        for n in self.nodes:
            assert n.cli("FLUSHALL") == "OK"

    def dbsizes(self) -> dict[str, int]:
        return {n.addr: int(n.cli("DBSIZE")) for n in self.nodes}

    def seed_epoch(self, prefix: str = "eph"):
        """An old epoch marker and its revocations confirmed (overwriting any): the store looks
        established. The broker creates the marker only when it is absent, and refuses assertions
        issued within its leeway + 1 s of a marker it creates (review S2/B3): a test on an empty
        store would start with that refusal. Revocations are answered only while the confirmed
        epoch is the marker (review C5). Tests of a store that lost its data flush it afterwards."""
        assert self.home.cli("SET", redis_epoch_key(prefix), str(REDIS_ESTABLISHED_EPOCH)) == "OK"
        assert self.home.cli("SET", redis_confirmed_key(prefix), str(REDIS_ESTABLISHED_EPOCH)) == "OK"

    def _int(self, key: str) -> int | None:
        v = self.home.cli("GET", key)
        return int(v) if v else None  # redis-cli prints nil as an empty line

    def epoch(self, prefix: str = "eph") -> int | None:
        return self._int(redis_epoch_key(prefix))

    def confirmed(self, prefix: str = "eph") -> int | None:
        return self._int(redis_confirmed_key(prefix))


def cluster_store(cluster: Cluster, prefix: str = "eph") -> Store:
    home = cluster.owner(prefix)
    return Store("cluster", home.url, {}, cluster.nodes, home)


@pytest.fixture(params=["cluster", "tls"])
def store(request) -> Store:
    if request.param == "cluster":
        s = cluster_store(request.getfixturevalue("redis_cluster"))
    else:
        node, files = request.getfixturevalue("redis_tls")
        s = Store("tls", node.url, {"SSL_CERT_FILE": str(files.ca)}, [node], node)
    s.flushall()  # each test starts on an empty store (the modules' servers outlive a test) ...
    s.seed_epoch()  # ... that has served for a long time
    return s


def shared_signing_key(tmp_path: Path) -> str:
    """One PKCS#8 P-256 key for every replica (they must sign alike)."""
    path = tmp_path / "broker-key.pem"
    if not path.exists():
        path.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    return str(path)


@pytest.fixture
def replicas(ephemera_bin, tmp_path, mock_issuer, request):
    made: list[Broker] = []
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN_TOKEN)

    def make(store: Store, n: int = 2, *, env: dict | None = None, url: str | None = None,
             roles: list | None = None, **state) -> list[Broker]:
        for _ in range(n):
            workdir = tmp_path / f"replica{len(made)}"
            cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], roles or [role("deploy", "mock")],
                                server={"rate_limit_per_second": 0, "signing_key_file": shared_signing_key(tmp_path),
                                        "issuer": "http://127.0.0.1/ephemera"})
            cfg["state"] = {"backend": "redis", "url": url or store.url, "command_timeout": "2s", **state}
            cfg["admin"] = {"token_file": str(admin_file)}
            made.append(Broker(ephemera_bin, workdir, cfg, env=store.env if env is None else env))
        return made[-n:]

    yield make
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    try:
        if passed:
            for b in made:
                b.check_audit_invariants()
    finally:
        for b in made:
            b.stop()


# ---- single use, one winner, the epoch guard (each topology) ---------------------------------


def test_a_token_used_on_one_replica_is_refused_on_the_other(store, replicas, mock_issuer):
    a, b = replicas(store)
    token = mock_issuer.token()
    assert a.exchange(token).status == 200
    r = b.exchange(token)
    assert r.status == 400 and r.reason == "token_replayed", r
    assert b.exchange(mock_issuer.token()).status == 200  # twin: a fresh token works on B
    assert a.get("/readyz").status_code == 200 and b.get("/readyz").status_code == 200


def test_concurrent_presentations_across_replicas_have_exactly_one_success(store, replicas, mock_issuer):
    a, b = replicas(store)
    token = mock_issuer.token()
    results = race([a, b], token)
    assert [r.status for r in results].count(200) == 1, [r.status for r in results]
    assert all(r.status == 400 and r.reason == "token_replayed" for r in results if r.status != 200), results
    # twin: two different tokens presented at once both win
    other = [mock_issuer.token(), mock_issuer.token()]
    pair = []
    threads = [threading.Thread(target=lambda br, tok: pair.append(br.exchange(tok).status), args=(br, tok))
               for br, tok in zip((a, b), other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pair == [200, 200]


def assert_revocations_unverified(r):
    """README error table: 503 `temporarily_unavailable`, `revocations_unverified` (review C5)."""
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "revocations_unverified", r
    assert r.headers.get("Retry-After") and "access_token" not in r.text, r


def test_a_store_that_lost_its_data_does_not_reopen_replays(store, replicas, mock_issuer):
    a, b = replicas(store)
    token = mock_issuer.token()
    issued = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert a.exchange(token).status == 200
    # the twin, before the data is lost: the used mark refuses the replay
    r = b.exchange(token)
    assert r.status == 400 and r.reason == "token_replayed", r

    store.flushall()  # the used mark, the revocations and the epoch marker are gone
    assert sum(store.dbsizes().values()) == 0
    # Revocations are lost with the data (review C5): nothing is allowed on either replica, the
    # replay and a fresh assertion alike, until an admin has re-asserted them and confirmed.
    lost = [b.exchange(token), a.exchange(token), a.exchange(mock_issuer.token()), b.exchange(mock_issuer.token())]
    figures = {"before confirm": dict(Counter(answer(r) for r in lost))}
    for r in lost:
        assert_revocations_unverified(r)
    # neither replica is ready: neither can decide
    assert [x.get("/readyz").status_code for x in (a, b)] == [503, 503]
    assert store.epoch() is None  # refused before the mark: nothing was written
    # One confirmation (on one replica, for both) starts the new epoch, in or after the token's
    # iat second; the guard refuses `iat - leeway - 1 < epoch` (review S2/B3).
    c = confirm_state(b, ADMIN_TOKEN)
    assert c.status_code == 200 and c.headers.get("Cache-Control") == "no-store", (c.text, dict(c.headers))
    epoch = c.json()["confirmed"]
    assert [x.get("/readyz").status_code for x in (a, b)] == [200, 200]
    after = [b.exchange(token), a.exchange(token)]
    assert (store.epoch(), store.confirmed()) == (epoch, epoch)
    assert epoch >= issued
    for r in after:
        assert r.status == 400 and r.reason == "replay_state_reset", r
    # the cost: an assertion issued now, within the leeway of the new epoch, is refused too
    soon = a.exchange(mock_issuer.token())
    assert soon.status == 400 and soon.reason == "replay_state_reset", soon
    # twin: assertions issued after the new epoch by more than the leeway are accepted, on either
    # replica (an issuer clock ahead, inside the leeway, stands in for a minute's wait)
    later = first_iat_accepted_after(epoch)
    wait_until_presentable(later)
    ok = [a.exchange(mock_issuer.token(iat=later)), b.exchange(mock_issuer.token(iat=later))]
    figures["after confirm"] = dict(Counter(answer(r) for r in [*after, soon]))
    figures["iat=epoch+leeway+1"] = [r.status for r in ok]
    print(f"{store.name}: a store that lost its data (epoch {epoch}): answers by status {figures}")
    assert [r.status for r in ok] == [200, 200], ok
    assert store.epoch() == epoch


# ---- cluster: one hash slot ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [None, "tenant-7"])
def test_every_key_of_the_broker_is_in_its_tags_hash_slot(redis_cluster, replicas, mock_issuer, prefix):
    """README: keys are `{eph}:…` (or `{key_prefix}:…`), one hash tag, so Redis Cluster works. The
    mark is one Lua script over four keys: a key outside the slot would be a CROSSSLOT error there,
    or land on another node."""
    tag = prefix or "eph"
    s = cluster_store(redis_cluster, tag)
    s.flushall()
    s.seed_epoch(tag)
    state = {"key_prefix": prefix} if prefix else {}
    a, b = replicas(s, **state)
    token = mock_issuer.token()
    assert a.exchange(token).status == 200
    r = b.exchange(token)
    assert r.status == 400 and r.reason == "token_replayed", r
    keys = s.home.keys()
    assert {k.split(":")[1] for k in keys} == {"meta", "used", "grant"}, keys
    assert all(k.startswith("{" + tag + "}:") for k in keys), keys
    slot = redis_cluster.slot(tag)
    assert int(s.home.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot))) == len(keys)
    others = {addr: n for addr, n in s.dbsizes().items() if addr != s.home.addr}
    assert len(others) == 2 and set(others.values()) == {0}, others


@pytest.mark.parametrize("node", ["non_owner", "owner"])
def test_a_replica_given_a_non_owner_cluster_node_fails_closed(redis_cluster, replicas, mock_issuer, node):
    """README: the client is not cluster-aware, so `url` must name the node that owns the tag's
    slot; "Given another node, Redis answers `MOVED` and every exchange fails closed (503
    `replay_store_unavailable`)" — and the replica is not ready. (src/state/redis.rs: a single
    redis::Client + ConnectionManager; Cargo.toml has no `cluster-async` feature.) The twin: the
    owner node's URL is served."""
    s = cluster_store(redis_cluster)
    s.flushall()
    s.seed_epoch()
    seeded = s.dbsizes()  # the epoch marker on the owner, nothing elsewhere
    other = next(n for n in s.nodes if n is not s.home)
    moved = other.cli("GET", "{eph}:meta:epoch")
    assert moved.startswith("MOVED ") and s.home.addr in moved, f"{other.addr} should redirect the slot: {moved!r}"
    given = other if node == "non_owner" else s.home
    (a,) = replicas(s, 1, url=given.url)
    r = a.exchange(mock_issuer.token())
    if node == "owner":
        assert r.status == 200, r
        assert a.get("/readyz").status_code == 200
        return
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "replay_store_unavailable", r
    assert a.get("/readyz").status_code == 503
    # the store's words (MOVED and the owner's internal address) go to the audit record, never
    # to the caller
    assert r.description.startswith("replay_store_unavailable: the replay store cannot answer now"), r
    assert "moved" not in r.description.lower(), r
    assert given.addr not in r.description and s.home.addr not in r.description, r
    # (the redis crate spells Redis's MOVED answer `Moved: SLOT ADDR`)
    detail = a.audit_record(r.decision_id)["detail"]
    assert f"Moved: {redis_cluster.slot('eph')} {s.home.addr}" in detail, detail
    assert not [rec for rec in a.audit() if rec["decision"] == "allow"]
    # nothing was written anywhere in the cluster: only the marker and its confirmation the test
    # set, unchanged
    assert s.dbsizes() == seeded and sum(seeded.values()) == 2, (s.dbsizes(), seeded)
    assert s.epoch() == REDIS_ESTABLISHED_EPOCH


# ---- cluster: the acceptance of issue 14 ------------------------------------------------------


def grant_ids(broker) -> set[str]:
    r = broker.http.get(broker.url + "/v1/grants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {g["id"] for g in r.json()["grants"]}


def credential_id(resp) -> str:
    return jwt.decode(resp.json["access_token"], options={"verify_signature": False})["jti"]


def test_cluster_two_replicas_share_single_use_revocations_and_grants(redis_cluster, replicas, mock_issuer):
    """Issue 14: "prove it with a three-primary cluster started on loopback by the test command
    (redis-cli --cluster create), single use and revocations across two replicas on it". Both
    replicas are given the node that owns the `{eph}` slot (the client is not cluster-aware):
    a token used on one is refused `token_replayed` on the other, of concurrent presentations over
    both exactly one wins, an admin revocation made on replica 2 refuses the subject on replica 1
    (another subject is served: the twin), and the grants made on either are listed by the other."""
    s = cluster_store(redis_cluster)
    s.flushall()
    s.seed_epoch()
    assert len(s.nodes) == 3 and redis_cluster.ok()
    one, two = replicas(s, roles=[role("deploy", "mock"), OTHER_ROLE])
    assert one.config["state"]["url"] == two.config["state"]["url"] == redis_cluster.owner("eph").url
    figures = {}

    # single use across the replicas, both ways
    used_on_one, used_on_two = mock_issuer.token(), mock_issuer.token()
    first = [one.exchange(used_on_one), two.exchange(used_on_two)]
    replayed = [two.exchange(used_on_one), one.exchange(used_on_two)]
    figures["used, then replayed on the other"] = dict(Counter(answer(r) for r in replayed))
    assert [r.status for r in first] == [200, 200], first
    for r in replayed:
        assert r.status == 400 and r.reason == "token_replayed", r

    # concurrent presentations over both: exactly one wins
    results = race([one, two], mock_issuer.token())
    figures["one token, 40 concurrent presentations"] = dict(Counter(answer(r) for r in results))
    assert [r.status for r in results].count(200) == 1, figures
    assert all(r.status == 400 and r.reason == "token_replayed" for r in results if r.status != 200), results

    # the grant inventory: what either replica granted, the other lists
    granted_on_one = one.exchange(other_token(mock_issuer), role="other")
    granted_on_two = two.exchange(mock_issuer.token())
    assert granted_on_one.status == 200 and granted_on_two.status == 200, (granted_on_one, granted_on_two)
    listed_by_two, listed_by_one = grant_ids(two), grant_ids(one)
    figures["grants listed (by replica 1, by replica 2)"] = [len(listed_by_one), len(listed_by_two)]
    assert credential_id(granted_on_one) in listed_by_two and credential_id(granted_on_two) in listed_by_one
    assert listed_by_one == listed_by_two and len(listed_by_one) == 5, (listed_by_one, listed_by_two)

    # an admin revocation on replica 2 refuses the subject on replica 1, at once
    r = two.http.post(two.url + "/v1/revoke", data={"subject": DEFAULT_SUB},
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200 and r.json()["revoked"] == f"subject:mock:{DEFAULT_SUB}", r.text
    refused = one.exchange(mock_issuer.token())
    spared = one.exchange(other_token(mock_issuer), role="other")
    figures["after revoking the subject on replica 2, on replica 1"] = {
        "revoked subject": f"{refused.status} {refused.reason}", "other subject": spared.status}
    print(f"Redis Cluster, 3 primaries, both replicas on {s.home.addr} (slot {redis_cluster.slot('eph')}): {figures}")
    assert refused.status == 400 and refused.reason == "policy_denied", refused
    assert f"revoked (subject:mock:{DEFAULT_SUB})" in refused.description, refused
    assert spared.status == 200, spared
    # its grants leave the active inventory on both replicas
    assert credential_id(granted_on_two) not in active_grant_ids(one) | active_grant_ids(two)
    assert credential_id(granted_on_one) in active_grant_ids(one) & active_grant_ids(two)
    # everything is on the owner node: the other two primaries hold nothing
    others = {addr: n for addr, n in s.dbsizes().items() if addr != s.home.addr}
    assert set(others.values()) == {0}, others


def other_token(mock_issuer, **claims) -> str:
    return mock_issuer.token(sub=OTHER_SUB, repository="acme/other", **claims)


def active_grant_ids(broker) -> set[str]:
    r = broker.http.get(broker.url + "/v1/grants", params={"active": "true"},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {g["id"] for g in r.json()["grants"]}


# ---- TLS: the server's certificate is verified ---------------------------------------------


def test_a_rediss_server_whose_ca_is_not_trusted_fails_closed(redis_tls, replicas, mock_issuer):
    node, files = redis_tls
    s = Store("tls", node.url, {"SSL_CERT_FILE": str(files.ca)}, [node], node)
    s.flushall()
    s.seed_epoch()
    (trusted,) = replicas(s, 1)
    (untrusted,) = replicas(s, 1, env={"SSL_CERT_FILE": str(files.other_ca)})
    r = untrusted.exchange(mock_issuer.token())
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "replay_store_unavailable", r
    assert untrusted.get("/readyz").status_code == 503
    assert "invalid peer certificate" in untrusted.stderr(), untrusted.stderr()[-2000:]
    # the store's own words (a certificate problem here, an internal address in a MOVED answer)
    # go to the audit record and the log, never to the caller
    assert r.description.startswith("replay_store_unavailable: the replay store cannot answer now"), r
    assert "certificate" not in r.description.lower() and node.addr not in r.description, r
    assert "certificate" in untrusted.audit_record(r.decision_id)["detail"]
    assert not [a for a in untrusted.audit() if a["decision"] == "allow"]
    # twin: the same server, the CA that signed its certificate trusted
    assert trusted.exchange(mock_issuer.token()).status == 200
    assert trusted.get("/readyz").status_code == 200
