"""`ephemera check` refuses what `serve` would refuse (issue 16 part K; newcomer frictions 3 and 4).

Every case runs the same config file through both commands: either both refuse it (exit 2, naming
the same key and file) or both accept it (`check` exits 0 and `serve` becomes healthy). Cases:

- Signing keys: PKCS#8 P-256 and RSA, and SEC1 `BEGIN EC PRIVATE KEY` P-256 (`openssl ecparam -genkey`,
  which `check` passed and `serve` refused before) are accepted, and `serve` then publishes that
  very key; a garbage PEM, a public key or a P-384 key is refused naming the file, the accepted
  formats and `ephemera keygen`; a missing file says `No such file` (not "not PKCS#8").
- A missing `publish_key_files` entry is refused the same way; present, it is published.
- The audit path's and the file state backend's directories must exist and be writable: a path
  under `/proc` names `audit.path` (`state.path`); `check` creates no file at all, where `serve`
  creates both.
- Every unknown key of one file in one run, each with its path and a suggestion, next to a semantic
  error (an unknown provider).
- A condition on a claim the platform profile does not have is refused with a suggestion, unless
  the role lists it in `raw_claims`, the claim is a nested path, or the profile is `oidc`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from harness import (
    GH_CONDITIONS,
    PARTNER,
    STARTUP_TIMEOUT,
    LocalKey,
    broker_config,
    cloud_role,
    free_port,
    github_provider,
    provider,
    require_peer,
    run_cli,
    to_toml,
    wait_until,
)

# The GitHub role every case starts from: pinned ids, a branch and an event (no lint warning that
# could be mistaken for an error).
CONDITIONS = dict(GH_CONDITIONS, event_name="push")


@dataclass
class Served:
    """What `serve` did with a config: became healthy (`rc is None`) or exited with `rc`."""

    rc: int | None
    stderr: str
    jwks: dict | None = None  # its /.well-known/jwks.json, when it served


def base_config(tmp_path: Path, profile: str = "github-actions", conditions: dict | None = None) -> dict:
    """A config both commands accept: one provider on pinned keys (nothing is fetched), one role,
    the memory state backend and an audit log in `tmp_path/run`."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    jwks = LocalKey("p1", "EC").write_jwks(tmp_path / "jwks.json")
    if profile == "oidc":
        prov = provider("demo", "http://127.0.0.1:9/demo", jwks_file=str(jwks))
    else:
        prov = github_provider("demo", "http://127.0.0.1:9/demo", jwks_file=str(jwks), profile=profile)
    cond = dict(CONDITIONS) if conditions is None else conditions
    return broker_config(run, [prov], [cloud_role("deploy", "demo", {"kind": "jwt", "audience": PARTNER},
                                                  conditions=cond)])


def write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(cfg))
    return path


def check(binary, path: Path):
    return run_cli(binary, ["check", "--config", str(path)], timeout=60)


def serve(binary, tmp_path: Path, name: str, cfg: dict) -> Served:
    """Runs `serve` on `cfg` until it is healthy (then stops it) or exits; retries on a port taken
    between choosing it and binding it."""
    cfg = copy.deepcopy(cfg)
    for attempt in range(3):
        port = free_port()
        cfg["server"]["listen"] = f"127.0.0.1:{port}"
        cfg["server"]["issuer"] = f"http://127.0.0.1:{port}"
        path = write(tmp_path, f"{name}-serve", cfg)
        err_path = tmp_path / f"{name}-serve-{attempt}.stderr"
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, RUST_LOG="info")
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([str(binary), "serve", "--config", str(path)], stdout=subprocess.DEVNULL,
                                    stderr=err, stdin=subprocess.DEVNULL, env=env)
        try:
            def settled():
                if proc.poll() is not None:
                    return "exited"
                try:
                    if requests.get(url + "/healthz", timeout=2).status_code == 200:
                        return "serving"
                except requests.RequestException:
                    pass
                return None

            state = wait_until(settled, STARTUP_TIMEOUT, interval=0.02, what=f"serve {name} to exit or serve")
            jwks = requests.get(url + "/.well-known/jwks.json", timeout=10).json() if state == "serving" else None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        stderr = err_path.read_text(errors="replace")
        if state == "exited" and "cannot listen" in stderr and attempt < 2:
            continue
        return Served(None if state == "serving" else proc.returncode, stderr, jwks)
    raise AssertionError("unreachable")


def both(binary, tmp_path: Path, name: str, cfg: dict):
    """`check` and `serve` on the same config: (check's CompletedProcess, Served)."""
    return check(binary, write(tmp_path, name, cfg)), serve(binary, tmp_path, name, cfg)


def assert_both_accept(chk, served: Served):
    assert chk.returncode == 0, f"check refused:\n{chk.stderr}"
    assert chk.stdout.startswith("ok: "), chk.stdout
    assert "config error" not in chk.stderr, chk.stderr
    assert served.rc is None, f"serve exited {served.rc}:\n{served.stderr[-3000:]}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("config error: ")]


def assert_both_refuse(chk, served: Served, *fragments: str, absent: tuple[str, ...] = ()):
    """Both exit 2; check prints the problem as a `config error: ` line holding every fragment,
    and serve's refusal holds every fragment too."""
    assert chk.returncode == 2, f"check: rc {chk.returncode}\n{chk.stdout}{chk.stderr}"
    assert not chk.stdout.startswith("ok"), chk.stdout
    lines = [line for line in error_lines(chk.stderr) if all(f in line for f in fragments)]
    assert lines, f"check: no `config error:` line holding {fragments}:\n{chk.stderr}"
    assert served.rc == 2, f"serve: {'it served' if served.rc is None else f'rc {served.rc}'}\n{served.stderr[-3000:]}"
    for f in fragments:
        assert f in served.stderr, f"serve's refusal does not hold {f!r}:\n{served.stderr[-3000:]}"
    for a in absent:
        assert a not in chk.stderr and a not in served.stderr, (a, chk.stderr, served.stderr)


# ---- signing and publish keys -------------------------------------------------------------------


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    found = shutil.which("openssl")
    require_peer("openssl", found is not None, "apt-get install openssl")
    r = subprocess.run([found, *args], input=stdin, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def sec1_key(curve: str = "prime256v1") -> bytes:
    """The most common EC recipe (newcomer friction 3): `BEGIN EC PRIVATE KEY`."""
    pem = openssl("ecparam", "-name", curve, "-genkey", "-noout")
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----"), pem[:40]
    return pem


def pkcs8_p256() -> bytes:
    pem = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), pem[:40]
    return pem


def pkcs8_rsa() -> bytes:
    pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), pem[:40]
    return pem


def published(jwks: dict, pem: bytes) -> bool:
    """Whether the JWKS holds the public half of the private key `pem`."""
    public = serialization.load_pem_private_key(pem, password=None).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        want = RSAAlgorithm.to_jwk(public, as_dict=True)
        fields = ("kty", "n", "e")
    else:
        want = ECAlgorithm.to_jwk(public, as_dict=True)
        fields = ("kty", "crv", "x", "y")
    return any(all(k.get(f) == want[f] for f in fields) for k in jwks.get("keys", []))


# the key file's content, and whether both commands take it
KEYS = {
    "sec1_p256": (sec1_key, True),
    "pkcs8_p256": (pkcs8_p256, True),
    "pkcs8_rsa": (pkcs8_rsa, True),
    "garbage_pem": (lambda: b"-----BEGIN EC PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END EC PRIVATE KEY-----\n",
                    False),
    "public_key_pem": (lambda: openssl("ec", "-pubout", stdin=sec1_key()), False),
    "sec1_p384": (lambda: sec1_key("secp384r1"), False),
    "not_pem": (lambda: b"this is not a key\n", False),
}


@pytest.mark.parametrize("case", list(KEYS))
def test_signing_key_formats(ephemera_bin, tmp_path, case):
    """SEC1 and PKCS#8 P-256 keys are accepted by both, and serve signs with (publishes) that very
    key; anything else is refused by both, naming the file, the formats accepted and keygen."""
    make, ok = KEYS[case]
    pem = make()
    key_file = tmp_path / f"{case}.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    cfg = base_config(tmp_path)
    cfg["server"]["signing_key_file"] = str(key_file)
    chk, served = both(ephemera_bin, tmp_path, case, cfg)
    if ok:
        assert_both_accept(chk, served)
        assert published(served.jwks, pem), ("serve does not publish the configured key", served.jwks)
    else:
        assert_both_refuse(chk, served, "signing_key_file", str(key_file), "PKCS#8", "SEC1", "ephemera keygen")


def test_missing_signing_key_says_no_such_file(ephemera_bin, tmp_path):
    key_file = tmp_path / "missing-key.pem"
    cfg = base_config(tmp_path)
    cfg["server"]["signing_key_file"] = str(key_file)
    chk, served = both(ephemera_bin, tmp_path, "missing-key", cfg)
    # the file is missing: not "not a PKCS#8 key", and no advice about formats
    assert_both_refuse(chk, served, "signing_key_file", str(key_file), "No such file", absent=("PKCS#8",))
    # the twin: the same config once the file is there
    pem = sec1_key()
    key_file.write_bytes(pem)
    chk, served = both(ephemera_bin, tmp_path, "missing-key-written", cfg)
    assert_both_accept(chk, served)
    assert published(served.jwks, pem)


def test_missing_publish_key_is_refused_by_both(ephemera_bin, tmp_path):
    next_key = tmp_path / "next-key.pem"
    cfg = base_config(tmp_path)
    cfg["server"]["publish_key_files"] = [str(next_key)]
    chk, served = both(ephemera_bin, tmp_path, "missing-publish", cfg)
    assert_both_refuse(chk, served, "publish_key_files", str(next_key), "No such file", absent=("PKCS#8",))
    # the twin: present, it is published beside the signing key
    pem = pkcs8_p256()
    next_key.write_bytes(pem)
    chk, served = both(ephemera_bin, tmp_path, "publish-written", cfg)
    assert_both_accept(chk, served)
    assert published(served.jwks, pem)
    assert len(served.jwks["keys"]) == 2, served.jwks


# ---- audit and state paths ----------------------------------------------------------------------


def _audit_at(path: str):
    return lambda cfg, tmp: cfg["audit"].update(path=path)


def _state_at(path: str):
    return lambda cfg, tmp: cfg.update(state={"backend": "file", "path": path})


PATHS = {
    # newcomer friction 3, as typed: the directory does not exist (and cannot)
    "audit_under_proc": (_audit_at("/proc/forbidden/audit.jsonl"), ("audit.path", "/proc/forbidden/audit.jsonl")),
    "audit_dir_missing": (lambda cfg, tmp: cfg["audit"].update(path=str(tmp / "nowhere" / "audit.jsonl")),
                          ("audit.path", "nowhere")),
    # /proc exists and passes access(W_OK) for root, but no file can be made there
    "audit_in_proc": (_audit_at("/proc/audit.jsonl"), ("audit.path", "/proc/audit.jsonl")),
    "state_under_proc": (_state_at("/proc/forbidden/state.redb"), ("state.path", "/proc/forbidden/state.redb")),
    # the twin: a writable directory for both
    "writable": (lambda cfg, tmp: (cfg["audit"].update(path=str(tmp / "run" / "audit.jsonl")),
                                   cfg.update(state={"backend": "file", "path": str(tmp / "run" / "state.redb")})),
                 None),
}


@pytest.mark.parametrize("case", list(PATHS))
def test_audit_and_state_paths(ephemera_bin, tmp_path, case):
    mutate, fragments = PATHS[case]
    cfg = base_config(tmp_path)
    mutate(cfg, tmp_path)
    chk, served = both(ephemera_bin, tmp_path, case, cfg)
    if fragments is None:
        assert_both_accept(chk, served)
    else:
        assert_both_refuse(chk, served, *fragments)


def test_check_creates_nothing(ephemera_bin, tmp_path):
    """`check` opens the audit and state paths' directories to see they are usable, and creates
    no file there; the twin, `serve` on the same config, creates both (so the paths are right)."""
    cfg = base_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    audit, state = data / "audit.jsonl", data / "state.redb"
    cfg["audit"]["path"] = str(audit)
    cfg["state"] = {"backend": "file", "path": str(state)}
    chk = check(ephemera_bin, write(tmp_path, "creates-nothing", cfg))
    assert chk.returncode == 0, chk.stderr
    assert sorted(p.name for p in data.iterdir()) == [], "check created files"
    served = serve(ephemera_bin, tmp_path, "creates-nothing", cfg)
    assert served.rc is None, served.stderr[-3000:]
    assert audit.exists() and state.exists(), sorted(p.name for p in data.iterdir())


# ---- unknown keys ------------------------------------------------------------------------------


def typos(cfg: dict) -> dict:
    """Newcomer friction 4's file, as typed: `audience` for `audiences`, `max_tll` for `max_ttl` and
    `provider = "demoo"`."""
    cfg = copy.deepcopy(cfg)
    p, r = cfg["providers"][0], cfg["roles"][0]
    p["audience"] = p.pop("audiences")
    r["max_tll"] = r.pop("max_ttl")
    r["provider"] = "demoo"
    return cfg


def test_every_unknown_key_in_one_run(ephemera_bin, tmp_path):
    """Both unknown keys of friction 4's file in one run, each with its path and a suggestion."""
    good = base_config(tmp_path)
    chk, served = both(ephemera_bin, tmp_path, "typos", typos(good))
    assert chk.returncode == 2 and served.rc == 2, (chk, served)
    lines = error_lines(chk.stderr)
    print("check:\n" + "\n".join(lines))
    for expected in ("providers[0].audience: unknown key; did you mean `audiences`?",
                     "roles[0].max_tll: unknown key; did you mean `max_ttl`?"):
        assert len([line for line in lines if expected in line]) == 1, (expected, chk.stderr)
        assert expected in served.stderr, (expected, served.stderr[-3000:])
    # one line per problem: nothing lists every key of the table any more
    assert "expected one of" not in chk.stderr, chk.stderr
    # the twin: the same file without the typos
    assert_both_accept(*both(ephemera_bin, tmp_path, "no-typos", good))


def test_three_typos_in_one_run(ephemera_bin, tmp_path):
    """The brief's reading of friction 4: all three typos in ONE run, the unknown provider too."""
    chk, served = both(ephemera_bin, tmp_path, "typos", typos(base_config(tmp_path)))
    assert chk.returncode == 2 and served.rc == 2, (chk, served)
    assert [line for line in error_lines(chk.stderr) if "demoo" in line], chk.stderr
    assert "demoo" in served.stderr, served.stderr[-3000:]


def test_the_unknown_provider_is_named(ephemera_bin, tmp_path):
    """The third typo alone (what a second run of friction 4's file shows): named by both."""
    cfg = base_config(tmp_path)
    cfg["roles"][0]["provider"] = "demoo"
    chk, served = both(ephemera_bin, tmp_path, "demoo", cfg)
    assert_both_refuse(chk, served, "demoo")
    assert len([line for line in error_lines(chk.stderr) if "demoo" in line]) == 1, chk.stderr
    cfg["roles"][0]["provider"] = "demo"
    assert_both_accept(*both(ephemera_bin, tmp_path, "demo", cfg))


# ---- condition claims --------------------------------------------------------------------------


PROFILE_CONDITIONS = {
    "github-actions": dict(CONDITIONS),
    "gitlab": {"project_id": "4242", "ref_protected": "true", "ref": "main"},
}


@pytest.mark.parametrize("profile", list(PROFILE_CONDITIONS))
def test_a_mistyped_condition_claim_is_an_error(ephemera_bin, tmp_path, profile):
    """Newcomer friction 4: `reff` for `ref` passed check and denied every exchange at runtime."""
    cond = dict(PROFILE_CONDITIONS[profile])
    cond["reff"] = cond.pop("ref")
    cfg = base_config(tmp_path, profile, cond)
    chk, served = both(ephemera_bin, tmp_path, "reff", cfg)
    assert_both_refuse(chk, served, "roles[0]", "conditions.reff", f"`reff` is not a {profile} claim",
                       "did you mean `ref`?", 'raw_claims = ["reff"]')
    # the twin: a raw claim on purpose
    cfg["roles"][0]["raw_claims"] = ["reff"]
    assert_both_accept(*both(ephemera_bin, tmp_path, "reff-raw", cfg))


@pytest.mark.parametrize("case", ["nested_path", "oidc_profile", "profile_attribute"])
def test_condition_claims_that_are_accepted(ephemera_bin, tmp_path, case):
    """A nested claim path on a platform profile, any claim on the `oidc` profile, and a profile
    attribute are all accepted by both (without raw_claims)."""
    if case == "nested_path":
        cfg = base_config(tmp_path, conditions=dict(CONDITIONS, **{"ext.note": "x"}))
    elif case == "oidc_profile":
        cfg = base_config(tmp_path, "oidc", {"sub": "repo:acme/app:ref:refs/heads/main", "reff": "x"})
    else:
        cfg = base_config(tmp_path, conditions=dict(CONDITIONS, ref_type="branch"))
    assert "raw_claims" not in cfg["roles"][0]
    chk, served = both(ephemera_bin, tmp_path, case, cfg)
    assert_both_accept(chk, served)
    print(json.dumps(cfg["roles"][0]["conditions"]), "accepted")
