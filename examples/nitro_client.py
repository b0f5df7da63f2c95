"""Inside an AWS Nitro Enclave: attest to the broker and get a broker JWT bound to a key that
never leaves the enclave.

    pip install cryptography
    python examples/nitro_client.py https://broker.example.com partner-api

1. `POST /v1/nonce` (bound to the role): 32 random bytes, single use, 60 s.
2. A fresh P-256 key pair, made inside the enclave.
3. The attestation document from the Nitro Security Module (NSM), carrying the *decoded* nonce
   bytes, the key's SubjectPublicKeyInfo as `public_key`, and optionally `user_data`.
4. `POST /v1/token` with the document (base64) as the subject token. The broker checks it
   (signature, chain to the pinned AWS root at the document's time and now, freshness, the nonce,
   the role's PCRs, debug mode) and answers a broker JWT whose `cnf.jkt` is the RFC 7638
   thumbprint of the key from step 2: present it together with a proof made with that key
   (for example a DPoP proof, RFC 9449) and a partner can refuse the JWT anywhere else.

An enclave has no network of its own: run this behind the vsock proxy of your parent instance
(for example `vsock-proxy` to the broker's host), or set BROKER to a URL the proxy serves.
Configuration for the broker side: examples/nitro-enclave.toml.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

NITRO_TOKEN_TYPE = "urn:ephemera:token-type:nitro-attestation"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def post_form(url: str, fields: dict) -> dict:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # RFC 6749 error JSON: error, error_description
        body = json.load(e)
        raise SystemExit(f"{url}: {e.code} {body.get('error')}: {body.get('error_description')}") from None


def get_attestation_document(nonce: bytes, public_key: bytes, user_data: bytes | None = None) -> bytes:
    """STUB: ask the NSM for an attestation document and return its raw COSE_Sign1 bytes.

    In a real enclave this is one call to the Nitro Security Module through /dev/nsm, e.g. with
    AWS's `aws-nitro-enclaves-nsm-api` (Rust: `nsm_process_request(fd, Request::Attestation {
    nonce, public_key, user_data })`, answering `Response::Attestation { document }`), or its C
    binding `nsm_get_attestation_doc()` called from Python through ctypes. Pass `nonce` as the raw
    32 bytes (not the base64url text), and `public_key` as SubjectPublicKeyInfo DER.

    Outside an enclave there is no NSM, and nothing can produce a document AWS's root certifies:
    the end-to-end tests replace this function with one that signs under a test root.
    """
    raise NotImplementedError("no Nitro Security Module here: run inside an enclave (see the docstring)")


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint of a P-256 key: what the broker puts in `cnf.jkt`."""
    numbers = public_key.public_numbers()

    def coordinate(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": coordinate(numbers.x), "y": coordinate(numbers.y)},
                           separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def attest_and_exchange(broker: str, role: str, user_data: bytes | None = None):
    """The whole flow. Returns (token response, the enclave's private key)."""
    broker = broker.rstrip("/")
    # 1. a broker nonce, bound to the role we will ask for
    nonce = post_form(f"{broker}/v1/nonce", {"audience": role})["nonce"]
    # 2. a key that lives and dies in the enclave
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # 3. the NSM signs the nonce, the key and user_data into a document
    document = get_attestation_document(b64url_decode(nonce), spki, user_data)
    # 4. the exchange
    response = post_form(f"{broker}/v1/token", {
        "grant_type": GRANT,
        "subject_token_type": NITRO_TOKEN_TYPE,
        "subject_token": base64.b64encode(document).decode(),
        "audience": role,
    })
    return response, key


def unverified_claims(jwt_text: str) -> dict:
    """The broker JWT's claims, for the client's own information (partners verify it, see
    examples/partner_verify.py)."""
    return json.loads(b64url_decode(jwt_text.split(".")[1]))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    response, key = attest_and_exchange(sys.argv[1], sys.argv[2])
    claims = unverified_claims(response["access_token"])
    assert claims.get("cnf", {}).get("jkt") == jwk_thumbprint(key.public_key()), "token not bound to our key"
    print(f"ok: {claims['sub']} role {claims['role']} for {response['expires_in']} s, bound to jkt {claims['cnf']['jkt']}")
