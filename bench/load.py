"""Load benchmark: many devices doing their morning sync against ``fieldsync-server serve --workers K``.

Run ``python -m bench.load [--devices 500] [--workers 2] [--backend sqlite|postgresql|both]
[--concurrency 64] [--quick] [--json PATH]``.

For each backend a fresh district database is made (a SQLite file in a temporary directory, or a
new database in a PostgreSQL cluster: ``--pg-url``, ``$FIELDSYNC_BENCH_PG``, else a throwaway
cluster started like bench.sync's, with ``fsync=on``), filled through the District API with grids
of households; every device gets its own worker, assigned to one grid (2-5 devices per grid, like
a district), and an enrollment code (``District.issue_code``).  Then the real server is started
as a subprocess, ``fieldsync-server serve --db URL --workers K`` (uvicorn worker processes on a
real socket), and every device enrolls over HTTP with its own Ed25519 key, from its own loopback
source address (127.1.x.y: enrollment is rate-limited per address, §3.1 of docs/protocol.md).

A device is an asyncio task of this process (bench/load_client.py: raw HTTP/1.1 on asyncio
streams).  A **session** is one morning sync, as ``SyncClient.sync()`` does it: open a
connection, ``POST /v1/push`` of ~20 changes (pre-generated wire-form changes, gzip-compressed
over 1 KiB like the Python client: new visits to households of its grid and updates of
households' notes/last_visit with the right base stamps), then ``POST /v1/pull`` from its cursor
until ``more`` is false (it gets what the others of its grid pushed since its last pull, and the
echo of its own changes), close.  Every request is signed as the protocol says
(``fieldsync.identity.Identity.sign``).  Every answer is checked: push fully acknowledged, no
rejection, every change applied; the pull pages chain from the cursor, carry the grid's checksum
on the last page, and contain the device's own changes; any failure is an error, and a run with
errors fails (exit status 1, ``RuntimeError`` from :func:`run`).

Rounds: a warm-up round ("yesterday's sync", reported but not the result) then ``--rounds``
measured rounds; in each round every device syncs once, in a shuffled order, at most
``--concurrency`` sessions at a time (closed loop).  Measured per round: sessions/s (sessions over
the round's wall time), session latency p50/p95/p99/max, errors, and CPU seconds per session of
the server processes (the uvicorn supervisor and workers, psutil), of the PostgreSQL backends
serving them (found by ``application_name``), of this load generator, and of every other process
on the machine (``/proc/stat`` busy time minus those), with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fieldsync.identity import Identity, public_key_b64
from fieldsync.protocol import H_SCHEMA, dumps
from fieldsync.schema import SCHEMA_VERSION
from server_stub import demo_data
from server_stub.district import District
from server_stub.replica import Actor

from .load_client import Answer, Connection
from .procs import loadavg, machine_busy

__all__ = ["run", "main", "report"]

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL_RATE = 200.0  # sessions/s on PostgreSQL
GOAL_P99_MS = 1000.0
CITY_WORKERS = 20_000
CITY_WINDOW_S = 30 * 60
CITY_PEAK_FACTOR = 4.0  # the busiest minute against the 30-minute average
CITY_TARGET_UTILISATION = 0.6  # plan cores so that the peak keeps them at most this busy
SERVER_START_TIMEOUT_S = 60.0
PG_BIN = "/usr/lib/postgresql/15/bin"


# -- the district --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    devices: int = 500
    households: int = 60  # per grid
    changes: int = 20  # per session: visits + household updates
    updates: int = 4  # of which household updates (each writes notes and last_visit)
    rounds: int = 1  # measured rounds after the warm-up
    concurrency: int = 64
    workers: int = 2
    seed: int = 1


def spread(devices: int, seed: int) -> list[int]:
    """Devices per grid, 2-5 each (a district's mix), adding up to ``devices``."""
    rng = random.Random(f"{seed}:spread")
    out: list[int] = []
    left = devices
    while left > 0:
        n = left if left <= 5 else rng.choice((2, 3, 3, 4, 4, 5))
        if left - n == 1:  # never leave a grid with one device
            n = n + 1 if n < 5 else n - 1
        out.append(n)
        left -= n
    assert sum(out) == devices, out
    return out


@dataclass
class Device:
    """One simulated tablet: its key, enrollment and sync state."""

    index: int
    grid: str
    worker: str
    slot: int  # its place among the grid's devices
    peers: int  # devices in its grid
    source: str  # its own loopback address
    code: str = ""
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    node: str = field(default_factory=lambda: "n" + secrets.token_hex(8))
    identity: Identity | None = None
    cursor: int = 0
    seq: int = 0
    wall: int = 0
    counter: int = 0
    households: list[str] = field(default_factory=list)
    known: dict[tuple[str, str], str] = field(default_factory=dict)  # (household, field) -> stamp the device holds
    body: bytes = b""
    gzipped: bool = False
    ids: set[str] = field(default_factory=set)
    last_seq: int = 0

    def stamp(self) -> str:
        """The device's hybrid clock (fieldsync/clock.py rules): strictly increasing stamps."""
        wall = time.time_ns() // 1_000_000
        if wall > self.wall:
            self.wall, self.counter = wall, 0
        else:
            self.counter += 1
        return f"{self.wall:012x}-{self.counter:06x}-{self.node}"


def build_district(db_url: str, plan: Plan, sizes: Sequence[int]) -> tuple[list[Device], dict[str, Any]]:
    """Fill a fresh database through the District API; returns the devices (with codes) and counts."""
    started = time.perf_counter()
    district = District(db_url)
    admin = Actor("bench-load", "admin")
    devices: list[Device] = []
    records = 0
    try:
        for g, n in enumerate(sizes):
            grid = f"wc-load-{g + 1:03d}"
            households = demo_data.households(plan.households, grid, plan.seed + g)
            records += district.write_many(admin, "grids", [{"id": grid, "name": f"负载测试网格{g + 1}",
                                                             "community": "花园山社区", "street": "粮道街"}])
            records += district.write_many(admin, "households", households)
            ids = [h["id"] for h in households]
            for k in range(n):
                i = len(devices)
                worker = f"w-{grid}-{k + 1}"
                district.add_worker(worker, f"网格员{i + 1}")
                district.assign(worker, grid)
                code, _ = district.issue_code(worker, ttl_s=3600)
                dev = Device(i, grid, worker, k, n, f"127.1.{i // 250}.{i % 250 + 1}", code)
                dev.households = ids[k::n]
                devices.append(dev)
        with district.db.transaction() as tx:
            tops = {g: int(s) for g, s in tx.all("SELECT grid, seq FROM grid_state")}
            for hid, body in tx.all("SELECT id, body FROM records WHERE collection = 'households'"):
                state = json.loads(body)
                grid = state["grid_id"][0]
                for dev in devices:
                    if dev.grid == grid and hid in dev.households:
                        for name in ("notes", "last_visit"):
                            if name in state:
                                dev.known[(hid, name)] = state[name][1]
        for dev in devices:
            dev.cursor = tops[dev.grid]  # as if it pulled its grid yesterday evening
    finally:
        district.close()
    return devices, {"grids": len(sizes), "records": records, "seconds": round(time.perf_counter() - started, 2)}


def prepare_push(dev: Device, plan: Plan, round_no: int) -> None:
    """The wire-form changes of this round's push, encoded (and gzipped) before the clock starts."""
    rng = random.Random(f"{plan.seed}:{dev.index}:{round_no}")
    today = (datetime(2026, 3, 2, tzinfo=timezone(timedelta(hours=8))) + timedelta(days=round_no))
    changes: list[dict[str, Any]] = []
    dev.ids = set()
    n_updates = min(plan.updates, len(dev.households))
    for k in range(plan.changes - n_updates):
        hid = dev.households[(round_no * plan.changes + k) % len(dev.households)]
        vid = f"v-{dev.grid}-d{dev.index}-r{round_no}-{k}"
        at = today.replace(hour=9 + k // 4, minute=(k * 13) % 60)
        values = {"grid_id": dev.grid, "household_id": hid, "worker_id": dev.worker, "visited_at": at.isoformat(),
                  "purpose": rng.choice(demo_data.VISIT_PURPOSES), "notes": "入户走访，情况正常",
                  "needs": rng.sample(["助餐", "就业介绍", "医疗救助"], rng.choice((0, 0, 1))),
                  "location": {"lat": 30.55 + rng.random() / 100, "lon": 114.31 + rng.random() / 100}}
        stamp = dev.stamp()
        dev.seq += 1
        changes.append({"seq": dev.seq, "collection": "visits", "id": vid, "grid": dev.grid,
                        "fields": {k2: [v, stamp, None] for k2, v in values.items()}})
        dev.ids.add(f"visits/{vid}")
    for k in range(n_updates):
        hid = dev.households[(round_no * plan.updates + k) % len(dev.households)]
        stamp = dev.stamp()
        fields = {}
        for name, value in (("notes", f"第{round_no + 1}天走访：家中情况稳定"), ("last_visit", today.date().isoformat())):
            fields[name] = [value, stamp, dev.known.get((hid, name))]
            dev.known[(hid, name)] = stamp
        dev.seq += 1
        changes.append({"seq": dev.seq, "collection": "households", "id": hid, "grid": dev.grid, "fields": fields})
        dev.ids.add(f"households/{hid}")
    dev.last_seq = dev.seq
    raw = dumps({"schema_version": SCHEMA_VERSION, "changes": changes})
    dev.gzipped = len(raw) > 1024  # as the Python client: gzip level 5 over 1 KiB
    dev.body = gzip.compress(raw, 5) if dev.gzipped else raw


# -- the sessions --------------------------------------------------------------------------------
class SessionError(Exception):
    pass


def _headers(dev: Device, path: str, body: bytes, gzipped: bool) -> dict[str, str]:
    assert dev.identity is not None
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip", H_SCHEMA: str(SCHEMA_VERSION)}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    headers.update(dev.identity.sign("POST", path, "", body))
    return headers


def _json(answer: Answer, what: str) -> dict[str, Any]:
    if answer.status != 200:
        raise SessionError(f"{what}: HTTP {answer.status}: {answer.body[:300]!r}")
    data = json.loads(answer.body)
    if not isinstance(data, dict):
        raise SessionError(f"{what}: not a JSON object")
    return data


async def enroll(dev: Device, host: str, port: int, url: str) -> None:
    conn = Connection(host, port, dev.source)
    try:
        body = dumps({"code": dev.code, "public_key": public_key_b64(dev.key), "node_id": dev.node,
                      "device_name": f"load-{dev.index}", "schema_version": SCHEMA_VERSION})
        answer = await conn.request("POST", "/v1/enroll", body, {"Content-Type": "application/json",
                                                                 H_SCHEMA: str(SCHEMA_VERSION)})
        data = _json(answer, "enroll")
        if data.get("grids") != [dev.grid]:
            raise SessionError(f"enroll: scope {data.get('grids')} instead of [{dev.grid}]")
        dev.identity = Identity(data["device_id"], data["worker_id"], url, dev.key)
    finally:
        await conn.close()


@dataclass
class Session:
    device: int
    start: float
    seconds: float
    requests: int
    pulled: int
    sent: int
    received: int


async def session(dev: Device, host: str, port: int) -> Session:
    """One morning sync: push the prepared changes, then pull until caught up."""
    t0 = time.perf_counter()
    conn = Connection(host, port, dev.source)
    requests = pulled = 0
    try:
        answer = await conn.request("POST", "/v1/push", dev.body, _headers(dev, "/v1/push", dev.body, dev.gzipped))
        requests += 1
        data = _json(answer, "push")
        n = len(dev.ids)
        if data.get("acked_seq") != dev.last_seq or data.get("rejections") or data.get("applied") != n:
            raise SessionError(f"push: acked {data.get('acked_seq')} of {dev.last_seq}, applied {data.get('applied')} "
                               f"of {n}, rejections {data.get('rejections')}")
        seen: set[str] = set()
        while True:
            body = dumps({"schema_version": SCHEMA_VERSION, "cursors": {dev.grid: dev.cursor}, "limit": 2000})
            page = _json(await conn.request("POST", "/v1/pull", body, _headers(dev, "/v1/pull", body, False)), "pull")
            requests += 1
            changes = page.get("changes")
            if not isinstance(changes, list) or page.get("grids") != [dev.grid]:
                raise SessionError("pull: malformed page")
            last = dev.cursor
            for c in changes:
                if c.get("grid") != dev.grid or not isinstance(c.get("server_seq"), int) or c["server_seq"] <= last:
                    raise SessionError(f"pull: change out of order or out of scope: {str(c)[:200]}")
                last = c["server_seq"]
                seen.add(f"{c['collection']}/{c['id']}")
            pulled += len(changes)
            cursor = page["cursors"].get(dev.grid)
            if cursor != last:
                raise SessionError(f"pull: cursor {cursor} but the last change was {last}")
            dev.cursor = cursor
            if not page.get("more"):
                if dev.grid not in page.get("checksums", {}):
                    raise SessionError("pull: the last page has no checksum for the grid")
                break
        if not dev.ids <= seen:
            raise SessionError(f"pull: {len(dev.ids - seen)} of the device's own changes are missing")
    finally:
        await conn.close()
    return Session(dev.index, t0, time.perf_counter() - t0, requests, pulled, conn.sent, conn.received)


# -- CPU accounting ------------------------------------------------------------------------------
def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


class Server:
    """``fieldsync-server serve --db URL --workers K`` on 127.0.0.1."""

    def __init__(self, db_url: str, workers: int, log: Path, attachments: Path, code: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("fieldsync-server", path=str(Path(sys.executable).parent)) or "fieldsync-server"
        self.command = [exe, "serve", "--db", db_url, "--host", "127.0.0.1", "--port", str(self.port),
                        "--workers", str(workers), "--attachments", str(attachments)]
        self.log = log
        env = dict(os.environ)
        if code:  # another copy of server_stub/ and fieldsync/ (a before/after comparison)
            env["PYTHONPATH"] = code
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        self.main = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fieldsync-server exited with {self.proc.returncode}:\n{log.read_text()}")
            if len(self.workers()) >= workers and self._hello():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fieldsync-server did not start within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                                   f"{log.read_text()}")
            time.sleep(0.1)

    def _hello(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"GET /v1/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(16).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def workers(self) -> list[psutil.Process]:
        try:
            return [p for p in self.main.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
        except psutil.Error:
            return []

    def processes(self) -> list[psutil.Process]:
        return [self.main, *self.workers()]

    def cpu(self) -> dict[int, float]:
        return {p.pid: _cpu(p) for p in self.processes()}

    def rss_mb(self) -> float:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return round(total / 2**20, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class PgBackends:
    """CPU of the PostgreSQL backends whose ``application_name`` is ours (same machine only)."""

    def __init__(self, url: str, app: str) -> None:
        import psycopg

        self.app = app
        self.conn = psycopg.connect(url, autocommit=True)
        self.procs: dict[int, psutil.Process] = {}

    def cpu(self) -> dict[int, float]:
        for (pid,) in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                        (self.app,)).fetchall():
            if pid not in self.procs:
                try:
                    self.procs[int(pid)] = psutil.Process(int(pid))
                except psutil.Error:
                    pass
        return {pid: _cpu(p) for pid, p in self.procs.items()}

    def close(self) -> None:
        self.conn.close()


def _spent(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


async def _round(devices: list[Device], plan: Plan, round_no: int, server: Server,
                 pg: PgBackends | None) -> dict[str, Any]:
    for dev in devices:
        prepare_push(dev, plan, round_no)
    order = list(devices)
    random.Random(f"{plan.seed}:order:{round_no}").shuffle(order)
    gate = asyncio.Semaphore(plan.concurrency)
    errors: list[str] = []
    sessions: list[Session] = []
    me = psutil.Process()

    async def one(dev: Device) -> None:
        async with gate:
            try:
                sessions.append(await session(dev, "127.0.0.1", server.port))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"device {dev.index}: {type(exc).__name__}: {exc}"[:400])

    load = loadavg()
    srv0, pg0, me0, busy0 = server.cpu(), (pg.cpu() if pg else {}), _cpu(me), machine_busy()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(d) for d in order))
    wall = time.perf_counter() - t0
    srv1, pg1, me1, busy1 = server.cpu(), (pg.cpu() if pg else {}), _cpu(me), machine_busy()
    server_s, pg_s, gen_s = _spent(srv0, srv1), _spent(pg0, pg1), me1 - me0
    n = len(sessions)
    lat = [s.seconds * 1000 for s in sessions] or [0.0]
    return {
        "round": round_no,
        "sessions": n,
        "errors": len(errors),
        "error_samples": errors[:10],
        "seconds": round(wall, 3),
        "sessions_per_s": round(n / wall, 1),
        "latency_ms": {"p50": round(_pct(lat, 0.50), 1), "p95": round(_pct(lat, 0.95), 1),
                       "p99": round(_pct(lat, 0.99), 1), "max": round(max(lat), 1),
                       "mean": round(statistics.fmean(lat), 1)},
        "requests": sum(s.requests for s in sessions),
        "changes_pushed": n * plan.changes,
        "records_pulled": sum(s.pulled for s in sessions),
        "bytes_per_session": {"sent": round(sum(s.sent for s in sessions) / max(n, 1)),
                              "received": round(sum(s.received for s in sessions) / max(n, 1))},
        "cpu_s": {"server": round(server_s, 2), "postgresql": round(pg_s, 2), "load_generator": round(gen_s, 2),
                  "others": round(max(0.0, (busy1 - busy0) - server_s - pg_s - gen_s), 2)},
        "cpu_ms_per_session": {"server": round(1000 * server_s / max(n, 1), 2),
                               "postgresql": round(1000 * pg_s / max(n, 1), 2),
                               "load_generator": round(1000 * gen_s / max(n, 1), 2)},
        "others_cores": round(max(0.0, (busy1 - busy0) - server_s - pg_s - gen_s) / wall, 2),
        "loadavg_start": load,
        "loadavg_end": loadavg(),
    }


async def _drive(devices: list[Device], plan: Plan, server: Server, pg: PgBackends | None,
                 spy_dir: Path | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(32)
    failed: list[str] = []

    async def one(dev: Device) -> None:
        async with gate:
            try:
                await enroll(dev, "127.0.0.1", server.port, server.url)
            except Exception as exc:  # noqa: BLE001
                failed.append(f"device {dev.index}: {type(exc).__name__}: {exc}"[:400])

    await asyncio.gather(*(one(d) for d in devices))
    if failed:
        raise RuntimeError(f"{len(failed)} enrollments failed, e.g. {failed[:3]}")
    enroll_s = time.perf_counter() - t0
    warm = await _round(devices, plan, 0, server, pg)
    spies = _spies(server, spy_dir) if spy_dir else []
    rounds = [await _round(devices, plan, r, server, pg) for r in range(1, plan.rounds + 1)]
    out: dict[str, Any] = {"enroll_seconds": round(enroll_s, 2), "warmup": warm, "rounds": rounds}
    if spies:
        out["profile"] = _merge_profiles([s.stop() for s in spies])
    return out


def _spies(server: Server, folder: Path) -> list[Any]:
    """py-spy on every server worker during the measured rounds (``--py-spy``)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    from .sync import Spy

    return [Spy(exe, p.pid, folder / f"spy-{p.pid}.txt", rate=250, gil=True, top=400) for p in server.workers()]


def _merge_profiles(parts: Sequence[Mapping[str, Any]], top: int = 200) -> dict[str, Any]:
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for p in parts:
        own.update(dict(p.get("self", [])))
        incl.update(dict(p.get("inclusive", [])))
    total = sum(p.get("samples", 0) for p in parts)
    return {"samples": total, "self": own.most_common(top), "inclusive": incl.most_common(top)}


def _summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The measured rounds together: the median round's rate, the worst round's tail."""
    n = sum(r["sessions"] for r in rounds)
    wall = sum(r["seconds"] for r in rounds)
    cpu = {k: sum(r["cpu_s"][k] for r in rounds) for k in ("server", "postgresql", "load_generator", "others")}
    return {
        "sessions": n,
        "errors": sum(r["errors"] for r in rounds),
        "sessions_per_s": round(n / wall, 1),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rounds),
        "p95_ms": max(r["latency_ms"]["p95"] for r in rounds),
        "p99_ms": max(r["latency_ms"]["p99"] for r in rounds),
        "max_ms": max(r["latency_ms"]["max"] for r in rounds),
        "cpu_ms_per_session": {k: round(1000 * v / max(n, 1), 2) for k, v in cpu.items() if k != "others"},
        "others_cores": round(cpu["others"] / wall, 2),
        # The rate this machine's cores would sustain with nothing else running: all of them over the
        # CPU one session costs (server + PostgreSQL + load generator).
        "cpu_bound_sessions_per_s": round(_cores() * n / max(cpu["server"] + cpu["postgresql"] + cpu["load_generator"],
                                                             1e-9), 1),
    }


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def city_estimate(server_ms: float, pg_ms: float | None) -> dict[str, Any]:
    """Cores a 20,000-worker city needs, from the measured CPU per session."""
    average = CITY_WORKERS / CITY_WINDOW_S
    peak = average * CITY_PEAK_FACTOR
    app_cores = peak * server_ms / 1000 / CITY_TARGET_UTILISATION
    db_cores = peak * (pg_ms or 0.0) / 1000 / CITY_TARGET_UTILISATION
    return {"workers": CITY_WORKERS, "window_min": CITY_WINDOW_S // 60, "average_sessions_per_s": round(average, 1),
            "peak_factor": CITY_PEAK_FACTOR, "peak_sessions_per_s": round(peak, 1),
            "target_utilisation": CITY_TARGET_UTILISATION, "server_cpu_ms_per_session": server_ms,
            "db_cpu_ms_per_session": pg_ms, "app_cores": round(app_cores, 2), "db_cores": round(db_cores, 2)}


# -- databases -----------------------------------------------------------------------------------
def _with_db(url: str, dbname: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, urlencode(query, quote_via=quote), ""))


class _PgDatabase:
    """A new database in an existing cluster, dropped afterwards."""

    def __init__(self, base: str) -> None:
        import psycopg

        self.base = base
        self.name = f"fieldsync_load_{secrets.token_hex(4)}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
            self.settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                             for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers",
                                          "max_connections")}

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def _pg_base(pg_url: str | None) -> str | None:
    if pg_url:
        return pg_url
    if os.environ.get("FIELDSYNC_BENCH_PG"):
        return os.environ["FIELDSYNC_BENCH_PG"]
    return None


def bench_backend(backend: str, plan: Plan, folder: Path, pg_url: str | None, spy: bool = False,
                  code: str | None = None) -> dict[str, Any]:
    sizes = spread(plan.devices, plan.seed)
    own = None
    pgdb: _PgDatabase | None = None
    pg: PgBackends | None = None
    app = f"fsload-{secrets.token_hex(3)}"
    info: dict[str, Any] = {}
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'district.db'}"
        info = {"url": "sqlite:///<tmp>/district.db", "pragmas": "journal_mode=WAL, synchronous=FULL"}
    else:
        base = _pg_base(pg_url)
        if base is None:
            from .sync import OwnCluster

            own = OwnCluster(PG_BIN)
            base = own.url
        pgdb = _PgDatabase(base)
        url = _with_db(base, pgdb.name, application_name=app)
        info = {"cluster": "given" if own is None else "started by the benchmark (fsync=on)", **pgdb.settings}
    server: Server | None = None
    try:
        devices, loaded = build_district(url, plan, sizes)
        server = Server(url, plan.workers, folder / f"server-{backend}.log", folder / "attachments", code)
        if backend == "postgresql":
            pg = PgBackends(_with_db(url, pgdb.name if pgdb else "", application_name="fsload-monitor"), app)
        result = asyncio.run(_drive(devices, plan, server, pg, folder if spy else None))
        result["server_rss_mb"] = server.rss_mb()
        result["server_command"] = " ".join(server.command[1:3] + ["URL"] + server.command[4:-2])
    finally:
        if pg is not None:
            pg.close()
        if server is not None:
            server.stop()
        if pgdb is not None:
            pgdb.drop()
        if own is not None:
            own.stop()
    result.update({"database": info, "load": loaded, "devices_per_grid": {str(k): sizes.count(k) for k in range(1, 6)
                                                                           if sizes.count(k)}})
    result["summary"] = _summary(result["rounds"])
    return result


def run(quick: bool = False, backends: Sequence[str] = ("sqlite", "postgresql"), devices: int | None = None,
        workers: int | None = None, concurrency: int | None = None, rounds: int | None = None,
        pg_url: str | None = None, where: str | None = None, seed: int = 1, spy: bool = False,
        server_code: str | None = None) -> dict[str, Any]:
    """Run the load benchmark on each backend; JSON-serialisable, with a ``table`` of rows."""
    from .store import machine

    plan = Plan(devices=devices or (100 if quick else 500), households=20 if quick else 60,
                rounds=rounds or (1 if quick else 2), concurrency=concurrency or (32 if quick else 64),
                workers=workers or 2, seed=seed)
    results: dict[str, Any] = {}
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-load-", dir=where) as tmp:
        for backend in backends:
            sub = Path(tmp) / backend
            sub.mkdir()
            results[backend] = bench_backend(backend, plan, sub, pg_url, spy, server_code)
        env = machine(Path(tmp))
    env["loadavg_before"], env["loadavg_after"] = load_before, loadavg()
    errors = sum(r["summary"]["errors"] + r["warmup"]["errors"] for r in results.values())
    table = []  # rows for the suite (bench/suite.py): {metric, value, unit, baseline, ratio, goal, met}
    for backend, r in results.items():
        s = r["summary"]
        pg = backend == "postgresql"
        c = s["cpu_ms_per_session"]

        def row(metric: str, value: Any, unit: str, goal: str | None = None, met: bool | None = None,
                backend: str = backend) -> None:
            table.append({"metric": f"{backend}: {metric}", "value": value, "unit": unit, "baseline": None,
                          "ratio": None, "goal": goal, "met": met})

        row("sync sessions per second", s["sessions_per_s"], "sessions/s", ">= 200 (PostgreSQL)" if pg else None,
            s["sessions_per_s"] >= GOAL_RATE if pg else None)
        row("session latency p50", s["p50_ms"], "ms")
        row("session latency p95", s["p95_ms"], "ms")
        row("session latency p99", s["p99_ms"], "ms", "< 1000 (PostgreSQL)" if pg else None,
            s["p99_ms"] < GOAL_P99_MS if pg else None)
        row("failed sessions", s["errors"], "sessions", "0", s["errors"] == 0)
        row("server CPU per session", c["server"], "ms")
        if pg:
            row("PostgreSQL CPU per session", c["postgresql"], "ms")
        row("load generator CPU per session", c["load_generator"], "ms")
        row("other processes during the run", s["others_cores"], "cores")
        row("rate these cores would sustain alone (CPU-bound)", s["cpu_bound_sessions_per_s"], "sessions/s")
    goals = {}
    if "postgresql" in results:
        s = results["postgresql"]["summary"]
        goals["postgresql_200_sessions_per_s"] = {"value": s["sessions_per_s"], "met": s["sessions_per_s"] >= GOAL_RATE}
        goals["postgresql_p99_under_1s"] = {"value": s["p99_ms"], "met": s["p99_ms"] < GOAL_P99_MS}
    city = {b: city_estimate(r["summary"]["cpu_ms_per_session"]["server"],
                             r["summary"]["cpu_ms_per_session"]["postgresql"] if b != "sqlite" else None)
            for b, r in results.items()}
    out = {
        "benchmark": "fieldsync.load",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": plan.__dict__,
        "server_code": server_code or "this working tree",
        "machine": env,
        "results": results,
        "table": table,
        "goals": goals,
        "city": city,
        "errors": errors,
    }
    if errors:
        raise RuntimeError(f"{errors} sync sessions failed: " + json.dumps(
            {b: r["warmup"]["error_samples"] + [e for x in r["rounds"] for e in x["error_samples"]]
             for b, r in results.items()}, ensure_ascii=False)[:2000])
    return out


# -- report --------------------------------------------------------------------------------------
def report(result: Mapping[str, Any]) -> str:
    m, p = result["machine"], result["plan"]
    lines = [f"server code: {result['server_code']}",
             f"fieldsync load benchmark: {p['devices']} devices, {p['workers']} server workers, concurrency "
             f"{p['concurrency']}, {p['changes']} changes pushed per session, {p['rounds']} measured round(s)",
             f"machine: {m.get('cpu')}, {m.get('cores_usable')}/{m.get('cores')} cores, Python {m.get('python')}; "
             f"load average before {m['loadavg_before']}, after {m['loadavg_after']}", ""]
    header = ("backend / round", "sessions", "sess/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
              "CPU ms/session server / pg / loadgen", "others' cores", "load avg")
    rows = [header]
    for backend, r in result["results"].items():
        for rd in [r["warmup"], *r["rounds"]]:
            c = rd["cpu_ms_per_session"]
            rows.append((f"{backend} {'warm-up' if rd['round'] == 0 else 'round ' + str(rd['round'])}",
                         str(rd["sessions"]), f"{rd['sessions_per_s']:.1f}", f"{rd['latency_ms']['p50']:.0f}",
                         f"{rd['latency_ms']['p95']:.0f}", f"{rd['latency_ms']['p99']:.0f}",
                         f"{rd['latency_ms']['max']:.0f}", str(rd["errors"]),
                         f"{c['server']:.1f} / {c['postgresql']:.1f} / {c['load_generator']:.1f}",
                         f"{rd['others_cores']:.2f}", str(rd["loadavg_start"][0])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for backend, r in result["results"].items():
        lines.append(f"{backend}: {r['load']['grids']} grids, {r['load']['records']} records loaded in "
                     f"{r['load']['seconds']} s; devices per grid {r['devices_per_grid']}; enrollment "
                     f"{r['enroll_seconds']} s; bytes per session {r['rounds'][0]['bytes_per_session']}; "
                     f"server RSS {r['server_rss_mb']} MB; database {r['database']}")
    for backend, r in result["results"].items():
        s = r["summary"]
        lines.append(f"{backend}, measured rounds: {s['sessions_per_s']} sessions/s, p99 {s['p99_ms']} ms; CPU per session "
                     f"{s['cpu_ms_per_session']}; with nothing else running these cores would sustain about "
                     f"{s['cpu_bound_sessions_per_s']} sessions/s")
    for name, g in result["goals"].items():
        lines.append(f"goal {name}: {g['value']} -> {'MET' if g['met'] else 'MISSED'}")
    for backend, c in result["city"].items():
        lines.append(f"city estimate ({backend}): {c['workers']} workers in {c['window_min']} min = "
                     f"{c['average_sessions_per_s']}/s, peak x{c['peak_factor']} = {c['peak_sessions_per_s']}/s -> "
                     f"{c['app_cores']} app cores + {c['db_cores']} database cores at {c['target_utilisation']:.0%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=None, help="simulated devices (default 500; --quick 100)")
    ap.add_argument("--workers", type=int, default=None, help="server worker processes (default 2)")
    ap.add_argument("--concurrency", type=int, default=None, help="sessions in flight at once (default 64)")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds after the warm-up (default 2)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--pg-url", default=None, help="PostgreSQL cluster to use (a database is created and dropped)")
    ap.add_argument("--dir", default=None, help="folder for the temporary SQLite database")
    ap.add_argument("--quick", action="store_true", help="100 devices, small grids, one measured round")
    ap.add_argument("--json", default=None, help="also write the result as JSON to this file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--py-spy", action="store_true", help="sample the server workers with py-spy; print the top")
    ap.add_argument("--server-code", default=None, metavar="DIR",
                    help="run the server from another copy of server_stub/ and fieldsync/ (PYTHONPATH=DIR), "
                         "e.g. the code before a change, for a before/after comparison")
    args = ap.parse_args(argv)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    try:
        result = run(quick=args.quick, backends=backends, devices=args.devices, workers=args.workers,
                     concurrency=args.concurrency, rounds=args.rounds, pg_url=args.pg_url, where=args.dir,
                     seed=args.seed, spy=args.py_spy, server_code=args.server_code)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    for backend, r in result["results"].items():
        if "profile" in r:
            prof = r["profile"]
            print(f"\n== py-spy, {backend} server workers, measured rounds: {prof['samples']} samples")
            for title in ("self", "inclusive"):
                print(f"-- {title}")
                for name, n in prof[title][:45]:
                    print(f"{100 * n / max(prof['samples'], 1):5.1f}%  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
