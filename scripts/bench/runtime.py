"""Processes the benchmark starts (pinned, logged, always stopped) and CPU accounting from /proc."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CORE = "0"
CLIENT_CORE = "1"
_PR_SET_PDEATHSIG = 1


class StartError(Exception):
    """A process did not come up; the message carries its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # If the orchestrator is killed outright, the kernel still ends what it started.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              form: bool = False, timeout: float = 30) -> tuple[int, Any]:
    """One request; answers (status, decoded JSON or text). Never raises on an HTTP status."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if form:
            data = body.encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Processes:
    """Every process the benchmark starts, each logging to its own file; stop_all() ends them."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              core: str = SERVER_CORE) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            ["taskset", "-c", core, *argv], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def wait_line(self, name: str, prefix: str, timeout: float) -> str:
        """Waits for a line starting with `prefix` in the process's log; returns the line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(name)
            for line in self.log_path(name).read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
            time.sleep(0.05)
        raise StartError(f"{name}: no `{prefix}` line after {timeout:.0f}s\n{self.tail(name)}")

    def wait_http(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(name)
            try:
                if http_json("GET", url, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise StartError(f"{name}: {url} not answering 200 after {timeout:.0f}s\n{self.tail(name)}")

    def check_alive(self, name: str) -> None:
        code = self.procs[name].poll()
        if code is not None:
            raise StartError(f"{name} exited with status {code}\n{self.tail(name)}")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


# ------------------------------------------------------------------------------------------------
# CPU accounting


@dataclass(frozen=True)
class CpuSnapshot:
    busy_s: float  # all CPUs, from /proc/stat: user+nice+system+irq+softirq
    procs: dict[int, tuple[int, float]]  # pid -> (ppid, utime+stime seconds)


def _proc_stat(pid: str) -> tuple[int, float] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def snapshot() -> CpuSnapshot:
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    busy = (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6]) / CLK_TCK
    procs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (st := _proc_stat(pid)) is not None:
            procs[int(pid)] = st
    return CpuSnapshot(busy, procs)


def descendants(snap: CpuSnapshot, roots: set[int]) -> set[int]:
    found = set(roots) & snap.procs.keys()
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in snap.procs.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, pids: set[int]) -> float:
    return sum(after.procs[p][1] - before.procs.get(p, (0, 0.0))[1] for p in pids if p in after.procs)


def kernel_threads(snap: CpuSnapshot) -> set[int]:
    return {pid for pid, (ppid, _) in snap.procs.items() if pid == 2 or ppid == 2}


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def children_cpu_s() -> float:
    """CPU of reaped children (wrk), from getrusage."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
