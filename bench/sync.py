"""Sync benchmark: a real uvicorn district server on loopback, on SQLite and on PostgreSQL.

Run ``python -m bench.sync [--quick] [--backend sqlite|postgresql|both] [--json PATH]``.

For each backend, a fresh server database (a SQLite file, or a new schema in PostgreSQL) is
filled with :mod:`server_stub.demo_data` records through ``District.write_many``, then
``python -m uvicorn server_stub.asgi:app`` is started as a subprocess on 127.0.0.1 and devices
(fresh encrypted :class:`fieldsync.Store` files, enrolled with one-time codes) sync with it
through :class:`fieldsync.sync.SyncClient` and :class:`fieldsync.transport.RequestsTransport`:

1. **Initial pull** of one grid (1 grid record, 300 households, 900 residents, 3,000 visits,
   300 reports: 4,501 records) into an empty store: ``client.sync()`` timed as a whole;
   records/s, wire bytes per record (gzip bodies, as ``SyncResult.bytes_received`` counts
   them), requests.  Repeated on ``--runs`` identical grids, one device each.
2. **Push** of 1,000 visits created offline (``store.put_many``) on the same device: one
   ``client.sync()``, split at the moment the client's status turns from ``pushing`` to
   ``pulling`` (the public ``on_status`` callback): push records/s, then the pull of the
   1,000 records the server now holds with new sequence numbers ("echo").
3. **No-op sync** (nothing to push or pull) on a device holding 1,000 records and on one
   holding 100,000 (one big grid, pulled once first; that pull is measured too): requests,
   bytes sent + received (bodies as the client counts them, and with HTTP headers), wall time;
   ``--noop-runs`` syncs each, alternating between the two devices, median reported.

Every phase also records the server process's CPU seconds (``/proc/<pid>/stat`` utime+stime),
the PostgreSQL backends' CPU serving it (found by ``application_name``), the client's CPU,
the time the client spent waiting on HTTP, and the CPU every *other* process on the machine
used meanwhile (``/proc/stat`` busy time minus ours): on a shared machine that says how much
a number was disturbed.  The client sends one request at a time and waits for the answer,
so client and server take turns; ``records_per_cpu_s`` (records over client + server +
PostgreSQL CPU) is the rate the phase would reach with nothing else running.  After loading,
the benchmark runs ``CHECKPOINT`` (PostgreSQL) and ``sync`` so the load's writes do not land
in the measurements.  ``--quick`` uses 10,000 records instead of 100,000, one run and 20
no-op syncs per store.

PostgreSQL: ``--pg-url URL`` (or ``$FIELDSYNC_BENCH_PG``) names a cluster to use (a schema
is created and dropped); without one, a throwaway cluster is started with initdb/pg_ctl
from ``--pg-bin`` (as scripts/pg.sh does, but with PostgreSQL's default ``fsync=on``) and
removed afterwards.

The stores are created with scrypt N=2^14 instead of the default 2^17: the KDF runs once per
unlock, before any sync, so it is in none of the numbers (its cost is in bench.store).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import quote, urlsplit

import requests

from fieldsync import KdfParams, Store
from fieldsync.sync import SyncClient, SyncProgress, SyncResult, SyncStatus, enroll
from fieldsync.transport import Request, RequestsTransport, Response
from server_stub import demo_data
from server_stub.district import District
from server_stub.replica import Actor

from .procs import free_port, loadavg, machine_cpu, proc_cpu
from .store import machine as _store_machine

__all__ = ["run", "main", "report", "table"]

REPO = Path(__file__).resolve().parent.parent
PIN = "246810"
BENCH_KDF = KdfParams(n=2**14)
SERVER_START_TIMEOUT_S = 30.0
PG_BIN = "/usr/lib/postgresql/15/bin"

GOAL_PULL = 20_000.0  # records/s
GOAL_PUSH = 10_000.0  # records/s
GOAL_NOOP_REQUESTS = 1
GOAL_NOOP_BYTES = 2048
GOAL_NOOP_SCALE = 1.3

OFFLINE_CHANGES = 1_000
PACKAGES = ("fieldsync", "requests", "urllib3", "uvicorn", "h11", "httptools", "uvloop", "starlette", "anyio",
            "psycopg", "psycopg-binary", "cryptography", "sqlite-utils")


# -- data ------------------------------------------------------------------
Records = dict[str, list[dict[str, Any]]]


def one_grid(grid: str, seed: int) -> Records:
    """A demo grid: 300 households, 900 residents, 3,000 visits, 300 reports (+ the grid record)."""
    hh = demo_data.households(300, grid, seed, people=900)
    return {
        "grids": demo_data.grid_records(grid, 1, seed, n_reports=0)["grids"],
        "households": hh,
        "residents": demo_data.residents(hh, seed=seed),
        "visits": demo_data.visits(hh, 10, seed),
        "reports": demo_data.reports(300, grid, seed, households=hh),
    }


def big_grid(grid: str, total: int, seed: int) -> Records:
    """``total`` records in one grid, mixed like a district: 6 % households, 20 % residents, 66 % visits, 8 % reports."""
    n_hh = total * 6 // 100
    people = total * 20 // 100
    per_hh = 11
    hh = demo_data.households(n_hh, grid, seed, people=people)
    data: Records = {
        "grids": demo_data.grid_records(grid, 1, seed, n_reports=0)["grids"],
        "households": hh,
        "residents": demo_data.residents(hh, seed=seed),
        "visits": demo_data.visits(hh, per_hh, seed),
    }
    data["reports"] = demo_data.reports(total - sum(len(v) for v in data.values()), grid, seed, households=hh)
    return data


def small_grid(grid: str, total: int, seed: int) -> Records:
    """``total`` records: the grid record, households and residents (1 : 3)."""
    n_hh = (total - 1) // 4
    hh = demo_data.households(n_hh, grid, seed, people=total - 1 - n_hh)
    return {"grids": demo_data.grid_records(grid, 1, seed, n_reports=0)["grids"], "households": hh,
            "residents": demo_data.residents(hh, seed=seed)}


def offline_visits(grid: str, worker: str, households: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` new visits as a worker records them offline: no id (the store makes one), spread over the households."""
    per = -(-n // len(households))
    out = demo_data.visits(households, per, seed, worker_id=worker)[:n]
    return [{k: v for k, v in r.items() if k != "id"} for r in out]


def _count(data: Records) -> int:
    return sum(len(v) for v in data.values())


# -- processes and counters -----------------------------------------------
class Server:
    """``python -m uvicorn server_stub.asgi:app`` on 127.0.0.1 serving ``db_url``."""

    def __init__(self, db_url: str, log: Path, app: str = "server_stub.asgi:app") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "FIELDSYNC_DB": db_url}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{self.url}/v1/hello", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not answer within {SERVER_START_TIMEOUT_S:.0f} s:\n{log.read_text()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PgBackends:
    """CPU of the PostgreSQL backend processes serving connections named ``app`` (same machine only)."""

    def __init__(self, monitor_url: str, app: str) -> None:
        import psycopg

        self.app = app
        self.conn = psycopg.connect(monitor_url, autocommit=True)
        self.pids: set[int] = set()

    def refresh(self) -> None:
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app,)).fetchall()
        self.pids |= {int(r[0]) for r in rows}

    def cpu(self) -> dict[int, float]:
        return {pid: proc_cpu(pid) for pid in self.pids}

    def close(self) -> None:
        self.conn.close()


def _head_size(headers: Mapping[str, str]) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2


class Meter:
    """Wraps the client's RequestsTransport: counts requests, bytes (bodies as sent and as
    received on the wire, and HTTP/1.1 header bytes) and the time spent waiting for answers."""

    def __init__(self, inner: RequestsTransport) -> None:
        self.inner = inner
        self.requests = 0
        self.wait_s = 0.0
        self.body_sent = 0
        self.body_wire = 0  # response bodies as they crossed the socket (gzip)
        self.body_json = 0  # response bodies after gunzip
        self.head_bytes = 0
        self.paths: Counter[str] = Counter()
        inner.session.hooks["response"].append(self._on_response)

    @property
    def base_url(self) -> str:
        return self.inner.base_url

    def _on_response(self, r: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        req = r.request
        # What http.client puts on the socket: request line, Host, the prepared headers, blank line;
        # then the status line and the raw response headers.
        method, url = str(req.method), str(req.url)
        sent = len(f"{method} {req.path_url} HTTP/1.1\r\n") + len(f"Host: {urlsplit(url).netloc}\r\n")
        sent += _head_size(req.headers)  # type: ignore[arg-type]
        got = len(f"HTTP/1.1 {r.status_code} {r.reason}\r\n") + _head_size(dict(r.raw.headers.items()))
        self.head_bytes += sent + got
        return r

    def handle(self, request: Request) -> Response:
        t0 = time.perf_counter()
        resp = self.inner.handle(request)
        self.wait_s += time.perf_counter() - t0
        self.requests += 1
        self.paths[request.path] += 1
        self.body_sent += len(request.body)
        self.body_wire += resp.size_on_wire
        self.body_json += len(resp.body)
        return resp

    def close(self) -> None:
        self.inner.close()


@dataclass
class Snap:
    t: float
    client_cpu: float
    server_cpu: float
    pg_cpu: dict[int, float]
    requests: int
    wait_s: float
    body_sent: int
    body_wire: int
    body_json: int
    head_bytes: int
    busy: float
    idle: float
    iowait: float


@dataclass
class Env:
    """One backend's running server and what the benchmark needs around it."""

    backend: str
    server: Server
    district: District  # the benchmark's own handle (issue codes); not the server's
    folder: Path
    pg: PgBackends | None = None
    devices: list["Device"] = field(default_factory=list)

    def snap(self, meter: Meter, refresh_pg: bool = True) -> Snap:
        if self.pg is not None and refresh_pg:
            self.pg.refresh()
        busy, idle, iowait = machine_cpu()
        return Snap(time.perf_counter(), time.process_time(), self.server.cpu(),
                    self.pg.cpu() if self.pg else {}, meter.requests, meter.wait_s, meter.body_sent,
                    meter.body_wire, meter.body_json, meter.head_bytes, busy, idle, iowait)


def _delta(a: Snap, b: Snap) -> dict[str, Any]:
    pg = sum(b.pg_cpu.get(p, 0.0) - a.pg_cpu.get(p, 0.0) for p in set(a.pg_cpu) | set(b.pg_cpu))
    ours = (b.client_cpu - a.client_cpu) + (b.server_cpu - a.server_cpu) + pg
    return {
        "other_cpu_s": max(0.0, (b.busy - a.busy) - ours),  # every other process on the machine
        "idle_cpu_s": b.idle - a.idle,  # no process wanted a core
        "iowait_s": b.iowait - a.iowait,  # idle with some process waiting on the disk
        "seconds": b.t - a.t,
        "client_cpu_s": b.client_cpu - a.client_cpu,
        "server_cpu_s": b.server_cpu - a.server_cpu,
        "pg_cpu_s": pg,
        "requests": b.requests - a.requests,
        "http_wait_s": b.wait_s - a.wait_s,
        "bytes_sent": b.body_sent - a.body_sent,
        "bytes_received": b.body_wire - a.body_wire,
        "json_received": b.body_json - a.body_json,
        "header_bytes": b.head_bytes - a.head_bytes,
    }


class Device:
    """An enrolled tablet: a fresh encrypted store, a metered transport, a SyncClient."""

    def __init__(self, env: Env, worker: str, name: str) -> None:
        self.path = env.folder / f"{name}.fsdb"
        t0 = time.perf_counter()
        self.store = Store.create(self.path, PIN, kdf=BENCH_KDF)
        self.create_s = time.perf_counter() - t0
        code, _ = env.district.issue_code(worker)
        self.meter = Meter(RequestsTransport(env.server.url))
        enroll(self.store, env.server.url, code, transport=self.meter, device_name=f"bench {name}")
        self._watch: Callable[[SyncStatus], None] | None = None
        self.client = SyncClient(self.store, self.meter, on_status=self._on_status)
        env.devices.append(self)

    def _on_status(self, status: SyncStatus) -> None:
        if self._watch is not None:
            self._watch(status)

    def close(self) -> None:
        self.meter.close()
        self.store.close()


def timed_sync(env: Env, dev: Device, split: bool = False, profile: cProfile.Profile | None = None,
               pages: list[tuple[int, float, float]] | None = None) -> tuple[SyncResult, dict[str, Any]]:
    """One ``client.sync()`` with counters around it; with ``split``, also cut at the first
    status whose phase is ``pulling`` (the end of the push).  ``pages`` collects, per pulled
    page, (records so far, seconds since the start, seconds of it spent waiting on HTTP)."""
    marks: list[Snap] = []
    t_start = wait_start = 0.0

    def on_page(p: SyncProgress) -> None:
        if pages is not None and p.phase == "pulling":
            pages.append((p.records, time.perf_counter() - t_start, dev.meter.wait_s - wait_start))

    def watch(status: SyncStatus) -> None:
        if not marks and status.phase == "pulling":
            marks.append(env.snap(dev.meter, refresh_pg=False))

    dev._watch = watch if split else None
    gc.collect()
    before = env.snap(dev.meter)
    t_start, wait_start = time.perf_counter(), dev.meter.wait_s
    if profile is not None:
        profile.enable()
    try:
        result = dev.client.sync(progress=on_page if pages is not None else None)
    finally:
        if profile is not None:
            profile.disable()
        dev._watch = None
    after = env.snap(dev.meter)
    out: dict[str, Any] = {"whole": _delta(before, after)}
    if split:
        if not marks:
            raise AssertionError("the client never entered the pulling phase")
        out["push"] = _delta(before, marks[0])
        out["pull"] = _delta(marks[0], after)
    return result, out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def _phase(n: int, d: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "records": n,
        "records_per_s": round(_rate(n, d["seconds"]), 1),
        # Client and server take turns (one request at a time), so with no other load the wall time
        # would be about the sum of their CPU: the rate this machine would give if nothing else ran.
        "records_per_cpu_s": round(_rate(n, d["client_cpu_s"] + d["server_cpu_s"] + d["pg_cpu_s"]), 1),
        "seconds": round(d["seconds"], 4),
        "requests": d["requests"],
        "bytes_sent": d["bytes_sent"],
        "bytes_received": d["bytes_received"],
        "bytes_per_record": round((d["bytes_received"] + d["bytes_sent"]) / n, 1) if n else None,
        "json_bytes_received": d["json_received"],
        "header_bytes": d["header_bytes"],
        "http_wait_s": round(d["http_wait_s"], 4),
        "client_cpu_s": round(d["client_cpu_s"], 3),
        "server_cpu_s": round(d["server_cpu_s"], 3),
        "pg_cpu_s": round(d["pg_cpu_s"], 3),
        "other_cpu_s": round(d["other_cpu_s"], 3),
        "idle_cpu_s": round(d["idle_cpu_s"], 3),
        "iowait_s": round(d["iowait_s"], 3),
    }


# -- PostgreSQL ------------------------------------------------------------
class OwnCluster:
    """A throwaway PostgreSQL cluster (scripts/pg.sh's recipe, fsync left on)."""

    def __init__(self, pg_bin: str) -> None:
        self.bin = Path(pg_bin)
        if not (self.bin / "initdb").exists():
            raise RuntimeError(f"PostgreSQL binaries not found in {pg_bin} (apt-get install postgresql-15), "
                               "or give --pg-url")
        self.dir = Path(tempfile.mkdtemp(prefix="fieldsync-bench-pg."))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        port = free_port()
        try:
            self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
            self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-o",
                      f"-k {self.dir} -p {port} -c listen_addresses='' -c max_connections=200", "start")
            self._run("createdb", "-h", str(self.dir), "-p", str(port), "-U", "postgres", "fieldsync_bench")
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql://postgres@/fieldsync_bench?host={self.dir}&port={port}"

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([*self.run_as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def _with_params(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


@contextmanager
def pg_schema(base: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A new schema in ``base``'s database: yields (URL using it, schema name, server settings)."""
    import psycopg

    schema = f"bench_{secrets.token_hex(5)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")}
    try:
        yield _with_params(base, options=quote(f"-csearch_path={schema}", safe="-")), schema, settings
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# -- py-spy on the server (optional) ----------------------------------------
class Spy:
    """``py-spy record`` on the server process for one phase (raw collapsed stacks)."""

    def __init__(self, exe: str, pid: int, out: Path, rate: int = 500, gil: bool = False, top: int = 25) -> None:
        """``gil``: sample only the thread holding the GIL, i.e. Python CPU."""
        self.out, self.top = out, top
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                      *(["--gil"] if gil else []), "--output", str(out), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach before the phase starts

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarise_stacks(self.out, top=self.top)


def summarise_stacks(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"samples": 0}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        total += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {"samples": total, "self": own.most_common(top), "inclusive": incl.most_common(top), "file": str(path)}


# -- one backend -----------------------------------------------------------
@dataclass
class Plan:
    runs: int
    big: int
    small: int
    noop_runs: int
    seed: int


def _load(district: District, data: Records) -> int:
    actor = Actor("bench", "admin")
    n = 0
    for collection, items in data.items():
        n += district.write_many(actor, collection, items)
    return n


def bench_backend(backend: str, db_url: str, folder: Path, plan: Plan, datasets: Mapping[str, Records],
                  pg_monitor: str | None, app_name: str, profile: bool, spy: str | None,
                  server_app: str = "server_stub.asgi:app") -> dict[str, Any]:
    """Load the data, start the server, run every phase; returns this backend's results."""
    out: dict[str, Any] = {}
    district = District(db_url if pg_monitor is None else _with_params(db_url, application_name=f"{app_name}-loader"))
    t0 = time.perf_counter()
    loaded = 0
    for grid, data in datasets.items():
        worker = f"w-{grid}-01"
        district.add_worker(worker, f"网格员 {grid}")
        district.assign(worker, grid)
        loaded += _load(district, data)
    load_s = time.perf_counter() - t0
    out["server_load"] = {"records": loaded, "seconds": round(load_s, 2), "records_per_s": round(loaded / load_s, 1),
                          "how": "District.write_many(Actor('bench', 'admin'), collection, records), one transaction per collection"}
    # Let the load's writes reach the disk now, not during the measurements.
    if pg_monitor is not None:
        import psycopg

        with psycopg.connect(pg_monitor, autocommit=True) as conn:
            try:
                conn.execute("CHECKPOINT")
            except psycopg.Error:  # needs pg_checkpoint or superuser; the run goes on without it
                out["server_load"]["checkpoint"] = "refused"
    os.sync()

    server_url = db_url if pg_monitor is None else _with_params(db_url, application_name=app_name)
    server = Server(server_url, folder / f"uvicorn-{backend}.log", server_app)
    pg = PgBackends(pg_monitor, app_name) if pg_monitor is not None else None
    env = Env(backend, server, district, folder / backend, pg)
    env.folder.mkdir()
    profiles: dict[str, str] = {}
    spies: dict[str, Any] = {}

    def spying(label: str) -> Spy | None:
        return Spy(spy, server.pid, folder / f"py-spy-{backend}-{label}.txt") if spy else None

    try:
        # 1 + 2: initial pull of one grid, then push 1,000 offline changes, on --runs grids.
        pulls: list[dict[str, Any]] = []
        pushes: list[dict[str, Any]] = []
        for i in range(plan.runs):
            grid = f"wc-bench-grid-{i + 1}"
            dev = Device(env, f"w-{grid}-01", f"grid{i + 1}")
            prof = cProfile.Profile() if profile and i == 0 else None
            sp = spying("initial-pull") if i == 0 else None
            result, d = timed_sync(env, dev, profile=prof)
            if sp:
                spies["initial_pull"] = sp.stop()
            expected = _count(datasets[grid])
            if result.pulled != expected:
                raise AssertionError(f"pulled {result.pulled} records, expected {expected}")
            pulls.append({**_phase(result.pulled, d["whole"]), "pages": result.requests})
            if prof:
                profiles["initial_pull"] = _pstats(prof)

            new = offline_visits(grid, f"w-{grid}-01", datasets[grid]["households"], OFFLINE_CHANGES, plan.seed + 100 + i)
            t_put = time.perf_counter()
            dev.store.put_many("visits", new)
            put_s = time.perf_counter() - t_put
            if dev.store.outbox_size() != OFFLINE_CHANGES:
                raise AssertionError(f"outbox holds {dev.store.outbox_size()} entries, expected {OFFLINE_CHANGES}")
            prof = cProfile.Profile() if profile and i == 0 else None
            sp = spying("push-and-echo") if i == 0 else None
            result, d = timed_sync(env, dev, split=True, profile=prof)
            if sp:
                spies["push_and_echo"] = sp.stop()
            if result.pushed != OFFLINE_CHANGES or result.rejected or dev.store.outbox_size():
                raise AssertionError(f"push: {result}")
            pushes.append({
                "offline_put_many_s": round(put_s, 3),
                "push": _phase(result.pushed, d["push"]),
                "echo_pull": _phase(result.pulled, d["pull"]),
                "whole_sync": _phase(result.pushed, d["whole"]),
            })
            if prof:
                profiles["push_and_echo"] = _pstats(prof)
        out["initial_pull"] = {"runs": pulls, **_medians(pulls, ("records_per_s", "records_per_cpu_s", "seconds", "bytes_per_record",
                                                                 "server_cpu_s", "client_cpu_s", "pg_cpu_s"))}
        out["push"] = {
            "runs": pushes,
            **_medians([p["push"] for p in pushes], ("records_per_s", "records_per_cpu_s", "seconds", "server_cpu_s",
                                                      "client_cpu_s", "pg_cpu_s")),
            "echo_pull_records_per_s": statistics.median(p["echo_pull"]["records_per_s"] for p in pushes),
            "whole_sync_records_per_s": statistics.median(p["whole_sync"]["records_per_s"] for p in pushes),
        }

        # 3: no-op syncs on a 1,000-record device and a 100,000-record device.
        small = Device(env, "w-wc-bench-small-01", "small")
        result, d = timed_sync(env, small)
        out["pull_small"] = {**_phase(result.pulled, d["whole"]), "pages": result.requests}
        big = Device(env, "w-wc-bench-big-01", "big")
        prof = cProfile.Profile() if profile else None
        sp = spying("big-pull")
        pages: list[tuple[int, float, float]] = []
        result, d = timed_sync(env, big, profile=prof, pages=pages)
        if sp:
            spies["big_pull"] = sp.stop()
        if result.pulled != plan.big:
            raise AssertionError(f"pulled {result.pulled} records, expected {plan.big}")
        out["pull_big"] = {**_phase(result.pulled, d["whole"]), "pages": result.requests,
                           "per_page": _per_page(pages)}
        if prof:
            profiles["big_pull"] = _pstats(prof)

        noop: dict[str, list[dict[str, Any]]] = {"small": [], "big": []}
        for dev in (small, big):  # one unmeasured no-op each: the first one after a pull may verify a checksum
            timed_sync(env, dev)
        sp = spying("noop")
        for i in range(plan.noop_runs):
            for label, dev in (("small", small), ("big", big)) if i % 2 == 0 else (("big", big), ("small", small)):
                result, d = timed_sync(env, dev)
                if result.pushed or result.pulled or result.repaired:
                    raise AssertionError(f"not a no-op: {result}")
                w = d["whole"]
                noop[label].append({
                    "seconds": w["seconds"], "requests": result.requests,
                    "bytes": result.bytes_sent + result.bytes_received,
                    "bytes_sent": result.bytes_sent, "bytes_received": result.bytes_received,
                    "header_bytes": w["header_bytes"], "client_cpu_s": w["client_cpu_s"],
                    "server_cpu_s": w["server_cpu_s"], "pg_cpu_s": w["pg_cpu_s"], "http_wait_s": w["http_wait_s"],
                })
        if sp:
            spies["noop"] = sp.stop()
        # CPU per no-op sync: /proc/<pid>/stat counts in 1/100 s ticks, too coarse for one sync of a few
        # ms, so each store gets a block of back-to-back syncs and the block's CPU is divided.
        block = max(40, 2 * plan.noop_runs)
        cpu_block: dict[str, dict[str, float]] = {}
        for label, dev in (("small", small), ("big", big)):
            gc.collect()
            before = env.snap(dev.meter)
            for _ in range(block):
                dev.client.sync()
            d = _delta(before, env.snap(dev.meter))
            cpu_block[label] = {"syncs": block, "ms_per_sync": d["seconds"] / block * 1000,
                                **{k: d[k] / block * 1000 for k in ("client_cpu_s", "server_cpu_s", "pg_cpu_s")}}
        # The client trusts a verified grid checksum for REVERIFY_MS (6 h), then rescans the grid
        # once in a no-op sync: that sync costs one full grid_checksum more.
        rescan: dict[str, float] = {}
        for label, dev, grid in (("small", small, "wc-bench-small"), ("big", big, "wc-bench-big")):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                dev.store.grid_checksum(grid)
                times.append(time.perf_counter() - t0)
            rescan[label] = statistics.median(times) * 1000
        out["noop"] = {}
        for label, dev, n in (("small", small, plan.small), ("big", big, plan.big)):
            runs = noop[label]
            times = sorted(r["seconds"] * 1000 for r in runs)
            out["noop"][label] = {
                "records_in_store": dev.store.count("households") + dev.store.count("residents")
                + dev.store.count("visits") + dev.store.count("reports") + dev.store.count("grids"),
                "expected_records": n,
                "runs": len(runs),
                "median_ms": round(statistics.median(times), 3),
                "p10_ms": round(_pct(times, 0.10), 3),
                "p90_ms": round(_pct(times, 0.90), 3),
                "min_ms": round(times[0], 3),
                "requests": max(r["requests"] for r in runs),
                "bytes": max(r["bytes"] for r in runs),
                "bytes_sent": max(r["bytes_sent"] for r in runs),
                "bytes_received": max(r["bytes_received"] for r in runs),
                "bytes_with_headers": max(r["bytes"] + r["header_bytes"] for r in runs),
                "http_wait_median_ms": round(statistics.median(r["http_wait_s"] for r in runs) * 1000, 3),
                "full_rescan_ms": round(rescan[label], 2),
                "block_syncs": cpu_block[label]["syncs"],
                "block_ms_per_sync": round(cpu_block[label]["ms_per_sync"], 3),
                "client_cpu_ms_per_sync": round(cpu_block[label]["client_cpu_s"], 2),
                "server_cpu_ms_per_sync": round(cpu_block[label]["server_cpu_s"], 2),
                "pg_cpu_ms_per_sync": round(cpu_block[label]["pg_cpu_s"], 2),
                "store_file_mb": round(sum(p.stat().st_size for p in dev.path.parent.glob(dev.path.name + "*")
                                           if p.is_file()) / 1e6, 1),
            }
        out["noop"]["ratio_big_small"] = round(out["noop"]["big"]["median_ms"] / out["noop"]["small"]["median_ms"], 3)
        # Each round runs the two stores back to back, so the ratio within a round cancels most of
        # the load other processes put on the machine; the median of those is the steadier figure.
        out["noop"]["ratio_big_small_paired"] = round(statistics.median(
            b["seconds"] / a["seconds"] for a, b in zip(noop["small"], noop["big"])), 3)
        cpu = {k: out["noop"][k]["client_cpu_ms_per_sync"] + out["noop"][k]["server_cpu_ms_per_sync"]
               + out["noop"][k]["pg_cpu_ms_per_sync"] for k in ("small", "big")}
        out["noop"]["ratio_big_small_cpu"] = round(cpu["big"] / cpu["small"], 3) if cpu["small"] else None
        out["server_rss_mb"] = _rss_mb(server.pid)
    finally:
        for dev in env.devices:
            dev.close()
        server.stop()
        if pg is not None:
            pg.close()
        district.close()
    if profiles:
        out["client_profile"] = profiles
    if spies:
        out["server_py_spy"] = spies
    out["server_log_tail"] = (folder / f"uvicorn-{backend}.log").read_text(errors="replace").splitlines()[-3:]
    return out


def _per_page(pages: Sequence[tuple[int, float, float]]) -> dict[str, Any]:
    """Per pulled page: records, ms in all, ms waiting for the server; and the client's own
    µs per record (time not spent waiting on HTTP) over the first and the last tenth of the pages."""
    rows = []
    prev = (0, 0.0, 0.0)
    for n, t, w in pages:
        rows.append((n - prev[0], round((t - prev[1]) * 1000, 1), round((w - prev[2]) * 1000, 1)))
        prev = (n, t, w)
    rows = [r for r in rows if r[0] > 0]
    k = max(1, len(rows) // 10)

    def client_us(part: Sequence[tuple[int, float, float]]) -> float:
        return round(sum(ms - wait for _, ms, wait in part) * 1000 / max(1, sum(n for n, _, _ in part)), 1)

    return {"pages": [list(r) for r in rows], "client_us_per_record_first": client_us(rows[:k]),
            "client_us_per_record_last": client_us(rows[-k:]),
            "server_wait_us_per_record_first": round(sum(r[2] for r in rows[:k]) * 1000 / max(1, sum(r[0] for r in rows[:k])), 1),
            "server_wait_us_per_record_last": round(sum(r[2] for r in rows[-k:]) * 1000 / max(1, sum(r[0] for r in rows[-k:])), 1)}


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _pct(ordered: Sequence[float], q: float) -> float:
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _medians(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    return {f"median_{k}": round(statistics.median(r[k] for r in runs), 4) for k in keys}


def _pstats(prof: cProfile.Profile, n: int = 30) -> str:
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(n)
    return text.getvalue()


# -- the run ---------------------------------------------------------------
def _goals(res: Mapping[str, Any]) -> dict[str, Any]:
    pull = res["initial_pull"]["median_records_per_s"]
    push = res["push"]["median_records_per_s"]
    small, big = res["noop"]["small"], res["noop"]["big"]
    requests_ = max(small["requests"], big["requests"])
    body = max(small["bytes"], big["bytes"])
    with_headers = max(small["bytes_with_headers"], big["bytes_with_headers"])
    ratio = res["noop"]["ratio_big_small"]
    return {
        "initial_pull_at_least_20000_per_s": {"value": pull, "met": pull >= GOAL_PULL},
        "push_at_least_10000_per_s": {"value": push, "met": push >= GOAL_PUSH},
        "noop_one_round_trip": {"value": requests_, "met": requests_ <= GOAL_NOOP_REQUESTS},
        "noop_under_2KB_bodies": {"value": body, "met": body < GOAL_NOOP_BYTES},
        "noop_under_2KB_with_http_headers": {"value": with_headers, "met": with_headers < GOAL_NOOP_BYTES},
        "noop_100k_within_1.3x_of_1k": {"value": ratio, "met": ratio <= GOAL_NOOP_SCALE},
    }


def run(quick: bool = False, backends: Sequence[str] = ("sqlite", "postgresql"), where: str | None = None,
        pg_url: str | None = None, pg_bin: str = PG_BIN, seed: int = 1, runs: int | None = None,
        noop_runs: int | None = None, big: int | None = None, profile: bool = False,
        spy: bool = False, server_app: str = "server_stub.asgi:app") -> dict[str, Any]:
    """Run the benchmark on each backend and return the results as plain data."""
    plan = Plan(runs=runs or (1 if quick else 3), big=big or (10_000 if quick else 100_000), small=1_000,
                noop_runs=noop_runs or (20 if quick else 50), seed=seed)
    spy_exe = (shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))) if spy else None
    if spy_exe is not None and not Path(spy_exe).exists():
        raise RuntimeError("--py-spy needs py-spy (.venv/bin/pip install py-spy)")
    source = _source()
    t_gen = time.perf_counter()
    datasets: dict[str, Records] = {}
    for i in range(plan.runs):
        datasets[f"wc-bench-grid-{i + 1}"] = one_grid(f"wc-bench-grid-{i + 1}", seed)
    datasets["wc-bench-small"] = small_grid("wc-bench-small", plan.small, seed + 1)
    datasets["wc-bench-big"] = big_grid("wc-bench-big", plan.big, seed + 2)
    if (_count(datasets["wc-bench-small"]), _count(datasets["wc-bench-big"])) != (plan.small, plan.big):
        raise AssertionError("the generated grids do not have the planned sizes")
    checked = sum(demo_data.check(d) for d in datasets.values())
    gen_s = time.perf_counter() - t_gen

    load_before = loadavg()
    results: dict[str, Any] = {}
    pg_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-sync-", dir=where) as tmp:
        folder = Path(tmp)
        for backend in backends:
            sub = folder / backend
            sub.mkdir()
            app = f"fsbench-{secrets.token_hex(4)}"
            started = time.perf_counter()
            if backend == "sqlite":
                res = bench_backend("sqlite", f"sqlite:///{sub / 'district.db'}", sub, plan, datasets, None, app,
                                    profile, spy_exe, server_app)
                res["database"] = {"url": "sqlite:///<tmp>/district.db", "sqlite": sqlite3.sqlite_version,
                                   "pragmas": "journal_mode=WAL, synchronous=FULL (server_stub/db.py)"}
            else:
                own: OwnCluster | None = None
                base = pg_url or os.environ.get("FIELDSYNC_BENCH_PG")
                if not base:
                    own = OwnCluster(pg_bin)
                    base = own.url
                try:
                    with pg_schema(base) as (url, schema, settings):
                        res = bench_backend("postgresql", url, sub, plan, datasets, base, app, profile, spy_exe,
                                            server_app)
                        res["database"] = {"cluster": "started by the benchmark" if own else "given (--pg-url)",
                                           "schema": schema, **settings}
                        pg_info = settings
                finally:
                    if own is not None:
                        own.stop()
            res["backend_seconds"] = round(time.perf_counter() - started, 1)
            timed = [*res["initial_pull"]["runs"], *[p["whole_sync"] for p in res["push"]["runs"]],
                     res["pull_small"], res["pull_big"]]
            res["disturbance"] = round(sum(p["other_cpu_s"] for p in timed) / sum(p["seconds"] for p in timed), 3)
            res["goals"] = _goals(res)
            results[backend] = res
        env = _store_machine(folder)
    env["loadavg_before"], env["loadavg_after"] = load_before, loadavg()
    env["packages"] = {d: _package_version(d) for d in PACKAGES}
    env["source"] = source
    if _source() != source:
        env["source"]["changed_during_run"] = True
    if pg_info:
        env["postgresql"] = pg_info.get("server_version")
    result = {
        "benchmark": "fieldsync.sync",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.sync" + (" --quick" if quick else "")
        + ("" if tuple(backends) == ("sqlite", "postgresql") else f" --backend {backends[0]}")
        + ("" if server_app == "server_stub.asgi:app" else f" --server-app {server_app}"),
        "machine": env,
        "setup": {
            "runs": plan.runs,
            "noop_runs": plan.noop_runs,
            "one_grid": {k: len(v) for k, v in datasets["wc-bench-grid-1"].items()},
            "small_grid": {k: len(v) for k, v in datasets["wc-bench-small"].items()},
            "big_grid": {k: len(v) for k, v in datasets["wc-bench-big"].items()},
            "offline_changes": OFFLINE_CHANGES,
            "validated": checked,
            "generate_seconds": round(gen_s, 1),
            "server": f"python -m uvicorn {server_app} --host 127.0.0.1 --port P (one process, default "
                      "uvicorn settings: h11/asyncio as installed, access log on, to a file)",
            "client": "SyncClient(store, RequestsTransport(url)) defaults: pull pages of 2,000, push batches of 500, "
                      "gzip bodies over 1 KiB both ways; HTTP keep-alive (one connection per device)",
            "store_kdf": f"scrypt N=2^{BENCH_KDF.n.bit_length() - 1} (paid once, at Store.create, outside every timing)",
            "seed": seed,
        },
        "results": results,
        "comparison": {
            "pouchdb_to_pouchdb_server": {"push_docs_per_s": 6900, "pull_docs_per_s": 11000},
            "kinto": {"accepts_records_per_s": 950},
            "source": "figures quoted in the brief for the same kind of machine; not measured here",
        },
    }
    result["table"] = table(result)
    return result


def table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for the suite (``python -m bench``): metric, value, unit, baseline, ratio, goal, met."""
    rows: list[dict[str, Any]] = []
    for backend, r in result["results"].items():
        g, small, big = r["goals"], r["noop"]["small"], r["noop"]["big"]
        pull, push = g["initial_pull_at_least_20000_per_s"], g["push_at_least_10000_per_s"]
        rows += [
            {"metric": f"{backend}: initial pull of one grid", "value": pull["value"], "unit": "records/s",
             "baseline": None, "ratio": None, "goal": f">= {GOAL_PULL:,.0f}/s", "met": pull["met"]},
            {"metric": f"{backend}: push of {OFFLINE_CHANGES:,} offline changes", "value": push["value"],
             "unit": "records/s", "baseline": None, "ratio": None, "goal": f">= {GOAL_PUSH:,.0f}/s", "met": push["met"]},
            {"metric": f"{backend}: pull of {r['pull_big']['records']:,} records", "value": r["pull_big"]["records_per_s"],
             "unit": "records/s", "baseline": None, "ratio": None, "goal": None, "met": None},
            {"metric": f"{backend}: no-op sync, {big['records_in_store']:,}-record store", "value": big["median_ms"],
             "unit": "ms", "baseline": f"{small['median_ms']} ms ({small['records_in_store']:,} records)",
             "ratio": r["noop"]["ratio_big_small"], "goal": f"ratio <= {GOAL_NOOP_SCALE}",
             "met": g["noop_100k_within_1.3x_of_1k"]["met"]},
            {"metric": f"{backend}: no-op sync requests", "value": g["noop_one_round_trip"]["value"], "unit": "requests",
             "baseline": None, "ratio": None, "goal": f"<= {GOAL_NOOP_REQUESTS}", "met": g["noop_one_round_trip"]["met"]},
            {"metric": f"{backend}: no-op sync bytes (bodies)", "value": g["noop_under_2KB_bodies"]["value"],
             "unit": "bytes", "baseline": None, "ratio": None, "goal": f"< {GOAL_NOOP_BYTES}",
             "met": g["noop_under_2KB_bodies"]["met"]},
            {"metric": f"{backend}: no-op sync bytes with HTTP headers",
             "value": g["noop_under_2KB_with_http_headers"]["value"], "unit": "bytes", "baseline": None,
             "ratio": None, "goal": f"< {GOAL_NOOP_BYTES}", "met": g["noop_under_2KB_with_http_headers"]["met"]},
        ]
    return rows


def _source() -> dict[str, Any]:
    """The commit measured and any uncommitted change to fieldsync/ or server_stub/ (with a digest of it)."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "fieldsync", "server_stub").splitlines()
        digest = hashlib.sha256(git("diff", "HEAD", "--", "fieldsync", "server_stub").encode())
        for line in changed:
            if line.startswith("??"):
                for p in sorted((REPO / line[3:].strip()).rglob("*") if (REPO / line[3:].strip()).is_dir()
                                else [REPO / line[3:].strip()]):
                    if p.is_file():
                        digest.update(p.read_bytes())
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "uncommitted": [c[3:] for c in changed],
            "uncommitted_sha256": digest.hexdigest()[:16] if changed else None}


def _package_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# -- report ----------------------------------------------------------------
def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cpu(p: Mapping[str, Any], pg: bool) -> str:
    out = f"{p['client_cpu_s']:.2f} / {p['server_cpu_s']:.2f}"
    return out + (f" / {p['pg_cpu_s']:.2f}" if pg else "")


def report(result: Mapping[str, Any]) -> str:
    """The human-readable summary of :func:`run`'s result."""
    m, s = result["machine"], result["setup"]
    out = [
        f"fieldsync sync benchmark ({result['command']})",
        f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}"
        + (f", PostgreSQL {m['postgresql']}" if m.get("postgresql") else ""),
        "packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v != "not installed"),
        f"files on: {m['filesystem']}; load average before {m['loadavg_before']}, after {m['loadavg_after']}",
        f"source: {m['source']}",
        f"one grid: {', '.join(f'{v} {k}' for k, v in s['one_grid'].items())}; big grid "
        f"{sum(s['big_grid'].values()):,} records; {s['runs']} run(s), {s['noop_runs']} no-op syncs per store",
        "",
    ]
    for backend, r in result["results"].items():
        db = r["database"]
        extra = f", fsync={db['fsync']}" if "fsync" in db else ""
        out.append(f"== {backend}{extra}: server load {r['server_load']['records']:,} records in "
                   f"{r['server_load']['seconds']} s; whole backend {r['backend_seconds']} s; other processes "
                   f"used {r['disturbance']:.2f} cores during the timed phases (0 = a quiet machine)")
        pg = backend == "postgresql"
        rows: list[tuple[str, ...]] = [("phase", "records", "rec/s", "rec/CPU-s", "seconds", "requests", "B/record", "HTTP wait s",
                 "CPU s client/server" + ("/pg" if pg else ""), "others' CPU s", "idle/iowait s")]
        for label, p in (
            [(f"initial pull, run {i + 1}", p) for i, p in enumerate(r["initial_pull"]["runs"])]
            + [(f"push, run {i + 1}", p["push"]) for i, p in enumerate(r["push"]["runs"])]
            + [(f"echo pull, run {i + 1}", p["echo_pull"]) for i, p in enumerate(r["push"]["runs"])]
            + [(f"push+echo sync, run {i + 1}", p["whole_sync"]) for i, p in enumerate(r["push"]["runs"])]
            + [("pull 1,000-record grid", r["pull_small"]), (f"pull {r['pull_big']['records']:,}-record grid", r["pull_big"])]
        ):
            out_b = p["bytes_per_record"]
            rows.append((label, f"{p['records']:,}", f"{p['records_per_s']:,.0f}", f"{p['records_per_cpu_s']:,.0f}",
                         f"{p['seconds']:.3f}",
                         str(p["requests"]), "" if out_b is None else f"{out_b:,.0f}", f"{p['http_wait_s']:.3f}", _cpu(p, pg),
                         f"{p['other_cpu_s']:.2f}", f"{p['idle_cpu_s']:.2f} / {p['iowait_s']:.2f}"))
        out.append(_table(rows))
        out.append("")
        rows = [("no-op sync", "records", "median ms", "p10-p90 ms", "requests", "bytes", "+headers",
                 "CPU ms client/server/pg")]
        for label in ("small", "big"):
            n = r["noop"][label]
            rows.append((f"store of {n['records_in_store']:,}", f"{n['records_in_store']:,}", f"{n['median_ms']:.2f}",
                         f"{n['p10_ms']:.2f}-{n['p90_ms']:.2f}", str(n["requests"]), str(n["bytes"]),
                         str(n["bytes_with_headers"]),
                         f"{n['client_cpu_ms_per_sync']:.2f} / {n['server_cpu_ms_per_sync']:.2f} / {n['pg_cpu_ms_per_sync']:.2f}"))
        out.append(_table(rows))
        pp = r["pull_big"]["per_page"]
        out.append(f"big pull, client's own time per record (not waiting on HTTP): first tenth of the pages "
                   f"{pp['client_us_per_record_first']} us, last tenth {pp['client_us_per_record_last']} us; "
                   f"waiting on the server {pp['server_wait_us_per_record_first']} / {pp['server_wait_us_per_record_last']} us")
        out.append(f"no-op big/small: {r['noop']['ratio_big_small']:.2f}x (ratio of medians), "
                   f"{r['noop']['ratio_big_small_paired']:.2f}x (median of back-to-back pairs), "
                   f"{r['noop']['ratio_big_small_cpu']}x (CPU per sync); the periodic full checksum rescan (one no-op "
                   f"sync in 6 h) adds {r['noop']['small']['full_rescan_ms']:.1f} / {r['noop']['big']['full_rescan_ms']:.1f} ms")
        for name, goal in r["goals"].items():
            out.append(f"goal {name}: {goal['value']} -> {'MET' if goal['met'] else 'MISSED'}")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 instead of 100,000 records for the big store, "
                        "one run, 20 no-op syncs per store (under a minute)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--json", metavar="PATH", help="also write the results and machine description as JSON")
    parser.add_argument("--dir", metavar="DIR", help="where to put stores and the SQLite server database "
                        "(default: the system temp dir)")
    parser.add_argument("--pg-url", metavar="URL", help="PostgreSQL to use (a schema is created and dropped); "
                        "default $FIELDSYNC_BENCH_PG, else a throwaway cluster is started")
    parser.add_argument("--pg-bin", default=PG_BIN, help=f"PostgreSQL binaries for the throwaway cluster ({PG_BIN})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, help="initial pull + push runs (default 3, 1 with --quick)")
    parser.add_argument("--noop-runs", type=int, help="no-op syncs per store (default 50, 20 with --quick)")
    parser.add_argument("--big", type=int, help="records in the big store (default 100,000, 10,000 with --quick)")
    parser.add_argument("--profile", action="store_true", help="cProfile the client in the first pull, push and big "
                        "pull, print the top functions")
    parser.add_argument("--server-app", default="server_stub.asgi:app", help="the ASGI app uvicorn serves "
                        "(to measure a patched server without editing server_stub; default server_stub.asgi:app)")
    parser.add_argument("--py-spy", action="store_true", help="record the server with py-spy during those phases "
                        "and the no-op syncs (needs py-spy; adds sampling overhead to the numbers)")
    args = parser.parse_args(argv)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    result = run(quick=args.quick, backends=backends, where=args.dir, pg_url=args.pg_url, pg_bin=args.pg_bin,
                 seed=args.seed, runs=args.runs, noop_runs=args.noop_runs, big=args.big, profile=args.profile,
                 spy=args.py_spy, server_app=args.server_app)
    print(report(result))
    for backend, r in result["results"].items():
        for label, text in r.get("client_profile", {}).items():
            print(f"\n-- client cProfile, {backend}, {label} --\n{text}")
        for label, spied in r.get("server_py_spy", {}).items():
            print(f"\n-- server py-spy, {backend}, {label}: {spied.get('samples')} samples ({spied.get('file')}) --")
            for fn, n in spied.get("self", [])[:15]:
                print(f"  self {n / max(1, spied['samples']):6.1%}  {fn}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
