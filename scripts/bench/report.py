"""The run's header (machine, versions, command), one line per cell, and the summary: medians over
the kept rounds, ratios, variants, memory, the crypto floor; also as JSON."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from measure import Cell
from targets import Env

PEERS = [("openbao-chain", "OpenBao chain"), ("openbao-login", "OpenBao login"), ("baseline", "baseline")]


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"unavailable ({e})"
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path`."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def _cpu_model() -> str:
    for line in _lscpu().splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return ""


def _mtime(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine(command: str, env: Env) -> dict[str, Any]:
    pkg = importlib.metadata.version
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": command,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "audit_fs": f"{fs_type(env.work)} ({env.work})",
        "ephemera_bin": f"{env.ephemera_bin} (modified {_mtime(env.ephemera_bin)})",
        "tree": _first_line(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"]),
        "versions": {
            "ephemera": _first_line([str(env.ephemera_bin), "--version"]),
            "openbao": _first_line([str(env.bao_bin), "version"]),
            "wrk": _first_line(["wrk", "-v"]),
            "python": sys.version.split()[0],
            "uvicorn": pkg("uvicorn"), "PyJWT": pkg("PyJWT"), "cryptography": pkg("cryptography"),
            "redis-server": _first_line(["redis-server", "--version"]),
        },
    }


def print_header(meta: dict[str, Any]) -> None:
    print("== Ephemera vs peers ==")
    print(f"date     {meta['date']}")
    print(f"command  {meta['command']}")
    print(f"machine  {meta['cpu']}, {meta['cores']} cores, kernel {meta['kernel']}")
    print(f"binary   {meta['ephemera_bin']}; source tree at {meta['tree']}")
    print(f"disk     audit logs and configs on {meta['audit_fs']}")
    if meta["audit_fs"].startswith("tmpfs"):
        print("WARNING  the run's directory is on tmpfs: fsync is nearly free there; use --workdir on a real disk")
    for name, version in meta["versions"].items():
        print(f"version  {name}: {version}")
    print("pinning  servers on core 0, wrk on core 1", flush=True)


def cell_line(c: Cell) -> str:
    flags = ""
    if c.errors:
        flags += f"  ERRORS {c.errors} {c.statuses}"
    if c.ran_out_threads:
        flags += f"  RAN OUT ({c.ran_out_threads}/{c.conc} threads spent their slice)"
    if c.discarded:
        flags += f"  DISCARDED (foreign load {c.foreign_per_s:.2f} CPU-s/s)"
    return (f"{c.phase} r{c.round} {c.target} c={c.conc}: {c.rate:.0f} ex/s "
            f"p50 {c.p50_ms:.2f} p99 {c.p99_ms:.2f} p99.9 {c.p999_ms:.2f} ms, "
            f"server {c.server_cpu_s:.2f} CPU-s ({c.per_cpu_s:.0f} ex/CPU-s), wrk {c.wrk_cpu_s:.2f}, "
            f"kernel {c.kernel_cpu_s:.2f}, foreign {c.foreign_per_s:.2f}/s{flags}")


# ------------------------------------------------------------------------------------------------
# summary


def _row(cells: list[Cell]) -> dict[str, Any]:
    kept = [c for c in cells if not c.discarded] or cells

    def med(attr: str) -> float:
        return float(statistics.median(getattr(c, attr) for c in kept))

    statuses: dict[str, int] = {}
    for c in cells:
        for k, n in c.statuses.items():
            statuses[k] = statuses.get(k, 0) + n
    return {
        "target": cells[0].target, "conc": cells[0].conc, "cells": len(cells),
        "kept": sum(not c.discarded for c in cells),
        "rate": med("rate"), "http_rate": med("http_rate"),
        "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "p999_ms": med("p999_ms"),
        "server_cpu_s": med("server_cpu_s"), "per_cpu_s": med("per_cpu_s"),
        "wrk_cpu_s": med("wrk_cpu_s"), "kernel_cpu_s": med("kernel_cpu_s"),
        "errors": sum(c.errors for c in cells), "statuses": statuses,
        "ran_out_cells": sum(c.ran_out_threads > 0 for c in cells),
    }


def _rows(cells: list[Cell], phase: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        if c.phase == phase:
            groups.setdefault((c.target, c.conc), []).append(c)
    return [_row(g) for g in groups.values()]


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["target"], r["conc"]): r for r in rows}
    out = []
    for (target, conc), e in sorted(by.items(), key=lambda kv: kv[0][1]):
        if target != "ephemera":
            continue
        for peer, label in PEERS:
            p = by.get((peer, conc))
            if p and p["per_cpu_s"] and p["rate"]:
                out.append({"conc": conc, "peer": peer, "label": f"Ephemera / {label}",
                            "per_cpu_s": e["per_cpu_s"] / p["per_cpu_s"], "rate": e["rate"] / p["rate"]})
    return out


def _floor(path: Path | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return {"missing": str(path)} if path else None
    floor = json.loads(path.read_text())
    out: dict[str, Any] = {"file": str(path), **floor}
    if "rs256_verify_ns" in floor and "es256_sign_ns" in floor:
        crypto = floor["rs256_verify_ns"] + floor["es256_sign_ns"]
        out["crypto_floor_us"] = crypto / 1e3
        out["crypto_ceiling_per_cpu_s"] = 1e9 / crypto
        eph = max((r for r in rows if r["target"] == "ephemera"), key=lambda r: r["conc"], default=None)
        if eph and eph["per_cpu_s"]:
            out["measured_conc"] = eph["conc"]
            out["measured_cpu_us_per_exchange"] = 1e6 / eph["per_cpu_s"]
            out["measured_x_floor"] = out["measured_cpu_us_per_exchange"] / out["crypto_floor_us"]
        if "exchange_ns" in floor:
            out["in_process_x_floor"] = floor["exchange_ns"] / crypto
            out["in_process_ceiling_per_s"] = 1e9 / floor["exchange_ns"]
        if floor.get("exchange_cpu_ns"):  # 32 at once on one thread, audit on tmpfs: CPU per exchange
            out["in_process_cpu_x_floor"] = floor["exchange_cpu_ns"] / crypto
            out["in_process_cpu_ceiling_per_cpu_s"] = 1e9 / floor["exchange_cpu_ns"]
    return out


def summarize(cells: list[Cell], args: argparse.Namespace, skipped: dict[str, str], failures: list[str],
              meta: dict[str, Any]) -> dict[str, Any]:
    main = _rows(cells, "main")
    variants = _rows(cells, "variant")
    default = {r["conc"]: r for r in variants if r["target"] == "ephemera"}
    for r in variants:
        d = default.get(r["conc"])
        r["per_cpu_vs_default"] = r["per_cpu_s"] / d["per_cpu_s"] if d and d["per_cpu_s"] else None
    last_main = [c for c in cells if c.phase == "main" and c.target == "ephemera"]
    rss = [c for c in cells if c.phase == "rss"]
    return {
        "meta": meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "main": main, "ratios": _ratios(main), "variants": variants,
        "skipped": skipped, "failures": failures,
        "memory": {
            "after_last_cell_kb": last_main[-1].memory_kb if last_main else None,
            "after_sustained_kb": rss[-1].memory_kb if rss else None,
            "sustained": rss[-1].as_dict() if rss else None,
        },
        "floor": _floor(args.floor_json, main),
        # the warm-up is unmeasured, and meant to run out; its errors are listed all the same
        "discarded": [_cell_ref(c) for c in cells if c.discarded and c.phase != "warmup"],
        "with_errors": [_cell_ref(c) | {"statuses": c.statuses} for c in cells if c.errors],
        "ran_out": [_cell_ref(c) | {"threads": c.ran_out_threads} for c in cells
                    if c.ran_out_threads and c.phase != "warmup"],
    }


def _cell_ref(c: Cell) -> dict[str, Any]:
    return {"phase": c.phase, "target": c.target, "round": c.round, "conc": c.conc,
            "foreign_per_s": round(c.foreign_per_s, 3)}


# ------------------------------------------------------------------------------------------------
# printing


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _errors(r: dict[str, Any]) -> str:
    text = str(r["errors"]) if not r["errors"] else f"{r['errors']} {r['statuses']}"
    return text + (f" ran-out:{r['ran_out_cells']}" if r["ran_out_cells"] else "")


def _main_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["target", "kept", "ex/s", "p50 ms", "p99 ms", "p99.9 ms", "srv CPU-s", "ex/CPU-s", "wrk CPU-s",
         "kthr CPU-s", "errors"],
        [[r["target"] + (f" (req/s {r['http_rate']:.0f})" if r["target"] == "openbao-chain" else ""),
          f"{r['kept']}/{r['cells']}", f"{r['rate']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
          f"{r['p999_ms']:.2f}", f"{r['server_cpu_s']:.2f}", f"{r['per_cpu_s']:.0f}", f"{r['wrk_cpu_s']:.2f}",
          f"{r['kernel_cpu_s']:.2f}", _errors(r)] for r in rows])


def _print_memory(m: dict[str, Any]) -> None:
    print("\n-- Ephemera memory (VmRSS / VmHWM) --")
    for label, key in (("after its last measured cell", "after_last_cell_kb"),
                       ("after the sustained run", "after_sustained_kb")):
        kb = m[key]
        print(f"{label}: " + (f"{kb['VmRSS'] / 1024:.1f} MiB / {kb['VmHWM'] / 1024:.1f} MiB" if kb else "not measured"))
    if m["sustained"]:
        s = m["sustained"]
        print(f"sustained run: {s['exchanges']} exchanges at {s['rate']:.0f}/s, concurrency {s['conc']}, "
              f"errors {s['errors']}" + (", RAN OUT" if s["ran_out_threads"] else ""))


def _print_floor(f: dict[str, Any] | None) -> None:
    if f is None:
        return
    print("\n-- Ephemera against the crypto floor --")
    if "missing" in f:
        print(f"no floor file at {f['missing']}")
        return
    print(f"from {f['file']}: " + ", ".join(f"{k} {v}" for k, v in f.items() if k.endswith("_ns")))
    if "crypto_floor_us" in f:
        print(f"crypto floor (RS256 verify + ES256 sign): {f['crypto_floor_us']:.1f} us "
              f"= at most {f['crypto_ceiling_per_cpu_s']:.0f} exchanges per CPU-second")
    if "in_process_x_floor" in f:
        print(f"in-process exchange (criterion): {f['in_process_x_floor']:.2f} x floor "
              f"= at most {f['in_process_ceiling_per_s']:.0f} exchanges/s one at a time")
    if "in_process_cpu_x_floor" in f:
        print(f"in-process exchange CPU (criterion, 32 at once on one thread, audit on tmpfs): "
              f"{f['in_process_cpu_x_floor']:.2f} x floor = at most {f['in_process_cpu_ceiling_per_cpu_s']:.0f} "
              f"exchanges per CPU-second without HTTP")
    if "measured_cpu_us_per_exchange" in f:
        print(f"served over HTTP at concurrency {f['measured_conc']}: {f['measured_cpu_us_per_exchange']:.1f} "
              f"server CPU-us per exchange = {f['measured_x_floor']:.2f} x floor")


def print_summary(s: dict[str, Any]) -> None:
    print("\n================ summary ================")
    print(f"{s['meta']['date']}  {s['meta']['command']}")
    print("medians over kept rounds; errors summed over every cell, kept or not; ex = exchanges "
          "(OpenBao chain: completed login + identity token read; its latencies are per HTTP request);\n"
          "srv CPU-s = the server's processes over the cell; kthr = kernel threads (journal, writeback: "
          "the fsyncs' cost outside the server)")
    for conc in sorted({r["conc"] for r in s["main"]}):
        print(f"\n-- concurrency {conc} --")
        print(_main_table([r for r in s["main"] if r["conc"] == conc]))
    if s["ratios"]:
        print("\n-- ratios (Ephemera / peer; > 1 means Ephemera does better) --")
        print(_table(["concurrency", "ratio", "ex per server CPU-s", "ex/s"],
                     [[str(r["conc"]), r["label"], f"{r['per_cpu_s']:.2f}", f"{r['rate']:.2f}"] for r in s["ratios"]]))
    if s["variants"]:
        print("\n-- Ephemera variants (ephemera = the default config, same rounds) --")
        print(_table(["variant", "conc", "kept", "ex/s", "p50 ms", "p99 ms", "p99.9 ms", "srv CPU-s", "ex/CPU-s",
                      "vs default", "errors"],
                     [[r["target"], str(r["conc"]), f"{r['kept']}/{r['cells']}", f"{r['rate']:.0f}",
                       f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p999_ms']:.2f}", f"{r['server_cpu_s']:.2f}",
                       f"{r['per_cpu_s']:.0f}",
                       f"{r['per_cpu_vs_default']:.2f}" if r["per_cpu_vs_default"] else "-", _errors(r)]
                      for r in s["variants"]]))
    if any(r["kept"] == 0 for r in s["main"] + s["variants"]):
        print("\nkept 0/N: every round of that row was discarded for foreign load; its medians are over the "
              "discarded rounds, shown only so nothing is hidden: do not trust them")
    for name, reason in s["skipped"].items():
        print(f"skipped {name}: {reason}")
    _print_memory(s["memory"])
    _print_floor(s["floor"])
    for key, label in (("discarded", "discarded cells (foreign load)"), ("with_errors", "cells with errors"),
                       ("ran_out", "cells that ran out of assertions")):
        if s[key]:
            print(f"\n{label}:")
            for c in s[key]:
                print("  " + json.dumps(c))
    for f in s["failures"]:
        print(f"\nFAILURE: {f}")


def write_json(path: Path, summary: dict[str, Any], cells: list[Cell]) -> None:
    path.write_text(json.dumps({"summary": summary, "cells": [c.as_dict() for c in cells]}, indent=1))
