"""Attestation through the real binary over HTTP (ATTACKS 31-41, issue 6): AWS Nitro Enclaves
documents, X.509 proofs of possession and EC2 instance identity documents that this test builds
itself (attest_util.py: `cryptography`, `cbor2`, PyJWT), the broker nonce flow (`POST /v1/nonce`),
single use, key binding (`cnf`) checked with PyJWT against the broker's JWKS, and the audit log.
Every refusal has its positive twin, and every refusal's slug is asserted exactly.

Not here: a broker nonce that expired. Nonces live 60 s on the broker's system clock, and this
suite does not sleep for a minute; the expiry is covered through `Broker::exchange_request` with the
injected clock in `tests/broker/attestation_exchange.rs` (`an_expired_broker_nonce_is_refused`) and by the
state store's unit test (`src/state/memory.rs`). The real corpus documents are checked at their own
time in `tests/broker/attestation_exchange.rs` too.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib.util
import json
import os
import time
import types

import cbor2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest_util import (
    ACCOUNT,
    EC2_IID_TOKEN_TYPE,
    GOOD_PCRS,
    NITRO_TOKEN_TYPE,
    PCR_LEN,
    SPIFFE_ID,
    X509_POP_TOKEN_TYPE,
    NitroChain,
    PopPki,
    aws_region_cert,
    b64,
    b64url,
    b64url_decode,
    cose_sign1,
    enclave_public_key,
    iid_document,
    iid_pkcs7,
    iid_signature_form,
    jwk_thumbprint,
    make_crl,
    nitro_document,
    nitro_payload,
    nitro_token,
    pop_proof,
)
from harness import ID_TOKEN, PARTNER, REPO, LocalKey, Resp, good_claims, run_cli, to_toml, verify_broker_jwt


def assert_reject(resp, reason, error="invalid_request", status=400):
    assert resp.status == status, resp
    assert resp.error == error, resp
    assert resp.reason == reason, resp
    assert resp.decision_id, resp


def assert_ok(resp):
    assert resp.status == 200, resp
    assert "refresh_token" not in resp.json
    return resp.json


def get_nonce(broker, audience: str | None = None) -> str:
    r = broker.http.post(broker.url + "/v1/nonce", data={"audience": audience} if audience else {}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get("Cache-Control") == "no-store"
    body = r.json()
    assert body["expires_in"] == 60
    assert len(b64url_decode(body["nonce"])) == 32, body
    return body["nonce"]


# ------------------------------------------------------------------------------------------------
# material, made once per module


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    d = tmp_path_factory.mktemp("attestation")
    m = types.SimpleNamespace()
    m.dir = d
    m.chain = NitroChain.make()
    m.chain.root.write_pem(d / "nitro-root.pem")
    m.foreign_chain = NitroChain.make()  # same subjects, other keys: never configured
    m.pki = PopPki.make()
    m.pki.ca.write_pem(d / "pop-ca.pem")
    m.aws = aws_region_cert()
    m.aws.write_pem(d / "aws-rsa.pem")
    m.other_aws = aws_region_cert()
    return m


PCR0 = GOOD_PCRS[0].hex()
PCR8 = GOOD_PCRS[8].hex()
# A debug enclave: PCR0..2 all zero; PCR4 (the parent instance) is still measured.
DEBUG_PCRS = {3: bytes([0x44]) * PCR_LEN, 4: bytes([0x55]) * PCR_LEN}
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
USER_DATA_FOR_BOUND = hashlib.sha256(b"ephemera:role=partner-bound").digest()


def jwt_role(name, provider, conditions, max_ttl="5m", **extra):
    r = {"name": name, "provider": provider, "max_ttl": max_ttl, "conditions": conditions}
    r.update(extra)
    r["credential"] = {"kind": "jwt", "audience": PARTNER}
    return r


@pytest.fixture
def nitro_broker(broker_factory, material):
    root = str(material.dir / "nitro-root.pem")
    providers = [
        {"name": "enclaves", "profile": "nitro", "root_cert_file": root,
         "root_sha256": material.chain.root.sha256_hex},
        {"name": "enclaves-30s", "profile": "nitro", "root_cert_file": root, "max_age": "30s"},
        {"name": "enclaves-nonceless", "profile": "nitro", "root_cert_file": root, "require_nonce": False},
        {"name": "enclaves-leeway", "profile": "nitro", "root_cert_file": root, "leeway": "60s"},
        {"name": "pki", "profile": "x509-pop", "trust_anchor_files": [str(material.dir / "pop-ca.pem")]},
    ]
    roles = [
        jwt_role("partner-api", "enclaves", {"pcr0": PCR0, "pcr8": PCR8}),
        jwt_role("other-enclave", "enclaves", {"pcr0": "ab" * PCR_LEN}),
        jwt_role("partner-debug", "enclaves", {"pcr4": DEBUG_PCRS[4].hex()}, allow_debug=True),
        jwt_role("pcr8-only", "enclaves", {"pcr8": PCR8}),
        jwt_role("partner-fresh", "enclaves-30s", {"pcr0": PCR0}),
        jwt_role("partner-nonceless", "enclaves-nonceless", {"pcr0": PCR0}),
        jwt_role("partner-leeway", "enclaves-leeway", {"pcr0": PCR0}),
        # ATTACKS 36 with what the broker has: a role that pins the request the document commits to
        jwt_role("partner-bound", "enclaves", {"pcr0": PCR0, "user_data": b64url(USER_DATA_FOR_BOUND)}),
        jwt_role("workload", "pki", {"spiffe_id": SPIFFE_ID}),
    ]
    return broker_factory(providers, roles)


def exchange_nitro(broker, doc: bytes, role="partner-api"):
    return broker.exchange(nitro_token(doc), role, token_type=NITRO_TOKEN_TYPE)


# ------------------------------------------------------------------------------------------------
# Nitro: the nonce flow, key binding and single use


def test_nitro_nonce_flow_mints_a_broker_jwt_bound_to_the_enclave_key(nitro_broker, material):
    nonce = get_nonce(nitro_broker, audience="partner-api")
    enclave_key, spki = enclave_public_key()
    doc = nitro_document(material.chain, nonce=b64url_decode(nonce), public_key=spki, user_data=b"req-1")
    body = assert_ok(exchange_nitro(nitro_broker, doc))
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert 0 < body["expires_in"] <= 300
    claims = verify_broker_jwt(nitro_broker, body["access_token"])
    assert claims["sub"] == f"nitro:{MODULE_ID}"
    assert claims["role"] == "partner-api"
    assert claims["provider"] == "enclaves"
    assert claims["src_iss"].startswith("urn:ephemera:nitro:")
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    # RFC 7800: bound to the key the enclave put in the document, by its RFC 7638 thumbprint
    # (computed here independently from PyJWT's JWK export).
    assert claims["cnf"] == {"jkt": jwk_thumbprint(enclave_key.public_key())}

    allow = [r for r in nitro_broker.audit() if r["decision"] == "allow"]
    assert len(allow) == 1 and allow[0]["role"] == "partner-api" and allow[0]["provider"] == "enclaves"
    assert allow[0]["credential"]["jti"] == claims["jti"]
    assert not allow[0].get("replayable", False)


def test_attestation_audit_record_names_the_subject(nitro_broker, material):
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    claims = verify_broker_jwt(nitro_broker, assert_ok(exchange_nitro(nitro_broker, doc))["access_token"])
    allow = [r for r in nitro_broker.audit() if r["decision"] == "allow"]
    assert allow[0].get("subject") == claims["sub"], allow[0]
    assert allow[0].get("issuer") == claims["src_iss"], allow[0]


def test_nitro_without_public_key_has_no_cnf(nitro_broker, material):
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    claims = verify_broker_jwt(nitro_broker, assert_ok(exchange_nitro(nitro_broker, doc))["access_token"])
    assert "cnf" not in claims


def test_nitro_tagged_and_line_broken_documents_are_accepted(nitro_broker, material):
    tagged = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), tagged=True)
    assert tagged[0] == 0xD2
    assert_ok(exchange_nitro(nitro_broker, tagged))
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    text = b64(doc)
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    assert_ok(nitro_broker.exchange(wrapped, "partner-api", token_type=NITRO_TOKEN_TYPE))


def test_nitro_same_document_twice_is_reported_as_a_replay(nitro_broker, material):
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    assert_ok(exchange_nitro(nitro_broker, doc))
    assert_reject(exchange_nitro(nitro_broker, doc), "token_replayed")


def test_nitro_single_use_without_nonce_is_by_document(nitro_broker, material):
    # A provider that does not require a nonce still refuses the same document twice (single use
    # by the hash of the signed structure); a new document of the same enclave is fine.
    doc = nitro_document(material.chain, nonce=None)
    assert_ok(exchange_nitro(nitro_broker, doc, "partner-nonceless"))
    assert_reject(exchange_nitro(nitro_broker, doc, "partner-nonceless"), "token_replayed")
    tagged = bytes([0xD2]) + doc  # the same signed structure, tagged: still the same document
    assert_reject(exchange_nitro(nitro_broker, tagged, "partner-nonceless"), "token_replayed")
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=None), "partner-nonceless"))


def test_nitro_new_document_reusing_a_consumed_nonce_is_refused(nitro_broker, material):
    nonce = b64url_decode(get_nonce(nitro_broker))
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=nonce)))
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=nonce)), "nonce_invalid")
    # twin: the same new document shape with a fresh nonce
    fresh = b64url_decode(get_nonce(nitro_broker))
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=fresh)))


def test_nitro_nonce_never_issued_is_refused(nitro_broker, material):
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=os.urandom(32))),
                  "nonce_invalid")
    assert_ok(exchange_nitro(nitro_broker,
                             nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))))


def test_nitro_nonce_must_be_the_decoded_bytes(nitro_broker, material):
    # The document carries the 32 decoded bytes, not the base64url text the broker sent.
    nonce = get_nonce(nitro_broker)
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=nonce.encode())),
                  "nonce_invalid")
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))))


def test_nitro_document_without_nonce_is_refused_where_required(nitro_broker, material):
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=None)), "nonce_invalid")
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b"")), "nonce_invalid")
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))))


def test_nitro_nonce_bound_to_another_role_is_refused(nitro_broker, material):
    bound = get_nonce(nitro_broker, audience="pcr8-only")
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(bound))),
                  "nonce_invalid")
    # The refusal took the nonce: it is single use even when misdirected.
    assert_reject(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(bound)),
                                 "pcr8-only"), "nonce_invalid")
    # twins: bound to the role that is asked for, and unbound
    own = get_nonce(nitro_broker, audience="partner-api")
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(own))))
    own8 = get_nonce(nitro_broker, audience="pcr8-only")
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(own8)), "pcr8-only"))


def _nonce_refusal(r, status, error, reason):
    resp = Resp(r.status_code, r.headers, r.json(), r.text)
    assert resp.status == status and resp.error == error and resp.reason == reason, resp
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)


def test_nonce_endpoint_rules(nitro_broker):
    r = nitro_broker.http.post(nitro_broker.url + "/v1/nonce", data={"audience": "no-such-role"}, timeout=30)
    _nonce_refusal(r, 400, "invalid_target", "unknown_role")
    r = nitro_broker.http.get(nitro_broker.url + "/v1/nonce", timeout=30)
    _nonce_refusal(r, 405, "invalid_request", "method_not_allowed")
    assert r.headers.get("Allow") == "POST"
    r = nitro_broker.http.post(nitro_broker.url + "/v1/nonce", data="audience=partner-api&audience=pcr8-only",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    _nonce_refusal(r, 400, "invalid_request", "request_invalid")
    assert "audience" in r.json()["error_description"]
    # twins: one known audience, and none (get_nonce asserts the 200 and the nonce's form)
    get_nonce(nitro_broker, "pcr8-only")
    assert len({get_nonce(nitro_broker) for _ in range(20)}) == 20


def test_nitro_concurrent_presentations_of_one_document_yield_one_credential(nitro_broker, material):
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    with cf.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: exchange_nitro(nitro_broker, doc), range(20)))
    assert sum(a.status == 200 for a in answers) == 1, answers
    assert all(a.reason in ("nonce_invalid", "token_replayed") for a in answers if a.status != 200), answers
    # and without a nonce, single use by the document alone
    doc = nitro_document(material.chain, nonce=None)
    with cf.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: exchange_nitro(nitro_broker, doc, "partner-nonceless"), range(20)))
    assert sum(a.status == 200 for a in answers) == 1, answers
    assert all(a.reason == "token_replayed" for a in answers if a.status != 200), answers


def test_nitro_user_data_pins_the_request(nitro_broker, material):
    # A document made for another request (its user_data commits to another role) is denied.
    other = hashlib.sha256(b"ephemera:role=partner-api").digest()
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), user_data=other)
    r = exchange_nitro(nitro_broker, doc, "partner-bound")
    assert_reject(r, "policy_denied", error="invalid_target")
    assert "condition user_data" in r.description
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))  # none at all
    assert_reject(exchange_nitro(nitro_broker, doc, "partner-bound"), "policy_denied", error="invalid_target")
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), user_data=USER_DATA_FOR_BOUND)
    assert_ok(exchange_nitro(nitro_broker, doc, "partner-bound"))


# ------------------------------------------------------------------------------------------------
# Nitro: freshness, debug mode, PCR policy, roots, token types


def test_nitro_document_older_than_max_age_is_stale(nitro_broker, material):
    # Margins that load cannot flip: a minute old against a 30 s max_age only gets older, and the
    # fresh twin has 30 s to reach the broker.
    old = int((time.time() - 60) * 1000)
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=old)
    assert_reject(exchange_nitro(nitro_broker, doc, "partner-fresh"), "stale_attestation")
    # twin: the same provider, a document made now
    fresh = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    assert_ok(exchange_nitro(nitro_broker, fresh, "partner-fresh"))
    # a minute is well within the default five minutes, and the credential ends when the
    # document would turn stale (timestamp + max_age)
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=old)
    body = assert_ok(exchange_nitro(nitro_broker, doc))
    claims = verify_broker_jwt(nitro_broker, body["access_token"])
    assert claims["exp"] <= old // 1000 + 300 and body["expires_in"] <= 241, (claims, body)


def test_nitro_document_from_the_future_is_stale(nitro_broker, material):
    future = int((time.time() + 120) * 1000)
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=future)
    assert_reject(exchange_nitro(nitro_broker, doc), "stale_attestation")
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)),
                         timestamp_ms=int((time.time() + 2) * 1000))  # within the 5 s leeway
    assert_ok(exchange_nitro(nitro_broker, doc))


def test_nitro_provider_leeway_is_applied(nitro_broker, material):
    # 45 s ahead: inside the provider's 60 s leeway at any later time, and outside the default
    # 5 s unless 40 s pass before the broker sees it
    ahead = int((time.time() + 45) * 1000)
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=ahead)
    assert_ok(exchange_nitro(nitro_broker, doc, "partner-leeway"))
    # twin: the same document timing on a provider with the default leeway
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=ahead)
    assert_reject(exchange_nitro(nitro_broker, doc, "partner-api"), "stale_attestation")


def test_nitro_debug_enclave_is_refused_unless_the_role_allows_it(nitro_broker, material):
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), pcrs=DEBUG_PCRS)
    r = exchange_nitro(nitro_broker, doc)
    assert_reject(r, "debug_enclave")
    # the role that says allow_debug = true (and pins PCR4) admits a debug enclave
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), pcrs=DEBUG_PCRS)
    claims = verify_broker_jwt(nitro_broker, assert_ok(exchange_nitro(nitro_broker, doc, "partner-debug"))["access_token"])
    assert claims["role"] == "partner-debug"
    # and it still checks its pin: a debug enclave on another instance is denied
    other = {**DEBUG_PCRS, 4: bytes([0x66]) * PCR_LEN}
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), pcrs=other)
    r = exchange_nitro(nitro_broker, doc, "partner-debug")
    assert_reject(r, "policy_denied", error="invalid_target")
    assert "condition pcr4" in r.description


def test_nitro_wrong_pcr_is_denied_naming_the_condition(nitro_broker, material):
    pcrs = {**GOOD_PCRS, 0: bytes([0x12]) * PCR_LEN}
    r = exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)), pcrs=pcrs))
    assert_reject(r, "policy_denied", error="invalid_target")
    # names the one condition that failed, with what it expected and what it saw (detail = full)
    assert "condition pcr0" in r.description and "pcr8" not in r.description, r.description
    assert PCR0 in r.description and ("12" * PCR_LEN) in r.description, r.description
    # a role whose PCR0 is another build's
    r = exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker))),
                       "other-enclave")
    assert_reject(r, "policy_denied", error="invalid_target")
    # PCR8 alone pins the signing certificate: accepted when it matches, denied when not
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)),
                                                          pcrs={0: bytes([0x99]) * PCR_LEN, 8: GOOD_PCRS[8]}),
                             "pcr8-only"))
    r = exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)),
                                                    pcrs={**GOOD_PCRS, 8: bytes([0x89]) * PCR_LEN}), "pcr8-only")
    assert_reject(r, "policy_denied", error="invalid_target")
    assert "pcr8" in r.description


def test_nitro_leaf_expired_now_is_refused_even_if_valid_at_the_document_time(nitro_broker, material):
    t = time.time()
    # under the configured root; the leaf was valid when the document was made, a minute ago
    chain = NitroChain.make(root=material.chain.root, leaf_not_after=t - 30)
    doc = nitro_document(chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=int((t - 60) * 1000))
    assert_reject(exchange_nitro(nitro_broker, doc), "cert_expired")
    # twin: a leaf still valid now
    chain = NitroChain.make(root=material.chain.root, leaf_not_after=t + 3600)
    doc = nitro_document(chain, nonce=b64url_decode(get_nonce(nitro_broker)), timestamp_ms=int((t - 60) * 1000))
    assert_ok(exchange_nitro(nitro_broker, doc))
    # a leaf not yet valid at the document's time (an hour ahead: no load makes it valid)
    chain = NitroChain.make(root=material.chain.root, leaf_not_before=t + 3600)
    doc = nitro_document(chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    assert_reject(exchange_nitro(nitro_broker, doc), "chain_invalid")


def test_nitro_document_under_another_root_is_untrusted(nitro_broker, material):
    # Same subject names as the configured (pinned) test root, other keys.
    doc = nitro_document(material.foreign_chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    assert_reject(exchange_nitro(nitro_broker, doc), "untrusted_root")
    # The configured root placed first, the rest of the chain foreign: still not a chain to it.
    payload = nitro_payload(material.foreign_chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    payload["cabundle"] = [material.chain.root.der] + payload["cabundle"][1:]
    doc = cose_sign1(cbor2.dumps(payload), material.foreign_chain.leaf.key)
    r = exchange_nitro(nitro_broker, doc)
    assert r.status == 400 and r.reason in ("untrusted_root", "chain_invalid"), r
    assert_ok(exchange_nitro(nitro_broker, nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))))


def test_nitro_tampered_document_is_refused(nitro_broker, material):
    nonce = b64url_decode(get_nonce(nitro_broker))
    payload = cbor2.dumps(nitro_payload(material.chain, nonce=nonce))
    doc = cbor2.loads(cose_sign1(payload, material.chain.leaf.key))
    # swap in a payload with another PCR0 after signing
    tampered = cbor2.loads(payload)
    tampered["pcrs"][0] = bytes([0x12]) * PCR_LEN
    doc[2] = cbor2.dumps(tampered)
    assert_reject(exchange_nitro(nitro_broker, cbor2.dumps(doc)), "signature_invalid")
    # a signature by a key other than the certified leaf's
    forged = nitro_document(material.chain, nonce=nonce, sign_with=material.foreign_chain.leaf.key)
    assert_reject(exchange_nitro(nitro_broker, forged), "signature_invalid")
    # ES256 in the protected header
    forged = cose_sign1(payload, material.chain.leaf.key, protected=bytes([0xA1, 0x01, 0x26]))
    assert_reject(exchange_nitro(nitro_broker, forged), "cose_header_invalid")
    # not base64, and truncated
    assert_reject(nitro_broker.exchange("%%%not base64%%%", "partner-api", token_type=NITRO_TOKEN_TYPE),
                  "attestation_malformed")
    assert_reject(exchange_nitro(nitro_broker, cbor2.dumps(doc)[:200]), "attestation_malformed")
    # twin: the untampered document with that nonce is still good (nothing above consumed it)
    assert_ok(exchange_nitro(nitro_broker, cose_sign1(payload, material.chain.leaf.key)))


def test_a_role_takes_only_its_providers_token_type(nitro_broker, material):
    key = LocalKey("k1", "EC")
    id_token = key.sign(good_claims("https://ci.example.com"))
    assert_reject(nitro_broker.exchange(id_token, "partner-api", token_type=ID_TOKEN), "unsupported_token_type")
    doc = nitro_document(material.chain, nonce=b64url_decode(get_nonce(nitro_broker)))
    assert_reject(nitro_broker.exchange(nitro_token(doc), "workload", token_type=NITRO_TOKEN_TYPE),
                  "unsupported_token_type")
    assert_reject(nitro_broker.exchange(nitro_token(doc), "partner-api", token_type=X509_POP_TOKEN_TYPE),
                  "unsupported_token_type")
    assert_reject(nitro_broker.exchange(nitro_token(doc), "partner-api", token_type=EC2_IID_TOKEN_TYPE),
                  "unsupported_token_type")
    # twin: the right type for the role (the refusals above did not touch the nonce)
    assert_ok(exchange_nitro(nitro_broker, doc))


def test_explain_prints_nitro_evidence(nitro_broker, material, ephemera_bin, tmp_path):
    doc = nitro_document(material.chain, nonce=os.urandom(32))
    raw = tmp_path / "doc.cbor"
    raw.write_bytes(doc)
    text = tmp_path / "doc.b64"
    text.write_text(nitro_token(doc) + "\n")
    cfg = str(nitro_broker.config_path)
    for f in (raw, text):
        r = run_cli(ephemera_bin, ["explain", "--config", cfg, "--role", "partner-api", "--token-file", str(f),
                                   "--token-type", "nitro-attestation"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"pcr0 = {PCR0}" in r.stdout and "debug = false" in r.stdout, r.stdout
        assert "decision: ALLOW" in r.stdout
    # the same document again, for a role whose PCR0 differs: a deny with the evidence, exit 3
    r = run_cli(ephemera_bin, ["explain", "--config", cfg, "--role", "other-enclave", "--token-file", str(raw),
                               "--token-type", "nitro-attestation", "--json"])
    assert r.returncode == 3, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["decision"] == "deny" and out["reason"] == "policy_denied"
    assert out["trace"]["evidence"]["pcr0"] == PCR0
    # a debug document: explain says so, exit 3
    dbg = tmp_path / "debug.cbor"
    dbg.write_bytes(nitro_document(material.chain, nonce=os.urandom(32), pcrs=DEBUG_PCRS))
    r = run_cli(ephemera_bin, ["explain", "--config", cfg, "--role", "partner-api", "--token-file", str(dbg),
                               "--token-type", "nitro-attestation", "--json"])
    assert r.returncode == 3 and json.loads(r.stdout)["reason"] == "debug_enclave", r.stdout


# ------------------------------------------------------------------------------------------------
# X.509 proof of possession


@pytest.fixture
def pop_broker(broker_factory, material, tmp_path):
    anchor = str(material.dir / "pop-ca.pem")
    # certificates of the same CA on the serial denylist and on a CRL
    material.revoked_pki = PopPki.make(ca=material.pki.ca, serial=0x1A2B3C4D5E6F)
    material.revoked_odd_pki = PopPki.make(ca=material.pki.ca, serial=0x0A1B2C3D4E5F)
    # (its own issuing CA name: a CRL is found by its issuer's name, and a same-named CA with another
    # key makes rustls-webpki refuse the chain outright, `InvalidCrlSignatureForPublicKey`)
    material.crl_pki = PopPki.make(ca=material.pki.ca, intermediate_name="Example Workload Issuing CA 2")
    # a sibling of that leaf, under the same issuing CA, that its CRL does not list
    material.crl_sibling_pki = PopPki.make(ca=material.pki.ca, intermediate=material.crl_pki.intermediate)
    listed = [material.crl_pki.leaf.cert.serial_number]
    crl = tmp_path / "issuing-ca.crl"
    crl.write_bytes(make_crl(material.crl_pki.intermediate, listed))
    pem_crl = tmp_path / "issuing-ca.pem"
    pem_crl.write_bytes(make_crl(material.crl_pki.intermediate, listed, pem=True))
    assert pem_crl.read_bytes().startswith(b"-----BEGIN X509 CRL-----")
    providers = [
        {"name": "pki", "profile": "x509-pop", "trust_anchor_files": [anchor]},
        {"name": "pki-denylist", "profile": "x509-pop", "trust_anchor_files": [anchor],
         "revoked_serials": ["1a2b3c4d5e6f", "0a1b2c3d4e5f"], "crl_files": [str(crl)]},
        # the same CRL, alone, as PEM
        {"name": "pki-pem-crl", "profile": "x509-pop", "trust_anchor_files": [anchor],
         "crl_files": [str(pem_crl)]},
    ]
    roles = [
        jwt_role("workload", "pki", {"spiffe_id": SPIFFE_ID}),
        jwt_role("other-workload", "pki", {"spiffe_id": "spiffe://example.org/ns/prod/sa/billing"}),
        jwt_role("workload-denylist", "pki-denylist", {"spiffe_id": SPIFFE_ID}),
        jwt_role("workload-pem-crl", "pki-pem-crl", {"spiffe_id": SPIFFE_ID}),
    ]
    return broker_factory(providers, roles)


def exchange_pop(broker, proof, role="workload"):
    return broker.exchange(proof, role, token_type=X509_POP_TOKEN_TYPE)


def test_pop_good_path_binds_the_certificate(pop_broker, material):
    pki = material.pki
    proof = pop_proof(pki, nonce=get_nonce(pop_broker, "workload"), audience=pop_broker.issuer)
    assert jwt.get_unverified_header(proof) == {"alg": "ES256", "typ": "ephemera-x509-pop+jwt", "x5c": pki.x5c}
    body = assert_ok(exchange_pop(pop_broker, proof))
    claims = verify_broker_jwt(pop_broker, body["access_token"])
    assert claims["sub"] == SPIFFE_ID
    assert claims["cnf"] == {"x5t#S256": pki.leaf_x5t_s256}
    assert claims["exp"] - claims["iat"] == body["expires_in"] <= 300
    assert claims["src_iss"].startswith("urn:ephemera:x509-pop:")


def test_pop_reused_nonce_is_refused(pop_broker, material):
    nonce = get_nonce(pop_broker)
    iat = int(time.time())
    proof = pop_proof(material.pki, nonce=nonce, audience=pop_broker.issuer, iat=iat)
    assert_ok(exchange_pop(pop_broker, proof))
    assert_reject(exchange_pop(pop_broker, proof), "token_replayed")  # the very same proof: a replay
    # another iat than the first proof's, whatever the clock did meanwhile: single use is by
    # header and payload, so a proof equal to the first in both would be a replay again
    again = pop_proof(material.pki, nonce=nonce, audience=pop_broker.issuer, iat=iat - 1)
    assert_reject(exchange_pop(pop_broker, again), "nonce_invalid")  # a new proof, the old nonce
    assert_ok(exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)))


def test_pop_nonce_never_issued_or_for_another_role(pop_broker, material):
    assert_reject(exchange_pop(pop_broker, pop_proof(material.pki, nonce=b64url(os.urandom(32)),
                                                     audience=pop_broker.issuer)), "nonce_invalid")
    other = get_nonce(pop_broker, "other-workload")
    assert_reject(exchange_pop(pop_broker, pop_proof(material.pki, nonce=other, audience=pop_broker.issuer)),
                  "nonce_invalid")
    # a nonce that is not 32 bytes is not a broker nonce at all
    assert_reject(exchange_pop(pop_broker, pop_proof(material.pki, nonce=b64url(os.urandom(16)),
                                                     audience=pop_broker.issuer)), "pop_invalid")
    assert_ok(exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker, "workload"),
                                                 audience=pop_broker.issuer)))


def test_pop_expired_or_not_yet_valid_leaf_is_refused(pop_broker, material):
    t = time.time()
    expired = PopPki.make(ca=material.pki.ca, leaf_not_before=t - 7200, leaf_not_after=t - 60)
    assert_reject(exchange_pop(pop_broker, pop_proof(expired, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)),
                  "cert_expired")
    future = PopPki.make(ca=material.pki.ca, leaf_not_before=t + 3600, leaf_not_after=t + 7200)
    assert_reject(exchange_pop(pop_broker, pop_proof(future, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)),
                  "chain_invalid")
    fresh = PopPki.make(ca=material.pki.ca)
    assert_ok(exchange_pop(pop_broker, pop_proof(fresh, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)))


def test_pop_chain_to_another_anchor_is_refused(pop_broker, material):
    # a CA the broker does not know
    stranger = PopPki.make(ca_name="Stranger Root CA")
    assert_reject(exchange_pop(pop_broker, pop_proof(stranger, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)),
                  "untrusted_root")
    # a CA with the configured anchor's very name, another key: the chain's signature fails
    impostor = PopPki.make()
    assert impostor.ca.cert.subject == material.pki.ca.cert.subject
    assert_reject(exchange_pop(pop_broker, pop_proof(impostor, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)),
                  "chain_invalid")
    # the right leaf without its intermediate cannot be chained
    proof = pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer,
                      x5c=[b64(material.pki.leaf.der)])
    assert_reject(exchange_pop(pop_broker, proof), "untrusted_root")
    # an extra certificate that is not on the path
    proof = pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer,
                      x5c=material.pki.x5c + [b64(stranger.intermediate.der)])
    assert_reject(exchange_pop(pop_broker, proof), "chain_invalid")
    assert_ok(exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)))


def test_pop_signed_by_another_key_is_refused(pop_broker, material):
    thief = ec.generate_private_key(ec.SECP256R1())  # holds the certificate, not its key
    proof = pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer, key=thief)
    assert_reject(exchange_pop(pop_broker, proof), "pop_invalid")
    assert_ok(exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)))


def test_pop_proof_rules(pop_broker, material):
    pki = material.pki
    aud = pop_broker.issuer
    cases = [
        ("audience", pop_proof(pki, nonce=get_nonce(pop_broker), audience="https://other.example")),
        ("iat too old", pop_proof(pki, nonce=get_nonce(pop_broker), audience=aud, iat=int(time.time()) - 300)),
        ("iat in the future", pop_proof(pki, nonce=get_nonce(pop_broker), audience=aud, iat=int(time.time()) + 300)),
        ("typ JWT", pop_proof(pki, nonce=get_nonce(pop_broker), audience=aud, typ="JWT")),
    ]
    for what, proof in cases:
        r = exchange_pop(pop_broker, proof)
        assert r.status == 400 and r.reason == "pop_invalid", (what, r)
    # a leaf without digitalSignature
    ke = PopPki.make(ca=pki.ca, key_usage="keyEncipherment")
    assert_reject(exchange_pop(pop_broker, pop_proof(ke, nonce=get_nonce(pop_broker), audience=aud)), "chain_invalid")
    assert_ok(exchange_pop(pop_broker, pop_proof(pki, nonce=get_nonce(pop_broker), audience=aud)))


def test_pop_revoked_serial_crl_and_policy(pop_broker, material):
    aud = pop_broker.issuer
    revoked = material.revoked_pki
    assert_reject(exchange_pop(pop_broker, pop_proof(revoked, nonce=get_nonce(pop_broker), audience=aud),
                               "workload-denylist"), "cert_revoked")
    # on the issuing CA's CRL
    assert_reject(exchange_pop(pop_broker, pop_proof(material.crl_pki, nonce=get_nonce(pop_broker), audience=aud),
                               "workload-denylist"), "cert_revoked")
    # twins: the same certificates where no denylist or CRL applies, and a good one on the denylist provider
    assert_ok(exchange_pop(pop_broker, pop_proof(revoked, nonce=get_nonce(pop_broker), audience=aud)))
    assert_ok(exchange_pop(pop_broker, pop_proof(material.crl_pki, nonce=get_nonce(pop_broker), audience=aud)))
    assert_ok(exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=aud),
                           "workload-denylist"))
    # a valid proof for another SPIFFE ID than the role pins
    r = exchange_pop(pop_broker, pop_proof(material.pki, nonce=get_nonce(pop_broker), audience=aud), "other-workload")
    assert_reject(r, "policy_denied", error="invalid_target")
    assert "spiffe_id" in r.description


def test_pop_revoked_serial_with_a_leading_zero_nibble_is_refused(pop_broker, material):
    proof = pop_proof(material.revoked_odd_pki, nonce=get_nonce(pop_broker), audience=pop_broker.issuer)
    assert_reject(exchange_pop(pop_broker, proof, "workload-denylist"), "cert_revoked")


def test_pop_pem_crl_revokes_like_the_der_one(pop_broker, material):
    """A PEM CRL is not only loaded but applied: the leaf it lists is refused, as under the DER
    copy of the same CRL; its unlisted sibling (same issuing CA) is accepted under both."""
    aud = pop_broker.issuer
    for role in ("workload-pem-crl", "workload-denylist"):
        assert_reject(exchange_pop(pop_broker, pop_proof(material.crl_pki, nonce=get_nonce(pop_broker), audience=aud),
                                   role), "cert_revoked")
        assert_ok(exchange_pop(pop_broker, pop_proof(material.crl_sibling_pki, nonce=get_nonce(pop_broker),
                                                     audience=aud), role))


def test_pop_der_crl_is_accepted_at_load(ephemera_bin, material, tmp_path):
    # a DER CRL loads, and a CRL file that is not one is refused naming the key
    crl = tmp_path / "issuing-ca.crl"
    cfg = {
        "server": {"listen": "127.0.0.1:0", "issuer": "https://broker.example.com"},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "providers": [{"name": "pki", "profile": "x509-pop", "trust_anchor_files": [str(material.dir / "pop-ca.pem")],
                       "crl_files": [str(crl)]}],
        "roles": [jwt_role("workload", "pki", {"spiffe_id": SPIFFE_ID})],
    }
    path = tmp_path / "der-crl.toml"
    path.write_text(to_toml(cfg))
    crl.write_bytes(make_crl(material.pki.intermediate, [12345]))
    assert run_cli(ephemera_bin, ["check", "--config", str(path)]).returncode == 0
    crl.write_bytes(b"not a CRL")
    r = run_cli(ephemera_bin, ["check", "--config", str(path)])
    assert r.returncode == 2 and "crl" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------
# EC2 instance identity documents


@pytest.fixture
def iid_broker(broker_factory, material):
    cert = str(material.dir / "aws-rsa.pem")
    providers = [
        {"name": "fleet", "profile": "aws-ec2-iid", "certificate_files": [cert]},
        {"name": "fleet-west", "profile": "aws-ec2-iid", "certificates": [{"region": "us-west-2", "file": cert}]},
    ]
    roles = [
        # max_ttl says an hour; an IID backs at most five minutes
        jwt_role("fleet-api", "fleet", {"accountId": ACCOUNT}, max_ttl="1h", accept_replayable=True),
        jwt_role("fleet-west", "fleet-west", {"accountId": ACCOUNT}, accept_replayable=True),
    ]
    return broker_factory(providers, roles)


def exchange_iid(broker, token, role="fleet-api"):
    return broker.exchange(token, role, token_type=EC2_IID_TOKEN_TYPE)


def test_iid_good_path_is_capped_and_audited_as_replayable(iid_broker, material):
    doc = iid_document()
    body = assert_ok(exchange_iid(iid_broker, iid_signature_form(material.aws, doc)))
    assert 0 < body["expires_in"] <= 300
    claims = verify_broker_jwt(iid_broker, body["access_token"])
    instance = json.loads(doc)["instanceId"]
    assert claims["sub"] == f"ec2:{ACCOUNT}/{instance}"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert "cnf" not in claims  # an IID binds no key
    allow = [r for r in iid_broker.audit() if r["decision"] == "allow"]
    assert len(allow) == 1 and allow[0]["replayable"] is True, allow
    assert allow[0]["credential"]["expires_at"] == claims["exp"]


def test_iid_pkcs7_forms_are_accepted(iid_broker, material):
    assert_ok(exchange_iid(iid_broker, iid_pkcs7(material.aws, iid_document(), line_breaks=True)))
    assert_ok(exchange_iid(iid_broker, iid_pkcs7(material.aws, iid_document(), signed_attributes=False)))


def test_iid_same_document_again_is_replayed(iid_broker, material):
    doc = iid_document()
    token = iid_signature_form(material.aws, doc)
    assert_ok(exchange_iid(iid_broker, token))
    assert_reject(exchange_iid(iid_broker, token), "token_replayed")
    # single use is per (instanceId, pendingTime), not per encoding: the PKCS#7 of it is the same IID
    assert_reject(exchange_iid(iid_broker, iid_pkcs7(material.aws, doc)), "token_replayed")
    # the same instance after a stop/start has a new pendingTime: a new IID
    later = doc.replace("2026-01-15T13:00:00Z", "2026-01-16T09:30:00Z")
    assert_ok(exchange_iid(iid_broker, iid_signature_form(material.aws, later)))


def test_iid_concurrent_presentations_yield_one_credential(iid_broker, material):
    token = iid_pkcs7(material.aws, iid_document())
    with cf.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: exchange_iid(iid_broker, token), range(20)))
    assert sum(a.status == 200 for a in answers) == 1, answers
    assert all(a.reason == "token_replayed" for a in answers if a.status != 200), answers


def test_iid_changed_document_is_signature_invalid(iid_broker, material):
    doc = iid_document()
    good = json.loads(iid_signature_form(material.aws, doc))
    spaced = json.dumps({"document": doc.replace('"accountId" :', '"accountId"  :'), "signature": good["signature"]})
    assert_reject(exchange_iid(iid_broker, spaced), "signature_invalid")
    lines = doc.split("\n")
    reordered = "\n".join([lines[0], lines[2], lines[1]] + lines[3:])
    assert json.loads(reordered) == json.loads(doc)
    assert_reject(exchange_iid(iid_broker, json.dumps({"document": reordered, "signature": good["signature"]})),
                  "signature_invalid")
    # signed by a certificate that is not configured
    assert_reject(exchange_iid(iid_broker, iid_signature_form(material.other_aws, doc)), "signature_invalid")
    assert_reject(exchange_iid(iid_broker, iid_pkcs7(material.other_aws, doc)), "signature_invalid")
    # twin: the untouched pair (nothing above used it)
    assert_ok(exchange_iid(iid_broker, json.dumps(good)))


def test_iid_other_account_is_denied(iid_broker, material):
    r = exchange_iid(iid_broker, iid_signature_form(material.aws, iid_document(account_id="210987654321")))
    assert_reject(r, "policy_denied", error="invalid_target")
    assert "accountId" in r.description
    assert_ok(exchange_iid(iid_broker, iid_signature_form(material.aws, iid_document())))


def test_iid_region_must_match_its_certificate(iid_broker, material):
    east = iid_signature_form(material.aws, iid_document(region="us-east-1"))
    assert_reject(exchange_iid(iid_broker, east, "fleet-west"), "region_mismatch")
    west = iid_signature_form(material.aws, iid_document(region="us-west-2"))
    assert_ok(exchange_iid(iid_broker, west, "fleet-west"))


def test_iid_role_without_accept_replayable_is_refused_at_load(ephemera_bin, material, tmp_path):
    cert = str(material.dir / "aws-rsa.pem")
    cfg = {
        "server": {"listen": "127.0.0.1:0", "issuer": "https://broker.example.com"},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "providers": [{"name": "fleet", "profile": "aws-ec2-iid", "certificate_files": [cert]}],
        "roles": [jwt_role("fleet-api", "fleet", {"accountId": ACCOUNT})],
    }
    path = tmp_path / "no-accept.toml"
    path.write_text(to_toml(cfg))
    r = run_cli(ephemera_bin, ["check", "--config", str(path)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "accept_replayable" in r.stdout + r.stderr
    # twin: the same config saying accept_replayable = true
    cfg["roles"][0]["accept_replayable"] = True
    path.write_text(to_toml(cfg))
    r = run_cli(ephemera_bin, ["check", "--config", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr
    # and an IID role must pin the account
    cfg["roles"][0]["conditions"] = {"region": "us-east-1"}
    path.write_text(to_toml(cfg))
    r = run_cli(ephemera_bin, ["check", "--config", str(path)])
    assert r.returncode == 2 and "accountId" in r.stdout + r.stderr, r.stdout + r.stderr


def test_nitro_role_config_is_checked_at_load(ephemera_bin, material, tmp_path):
    root = str(material.dir / "nitro-root.pem")
    base = {
        "server": {"listen": "127.0.0.1:0", "issuer": "https://broker.example.com"},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "providers": [{"name": "enclaves", "profile": "nitro", "root_cert_file": root}],
    }
    path = tmp_path / "nitro.toml"

    def check(conditions, provider_extra=None, **role_extra):
        cfg = dict(base, roles=[jwt_role("r", "enclaves", conditions, **role_extra)])
        cfg["providers"] = [dict(base["providers"][0], **(provider_extra or {}))]
        path.write_text(to_toml(cfg))
        return run_cli(ephemera_bin, ["check", "--config", str(path)])

    assert check({"pcr0": PCR0}).returncode == 0
    # each refusal names the role's key, the rule and the condition it is about
    for bad, rule in [
        ({"pcr0": "0" * 96}, "pcr_zero: condition pcr0:"),
        ({"pcr0": PCR0, "pcr8": "0" * 96}, "pcr_zero: condition pcr8:"),
        ({"pcr0": "ab" * 47}, "pcr_invalid: condition pcr0:"),
        ({"pcr0": ("ab" * PCR_LEN).upper()}, "pcr_invalid: condition pcr0:"),
        ({"module_id": MODULE_ID}, "policy_unscoped: does not pin the workload's identity: needs a PCR"),
        ({}, "policy_unscoped: does not pin the workload's identity: needs a PCR"),
    ]:
        r = check(bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert f"roles[0] (`r`): {rule}" in r.stderr, (bad, r.stderr)
    r = check({"pcr0": PCR0}, {"root_sha256": "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"})
    out = r.stdout + r.stderr
    assert r.returncode == 2 and ("root_sha256" in out or "SHA-256" in out), out
    assert check({"pcr0": PCR0}, {"root_sha256": material.chain.root.sha256_hex}).returncode == 0


# ------------------------------------------------------------------------------------------------
# the example clients, against the real broker


def _count_outside_success(broker):
    """The example clients talk to the broker themselves: record their 200 for the audit check
    at teardown (one allow record per 200)."""
    broker.responses.append((Resp(200, {}, {}, ""), []))


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_nitro_client(nitro_broker, material, monkeypatch):
    client = _load_example("nitro_client")
    with pytest.raises(NotImplementedError):
        client.get_attestation_document(b"\0" * 32, b"", None)
    # The NSM stands in as a test root's signer: everything else is the example's own code.
    monkeypatch.setattr(client, "get_attestation_document", lambda nonce, public_key, user_data: nitro_document(
        material.chain, nonce=nonce, public_key=public_key, user_data=user_data))
    response, key = client.attest_and_exchange(nitro_broker.url, "partner-api", user_data=b"hello")
    _count_outside_success(nitro_broker)
    claims = verify_broker_jwt(nitro_broker, response["access_token"])
    assert claims["cnf"]["jkt"] == client.jwk_thumbprint(key.public_key()) == jwk_thumbprint(key.public_key())
    assert claims == client.unverified_claims(response["access_token"])


def test_example_x509_pop_client(pop_broker, material, tmp_path):
    client = _load_example("x509_pop_client")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(material.pki.leaf.pem + material.pki.intermediate.pem)
    key = tmp_path / "key.pem"
    key.write_bytes(material.pki.leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    certs, private = client.load(str(chain), str(key))
    response = client.prove_and_exchange(pop_broker.url, "workload", certs, private)
    _count_outside_success(pop_broker)
    claims = verify_broker_jwt(pop_broker, response["access_token"])
    assert claims["sub"] == SPIFFE_ID and claims["cnf"] == {"x5t#S256": material.pki.leaf_x5t_s256}
    # and a refusal surfaces as the broker's error (the nonce bound to another role is refused)
    with pytest.raises(SystemExit, match="nonce_invalid"):
        _pop_with_foreign_nonce(client, pop_broker, certs, private)


def _pop_with_foreign_nonce(client, broker, certs, key):
    nonce = get_nonce(broker, "other-workload")
    jws = client.proof(certs, key, nonce, broker.issuer)
    return client.post_form(f"{broker.url}/v1/token", {"grant_type": client.GRANT, "audience": "workload",
                                                        "subject_token_type": client.X509_POP_TOKEN_TYPE,
                                                        "subject_token": jws})
