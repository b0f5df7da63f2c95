"""Synthetic attestation evidence for the end-to-end tests, made with `cryptography`, `cbor2` and
PyJWT only (independently of the broker's Rust code):

- AWS Nitro Enclaves attestation documents: a test chain whose root has the real root's subject
  (`CN=aws.nitro-enclaves, C=US, O=Amazon, OU=AWS`, P-384) -> regional -> zonal -> per-enclave
  leaf, and a COSE_Sign1 (protected header `{1: -35}`, empty unprotected header, ES384 with a raw
  r||s signature over the Sig_structure) around the CBOR payload AWS documents. This mirrors
  `attestation/tests/attestation/harness.rs` (`cabundle = [root, regional, zonal]`, the leaf's
  issuer last).
- X.509 proofs of possession: a CA, an intermediate and a leaf with a SPIFFE URI SAN; the proof is
  a compact JWS by the leaf key with `typ: ephemera-x509-pop+jwt` and the chain in `x5c`.
- EC2 instance identity documents: a self-signed RSA-2048 certificate standing in for AWS's
  regional certificate; the document as the metadata service prints it; the `signature` form
  (`{"document", "signature"}`, RSA PKCS#1 v1.5 SHA-256 over the exact document bytes) and the
  `rsa2048` form (PKCS#7 SignedData embedding the document, RSA-SHA256, with or without signed
  attributes).

Keys and certificates are made per test session (they are cheap) and written as PEM where the
broker's config needs a file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NITRO_TOKEN_TYPE = "urn:ephemera:token-type:nitro-attestation"
X509_POP_TOKEN_TYPE = "urn:ephemera:token-type:x509-pop"
EC2_IID_TOKEN_TYPE = "urn:ephemera:token-type:aws-ec2-iid"
POP_TYP = "ephemera-x509-pop+jwt"

# Protected header {1: -35} (alg: ES384), exactly as AWS encodes it.
ES384_PROTECTED = bytes([0xA1, 0x01, 0x38, 0x22])
PCR_LEN = 48

# PCR values of the synthetic "production" enclave: PCR0..2 non-zero (not debug mode), PCR8 the
# signing certificate's measurement, the rest zero as on a real enclave.
GOOD_PCRS = {0: bytes([0x11]) * PCR_LEN, 1: bytes([0x22]) * PCR_LEN, 2: bytes([0x33]) * PCR_LEN,
             8: bytes([0x88]) * PCR_LEN}


def pcr_hex(value: bytes) -> str:
    return value.hex()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(t), tz=dt.timezone.utc)


# ------------------------------------------------------------------------------------------------
# certificates


@dataclass
class Cert:
    """A certificate and its private key, able to issue more."""

    cert: x509.Certificate
    key: Any

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_pem(self, path: Path) -> Path:
        Path(path).write_bytes(self.pem)
        return Path(path)

    @property
    def sha256_hex(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def _name(cn: str, extra: list[tuple] | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(oid, value) for oid, value in (extra or [])]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_cert(subject: x509.Name, key, *, issuer: Cert | None = None, ca: bool,
              path_length: int | None = None, not_before: float | None = None,
              not_after: float | None = None, key_usage: str = "default",
              sans: list[x509.GeneralName] | None = None, eku: list | None = None,
              serial: int | None = None, hash_alg=None) -> Cert:
    """One X.509 v3 certificate. `issuer=None` makes it self-signed. `key_usage`: "default"
    (keyCertSign+cRLSign for a CA, digitalSignature for a leaf), "none", or "keyEncipherment"."""
    t = time.time()
    not_before = t - 86_400 if not_before is None else not_before
    not_after = t + 86_400 if not_after is None else not_after
    signer_key = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    if hash_alg is None:
        if isinstance(signer_key, ec.EllipticCurvePrivateKey) and signer_key.curve.key_size == 384:
            hash_alg = hashes.SHA384()
        else:
            hash_alg = hashes.SHA256()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    if key_usage != "none":
        ku = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                  encipher_only=False, decipher_only=False)
        if key_usage == "default":
            if ca:
                ku.update(key_cert_sign=True, crl_sign=True, digital_signature=True)
            else:
                ku.update(digital_signature=True)
        elif key_usage == "keyEncipherment":
            ku.update(key_encipherment=True)
        b = b.add_extension(x509.KeyUsage(**ku), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return Cert(b.sign(signer_key, hash_alg), key)


# ------------------------------------------------------------------------------------------------
# AWS Nitro Enclaves


def _aws_like(cn: str) -> x509.Name:
    return _name(cn, [(NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Amazon"),
                      (NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS")])


@dataclass
class NitroChain:
    """A stand-in for AWS's chain: root (the real root's exact subject) -> regional -> zonal ->
    per-enclave leaf, all P-384."""

    root: Cert
    regional: Cert
    zonal: Cert
    leaf: Cert

    @classmethod
    def make(cls, *, root: Cert | None = None, leaf_not_before: float | None = None,
             leaf_not_after: float | None = None) -> "NitroChain":
        """A new chain; under `root` (the configured test root) if given, else under a new root."""
        root = root or make_cert(_aws_like("aws.nitro-enclaves"), ec.generate_private_key(ec.SECP384R1()), ca=True)
        regional = make_cert(_aws_like("us-east-1.aws.nitro-enclaves"), ec.generate_private_key(ec.SECP384R1()),
                             issuer=root, ca=True)
        zonal = make_cert(_aws_like("use1-az4.aws.nitro-enclaves"), ec.generate_private_key(ec.SECP384R1()),
                          issuer=regional, ca=True)
        t = time.time()
        leaf = make_cert(_aws_like("i-0123456789abcdef0-enc0123456789abcdef.us-east-1.aws"),
                         ec.generate_private_key(ec.SECP384R1()), issuer=zonal, ca=False,
                         not_before=t - 3600 if leaf_not_before is None else leaf_not_before,
                         not_after=t + 3 * 3600 if leaf_not_after is None else leaf_not_after)
        return cls(root, regional, zonal, leaf)

    @property
    def cabundle(self) -> list[bytes]:
        """AWS's order: the root first, the leaf's issuer last."""
        return [self.root.der, self.regional.der, self.zonal.der]


def nitro_payload(chain: NitroChain, *, nonce: bytes | None, pcrs: dict[int, bytes] | None = None,
                  timestamp_ms: int | None = None, public_key: bytes | None = None,
                  user_data: bytes | None = None,
                  module_id: str = "i-0123456789abcdef0-enc0123456789abcdef") -> dict:
    """The payload map in AWS's order. PCRs 0..15 are present; those not given are zero."""
    given = GOOD_PCRS if pcrs is None else pcrs
    all_pcrs = {i: given.get(i, bytes(PCR_LEN)) for i in range(16)}
    return {
        "module_id": module_id,
        "digest": "SHA384",
        "timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        "pcrs": all_pcrs,
        "certificate": chain.leaf.der,
        "cabundle": chain.cabundle,
        "public_key": public_key,
        "user_data": user_data,
        "nonce": nonce,
    }


def cose_sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, *, protected: bytes = ES384_PROTECTED,
               tagged: bool = False) -> bytes:
    """COSE_Sign1 [protected, {}, payload, signature], ES384 with a raw r||s signature over
    Sig_structure ["Signature1", protected, b"", payload] (RFC 9052 §4.4)."""
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    size = (key.curve.key_size + 7) // 8
    sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    arr = [protected, {}, payload, sig]
    return cbor2.dumps(cbor2.CBORTag(18, arr) if tagged else arr)


def nitro_document(chain: NitroChain, *, tagged: bool = False, sign_with=None, **payload_fields) -> bytes:
    """A signed attestation document (raw COSE_Sign1 bytes)."""
    payload = cbor2.dumps(nitro_payload(chain, **payload_fields))
    return cose_sign1(payload, sign_with or chain.leaf.key, tagged=tagged)


def nitro_token(doc: bytes) -> str:
    """The `subject_token` form: standard base64 of the COSE_Sign1 bytes."""
    return b64(doc)


def enclave_public_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A key an enclave would generate, and its SubjectPublicKeyInfo DER (the `public_key` field)."""
    k = ec.generate_private_key(ec.SECP256R1())
    spki = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return k, spki


def jwk_thumbprint(public_key) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an EC or RSA public key, computed with PyJWT's
    JWK export: what `cnf.jkt` must be."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    else:
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


# ------------------------------------------------------------------------------------------------
# X.509 proof of possession


SPIFFE_ID = "spiffe://example.org/ns/prod/sa/payments"


@dataclass
class PopPki:
    """A private CA -> intermediate -> leaf (P-256) with a SPIFFE URI SAN."""

    ca: Cert
    intermediate: Cert
    leaf: Cert

    @classmethod
    def make(cls, *, spiffe_id: str = SPIFFE_ID, leaf_not_after: float | None = None,
             leaf_not_before: float | None = None, ca: Cert | None = None, serial: int | None = None,
             key_usage: str = "default", ca_name: str = "Example Workload Root CA",
             intermediate_name: str = "Example Workload Issuing CA",
             intermediate: Cert | None = None) -> "PopPki":
        """A new leaf; under `intermediate` (which `ca` issued) when given, else under a new one."""
        ca = ca or make_cert(_name(ca_name, [(NameOID.ORGANIZATION_NAME, "Example")]),
                             ec.generate_private_key(ec.SECP256R1()), ca=True, path_length=1)
        inter = intermediate or make_cert(_name(intermediate_name, [(NameOID.ORGANIZATION_NAME, "Example")]),
                                          ec.generate_private_key(ec.SECP256R1()), issuer=ca, ca=True,
                                          path_length=0)
        t = time.time()
        leaf = make_cert(
            _name("payments", [(NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Example"),
                               (NameOID.ORGANIZATIONAL_UNIT_NAME, "prod")]),
            ec.generate_private_key(ec.SECP256R1()), issuer=inter, ca=False,
            not_before=t - 3600 if leaf_not_before is None else leaf_not_before,
            not_after=t + 3600 if leaf_not_after is None else leaf_not_after,
            sans=[x509.UniformResourceIdentifier(spiffe_id), x509.DNSName("payments.prod.example.org")],
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH], serial=serial, key_usage=key_usage,
        )
        return cls(ca, inter, leaf)

    @property
    def x5c(self) -> list[str]:
        """Leaf first, then the intermediate; standard base64 DER (RFC 7515 §4.1.6)."""
        return [b64(self.leaf.der), b64(self.intermediate.der)]

    @property
    def leaf_x5t_s256(self) -> str:
        return b64url(hashlib.sha256(self.leaf.der).digest())


def pop_proof(pki: PopPki, *, nonce: str, audience: str, iat: int | None = None, key=None,
              x5c: list[str] | None = None, typ: str = POP_TYP, extra_claims: dict | None = None) -> str:
    """The compact JWS: header {alg, typ, x5c}, payload {nonce, aud, iat}, signed by the leaf key
    (or `key`, to play an attacker holding only the certificate)."""
    claims = {"nonce": nonce, "aud": audience, "iat": int(time.time()) if iat is None else iat}
    claims.update(extra_claims or {})
    signer = key if key is not None else pki.leaf.key
    alg = "ES256" if isinstance(signer, ec.EllipticCurvePrivateKey) else "RS256"
    return jwt.encode(claims, signer, algorithm=alg, headers={"typ": typ, "x5c": pki.x5c if x5c is None else x5c})


# ------------------------------------------------------------------------------------------------
# EC2 instance identity documents


ACCOUNT = "123456789012"


def aws_region_cert(not_after: float | None = None) -> Cert:
    """A self-signed RSA-2048 certificate standing in for AWS's published certificate."""
    t = time.time()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington State"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services LLC"),
    ])
    return make_cert(subject, rsa.generate_private_key(public_exponent=65537, key_size=2048), ca=True,
                     not_before=t - 365 * 86_400, not_after=not_after or t + 365 * 86_400)


def iid_document(*, account_id: str = ACCOUNT, region: str = "us-east-1",
                 instance_id: str | None = None, pending_time: str = "2026-01-15T13:00:00Z") -> str:
    """The document as the instance metadata service prints it (pretty JSON, ` : `)."""
    instance_id = instance_id or "i-" + os.urandom(8).hex()[:17]
    return (
        "{\n"
        f'  "accountId" : "{account_id}",\n'
        '  "architecture" : "x86_64",\n'
        f'  "availabilityZone" : "{region}a",\n'
        '  "billingProducts" : null,\n'
        '  "devpayProductCodes" : null,\n'
        '  "marketplaceProductCodes" : null,\n'
        '  "imageId" : "ami-0abcdef1234567890",\n'
        f'  "instanceId" : "{instance_id}",\n'
        '  "instanceType" : "t3.micro",\n'
        '  "kernelId" : null,\n'
        f'  "pendingTime" : "{pending_time}",\n'
        '  "privateIp" : "10.0.1.23",\n'
        '  "ramdiskId" : null,\n'
        f'  "region" : "{region}",\n'
        '  "version" : "2017-09-30"\n'
        "}"
    )


def iid_signature_form(cert: Cert, document: str, *, signed_document: str | None = None) -> str:
    """`{"document": ..., "signature": ...}`: RSA PKCS#1 v1.5 SHA-256 over the exact bytes of
    `signed_document` (normally the document itself)."""
    sig = cert.key.sign((signed_document or document).encode(), padding.PKCS1v15(), hashes.SHA256())
    return json.dumps({"document": document, "signature": b64(sig)})


def iid_pkcs7(cert: Cert, document: str, *, signed_attributes: bool = True, line_breaks: bool = False) -> str:
    """The `rsa2048` form: base64 PKCS#7 SignedData embedding the document, RSA-SHA256."""
    options = [] if signed_attributes else [pkcs7.PKCS7Options.NoAttributes]
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(document.encode())
        .add_signer(cert.cert, cert.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    text = b64(der)
    if line_breaks:  # as the metadata service serves it: 64 characters a line
        text = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return text


def make_crl(issuer: Cert, serials: list[int], *, pem: bool = False) -> bytes:
    """A CRL issued by `issuer` listing `serials` (DER, or PEM)."""
    t = time.time()
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(_utc(t - 3600))
        .next_update(_utc(t + 86_400))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(_utc(t - 60)).build())
    crl = b.sign(issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)
