"""The audit log (one record per decision, same reason and decision id as the answer, hash chain)
and secrets that must never reach stdout, stderr or the audit log (ATTACKS.md F 53, G 56)."""

from __future__ import annotations

import json
import re

import jwt
import pytest
from pathlib import Path
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (
    GRANT,
    HTTP_TIMEOUT,
    ID_TOKEN,
    Resp,
    good_claims,
    now,
    run_cli,
    signature_segment,
    verify_broker_jwt,
)

DENY_FIELDS = {"time", "ts", "request_id", "decision_id", "decision", "reason", "detail", "prev"}
ALLOW_FIELDS = {"time", "ts", "request_id", "decision_id", "decision", "role", "provider", "issuer",
                "subject", "task", "assertion_expires_at", "credential", "replay", "prev"}


def form(token, role="deploy", **extra):
    d = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN, "audience": role}
    d.update(extra)
    return d


def rejection_battery(broker, mock):
    """One request per kind of rejection the server makes; returns the answers."""
    t = now()
    good = mock.token()
    answers = []
    answers.append(broker.exchange(mock.token(aud="other")))                         # audience_mismatch
    answers.append(broker.exchange(mock.token(iat=t - 900, nbf=t - 900, exp=t - 300)))  # token_expired
    answers.append(broker.exchange(mock.token(ref="refs/heads/dev")))                 # policy_denied
    answers.append(broker.exchange(good, role="nope"))                                # unknown_role
    answers.append(broker.exchange(mock.sign(good_claims(mock.issuer), header={"alg": "none"},
                                             sign_alg="none")))                       # alg_not_allowed
    answers.append(broker.exchange(mock.sign(good_claims("https://evil.example"))))   # issuer_not_trusted
    answers.append(broker.exchange(mock.token(header={"kid": "nope"})))               # unknown_key
    h, p, s = mock.token().split(".")
    answers.append(broker.exchange(f"{h}.{p}.{s[:-4]}AAAA"))                          # signature_invalid
    answers.append(broker.exchange("not-a-jwt"))                                      # malformed_token
    answers.append(broker.exchange(mock.token(header={"crit": ["exp"]})))             # crit_unsupported
    answers.append(broker.exchange(mock.token(sub=None)))                             # claim_missing
    answers.append(broker.exchange(mock.token(exp=None)))                             # exp_missing
    answers.append(broker.post_token(form(good, subject_token_type="urn:x")))         # unsupported_token_type
    answers.append(broker.post_token(dict(form(good), grant_type="refresh_token")))   # unsupported_grant_type
    answers.append(broker.post_token(list(form(good).items()) + [("audience", "x")]))  # request_invalid
    answers.append(broker.post_token(json.dumps(form(good)),
                                     headers={"Content-Type": "application/json"}))  # 415
    answers.append(broker.post_token(form(good, pad="x" * 70_000)))                   # 413
    answers.append(broker.post_token(form(good), params={"a": "b"}))                  # query string
    # the good token, then its replay
    answers.append(broker.exchange(good))
    answers.append(broker.exchange(good))                                             # token_replayed
    return answers


def test_every_rejection_is_audited_with_its_reason_and_decision_id(broker, mock_issuer):
    answers = rejection_battery(broker, mock_issuer)
    # GET goes through the same path (405, audited)
    r = broker.http.get(broker.url + "/v1/token", timeout=HTTP_TIMEOUT)
    get_resp = Resp(r.status_code, r.headers, r.json(), r.text)
    assert get_resp.status == 405
    answers.append(get_resp)

    records = broker.audit()
    by_id = {rec["decision_id"]: rec for rec in records}
    assert len(by_id) == len(records), "decision ids are unique"
    reasons_seen = set()
    for a in answers:
        if a.status == 200:
            continue
        assert a.decision_id, f"no decision id in {a}"
        rec = by_id.get(a.decision_id)
        assert rec is not None, f"no audit record for {a}"
        assert rec["decision"] == "deny", rec
        assert rec["reason"] == a.reason, (rec, a)
        assert rec["request_id"] == a.headers.get("x-request-id"), (rec, dict(a.headers))
        assert DENY_FIELDS <= set(rec), rec
        reasons_seen.add(a.reason)
    assert {"audience_mismatch", "token_expired", "policy_denied", "unknown_role", "alg_not_allowed",
            "issuer_not_trusted", "unknown_key", "signature_invalid", "malformed_token",
            "crit_unsupported", "claim_missing", "exp_missing", "unsupported_token_type",
            "unsupported_grant_type", "request_invalid", "request_too_large", "token_replayed",
            "method_not_allowed"} <= reasons_seen, reasons_seen

    # one allow record per 200, carrying the credential's jti and expiry
    oks = [a for a in answers if a.status == 200]
    allows = [rec for rec in records if rec["decision"] == "allow"]
    assert len(oks) == len(allows) == 1
    claims = verify_broker_jwt(broker, oks[0].json["access_token"])
    assert ALLOW_FIELDS <= set(allows[0]), allows[0]
    assert allows[0]["credential"] == {"kind": "jwt", "jti": claims["jti"], "expires_at": claims["exp"],
                                       "audience": claims["aud"]}
    # the mark made with the grant (the file state's write-ahead log): a SHA-256, never the token
    assert set(allows[0]["replay"]) == {"id", "until"} and len(allows[0]["replay"]["id"]) == 64, allows[0]
    assert allows[0]["replay"]["until"] >= allows[0]["assertion_expires_at"], allows[0]
    assert allows[0]["request_id"] == oks[0].headers.get("x-request-id")
    assert allows[0]["role"] == "deploy" and allows[0]["provider"] == "mock"
    assert allows[0]["issuer"] == mock_issuer.issuer
    # policy denials carry role, provider and the verified identity too
    denied = by_id[answers[2].decision_id]
    assert denied["role"] == "deploy" and denied["subject"] and denied["issuer"] == mock_issuer.issuer


def test_count_of_200_equals_count_of_allow_records(broker, mock_issuer):
    tokens = [mock_issuer.token() for _ in range(6)]
    answers = []
    for i, t in enumerate(tokens):
        answers.append(broker.exchange(t, role="deploy" if i % 2 == 0 else "release"))
        answers.append(broker.exchange(t))
        answers.append(broker.exchange(t))
    oks = sum(a.status == 200 for a in answers)
    assert oks == len(tokens)
    records = broker.audit()
    assert sum(r["decision"] == "allow" for r in records) == oks
    assert sum(r["decision"] == "deny" for r in records) == len(answers) - oks
    assert len(records) == len(answers)


def _signing_key_pem(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = tmp_path / "broker-key.pem"
    path.write_bytes(pem)
    d = key.private_numbers().private_value.to_bytes(32, "big")
    return path, pem.decode(), d


def test_secrets_never_reach_logs_or_audit(broker_factory, mock_issuer, tmp_path):
    key_path, pem, d = _signing_key_pem(tmp_path)
    b = broker_factory(issuer=mock_issuer, rust_log="trace",
                       server={"signing_key_file": str(key_path)})
    subject_tokens, issued = [], []

    def send(tok, role="deploy", **kw):
        subject_tokens.append(tok)
        return b.exchange(tok, role=role, **kw)

    good = mock_issuer.token()
    assert send(good).status == 200
    issued.append(b.responses[-1][0].json["access_token"])
    assert send(good).reason == "token_replayed"
    assert send(mock_issuer.token(ref="refs/heads/dev")).reason == "policy_denied"
    assert send(mock_issuer.token(aud="other")).reason == "audience_mismatch"
    # a signature changed in the middle (one base64url character swapped, the segment stays
    # canonical): refused for its signature, and neither the token nor its signature may leak
    h, p, s = mock_issuer.token().split(".")
    i = len(s) // 2
    assert send(f"{h}.{p}.{s[:i]}{'B' if s[i] == 'A' else 'A'}{s[i + 1:]}").reason == "signature_invalid"
    second = mock_issuer.token()
    assert send(second, role="release").reason == "policy_denied"
    assert send(second).status == 200
    issued.append(b.responses[-1][0].json["access_token"])
    # the broker's own credential fed back, and a token in the wrong places
    assert send(issued[0]).reason == "issuer_not_trusted"
    third = mock_issuer.token()
    subject_tokens.append(third)
    b.post_token(json.dumps(form(third)), headers={"Content-Type": "application/json"})
    b.post_token(form(third), params={"subject_token": third})
    requests.get(b.url + "/v1/token", params=form(third), timeout=HTTP_TIMEOUT)

    b.stop()  # flush everything
    texts = {
        "stderr": b.stderr_path.read_text(errors="replace"),
        "stdout": b.stdout_path.read_text(errors="replace"),
        "audit": b.audit_path.read_text(errors="replace"),
    }
    # `serve` logs JSON lines: at least one event at level TRACE shows RUST_LOG=trace was in effect
    assert '"level":"TRACE"' in texts["stderr"], "RUST_LOG=trace was not in effect"
    needles = {}
    for t in subject_tokens + issued:
        needles[f"token {t[:20]}..."] = t
        needles[f"signature {signature_segment(t)[:12]}..."] = signature_segment(t)
    pem_body = "".join(pem.strip().splitlines()[1:-1])
    for i in range(0, len(pem_body) - 40, 40):
        needles[f"pem chunk {i}"] = pem_body[i:i + 40]
    needles["jwk d"] = jwt.utils.base64url_encode(d).decode()
    leaks = [(name, where) for name, n in needles.items() for where, text in texts.items() if n in text]
    assert not leaks, f"secrets found in output: {leaks[:10]}"


def test_audit_verify_detects_edits(broker, mock_issuer, ephemera_bin, tmp_path):
    rejection_battery(broker, mock_issuer)
    assert broker.exchange(mock_issuer.token()).status == 200
    path = broker.audit_path
    res = run_cli(ephemera_bin, ["audit", "verify", str(path)])
    assert res.returncode == 0, res
    lines = path.read_text().splitlines()
    assert len(lines) > 10
    n = len(lines)

    head = Path(str(path) + ".head").read_text()

    def verify(new_lines, name):
        # the copy keeps the real head file beside it, as the log would have it
        p = tmp_path / f"{name}.jsonl"
        p.write_text("\n".join(new_lines) + "\n")
        Path(str(p) + ".head").write_text(head)
        return run_cli(ephemera_bin, ["audit", "verify", str(p)])

    # flip a deny into an allow in the middle
    edited = list(lines)
    i = next(k for k in range(1, n - 1) if '"decision":"deny"' in edited[k])
    edited[i] = edited[i].replace('"decision":"deny"', '"decision":"allow"', 1)
    res = verify(edited, "edited")
    assert res.returncode == 3, res
    assert f"line {i + 2}" in res.stderr, res.stderr
    # drop a line
    res = verify(lines[:3] + lines[4:], "dropped")
    assert res.returncode == 3, res
    # reorder two lines
    swapped = list(lines)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    assert verify(swapped, "swapped").returncode == 3
    # a whitespace-only change to a record is an edit too
    spaced = list(lines)
    spaced[1] = spaced[1].replace(":", ": ", 1)
    assert verify(spaced, "spaced").returncode == 3
    # twin: an untouched copy verifies
    assert verify(lines, "copy").returncode == 0


@pytest.mark.parametrize("how", ["edit_last", "drop_last"])
def test_audit_verify_detects_edit_of_last_record(broker, mock_issuer, ephemera_bin, tmp_path, how):
    assert broker.exchange(mock_issuer.token()).status == 200
    assert broker.exchange(mock_issuer.token(ref="refs/heads/dev")).status == 400
    lines = broker.audit_path.read_text().splitlines()
    assert run_cli(ephemera_bin, ["audit", "verify", str(broker.audit_path)]).returncode == 0
    if how == "edit_last":
        assert '"decision":"deny"' in lines[-1]
        lines[-1] = lines[-1].replace('"decision":"deny"', '"decision":"allow"', 1)
    else:
        lines = lines[:-1]
    p = tmp_path / "tampered.jsonl"
    p.write_text("\n".join(lines) + "\n")
    # the head file the broker kept, copied as it is: the tampering must be seen against it
    Path(str(p) + ".head").write_text(Path(str(broker.audit_path) + ".head").read_text())
    res = run_cli(ephemera_bin, ["audit", "verify", str(p)])
    assert res.returncode == 3, res
    assert "last record" in res.stderr, res.stderr


def test_audit_chain_survives_restart(broker_factory, mock_issuer, ephemera_bin):
    # b1's own audit invariant does not hold once b2 appends to the same file
    b1 = broker_factory(issuer=mock_issuer, check_invariants=False)
    assert b1.exchange(mock_issuer.token()).status == 200
    b1.stop()
    cfg = dict(b1.config)
    from harness import Broker
    b2 = Broker(ephemera_bin, b1.workdir / "again", cfg)
    try:
        assert b2.exchange(mock_issuer.token()).status == 200
    finally:
        b2.stop()
    res = run_cli(ephemera_bin, ["audit", "verify", str(b1.audit_path)])
    assert res.returncode == 0, res
    assert re.search(r"\b[0-9]+ records", res.stdout)
