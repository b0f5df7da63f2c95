"""A partner API's side: verify a broker JWT with the broker's published JWKS (PyJWT).

    pip install 'pyjwt[crypto]'
    python examples/partner_verify.py http://127.0.0.1:8080 https://partner.example "$ACCESS_TOKEN"

Check `iss` and `aud` explicitly, require `exp`, and only accept ES256: the broker signs nothing else.
"""

import sys

import jwt


def verify(broker: str, audience: str, token: str) -> dict:
    keys = jwt.PyJWKClient(f"{broker.rstrip('/')}/.well-known/jwks.json", cache_keys=True)
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        issuer=broker,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )


if __name__ == "__main__":
    claims = verify(sys.argv[1], sys.argv[2], sys.argv[3])
    print(f"ok: {claims['sub']} (role {claims['role']}, task {claims['task']}) until {claims['exp']}")
