"""A workload with a certificate from your CA proves it holds the private key *now* and gets a
broker JWT bound to that certificate.

    pip install 'pyjwt[crypto]'
    python examples/x509_pop_client.py https://broker.example.com payments-api chain.pem key.pem

`chain.pem`: the leaf certificate first, then its intermediates (not the root); `key.pem`: the
leaf's private key (PKCS#8 or traditional PEM; EC P-256/P-384, RSA >= 2048 or Ed25519).

1. `POST /v1/nonce` (bound to the role): 32 random bytes, single use, 60 s.
2. A compact JWS signed with the leaf's key:
       header  {"alg": "ES256", "typ": "ephemera-x509-pop+jwt", "x5c": [leaf, intermediates...]}
       payload {"nonce": "<the nonce, as the broker sent it>", "aud": "<broker issuer>", "iat": now}
   The `typ` is the broker's own: such a proof can never pass for any other token, and no other
   signature (an ID token, SPIRE's x509pop response, a bare signature over the nonce) passes for it.
3. `POST /v1/token` with the JWS as the subject token. The broker checks the chain to its trust
   anchors now (validity, CA flags, path length, key usage, CRLs and the serial denylist), the
   signature with the leaf's key, `aud`, `iat` (60 s) and the nonce, then the role's conditions
   (spiffe_id, subject_cn...), and answers a JWT with `cnf["x5t#S256"]` = SHA-256 of the leaf:
   use it over mutual TLS with that certificate (RFC 8705) and a partner can tell it is yours.

Configuration for the broker side: examples/x509-pop.toml.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

X509_POP_TOKEN_TYPE = "urn:ephemera:token-type:x509-pop"
POP_TYP = "ephemera-x509-pop+jwt"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


def post_form(url: str, fields: dict) -> dict:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # RFC 6749 error JSON: error, error_description
        body = json.load(e)
        raise SystemExit(f"{url}: {e.code} {body.get('error')}: {body.get('error_description')}") from None


def broker_issuer(broker: str) -> str:
    """The `aud` a proof must carry: the broker's issuer, from its discovery document."""
    with urllib.request.urlopen(f"{broker}/.well-known/openid-configuration", timeout=30) as r:
        return json.load(r)["issuer"]


def alg_for(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "ES256", 384: "ES384"}[key.curve.key_size]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise SystemExit("unsupported key type")


def proof(chain: list[x509.Certificate], key, nonce: str, audience: str) -> str:
    """The proof of possession: a compact JWS of the broker's own `typ`, chain in `x5c`."""
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    claims = {"nonce": nonce, "aud": audience, "iat": int(time.time())}
    return jwt.encode(claims, key, algorithm=alg_for(key), headers={"typ": POP_TYP, "x5c": x5c})


def prove_and_exchange(broker: str, role: str, chain: list[x509.Certificate], key,
                       audience: str | None = None) -> dict:
    broker = broker.rstrip("/")
    nonce = post_form(f"{broker}/v1/nonce", {"audience": role})["nonce"]
    jws = proof(chain, key, nonce, audience or broker_issuer(broker))
    return post_form(f"{broker}/v1/token", {
        "grant_type": GRANT,
        "subject_token_type": X509_POP_TOKEN_TYPE,
        "subject_token": jws,
        "audience": role,
    })


def load(chain_pem: str, key_pem: str):
    with open(chain_pem, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    with open(key_pem, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return chain, key


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    chain, key = load(sys.argv[3], sys.argv[4])
    response = prove_and_exchange(sys.argv[1], sys.argv[2], chain, key)
    claims = jwt.decode(response["access_token"], options={"verify_signature": False})
    print(f"ok: {claims['sub']} role {claims['role']} for {response['expires_in']} s, "
          f"bound to x5t#S256 {claims['cnf']['x5t#S256']}")
