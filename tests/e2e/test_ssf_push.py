"""Revocation pushed to partners (issue 15 part D): `[[events.receivers]]` are told of every revoked
live grant of their audience by a CAEP `session-revoked` Security Event Token (RFC 8417), pushed
over HTTP (RFC 8935) from a durable outbox: one SET per (grant, receiver), retried with backoff on
5xx and connection errors, never on a 400, kept across a restart by the file backend; each
outcome audited once (a `revoke` record whose `delivery_id` is the SET's jti and whose detail
names the SET, the grant and the receiver's audience: `delivered: …`, `not delivered (…): …`,
`gave up after N tries: …`). `GET /.well-known/ssf-configuration` describes the transmitter.

The receivers are small HTTP servers in this process (threads on loopback), each answering from a
script; the SETs they record are verified with PyJWT against the broker's published JWKS.
"""

from __future__ import annotations

import json
import socket
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crash_util import Served
from harness import (
    GH_REPOSITORY_ID,
    HTTP_TIMEOUT,
    ID_TOKEN,
    Broker,
    broker_config,
    cloud_role,
    github_claims,
    github_provider,
    now,
    run_cli,
    to_toml,
    verify_broker_jwt,
    wait_until,
)

ADMIN_TOKEN = "admin-" + "s" * 40
RECEIVER_TOKEN = "receiver-" + "r" * 40
INCIDENT_API = "incident-api"
OTHER_API = "other-api"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
SSF_CONFIGURATION = "/.well-known/ssf-configuration"
# the spec's retry backoff starts at 1 s, doubling: three tries take ~3 s; generous for a loaded box
DELIVERY_TIMEOUT = 60


def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# ---- the receivers -------------------------------------------------------------------------------


class Receiver:
    """An RFC 8935 push endpoint on 127.0.0.1 (`endpoint`). Every POST is recorded (headers, body,
    the answer given). Answers come from `script` in order, then `default`: an HTTP status (202:
    accepted; 400: an RFC 8935 error body), or `"drop"` (the connection is closed unanswered, a
    connection error to the sender). With `token`, a request without `Authorization: Bearer
    <token>` is answered 401 (and recorded). With `start=False` the port is taken but nothing
    listens until `start()`: the endpoint refuses connections."""

    def __init__(self, *, token: str | None = None, script=(), default=202, port: int = 0, start: bool = True):
        self.token = token
        self.script = list(script)
        self.default = default
        self.received: list[dict] = []
        self._lock = threading.Lock()
        self._srv: ThreadingHTTPServer | None = None
        # until it listens, the port is held by a socket bound without listen(): connections to
        # it are refused, and no other process takes it in the meantime
        self._hold: socket.socket | None = socket.socket()
        self._hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._hold.bind(("127.0.0.1", port or 0))
        self.port = self._hold.getsockname()[1]
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/ssf/push"

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with receiver._lock:
                    if receiver.token is not None and \
                            self.headers.get("Authorization") != f"Bearer {receiver.token}":
                        answer = 401
                    else:
                        answer = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.received.append({"path": self.path,
                                              "headers": {k.lower(): v for k, v in self.headers.items()},
                                              "body": body, "answer": answer})
                if answer == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                payload = b""
                if answer in (400, 401):
                    err = "invalid_request" if answer == 400 else "authentication_failed"
                    payload = json.dumps({"err": err, "description": "refused by the test receiver"}).encode()
                self.send_response(answer)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        if self._hold is not None:
            self._hold.close()
            self._hold = None
        self._srv = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def seen(self) -> list[dict]:
        with self._lock:
            return list(self.received)

    def accepted(self) -> list[dict]:
        return [r for r in self.seen() if r["answer"] == 202]

    def config(self, audience: str) -> dict:
        """This receiver as an `[[events.receivers]]` entry (`token_file` written beside it)."""
        entry = {"audience": audience, "endpoint": self.endpoint}
        if self.token is not None:
            entry["token_file"] = str(self.token_file)
        return entry


@pytest.fixture
def receivers(tmp_path):
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        r = Receiver(**kw)
        if r.token is not None:
            r.token_file = tmp_path / f"receiver{len(made)}.token"
            r.token_file.write_text(r.token + "\n")
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# ---- the broker ----------------------------------------------------------------------------------


def roles() -> list[dict]:
    """`reader` (broker JWTs for incident-api) and `other` (for other-api), one GitHub provider."""
    return [cloud_role("reader", "gh", {"kind": "jwt", "audience": INCIDENT_API}),
            cloud_role("other", "gh", {"kind": "jwt", "audience": OTHER_API})]


def events(*entries: dict) -> dict:
    return {"events": {"receivers": list(entries)}}


def start(broker_factory, mock, tmp_path, *entries: dict) -> Broker:
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    return broker_factory(
        providers=[github_provider("gh", mock.issuer)],
        roles=roles(),
        server={"rate_limit_per_second": 0},
        extra_config={"admin": {"token_file": str(tmp_path / "admin.token")}, **events(*entries)},
        check_invariants=False,  # check_exchanges below: a revocation and its deliveries are `revoke` records
    )


def credential(b: Broker, mock, role: str, **claims) -> tuple[str, dict]:
    """A broker JWT from a fresh exchange, and its verified claims."""
    r = b.exchange(mock.sign(github_claims(mock.issuer, **claims)), role=role)
    assert r.status == 200, r
    token = r.json["access_token"]
    return token, verify_broker_jwt(b, token, audience=INCIDENT_API if role == "reader" else OTHER_API)


def revoke_task(b: Broker, run_id: str) -> tuple[str, dict]:
    """Revokes the task of GitHub run `run_id` (attempt 1) as the admin; the task and the
    revocation's audit record (its decision id is the SETs' `txn`, its `ts` their event time)."""
    task = f"{GH_REPOSITORY_ID}/{run_id}/1"
    r = requests.post(b.url + "/v1/revoke", data={"task": task, "provider": "gh"}, headers=admin(),
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["revoked"] == f"task:gh:{task}", r.text
    [rec] = [x for x in b.audit() if x["decision"] == "revoke" and x.get("detail") == f"revoked `task:gh:{task}`"]
    return task, rec


def introspect(b: Broker, token: str) -> dict:
    r = requests.post(b.url + "/v1/introspect", data={"token": token}, headers=admin(), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def verify_set(b: Broker, body: str, audience: str) -> tuple[dict, dict]:
    """A SET verified as a partner would: the broker's JWKS, ES256, `iss` and `aud`; its header
    and claims."""
    header = jwt.get_unverified_header(body)
    jwks = requests.get(b.url + "/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()
    assert header.get("kid") in [k.get("kid") for k in jwks["keys"]], (header, jwks)
    key = jwt.PyJWKClient(b.url + "/.well-known/jwks.json", cache_keys=False).get_signing_key_from_jwt(body)
    claims = jwt.decode(body, key.key, algorithms=["ES256"], audience=audience, issuer=b.issuer,
                        options={"require": ["iss", "aud", "iat", "jti"]})
    return header, claims


def check_set(b: Broker, request: dict, *, audience: str, grant: dict, revocation: dict, role: str,
              reason: str = "revoked by an admin") -> dict:
    """Everything part D says of one push and its SET; the SET's claims."""
    headers = request["headers"]
    assert request["path"] == "/ssf/push", request["path"]
    assert headers.get("content-type") == "application/secevent+jwt", headers
    assert headers.get("accept") == "application/json", headers
    header, claims = verify_set(b, request["body"], audience)
    assert header["typ"] == "secevent+jwt" and header["alg"] == "ES256", header
    assert set(claims) == {"iss", "aud", "iat", "jti", "txn", "sub_id", "events", "ephemera"}, claims
    assert claims["aud"] == audience, claims
    assert claims["txn"] == revocation["decision_id"], (claims, revocation)
    assert claims["sub_id"] == {"format": "opaque", "id": grant["jti"]}, claims
    assert set(claims["events"]) == {SESSION_REVOKED}, claims
    event = claims["events"][SESSION_REVOKED]
    assert set(event) == {"event_timestamp", "reason_admin"}, event
    assert event["event_timestamp"] == revocation["ts"], (event, revocation)
    assert set(event["reason_admin"]) == {"en"}, event
    assert event["reason_admin"]["en"] == reason, event
    assert claims["ephemera"] == {"task": grant["task"], "role": role, "provider": "gh"}, claims
    assert isinstance(claims["iat"], int) and revocation["ts"] <= claims["iat"] <= now() + 1, claims
    return claims


def deliveries(b: Broker, set_jti: str) -> list[dict]:
    """The audit records about SET `set_jti` (`revoke` records whose `delivery_id` is its jti)."""
    return [r for r in b.audit() if r["decision"] == "revoke" and r.get("delivery_id") == set_jti]


def described(rec: dict, set_jti: str, grant: dict, audience: str) -> bool:
    """The detail names the SET, the grant and the receiver's audience."""
    d = rec.get("detail") or ""
    return f"`{set_jti}`" in d and f"`{grant['jti']}`" in d and f"`{audience}`" in d


def delivered(b: Broker, set_jti: str) -> list[dict]:
    return [r for r in deliveries(b, set_jti) if r["detail"].startswith("delivered: ")]


def wait_delivered(b: Broker, set_jti: str, grant: dict, audience: str) -> dict:
    """The one audit record of the SET's delivery (part D: `revoke`, naming the receiver's
    audience, with the SET's jti)."""
    wait_until(lambda: delivered(b, set_jti), timeout=DELIVERY_TIMEOUT,
               what=f"the audit record of SET {set_jti} delivered to {audience}")
    [rec] = delivered(b, set_jti)
    # besides it, at most the record of its first failed try (a retried SET's first failure is
    # audited; later ones are only logged)
    others = [r for r in deliveries(b, set_jti) if r is not rec and r != rec]
    assert all(r["detail"].startswith("failed (") for r in others) and len(others) <= 1, others
    assert described(rec, set_jti, grant, audience), rec
    return rec


def check_exchanges(b: Broker):
    """The harness's audit invariants over the exchange records (the revocation and its
    deliveries are `revoke` records, no /v1/token answer)."""
    recs = [r for r in b.audit() if r["decision"] != "revoke"]
    Broker.check_audit_invariants(types.SimpleNamespace(audit=lambda: recs, responses=b.responses))


def figures(name: str, rs: list[Receiver]):
    for i, r in enumerate(rs):
        answers: dict = {}
        for x in r.seen():
            answers[str(x["answer"])] = answers.get(str(x["answer"]), 0) + 1
        print(f"{name}: receiver {i} answers by status {answers}")


# ---- one SET per revoked grant, to the receivers of its audience -----------------------------------


def test_a_revoked_grant_is_pushed_to_its_audiences_receiver_as_one_verified_set(
        broker_factory, mock_issuer, tmp_path, receivers):
    mine = receivers(token=RECEIVER_TOKEN)      # incident-api, with a bearer token
    theirs = receivers()                        # other-api, no token
    b = start(broker_factory, mock_issuer, tmp_path, mine.config(INCIDENT_API), theirs.config(OTHER_API))
    token, grant = credential(b, mock_issuer, "reader", run_id="5001")
    _, bystander = credential(b, mock_issuer, "reader", run_id="5002")  # another task: not revoked
    assert mine.seen() == [] and theirs.seen() == []  # nothing is pushed before a revocation

    task, revocation = revoke_task(b, "5001")
    assert grant["task"] == task
    wait_until(lambda: mine.accepted(), timeout=DELIVERY_TIMEOUT, what="a SET at the incident-api receiver")
    [push] = mine.seen()
    # the bearer token from the receiver's token_file (the receiver answers 401 without it)
    assert push["headers"].get("authorization") == f"Bearer {RECEIVER_TOKEN}", push["headers"]
    claims = check_set(b, push, audience=INCIDENT_API, grant=grant, revocation=revocation, role="reader")
    rec = wait_delivered(b, claims["jti"], grant, INCIDENT_API)
    assert rec["ts"] >= revocation["ts"], rec
    # exactly one SET: delivered at the first try, never again
    assert len(mine.seen()) == 1, mine.seen()
    assert introspect(b, token) == {"active": False}
    assert introspect(b, credential(b, mock_issuer, "reader", run_id="5002")[0])["active"] is True
    assert bystander["jti"] != grant["jti"]

    # the other audience's receiver was told nothing of it; its twin: a revoked grant of its own
    # audience is pushed to it (without an Authorization header: it has no token_file)
    _, theirs_grant = credential(b, mock_issuer, "other", run_id="5003")
    _, theirs_revocation = revoke_task(b, "5003")
    wait_until(lambda: theirs.accepted(), timeout=DELIVERY_TIMEOUT, what="a SET at the other-api receiver")
    [their_push] = theirs.seen()
    assert "authorization" not in their_push["headers"], their_push["headers"]
    their_claims = check_set(b, their_push, audience=OTHER_API, grant=theirs_grant,
                             revocation=theirs_revocation, role="other")
    wait_delivered(b, their_claims["jti"], theirs_grant, OTHER_API)
    assert their_claims["jti"] != claims["jti"]
    assert len(mine.seen()) == 1, "the incident-api receiver heard nothing of other-api's grant"
    figures("set_pushed", [mine, theirs])
    check_exchanges(b)


def test_each_live_grant_of_the_task_gets_its_own_set(broker_factory, mock_issuer, tmp_path, receivers):
    """One SET per (grant, receiver): two grants of the revoked task, two SETs with their own
    `sub_id` and `jti` and the revocation's one `txn`; a grant of another run gets none."""
    mine = receivers()
    b = start(broker_factory, mock_issuer, tmp_path, mine.config(INCIDENT_API))
    grants = [credential(b, mock_issuer, "reader", run_id="5101")[1] for _ in range(2)]
    other_token, _ = credential(b, mock_issuer, "reader", run_id="5102")
    _, revocation = revoke_task(b, "5101")
    wait_until(lambda: len(mine.accepted()) >= 2, timeout=DELIVERY_TIMEOUT, what="two SETs")
    pushes = mine.seen()
    sets = [verify_set(b, p["body"], INCIDENT_API)[1] for p in pushes]
    assert sorted(s["sub_id"]["id"] for s in sets) == sorted(g["jti"] for g in grants), sets
    by_grant = {s["sub_id"]["id"]: (p, s) for p, s in zip(pushes, sets)}
    for g in grants:
        p, _ = by_grant[g["jti"]]
        check_set(b, p, audience=INCIDENT_API, grant=g, revocation=revocation, role="reader")
    assert len({s["jti"] for s in sets}) == 2, "each SET has its own jti"
    for s in sets:
        wait_delivered(b, s["jti"], {"jti": s["sub_id"]["id"]}, INCIDENT_API)
    assert len(mine.seen()) == 2, mine.seen()
    assert introspect(b, other_token)["active"] is True  # the twin: the other run's grant is untouched
    figures("set_per_grant", [mine])
    check_exchanges(b)


def test_a_workload_ending_its_own_task_pushes_the_set_too(broker_factory, mock_issuer, tmp_path, receivers):
    """`POST /v1/revoke` by the workload (its fresh assertion of the task), not the admin."""
    mine = receivers()
    b = start(broker_factory, mock_issuer, tmp_path, mine.config(INCIDENT_API))
    _, grant = credential(b, mock_issuer, "reader", run_id="5201")
    task = f"{GH_REPOSITORY_ID}/5201/1"
    r = requests.post(b.url + "/v1/revoke", timeout=HTTP_TIMEOUT, data={
        "task": task, "subject_token": mock_issuer.sign(github_claims(mock_issuer.issuer, run_id="5201")),
        "subject_token_type": ID_TOKEN, "audience": "reader"})
    assert r.status_code == 200 and r.json()["revoked"] == f"task:gh:{task}", r.text
    [revocation] = [x for x in b.audit() if x["decision"] == "revoke" and x.get("detail") == f"revoked `task:gh:{task}`"]
    wait_until(lambda: mine.accepted(), timeout=DELIVERY_TIMEOUT, what="a SET")
    [push] = mine.seen()
    claims = check_set(b, push, audience=INCIDENT_API, grant=grant, revocation=revocation, role="reader",
                       reason="task ended by the workload")
    wait_delivered(b, claims["jti"], grant, INCIDENT_API)


# ---- retries -------------------------------------------------------------------------------------


def test_a_503_is_retried_until_accepted_and_a_400_is_not_retried(broker_factory, mock_issuer, tmp_path,
                                                                   receivers):
    """One revocation, two receivers: the incident-api one answers 503, 503, then 202 and gets the
    same SET on the third try; the other-api one answers 400 (an RFC 8935 error) and is never
    asked again. Its first retry (after 1 s) would have come before the third try of the other
    (after 1 + 2 s): once the third try is in, the 400 receiver has had its one request only."""
    flaky = receivers(script=[503, 503])
    refusing = receivers(default=400)
    b = start(broker_factory, mock_issuer, tmp_path, flaky.config(INCIDENT_API), refusing.config(OTHER_API))
    _, grant = credential(b, mock_issuer, "reader", run_id="5301")
    _, other_grant = credential(b, mock_issuer, "other", run_id="5301")  # the same task
    _, revocation = revoke_task(b, "5301")
    wait_until(lambda: flaky.accepted(), timeout=DELIVERY_TIMEOUT, what="the third try")
    pushes = flaky.seen()
    assert [p["answer"] for p in pushes] == [503, 503, 202], pushes
    assert len({verify_set(b, p["body"], INCIDENT_API)[1]["jti"] for p in pushes}) == 1, \
        "each try carries the same SET"
    claims = check_set(b, pushes[-1], audience=INCIDENT_API, grant=grant, revocation=revocation, role="reader")
    wait_delivered(b, claims["jti"], grant, INCIDENT_API)

    [refused] = refusing.seen()
    assert refused["answer"] == 400
    refused_claims = check_set(b, refused, audience=OTHER_API, grant=other_grant, revocation=revocation,
                               role="other")
    # the refusal is audited once, as not delivered, naming the receiver's error
    [failed] = wait_until(lambda: deliveries(b, refused_claims["jti"]), timeout=DELIVERY_TIMEOUT,
                          what="the refusal audited")
    assert failed["detail"].startswith("not delivered (") and "invalid_request" in failed["detail"], failed
    assert described(failed, refused_claims["jti"], other_grant, OTHER_API), failed
    assert len(flaky.seen()) == 3 and len(refusing.seen()) == 1
    figures("set_retries", [flaky, refusing])
    check_exchanges(b)


def test_a_set_is_given_up_once_its_grant_would_have_expired(broker_factory, mock_issuer, tmp_path, receivers):
    """A receiver that answers 503 forever: the same SET is retried until the grant it reports
    would have expired — the broker keeps trying at least a minute after the revocation
    (src/exchange/push.rs `sets_for`) — then given up, and that is audited."""
    down = receivers(default=503)
    b = start(broker_factory, mock_issuer, tmp_path, down.config(INCIDENT_API))
    t = now()
    _, grant = credential(b, mock_issuer, "reader", run_id="5401", iat=t, nbf=t, exp=t + 8)
    _, revocation = revoke_task(b, "5401")
    wait_until(lambda: len(down.seen()) >= 2, timeout=DELIVERY_TIMEOUT, what="a retry")
    set_jti = verify_set(b, down.seen()[0]["body"], INCIDENT_API)[1]["jti"]
    until = max(grant["exp"], revocation["ts"] + 60)
    # the try after `until` gives up; tries are at most a minute apart
    [first] = wait_until(lambda: deliveries(b, set_jti), timeout=DELIVERY_TIMEOUT, what="the first failed try audited")
    assert first["detail"].startswith("failed (HTTP 503), retried: "), first
    [rec] = wait_until(lambda: [r for r in deliveries(b, set_jti) if r["detail"].startswith("gave up ")],
                       timeout=until - now() + 60 + DELIVERY_TIMEOUT,
                       interval=0.5, what="giving up audited")
    assert rec["detail"].startswith("gave up after "), rec
    assert described(rec, set_jti, grant, INCIDENT_API), rec
    assert rec["ts"] >= grant["exp"], (rec, grant["exp"])
    tries = down.seen()
    assert len(tries) >= 2 and down.accepted() == []
    assert {verify_set(b, p["body"], INCIDENT_API)[1]["jti"] for p in tries} == {set_jti}, \
        "every try carries the same SET"
    figures("set_given_up", [down])


# ---- the outbox across a restart -----------------------------------------------------------------


@pytest.mark.parametrize("receiver_state,how", [("drop", "kill"), ("drop", "term"), ("down", "kill")])
def test_the_outbox_survives_a_restart(ephemera_bin, mock_factory, tmp_path, receivers, receiver_state, how):
    """File backend. The receiver cannot be reached while the task is revoked — it drops the
    connection (the broker's try is seen), or nothing listens on its port — and the broker is
    ended (SIGKILL or SIGTERM) and started again on the same state file. Once the receiver
    answers, the new process delivers the SET the old one queued."""
    mock = mock_factory()
    receiver = receivers(default="drop", start=receiver_state == "drop")
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    # the SETs in the outbox are signed when queued: the key must outlive the process, as a
    # deployment's does (without signing_key_file each process makes its own)
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "broker-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg = broker_config(tmp_path / "served", [github_provider("gh", mock.issuer)], roles(),
                        server={"rate_limit_per_second": 0, "signing_key_file": str(tmp_path / "broker-key.pem")})
    cfg["state"] = {"backend": "file"}
    cfg["admin"] = {"token_file": str(tmp_path / "admin.token")}
    cfg.update(events(receiver.config(INCIDENT_API)))
    s = Served(ephemera_bin, tmp_path / "served", cfg)
    try:
        b = s.current
        token, grant = credential(b, mock, "reader", run_id="5501")
        _, revocation = revoke_task(b, "5501")
        first_try = None
        if receiver_state == "drop":
            wait_until(lambda: receiver.seen(), timeout=DELIVERY_TIMEOUT, what="the broker's first try")
            first_try = verify_set(b, receiver.seen()[0]["body"], INCIDENT_API)[1]
        b = s.restart(how)
        receiver.default = 202
        if receiver_state == "down":
            receiver.start()
        wait_until(lambda: receiver.accepted(), timeout=DELIVERY_TIMEOUT, what="the SET after the restart")
        push = receiver.accepted()[0]
        claims = check_set(b, push, audience=INCIDENT_API, grant=grant, revocation=revocation, role="reader")
        if first_try is not None:
            assert claims["jti"] == first_try["jti"], "the same SET, from the outbox"
        wait_delivered(b, claims["jti"], grant, INCIDENT_API)
        assert len(receiver.accepted()) == 1
        assert introspect(b, token) == {"active": False}  # and the revocation itself was kept
        figures(f"outbox_{receiver_state}_{how}", [receiver])
        recs = [r for r in b.audit() if r["decision"] != "revoke"]
        Broker.check_audit_invariants(types.SimpleNamespace(audit=lambda: recs, responses=s.responses()))
    finally:
        s.close()


# ---- the transmitter's configuration -------------------------------------------------------------


def test_ssf_configuration_describes_the_push_transmitter(broker_factory, mock_issuer, tmp_path, receivers):
    b = start(broker_factory, mock_issuer, tmp_path, receivers().config(INCIDENT_API))
    r = requests.get(b.url + SSF_CONFIGURATION, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json"), dict(r.headers)
    assert r.json() == {
        "spec_version": "1_0",
        "issuer": b.issuer,
        "jwks_uri": b.issuer + "/.well-known/jwks.json",
        "delivery_methods_supported": ["urn:ietf:rfc:8935"],
        "events_supported": [SESSION_REVOKED],
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
    }, r.json()
    # the jwks_uri it names is the broker's published key set (the SETs verify under it above)
    keys = requests.get(r.json()["jwks_uri"], timeout=HTTP_TIMEOUT)
    assert keys.status_code == 200 and keys.json()["keys"], keys.text


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint,ok", [
    ("http://127.0.0.1:9/ssf/push", True),
    ("https://partner.example/ssf/push", True),
    ("http://partner.example/ssf/push", False),  # plain http off loopback
    ("ftp://127.0.0.1/ssf/push", False),
])
def test_a_receiver_endpoint_is_https_or_loopback_http(ephemera_bin, tmp_path, endpoint, ok):
    cfg = broker_config(tmp_path, [github_provider("gh", "https://token.actions.githubusercontent.com")], roles())
    cfg.update(events({"audience": INCIDENT_API, "endpoint": endpoint}))
    path = tmp_path / "receiver.toml"
    path.write_text(to_toml(cfg))
    res = run_cli(ephemera_bin, ["check", "--config", str(path)])
    if ok:
        assert res.returncode == 0, res
    else:
        assert res.returncode == 2, res
        assert "events.receivers[0].endpoint" in res.stderr, res.stderr
