"""A partner API that serves one incident record per broker JWT (examples/incident-reader.toml).

    python3 examples/incident_api.py --broker http://127.0.0.1:8080 \\
        --credential-file incident-api.token --listen 127.0.0.1:9000
    curl -H "Authorization: Bearer $ACCESS_TOKEN" http://127.0.0.1:9000/incidents/INC-1

`GET /incidents/<id>` with `Authorization: Bearer <broker JWT>`:
  1. introspects the token at the broker (`POST /v1/introspect`, its own introspection
     credential; no use is taken) and checks that its `authorization_details` name this record —
     a token for another record is refused here and keeps its use;
  2. consumes it (`consume=true`: the broker atomically takes one use; of two requests racing
     with a one-use token, one wins) and answers the record, or 403 once the uses are gone.
The broker only shows this API tokens of its own audience (`incident-api`); any other token, and
a revoked or expired one, is `{"active": false}`.

Standard library only. The records are a dict; a real API would keep them elsewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DETAIL_TYPE = "incident_record"
RECORDS = {
    "INC-1": {"id": "INC-1", "title": "Checkout latency above SLO", "severity": "high", "status": "mitigated"},
    "INC-2": {"id": "INC-2", "title": "Status page certificate expired", "severity": "medium", "status": "resolved"},
}
_PATH = re.compile(r"^/incidents/([A-Za-z0-9-]{1,64})$")


class BrokerUnavailable(Exception):
    pass


class Broker:
    """The broker's introspection endpoint, called with this API's own credential."""

    def __init__(self, url: str, credential: str, timeout: float = 10):
        self.url = url.rstrip("/")
        self._credential = credential
        self.timeout = timeout

    def introspect(self, token: str, consume: bool = False) -> dict:
        form = {"token": token}
        if consume:
            form["consume"] = "true"
        req = urllib.request.Request(
            self.url + "/v1/introspect",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Bearer {self._credential}", "Accept": "application/json",
                     "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                answer = json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            # (an HTTPError is a URLError: a 401 here means this API's credential is wrong)
            raise BrokerUnavailable(f"introspection failed: {type(e).__name__}") from None
        if not isinstance(answer, dict):
            raise BrokerUnavailable("introspection answered something other than a JSON object")
        return answer


def granted_records(claims: dict) -> set[str]:
    """The record ids the token's `authorization_details` name (a string or a list of them)."""
    out: set[str] = set()
    for detail in claims.get("authorization_details") or []:
        if not isinstance(detail, dict) or detail.get("type") != DETAIL_TYPE:
            continue
        value = detail.get("record_id")
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        out.update(v for v in values if isinstance(v, str))
    return out


def authorize(broker: Broker, token: str, record_id: str) -> tuple[int, str, str]:
    """(200, "", "") when the token may read `record_id` and one of its uses was taken now; else
    the status, the error code and why."""
    claims = broker.introspect(token)  # takes no use
    if claims.get("active") is not True:
        return 403, "invalid_token", "the token is not active (used up, revoked, expired, or not for this API)"
    if record_id not in granted_records(claims):
        return 403, "insufficient_scope", "the token does not name this record"  # and its use is kept
    if "max_uses" not in claims:
        return 403, "invalid_token", "this API accepts use-limited tokens only"
    if record_id not in RECORDS:
        return 404, "not_found", "no such record"
    consumed = broker.introspect(token, consume=True)  # atomically takes one use
    if consumed.get("active") is not True:
        return 403, "invalid_token", "the token's uses are spent"
    if record_id not in granted_records(consumed):  # (the same token: cannot change)
        return 403, "insufficient_scope", "the token does not name this record"
    return 200, "", ""


def make_handler(broker: Broker):
    class Handler(BaseHTTPRequestHandler):
        server_version = "incident-api"

        def _send(self, status: int, body: dict, extra: dict | None = None):
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, error: str, description: str):
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            self._send(status, {"error": error, "error_description": description}, extra)

        def do_GET(self):
            m = _PATH.match(self.path)
            if not m:
                return self._error(404, "not_found", "GET /incidents/<id>")
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return self._error(401, "invalid_token", "a broker JWT is required (Authorization: Bearer)")
            record_id = m.group(1)
            try:
                status, error, why = authorize(broker, token.strip(), record_id)
            except BrokerUnavailable as e:
                return self._error(503, "temporarily_unavailable", str(e))
            if status == 200:
                return self._send(200, RECORDS[record_id])
            return self._error(status, error, why)

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--broker", required=True, help="the broker's base URL")
    p.add_argument("--credential-file", required=True, help="this API's introspection credential")
    p.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT (port 0: any free port)")
    args = p.parse_args(argv)
    with open(args.credential_file, encoding="utf-8") as f:
        credential = f.read().strip()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), make_handler(Broker(args.broker, credential)))
    server.daemon_threads = True
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
