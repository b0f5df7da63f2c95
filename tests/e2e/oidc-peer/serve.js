// A third-party OIDC issuer for tests/e2e/test_oidc_peer.py: oauth2-mock-server (pinned in
// package.json / package-lock.json) on a loopback port. Its own code serves discovery, the JWKS and
// signs every token; this script only starts it, counts the requests it answers, and takes
// commands from the test on stdin, one JSON object a line, answering one JSON line on stdout:
//
//   {"op": "token", "kid": K, "claims": {...}, "expires_in": N}  -> {"token": JWT}
//       issuer.buildToken() with the key K; `claims` are set on the payload it builds
//       (iss, iat, nbf, exp are the library's own unless `claims` names them)
//   {"op": "generate", "alg": A, "kid": K}                         -> {"kid": K}
//       a new key in the issuer's key store: from now on it is in the served JWKS (rotation)
//   {"op": "counts"}                                               -> {"/jwks": n, ...}
//
// Start: `node serve.js [RSA_KID ES_KID]`; the first line on stdout is {"ready": true, "port": P,
// "issuer": URL}.
// End of stdin (the test ended or died) stops the server.

import http from 'node:http';
import readline from 'node:readline';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const [rsaKid = 'rsa-1', ecKid = 'ec-1'] = process.argv.slice(2);

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256', { kid: rsaKid });
await issuer.keys.generate('ES256', { kid: ecKid });
const service = new OAuth2Service(issuer);
const handler = service.requestHandler;

const counts = {};
const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  counts[path] = (counts[path] ?? 0) + 1;
  handler(req, res);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
// The library names an issuer on 127.0.0.1 `http://localhost:PORT`; the broker is given the
// address it listens on.
issuer.url = `http://127.0.0.1:${port}`;

const answer = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

async function run(cmd) {
  switch (cmd.op) {
    case 'token':
      return {
        token: await issuer.buildToken({
          kid: cmd.kid,
          expiresIn: cmd.expires_in ?? 300,
          scopesOrTransform: (_header, payload) => Object.assign(payload, cmd.claims ?? {}),
        }),
      };
    case 'generate':
      return { kid: (await issuer.keys.generate(cmd.alg, { kid: cmd.kid })).kid };
    case 'counts':
      return counts;
    default:
      return { error: `unknown op ${cmd.op}` };
  }
}

// One command at a time, answered in order.
let queue = Promise.resolve();
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  queue = queue.then(async () => {
    try {
      answer(await run(JSON.parse(line)));
    } catch (e) {
      answer({ error: String(e && e.message ? e.message : e) });
    }
  });
});
lines.on('close', () => queue.then(() => server.close(() => process.exit(0))));

answer({ ready: true, port, issuer: issuer.url });
