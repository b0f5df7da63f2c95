"""Unique RS256 assertions, minted ahead of the measurement and handed out in disjoint slices.

Every assertion has its own `jti` (run id + a counter that only grows), so no assertion is ever
presented twice across cells, targets or rounds. A slice is one file per wrk thread
(`DIR/<thread>`, one token per line); `mint()` signs everything reserved since the last call on
two processes (PyJWT over cryptography: ~4k RS256 signatures per second per core).
"""

from __future__ import annotations

import multiprocessing
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

REPOSITORIES = 1000  # repository acme/app-N, N = counter mod this
LIFETIME_S = 7200  # exp - iat; the providers allow 3 h
CHUNK = 2000


@dataclass(frozen=True)
class Minter:
    key_pem: bytes
    kid: str
    issuer: str
    audience: str
    run_id: str

    def claims(self, i: int, now: int) -> dict[str, Any]:
        n = i % REPOSITORIES
        return {
            "iss": self.issuer, "aud": self.audience,
            "sub": f"repo:acme/app-{n}:ref:refs/heads/main",
            "repository": f"acme/app-{n}", "repository_owner": "acme", "ref": "refs/heads/main",
            "jti": f"{self.run_id}-{i}", "iat": now, "nbf": now, "exp": now + LIFETIME_S,
        }


_minter: Minter | None = None
_key: Any = None


def _load(minter: Minter) -> None:
    global _minter, _key
    _minter = minter
    _key = serialization.load_pem_private_key(minter.key_pem, password=None)


def _init_worker(minter: Minter) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the orchestrator's handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the orchestrator's to handle
    _load(minter)


def _sign(job: tuple[str, int, int]) -> tuple[str, str]:
    path, start, count = job
    assert _minter is not None
    now = int(time.time())
    headers = {"kid": _minter.kid}
    lines = [jwt.encode(_minter.claims(i, now), _key, algorithm="RS256", headers=headers)
             for i in range(start, start + count)]
    return path, "\n".join(lines) + "\n"


class TokenPool:
    def __init__(self, root: Path, key_pem: bytes, kid: str, issuer: str, audience: str):
        self.root = root
        self.minter = Minter(key_pem, kid, issuer, audience, secrets.token_hex(4))
        self.next = 0
        self.pending: list[tuple[str, int, int]] = []

    def reserve(self, name: str, threads: int, per_thread: int) -> Path:
        """A directory of `threads` files of `per_thread` fresh assertions, filled by mint()."""
        d = self.root / name
        d.mkdir(parents=True)
        for t in range(threads):
            path = str(d / str(t))
            open(path, "w").close()
            for start in range(0, per_thread, CHUNK):
                self.pending.append((path, self.next + start, min(CHUNK, per_thread - start)))
            self.next += per_thread
        return d

    def mint(self) -> tuple[int, float]:
        """Signs every reserved assertion; answers (how many, seconds)."""
        jobs, self.pending = self.pending, []
        count = sum(j[2] for j in jobs)
        t0 = time.monotonic()
        with multiprocessing.Pool(2, initializer=_init_worker, initargs=(self.minter,)) as pool:
            for path, text in pool.imap_unordered(_sign, jobs):
                with open(path, "a") as f:
                    f.write(text)
        return count, time.monotonic() - t0

    def take(self, n: int) -> list[str]:
        """`n` fresh assertions signed here (probes)."""
        _load(self.minter)
        start, self.next = self.next, self.next + n
        return _sign(("", start, n))[1].split()

    @staticmethod
    def release(d: Path) -> None:
        shutil.rmtree(d, ignore_errors=True)
