"""Peers side by side: fieldsync, PouchDB and Kinto on the same workload, over the same counting proxy.

Run ``python -m bench.peers [--quick] [--repeat N] [--systems a,b] [--json PATH] [--markdown PATH]``.

The workload, the same JSON documents for every system (from :mod:`server_stub.demo_data`: grids of
300 households, each with 9 visits, so 10 % households and 90 % visits):

1. **push**: device A holds N records written locally and sends them all to the server;
2. **pull**: device B, empty, receives all N from the server;
3. **incremental**: A changes 10 visits locally, sends them, and B receives them
   (A's send plus B's receive, timed as one number).

The systems, each with a fresh server and fresh clients on every repetition:

- **fieldsync** on SQLite and on PostgreSQL: the real server (``python -m uvicorn
  server_stub.asgi:app``, logging at warning, no access log) and two enrolled devices, each a fresh
  encrypted :class:`fieldsync.Store` with a :class:`fieldsync.sync.SyncClient` over
  :class:`fieldsync.transport.RequestsTransport` (client defaults: pushes of up to 1,000 changes,
  pull pages of 2,000, gzip).  Local writes are ``store.put_many`` (timed apart, not in push).
  Push is ``client.sync()`` from its start until the client's status turns to ``pulling`` (the
  public ``on_status`` callback); the rest of that sync is the *echo*, in which A pulls its own
  records back with the server's sequence numbers (reported apart).
- **PouchDB**: express 4 + express-pouchdb on PouchDB's in-memory adapter, a node client with
  in-memory databases: ``bulkDocs`` locally, ``A.replicate.to(remote)``, ``B.replicate.from(remote)``
  (batch_size 1,000 like our push batch).  See :mod:`bench.peers_pouch`.
- **Kinto** with the memory backend and with PostgreSQL: ``kinto start`` (waitress) with a
  kinto-http client in Kinto's own virtualenv: ``client.batch()`` of ``create_record`` for the push,
  ``get_records`` for the pull, a batch of ``patch_record`` and ``get_records(_since=...)`` for
  the incremental sync.  See :mod:`bench.peers_kinto`.

Every client talks to its server through ``bench/peers_proxy.py``, one small process that counts
the bytes each way (HTTP headers and bodies, what the programs write to their sockets).  Times
are measured by each client around its own operation; the benchmark adds the server's CPU (its
process tree), PostgreSQL's (backends found by ``application_name``), the proxy's, and what every
other process on the machine used meanwhile.  fieldsync encrypts and validates every record on
the device; PouchDB and Kinto do neither.

PostgreSQL: ``--pg-url`` (or ``$FIELDSYNC_BENCH_PG``, or the URL in ``/tmp/fieldsync-pg-url``); a
new database is created per system and repetition and dropped afterwards.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import peers_kinto, peers_pouch
from .peers_common import (
    CACHE,
    REPO,
    LineClient,
    Proxy,
    pg_database,
    stop,
    tree_cpu,
    tree_rss_mb,
    wait_http,
)
from .procs import cpu_model, free_port, git, loadavg, machine_busy

__all__ = ["run", "main", "report", "markdown", "workload"]

SYSTEMS = ("fieldsync-sqlite", "fieldsync-postgresql", "pouchdb", "kinto-memory", "kinto-postgresql")
OURS = ("fieldsync-sqlite", "fieldsync-postgresql")
PEERS = ("pouchdb", "kinto-memory", "kinto-postgresql")
FULL_N = 10_000
QUICK_N = 1_000
CHANGES = 10
INCR_ROUNDS = 5
POUCH_BATCH = 1000
WORKER = "w-peers-01"
PIN = "246810"
GOALS = {  # from the issue: ours / peer at least this (push, pull: records/s; incremental: peer time / ours)
    ("push", "pouchdb"): 3.0,
    ("push", "kinto"): 20.0,
    ("pull", "pouchdb"): 2.0,
    ("incremental", "pouchdb"): 1.0,
    ("incremental", "kinto"): 1.0,
}


# -- the workload ----------------------------------------------------------
def workload(n: int, seed: int = 7) -> dict[str, Any]:
    """``n`` documents: grids of 300 households with 9 visits each (cut at ``n``), plus 10 changes."""
    from server_stub import demo_data

    docs: list[dict[str, Any]] = []
    grids: list[str] = []
    g = 0
    while len(docs) < n:
        grid = f"wc-peers-{g + 1:02d}"
        grids.append(grid)
        hh = demo_data.households(300, grid, seed + g)
        vv = demo_data.visits(hh, 9, seed + g, worker_id=WORKER)
        left = n - len(docs)
        take_hh = hh[: max(1, min(len(hh), left // 10))]
        take_vv = [v for v in vv if v["household_id"] in {h["id"] for h in take_hh}][: left - len(take_hh)]
        docs += [{"collection": "households", "id": r["id"], "record": r} for r in take_hh]
        docs += [{"collection": "visits", "id": r["id"], "record": r} for r in take_vv]
        g += 1
    visits = [d for d in docs if d["collection"] == "visits"]
    step = max(1, len(visits) // CHANGES)
    changes = [{"collection": "visits", "id": d["id"],
                "fields": {"notes": f"复访：{d['record']['notes']}（第 {i + 1} 次变更）"}}
               for i, d in enumerate(visits[::step][:CHANGES])]
    return {"docs": docs, "changes": changes, "grids": grids}


# -- measuring -------------------------------------------------------------
class Meter:
    """Counters around one phase: proxy bytes, server/proxy/PostgreSQL CPU, the machine's busy time."""

    def __init__(self, proxy: Proxy, server_pid: int, pg: Any | None) -> None:
        self.proxy, self.server_pid, self.pg = proxy, server_pid, pg

    def snap(self) -> dict[str, float]:
        t = time.perf_counter()
        if self.pg is not None:
            self.pg.refresh()
        c = self.proxy.counters()
        return {"t": t, "up": c["up"], "down": c["down"], "connections": c["connections"],
                "server_cpu": tree_cpu(self.server_pid), "proxy_cpu": self.proxy.cpu(),
                "pg_cpu": sum(self.pg.cpu().values()) if self.pg is not None else 0.0, "busy": machine_busy()}


def _delta(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


def _phase(records: int, seconds: float, client_cpu: float, d: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    cpu = client_cpu + d["server_cpu"] + d["pg_cpu"]
    ours_cpu = cpu + d["proxy_cpu"]
    return {
        "records": records,
        "seconds": round(seconds, 4),
        "records_per_s": round(records / seconds, 1) if seconds > 0 else None,
        "records_per_cpu_s": round(records / cpu, 1) if cpu > 0 else None,
        "bytes_up": int(d["up"]),
        "bytes_down": int(d["down"]),
        "bytes": int(d["up"] + d["down"]),
        "bytes_per_record": round((d["up"] + d["down"]) / records, 1) if records else None,
        "new_connections": int(d["connections"]),
        "client_cpu_s": round(client_cpu, 3),
        "server_cpu_s": round(d["server_cpu"], 3),
        "pg_cpu_s": round(d["pg_cpu"], 3),
        "proxy_cpu_s": round(d["proxy_cpu"], 3),
        "other_cpu_s": round(max(0.0, d["busy"] - ours_cpu), 3),
        **extra,
    }


# -- fieldsync ---------------------------------------------------------------
class Ours:
    """The real fieldsync server and two enrolled devices."""

    def __init__(self, backend: str, folder: Path, data: Mapping[str, Any], stack: ExitStack, pg_base: str | None,
                 profile_dir: Path | None = None) -> None:
        from fieldsync import KdfParams, Store
        from fieldsync.sync import SyncClient, enroll
        from fieldsync.transport import RequestsTransport
        from server_stub.district import District

        from .sync import PgBackends, _with_params

        self.data = data
        self.profile_dir = profile_dir
        self.backend = backend
        app = f"fsbench-peers-{secrets.token_hex(3)}"
        if backend == "sqlite":
            db_url, self.pg = f"sqlite:///{folder / 'district.db'}", None
        else:
            assert pg_base is not None
            db_url = stack.enter_context(pg_database(pg_base, "fsbench_peers"))
            self.pg = PgBackends(pg_base, app)
            stack.callback(self.pg.close)
            db_url_server = _with_params(db_url, application_name=app)
        district = District(db_url)
        district.add_worker(WORKER, "网格员 基准")
        for grid in data["grids"]:
            district.assign(WORKER, grid)
        codes = [district.issue_code(WORKER)[0] for _ in range(2)]
        close = getattr(district, "close", None)
        if callable(close):
            close()
        log = folder / "uvicorn.log"
        env = {**os.environ, "FIELDSYNC_DB": db_url if backend == "sqlite" else db_url_server}
        asgi = "server_stub.asgi:app"
        if profile_dir is not None:
            asgi = "bench.peers_srvprof:app"
            env["FIELDSYNC_PROFILE_OUT"] = self.server_prefix = str(folder / "server")
            self._server_profiles = 0
        self.port = free_port()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", asgi, "--host", "127.0.0.1", "--port",
                 str(self.port), "--log-level", "warning", "--no-access-log"],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        stack.callback(stop, self.proc)
        wait_http(f"http://127.0.0.1:{self.port}/v1/hello", self.proc, log)
        self.proxy = Proxy(self.port)
        stack.callback(self.proxy.close)
        self.pid = self.proc.pid
        self.devices = []
        for name, code in zip("ab", codes):
            store = Store.create(folder / f"device-{name}.fsdb", PIN, kdf=KdfParams(n=2**14))
            stack.callback(store.close)
            transport = RequestsTransport(self.proxy.url)
            stack.callback(transport.close)
            enroll(store, self.proxy.url, code, transport=transport, device_name=f"peers bench {name}")
            self.devices.append((store, SyncClient(store, transport, on_status=self._on_status)))
        self._watch: Callable[[Any], None] | None = None

    def _on_status(self, status: Any) -> None:
        if self._watch is not None:
            self._watch(status)

    @contextmanager
    def profiling(self, label: str) -> Iterator[None]:
        """With ``--profile``: cProfile on this client and on the server around one phase, written to
        ``<profile dir>/fieldsync-<backend>-<label>-{client,server}.prof``.  The client's pull then
        fetches pages in its own thread (no read-ahead), so that cProfile sees the whole client."""
        if self.profile_dir is None:
            yield
            return
        import cProfile
        import signal
        from concurrent.futures import Future

        import fieldsync.sync as fsync

        class Inline:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def __enter__(self) -> "Inline":
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
                f: Future[Any] = Future()
                try:
                    f.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller through the future
                    f.set_exception(exc)
                return f

        saved = fsync.ThreadPoolExecutor
        fsync.ThreadPoolExecutor = Inline  # type: ignore[misc,assignment]
        prof = cProfile.Profile()
        os.kill(self.pid, signal.SIGUSR1)
        time.sleep(0.2)
        prof.enable()
        try:
            yield
        finally:
            prof.disable()
            fsync.ThreadPoolExecutor = saved  # type: ignore[misc]
            os.kill(self.pid, signal.SIGUSR2)
            self._server_profiles += 1
            stem = self.profile_dir / f"fieldsync-{self.backend}-{label}"
            prof.dump_stats(f"{stem}-client.prof")
            want = Path(f"{self.server_prefix}-{self._server_profiles}.prof")
            deadline = time.monotonic() + 30
            while not want.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
            if want.exists():
                shutil.copy(want, f"{stem}-server.prof")

    def write(self, meter: Meter) -> dict[str, Any]:
        store = self.devices[0][0]
        by: dict[str, list[dict[str, Any]]] = {}
        for d in self.data["docs"]:
            by.setdefault(d["collection"], []).append(d["record"])
        a = meter.snap()
        cpu0 = time.process_time()
        for collection, records in by.items():
            for i in range(0, len(records), 1000):
                store.put_many(collection, records[i:i + 1000])
        cpu = time.process_time() - cpu0
        b = meter.snap()
        return _phase(sum(len(v) for v in by.values()), b["t"] - a["t"], cpu, _delta(a, b))

    def push(self, meter: Meter) -> dict[str, Any]:
        store, client = self.devices[0]
        marks: list[tuple[dict[str, float], float]] = []

        def watch(status: Any) -> None:
            if not marks and status.phase == "pulling":
                marks.append((meter.snap(), time.process_time()))

        gc.collect()
        a = meter.snap()
        cpu0 = time.process_time()
        self._watch = watch
        try:
            with self.profiling("push"):
                result = client.sync()
        finally:
            self._watch = None
        cpu1 = time.process_time()
        b = meter.snap()
        if result.pushed != len(self.data["docs"]) or result.rejected or store.outbox_size():
            raise AssertionError(f"fieldsync push: {result}")
        mark, cpu_mark = marks[0]
        push = _phase(result.pushed, mark["t"] - a["t"], cpu_mark - cpu0, _delta(a, mark), requests=None)
        push["echo"] = _phase(result.pulled, b["t"] - mark["t"], cpu1 - cpu_mark, _delta(mark, b))
        push["whole_sync"] = _phase(result.pushed, b["t"] - a["t"], cpu1 - cpu0, _delta(a, b),
                                    requests=result.requests)
        return push

    def pull(self, meter: Meter) -> dict[str, Any]:
        _, client = self.devices[1]
        gc.collect()
        a = meter.snap()
        cpu0 = time.process_time()
        with self.profiling("pull"):
            result = client.sync()
        cpu = time.process_time() - cpu0
        b = meter.snap()
        if result.pulled != len(self.data["docs"]):
            raise AssertionError(f"fieldsync pull: {result}")
        return _phase(result.pulled, b["t"] - a["t"], cpu, _delta(a, b), requests=result.requests)

    def change(self, k: int) -> None:
        self.devices[0][0].put_many("visits", [{"id": c["id"], **round_fields(c["fields"], k)}
                                               for c in self.data["changes"]])

    def incremental(self, meter: Meter, k: int) -> dict[str, Any]:
        (_, ca), (store_b, cb) = self.devices
        gc.collect()
        a = meter.snap()
        cpu0 = time.process_time()
        with self.profiling("incremental"):
            ra = ca.sync()
            t_mid = time.perf_counter()
            rb = cb.sync()
        cpu = time.process_time() - cpu0
        b = meter.snap()
        if ra.pushed != CHANGES or rb.pulled != CHANGES:
            raise AssertionError(f"fieldsync incremental: A {ra}, B {rb}")
        want = {c["id"]: round_fields(c["fields"], k)["notes"] for c in self.data["changes"]}
        if any(store_b.get("visits", rid)["notes"] != notes for rid, notes in want.items()):
            raise AssertionError("device B does not hold the changed notes")
        return _phase(rb.pulled, b["t"] - a["t"], cpu, _delta(a, b), push_seconds=round(t_mid - a["t"], 4),
                      requests=ra.requests + rb.requests)


# -- peers (client processes) ------------------------------------------------
class Peer:
    """A peer's server, the proxy in front of it and its client process (commands over a pipe)."""

    def __init__(self, name: str, folder: Path, data_file: Path, stack: ExitStack, pg_base: str | None,
                 pouch_batch: int = POUCH_BATCH) -> None:
        self.pg = None
        if name == "pouchdb":
            server: Any = peers_pouch.PouchServer(folder)
            stack.callback(server.stop)
            self.proxy = Proxy(server.port)
            stack.callback(self.proxy.close)
            self.client: LineClient = peers_pouch.client(f"{self.proxy.url}/bench", data_file, pouch_batch,
                                                         folder / "client.log")
        else:
            backend = name.split("-", 1)[1]
            pg_url = None
            app = f"kinto-peers-{secrets.token_hex(3)}"
            if backend == "postgresql":
                assert pg_base is not None
                from .sync import PgBackends

                pg_url = stack.enter_context(pg_database(pg_base, "kinto_peers"))
                self.pg = PgBackends(pg_base, app)
                stack.callback(self.pg.close)
            server = peers_kinto.KintoServer(folder, backend, pg_url, app)
            stack.callback(server.stop)
            self.proxy = Proxy(server.port)
            stack.callback(self.proxy.close)
            self.client = peers_kinto.client(f"{self.proxy.url}/v1", data_file, folder / "client.log")
            self.client.call("setup")
        stack.callback(self.client.close)
        self.pid = server.pid
        self.name = name

    def _do(self, meter: Meter, cmd: str) -> dict[str, Any]:
        gc.collect()
        a = meter.snap()
        out = self.client.call(cmd)
        b = meter.snap()
        extra = {k: v for k, v in out.items() if k not in ("ok", "cmd", "seconds", "client_cpu_s", "records")}
        return _phase(int(out["records"]), float(out["seconds"]), float(out["client_cpu_s"]), _delta(a, b), **extra)

    def write(self, meter: Meter) -> dict[str, Any] | None:
        return self._do(meter, "write") if self.name == "pouchdb" else None

    def push(self, meter: Meter) -> dict[str, Any]:
        return self._do(meter, "push")

    def pull(self, meter: Meter) -> dict[str, Any]:
        return self._do(meter, "pull")

    def change(self, k: int) -> None:
        self.client.call(f"change {k}")

    def incremental(self, meter: Meter, k: int) -> dict[str, Any]:
        return self._do(meter, "incr")


def run_system(name: str, folder: Path, data: Mapping[str, Any], data_file: Path, pg_base: str | None,
               pouch_batch: int = POUCH_BATCH, profile_dir: Path | None = None,
               incr_rounds: int = INCR_ROUNDS) -> dict[str, Any]:
    """One full pass of the workload on one system (fresh server, fresh clients)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(data["docs"])
    with ExitStack() as stack:
        t0 = time.perf_counter()
        system: Any = (Ours(name.split("-", 1)[1], folder, data, stack, pg_base, profile_dir) if name in OURS
                       else Peer(name, folder, data_file, stack, pg_base, pouch_batch))
        start_s = time.perf_counter() - t0
        meter = Meter(system.proxy, system.pid, system.pg)
        out: dict[str, Any] = {"start_s": round(start_s, 2), "load_before": loadavg()}
        out["local_write"] = system.write(meter)
        out["push"] = system.push(meter)
        out["pull"] = system.pull(meter)
        rounds = []
        for k in range(1, incr_rounds + 1):
            system.change(k)
            rounds.append(system.incremental(meter, k))
        out["incremental_rounds"] = rounds
        out["incremental"] = _rounds(rounds)
        out["server_rss_mb"] = tree_rss_mb(system.pid)
        out["load_after"] = loadavg()
        for phase in ("push", "pull"):
            if out[phase]["records"] != n:
                raise AssertionError(f"{name} {phase}: {out[phase]['records']} records, expected {n}")
        for r in rounds:
            if r["records"] != CHANGES:
                raise AssertionError(f"{name} incremental: {r['records']} records, expected {CHANGES}")
    return out


def round_fields(fields: Mapping[str, Any], k: int) -> dict[str, Any]:
    """The change of round ``k``: strings get `` #k`` appended after the first round (the clients do the same)."""
    return {f: f"{v} #{k}" if isinstance(v, str) and k > 1 else v for f, v in fields.items()}


def _rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The incremental rounds as one phase: median wall time and bytes, mean CPU per round
    (``/proc`` counts server CPU in 10 ms ticks, too coarse for one round of a few ms)."""
    n = len(rounds)
    seconds = statistics.median(r["seconds"] for r in rounds)
    cpu = {k: sum(r[k] for r in rounds) / n for k in ("client_cpu_s", "server_cpu_s", "pg_cpu_s", "proxy_cpu_s",
                                                       "other_cpu_s")}
    total_cpu = cpu["client_cpu_s"] + cpu["server_cpu_s"] + cpu["pg_cpu_s"]
    return {
        "rounds": n, "records": CHANGES, "seconds": round(seconds, 4),
        "seconds_all": [r["seconds"] for r in rounds],
        "records_per_s": round(CHANGES / seconds, 1),
        "records_per_cpu_s": round(CHANGES / total_cpu, 1) if total_cpu > 0 else None,
        "cpu_ms": round(total_cpu * 1000, 1),
        **{k: statistics.median(r[k] for r in rounds) for k in ("bytes", "bytes_up", "bytes_down")},
        "bytes_per_record": round(statistics.median(r["bytes"] for r in rounds) / CHANGES, 1),
        **{k: round(v, 4) for k, v in cpu.items()},
    }


# -- environment -------------------------------------------------------------
def machine() -> dict[str, Any]:
    from .store import _version

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
        "packages": {d: _version(d) for d in ("fieldsync", "uvicorn", "h11", "starlette", "requests", "psycopg",
                                              "cryptography")},
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_in_fieldsync_or_server_stub": git("status", "--porcelain", "fieldsync", "server_stub").splitlines(),
        # Others may edit these folders during a run: the hash names the working tree measured.
        "uncommitted_diff_sha1": hashlib.sha1(git("diff", "HEAD", "--", "fieldsync", "server_stub").strip().encode()).hexdigest()[:12],
    }


def _pg_base(pg_url: str | None) -> str | None:
    if pg_url:
        return pg_url
    if os.environ.get("FIELDSYNC_BENCH_PG"):
        return os.environ["FIELDSYNC_BENCH_PG"]
    p = Path("/tmp/fieldsync-pg-url")
    return p.read_text().strip() if p.exists() else None


# -- summary -------------------------------------------------------------------
def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system, medians over its repetitions; the table rows; ours/peer ratios against the goals."""
    med: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        m: dict[str, Any] = {"repetitions": len(rs)}
        for phase in ("push", "pull", "incremental"):
            for key in ("records_per_s", "records_per_cpu_s", "seconds", "bytes", "bytes_up", "bytes_down",
                        "bytes_per_record", "client_cpu_s", "server_cpu_s", "pg_cpu_s", "other_cpu_s"):
                m[f"{phase}_{key}"] = _median([r[phase][key] for r in rs])
            m[f"{phase}_records_per_s_all"] = [r[phase]["records_per_s"] for r in rs]
        m["incremental_ms_all"] = [round(x * 1000, 1) for r in rs for x in r["incremental"]["seconds_all"]]
        m["incremental_cpu_ms"] = _median([r["incremental"]["cpu_ms"] for r in rs])
        if rs and rs[0].get("local_write"):
            m["local_write_records_per_s"] = _median([r["local_write"]["records_per_s"] for r in rs])
        if rs and "echo" in rs[0]["push"]:
            m["echo_records_per_s"] = _median([r["push"]["echo"]["records_per_s"] for r in rs])
            m["push_whole_sync_records_per_s"] = _median([r["push"]["whole_sync"]["records_per_s"] for r in rs])
            m["push_whole_sync_bytes"] = _median([r["push"]["whole_sync"]["bytes"] for r in rs])
        m["server_rss_mb"] = _median([r["server_rss_mb"] for r in rs])
        med[name] = m

    table = []
    for name, m in med.items():
        table.append({
            "system": name,
            "push_records_per_s": _r(m["push_records_per_s"]),
            "push_records_per_cpu_s": _r(m["push_records_per_cpu_s"]),
            "push_bytes_per_record": _r(m["push_bytes_per_record"], 1),
            "pull_records_per_s": _r(m["pull_records_per_s"]),
            "pull_records_per_cpu_s": _r(m["pull_records_per_cpu_s"]),
            "pull_bytes_per_record": _r(m["pull_bytes_per_record"], 1),
            "incremental_ms": _r(m["incremental_seconds"] * 1000, 1),
            "incremental_cpu_ms": _r(m["incremental_cpu_ms"], 1),
            "incremental_bytes": _r(m["incremental_bytes"]),
            "local_write_records_per_s": _r(m.get("local_write_records_per_s")),
        })

    ratios = []
    for ours in (o for o in OURS if o in med):
        for peer in (p for p in PEERS if p in med):
            family = peer.split("-")[0]
            o, p = med[ours], med[peer]
            for phase in ("push", "pull", "incremental"):
                if phase == "incremental":
                    value = p["incremental_seconds"] / o["incremental_seconds"]
                    cpu_value = p["incremental_cpu_ms"] / o["incremental_cpu_ms"] if o["incremental_cpu_ms"] else None
                else:
                    value = o[f"{phase}_records_per_s"] / p[f"{phase}_records_per_s"]
                    cpu_value = o[f"{phase}_records_per_cpu_s"] / p[f"{phase}_records_per_cpu_s"]
                goal = GOALS.get((phase, family))
                if phase == "incremental":
                    ours_value, unit = round(o["incremental_seconds"] * 1000, 1), "ms per round (ratio: peer ms / ours)"
                else:
                    ours_value, unit = o[f"{phase}_records_per_s"], "records/s (ratio: ours / peer)"
                ratios.append({"ours": ours, "peer": peer, "phase": phase, "value": ours_value, "unit": unit,
                               "ratio": round(value, 2),
                               "ratio_cpu": round(cpu_value, 2) if cpu_value else None, "goal": goal,
                               "met": None if goal is None else (value > goal if phase == "incremental"
                                                                 else value >= goal)})
    return {"medians": med, "table": table, "ratios": ratios}


def _r(v: float | None, digits: int = 0) -> float | int | None:
    if v is None:
        return None
    return round(v, digits) if digits else int(round(v))


def run(quick: bool = False, n: int | None = None, repeat: int | None = None, systems: Sequence[str] = SYSTEMS,
        pg_url: str | None = None, where: str | None = None, seed: int = 7, pouch_batch: int = POUCH_BATCH,
        profile_dir: str | None = None, incr_rounds: int = INCR_ROUNDS, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install the peers (if needed), run the workload on every system ``repeat`` times, interleaved."""
    say = progress or (lambda s: None)
    n = n or (QUICK_N if quick else FULL_N)
    repeat = repeat or (1 if quick else 2)
    pg_base = _pg_base(pg_url)
    skipped = [s for s in systems if pg_base is None and s.endswith("postgresql")]
    systems = [s for s in systems if s not in skipped]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = workload(n, seed)
    out: dict[str, Any] = {"benchmark": "peers", "started": started, "quick": quick, "records": n,
                           "changes": CHANGES, "incremental_rounds": incr_rounds, "repeat": repeat, "pouch_batch_size": pouch_batch,
                           "profiled": bool(profile_dir), "machine": machine(), "load_before": loadavg(),
                           "skipped": skipped, "installs": {}}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-peers-", dir=where) as tmp:
        folder = Path(tmp)
        data_file = folder / "data.json"
        data_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        for peer, module in (("kinto", peers_kinto), ("pouchdb", peers_pouch)):
            if not any(s.startswith(peer) for s in systems):
                continue
            say(f"{peer}: checking its installation under {CACHE}")
            log = folder / f"{peer}-install.log"
            try:
                out["installs"][peer] = module.ensure_installed(log)
            except (OSError, subprocess.SubprocessError) as exc:  # no registry, no node: the others still run
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                out["installs"][peer] = {"installed": False, "error": f"{exc}", "log": tail}
                skipped += [s for s in systems if s.startswith(peer)]
                systems = [s for s in systems if not s.startswith(peer)]
                say(f"{peer}: could not be installed ({exc}); skipped")
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        busy0, t0 = machine_busy(), time.perf_counter()
        for i in range(repeat):
            order = list(systems) if i % 2 == 0 else list(reversed(systems))
            for name in order:
                say(f"round {i + 1}/{repeat}: {name}")
                r = run_system(name, folder / f"{name}-{i}", data, data_file, pg_base, pouch_batch,
                               Path(profile_dir) if profile_dir else None, incr_rounds)
                runs[name].append(r)
                say(f"  push {r['push']['records_per_s']:,.0f}/s  pull {r['pull']['records_per_s']:,.0f}/s  "
                    f"incremental {r['incremental']['seconds'] * 1000:,.0f} ms  load {r['load_after']}")
        wall = time.perf_counter() - t0
        out["machine_cores_busy_avg"] = round((machine_busy() - busy0) / wall, 2)
    out["load_after"] = loadavg()
    out["runs"] = runs
    out.update(summarise(runs))
    return out


# -- output ----------------------------------------------------------------------
def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def _goal_text(r: Mapping[str, Any]) -> str:
    if r["goal"] is None:
        return ""
    word = "faster" if r["phase"] == "incremental" else f"≥ {r['goal']:g}×"
    return f"{word}: {'MET' if r['met'] else 'MISSED'}"


def markdown(result: Mapping[str, Any]) -> str:
    """The results as Markdown tables (for docs/benchmarks.md)."""
    lines = [
        f"{result['records']:,} records, {result.get('incremental_rounds', 1)} incremental rounds of {CHANGES} changes ({'quick' if result['quick'] else 'full'}), {result['repeat']} "
        f"repetition(s) per system, medians; load average {result['load_before']} before, "
        f"{result['load_after']} after; the machine's cores were busy {result.get('machine_cores_busy_avg')} "
        "on average (all processes).",
        "",
        "| system | push records/s | push records/CPU-s | push B/record | pull records/s | pull records/CPU-s "
        "| pull B/record | incremental ms | incremental CPU ms | incremental bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['system']} | {_fmt(row['push_records_per_s'])} | {_fmt(row['push_records_per_cpu_s'])} "
            f"| {_fmt(row['push_bytes_per_record'], 1)} | {_fmt(row['pull_records_per_s'])} "
            f"| {_fmt(row['pull_records_per_cpu_s'])} | {_fmt(row['pull_bytes_per_record'], 1)} "
            f"| {_fmt(row['incremental_ms'], 1)} | {_fmt(row['incremental_cpu_ms'], 1)} "
            f"| {_fmt(row['incremental_bytes'])} |")
    lines += ["", "| ours | peer | phase | ours/peer (wall) | ours/peer (CPU) | goal |", "|---|---|---|---:|---:|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['ours']} | {r['peer']} | {r['phase']} | {r['ratio']:.2f}× "
                     f"| {_fmt(r['ratio_cpu'], 2)}{'×' if r['ratio_cpu'] else ''} | {_goal_text(r)} |")
    return "\n".join(lines) + "\n"


def report(result: Mapping[str, Any]) -> str:
    """A plain-text table for stdout."""
    head = ("system", "push/s", "push/CPU-s", "push B/rec", "pull/s", "pull/CPU-s", "pull B/rec", "incr ms",
            "incr CPU ms", "incr B")
    rows = [[r["system"], _fmt(r["push_records_per_s"]), _fmt(r["push_records_per_cpu_s"]),
             _fmt(r["push_bytes_per_record"], 1), _fmt(r["pull_records_per_s"]), _fmt(r["pull_records_per_cpu_s"]),
             _fmt(r["pull_bytes_per_record"], 1), _fmt(r["incremental_ms"], 1),
             _fmt(r["incremental_cpu_ms"], 1), _fmt(r["incremental_bytes"])]
            for r in result["table"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"peers: {result['records']:,} records, {result['repeat']} repetition(s), medians; "
           f"load {result['load_before']} -> {result['load_after']}", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += ["", "ours/peer (push, pull: records/s ratio; incremental: peer time / our time; CPU: the same over "
            "client + server + PostgreSQL CPU)"]
    for r in result["ratios"]:
        cpu = f" (CPU {r['ratio_cpu']:.2f}x)" if r["ratio_cpu"] else ""
        out.append(f"  {r['ours']:<21} vs {r['peer']:<17} {r['phase']:<12} {r['ratio']:>7.2f}x{cpu}  {_goal_text(r)}")
    for name, m in result["medians"].items():
        if "echo_records_per_s" in m:
            out.append(f"  {name}: the push's echo pull {m['echo_records_per_s']:,.0f} records/s; whole push sync "
                       f"{m['push_whole_sync_records_per_s']:,.0f} records/s; local put_many "
                       f"{m.get('local_write_records_per_s') or 0:,.0f} records/s")
    for peer, inst in result.get("installs", {}).items():
        if "error" in inst:
            out.append(f"  {peer}: NOT INSTALLED: {inst['error']}")
            continue
        out.append(f"  {peer}: {'installed in ' + str(inst['seconds']) + ' s' if inst['installed'] else 'cached'}; "
                   f"{inst['versions']}")
    if result.get("skipped"):
        out.append(f"  skipped (no PostgreSQL URL, or the peer could not be installed): {', '.join(result['skipped'])}")
    return "\n".join(out)


def profiles_text(folder: Path, top: int = 25) -> str:
    """The top functions of each profile ``--profile`` wrote, by internal time and by cumulative time."""
    out = []
    for path in sorted(folder.glob("*.prof")):
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(order).print_stats(top)
            text = buf.getvalue()
            out.append(f"-- {path.name}, by {order} --\n{text[text.find('   ncalls'):]}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} records, one repetition")
    parser.add_argument("-n", "--records", type=int, help=f"records to push and pull (default {FULL_N:,})")
    parser.add_argument("--repeat", type=int, help="repetitions per system, interleaved (default 2; quick 1)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--pg-url", help="PostgreSQL cluster for the PostgreSQL systems (default $FIELDSYNC_BENCH_PG "
                        "or /tmp/fieldsync-pg-url); without one they are skipped")
    parser.add_argument("--incr-rounds", type=int, default=INCR_ROUNDS,
                        help=f"incremental syncs of {CHANGES} changes per repetition (default {INCR_ROUNDS})")
    parser.add_argument("--pouch-batch", type=int, default=POUCH_BATCH,
                        help=f"PouchDB replication batch_size (default {POUCH_BATCH}, like our push batch)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile our client and server (bench/peers_srvprof.py) "
                        "in each phase, write DIR/*.prof and print the top functions; slows those numbers down")
    parser.add_argument("--dir", help="where the temporary files go (default the system temp dir)")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--markdown", help="write the result tables as Markdown here")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    result = run(quick=args.quick, n=args.records, repeat=args.repeat, systems=systems, pg_url=args.pg_url,
                 where=args.dir, pouch_batch=args.pouch_batch,
                 profile_dir=args.profile, incr_rounds=args.incr_rounds, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(report(result))
    if args.profile:
        print(profiles_text(Path(args.profile)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
