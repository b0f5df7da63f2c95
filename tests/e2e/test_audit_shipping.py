"""The audit log in production (issue 16, spec A): rotation by size (`audit.rotate_bytes`) and on
SIGHUP (`audit.rotate_on_sighup`) to `PATH.YYYYMMDDTHHMMSSZ[-N]`, each new file beginning with a
`rotate` record that names the file it continues, that file's record count and last hash, so that
`ephemera audit verify OLDEST ... PATH` checks the chain across the set (a file left out, swapped or
edited fails); and the copies besides the file, best effort after its durable write: every record
line on the broker's stdout (`audit.stdout`) and to syslog (`audit.syslog`, RFC 5424 over udp, tcp
with RFC 6587 octet counting, or a unix datagram socket), received here by a real rsyslogd."""

from __future__ import annotations

import calendar
import collections
import concurrent.futures as cf
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest

from harness import (STARTUP_TIMEOUT, Broker, broker_config, free_port, provider, read_audit, require_peer, role,
                     run_cli, wait_until)

GENESIS = "0" * 64
ROTATE_BYTES = 4096  # the smallest the config accepts
ROTATED = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d{3}))?$")
RELOADED = "config reloaded"
ROTATED_EVENT = "audit log rotated"
SYSLOG_FAILED = "an audit record could not be sent to syslog"


# ------------------------------------------------------------------------------------------------
# the rotated set


def rotated_files(path: Path) -> list[Path]:
    """The files rotated away from `path` (`PATH.YYYYMMDDTHHMMSSZ`, then `-001`, `-002`... within
    one second), in the order they were rotated: by stamp, then by the number after it (zero-padded,
    so the names sort in that order too)."""
    out = []
    for p in path.parent.iterdir():
        if not p.name.startswith(path.name + "."):
            continue
        m = ROTATED.match(p.name[len(path.name) + 1:])
        if m:
            out.append((m["stamp"], int(m["n"] or 0), p))
        else:
            assert p.name == path.name + ".head", f"an unexpected file next to the audit log: {p.name}"
    return [p for _, _, p in sorted(out)]


def the_set(path: Path) -> list[Path]:
    """The whole set, oldest first: the rotated files, then the file at the path."""
    return rotated_files(path) + [path]


def chain_order(path: Path) -> list[Path]:
    """The set as its rotate records link it, oldest first: from the file at the path back through
    the file each one's rotate record says it continues (the names play no part)."""
    out = [path]
    while True:
        first = json.loads(lines_of(out[0])[0])
        if first["decision"] != "rotate":
            return out
        m = re.fullmatch(r"continues `([^`]+)`: record \d+, hash [0-9a-f]{64}", first["detail"])
        assert m, first["detail"]
        out.insert(0, path.parent / m[1])


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} does not end in a newline"
    return data[:-1].split(b"\n")


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def verify(ephemera_bin, files: list[Path]):
    return run_cli(ephemera_bin, ["audit", "verify", *map(str, files)])


def assert_rotate_records(files: list[Path]) -> None:
    """Each file after the first begins a new chain (`prev` genesis) with the rotate record naming
    the file before it, its record count and the SHA-256 of its last line; the first file begins
    with a decision, not a rotate record."""
    first = json.loads(lines_of(files[0])[0])
    assert first["decision"] != "rotate" and first["prev"] == GENESIS, first
    for before, after in zip(files, files[1:]):
        old = lines_of(before)
        head = json.loads(lines_of(after)[0])
        assert head["decision"] == "rotate", (after.name, head)
        assert head["prev"] == GENESIS, (after.name, head)
        assert head["detail"] == f"continues `{before.name}`: record {len(old)}, hash {sha256(old[-1])}", \
            (after.name, head["detail"])
        # and nowhere else in the file
        assert [json.loads(line)["decision"] for line in lines_of(after)].count("rotate") == 1, after.name


def jti_of(resp) -> str:
    return jwt.decode(resp.json["access_token"], options={"verify_signature": False})["jti"]


def set_invariants(broker, files: list[Path]) -> list[dict]:
    """The harness's audit invariants over the whole set (it reads only the file at the path): one
    allow record per 200 and the other way round, a deny record with the answer's reason and
    decision id per refusal, and every other record a rotate record. Returns the records."""
    recs = [json.loads(line) for f in files for line in lines_of(f)]
    by_id = collections.defaultdict(list)
    for r in recs:
        if r["decision"] != "rotate":
            by_id[r["decision_id"]].append(r["decision"])
    assert all(kinds in (["allow"], ["deny"]) for kinds in by_id.values()), by_id
    answers = [r for r, _ in broker.responses]
    assert sum(r.status == 200 for r in answers) == sum(r["decision"] == "allow" for r in recs)
    for r in answers:
        if r.status != 200:
            deny = [x for x in recs if x["decision_id"] == r.decision_id]
            assert [(x["decision"], x["reason"]) for x in deny] == [("deny", r.reason)], (r, deny)
    return recs


def exchanges(broker, mock_issuer, n: int, *, deny_every: int = 0) -> tuple[list[str], collections.Counter]:
    """`n` exchanges one after the other, every `deny_every`-th with a ref the role refuses; the
    jtis of the credentials received, and the answers by status."""
    got, figures = [], collections.Counter()
    for i in range(n):
        denied = deny_every and i % deny_every == deny_every - 1
        r = broker.exchange(mock_issuer.token(ref="refs/heads/feature") if denied else mock_issuer.token())
        figures[f"{r.status} {r.reason or 'ok'}"] += 1
        assert r.status == (400 if denied else 200), r
        if r.status == 200:
            got.append(jti_of(r))
    return got, figures


@pytest.fixture
def audit_broker(ephemera_bin, tmp_path, mock_issuer):
    """Starts brokers whose `[audit]` table has the given keys besides its path (`audit.jsonl` in
    the broker's own directory); stops them at teardown. The audit invariants are checked over the
    rotated set by the tests themselves (`set_invariants`)."""
    made: list[Broker] = []

    def make(name: str = "broker", extra: dict | None = None, **audit) -> Broker:
        workdir = tmp_path / name
        cfg = broker_config(workdir, [provider("mock", mock_issuer.issuer)], [role("deploy", "mock")])
        cfg["audit"].update(audit)
        cfg.update(extra or {})
        b = Broker(ephemera_bin, workdir, cfg)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ------------------------------------------------------------------------------------------------
# log events


def events(broker, message: str) -> list[dict]:
    """The broker's log events (`serve` logs JSON lines) with exactly this message."""
    out = []
    for line in broker.stderr().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(e, dict) and e.get("fields", {}).get("message") == message:
            out.append(e)
    return out


# ------------------------------------------------------------------------------------------------
# rotation by size


def test_size_rotation_keeps_every_record_in_exactly_one_file_and_the_set_verifies(audit_broker, mock_issuer,
                                                                                  ephemera_bin):
    """`rotate_bytes = 4096` under 200 exchanges: several rotated files, each rotated at the first
    record that took it to the limit, named `audit.jsonl.YYYYMMDDTHHMMSSZ[-N]` in the seconds the
    test ran; every allow record of every credential received is in exactly one file of the set,
    and the set verifies. A rotated file alone does not (it has no head: the set is the way to
    check it); the file at the path alone does (it has its head)."""
    b = audit_broker(rotate_bytes=ROTATE_BYTES)
    started = time.time()
    got, figures = exchanges(b, mock_issuer, 200, deny_every=10)
    ended = time.time()
    b.stop()
    files = the_set(b.audit_path)
    rotated = files[:-1]
    print(f"\nsize rotation at {ROTATE_BYTES} bytes, 200 exchanges: answers {dict(figures)}")
    print(f"  {len(rotated)} rotated files + {b.audit_path.name}; records per file "
          f"{[len(lines_of(f)) for f in files]}; bytes per file {[f.stat().st_size for f in files]}")
    assert len(got) == 180 and len(rotated) >= 5, [f.name for f in files]
    for f in rotated:
        size, last = f.stat().st_size, len(lines_of(f)[-1]) + 1
        # rotated once it held the limit, not a record later (the exchanges came one at a time)
        assert size >= ROTATE_BYTES > size - last, (f.name, size, last)
        stamp = ROTATED.match(f.name[len(b.audit_path.name) + 1:])["stamp"]
        assert int(started) - 1 <= calendar_seconds(stamp) <= ended + 1, f.name
    assert b.audit_path.stat().st_size < ROTATE_BYTES
    # the names number the rotations in one second in order (-1, -2, ... -10): the chain's order
    assert chain_order(b.audit_path) == files, [f.name for f in chain_order(b.audit_path)]
    assert_rotate_records(files)
    recs = set_invariants(b, files)
    # every credential's allow record is in exactly one file
    where = collections.defaultdict(list)
    for f in files:
        for r in read_audit(f):
            if r["decision"] == "allow":
                where[r["credential"]["jti"]].append(f.name)
    assert sorted(where) == sorted(got) and all(len(v) == 1 for v in where.values()), \
        {j: v for j, v in where.items() if len(v) != 1}
    assert collections.Counter(r["decision"] for r in recs) == {"allow": 180, "deny": 20, "rotate": len(rotated)}
    res = verify(ephemera_bin, files)
    print(f"  audit verify of the set: exit {res.returncode} {res.stdout.strip()}")
    assert res.returncode == 0 and res.stdout.strip() == f"ok: {len(recs)} records, hash chain intact", res
    # one file alone: a rotated one has no head (its end is vouched for by the next file's rotate
    # record); the file at the path has its own
    for f in rotated:
        alone = verify(ephemera_bin, [f])
        assert alone.returncode == 3 and f"head file {f}.head" in alone.stderr, (f.name, alone)
    print(f"  a rotated file alone: exit {alone.returncode} {alone.stderr.strip()}")
    current = verify(ephemera_bin, [b.audit_path])
    assert current.returncode == 0 and f"ok: {len(lines_of(b.audit_path))} records" in current.stdout, current
    # the order a shell glob gives (`audit.jsonl.2*`) is the chain order (the suffix is zero-padded)
    per_second = collections.Counter(f.name.split(".")[-1][:16] for f in rotated)
    lexical = sorted(rotated) + [b.audit_path]
    assert lexical == files, "names sort in chain order"
    res = verify(ephemera_bin, lexical)
    assert res.returncode == 0, res
    print(f"  rotations in one second at most: {max(per_second.values())}; lexical order is the chain order; "
          f"audit verify in that order: exit {res.returncode}")


def test_size_rotation_under_concurrent_exchanges_loses_no_record(audit_broker, mock_issuer, ephemera_bin):
    """The same under 8 clients at once (records written in batches, rotations between them):
    every credential's allow record is in exactly one file, every rotated file held the limit,
    and the set verifies."""
    b = audit_broker(rotate_bytes=ROTATE_BYTES)
    tokens = [mock_issuer.token() for _ in range(200)]
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(b.exchange, tokens))
    b.stop()
    figures = collections.Counter(f"{r.status} {r.reason or 'ok'}" for r in answers)
    files = the_set(b.audit_path)
    print(f"\nsize rotation at {ROTATE_BYTES} bytes, 200 exchanges from 8 clients: answers {dict(figures)}; "
          f"{len(files) - 1} rotated files, records per file {[len(lines_of(f)) for f in files]}")
    assert figures == {"200 ok": 200}, figures
    assert len(files) >= 5 and all(f.stat().st_size >= ROTATE_BYTES for f in files[:-1])
    assert chain_order(b.audit_path) == files
    assert_rotate_records(files)
    recs = set_invariants(b, files)
    jtis = [r["credential"]["jti"] for r in recs if r["decision"] == "allow"]
    assert sorted(jtis) == sorted(jti_of(r) for r in answers) and len(set(jtis)) == 200
    res = verify(ephemera_bin, files)
    assert res.returncode == 0 and res.stdout.strip() == f"ok: {len(recs)} records, hash chain intact", res


def calendar_seconds(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))


# ------------------------------------------------------------------------------------------------
# a rotated set with a file left out, swapped or edited


def copy_set(files: list[Path], to: Path) -> list[Path]:
    """The set copied to `to` with its names (the rotate records name the files) and the head."""
    to.mkdir()
    out = []
    for f in files:
        shutil.copy2(f, to / f.name)
        out.append(to / f.name)
    shutil.copy2(f"{files[-1]}.head", to / f"{files[-1].name}.head")
    return out


def edit_line(path: Path, index: int) -> None:
    """Changes one record's `time` in place (still JSON, still the same length)."""
    lines = lines_of(path)
    rec = json.loads(lines[index])
    rec["time"] = rec["time"][:-2] + ("00" if rec["time"][-2:] != "00" else "01")
    lines[index] = json.dumps(rec, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_rotated_set_with_a_file_left_out_swapped_or_edited_fails(audit_broker, mock_issuer, ephemera_bin,
                                                                   tmp_path):
    """`audit verify OLDEST ... PATH` fails (exit 3) on a set with a file from the middle left out,
    two files swapped, the newest file left out, a line of a rotated file edited, or a rotated
    file's last record removed (its end has no head of its own: the next file's rotate record
    vouches for it); the intact copy verifies (the twin), and so does the set without its oldest
    files (retention deletes those: each file vouches for the one before it, not after). A file
    that is not there is a usage error (exit 2)."""
    b = audit_broker(rotate_bytes=ROTATE_BYTES)
    exchanges(b, mock_issuer, 50, deny_every=7)
    b.stop()
    files = the_set(b.audit_path)
    assert len(files) >= 5, [f.name for f in files]
    total = sum(len(lines_of(f)) for f in files)
    results = {}

    def case(name: str, change) -> subprocess.CompletedProcess:
        s = copy_set(files, tmp_path / name)
        res = verify(ephemera_bin, change(s) or s)
        results[name] = res
        return res

    intact = case("intact", lambda s: None)
    assert intact.returncode == 0 and intact.stdout.strip() == f"ok: {total} records, hash chain intact", intact
    later = case("without the oldest two", lambda s: s[2:])
    assert later.returncode == 0, later
    gap = case("a middle file left out", lambda s: s[:2] + s[3:])
    assert gap.returncode == 3 and f"{files[3].name}: does not continue {files[1].name}" in gap.stderr, gap.stderr
    swapped = case("two files swapped", lambda s: [s[0], s[2], s[1], *s[3:]])
    assert swapped.returncode == 3 and "does not continue" in swapped.stderr, swapped.stderr
    newest = case("the newest file left out", lambda s: s[:-1])
    assert newest.returncode == 3 and "head file" in newest.stderr, newest.stderr
    edited = case("a line of a rotated file edited", lambda s: edit_line(s[1], 3))
    assert edited.returncode == 3 and f"{files[1].name}: line 5: hash chain broken" in edited.stderr, edited.stderr

    def cut_last(s):
        s[1].write_bytes(b"\n".join(lines_of(s[1])[:-1]) + b"\n")

    cut = case("the last record of a rotated file removed", cut_last)
    assert cut.returncode == 3 and f"{files[2].name}: does not continue {files[1].name}" in cut.stderr, cut.stderr
    missing = case("a file that is not there", lambda s: [s[0], s[0].with_name("audit.jsonl.nope"), *s[1:]])
    assert missing.returncode == 2 and "audit.jsonl.nope: no such file" in missing.stderr, missing.stderr
    alone = case("one file that is not there", lambda s: [s[0].with_name("audit.jsonl.nope")])
    assert alone.returncode == 2 and "audit.jsonl.nope: no such file" in alone.stderr, alone.stderr
    print(f"\naudit verify of a rotated set of {len(files)} files, {total} records:")
    for name, res in results.items():
        print(f"  {name:45} exit {res.returncode} {(res.stdout + res.stderr).strip().replace(str(tmp_path), '')[:160]}")


# ------------------------------------------------------------------------------------------------
# rotation on SIGHUP


@pytest.mark.parametrize("rotate_on_sighup", [True, False])
def test_sighup_rotates_the_log_when_configured_and_reloads_the_config(audit_broker, mock_issuer, ephemera_bin,
                                                                      rotate_on_sighup):
    """`rotate_on_sighup = true`: SIGHUP rotates the file (the records before it in the rotated
    file, the ones after it in the new one, which begins with the rotate record) and the config
    is reloaded as always; the set verifies. The twin, `rotate_on_sighup = false`: SIGHUP reloads
    the config and rotates nothing."""
    b = audit_broker(rotate_on_sighup=rotate_on_sighup)
    before, _ = exchanges(b, mock_issuer, 3)
    reloads = len(events(b, RELOADED))
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(events(b, RELOADED)) > reloads, 10, what="the reload logged")
    after, _ = exchanges(b, mock_issuer, 2)
    b.stop()
    files = the_set(b.audit_path)
    rotations = events(b, ROTATED_EVENT)
    print(f"\nrotate_on_sighup = {str(rotate_on_sighup).lower()}: SIGHUP -> {len(rotations)} rotation(s), "
          f"{len(events(b, RELOADED)) - reloads} reload(s); files {[f.name for f in files]}")
    allows = [[r["credential"]["jti"] for r in read_audit(f) if r["decision"] == "allow"] for f in files]
    if rotate_on_sighup:
        assert len(files) == 2 and allows == [before, after], allows
        assert [r["fields"]["rotated"] for r in rotations] == [str(files[0])], rotations
        assert_rotate_records(files)
        assert [json.loads(line)["decision"] for line in lines_of(files[1])] == ["rotate", "allow", "allow"]
    else:
        assert files == [b.audit_path] and allows == [before + after], allows
        assert rotations == [] and "rotate" not in [r["decision"] for r in read_audit(b.audit_path)]
    set_invariants(b, files)
    res = verify(ephemera_bin, files)
    assert res.returncode == 0 and f"ok: {5 + len(files) - 1} records" in res.stdout, res


# ------------------------------------------------------------------------------------------------
# stdout


@pytest.mark.parametrize("stdout", [True, False])
def test_stdout_carries_exactly_the_records_of_the_file(audit_broker, mock_issuer, stdout):
    """`stdout = true`: the broker's stdout is the audit file, line for line, byte for byte (allow
    and deny records alike). The twin, `stdout = false`: nothing on stdout."""
    b = audit_broker(stdout=stdout)
    exchanges(b, mock_issuer, 20, deny_every=4)
    b.stop()
    out, log = b.stdout_path.read_bytes(), b.audit_path.read_bytes()
    recs = read_audit(b.audit_path)
    print(f"\nstdout = {str(stdout).lower()}: {len(recs)} records in the file, "
          f"{len(out.splitlines())} lines on stdout")
    assert len(recs) == 20 and collections.Counter(r["decision"] for r in recs) == {"allow": 15, "deny": 5}
    if stdout:
        assert out == log
        assert [json.loads(line) for line in out.splitlines()] == recs
    else:
        assert out == b""


def test_stdout_carries_the_rotate_records_too(audit_broker, mock_issuer):
    """With rotation, stdout is the whole set, rotate records included, so a collector reading the
    copy sees where a file ends and the next begins and can follow the chain."""
    b = audit_broker(stdout=True, rotate_bytes=ROTATE_BYTES)
    exchanges(b, mock_issuer, 30)
    b.stop()
    files = the_set(b.audit_path)
    assert len(files) >= 3
    out = b.stdout_path.read_bytes()
    missing = [line for f in files for line in lines_of(f) if line + b"\n" not in out]
    assert missing == [], f"{len(missing)} record(s) of the set not on stdout: {missing[:2]}"
    assert out == b"".join(f.read_bytes() for f in files)


# ------------------------------------------------------------------------------------------------
# syslog, received by a real rsyslogd


def find_rsyslogd() -> str | None:
    return shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each message rsyslog received, as it parsed it (RFC 5424 fields), one JSON object a line.
RSYSLOG_CONF = """\
global(workDirectory="{workdir}" maxMessageSize="64k")
{input}
template(name="parsed" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
action(type="omfile" file="{out}" template="parsed")
"""
INPUTS = {
    "udp": 'module(load="imudp")\ninput(type="imudp" address="127.0.0.1" port="{port}")',
    "tcp": 'module(load="imtcp")\ninput(type="imtcp" address="127.0.0.1" port="{port}")',
    # a datagram socket, read as RFC 5424 (not the local log's special parser), not rate limited
    "unix": 'module(load="imuxsock" SysSock.Use="off")\n'
            'input(type="imuxsock" Socket="{path}" UseSpecialParser="off" ParseHostname="on" RateLimit.Interval="0")',
}


class Rsyslog:
    """An unprivileged `rsyslogd -n` receiving syslog over `proto` (udp or tcp on a free loopback
    port, unix on a datagram socket in `workdir`), writing each message it parsed to
    `received.jsonl`; its config, pid file, work directory and log in `workdir`. Ready once a probe
    message sent the same way has come out."""

    def __init__(self, binary: str, workdir: Path, proto: str):
        self.binary, self.workdir, self.proto = binary, workdir, proto
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "received.jsonl"
        self.log_path = workdir / "rsyslogd.log"
        self.proc: subprocess.Popen | None = None
        self.probes = 0
        self.path = workdir / "log.sock"
        self._short_dir = None
        if len(str(self.path)) > 100:  # sun_path holds 108 bytes
            self._short_dir = tempfile.mkdtemp(prefix="eph-rsyslog-")
            self.path = Path(self._short_dir) / "log.sock"
        for attempt in range(3):
            self.port = free_udp_port() if proto == "udp" else free_port()
            try:
                self.start()
                return
            except AssertionError:
                self.stop()
                if attempt == 2:
                    raise RuntimeError(f"rsyslogd did not start:\n{self.log()[-4000:]}")

    @property
    def target(self) -> str:
        return f"unix://{self.path}" if self.proto == "unix" else f"{self.proto}://127.0.0.1:{self.port}"

    def start(self):
        """Starts rsyslogd on `self.port` (again, after `stop`) and waits until it receives."""
        conf = self.workdir / "rsyslog.conf"
        listen = INPUTS[self.proto].format(port=self.port, path=self.path)
        conf.write_text(RSYSLOG_CONF.format(workdir=self.workdir, input=listen, out=self.out))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-n", "-f", str(conf), "-i", str(self.workdir / "rsyslogd.pid")],
                                     stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL)
        wait_until(self._probe, timeout=STARTUP_TIMEOUT, interval=0.1, what=f"rsyslogd receiving on {self.target}")

    def _probe(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited {self.proc.returncode}")
        self.probes += 1
        tag = f"probe-{os.getpid()}-{self.probes}"
        msg = f"<110>1 - - probe - {tag} - ready?".encode()
        try:
            if self.proto == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(msg, ("127.0.0.1", self.port))
            elif self.proto == "unix":
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.sendto(msg, str(self.path))
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(f"{len(msg)} ".encode() + msg)
        except OSError:
            return False
        return any(m["msgid"].startswith("probe-") for m in self.received(app="probe"))

    def received(self, app: str = "ephemera") -> list[dict]:
        """The messages received from `app` (the probes are app `probe`), oldest first."""
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if m["app"] == app:
                out.append(m)
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


@pytest.fixture
def rsyslogd():
    found = find_rsyslogd()
    require_peer("rsyslogd", found is not None, "scripts/test installs Debian's package: apt-get install rsyslog")
    return found


@pytest.fixture
def rsyslog_factory(rsyslogd, tmp_path):
    made: list[Rsyslog] = []

    def make(proto: str) -> Rsyslog:
        r = Rsyslog(rsyslogd, tmp_path / f"rsyslog{len(made)}", proto)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()
        if r._short_dir:
            shutil.rmtree(r._short_dir, ignore_errors=True)


def arrived(rs: Rsyslog, lines: list[bytes]) -> list[dict]:
    """Waits until rsyslog has received a message per line (a UDP datagram lost on loopback fails
    the test); the messages whose text is one of the lines."""
    want = {line.decode() for line in lines}
    def got():
        messages = [m for m in rs.received() if m["msg"] in want]
        return messages if len(messages) >= len(want) else None

    return wait_until(got, timeout=30, interval=0.1, what=f"{len(want)} records at rsyslog")


def assert_rfc5424(messages: list[dict], lines: list[bytes], pid: int) -> None:
    """Each line arrived once, as the RFC 5424 message `<110>1 TIME - ephemera PID audit - LINE`
    (facility log audit, severity informational; TIME the record's own), parsed as such by rsyslog."""
    assert sorted(m["msg"] for m in messages) == sorted(line.decode() for line in lines)
    for m in messages:
        rec = json.loads(m["msg"])
        assert m["raw"] == f"<110>1 {rec['time']} - ephemera {pid} audit - {m['msg']}", m["raw"]
        assert (m["pri"], m["version"], m["app"], m["procid"], m["msgid"], m["sd"]) == \
            ("110", "1", "ephemera", str(pid), "audit", "-"), m


@pytest.mark.parametrize("proto", ["udp", "tcp", "unix"])
def test_every_audit_record_arrives_at_rsyslog(audit_broker, mock_issuer, rsyslog_factory, ephemera_bin, proto):
    """`syslog = "udp://..."`, `"tcp://..."` (RFC 6587 octet counting) or `"unix:///..."`: every
    record of the file, allow and deny, arrives at a real rsyslogd as one RFC 5424 message whose
    text is the record's line, byte for byte."""
    rs = rsyslog_factory(proto)
    b = audit_broker(syslog=rs.target)
    _, figures = exchanges(b, mock_issuer, 20, deny_every=5)
    lines = lines_of(b.audit_path)
    messages = arrived(rs, lines)
    pid = b.proc.pid
    b.stop()
    print(f"\nsyslog over {proto}: answers {dict(figures)}; {len(lines)} records in the file, "
          f"{len(messages)} received by rsyslogd")
    assert len(lines) == 20
    assert_rfc5424(messages, lines, pid)
    if proto == "tcp":
        assert [m["msg"] for m in messages] == [line.decode() for line in lines]  # in order
    assert events(b, SYSLOG_FAILED) == []
    assert verify(ephemera_bin, [b.audit_path]).returncode == 0


def sink_errors(broker, admin_token: str, sink: str) -> float:
    """`ephemera_audit_sink_errors_total{sink}` from the broker's /metrics (0 before the first)."""
    r = broker.http.get(broker.url + "/metrics", headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    found = [float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
             if line.startswith("ephemera_audit_sink_errors_total{") and f'sink="{sink}"' in line]
    return sum(found)


@pytest.mark.parametrize("proto", ["udp", "tcp", "unix"])
def test_with_rsyslog_down_every_exchange_still_answers_and_the_file_has_every_record(
        audit_broker, mock_issuer, rsyslog_factory, ephemera_bin, tmp_path, proto):
    """Best effort: rsyslogd stopped while the broker serves, every exchange still gets its
    credential, the file still gets every record (the set verifies), and the failures are
    logged and counted; rsyslogd started again on its port, the records after it arrive again
    (tcp: the connection is made again). Before the stop, every record arrived (the twin)."""
    admin_token = "admin-" + "q" * 40
    token_file = tmp_path / "admin.token"
    token_file.write_text(admin_token)
    rs = rsyslog_factory(proto)
    b = audit_broker(syslog=rs.target, extra={"admin": {"token_file": str(token_file)}})
    phases, figures, received = {}, {}, {}
    seen = 0
    for phase, n in (("up", 5), ("down", 10), ("back", 5)):
        if phase == "down":
            rs.stop()
        elif phase == "back":
            rs.start()
        phases[phase], figures[phase] = exchanges(b, mock_issuer, n)  # every one a 200
        lines = lines_of(b.audit_path)[seen:]
        seen += len(lines)
        assert len(lines) == n, (phase, len(lines))
        if phase != "down":
            assert_rfc5424(arrived(rs, lines), lines, b.proc.pid)
        received[phase] = sum(m["msg"].encode() in lines for m in rs.received())
    failures = events(b, SYSLOG_FAILED)
    counted = sink_errors(b, admin_token, "syslog")
    b.stop()
    print(f"\nsyslog over {proto}, rsyslogd up, stopped, started again:")
    for phase in phases:
        print(f"  {phase:5} answers {dict(figures[phase])}; records received by rsyslogd {received[phase]}")
    print(f"  logged '{SYSLOG_FAILED}': {len(failures)}; "
          f"ephemera_audit_sink_errors_total{{sink=\"syslog\"}} {counted:g}")
    assert failures and counted == len(failures), (len(failures), counted)
    assert all(e["level"] == "WARN" and e["fields"]["target"] == rs.target for e in failures), failures[:2]
    assert [r["credential"]["jti"] for r in read_audit(b.audit_path) if r["decision"] == "allow"] == \
        phases["up"] + phases["down"] + phases["back"]
    res = verify(ephemera_bin, [b.audit_path])
    assert res.returncode == 0 and "ok: 20 records" in res.stdout, res


def test_a_syslog_peer_that_does_not_answer_does_not_hold_the_exchange(audit_broker, mock_issuer):
    """A tcp syslog target that drops connection attempts (a firewall's DROP, simulated on loopback
    by a listener whose accept queue is full): the exchange still answers with its credential
    (best effort: the copy may be lost, the exchange does not wait for it)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname(), timeout=5)  # the one connection the queue holds
    probe = socket.socket()
    probe.settimeout(1)
    try:
        with pytest.raises(TimeoutError):
            probe.connect(srv.getsockname())  # the next connection attempt is not answered
        b = audit_broker(syslog=f"tcp://127.0.0.1:{srv.getsockname()[1]}")
        r = b.exchange(mock_issuer.token())
        assert r.status == 200, r
        assert len(read_audit(b.audit_path)) == 1
    finally:
        for s in (probe, filler, srv):
            s.close()
