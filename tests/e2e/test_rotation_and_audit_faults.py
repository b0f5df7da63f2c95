"""Rotating the broker's signing key under live consumers (ATTACKS.md 59), and an audit sink that
fails (ATTACKS.md 56): no credential without its durable audit record."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import PARTNER, Broker, broker_config, provider, role


def write_key(path: Path, key=None) -> str:
    """Writes `key` (default: a fresh P-256 key) as a PKCS#8 PEM file."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def start(ephemera_bin, workdir: Path, mock_issuer, port: int, **server) -> Broker:
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")], port=port,
                        server=server)
    return Broker(ephemera_bin, workdir, cfg)


def test_key_rotation_with_a_caching_consumer_has_no_verification_failure(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    port = free_port()
    k1, k2 = write_key(tmp_path / "k1.pem"), write_key(tmp_path / "k2.pem")
    # 1. sign with K1, publish K2 ahead of its use
    b = start(ephemera_bin, tmp_path / "step1", mock_issuer, port, signing_key_file=k1, publish_key_files=[k2])
    t1 = b.exchange(mock_issuer.token()).json["access_token"]
    consumer = jwt.PyJWKClient(b.url + "/.well-known/jwks.json", cache_jwk_set=True, lifespan=3600)
    decode = lambda tok: jwt.decode(tok, consumer.get_signing_key_from_jwt(tok).key, algorithms=["ES256"],
                                    audience=PARTNER, issuer=b.issuer)
    assert decode(t1)["sub"]
    kid_1 = jwt.get_unverified_header(t1)["kid"]
    b.stop()
    # 2. sign with K2, still publish K1 (tokens already out keep verifying)
    b = start(ephemera_bin, tmp_path / "step2", mock_issuer, port, signing_key_file=k2, publish_key_files=[k1])
    t2 = b.exchange(mock_issuer.token()).json["access_token"]
    kid_2 = jwt.get_unverified_header(t2)["kid"]
    assert kid_2 != kid_1
    # the consumer never refetched: K2 was in the JWKS it cached at step 1
    assert decode(t2)["sub"] and decode(t1)["sub"]
    b.stop()
    # 3. retire K1: it leaves the JWKS
    b = start(ephemera_bin, tmp_path / "step3", mock_issuer, port, signing_key_file=k2)
    kids = [k["kid"] for k in b.get("/.well-known/jwks.json").json()["keys"]]
    assert kids == [kid_2]
    assert decode(b.exchange(mock_issuer.token()).json["access_token"])["sub"]
    b.stop()


def test_an_audit_sink_that_cannot_write_means_no_credential(ephemera_bin, tmp_path, mock_issuer):
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is needed to simulate a full disk")
    workdir = tmp_path / "full"
    workdir.mkdir()
    os.symlink("/dev/full", workdir / "audit.jsonl")  # every write fails with ENOSPC
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ephemera_bin, workdir, cfg)
    token = mock_issuer.token()
    r = b.exchange(token)
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "audit_unavailable", r
    assert "access_token" not in r.text and r.headers.get("Retry-After")
    # the assertion was spent before the audit failed: a retry with it is refused, never minted
    again = b.exchange(token)
    assert again.status in (400, 503) and "access_token" not in again.text, again
    b.stop()
    # the twin: the same broker config with a writable audit log issues credentials
    ok_dir = tmp_path / "ok"
    cfg = broker_config(ok_dir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ephemera_bin, ok_dir, cfg)
    assert b.exchange(mock_issuer.token()).status == 200
    b.stop()


def write_rsa_key(path: Path, bits: int) -> str:
    return write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def test_an_rsa_signing_key_signs_rs256_that_pyjwt_verifies(ephemera_bin, tmp_path, mock_issuer):
    from harness import free_port
    key = write_rsa_key(tmp_path / "rsa.pem", 2048)
    b = start(ephemera_bin, tmp_path / "rsa", mock_issuer, free_port(), signing_key_file=key)
    token = b.exchange(mock_issuer.token()).json["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    jwks = b.get("/.well-known/jwks.json").json()["keys"]
    assert [(k["kty"], k["alg"]) for k in jwks] == [("RSA", "RS256")]
    assert b.get("/.well-known/openid-configuration").json()["id_token_signing_alg_values_supported"] == ["RS256"]
    consumer = jwt.PyJWKClient(b.url + "/.well-known/jwks.json")
    claims = jwt.decode(token, consumer.get_signing_key_from_jwt(token).key, algorithms=["RS256"],
                        audience=PARTNER, issuer=b.issuer)
    assert claims["role"] == "deploy"
    # a verifier that expects ES256 (the default) refuses it: the header names what really signed
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, consumer.get_signing_key_from_jwt(token).key, algorithms=["ES256"], audience=PARTNER)
    b.stop()


def test_a_short_rsa_signing_key_is_refused_at_start(ephemera_bin, tmp_path, mock_issuer):
    import subprocess

    from harness import free_port, to_toml
    workdir = tmp_path / "short"
    workdir.mkdir()
    key = write_rsa_key(tmp_path / "rsa1024.pem", 1024)
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")], port=free_port(),
                        server={"signing_key_file": key})
    path = workdir / "ephemera.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run([str(ephemera_bin), "serve", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr  # a config error
    assert "rsa1024.pem" in r.stderr and "2048 bits or more" in r.stderr, r.stderr
