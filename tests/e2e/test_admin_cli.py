"""The admin command line (issue 16 spec C; newcomer review friction 5), run as the real binary:

- `ephemera keygen --out FILE [--rsa]`: a PKCS#8 PEM key (P-256 or RSA-2048), created 0600 whatever
  the umask, never over an existing file (exit 2); the kid it prints is the RFC 7638 thumbprint a
  broker serving with the file as `server.signing_key_file` publishes and signs with.
- `ephemera revoke` by `--task`, `--grant`, `--subject`, `--role`, `--issuer`: the grants it ends
  (`matched`) and only those; a key that ends no live grant is refused `nothing_matched` and not
  recorded, unless `--force`.
- `ephemera revocations list|remove`: what is in force, with its `until`; a removal lifts it (the
  task exchanges again) and is audited; removing an unknown key exits 1.
- `ephemera introspect [--consume]`: RFC 7662 JSON, exit 0 active, 3 inactive.
- `ephemera grants`: the REVOKED column (`yes`/`-`), sorted by issued time then id, `--active`;
  the JSON's `revoked`.
- Every admin command refuses plain http to a broker that is not loopback before it connects, and
  a wrong admin credential is reported as refused.

Each broker has two GitHub-profile providers (`gh`, `gh2`); what the CLI did is checked over HTTP
(`/v1/introspect`, `/v1/revocations`, `/v1/grants`), by exchanges and in the audit log.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import (
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    PARTNER,
    b64url,
    cloud_role,
    github_claims,
    github_provider,
    now,
    run_cli,
    verify_broker_jwt,
    wait_until,
)

ADMIN_TOKEN = "admin-cli-" + "q" * 40
WRONG_TOKEN = "wrong-cli-" + "z" * 40
JWT_CREDENTIAL = {"kind": "jwt", "audience": PARTNER}
REVOCATION_TTL = 12 * 3600  # README: a revocation lasts 12 h


def admin(token: str = ADMIN_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def rfc3339(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def shows_time(text: str, t: int) -> bool:
    """`t` appears in `text` as UNIX seconds or as RFC 3339 (the spec does not fix which)."""
    return re.search(rf"(?<!\d){t}(?!\d)", text) is not None or rfc3339(t) in text


def as_word(text: str, word: str) -> bool:
    """`word` appears in `text` not as part of a longer base64url run."""
    return re.search(rf"(?<![A-Za-z0-9_-]){re.escape(word)}(?![A-Za-z0-9_-])", text) is not None


class Site:
    """A broker with two GitHub-profile providers, `gh` and `gh2` (one mock issuer each), and four
    JWT roles: `deploy` and `deploy2` (gh, the same conditions), `other` (gh2) and `once` (gh,
    `max_uses = 1`). The admin credential's file ends in a newline, as `echo` writes it."""

    def __init__(self, broker_factory, mock_factory, tmp_path, ephemera_bin):
        self.bin = ephemera_bin
        self.dir = tmp_path
        self.mock, self.mock2 = mock_factory(), mock_factory()
        self.token_file = tmp_path / "admin.token"
        self.token_file.write_text(ADMIN_TOKEN + "\n")
        self.wrong_token_file = tmp_path / "wrong.token"
        self.wrong_token_file.write_text(WRONG_TOKEN + "\n")
        once = cloud_role("once", "gh", JWT_CREDENTIAL)
        once["max_uses"] = 1
        self.broker = broker_factory(
            providers=[github_provider("gh", self.mock.issuer), github_provider("gh2", self.mock2.issuer)],
            roles=[cloud_role("deploy", "gh", JWT_CREDENTIAL), cloud_role("deploy2", "gh", JWT_CREDENTIAL),
                   cloud_role("other", "gh2", JWT_CREDENTIAL), once],
            server={"rate_limit_per_second": 0},
            extra_config={"admin": {"token_file": str(self.token_file)}},
        )
        self._files = 0

    @property
    def url(self) -> str:
        return self.broker.url

    # ---- the CLI ------------------------------------------------------------------------------
    def cli(self, *args: str, token_file=None, broker: str | None = None) -> subprocess.CompletedProcess:
        """`ephemera ARGS --broker URL --admin-token-file F`."""
        return run_cli(self.bin, [*args, "--broker", broker or self.url,
                                  "--admin-token-file", str(token_file or self.token_file)])

    def token_path(self, token: str):
        """A file holding `token` (and a newline)."""
        self._files += 1
        p = self.dir / f"token{self._files}.jwt"
        p.write_text(token + "\n")
        return p

    # ---- the broker over HTTP -----------------------------------------------------------------
    def assertion(self, mock=None, **claims) -> str:
        mock = mock or self.mock
        return mock.sign(github_claims(mock.issuer, **claims))

    def credential(self, role: str = "deploy", mock=None, **claims) -> str:
        """A broker JWT from a fresh exchange (asserted 200)."""
        r = self.broker.exchange(self.assertion(mock, **claims), role=role)
        assert r.status == 200, r
        return r.json["access_token"]

    def jti(self, token: str) -> str:
        return verify_broker_jwt(self.broker, token)["jti"]

    def active(self, token: str) -> bool:
        r = requests.post(self.url + "/v1/introspect", data={"token": token}, headers=admin(), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["active"]

    def revocations(self) -> list[dict]:
        r = requests.get(self.url + "/v1/revocations", headers=admin(), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"revocations"}, body
        return body["revocations"]

    def remove(self, key: str) -> requests.Response:
        return requests.post(self.url + "/v1/revocations/remove", data={"key": key}, headers=admin(),
                             timeout=HTTP_TIMEOUT)

    def grants(self) -> list[dict]:
        r = requests.get(self.url + "/v1/grants", headers=admin(), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["grants"]

    def audit_details(self) -> list[str]:
        return [r.get("detail", "") for r in self.broker.audit() if r["decision"] == "revoke"]


@pytest.fixture
def site(broker_factory, mock_factory, tmp_path, ephemera_bin):
    return Site(broker_factory, mock_factory, tmp_path, ephemera_bin)


def json_out(res: subprocess.CompletedProcess):
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


# ---- keygen --------------------------------------------------------------------------------------


def keygen(ephemera_bin, out, *extra, umask: str = "000") -> subprocess.CompletedProcess:
    """`ephemera keygen --out OUT`, run under `umask` (000 by default: every mode bit the file has
    is one keygen chose)."""
    return subprocess.run(["sh", "-c", f'umask {umask} && exec "$0" "$@"', str(ephemera_bin), "keygen",
                           "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _uint(n: int) -> str:
    return b64url(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))


def public_jwk_members(public_key) -> dict:
    """The RFC 7638 required members of a public key's JWK."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        n = public_key.public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}
    n = public_key.public_numbers()
    return {"e": _uint(n.e), "kty": "RSA", "n": _uint(n.n)}


def thumbprint(public_key) -> str:
    """RFC 7638: SHA-256 of the required members, lexicographic, no white space."""
    canonical = json.dumps(public_jwk_members(public_key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


@pytest.mark.parametrize("kind", ["p256", "rsa"])
def test_keygen_writes_a_private_pkcs8_key_that_a_broker_signs_with(kind, ephemera_bin, broker_factory,
                                                                    mock_issuer, tmp_path):
    out = tmp_path / "keys" / "signing.pem"
    out.parent.mkdir()
    res = keygen(ephemera_bin, out, *(["--rsa"] if kind == "rsa" else []))
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    # 0600 under umask 000: the mode is keygen's choice, not the umask's
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, oct(out.stat().st_mode)
    pem = out.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n"), pem[:40]  # PKCS#8, not SEC1 or PKCS#1
    assert pem.rstrip().endswith(b"-----END PRIVATE KEY-----"), pem[-40:]
    key = serialization.load_pem_private_key(pem, password=None)
    if kind == "p256":
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1", key
        alg = "ES256"
    else:
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048, key
        alg = "RS256"
    kid = thumbprint(key.public_key())
    assert as_word(res.stdout, kid), f"keygen did not print the kid {kid}: {res.stdout!r}"
    assert b"PRIVATE" not in (res.stdout + res.stderr).encode(), "keygen printed the private key"

    # a broker serves with it: its JWKS is that key under that kid, and what it signs verifies
    b = broker_factory(issuer=mock_issuer, server={"signing_key_file": str(out)})
    keys = requests.get(b.url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()["keys"]
    assert [k["kid"] for k in keys] == [kid], keys
    assert {m: keys[0][m] for m in public_jwk_members(key.public_key())} == public_jwk_members(key.public_key())
    assert keys[0].get("alg") == alg, keys
    r = b.exchange(mock_issuer.token())
    assert r.status == 200, r
    token = r.json["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == kid
    claims = jwt.decode(token, key.public_key(), algorithms=[alg], audience=PARTNER, issuer=b.issuer)
    assert claims["role"] == "deploy", claims

    # the twin of "a fresh key": a second run writes another key, and prints its own kid
    again = tmp_path / "keys" / "signing2.pem"
    res2 = keygen(ephemera_bin, again, *(["--rsa"] if kind == "rsa" else []))
    assert res2.returncode == 0, res2
    kid2 = thumbprint(serialization.load_pem_private_key(again.read_bytes(), password=None).public_key())
    assert kid2 != kid and as_word(res2.stdout, kid2) and not as_word(res2.stdout, kid), (kid, res2.stdout)


def test_keygen_never_overwrites_a_file(ephemera_bin, tmp_path):
    # the twin first: a fresh path is written
    mine = tmp_path / "signing.pem"
    res = keygen(ephemera_bin, mine)
    assert res.returncode == 0, res
    written = mine.read_bytes()

    precious = tmp_path / "precious.pem"
    precious.write_text("not a key, but someone's\n")
    precious.chmod(0o644)
    link = tmp_path / "link.pem"
    link.symlink_to(precious)
    for target, flags in [(mine, []), (mine, ["--rsa"]), (precious, []), (link, [])]:
        before = (target.read_bytes(), stat.S_IMODE(target.stat().st_mode))
        res = keygen(ephemera_bin, target, *flags)
        assert res.returncode == 2, (target, flags, res.returncode, res.stdout, res.stderr)
        assert str(target) in res.stderr or "exist" in res.stderr, res.stderr
        assert "unrecognized subcommand" not in res.stderr, res.stderr
        assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == before, target
    assert mine.read_bytes() == written
    assert link.is_symlink() and precious.read_text() == "not a key, but someone's\n"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o644


# ---- revoke, revocations list and remove ---------------------------------------------------------


def test_revoke_a_task_list_it_then_lift_it(site):
    task = f"{GH_REPOSITORY_ID}/501/1"
    key = f"task:gh:{task}"
    ended, other_run = site.credential(run_id="501"), site.credential(run_id="502")
    assert site.revocations() == []

    body = json_out(site.cli("revoke", "--task", task, "--provider", "gh", "--json"))
    assert set(body) == {"revoked", "until", "matched"}, body
    assert body["revoked"] == key and body["matched"] == 1, body
    until = body["until"]
    assert until - now() in range(REVOCATION_TTL - 120, REVOCATION_TTL + 1), body
    assert site.active(ended) is False
    assert site.active(other_run) is True  # the twin: another run of the same repository
    refused = site.broker.exchange(site.assertion(run_id="501"), role="deploy2")  # any role
    assert refused.status == 400 and f"revoked ({key})" in refused.description, refused

    # listed: over HTTP, by the CLI as JSON, and in its table (key and until)
    assert site.revocations() == [{"key": key, "until": until}]
    assert json_out(site.cli("revocations", "list", "--json")) == {"revocations": [{"key": key, "until": until}]}
    res = site.cli("revocations", "list")
    assert res.returncode == 0, res
    rows = [line for line in res.stdout.splitlines() if key in line]
    assert len(rows) == 1 and shows_time(rows[0], until), res.stdout

    # removed: listed no more, the task exchanges again, and the removal is audited
    # (`revocations remove` has no --json, unlike the spec's `list|remove ... [--json]`)
    res = site.cli("revocations", "remove", key)
    assert res.returncode == 0 and key in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert site.revocations() == []
    assert json_out(site.cli("revocations", "list", "--json")) == {"revocations": []}
    res = site.cli("revocations", "list")
    assert res.returncode == 0 and key not in res.stdout, res
    again = site.broker.exchange(site.assertion(run_id="501"), role="deploy2")
    assert again.status == 200, again
    assert site.active(ended) is True  # lifted: the grant it had ended is in force again
    assert site.audit_details() == [f"revoked `{key}`", f"removed revocation `{key}`"]

    # removing it again, or a key never revoked: exit 1, nothing_matched, nothing audited; the
    # route answers 404
    for unknown in (key, "role:never-revoked"):
        res = site.cli("revocations", "remove", unknown)
        assert res.returncode == 1, (unknown, res.returncode, res.stdout, res.stderr)
        assert "nothing_matched" in res.stderr, res.stderr
        r = site.remove(unknown)
        assert r.status_code == 404 and r.json()["error"] == "invalid_request", r.text
        assert r.json()["error_description"].startswith("nothing_matched"), r.text
    assert site.audit_details() == [f"revoked `{key}`", f"removed revocation `{key}`"]
    # the route's answer to a removal (the CLI prints no JSON of it)
    assert json_out(site.cli("revoke", "--task", task, "--provider", "gh", "--json"))["matched"] == 2  # ended, again
    r = site.remove(key)
    assert r.status_code == 200 and r.json() == {"removed": key}, r.text
    assert site.revocations() == []
    assert site.audit_details() == [f"revoked `{key}`", f"removed revocation `{key}`"] * 2


def test_a_mistyped_task_matches_nothing_and_is_not_recorded_unless_forced(site):
    live = site.credential(run_id="601")
    typo = f"{GH_REPOSITORY_ID}/6O1/1"  # a letter O for the zero
    res = site.cli("revoke", "--task", typo, "--provider", "gh")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "nothing_matched" in res.stderr and res.stdout == "", res
    assert site.revocations() == []
    assert site.audit_details() == []
    assert site.active(live) is True
    # the route the CLI calls: require_match=true → 404 invalid_request, nothing_matched
    r = requests.post(site.url + "/v1/revoke", data={"task": typo, "provider": "gh", "require_match": "true"},
                      headers=admin(), timeout=HTTP_TIMEOUT)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "invalid_request" and r.json()["error_description"].startswith("nothing_matched"), r.text
    assert site.revocations() == []

    # the twin: --force records it (text output names the key), and it is listed and audited
    key = f"task:gh:{typo}"
    res = site.cli("revoke", "--task", typo, "--provider", "gh", "--force")
    assert res.returncode == 0 and key in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert [r["key"] for r in site.revocations()] == [key]
    assert site.audit_details() == [f"revoked `{key}`"]
    body = json_out(site.cli("revoke", "--role", "nope", "--force", "--json"))
    assert body["revoked"] == "role:nope" and body["matched"] == 0, body
    assert [r["key"] for r in site.revocations()] == sorted([key, "role:nope"])  # sorted by key
    assert site.active(live) is True  # neither ended the live grant


@pytest.mark.parametrize("expired", [False, True], ids=["live", "no-lifetime-left"])
def test_a_revoked_tasks_assertion_is_refused_unspent_and_exchanges_once_lifted(site, expired):
    """The revocation check and the replay mark are one step (issue 18): the same assertion of a
    revoked task is refused `policy_denied` naming the revocation, and is not spent, so it
    exchanges once the revocation is lifted; a second use is then a replay. `no-lifetime-left`:
    an assertion past its `exp` but within the leeway, which has no lifetime to give: the
    revocation is still the reason it is refused (as when revocations were read before the
    decision), and after the lift it is `token_expired`, never spent."""
    task = f"{GH_REPOSITORY_ID}/601/1"
    key = f"task:gh:{task}"
    t = now()
    times = {"iat": t - 200, "nbf": t - 200, "exp": t - 5} if expired else {}
    assertion = site.assertion(run_id="601", **times)
    revoked = site.cli("revoke", "--task", task, "--provider", "gh", "--force", "--json")  # no grant yet
    assert json_out(revoked)["revoked"] == key
    for _ in range(2):
        refused = site.broker.exchange(assertion, role="deploy2")
        assert refused.status == 400 and refused.reason == "policy_denied", refused
        assert f"revoked ({key})" in refused.description, refused
        record = site.broker.audit_record(refused.decision_id)
        assert record["decision"] == "deny" and record["reason"] == "policy_denied", record
        assert key in record["detail"] and "credential" not in record, record
    res = site.cli("revocations", "remove", key)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    again = site.broker.exchange(assertion, role="deploy2")
    if expired:
        assert again.status == 400 and again.reason == "token_expired", again
        assert site.broker.exchange(assertion, role="deploy2").reason == "token_expired"
    else:
        assert again.status == 200, again  # not spent by the refusals
        replay = site.broker.exchange(assertion, role="deploy2")
        assert replay.status == 400 and replay.reason == "token_replayed", replay


@pytest.mark.parametrize("kind", ["grant", "task", "subject", "role", "issuer"])
def test_revoke_by_each_key_ends_those_grants_and_no_other(site, kind):
    """Six live grants that differ in one thing each from A; each kind of revocation must end
    exactly its own (and count them in `matched`)."""
    g = {
        "A": site.credential("deploy", run_id="701"),
        "B": site.credential("deploy", run_id="701"),  # A's task and subject, another grant
        "C1": site.credential("deploy2", run_id="702"),  # A's subject, another role
        "C2": site.credential("deploy2", run_id="703"),
        "D": site.credential("deploy", run_id="704", repository="acme/renamed"),  # another subject
        "E": site.credential("other", mock=site.mock2, run_id="701"),  # A's task and subject in gh2
    }
    claims = {n: verify_broker_jwt(site.broker, t) for n, t in g.items()}
    task, subject = claims["A"]["task"], claims["A"]["sub"]
    assert (claims["E"]["task"], claims["E"]["sub"]) == (task, subject)
    assert claims["D"]["sub"] != subject
    args, key, ended = {
        "grant": (["--grant", claims["A"]["jti"]], f"jti:{claims['A']['jti']}", {"A"}),
        "task": (["--task", task, "--provider", "gh"], f"task:gh:{task}", {"A", "B"}),
        "subject": (["--subject", subject, "--provider", "gh"], f"subject:gh:{subject}", {"A", "B", "C1", "C2"}),
        "role": (["--role", "deploy2"], "role:deploy2", {"C1", "C2"}),
        "issuer": (["--issuer", site.mock2.issuer], f"issuer:{site.mock2.issuer}", {"E"}),
    }[kind]
    body = json_out(site.cli("revoke", *args, "--json"))
    assert body["revoked"] == key and body["matched"] == len(ended), body
    assert {n: site.active(t) for n, t in g.items()} == {n: n not in ended for n in g}
    # the inventory says the same
    revoked = {gr["id"]: gr["revoked"] for gr in site.grants()}
    assert revoked == {claims[n]["jti"]: n in ended for n in g}, revoked
    assert [r["key"] for r in site.revocations()] == [key]


# ---- introspect ----------------------------------------------------------------------------------


def test_introspect_prints_rfc7662_json_and_exits_3_when_inactive(site):
    token, other = site.credential(run_id="801"), site.credential(run_id="802")
    claims = verify_broker_jwt(site.broker, token)
    res = site.cli("introspect", "--token-file", str(site.token_path(token)))
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    assert json.loads(res.stdout) == {"active": True, "token_type": "Bearer", **claims}, res.stdout

    assert json_out(site.cli("revoke", "--grant", claims["jti"], "--json"))["matched"] == 1
    res = site.cli("introspect", "--token-file", str(site.token_path(token)))
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert json.loads(res.stdout) == {"active": False}, res.stdout
    res = site.cli("introspect", "--token-file", str(site.token_path("not.a.jwt")))
    assert res.returncode == 3 and json.loads(res.stdout) == {"active": False}, res
    # the twin: the other grant is still active
    assert site.cli("introspect", "--token-file", str(site.token_path(other))).returncode == 0


def test_introspect_consume_takes_the_only_use(site):
    token = site.credential("once", run_id="811")
    path = str(site.token_path(token))
    # the twin: looking does not take a use
    for _ in range(2):
        body = json_out(site.cli("introspect", "--token-file", path))
        assert body["active"] is True and body["max_uses"] == 1 and body["uses_remaining"] == 1, body
    body = json_out(site.cli("introspect", "--token-file", path, "--consume"))
    assert body["active"] is True and body["uses_remaining"] == 0, body
    for extra in (["--consume"], []):
        res = site.cli("introspect", "--token-file", path, *extra)
        assert res.returncode == 3, (extra, res.returncode, res.stdout, res.stderr)
        assert json.loads(res.stdout) == {"active": False}, res.stdout


# ---- grants --------------------------------------------------------------------------------------


def column(lines: list[str], name: str) -> list[str]:
    """The values of column `name` of a left-aligned table (header first): the token under the
    header's name, or the last token when it is the last column."""
    header = lines[0]
    assert name in header.split(), header
    if header.split()[-1] == name:
        return [row.split()[-1] for row in lines[1:]]
    pos = header.index(name)
    return [row[pos:].split()[0] for row in lines[1:]]


def test_grants_marks_revoked_grants_sorts_by_issue_time_and_hides_them_with_active(site):
    first = [site.credential(run_id=f"90{i}") for i in range(3)]
    last_iat = max(verify_broker_jwt(site.broker, t)["iat"] for t in first)
    wait_until(lambda: now() > last_iat, timeout=5, interval=0.05, what="a second later than the first grants")
    second = [site.credential(run_id=f"91{i}") for i in range(2)] + [site.credential("deploy2", run_id="920")]
    jtis = [site.jti(t) for t in first + second]
    # one revoked by its jti, one by its role: both are revoked grants
    assert json_out(site.cli("revoke", "--grant", jtis[1], "--json"))["matched"] == 1
    assert json_out(site.cli("revoke", "--role", "deploy2", "--json"))["matched"] == 1
    revoked = {jtis[1], jtis[5]}

    listed = json_out(site.cli("grants", "--json"))["grants"]
    assert {g["id"]: g["revoked"] for g in listed} == {j: j in revoked for j in jtis}, listed
    order = [g["id"] for g in sorted(listed, key=lambda g: (g["issued_at"], g["id"]))]
    assert len({g["issued_at"] for g in listed}) >= 2, listed  # two seconds, so the time key matters
    assert [g["id"] for g in listed] == order

    res = site.cli("grants")
    assert res.returncode == 0, res
    lines = res.stdout.splitlines()
    assert lines[0].split()[0] == "GRANT", res.stdout
    assert [row.split()[0] for row in lines[1:]] == order, res.stdout
    assert column(lines, "REVOKED") == ["yes" if j in revoked else "-" for j in order], res.stdout

    # --active: the revoked ones are gone, from the table and the JSON
    res = site.cli("grants", "--active")
    assert res.returncode == 0, res
    lines = res.stdout.splitlines()
    assert [row.split()[0] for row in lines[1:]] == [j for j in order if j not in revoked], res.stdout
    assert set(column(lines, "REVOKED")) == {"-"}, res.stdout
    active = json_out(site.cli("grants", "--active", "--json"))["grants"]
    assert [g["id"] for g in active] == [j for j in order if j not in revoked]
    assert all(g["revoked"] is False for g in active), active


# ---- every admin command: https or loopback only; a wrong credential is "refused" ----------------


ADMIN_COMMANDS = {
    "grants": ["grants"],
    "revoke": ["revoke", "--role", "deploy", "--force"],
    "revocations-list": ["revocations", "list"],
    "revocations-remove": ["revocations", "remove", "role:deploy2"],
    "introspect": ["introspect", "--token-file", "TOKEN"],
}


def command(name: str, token_file) -> list[str]:
    return [str(token_file) if a == "TOKEN" else a for a in ADMIN_COMMANDS[name]]


@pytest.mark.parametrize("name", list(ADMIN_COMMANDS))
def test_admin_commands_send_the_credential_only_to_https_or_loopback(name, ephemera_bin, canary, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    jwt_file = tmp_path / "token.jwt"
    jwt_file.write_text("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n")
    args = command(name, jwt_file)

    def run(broker: str):
        return run_cli(ephemera_bin, [*args, "--broker", broker, "--admin-token-file", str(token_file)])

    # 0.0.0.0 reaches this machine's listeners on Linux, but it is not a loopback address
    for broker in ("http://example.com", "http://broker.example.com:8081", f"http://0.0.0.0:{canary.port}"):
        res = run(broker)
        assert res.returncode == 2, (broker, res.returncode, res.stdout, res.stderr)
        assert "must be https" in res.stderr, res.stderr
        assert ADMIN_TOKEN not in res.stdout + res.stderr
    assert canary.connections == 0
    # the twin: the same listener by its loopback address is reached
    run(f"http://127.0.0.1:{canary.port}")
    assert canary.connections >= 1


@pytest.mark.parametrize("name", list(ADMIN_COMMANDS))
def test_a_wrong_admin_credential_is_reported_as_refused(name, site):
    token = site.credential(run_id="951")
    assert requests.post(site.url + "/v1/revoke", data={"role": "deploy2"}, headers=admin(),
                         timeout=HTTP_TIMEOUT).status_code == 200
    before = site.revocations()
    args = command(name, site.token_path(token))
    res = site.cli(*args, token_file=site.wrong_token_file)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    # (the spec's words are "the admin credential was refused"; the broker says "the bearer
    # credential presented was refused": pinned is that it says refused, not required)
    assert re.search(r"credential .*was refused", res.stderr) and "required" not in res.stderr, res.stderr
    assert WRONG_TOKEN not in res.stdout + res.stderr and ADMIN_TOKEN not in res.stdout + res.stderr
    assert site.revocations() == before and site.active(token) is True  # nothing was done
    # the twin: the right credential works
    res = site.cli(*args)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    if name == "revoke":
        assert [r["key"] for r in site.revocations()] == ["role:deploy", "role:deploy2"]
    if name == "revocations-remove":
        assert site.revocations() == []


ADMIN_ROUTES = [("GET", "/v1/grants", None), ("GET", "/v1/revocations", None),
                ("POST", "/v1/revoke", {"role": "deploy", "require_match": "true"}),
                ("POST", "/v1/revocations/remove", {"key": "role:deploy2"}),
                ("POST", "/v1/introspect", {"token": "TOKEN"})]


def test_a_missing_admin_credential_is_told_apart_from_a_wrong_one(site):
    """What the CLI reports comes from the route: 401 `unauthorized`, saying whether a credential
    was presented (and refused) or none was."""
    token = site.credential(run_id="961")
    assert requests.post(site.url + "/v1/revoke", data={"role": "deploy2"}, headers=admin(),
                         timeout=HTTP_TIMEOUT).status_code == 200
    for method, path, form in ADMIN_ROUTES:
        form = {k: (token if v == "TOKEN" else v) for k, v in (form or {}).items()} or None
        for headers, description in [({}, "unauthorized: an admin bearer credential is required"),
                                     (admin(WRONG_TOKEN), "unauthorized: the bearer credential presented was refused")]:
            r = requests.request(method, site.url + path, data=form, headers=headers, timeout=HTTP_TIMEOUT)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json() == {"error": "invalid_client", "error_description": description}, (path, r.text)
        # the twin: the admin credential is answered
        r = requests.request(method, site.url + path, data=form, headers=admin(), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (path, r.text)
