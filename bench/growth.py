"""Growth benchmark: how sync costs change as a device's store and a district's device count grow.

Run ``python -m bench.growth [--quick] [--json PATH] [--plots DIR] [--trace]``.

On a real uvicorn district server on loopback (SQLite database, as ``bench.sync`` starts it),
with devices that are fresh encrypted :class:`fieldsync.Store` files enrolled with one-time codes:

1. **Store size.**  One grid per size (1k, 5k, 20k, 50k, 100k, 200k records; ``--quick`` stops
   at 20k), mixed like a district (``bench.sync.big_grid``).  For each, a new device pulls the
   whole grid (the initial, full pull: seconds, records/s, client and server CPU), then runs
   no-op syncs (median ms).  A no-op sync should not grow with the store; a full pull should
   grow linearly (constant records/s).
2. **Pull memory.**  A fresh child process (``--child-pull``) creates a store, enrolls and pulls
   the 100,000-record grid (20,000 with ``--quick``) while a thread samples its RSS (psutil,
   every 5 ms); growth = peak RSS during the sync - RSS just before it.  Goal: under 50 MB.
   ``--trace`` repeats it under tracemalloc and lists the allocation sites at the traced peak.
3. **Devices.**  A second, fresh server; devices are enrolled in steps (10, 50, 100, 250, 500;
   ``--quick``: 10, 25, 50), ten per grid (one worker each, a 100-record grid per ten devices).
   At each step every device runs small sessions (2 visits saved offline, then
   ``client.sync()``: push them and pull what the grid's other devices pushed), then no-op
   sessions, in rounds of one session per device (at least 200 sessions of each kind per step, 100 with ``--quick``).  The server process's CPU (psutil user + system) over the round, divided by the
   sessions, is the server's cost of one session; it should not grow with the device count.

Plots (matplotlib, Agg): ``growth-noop-pull.png`` and ``growth-devices.png`` in ``--plots``
(default ``docs/plots/`` for a full run, ``bench/results/plots/`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import psutil
from requests.adapters import HTTPAdapter

from fieldsync import Store
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import RequestsTransport

from . import sync as bsync
from .procs import loadavg
from .store import machine

__all__ = ["run", "main", "report", "pull_memory", "PULL_RSS_GOAL_MB"]

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000, 5_000, 20_000, 50_000, 100_000, 200_000)
QUICK_SIZES = (1_000, 5_000, 20_000)
DEVICES = (10, 50, 100, 250, 500)
QUICK_DEVICES = (10, 25, 50)
DEVICES_PER_GRID = 10
DEVICE_GRID_RECORDS = 100
SESSION_VISITS = 2
MIN_SESSIONS = 200
PULL_RSS_GOAL_MB = 50.0
NOOP_GOAL_RATIO = bsync.GOAL_NOOP_SCALE
MB = 1024 * 1024


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _load_grid(district: Any, worker: str, grid: str, data: bsync.Records) -> int:
    district.add_worker(worker, f"网格员 {grid}")
    district.assign(worker, grid)
    return bsync._load(district, data)


def _new_env(folder: Path, name: str) -> bsync.Env:
    from server_stub.district import District

    folder.mkdir(parents=True, exist_ok=True)
    district = District(f"sqlite:///{folder / f'{name}.db'}")
    return bsync.Env("sqlite", None, district, folder / f"{name}-devices")  # type: ignore[arg-type]


def _start(env: bsync.Env, name: str) -> None:
    os.sync()  # the load's writes reach the disk now, not during the measurements
    env.server = bsync.Server(f"sqlite:///{env.folder.parent / f'{name}.db'}", env.folder.parent / f"{name}.log")
    env.folder.mkdir(exist_ok=True)


class _FromAddress(HTTPAdapter):
    """Connections from a given loopback address: each device enrolls from its own address, as tablets on
    a mobile network do."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


class Device(bsync.Device):
    """``bench.sync.Device`` with its own source address (127.1.x.y) on loopback."""

    def __init__(self, env: bsync.Env, worker: str, name: str, number: int) -> None:
        self.path = env.folder / f"{name}.fsdb"
        t0 = time.perf_counter()
        self.store = Store.create(self.path, bsync.PIN, kdf=bsync.BENCH_KDF)
        self.create_s = time.perf_counter() - t0
        code, _ = env.district.issue_code(worker)
        transport = RequestsTransport(env.server.url)
        transport.session.mount("http://", _FromAddress(source_address(number)))
        self.meter = bsync.Meter(transport)
        enroll(self.store, env.server.url, code, transport=self.meter, device_name=f"bench {name}")
        self._watch = None
        self.client = SyncClient(self.store, self.meter, on_status=self._on_status)
        env.devices.append(self)


def source_address(number: int) -> str:
    """A loopback address of its own for device ``number`` (Linux routes all of 127/8 to lo)."""
    return f"127.{1 + number // 62500}.{number // 250 % 250}.{number % 250 + 1}"


def _stop(env: bsync.Env) -> None:
    for dev in env.devices:
        dev.close()
    env.devices.clear()
    if env.server is not None:
        env.server.stop()
    env.district.close()


# -- 1. store size ------------------------------------------------------------------------------
def store_sizes(folder: Path, sizes: Sequence[int], noop_runs: int, seed: int) -> tuple[dict[str, Any], bsync.Env]:
    """Initial pull and no-op sync per store size.  Returns the results and the running env
    (its server still holds the grids: the pull-memory child uses it)."""
    env = _new_env(folder, "sizes")
    t0 = time.perf_counter()
    loaded = 0
    for i, n in enumerate(sizes):
        data = bsync.big_grid(f"wc-growth-{n}", n, seed + i)
        if bsync._count(data) != n:
            raise AssertionError(f"generated {bsync._count(data)} records for a grid of {n}")
        loaded += _load_grid(env.district, f"w-growth-{n}", f"wc-growth-{n}", data)
        del data
    load_s = time.perf_counter() - t0
    _start(env, "sizes")
    pulls: dict[int, tuple[bsync.Device, dict[str, Any]]] = {}
    for n in sizes:
        dev = Device(env, f"w-growth-{n}", f"size-{n}", 60_000 + n // 1000)
        result, d = bsync.timed_sync(env, dev)
        if result.pulled != n:
            raise AssertionError(f"pulled {result.pulled} records, expected {n}")
        pulls[n] = (dev, d["whole"])
        bsync.timed_sync(env, dev)  # the first no-op after a pull verifies the grid checksum: not measured
    # No-op syncs in rounds over every store, the order reversed every other round, so a burst of
    # load from other processes lands on all sizes alike.
    noops: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for i in range(noop_runs):
        for n in (sizes if i % 2 == 0 else sizes[::-1]):
            r, nd = bsync.timed_sync(env, pulls[n][0])
            if r.pulled or r.pushed or r.repaired:
                raise AssertionError(f"not a no-op: {r}")
            noops[n].append(nd["whole"])
    rows = []
    for n in sizes:
        dev, pull = pulls[n]
        times = sorted(w["seconds"] * 1000 for w in noops[n])
        rows.append({
            "records": n,
            "pull_s": round(pull["seconds"], 3),
            "pull_records_per_s": round(n / pull["seconds"], 1),
            "pull_client_cpu_s": round(pull["client_cpu_s"], 3),
            "pull_server_cpu_s": round(pull["server_cpu_s"], 3),
            "pull_others_cpu_s": round(pull["other_cpu_s"], 3),
            "pull_requests": pull["requests"],
            "pull_client_us_per_record": round(pull["client_cpu_s"] / n * 1e6, 1),
            "noop_runs": noop_runs,
            "noop_median_ms": round(statistics.median(times), 3),
            "noop_p90_ms": round(bsync._pct(times, 0.9), 3),
            "noop_client_cpu_ms": round(statistics.mean(w["client_cpu_s"] for w in noops[n]) * 1000, 3),
            "noop_server_cpu_ms": round(statistics.mean(w["server_cpu_s"] for w in noops[n]) * 1000, 3),
            "store_mb": round(sum(p.stat().st_size for p in dev.path.parent.glob(dev.path.name + "*")
                                  if p.is_file()) / 1e6, 1),
        })
    for dev, _ in pulls.values():
        dev.close()
        env.devices.remove(dev)
    gc.collect()
    return {"server_load": {"records": loaded, "seconds": round(load_s, 1)}, "rows": rows}, env


# -- 2. pull memory -----------------------------------------------------------------------------
def pull_memory(server_url: str, code: str, expected: int, folder: Path, trace: bool = False,
                timeout: float = 900, number: int = 61_000) -> dict[str, Any]:
    """Pull into a fresh store in a fresh child process, sampling its RSS; returns the child's report."""
    out = folder / f"pull-memory-{os.getpid()}-{time.monotonic_ns()}.json"
    args = [sys.executable, "-m", "bench.growth", "--child-pull", server_url, code, str(folder), str(out),
            source_address(number)]
    if trace:
        args.append("--trace")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"pull child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    if result["pulled"] != expected:
        raise AssertionError(f"the child pulled {result['pulled']} records, expected {expected}")
    return result


class _RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` s; notes what ``where()`` says at the peak and, with
    ``trace``, takes a tracemalloc snapshot whenever the traced memory reaches a new high (by 8 MB)."""

    def __init__(self, where: Any, trace: bool, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.where, self.trace, self.interval = where, trace, interval
        self.peak = self.proc.memory_info().rss
        self.peak_at = "before the sync"
        self.samples = 0
        self.snapshot: Any = None
        self._traced_high = 0
        self._done = threading.Event()

    def run(self) -> None:
        import tracemalloc

        while not self._done.is_set():
            rss = self.proc.memory_info().rss
            self.samples += 1
            if rss > self.peak:
                self.peak, self.peak_at = rss, self.where()
            if self.trace:
                current = tracemalloc.get_traced_memory()[0]
                if current > self._traced_high + 8 * MB:
                    self._traced_high = current
                    self.snapshot = (tracemalloc.take_snapshot(), self.where())
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _child_pull(server_url: str, code: str, folder: str, out: str, address: str, trace: bool) -> None:
    """In a fresh process: create a store, enroll, then pull everything while RSS is sampled."""
    import tracemalloc

    from fieldsync.sync import SyncProgress, SyncStatus

    path = Path(folder) / f"pull-memory-{os.getpid()}.fsdb"
    store = Store.create(path, bsync.PIN, kdf=bsync.BENCH_KDF)
    transport = RequestsTransport(server_url)
    transport.session.mount("http://", _FromAddress(address))
    enroll(store, server_url, code, transport=transport, device_name="bench growth pull-memory")
    phase = ["idle"]

    def on_status(status: SyncStatus) -> None:
        phase[0] = status.phase

    client = SyncClient(store, transport, on_status=on_status)
    gc.collect()
    pages: list[tuple[int, int]] = []
    proc = psutil.Process()

    def on_page(p: SyncProgress) -> None:
        if p.phase == "pulling":
            pages.append((p.records, proc.memory_info().rss))

    def where() -> str:
        return f"phase {phase[0]}, {len(pages)} page(s) applied"

    base = None
    if trace:
        tracemalloc.start(4)
        base = tracemalloc.take_snapshot()
    sampler = _RssSampler(where, trace)
    before = sampler.peak
    sampler.start()
    t0 = time.perf_counter()
    result = client.sync(progress=on_page)
    seconds = time.perf_counter() - t0
    sampler.stop()
    after = proc.memory_info().rss
    report: dict[str, Any] = {
        "pulled": result.pulled,
        "seconds": round(seconds, 2),
        "pages": result.requests,
        "rss_before_mb": round(before / MB, 1),
        "rss_peak_mb": round(sampler.peak / MB, 1),
        "rss_after_mb": round(after / MB, 1),
        "rss_growth_mb": round((sampler.peak - before) / MB, 1),
        "peak_at": sampler.peak_at,
        "samples": sampler.samples,
        "rss_by_page_mb": [[n, round((rss - before) / MB, 1)] for n, rss in pages],
        "store_mb": round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()) / 1e6, 1),
    }
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        report["tracemalloc"] = {"current_mb": round(current / MB, 1), "peak_mb": round(peak / MB, 1)}
        if sampler.snapshot is not None:
            snap, at = sampler.snapshot
            report["tracemalloc"]["snapshot_at"] = at
            diff = snap.compare_to(base, "traceback")
            report["tracemalloc"]["top"] = [
                {"size_mb": round(s.size_diff / MB, 2), "count": s.count_diff,
                 "where": [f"{f.filename.replace(str(REPO) + '/', '')}:{f.lineno}" for f in s.traceback][-6:]}
                for s in diff[:12]]
        tracemalloc.stop()
    store.close()
    transport.close()
    Path(out).write_text(json.dumps(report))


# -- 3. devices ---------------------------------------------------------------------------------
def devices(folder: Path, counts: Sequence[int], seed: int, min_sessions: int = MIN_SESSIONS) -> dict[str, Any]:
    """Server CPU per session as the number of devices grows."""
    top = max(counts)
    env = _new_env(folder, "devices")
    grids = -(-top // DEVICES_PER_GRID)
    households: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for g in range(grids):
        grid = f"wc-dev-{g:03d}"
        data = bsync.small_grid(grid, DEVICE_GRID_RECORDS, seed + g)
        households[grid] = data["households"]
        bsync._load(env.district, data)
    for i in range(top):
        env.district.add_worker(f"w-dev-{i:03d}", f"网格员 {i}")
        env.district.assign(f"w-dev-{i:03d}", f"wc-dev-{i // DEVICES_PER_GRID:03d}")
    load_s = time.perf_counter() - t0
    _start(env, "devices")
    server = psutil.Process(env.server.pid)
    rows = []
    enrolled: list[bsync.Device] = []
    try:
        for target in counts:
            t_enroll = time.perf_counter()
            while len(enrolled) < target:
                i = len(enrolled)
                dev = Device(env, f"w-dev-{i:03d}", f"dev-{i:03d}", i)
                dev.client.sync()  # the device's first pull: set-up, not measured
                enrolled.append(dev)
            enroll_s = time.perf_counter() - t_enroll
            # /proc counts CPU in 10 ms ticks: enough rounds that each figure spans >= MIN_SESSIONS sessions.
            rounds = max(1, -(-min_sessions // target))
            row: dict[str, Any] = {"devices": target, "enroll_and_first_pull_s": round(enroll_s, 1), "rounds": rounds}
            for kind in ("small", "noop"):
                server_cpu = client_cpu = wall = 0.0
                walls: list[float] = []
                pulled = pushed = 0
                for k in range(rounds):
                    for i, dev in enumerate(enrolled):  # not measured: offline work, or catching up
                        if kind == "small":
                            grid = f"wc-dev-{i // DEVICES_PER_GRID:03d}"
                            dev.store.put_many("visits", bsync.offline_visits(
                                grid, f"w-dev-{i:03d}", households[grid], SESSION_VISITS, seed + 7919 * k + i))
                        else:
                            dev.client.sync()  # the others' pushes: the next round is then a no-op
                    gc.collect()
                    s_cpu, c_cpu, t_start = _cpu_s(server), time.process_time(), time.perf_counter()
                    for dev in enrolled:
                        t = time.perf_counter()
                        r = dev.client.sync()
                        walls.append(time.perf_counter() - t)
                        pulled += r.pulled
                        pushed += r.pushed
                    wall += time.perf_counter() - t_start
                    server_cpu += _cpu_s(server) - s_cpu
                    client_cpu += time.process_time() - c_cpu
                sessions = target * rounds
                if kind == "small" and pushed != SESSION_VISITS * sessions:
                    raise AssertionError(f"pushed {pushed}, expected {SESSION_VISITS * sessions}")
                if kind == "noop" and (pulled or pushed):
                    raise AssertionError(f"no-op round moved records: pushed {pushed}, pulled {pulled}")
                row[kind] = {
                    "sessions": sessions,
                    "pushed": pushed,
                    "pulled": pulled,
                    "seconds": round(wall, 3),
                    "server_cpu_s": round(server_cpu, 3),
                    "server_cpu_ms_per_session": round(server_cpu / sessions * 1000, 3),
                    "client_cpu_ms_per_session": round(client_cpu / sessions * 1000, 3),
                    "median_ms": round(statistics.median(walls) * 1000, 3),
                    "p90_ms": round(bsync._pct(sorted(w * 1000 for w in walls), 0.9), 3),
                }
            row["server_rss_mb"] = round(server.memory_info().rss / 1e6, 1)
            rows.append(row)
    finally:
        _stop(env)
    return {"setup_s": round(load_s, 1), "grids": grids, "devices_per_grid": DEVICES_PER_GRID,
            "grid_records": DEVICE_GRID_RECORDS, "session_visits": SESSION_VISITS, "rows": rows}


# -- plots --------------------------------------------------------------------------------------
def plot(result: Mapping[str, Any], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    sizes = result["sizes"]["rows"]
    n = [r["records"] for r in sizes]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(n, [r["pull_s"] for r in sizes], "o-", label="full pull, wall s")
    a.plot(n, [r["pull_client_cpu_s"] for r in sizes], "s--", label="client CPU s")
    a.plot(n, [r["pull_server_cpu_s"] for r in sizes], "^--", label="server CPU s")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("records in the grid (store size)")
    a.set_ylabel("seconds")
    a.set_title("Initial (full) pull into an empty store")
    for r in sizes:
        a.annotate(f"{r['pull_records_per_s']:,.0f}/s", (r["records"], r["pull_s"]), textcoords="offset points",
                   xytext=(4, -12), fontsize=7)
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    b.plot(n, [r["noop_median_ms"] for r in sizes], "o-", label="no-op sync, median wall ms")
    b.plot(n, [r["noop_p90_ms"] for r in sizes], ".:", label="p90 wall ms")
    b.plot(n, [r["noop_client_cpu_ms"] + r["noop_server_cpu_ms"] for r in sizes], "s--",
           label="client + server CPU ms")
    b.set_xscale("log")
    b.set_ylim(bottom=0)
    b.set_xlabel("records in the store")
    b.set_ylabel("ms per sync")
    b.set_title("No-op sync (nothing to push or pull)")
    b.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=8)
    mem = result.get("pull_memory", {})
    fig.suptitle(f"fieldsync growth ({result['command']}); pull RSS growth {mem.get('rss_growth_mb', '?')} MB "
                 f"for {mem.get('pulled', 0):,} records", fontsize=10)
    fig.tight_layout()
    first = folder / "growth-noop-pull.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)

    dev = result["devices"]["rows"]
    d = [r["devices"] for r in dev]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(d, [r["small"]["server_cpu_ms_per_session"] for r in dev], "o-", label="small sync (push 2, pull new)")
    a.plot(d, [r["noop"]["server_cpu_ms_per_session"] for r in dev], "s--", label="no-op sync")
    a.set_xlabel("devices enrolled on the server")
    a.set_ylabel("server CPU ms per session")
    a.set_ylim(bottom=0)
    a.set_title("Server CPU per device session")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    b.plot(d, [r["small"]["median_ms"] for r in dev], "o-", label="small sync, median wall ms")
    b.plot(d, [r["noop"]["median_ms"] for r in dev], "s--", label="no-op sync, median wall ms")
    b.plot(d, [r["server_rss_mb"] for r in dev], "^:", label="server RSS MB")
    b.set_xlabel("devices enrolled on the server")
    b.set_ylim(bottom=0)
    b.set_title("Session time and server memory")
    b.grid(True, alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"fieldsync growth ({result['command']}): {result['devices']['devices_per_grid']} devices per "
                 f"{result['devices']['grid_records']}-record grid, one session per device per round", fontsize=10)
    fig.tight_layout()
    second = folder / "growth-devices.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return {"noop_pull": str(first), "devices": str(second)}


# -- the run ------------------------------------------------------------------------------------
def table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: metric, value, unit, baseline, ratio, goal, met."""
    rows: list[dict[str, Any]] = []
    sizes = result["sizes"]["rows"]
    first = sizes[0]
    for r in sizes:
        rows.append({"metric": f"full pull, {r['records']:,} records", "value": r["pull_s"], "unit": "s",
                     "baseline": f"{r['records'] / first['pull_records_per_s']:.2f} s at the "
                                 f"{first['records']:,}-record rate",
                     "ratio": round(first["pull_records_per_s"] / r["pull_records_per_s"], 2),
                     "goal": None, "met": None})
    for r in sizes:
        ratio = round(r["noop_median_ms"] / first["noop_median_ms"], 2)
        rows.append({"metric": f"no-op sync, {r['records']:,}-record store", "value": r["noop_median_ms"],
                     "unit": "ms", "baseline": f"{first['noop_median_ms']} ms ({first['records']:,} records)",
                     "ratio": ratio, "goal": f"ratio <= {NOOP_GOAL_RATIO}", "met": ratio <= NOOP_GOAL_RATIO})
    mem = result["pull_memory"]
    rows.append({"metric": f"pull RSS growth, {mem['pulled']:,} records", "value": mem["rss_growth_mb"], "unit": "MB",
                 "baseline": f"{mem['rss_before_mb']} MB before the sync", "ratio": None,
                 "goal": f"< {PULL_RSS_GOAL_MB:.0f} MB", "met": mem["rss_growth_mb"] < PULL_RSS_GOAL_MB})
    dev = result["devices"]["rows"]
    for kind, label in (("small", "small sync"), ("noop", "no-op sync")):
        base = dev[0][kind]["server_cpu_ms_per_session"]
        for r in dev:
            v = r[kind]["server_cpu_ms_per_session"]
            rows.append({"metric": f"server CPU per {label}, {r['devices']} devices", "value": v, "unit": "ms",
                         "baseline": f"{base} ms ({dev[0]['devices']} devices)",
                         "ratio": round(v / base, 2) if base else None, "goal": None, "met": None})
    return rows


def run(quick: bool = False, where: str | None = None, seed: int = 1, plots: str | None = None,
        trace: bool = False) -> dict[str, Any]:
    """Run the three parts and return the results as plain data (and write the two plots)."""
    sizes = QUICK_SIZES if quick else SIZES
    counts = QUICK_DEVICES if quick else DEVICES
    noop_runs = 15 if quick else 30
    mem_size = max(s for s in sizes if s <= 100_000)
    plots_dir = Path(plots) if plots else REPO / ("bench/results/plots" if quick else "docs/plots")
    load_before = loadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-growth-", dir=where) as tmp:
        folder = Path(tmp)
        sized, env = store_sizes(folder / "sizes", sizes, noop_runs, seed)
        try:
            code, _ = env.district.issue_code(f"w-growth-{mem_size}")
            memory = pull_memory(env.server.url, code, mem_size, folder)
            if trace or memory["rss_growth_mb"] >= PULL_RSS_GOAL_MB:
                code, _ = env.district.issue_code(f"w-growth-{mem_size}")
                memory["traced"] = pull_memory(env.server.url, code, mem_size, folder, trace=True, number=61_001)
        finally:
            _stop(env)
        devs = devices(folder / "devices", counts, seed, 100 if quick else MIN_SESSIONS)
        env_desc = machine(folder)
    env_desc["loadavg_before"], env_desc["loadavg_after"] = load_before, loadavg()
    result: dict[str, Any] = {
        "benchmark": "fieldsync.growth",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.growth" + (" --quick" if quick else ""),
        "machine": env_desc,
        "seconds": 0.0,
        "setup": {"sizes": list(sizes), "devices": list(counts), "noop_runs": noop_runs, "seed": seed,
                  "server": "python -m uvicorn server_stub.asgi:app, SQLite database (one process)",
                  "pull_memory_records": mem_size},
        "sizes": sized,
        "pull_memory": memory,
        "devices": devs,
    }
    result["plots"] = {k: os.path.relpath(v, REPO) for k, v in plot(result, plots_dir).items()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["table"] = table(result)
    mem_ok = memory["rss_growth_mb"] < PULL_RSS_GOAL_MB
    noop_ratio = max(r["noop_median_ms"] for r in sized["rows"]) / sized["rows"][0]["noop_median_ms"]
    result["goals"] = {
        "pull_rss_growth_under_50MB": {"value": memory["rss_growth_mb"], "met": mem_ok},
        "noop_flat_within_1.3x": {"value": round(noop_ratio, 2), "met": noop_ratio <= NOOP_GOAL_RATIO},
    }
    return result


def report(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    out = [f"fieldsync growth benchmark ({result['command']}), {result['seconds']} s",
           f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}; "
           f"load average before {m['loadavg_before']}, after {m['loadavg_after']}", "",
           f"{'records':>8} {'pull s':>8} {'rec/s':>8} {'client µs/rec':>13} {'no-op ms':>9} {'p90':>7} {'store MB':>8}"]
    for r in result["sizes"]["rows"]:
        out.append(f"{r['records']:>8,} {r['pull_s']:>8.2f} {r['pull_records_per_s']:>8,.0f} "
                   f"{r['pull_client_us_per_record']:>13.1f} {r['noop_median_ms']:>9.2f} {r['noop_p90_ms']:>7.2f} "
                   f"{r['store_mb']:>8.1f}")
    mem = result["pull_memory"]
    out += ["", f"pull memory: {mem['pulled']:,} records in {mem['seconds']} s, RSS {mem['rss_before_mb']} -> peak "
            f"{mem['rss_peak_mb']} MB (growth {mem['rss_growth_mb']} MB, at {mem['peak_at']}), "
            f"after {mem['rss_after_mb']} MB"]
    if "traced" in mem and "tracemalloc" in mem["traced"]:
        tm = mem["traced"]["tracemalloc"]
        out.append(f"  tracemalloc: peak {tm['peak_mb']} MB traced; largest growth at the traced high "
                   f"({tm.get('snapshot_at')}):")
        for s in tm.get("top", [])[:8]:
            out.append(f"    {s['size_mb']:>7.2f} MB {s['count']:>7} blocks  {' <- '.join(reversed(s['where'][-3:]))}")
    out += ["", f"{'devices':>7} {'srv CPU ms/small':>16} {'srv CPU ms/no-op':>16} {'small ms':>9} {'no-op ms':>9} "
            f"{'server RSS MB':>13}"]
    for r in result["devices"]["rows"]:
        out.append(f"{r['devices']:>7} {r['small']['server_cpu_ms_per_session']:>16.2f} "
                   f"{r['noop']['server_cpu_ms_per_session']:>16.2f} {r['small']['median_ms']:>9.2f} "
                   f"{r['noop']['median_ms']:>9.2f} {r['server_rss_mb']:>13.1f}")
    out += ["", f"plots: {result['plots']}"]
    for name, goal in result["goals"].items():
        out.append(f"goal {name}: {goal['value']} -> {'MET' if goal['met'] else 'MISSED'}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-pull":
        _child_pull(argv[1], argv[2], argv[3], argv[4], argv[5], "--trace" in argv[6:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="store sizes up to 20k, 10/25/50 devices")
    parser.add_argument("--json", metavar="PATH", help="also write the results and machine description as JSON")
    parser.add_argument("--dir", metavar="DIR", help="where to put the temporary databases and stores")
    parser.add_argument("--plots", metavar="DIR", help="where the PNGs go (default docs/plots, quick: bench/results/plots)")
    parser.add_argument("--trace", action="store_true", help="also pull under tracemalloc and list allocation sites")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, where=args.dir, seed=args.seed, plots=args.plots, trace=args.trace)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
