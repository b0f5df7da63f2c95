"""One measured cell: wrk on core 1 against a server on core 0, with the CPU of everything on the
machine accounted for over the cell (the server's, wrk's, the kernel threads', and the rest)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import runtime
from targets import ROLE, Target

LUA = Path(__file__).resolve().parent / "bench.lua"


@dataclass
class Cell:
    phase: str  # warmup | main | variant | rss
    target: str
    round: int
    conc: int
    tokens_given: int
    wall_s: float = 0.0
    exchanges: int = 0
    rate: float = 0.0  # exchanges per second (chains for openbao-chain)
    http_requests: int = 0
    http_rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    errors: int = 0  # non-2xx answers plus socket errors and timeouts
    statuses: dict[str, int] = field(default_factory=dict)
    tokens_used: int = 0
    busiest_thread: float = 0.0  # the busiest thread's share of the assertions, over the mean share
    ran_out_threads: int = 0
    server_cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    kernel_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0
    foreign_per_s: float = 0.0
    discarded: bool = False
    memory_kb: dict[str, int] | None = None

    @property
    def per_cpu_s(self) -> float:
        """Exchanges per server CPU-second."""
        return self.exchanges / self.server_cpu_s if self.server_cpu_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_cpu_s": self.per_cpu_s}


def wrk_command(target: Target, conc: int, duration: float, tokens: Path) -> list[str]:
    return ["taskset", "-c", runtime.CLIENT_CORE, "wrk", "-t", str(conc), "-c", str(conc),
            "-d", f"{duration:g}s", "--timeout", "10s", "--latency", "-s", str(LUA), target.url,
            "--", target.mode, str(tokens), ROLE]


def _wrk_result(stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line[len("BENCH_JSON "):]))
    raise RuntimeError(f"wrk printed no result\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}")


def _fill_from_wrk(cell: Cell, r: dict[str, Any]) -> None:
    duration_s = r["duration_us"] / 1e6
    # wrk runs until -d even when every thread has spent its slice; rate over the time they ran
    active_s = r["ran_out_after_s"] if r["ran_out_threads"] == cell.conc and r["ran_out_after_s"] > 0 else duration_s
    cell.exchanges, cell.http_requests = r["ok"], r["requests"]
    cell.rate, cell.http_rate = r["ok"] / active_s, r["requests"] / active_s
    cell.p50_ms, cell.p99_ms, cell.p999_ms = r["p50_us"] / 1e3, r["p99_us"] / 1e3, r["p999_us"] / 1e3
    for per_thread in r["statuses"]:
        for status, n in per_thread.items():
            cell.statuses[status] = cell.statuses.get(status, 0) + n
    sockets = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    if sockets:
        cell.statuses["socket/timeout"] = sockets
    cell.errors = r["bad"] + sockets
    cell.tokens_used, cell.ran_out_threads = r["used"], r["ran_out_threads"]
    cell.busiest_thread = r["max_used"] * cell.conc / r["used"] if r["used"] else 1.0


def run_cell(cell: Cell, target: Target, duration: float, tokens: Path, foreign_limit: float) -> Cell:
    cmd = wrk_command(target, cell.conc, duration, tokens)
    own_root = {os.getpid()}
    before, wrk_before, t0 = runtime.snapshot(), runtime.children_cpu_s(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    t1, wrk_after, after = time.monotonic(), runtime.children_cpu_s(), runtime.snapshot()
    _fill_from_wrk(cell, _wrk_result(done.stdout, done.stderr))
    server = runtime.descendants(after, target.pids)
    own = runtime.descendants(after, own_root)
    kernel = runtime.kernel_threads(after)
    cell.wall_s = t1 - t0
    cell.server_cpu_s = runtime.cpu_delta(before, after, server)
    cell.wrk_cpu_s = wrk_after - wrk_before
    cell.kernel_cpu_s = runtime.cpu_delta(before, after, kernel)
    cell.foreign_cpu_s = max(0.0, after.busy_s - before.busy_s - runtime.cpu_delta(before, after, own)
                             - cell.wrk_cpu_s - cell.kernel_cpu_s)
    cell.foreign_per_s = cell.foreign_cpu_s / cell.wall_s
    cell.discarded = cell.foreign_per_s > foreign_limit
    if target.name.startswith("ephemera"):
        cell.memory_kb = runtime.memory_kb(target.main_pid)
    return cell
