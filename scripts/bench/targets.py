"""The servers under test and their peers: keys, the issuer, Ephemera (and its variants),
OpenBao, the Python baseline and Redis. Each start either answers a ready, probed Target or
raises StartError (with the log's tail) or Skip (a missing prerequisite)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from runtime import Processes, StartError, free_port, http_json

HERE = Path(__file__).resolve().parent
ROLE = "bench"
AUDIENCE = "ephemera-bench"
PARTNER = "https://partner.example"
ISSUER_KID = "rsa-signing"
EXTRA_JWKS_KEYS = 99
EXTRA_ROLES = 10_000
BAO_ROOT = "bench-root"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"


class Skip(Exception):
    """A variant whose prerequisite is missing; the message says which."""


@dataclass
class Target:
    name: str
    mode: str  # bench.lua mode: exchange | login | chain
    url: str
    pids: set[int]  # the server's CPU: these processes and their descendants
    main_pid: int  # whose memory is read
    process_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Env:
    procs: Processes
    work: Path  # on the real disk: configs, keys, audit logs
    shm: Path | None  # on tmpfs, for the audit-on-tmpfs variant
    ephemera_bin: Path
    bao_bin: Path


# ------------------------------------------------------------------------------------------------
# keys and the issuer


def _pkcs8(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _public_jwk(key: Any, kid: str) -> dict[str, Any]:
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    algo = RSAAlgorithm if is_rsa else ECAlgorithm
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256" if is_rsa else "ES256")
    return jwk


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_keys(env: Env, jwks100: bool) -> bytes:
    """Writes the issuer's JWKS documents and the brokers' signing keys; answers the issuer's
    RSA signing key (PKCS#8 PEM) for the token pool."""
    signing = _rsa()
    issuer_dir = env.work / "issuer"
    issuer_dir.mkdir()
    jwks = [_public_jwk(signing, ISSUER_KID), _public_jwk(ec.generate_private_key(ec.SECP256R1()), "ec-1")]
    (issuer_dir / "jwks.json").write_text(json.dumps({"keys": jwks}))
    if jwks100:
        extra = [_public_jwk(_rsa(), f"rsa-extra-{i}") for i in range(EXTRA_JWKS_KEYS)]
        # the signing key last: a key search has to pass every other one
        (issuer_dir / "jwks100.json").write_text(json.dumps({"keys": [*extra, jwks[0]]}))
    (env.work / "broker-es256.pem").write_bytes(_pkcs8(ec.generate_private_key(ec.SECP256R1())))
    (env.work / "broker-rs256.pem").write_bytes(_pkcs8(_rsa()))
    return _pkcs8(signing)


def start_issuer(env: Env) -> str:
    env.procs.start("issuer", [sys.executable, str(HERE / "issuer.py"), "--dir", str(env.work / "issuer")])
    port = env.procs.wait_line("issuer", "READY ", timeout=30).split()[1]
    return f"http://127.0.0.1:{port}"


def _minted_alg(answer: Any, *path: str) -> str | None:
    """The `alg` of the JWT at `path` in a JSON answer; None if there is none."""
    for key in path:
        answer = answer.get(key) if isinstance(answer, dict) else None
    try:
        return str(jwt.get_unverified_header(answer)["alg"]) if isinstance(answer, str) else None
    except (jwt.PyJWTError, KeyError):
        return None


# ------------------------------------------------------------------------------------------------
# Ephemera


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    bench: dict[str, bool] | None = None
    audit_on_tmpfs: bool = False
    signing_key: str = "broker-es256.pem"
    extra_roles: int = 0
    jwks100: bool = False
    redis: bool = False
    memory_state: bool = False

    @property
    def mint_alg(self) -> str:
        return "RS256" if "rs256" in self.signing_key else "ES256"


DEFAULT = Variant("default", "the measured config (replay on, audit fsynced on disk, the default file state "
                              "backend on disk, ES256)")
VARIANTS = {v.name: v for v in [
    Variant("replay-off", "[bench] replay = false", bench={"replay": False}),
    Variant("audit-off", "[bench] audit = false", bench={"audit": False}),
    Variant("audit-tmpfs", "audit log on /dev/shm (fsync nearly free)", audit_on_tmpfs=True),
    Variant("rs256-mint", "broker JWTs signed RS256 (RSA-2048 signing key)", signing_key="broker-rs256.pem"),
    Variant("roles-10k", f"{EXTRA_ROLES} more roles, each pinning acme/svc-N", extra_roles=EXTRA_ROLES),
    Variant("jwks-100", "the issuer's JWKS holds 100 RSA keys (signing key last)", jwks100=True),
    Variant("redis", "[state] backend = redis (redis-server on core 0, its CPU counted)", redis=True),
    Variant("memory", "[state] backend = memory (forgets at restart; nothing written but the audit log)",
            memory_state=True),
]}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(cfg: dict[str, Any]) -> str:
    out = []
    for name, val in cfg.items():
        for item in val if isinstance(val, list) else [val]:
            out.append(f"[[{name}]]" if isinstance(val, list) else f"[{name}]")
            out.extend(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in item.items())
            out.append("")
    return "\n".join(out)


def _role(name: str, conditions: dict[str, str], allow_broad: bool = False) -> dict[str, Any]:
    role: dict[str, Any] = {"name": name, "provider": "bench", "max_ttl": "15m", "conditions": conditions}
    if allow_broad:
        role["allow_broad"] = True  # a glob is not a pin, and the oidc profile wants `sub` pinned
    role["credential"] = {"kind": "jwt", "audience": PARTNER}
    return role


def ephemera_config(env: Env, issuer: str, port: int, v: Variant, audit_dir: Path,
                    redis_port: int | None) -> dict[str, Any]:
    provider: dict[str, Any] = {"name": "bench", "profile": "oidc", "issuer": issuer,
                                "audiences": [AUDIENCE], "max_token_lifetime": "3h"}
    if v.jwks100:
        provider["jwks_uri"] = issuer + "/jwks100"
    roles = [_role(ROLE, {"repository": "acme/*", "ref": "refs/heads/main"}, allow_broad=True)]
    roles += [_role(f"svc-{i}", {"sub": f"repo:acme/svc-{i}:ref:refs/heads/main", "repository": f"acme/svc-{i}"})
              for i in range(v.extra_roles)]
    # the default backend is the broker's default: `file`, its redb file beside the audit log (on
    # the real disk, or on /dev/shm with audit-tmpfs); the cap is raised so that no cell meets it
    state: dict[str, Any] = ({"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}"} if redis_port
                             else {"backend": "memory" if v.memory_state else "file", "max_entries": 20_000_000})
    cfg: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "issuer": f"http://127.0.0.1:{port}",
                   "signing_key_file": str(env.work / v.signing_key), "rate_limit_per_second": 0},
        "state": state,
        "audit": {"path": str(audit_dir / "audit.jsonl")},
        "providers": [provider],
        "roles": roles,
    }
    if v.bench:
        cfg["bench"] = v.bench
    return cfg


def _check_config(env: Env, path: Path) -> None:
    r = subprocess.run([str(env.ephemera_bin), "check", "--config", str(path)], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        # drop the TOML excerpt (`6 | [bench]`, `  |  ^^^^^`) that frames the message
        problems = [line.strip() for line in (r.stdout + r.stderr).splitlines()
                    if line.strip() and not re.match(r"^\s*\d*\s*\|", line)]
        raise Skip("the binary refuses the config: " + " / ".join(problems[-3:]))


def start_redis(env: Env, name: str) -> tuple[int, int]:
    if shutil.which("redis-server") is None:
        raise Skip("redis-server is not installed")
    port = free_port()
    proc = env.procs.start(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        env.procs.check_alive(name)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    # an established store, as a deployment's is (and the tests' are): its epoch
                    # marker long past. A broker's first start on an empty Redis begins an epoch
                    # and refuses assertions issued within the provider's leeway of it (README:
                    # the Redis epoch), which would refuse the probe and the pool's assertions
                    key, epoch = b"{eph}:meta:epoch", b"1"
                    s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(epoch), epoch))
                    if not s.recv(16).startswith(b"+OK"):
                        raise StartError(f"{name}: SET of the epoch marker refused")
                    return proc.pid, port
        except OSError:
            time.sleep(0.1)
    raise StartError(f"{name}: no PONG after 30s\n{env.procs.tail(name)}")


Probe = Callable[[], str]  # a fresh assertion, signed now


def start_ephemera(env: Env, issuer: str, v: Variant, probe: Probe) -> Target:
    name = "ephemera" if v is DEFAULT else f"ephemera[{v.name}]"
    if v.audit_on_tmpfs and env.shm is None:
        raise Skip("no tmpfs at /dev/shm")
    audit_dir = (env.shm if v.audit_on_tmpfs and env.shm else env.work) / f"audit-{v.name}"
    audit_dir.mkdir()
    config_path = env.work / f"ephemera-{v.name}.toml"
    port = free_port()
    # the config is checked before Redis is started: a refused config needs no Redis
    config_path.write_text(to_toml(ephemera_config(env, issuer, port, v, audit_dir, 1 if v.redis else None)))
    _check_config(env, config_path)
    pids: set[int] = set()
    names = []
    if v.redis:
        redis_pid, redis_port = start_redis(env, f"redis[{v.name}]")
        pids.add(redis_pid)
        names.append(f"redis[{v.name}]")
        config_path.write_text(to_toml(ephemera_config(env, issuer, port, v, audit_dir, redis_port)))
    proc = env.procs.start(name, [str(env.ephemera_bin), "serve", "--config", str(config_path)])
    try:
        env.procs.wait_http(name, f"http://127.0.0.1:{port}/readyz", timeout=300)
    except StartError as e:
        if v is not DEFAULT and proc.poll() == 2:  # exit 2: the binary refuses this config
            raise Skip("the server refuses the config: " + env.procs.tail(name, 1).strip()) from e
        raise
    body = f"grant_type={GRANT}&subject_token_type={ID_TOKEN}&audience={ROLE}&subject_token={probe()}"
    status, answer = http_json("POST", f"http://127.0.0.1:{port}/v1/token", body, form=True)
    if status != 200 or _minted_alg(answer, "access_token") != v.mint_alg:
        raise StartError(f"{name}: probe exchange answered {status}: {answer}\n{env.procs.tail(name)}")
    return Target(name, "exchange", f"http://127.0.0.1:{port}/v1/token", pids | {proc.pid}, proc.pid,
                  [name, *names])


# ------------------------------------------------------------------------------------------------
# OpenBao


def _bao(addr: str, method: str, path: str, body: Any = None, token: str = BAO_ROOT) -> Any:
    status, answer = http_json(method, f"{addr}/v1/{path}", body, headers={"X-Vault-Token": token})
    if not 200 <= status < 300:
        raise StartError(f"openbao: {method} {path} answered {status}: {answer}")
    return answer


def configure_openbao(addr: str, issuer: str) -> None:
    _bao(addr, "POST", "sys/auth/jwt", {"type": "jwt"})
    _bao(addr, "POST", "auth/jwt/config", {"oidc_discovery_url": issuer, "bound_issuer": issuer})
    _bao(addr, "PUT", f"sys/policies/acl/{ROLE}",
         {"policy": f'path "identity/oidc/token/{ROLE}" {{ capabilities = ["read"] }}'})
    _bao(addr, "POST", f"identity/oidc/key/{ROLE}", {"algorithm": "ES256", "allowed_client_ids": "*"})
    # an empty claims template makes OpenBao log a warning on every token read: give it an empty object
    _bao(addr, "POST", f"identity/oidc/role/{ROLE}", {"key": ROLE, "ttl": "15m", "template": "{}"})
    if not _bao(addr, "GET", "sys/audit").get("file/"):
        raise StartError("openbao: the file audit device from the config is not enabled")
    _bao(addr, "POST", f"auth/jwt/role/{ROLE}", {
        "role_type": "jwt", "bound_audiences": [AUDIENCE], "user_claim": "sub",
        "bound_claims_type": "glob", "bound_claims": {"repository": "acme/*", "ref": "refs/heads/main"},
        "token_type": "batch", "token_policies": [ROLE], "token_ttl": "15m",
    })


def start_openbao(env: Env, issuer: str, probe: Probe) -> list[Target]:
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    # OpenBao 2.x enables audit devices only from its config file (the API refuses)
    config = env.work / "openbao.hcl"
    audit_log = json.dumps(str(env.work / "openbao-audit.log"))
    config.write_text(f'audit "file" "file" {{\n  options {{\n    file_path = {audit_log}\n  }}\n}}\n')
    proc = env.procs.start("openbao", [
        str(env.bao_bin), "server", "-dev", f"-dev-root-token-id={BAO_ROOT}",
        f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token", f"-config={config}",
    ])
    env.procs.wait_http("openbao", f"{addr}/v1/sys/health", timeout=60)
    configure_openbao(addr, issuer)
    login = _bao(addr, "POST", "auth/jwt/login", {"role": ROLE, "jwt": probe()}, token="")
    answer = _bao(addr, "GET", f"identity/oidc/token/{ROLE}", token=login["auth"]["client_token"])
    alg = _minted_alg(answer, "data", "token")
    if login["auth"].get("token_type") != "batch" or alg != "ES256":
        raise StartError(f"openbao: the login gave a {login['auth'].get('token_type')} token and the chain "
                         f"an {alg} JWT; expected batch and ES256")
    return [Target("openbao-login", "login", addr, {proc.pid}, proc.pid, ["openbao"]),
            Target("openbao-chain", "chain", addr, {proc.pid}, proc.pid, ["openbao"])]


# ------------------------------------------------------------------------------------------------
# the Python baseline


def start_baseline(env: Env, issuer: str, probe: Probe) -> Target:
    port = free_port()
    config = {
        "issuer": issuer, "jwks_uri": issuer + "/jwks", "audience": AUDIENCE, "role": ROLE,
        "repository": "acme/*", "ref": "refs/heads/main",
        "signing_key_file": str(env.work / "broker-es256.pem"), "broker_issuer": f"http://127.0.0.1:{port}",
        "partner_audience": PARTNER, "audit_path": str(env.work / "baseline-audit.jsonl"),
        "max_ttl": 900, "max_lifetime": 3 * 3600, "leeway": 60,
    }
    config_path = env.work / "baseline.json"
    config_path.write_text(json.dumps(config))
    proc = env.procs.start("baseline", [
        sys.executable, "-m", "uvicorn", "baseline:create_app", "--factory", "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ], env={"BASELINE_CONFIG": str(config_path)})
    url = f"http://127.0.0.1:{port}"
    env.procs.wait_http("baseline", url + "/healthz", timeout=60)
    body = f"grant_type={GRANT}&subject_token_type={ID_TOKEN}&audience={ROLE}&subject_token={probe()}"
    status, answer = http_json("POST", url + "/v1/token", body, form=True)
    if status != 200 or _minted_alg(answer, "access_token") != "ES256":
        raise StartError(f"baseline: probe exchange answered {status}: {answer}\n{env.procs.tail('baseline')}")
    return Target("baseline", "exchange", url + "/v1/token", {proc.pid}, proc.pid, ["baseline"])
