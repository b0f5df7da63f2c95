"""Rotating the broker's signing key under live consumers (ATTACKS.md 59), and an audit sink that
fails (ATTACKS.md 56): no credential without its durable audit record."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import PARTNER, Broker, broker_config, provider, require_peer, role


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
    # A consumer that never refetches (README: "tested with a PyJWT consumer that never
    # refetches"): its cache outlives the test and its unknown-kid refetch is held off for an
    # hour, so a kid missing from the set it fetched at step 1 fails the decode instead of
    # sending it back to the broker. Its fetches are counted as well.
    consumer = jwt.PyJWKClient(b.url + "/.well-known/jwks.json", cache_jwk_set=True, lifespan=3600,
                               cooldown_duration=3600)
    fetches = []
    fetch_data = consumer.fetch_data

    def counted_fetch():
        fetches.append(1)
        return fetch_data()

    consumer.fetch_data = counted_fetch
    decode = lambda tok: jwt.decode(tok, consumer.get_signing_key_from_jwt(tok).key, algorithms=["ES256"],
                                    audience=PARTNER, issuer=b.issuer)
    assert decode(t1)["sub"]
    kid_1 = jwt.get_unverified_header(t1)["kid"]
    assert len(fetches) == 1
    step1_kids = {k.key_id for k in consumer.get_jwk_set().keys}
    assert len(step1_kids) == 2 and kid_1 in step1_kids, step1_kids  # K1 signing, K2 published ahead
    b.stop()
    # 2. sign with K2, still publish K1 (tokens already out keep verifying)
    b = start(ephemera_bin, tmp_path / "step2", mock_issuer, port, signing_key_file=k2, publish_key_files=[k1])
    t2 = b.exchange(mock_issuer.token()).json["access_token"]
    kid_2 = jwt.get_unverified_header(t2)["kid"]
    assert kid_2 != kid_1
    assert step1_kids == {kid_1, kid_2}  # K2 was in the JWKS the consumer cached at step 1
    # the consumer never refetched: K2 came from its step-1 cache
    assert decode(t2)["sub"] and decode(t1)["sub"]
    assert len(fetches) == 1, f"the consumer refetched the JWKS {len(fetches) - 1} times"
    b.stop()
    # 3. retire K1: it leaves the JWKS
    b = start(ephemera_bin, tmp_path / "step3", mock_issuer, port, signing_key_file=k2)
    kids = [k["kid"] for k in b.get("/.well-known/jwks.json").json()["keys"]]
    assert kids == [kid_2]
    assert decode(b.exchange(mock_issuer.token()).json["access_token"])["sub"]
    assert len(fetches) == 1
    b.stop()


def test_an_audit_sink_that_cannot_write_means_no_credential(ephemera_bin, tmp_path, mock_issuer):
    # a missing /dev/full skips locally and fails under CI=true: this is the only test of a sink
    # that fails while the broker runs
    require_peer("/dev/full", Path("/dev/full").exists(), "a Linux character device that fails every write")
    workdir = tmp_path / "full"
    workdir.mkdir()
    os.symlink("/dev/full", workdir / "audit.jsonl")  # every write fails with ENOSPC
    cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
    b = Broker(ephemera_bin, workdir, cfg)
    token = mock_issuer.token()
    r = b.exchange(token)
    assert r.status == 503 and r.error == "temporarily_unavailable" and r.reason == "audit_unavailable", r
    assert "access_token" not in r.text and r.headers.get("Retry-After")
    # the assertion was spent before the audit failed: a retry with it is refused as a replay (a
    # broker that had not spent it would answer 503 audit_unavailable again). The deny answer goes
    # out although its own record cannot be written either (a deny record is only logged on failure).
    again = b.exchange(token)
    assert again.status == 400 and again.reason == "token_replayed", again
    assert "access_token" not in again.text
    # and a fresh assertion still meets the broken sink, not a refusal of its own
    fresh = b.exchange(mock_issuer.token())
    assert fresh.status == 503 and fresh.reason == "audit_unavailable", fresh
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
