"""A hung issuer (fault review, test 4b; issue 14): the mock issuer is SIGSTOPped, so the kernel
still accepts the broker's connections and nothing ever answers them. The broker's key fetches
then hang for their whole `jwks.fetch_timeout` (30 s here, so that a request held by one would
show). Within the stale window, requests whose kid is in the keys at hand are answered from them
(waiting at most 500 ms for the refresh); past it the provider fails closed (503
`keys_unavailable`); an unknown kid is 503 `keys_unavailable` (retryable: the issuer could not
be asked), not 400 `unknown_key`; after SIGCONT the provider recovers without a restart. Its twin:
a second provider of the same broker, on a live issuer, is served throughout.

Tokens for the hung issuer are signed here, with its private key read before the hang (the mock
cannot sign while stopped). Each test prints its figures: answers by status and the longest
answer, per phase."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import jwt
import requests
from jwt.algorithms import RSAAlgorithm

from harness import (
    DEFAULT_CONDITIONS,
    LocalKey,
    good_claims,
    provider,
    role,
    wait_until,
)

# 1 s TTL and cooldown, 8 s stale window: the keys fetched at t serve until t + 9 s (whole
# seconds at the broker); a fetch_timeout of 30 s, longer than the whole hang, so a request that
# waited for a hung fetch would stand out.
JWKS = {"default_ttl": "1s", "min_ttl": "1s", "refresh_cooldown": "1s", "stale_window": "8s",
        "fetch_timeout": "30s"}
TTL_PLUS_STALE = 9
HANG = 12.5  # seconds of load while the issuer is stopped
# A liveness bound, not a benchmark: far below the 30 s fetch timeout, far above any answer from
# keys at hand (500 ms at most, by design).
LIVENESS = 10.0
CLIENT_TIMEOUT = 12.0  # a request held past this (past LIVENESS) is recorded as a client timeout


class Signer:
    """Signs tokens as the mock issuer's `k1`, without the mock (which cannot sign while stopped)."""

    def __init__(self, issuer):
        self.issuer = issuer.issuer
        self.key = RSAAlgorithm.from_jwk(json.dumps(issuer.jwk("k1", private=True)))

    def token(self) -> str:
        return jwt.encode(good_claims(self.issuer, exp=int(time.time()) + 600), self.key,
                          algorithm="RS256", headers={"typ": "JWT", "kid": "k1"})


def stop(issuer):
    os.kill(issuer.proc.pid, signal.SIGSTOP)


def cont(issuer):
    if issuer.alive:
        os.kill(issuer.proc.pid, signal.SIGCONT)


def answer(broker, token, role_name="deploy", session=None, timeout=CLIENT_TIMEOUT):
    """(sent, status, reason, latency, Retry-After) of one exchange; a client timeout is
    ("timeout", None) with the time waited."""
    sent = time.time()
    try:
        r = broker.exchange(token, role_name, session=session, timeout=timeout)
    except requests.Timeout:
        return (sent, "timeout", None, time.time() - sent, None)
    return (sent, r.status, r.reason if r.status != 200 else "ok", r.elapsed, r.headers.get("Retry-After"))


class Load:
    """Client threads, each on its own connection, exchanging fresh tokens until stopped."""

    def __init__(self, broker, make_token, role_name="deploy", threads=2, pace=0.05,
                 timeout=CLIENT_TIMEOUT):
        self.rows: list[tuple] = []
        self.timeout = timeout
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(broker, make_token, role_name, pace))
                        for _ in range(threads)]

    def _run(self, broker, make_token, role_name, pace):
        with requests.Session() as s:
            while not self.done.is_set():
                row = answer(broker, make_token(), role_name, session=s, timeout=self.timeout)
                with self.lock:
                    self.rows.append(row)
                self.done.wait(pace)  # a poll interval, so the 503 phase is not a busy loop

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 10)


def figures(rows) -> dict:
    by = Counter(f"{st}:{reason}" for _, st, reason, _, _ in rows)
    return {"answers": len(rows), "by_status": dict(sorted(by.items())),
            "max_latency_ms": round(max((lat for *_, lat, _ in rows), default=0) * 1000, 1)}


def print_figures(title, phases: dict):
    print(f"\n{title}")
    for name, rows in phases.items():
        print(f"  {name:<28} {json.dumps(figures(rows))}")


def test_a_hung_issuer_degrades_then_fails_closed_then_recovers(broker_factory, mock_issuer):
    b = broker_factory(issuer=mock_issuer, jwks=JWKS, server={"rate_limit_per_second": 0})
    signer = Signer(mock_issuer)
    unknown = LocalKey("not-published")  # a kid the issuer does not publish
    t_before = time.time()
    first = b.exchange(signer.token())
    t_fetched = time.time()
    assert first.status == 200, first
    assert mock_issuer.fetches() == (1, 1), mock_issuer.counts()
    # The keys were fetched at a whole second in [t_before, t_fetched]: they serve at least
    # until int(t_before) + 9 s and at most until int(t_fetched) + 9 s. Requests sent a second
    # inside either bound are judged; those in between may get either answer.
    within_until = int(t_before) + TTL_PLUS_STALE - 1.0
    closed_from = int(t_fetched) + TTL_PLUS_STALE + 1.0

    stop(mock_issuer)
    unknown_rows = []
    try:
        with Load(b, signer.token) as load:
            # an unknown kid once the first refresh is under way and hung (keys due by age at 1 s)
            wait_until(lambda: time.time() > t_fetched + 3, timeout=10, interval=0.05,
                       what="the first refresh under way")
            unknown_rows.append(answer(b, unknown.sign(good_claims(mock_issuer.issuer))))
            # and once more past the stale window
            wait_until(lambda: time.time() > closed_from, timeout=HANG + 5, interval=0.05,
                       what="past the stale window")
            unknown_rows.append(answer(b, unknown.sign(good_claims(mock_issuer.issuer))))
            wait_until(lambda: time.time() > t_fetched + HANG, timeout=HANG + 5, interval=0.05,
                       what="the end of the hang")
        hung = sorted(load.rows)
        assert b.proc.poll() is None, "the broker died during the hang"
    finally:
        cont(mock_issuer)

    # the issuer answers again: the same broker process serves again, and an unknown kid is
    # refused for what it is (the issuer could be asked)
    t_cont = time.time()
    recovery = []

    def served():
        recovery.append(answer(b, signer.token()))
        return recovery[-1][1] == 200

    wait_until(served, timeout=30, interval=0.2, what="a 200 after SIGCONT")
    t_recovered = time.time() - t_cont
    unknown_after = [answer(b, unknown.sign(good_claims(mock_issuer.issuer)))]

    within = [r for r in hung if r[0] < within_until]
    edge = [r for r in hung if within_until <= r[0] < closed_from]
    closed = [r for r in hung if r[0] >= closed_from]
    print_figures(
        f"hung issuer (SIGSTOP {HANG} s; ttl 1 s + stale_window 8 s; fetch_timeout 30 s; "
        f"recovered {t_recovered:.2f} s after SIGCONT, {len(recovery)} tries)",
        {"within stale window": within, "edge (either answer)": edge, "past stale window": closed,
         "unknown kid, hung": unknown_rows, "recovery (after SIGCONT)": recovery,
         "unknown kid, issuer back": unknown_after})

    # nothing waited for the hung fetch (it would have taken its 30 s fetch timeout)
    slow = [r for r in hung + unknown_rows if r[1] == "timeout" or r[3] >= LIVENESS]
    assert not slow, f"{len(slow)} requests held by the hung fetch: {slow[:5]}"
    # within the stale window: served from the keys at hand
    assert len(within) >= 4, f"too few requests within the stale window to judge: {figures(within)}"
    assert all(r[1] == 200 for r in within), f"not all 200 within the stale window: {figures(within)}"
    # past it: fail closed, retryable
    assert closed, f"no request past the stale window: {figures(hung)}"
    assert all((r[1], r[2]) == (503, "keys_unavailable") and r[4] for r in closed), \
        f"past the stale window every answer should be 503 keys_unavailable with Retry-After: {figures(closed)}"
    # and no 200 once a 503 came (whatever the thread)
    first_503_done = min(r[0] + r[3] for r in hung if r[1] == 503)
    late_ok = [r for r in hung if r[1] == 200 and r[0] >= first_503_done]
    assert not late_ok, f"200 after the provider failed closed: {late_ok[:5]}"
    # an unknown kid while the issuer hangs: retryable 503, never the permanent-looking 400
    for r in unknown_rows:
        assert (r[1], r[2]) == (503, "keys_unavailable") and r[4], f"unknown kid while hung: {r}"
    # recovery without a restart; the twin of the unknown-kid 503: unknown_key once it can be asked
    assert recovery[-1][1] == 200
    assert (unknown_after[0][1], unknown_after[0][2]) == (400, "unknown_key"), unknown_after
    assert b.proc.poll() is None


def test_a_provider_on_a_live_issuer_is_unaffected_by_a_hung_one(broker_factory, mock_factory):
    """Twin: the same broker has a second provider on a live issuer, with the same 1 s TTL (so it
    refetches all along); while the first issuer hangs, through and past its stale window, the
    live provider answers 200 every time, and its refreshes go on. (One client keeps the hung
    provider's refresh under way; how that provider answers is the test above.)"""
    hung_iss, live_iss = mock_factory(), mock_factory()
    providers = [provider("mock", hung_iss.issuer), provider("live", live_iss.issuer)]
    roles = [role("deploy", "mock"), role("live", "live", conditions=dict(DEFAULT_CONDITIONS))]
    b = broker_factory(providers, roles, jwks=JWKS, server={"rate_limit_per_second": 0})
    hung_signer, live_signer = Signer(hung_iss), Signer(live_iss)
    assert b.exchange(hung_signer.token()).status == 200
    assert b.exchange(live_signer.token(), "live").status == 200
    t_fetched = time.time()
    live_fetches = live_iss.fetches()[1]

    stop(hung_iss)
    try:
        with Load(b, live_signer.token, "live") as live, Load(b, hung_signer.token, threads=1,
                                                                       timeout=3) as hung:
            wait_until(lambda: time.time() > t_fetched + TTL_PLUS_STALE + 2, timeout=HANG + 5,
                       interval=0.05, what="past the hung provider's stale window")
        assert b.proc.poll() is None
    finally:
        cont(hung_iss)
    refetched = live_iss.fetches()[1] - live_fetches

    print_figures(f"live provider beside a hung one ({refetched} JWKS fetches of the live issuer "
                  "during the hang)", {"live provider": sorted(live.rows), "hung provider": sorted(hung.rows)})
    assert len(live.rows) >= 10, figures(live.rows)
    assert all(r[1] == 200 and r[3] < LIVENESS for r in live.rows), \
        f"the live provider was affected: {figures(live.rows)}"
    # its keys were refreshed during the hang (not held behind the hung provider's fetch)
    assert refetched >= 3, refetched
    # and the hang was real: the hung provider did not answer 200 throughout (503 past its stale
    # window, or held by its fetch)
    assert any(r[1] != 200 for r in hung.rows), figures(hung.rows)
