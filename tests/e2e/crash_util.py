"""One broker configuration served by successive `ephemera serve` processes on the same config,
audit log and state file: ended with SIGTERM or SIGKILL and started again (test_durable_state.py).
Also a gate that pauses load threads, so that checks run on quiescent files."""

from __future__ import annotations

import threading
import types
from pathlib import Path

from harness import Broker, run_cli


class Served:
    """Successive broker processes on one config (`self.cfg`, shared with every process: a port
    the harness had to move stays moved). Each process has its own folder for its config copy,
    stdout and stderr; the audit log and the state file are the config's, shared by all."""

    def __init__(self, binary: Path, workdir: Path, cfg: dict, env: dict | None = None):
        self.binary = binary
        self.workdir = Path(workdir)
        self.cfg = cfg
        self.env = env
        self.runs: list[Broker] = []
        self._spawn()

    @property
    def current(self) -> Broker:
        return self.runs[-1]

    @property
    def audit_path(self) -> Path:
        return Path(self.cfg["audit"]["path"])

    @property
    def state_path(self) -> Path:
        """The file backend's file: `[state] path`, else the audit log's path with `.state`."""
        explicit = (self.cfg.get("state") or {}).get("path")
        return Path(explicit) if explicit else Path(str(self.audit_path) + ".state")

    def _spawn(self) -> Broker:
        self.runs.append(Broker(self.binary, self.workdir / f"run{len(self.runs)}", self.cfg, env=self.env))
        return self.current

    def end(self, how: str) -> int:
        """Ends the current process: `term` (SIGTERM, a graceful stop) or `kill` (SIGKILL, no
        chance to flush anything). Returns its exit status."""
        b = self.current
        assert b.proc is not None and b.proc.poll() is None, "the broker is not running"
        if how == "kill":
            b.proc.kill()
            b.proc.wait(timeout=10)
        else:
            assert how == "term", how
        b.stop()  # SIGTERM and wait; for a killed process only closes its files
        return b.proc.returncode

    def restart(self, how: str) -> Broker:
        """Ends the current process (`term` or `kill`) and starts a new one on the same files."""
        self.end(how)
        return self._spawn()

    def start_again(self) -> Broker:
        """Starts a new process after `end` (the files may have been changed in between)."""
        assert self.current.proc.poll() is not None, "the broker is still running"
        return self._spawn()

    def responses(self) -> list:
        return [x for b in self.runs for x in b.responses]

    def stderr(self) -> str:
        return "".join(b.stderr() for b in self.runs)

    def check_audit_invariants(self):
        """The harness's audit invariants over every answer of every process against the one
        log (a `revoke` record is an admin decision, no /v1/token answer: left out)."""
        recs = [r for r in self.current.audit() if r["decision"] != "revoke"]
        Broker.check_audit_invariants(types.SimpleNamespace(audit=lambda: recs, responses=self.responses()))

    def close(self):
        for b in self.runs:
            b.stop()


def audit_verify(binary: Path, path: Path):
    """`ephemera audit verify PATH` (exit 0: the chain and its head agree)."""
    return run_cli(binary, ["audit", "verify", str(path)])


class Gate:
    """Pauses worker threads between two requests. Workers call `passage()` before each request;
    `close()` returns once every worker is held there, so nothing is in flight; `open()` lets them
    go on. `stop()` ends them."""

    def __init__(self, workers: int):
        self.workers = workers
        self._cond = threading.Condition()
        self._closed = False
        self._held = 0
        self.stopped = False

    def passage(self) -> bool:
        """Waits while the gate is closed; False once the workers are to stop."""
        with self._cond:
            while self._closed and not self.stopped:
                self._held += 1
                self._cond.notify_all()
                self._cond.wait()
                self._held -= 1
            return not self.stopped

    def close(self, timeout: float = 60):
        with self._cond:
            self._closed = True
            ok = self._cond.wait_for(lambda: self._held == self.workers or self.stopped, timeout=timeout)
        assert ok, f"workers still busy after {timeout}s"

    def open(self):
        with self._cond:
            self._closed = False
            self._cond.notify_all()

    def stop(self):
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
