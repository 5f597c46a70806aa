"""The server's sync hot paths in-process, without HTTP: CPU per session of each step.

``python -m bench.load_hotpaths [--backend sqlite|postgresql|both] [--devices 150] [--rounds 3]``

The same district and sessions as bench/load.py (devices of 2-5 per grid, ~20 wire-form changes
pushed per session, then a pull from the device's cursor), but each step is called directly, one
device at a time, on one thread: ``District.authenticate`` (signature, nonce, last seen),
``District.push``, ``District.authenticate`` again and ``District.pull``.  For each step it
reports the CPU time of this thread (``time.thread_time``) and, on PostgreSQL, of the backend
serving the connection (psutil), plus the statements sent.  With nothing else in the way these
numbers are steadier than a load run on a shared machine; run the module with
``PYTHONPATH=<another copy of server_stub/ and fieldsync/>`` for a before/after comparison.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from fieldsync.identity import Identity, public_key_b64
from fieldsync.schema import SCHEMA_VERSION
from server_stub.db import Tx
from server_stub.district import District

from .load import Plan, _pg_base, _PgDatabase, _with_db, build_district, prepare_push, spread

STEPS = ("auth_push", "push", "auth_pull", "pull")


class _Counting:
    """Counts the statements every Tx sends (wraps Tx.execute/executemany for this process)."""

    n = 0

    @classmethod
    def install(cls) -> None:
        execute, executemany = Tx.execute, Tx.executemany

        def counted_execute(self: Tx, sql: str, params: Sequence[Any] = ()) -> Tx:
            cls.n += 1
            return execute(self, sql, params)

        def counted_executemany(self: Tx, sql: str, rows: Sequence[Sequence[Any]]) -> None:
            cls.n += len(rows)
            executemany(self, sql, rows)

        Tx.execute = counted_execute  # type: ignore[method-assign]
        Tx.executemany = counted_executemany  # type: ignore[method-assign]


class _Backends:
    """CPU of the PostgreSQL backends of the district's database (found from a separate connection)."""

    def __init__(self, url: str | None) -> None:
        self.procs: list[psutil.Process] = []
        self.conn = None
        if url is not None:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)

    def refresh(self) -> None:
        if self.conn is not None:
            rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()").fetchall()
            self.procs = [psutil.Process(int(r[0])) for r in rows]

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


def _auth(district: District, identity: Identity, path: str, raw: bytes) -> Any:
    headers = {k.lower(): v for k, v in identity.sign("POST", path, "", raw).items()}
    return district.authenticate("POST", path, "", raw, headers)


def run_backend(url: str, plan: Plan, pg: bool) -> dict[str, Any]:
    sizes = spread(plan.devices, plan.seed)
    devices, loaded = build_district(url, plan, sizes)
    district = District(url)
    try:
        for dev in devices:
            body = {"code": dev.code, "public_key": public_key_b64(dev.key), "node_id": dev.node,
                    "device_name": "", "schema_version": SCHEMA_VERSION}
            out = district.enroll(body, dev.source)
            dev.identity = Identity(out["device_id"], out["worker_id"], "http://127.0.0.1", dev.key)
        backends = _Backends(url if pg else None)
        cpu: dict[str, list[float]] = {s: [] for s in STEPS}
        db_cpu: dict[str, float] = {s: 0.0 for s in STEPS}
        statements: dict[str, int] = {s: 0 for s in STEPS}
        sessions = 0

        def step(measured: bool, name: str, fn: Any, *args: Any) -> Any:
            b0, n0, t0 = backends.cpu(), _Counting.n, time.thread_time()
            result = fn(*args)
            t1, n1 = time.thread_time(), _Counting.n
            if measured:
                cpu[name].append(t1 - t0)
                db_cpu[name] += backends.cpu() - b0
                statements[name] += n1 - n0
            return result

        for round_no in range(plan.rounds + 1):
            measured = round_no > 0
            backends.refresh()
            for dev in devices:
                prepare_push(dev, plan, round_no)
                assert dev.identity is not None
                push_body = json.loads(gzip.decompress(dev.body) if dev.gzipped else dev.body)
                pull_raw = json.dumps({"schema_version": 1, "cursors": {dev.grid: dev.cursor}, "limit": 2000}).encode()
                pull_body = json.loads(pull_raw)

                device = step(measured, "auth_push", _auth, district, dev.identity, "/v1/push", dev.body)
                answer = step(measured, "push", district.push, device, push_body)
                if answer["acked_seq"] != dev.last_seq or answer["rejections"]:
                    raise RuntimeError(f"push not applied: {answer}")
                device = step(measured, "auth_pull", _auth, district, dev.identity, "/v1/pull", pull_raw)
                page = json.loads(step(measured, "pull", district.pull, device, pull_body))
                dev.cursor = page["cursors"][dev.grid]
                sessions += measured
    finally:
        district.close()
    per = {s: {"cpu_us": round(1e6 * sum(cpu[s]) / sessions), "median_us": round(1e6 * statistics.median(cpu[s])),
               "db_cpu_us": round(1e6 * db_cpu[s] / sessions), "statements": round(statements[s] / sessions, 1)}
           for s in STEPS}
    total = {"cpu_us": sum(p["cpu_us"] for p in per.values()), "db_cpu_us": sum(p["db_cpu_us"] for p in per.values()),
             "statements": round(sum(p["statements"] for p in per.values()), 1)}
    return {"sessions": sessions, "steps": per, "total": total, "load": loaded}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load_hotpaths", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--devices", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    _Counting.install()
    plan = Plan(devices=args.devices, households=60, rounds=args.rounds)
    import server_stub

    out: dict[str, Any] = {"server_code": str(Path(server_stub.__file__).parent.parent), "results": {}}
    for backend in (("sqlite", "postgresql") if args.backend == "both" else (args.backend,)):
        with tempfile.TemporaryDirectory(prefix="fieldsync-hotpaths-") as tmp:
            if backend == "sqlite":
                out["results"][backend] = run_backend(f"sqlite:///{tmp}/district.db", plan, False)
            else:
                base = _pg_base(args.pg_url)
                if base is None:
                    raise SystemExit("PostgreSQL: give --pg-url or $FIELDSYNC_BENCH_PG")
                db = _PgDatabase(base)
                try:
                    out["results"][backend] = run_backend(_with_db(base, db.name), plan, True)
                finally:
                    db.drop()
    print(f"server code: {out['server_code']}")
    for backend, r in out["results"].items():
        print(f"== {backend}: {r['sessions']} sessions; per session: server CPU {r['total']['cpu_us']} us, "
              f"database CPU {r['total']['db_cpu_us']} us, {r['total']['statements']} statements")
        for s, p in r["steps"].items():
            print(f"   {s:<10} CPU {p['cpu_us']:>6} us (median {p['median_us']:>6})  database {p['db_cpu_us']:>6} us  "
                  f"statements {p['statements']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
