#!/usr/bin/env python3
"""The benchmark's OIDC issuer: static discovery and JWKS documents on 127.0.0.1.

    python issuer.py --dir DIR

DIR holds `jwks.json` (the RSA-2048 signing key and a P-256 key) and, optionally,
`jwks100.json` (the signing key and 99 more RSA keys), both written by the orchestrator.
Prints `READY <port>` once it listens; the discovery document names `http://127.0.0.1:<port>`
as the issuer and `<issuer>/jwks` as `jwks_uri`. Standard library only.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DOCUMENTS = {"/jwks": "jwks.json", "/jwks100": "jwks100.json"}


def make_handler(bodies: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
            pass

        def do_GET(self) -> None:
            body = bodies.get(self.path)
            self.send_response(200 if body is not None else 404)
            body = body if body is not None else b'{"error":"not found"}'
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    discovery = {
        "issuer": issuer,
        "jwks_uri": issuer + "/jwks",
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }
    bodies = {"/.well-known/openid-configuration": json.dumps(discovery).encode()}
    for path, name in DOCUMENTS.items():
        if (args.dir / name).is_file():
            bodies[path] = (args.dir / name).read_bytes()
    server.RequestHandlerClass = make_handler(bodies)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
