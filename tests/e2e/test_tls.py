"""TLS and trusted proxies (issue 16, spec T). A test CA made here with `cryptography`; the broker
with `[server] tls_cert_file` / `tls_key_file` serves HTTPS only: an exchange works with Python
`requests` and with `curl --cacert` (real TLS clients trusting only the test CA), plain HTTP to the
port gets no answer, the key may be PKCS#8, SEC1 or PKCS#1 RSA, and the certificate chain file is
served whole. SIGHUP reloads the certificate: new connections see the new one (by its serial); a
reload with a broken certificate or a key that does not fit it is refused and the old certificate
kept. `[admin] client_ca_file`: the admin listener then requires a client certificate chaining to
that CA (none, or one of another CA, fails the handshake; the twin answers `/v1/grants`).
`server.trusted_proxies`: `Forwarded: for=` (RFC 7239) from a trusted peer names the client the
rate limiter keys on and the logs name, like `X-Forwarded-For`; from an untrusted peer it is
ignored."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import (
    GRANT,
    HTTP_TIMEOUT,
    ID_TOKEN,
    STARTUP_TIMEOUT,
    Broker,
    Resp,
    broker_config,
    free_port,
    provider,
    require_peer,
    role,
    wait_until,
)

ADMIN_TOKEN = "admin-" + "t" * 40
RELOADED = "TLS certificate reloaded"
REFUSED = "TLS reload refused; the certificate in use is kept"


# ---- a test PKI ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    t = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(t - datetime.timedelta(hours=1)).not_valid_after(t + datetime.timedelta(days=2))


class CA:
    """A certificate authority: a root, or an intermediate signed by `parent`."""

    def __init__(self, cn: str, parent: "CA | None" = None):
        self.key = ec.generate_private_key(ec.SECP256R1())
        signer = parent or self
        b = (_validity(x509.CertificateBuilder())
             .subject_name(_name(cn))
             .issuer_name(_name(parent.cn) if parent else _name(cn))
             .public_key(self.key.public_key())
             .serial_number(x509.random_serial_number())
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False))
        if parent:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                                critical=False)
        self.cn = cn
        self.cert = b.sign(signer.key, hashes.SHA256())

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem())
        return path

    def issue(self, cn: str, *, server: bool, key=None) -> tuple[x509.Certificate, object]:
        """A leaf for 127.0.0.1 and localhost (server) or a client; (certificate, its key)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        b = (_validity(x509.CertificateBuilder())
             .subject_name(_name(cn))
             .issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(self.key, hashes.SHA256()), key


def key_pem(key, form: str) -> bytes:
    """`pkcs8` (BEGIN PRIVATE KEY), or the key's traditional form: `sec1` for an EC key (BEGIN EC
    PRIVATE KEY), `pkcs1` for RSA (BEGIN RSA PRIVATE KEY)."""
    fmt = serialization.PrivateFormat.PKCS8 if form == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class PKI:
    """A root CA (trusted by the clients) with an intermediate that issues the server's
    certificates (the chain file holds the leaf and the intermediate), and a separate client CA."""

    def __init__(self, d: Path):
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.root = CA("Ephemera test root")
        self.intermediate = CA("Ephemera test intermediate", parent=self.root)
        self.ca_file = self.root.write(d / "ca.pem")
        self.client_ca = CA("Ephemera test client CA")
        self.client_ca_file = self.client_ca.write(d / "client-ca.pem")
        self.cert_file = d / "server.pem"
        self.key_file = d / "server.key"

    def install_server_cert(self, *, key=None, form: str = "pkcs8") -> int:
        """Writes a fresh server certificate (chain: leaf + intermediate) and its key; its serial."""
        cert, key = self.intermediate.issue("ephemera broker", server=True, key=key)
        self.key_file.write_bytes(key_pem(key, form))
        self.cert_file.write_bytes(cert_pem(cert, self.intermediate.cert))
        return cert.serial_number

    def client_cert(self, ca: CA, name: str) -> tuple[str, str]:
        cert, key = ca.issue(name, server=False)
        c, k = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        c.write_bytes(cert_pem(cert))
        k.write_bytes(key_pem(key, "pkcs8"))
        return str(c), str(k)


def peer_serial(port: int, ca_file: Path) -> int:
    """The serial of the certificate a NEW connection to 127.0.0.1:`port` is shown, verified
    against `ca_file` (hostname 127.0.0.1 checked against the certificate's names)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return int(t.getpeercert()["serialNumber"], 16)


# ---- a broker on TLS ------------------------------------------------------------------------------


class TlsBroker(Broker):
    """`ephemera serve` whose listener is HTTPS: reached as https://127.0.0.1:PORT, trusting the
    test root only."""

    def __init__(self, binary: Path, workdir: Path, config: dict, ca_file: Path, **kw):
        self.ca_file = ca_file
        super().__init__(binary, workdir, config, **kw)
        # (a session that trusts the environment lets REQUESTS_CA_BUNDLE override its `verify`)
        self.http.trust_env = False
        self.http.verify = str(ca_file)

    @property
    def url(self) -> str:
        return f"https://{self.config['server']['listen']}"

    @property
    def port(self) -> int:
        return int(self.config["server"]["listen"].rsplit(":", 1)[1])

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2, verify=str(self.ca_file)).status_code == 200
        except requests.RequestException:
            return False

    def _start(self):
        from harness import to_toml
        for attempt in range(3):
            self.config_path.write_text(to_toml(self.config))
            self._out = open(self.stdout_path, "ab")
            self._err = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen([str(self.binary), "serve", "--config", str(self.config_path)],
                                         stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=self.env)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._healthy():
                    return
                time.sleep(0.02)
            err = self.stderr_path.read_text(errors="replace")
            self.stop()
            if "cannot listen" in err and attempt < 2:
                port = free_port()
                self.config["server"]["listen"] = f"127.0.0.1:{port}"
                self.config["server"]["issuer"] = f"https://127.0.0.1:{port}"
                continue
            raise RuntimeError(f"TLS broker did not become healthy:\n{err[-4000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._healthy()

    def events(self, message: str) -> list[dict]:
        """The broker's JSON log events with exactly this message."""
        out = []
        for line in self.stderr().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and e.get("fields", {}).get("message") == message:
                out.append(e)
        return out


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path / "pki")


@pytest.fixture
def tls_factory(ephemera_bin, tmp_path, request, mock_issuer, pki):
    made: list[TlsBroker] = []

    def make(*, admin: dict | None = None, server: dict | None = None) -> TlsBroker:
        port = free_port()
        workdir = tmp_path / f"tls-broker{len(made)}"
        srv = {"issuer": f"https://127.0.0.1:{port}", "tls_cert_file": str(pki.cert_file),
               "tls_key_file": str(pki.key_file)}
        srv.update(server or {})
        cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")],
                            server=srv, port=port)
        if admin is not None:
            cfg["admin"] = admin
        b = TlsBroker(ephemera_bin, workdir, cfg, pki.ca_file)
        made.append(b)
        return b

    yield make
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    try:
        if passed:
            for b in made:
                b.check_audit_invariants()
    finally:
        for b in made:
            b.stop()


def curl_bin() -> str:
    found = shutil.which("curl")
    require_peer("curl", found is not None, "scripts/test installs Debian's curl")
    return found


# ---- the listener ----------------------------------------------------------------------------------


KEY_FORMS = {
    "ec-pkcs8": (lambda: ec.generate_private_key(ec.SECP256R1()), "pkcs8", b"-----BEGIN PRIVATE KEY-----"),
    "ec-sec1": (lambda: ec.generate_private_key(ec.SECP256R1()), "sec1", b"-----BEGIN EC PRIVATE KEY-----"),
    "rsa-pkcs1": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "pkcs1",
                  b"-----BEGIN RSA PRIVATE KEY-----"),
}


@pytest.mark.parametrize("form", sorted(KEY_FORMS))
def test_an_exchange_over_https_with_requests_and_curl(tls_factory, mock_issuer, pki, form):
    """The listener serves HTTPS with the key in each accepted form: Python `requests` and `curl`
    (both verifying against the test root only: the intermediate must come from the chain file)
    exchange a token; the twins: curl without the CA refuses the certificate, and plain HTTP to the
    TLS port gets no HTTP answer."""
    make_key, encoding, header = KEY_FORMS[form]
    serial = pki.install_server_cert(key=make_key(), form=encoding)
    assert pki.key_file.read_bytes().startswith(header)
    b = tls_factory()
    assert peer_serial(b.port, pki.ca_file) == serial

    r = b.exchange(mock_issuer.token())
    assert r.status == 200 and r.json["access_token"], r
    # the issuer of broker JWTs is the https URL; the JWKS is served over TLS too
    claims = jwt.decode(r.json["access_token"], options={"verify_signature": False})
    assert claims["iss"] == b.issuer == b.url, claims
    assert requests.get(b.url + "/.well-known/jwks.json", verify=str(pki.ca_file), timeout=HTTP_TIMEOUT).json()["keys"]

    curl = curl_bin()
    args = [curl, "-sS", "--max-time", "30", "-d", f"grant_type={GRANT}", "-d", f"subject_token_type={ID_TOKEN}",
            "-d", "audience=deploy"]
    with_ca = subprocess.run(args + ["--data-urlencode", f"subject_token={mock_issuer.token()}",
                                     "--cacert", str(pki.ca_file), b.url + "/v1/token"],
                             capture_output=True, text=True, timeout=60)
    assert with_ca.returncode == 0, with_ca.stderr
    body = json.loads(with_ca.stdout)
    assert body.get("access_token") and body.get("token_type") == "Bearer", body
    b.record_answer(Resp(200, {}, body, with_ca.stdout))  # counted by the teardown's audit invariants
    no_ca = subprocess.run([curl, "-sS", "--max-time", "30", b.url + "/healthz"], capture_output=True, text=True,
                           timeout=60)
    assert no_ca.returncode == 60, (no_ca.returncode, no_ca.stderr)  # 60: the peer's certificate is not trusted

    # plain HTTP to the TLS port: no HTTP answer (the connection fails), never a route's answer
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{b.port}/healthz", timeout=HTTP_TIMEOUT)
    print(f"\n{form}: requests 200, curl --cacert 200, curl without the CA exit 60, plain http refused")


def test_sighup_reloads_the_certificate_and_keeps_the_old_one_on_a_bad_reload(tls_factory, mock_issuer, pki,
                                                                               tmp_path):
    """SIGHUP after replacing the certificate files: new connections to either listener (the
    public one and the admin one) get the new certificate (its serial), an exchange still works. A
    reload with a certificate file that is not PEM, or a certificate whose key is not the key
    file's, is refused (logged, naming the file) and the previous certificate kept on both, the
    broker serving; a good pair after that applies again (the twin)."""
    first = pki.install_server_cert()
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    admin_port = free_port()
    b = tls_factory(admin={"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}"})
    ports = (b.port, admin_port)
    assert [peer_serial(p, pki.ca_file) for p in ports] == [first, first]
    seen = [first]

    def hup_and_wait_for(serial: int):
        reloaded = len(b.events(RELOADED))
        b.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: [peer_serial(p, pki.ca_file) for p in ports] == [serial, serial], timeout=30,
                   interval=0.1, what=f"new connections to both listeners to see serial {serial:x}")
        wait_until(lambda: len(b.events(RELOADED)) > reloaded, timeout=30, what="the reload logged")
        seen.append(serial)

    second = pki.install_server_cert()
    hup_and_wait_for(second)
    assert b.exchange(mock_issuer.token()).status == 200

    def bad_reload(write, expect: str) -> str:
        before = len(b.events(REFUSED))
        reloaded = len(b.events(RELOADED))
        write()
        b.proc.send_signal(signal.SIGHUP)
        # the refusal is logged (its error names what failed); until then nothing can be said of
        # the certificate in use
        refusals = wait_until(lambda: [e for e in b.events(REFUSED)[before:] if expect in e["fields"]["error"]],
                              timeout=30, interval=0.1, what=f"the refused certificate reload logged ({expect})")
        assert len(b.events(RELOADED)) == reloaded, "a broken certificate was reported reloaded"
        assert b.alive(), b.stderr()[-2000:]
        assert [peer_serial(p, pki.ca_file) for p in ports] == [second, second], \
            "a broken reload replaced the certificate"
        assert b.exchange(mock_issuer.token()).status == 200
        return refusals[0]["fields"]["error"]

    good_cert, good_key = pki.cert_file.read_bytes(), pki.key_file.read_bytes()
    garbage = bad_reload(lambda: pki.cert_file.write_text("not a certificate\n"), "no PEM certificate")
    assert garbage.startswith("server.tls_cert_file") and str(pki.cert_file) in garbage, garbage
    pki.cert_file.write_bytes(good_cert)
    # a certificate whose key is not in the key file
    other_cert, _ = pki.intermediate.issue("ephemera broker", server=True)
    mismatch = bad_reload(lambda: pki.cert_file.write_bytes(cert_pem(other_cert, pki.intermediate.cert)),
                          "tls_key_file")
    assert pki.key_file.read_bytes() == good_key
    print(f"\nbroken certificate: {garbage}\nkey that does not fit: {mismatch}")

    third = pki.install_server_cert()
    hup_and_wait_for(third)
    assert b.exchange(mock_issuer.token()).status == 200
    print(f"serials seen in turn: {[format(s, 'x') for s in seen]}")


def test_the_admin_listener_requires_a_client_certificate_of_its_ca(tls_factory, mock_issuer, pki, tmp_path):
    """`[admin] client_ca_file`: the admin listener (HTTPS too) completes no request without a
    client certificate, nor with one of another CA; with one signed by the client CA `/v1/grants`
    answers with the admin credential (and 401 without it: the certificate does not replace the
    credential). The public listener asks no client certificate."""
    pki.install_server_cert()
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    admin_port = free_port()
    b = tls_factory(admin={"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}",
                           "client_ca_file": str(pki.client_ca_file)})
    assert b.exchange(mock_issuer.token()).status == 200  # no client certificate on the public listener
    url = f"https://127.0.0.1:{admin_port}/v1/grants"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    good = pki.client_cert(pki.client_ca, "operator")
    foreign = pki.client_cert(pki.root, "stranger")  # a client certificate of the server's root, not the client CA

    outcomes = {}
    for name, cert in (("no client certificate", None), ("another CA's certificate", foreign)):
        with pytest.raises(requests.exceptions.ConnectionError) as e:
            requests.get(url, headers=auth, cert=cert, verify=str(pki.ca_file), timeout=HTTP_TIMEOUT)
        outcomes[name] = type(e.value).__name__
    r = requests.get(url, headers=auth, cert=good, verify=str(pki.ca_file), timeout=HTTP_TIMEOUT)
    outcomes["the client CA's certificate"] = r.status_code
    assert r.status_code == 200, r.text
    grants = r.json()["grants"]
    assert len(grants) == 1 and grants[0]["role"] == "deploy", grants
    anonymous = requests.get(url, cert=good, verify=str(pki.ca_file), timeout=HTTP_TIMEOUT)
    outcomes["the client CA's certificate, no bearer"] = anonymous.status_code
    assert anonymous.status_code == 401, anonymous.text
    print(f"\nadmin listener: {outcomes}")


def test_the_cli_trusts_a_private_ca_through_ssl_cert_file(tls_factory, mock_issuer, pki, ephemera_bin, tmp_path):
    """docs/production.md: the exchange client and the admin CLI verify the broker's certificate
    against the system's roots, and a private CA is trusted through `SSL_CERT_FILE`: `ephemera
    exchange` gets a credential from the HTTPS listener and `ephemera grants` lists it from the
    HTTPS admin listener. The twins: with the system bundle only, both fail (exit 1), the exchange
    naming the TLS cause, and nothing reaches the broker."""
    pki.install_server_cert()
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    admin_port = free_port()
    b = tls_factory(admin={"token_file": str(token_file), "listen": f"127.0.0.1:{admin_port}"})
    assertion = tmp_path / "assertion.jwt"

    def cli(args: list[str], ca: str | None):
        env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
        if ca:
            env["SSL_CERT_FILE"] = ca
        return subprocess.run([str(ephemera_bin), *args], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=120)

    exchange = ["exchange", "--broker", b.url, "--role", "deploy", "--token-file", str(assertion), "--no-cache",
                "--retries", "0"]
    grants = ["grants", "--broker", f"https://127.0.0.1:{admin_port}", "--admin-token-file", str(token_file), "--json"]
    system = "/etc/ssl/certs/ca-certificates.crt" if Path("/etc/ssl/certs/ca-certificates.crt").exists() else None

    assertion.write_text(mock_issuer.token())
    refused = cli(exchange, system)
    assert refused.returncode == 1 and "TLS" in refused.stderr, (refused.returncode, refused.stderr)
    listed = cli(grants, system)
    assert listed.returncode == 1 and "unreachable" in listed.stderr, (listed.returncode, listed.stderr)
    assert b.audit() == [], "a client that did not trust the certificate reached the broker"

    assertion.write_text(mock_issuer.token())
    got = cli(exchange, str(pki.ca_file))
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    assert body["access_token"], body
    b.record_answer(Resp(200, {}, body, got.stdout))
    listed = cli(grants, str(pki.ca_file))
    assert listed.returncode == 0, listed.stderr
    assert [g["role"] for g in json.loads(listed.stdout)["grants"]] == ["deploy"], listed.stdout
    print(f"\nwithout the CA: exchange exit {refused.returncode} ({refused.stderr.strip().splitlines()[-1][:160]}); "
          f"with SSL_CERT_FILE: exchange 0, grants 0")


# ---- trusted proxies: Forwarded (RFC 7239) ---------------------------------------------------------


def forwarded(form: str, n: int) -> dict:
    """A request header naming client number `n` in one of the ways a proxy writes it."""
    v4 = f"198.51.100.{n}"
    return {
        "Forwarded": {"for": f"for={v4}",
                      "quoted-with-port": f'for="{v4}:4711"',
                      "with-params": f"proto=https;For={v4};by=127.0.0.1",
                      "ipv6": f'for="[2001:db8:{n:x}::1]"',
                      "after-another-element": f"for=192.0.2.200, for={v4}"}.get(form),
        "X-Forwarded-For": {"x-forwarded-for": v4}.get(form),
    }


FORMS = ["for", "quoted-with-port", "with-params", "ipv6", "after-another-element", "x-forwarded-for"]


def statuses(b: Broker, headers_for) -> list[int]:
    """30 malformed requests to /v1/token back to back, each with headers_for(i): their statuses
    (400 malformed_token when admitted, 429 over the rate)."""
    out = []
    for i in range(30):
        h = {k: v for k, v in headers_for(i).items() if v is not None}
        out.append(b.post_token({"grant_type": GRANT, "subject_token": "not-a-token",
                                 "subject_token_type": ID_TOKEN, "audience": "deploy"}, headers=h).status)
    return out


@pytest.mark.parametrize("form", FORMS)
def test_a_trusted_proxy_names_the_client_the_rate_limiter_keys_on(broker_factory, mock_issuer, form):
    """With the peer (127.0.0.1) a trusted proxy, each client it names has its own bucket (burst 2,
    1/s): 30 requests naming 30 clients are all admitted; the twin, 30 naming one client, meet a
    429 unless they took over half a minute."""
    b = broker_factory(issuer=mock_issuer, server={"rate_limit_per_second": 1, "rate_limit_burst": 2,
                                                   "trusted_proxies": ["127.0.0.0/8"]})
    distinct = statuses(b, lambda i: forwarded(form, i + 1))
    same = statuses(b, lambda i: forwarded(form, 77))
    print(f"\n{form}: 30 clients {sorted(set(distinct))}, one client: {same.count(400)} x 400, {same.count(429)} x 429")
    assert set(distinct) == {400}, distinct
    assert 429 in same and same[:2] == [400, 400], same


@pytest.mark.parametrize("form", ["for", "x-forwarded-for"])
def test_an_untrusted_peer_cannot_name_its_client(broker_factory, mock_issuer, form):
    """The twin: when the peer is not a trusted proxy, the header is ignored: 30 requests naming
    30 clients share the peer's bucket (burst 2, 1/s) and meet a 429."""
    b = broker_factory(issuer=mock_issuer, server={"rate_limit_per_second": 1, "rate_limit_burst": 2,
                                                   "trusted_proxies": ["10.0.0.0/8"]})
    distinct = statuses(b, lambda i: forwarded(form, i + 1))
    print(f"\n{form} from an untrusted peer: {distinct.count(400)} x 400, {distinct.count(429)} x 429")
    assert 429 in distinct, distinct


def admin_failure_clients(b: Broker) -> list[str]:
    out = []
    for line in b.stderr().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("fields", {}).get("message") == "admin authentication failed":
            out.append(e["fields"].get("client"))
    return out


def test_the_logged_client_is_the_right_most_untrusted_forwarded_hop(broker_factory, mock_issuer, tmp_path):
    """A failed admin authentication is logged with the client's address (review S5): behind a
    trusted proxy, the right-most `Forwarded: for=` that is not itself a trusted proxy (what is
    left of it was written by the client and proves nothing); from an untrusted peer, the peer."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    wrong = {"Authorization": "Bearer admin-" + "w" * 40}
    chain = "for=6.6.6.6, for=203.0.113.7, for=10.1.2.3"
    got = {}
    for trusted, expected in ((["127.0.0.0/8", "10.0.0.0/8"], "203.0.113.7"), (["10.0.0.0/8"], "127.0.0.1")):
        b = broker_factory(issuer=mock_issuer, server={"rate_limit_per_second": 0, "trusted_proxies": trusted},
                           extra_config={"admin": {"token_file": str(token_file)}})
        r = requests.get(b.url + "/v1/grants", headers={**wrong, "Forwarded": chain}, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, r.text
        clients = wait_until(lambda: admin_failure_clients(b), timeout=10, what="the failed authentication logged")
        got[tuple(trusted)] = clients
        assert clients == [expected], clients
    print(f"\nForwarded: {chain} -> logged client by trusted_proxies: {got}")
