"""Store benchmark: the encrypted fieldsync Store against plain sqlite-utils.

Run ``python -m bench.store [--quick] [--json PATH] [--dir DIR] [--profile]``.

In one run, on real files in a temporary directory:

1. **Batch saves**: the same households + residents (10,000 records, 2,000
   with ``--quick``) saved (a) through ``Store.put_many`` in batches of 500,
   each batch one transaction that also writes per-field clocks, blind-index
   tokens and outbox entries, all sealed with AES-256-GCM; (b) through plain
   sqlite-utils ``Table.insert_all`` in the same batches, unencrypted, with
   the same ``journal_mode=WAL`` and ``synchronous=FULL``; (c) as (b) plus
   plaintext indexes on the columns the store can search (grid, names,
   phones, ID numbers), the fair "same features, no encryption" baseline.
   Goal: ``plain records/s / encrypted records/s <= 3`` against (b).
2. **Single saves**: 300 ``store.put`` calls, each its own transaction
   (new households), then 300 one-field updates; p50/p99 latency.
3. **Search**: a store holding one grid (300 households, 1,000 residents);
   ``store.find`` by resident ID number, household head name and phone, and
   ``store.list("households", grid)``; p50/p99 in ms.  Goal: search < 5 ms.

The stores are created with scrypt N=2^14 instead of the default 2^17: the
KDF runs once per unlock, never per record, so it does not touch any number
above; its cost at both settings is measured separately.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from sqlite_utils import Database

from fieldsync import KdfParams, Store
from fieldsync.crypto import OWASP_SCRYPT, derive_kek
from server_stub import demo_data as datagen

from .procs import cpu_model, loadavg

__all__ = ["run", "main", "machine", "workload", "table"]

Records = dict[str, list[dict[str, Any]]]

PIN = "246810"
BENCH_KDF = KdfParams(n=2**14)
BATCH = 500
GOAL_RATIO = 3.0
GOAL_SEARCH_MS = 5.0
SEARCHABLE = {"households": ("grid_id", "head_name", "phone"), "residents": ("grid_id", "name", "id_number", "phone")}


# -- environment -----------------------------------------------------------
def _filesystem(path: Path) -> str:
    """The mount type holding ``path`` (tmpfs makes fsync free and the numbers meaningless)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, f"{fstype} on {mount} ({parts[0]})"
    except OSError:
        pass
    return kind


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _source() -> dict[str, Any]:
    """The commit measured, and whether fieldsync/ had uncommitted changes (numbers then belong to the working tree)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "fieldsync"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "fieldsync_uncommitted": [p for p in dirty if p.startswith("fieldsync/")]}


def machine(where: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {d: _version(d) for d in ("fieldsync", "sqlite-utils", "cryptography")},
        "filesystem": _filesystem(where),
        "source": _source(),
    }


# -- data ------------------------------------------------------------------
def workload(total: int, seed: int = 1) -> Records:
    """``total`` records: whole grids of 300 households with their residents, cut at ``total``."""
    hh: list[dict[str, Any]] = []
    rs: list[dict[str, Any]] = []
    g = 0
    while len(hh) + len(rs) < total:
        grid = datagen.GRIDS[g % len(datagen.GRIDS)]["id"] + (f"-{g // len(datagen.GRIDS)}" if g >= 6 else "")
        part = datagen.households(300, grid, seed + g)
        hh += part
        rs += datagen.residents(part, seed=seed + g)
        g += 1
    # Keep the household/resident mix of whole grids, trimmed to the exact total.
    n_hh = round(total * len(hh) / (len(hh) + len(rs)))
    kept_hh = hh[:n_hh]
    ids = {h["id"] for h in kept_hh}
    kept_rs = [r for r in rs if r["household_id"] in ids][: total - n_hh]
    if len(kept_rs) < total - n_hh:
        kept_hh = hh[: total - len(kept_rs)]
    return {"households": kept_hh, "residents": kept_rs}


def _batches(items: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(_pct(ms, 0.50), 3),
        "p99_ms": round(_pct(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def _files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


# -- the two stores --------------------------------------------------------
def _encrypted(path: Path) -> Store:
    return Store.create(path, PIN, kdf=BENCH_KDF)


def _plain(path: Path, data: Mapping[str, Sequence[dict[str, Any]]], indexed: bool) -> Database:
    db = Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for name, records in data.items():
        columns: dict[str, type] = {}
        for r in records:
            for k, v in r.items():
                columns.setdefault(k, int if isinstance(v, int) else str)
        db[name].create(columns, pk="id")  # type: ignore[union-attr]
        if indexed:
            for col in SEARCHABLE.get(name, ()):
                db[name].create_index([col])  # type: ignore[union-attr]
    return db


def batch_encrypted(data: Records, folder: Path, profile: cProfile.Profile | None = None) -> dict[str, Any]:
    path = folder / "encrypted.fsdb"
    store = _encrypted(path)
    n = sum(len(v) for v in data.values())
    gc.collect()
    if profile:
        profile.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    for name, records in data.items():
        for chunk in _batches(records, BATCH):
            store.put_many(name, chunk)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if profile:
        profile.disable()
    outbox = store.outbox_size()
    store.close()
    if outbox != n:
        raise AssertionError(f"expected {n} outbox entries, found {outbox}")
    return _rates(n, elapsed, cpu, path)


def _rates(n: int, elapsed: float, cpu: float, path: Path) -> dict[str, Any]:
    return {
        "records": n,
        "seconds": elapsed,
        "records_per_s": n / elapsed,
        "cpu_records_per_s": n / cpu,
        "bytes_on_disk": _files_size(path),
    }


def batch_plain(data: Records, folder: Path, indexed: bool) -> dict[str, Any]:
    path = folder / ("plain-indexed.db" if indexed else "plain.db")
    db = _plain(path, data, indexed)
    n = sum(len(v) for v in data.values())
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    for name, records in data.items():
        table = db[name]
        for chunk in _batches(records, BATCH):
            table.insert_all(chunk, batch_size=BATCH)  # type: ignore[union-attr]
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    db.close()
    return _rates(n, elapsed, cpu, path)


def _timed(fn: Callable[[], Any], times: list[float]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    return out


def singles_and_search(folder: Path, seed: int, singles: int, queries: int) -> dict[str, Any]:
    """Single-record save latency, then search and list over one grid (300 households, 1,000 residents)."""
    grid = datagen.GRIDS[0]["id"]
    hh = datagen.households(300, grid, seed, people=1000)
    rs = datagen.residents(hh, seed=seed)
    datagen.check({"households": hh, "residents": rs})
    extra = datagen.households(singles, "wc-latency-01", seed + 1)
    out: dict[str, Any] = {}

    store = _encrypted(folder / "search.fsdb")
    try:
        insert_t: list[float] = []
        for h in hh:  # the grid's households arrive one by one, as on a visit round
            _timed(lambda h=h: store.put("households", h), insert_t)
        for h in extra:
            _timed(lambda h=h: store.put("households", h), insert_t)
        out["put_insert"] = _summary_ms(insert_t[-singles:])
        update_t: list[float] = []
        rng = random.Random(seed)
        for i in range(singles):
            h = hh[i % len(hh)]
            _timed(
                lambda h=h, i=i: store.put("households", {"id": h["id"], "notes": f"第{i}次走访：情况正常"}), update_t
            )
        out["put_update"] = _summary_ms(update_t)
        for chunk in _batches(rs, BATCH):
            store.put_many("residents", chunk)
        for h in extra:  # back to one grid of 300 households
            store.delete("households", h["id"])

        searches = {
            "find residents.id_number": ("residents", "id_number", [r["id_number"] for r in rs]),
            "find households.head_name": ("households", "head_name", [h["head_name"] for h in hh]),
            "find households.phone": ("households", "phone", [h["phone"] for h in hh]),
        }
        for label, (collection, fname, values) in searches.items():
            picks = [rng.choice(values) for _ in range(queries)]
            times: list[float] = []
            hits = 0
            for v in picks:
                hits += len(_timed(lambda c=collection, f=fname, v=v: store.find(c, f, v), times))
            if hits < len(picks):
                raise AssertionError(f"{label}: only {hits} hits for {len(picks)} known values")
            out[label] = {**_summary_ms(times), "hits_per_query": round(hits / len(picks), 2)}
        misses: list[float] = []
        absent = [datagen.id_number(date(1970, 1, 1), True, random.Random(i), "110101") for i in range(queries)]
        for x in absent:  # valid numbers from another city: never in this store
            _timed(lambda x=x: store.find("residents", "id_number", x), misses)
        out["find residents.id_number (miss)"] = _summary_ms(misses)
        list_t: list[float] = []
        for _ in range(max(20, queries // 15)):
            listed = _timed(lambda: store.list("households", grid), list_t)
        if len(listed) != len(hh):
            raise AssertionError(f"list returned {len(listed)} households, expected {len(hh)}")
        out["list households (300)"] = _summary_ms(list_t)
        out["store"] = {"households": store.count("households"), "residents": store.count("residents")}
    finally:
        store.close()

    db = _plain(folder / "plain-single.db", {"households": hh + extra}, indexed=True)
    plain_t: list[float] = []
    table = db["households"]
    for h in extra:
        _timed(lambda h=h: table.insert(h), plain_t)  # type: ignore[union-attr]
    db.close()
    out["plain insert (sqlite-utils, indexed)"] = _summary_ms(plain_t)
    return out


def kdf_cost(repeats: int = 3) -> dict[str, Any]:
    """Seconds for one PIN-to-key derivation (paid once per unlock, and per guess by an attacker)."""
    out = {}
    for label, params in (("bench N=2^14", BENCH_KDF), ("default N=2^17 (OWASP)", OWASP_SCRYPT)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            derive_kek("246810", os.urandom(16), params)
            times.append(time.perf_counter() - t0)
        out[label] = {"median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}
    return out


# -- the run ---------------------------------------------------------------
def run(
    quick: bool = False, where: str | None = None, seed: int = 1, profile: bool = False, repeats: int | None = None
) -> dict[str, Any]:
    """Run every measurement once (batch saves ``repeats`` times) and return the results as plain data."""
    total = 2_000 if quick else 10_000
    repeats = repeats or (3 if quick else 5)
    data = workload(total, seed)
    checked = datagen.check(data)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-", dir=where) as tmp:
        folder = Path(tmp)
        runs: dict[str, list[dict[str, Any]]] = {"encrypted": [], "plain": [], "plain_indexed": []}
        prof = cProfile.Profile() if profile else None
        for i in range(repeats):
            sub = folder / f"run{i}"
            sub.mkdir()
            # Alternate the order so neither side always runs first or on a warmer cache.
            order = ["encrypted", "plain", "plain_indexed"] if i % 2 == 0 else ["plain_indexed", "plain", "encrypted"]
            for which in order:
                if which == "encrypted":
                    runs[which].append(batch_encrypted(data, sub, prof if i == 0 else None))
                else:
                    runs[which].append(batch_plain(data, sub, indexed=which == "plain_indexed"))
        batch: dict[str, Any] = {}
        for which, results in runs.items():
            rates = [r["records_per_s"] for r in results]
            cpu_rates = [r["cpu_records_per_s"] for r in results]
            batch[which] = {
                "records_per_s": round(statistics.median(rates), 1),
                "best_records_per_s": round(max(rates), 1),
                "cpu_records_per_s": round(statistics.median(cpu_rates), 1),
                "runs_records_per_s": [round(r, 1) for r in rates],
                "bytes_on_disk": results[0]["bytes_on_disk"],
            }
        latency = singles_and_search(folder, seed, singles=300, queries=300)
        env = machine(folder)
    env["loadavg_before"], env["loadavg_after"] = load_before, loadavg()

    def ratio(base: str, key: str = "records_per_s") -> float:
        return round(batch[base][key] / batch["encrypted"][key], 2)

    paired = [p["records_per_s"] / e["records_per_s"] for p, e in zip(runs["plain"], runs["encrypted"])]
    ratios = {
        "plain/encrypted (median records/s)": ratio("plain"),
        "plain/encrypted (best run each)": ratio("plain", "best_records_per_s"),
        "plain/encrypted (median of paired runs)": round(statistics.median(paired), 2),
        "plain/encrypted (CPU time)": ratio("plain", "cpu_records_per_s"),
        "plain+indexes/encrypted (median records/s)": ratio("plain_indexed"),
        "plain+indexes/encrypted (CPU time)": ratio("plain_indexed", "cpu_records_per_s"),
    }
    headline = ratios["plain/encrypted (median records/s)"]
    worst_search = max(v["p99_ms"] for k, v in latency.items() if k.startswith("find"))
    result: dict[str, Any] = {
        "benchmark": "fieldsync.store",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.store" + (" --quick" if quick else ""),
        "machine": env,
        "setup": {
            "records": total,
            "mix": {k: len(v) for k, v in data.items()},
            "validated": checked,
            "batch_size": BATCH,
            "repeats": repeats,
            "pragmas": "journal_mode=WAL, synchronous=FULL on both sides (the store also sets secure_delete=ON)",
            "store_kdf": f"scrypt N=2^{BENCH_KDF.n.bit_length() - 1}, r={BENCH_KDF.r}, p={BENCH_KDF.p} (paid once, at create)",
            "seed": seed,
        },
        "batch": batch,
        "ratios": ratios,
        "latency": latency,
        "kdf": kdf_cost(),
        "goals": {
            "batch_ratio_at_most_3": {"value": headline, "met": headline <= GOAL_RATIO},
            "search_p99_under_5ms": {"value": worst_search, "met": worst_search < GOAL_SEARCH_MS},
        },
    }
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        result["profile_top"] = text.getvalue()
    result["table"] = table(result)
    return result


def table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for the suite (``python -m bench``): metric, value, unit, baseline, ratio, goal, met."""
    b, r, lat = result["batch"], result["ratios"], result["latency"]
    enc = b["encrypted"]["records_per_s"]
    worst = result["goals"]["search_p99_under_5ms"]["value"]
    return [
        {"metric": "batch save, encrypted Store.put_many", "value": enc, "unit": "records/s",
         "baseline": f"sqlite-utils insert_all {b['plain']['records_per_s']:,.0f}/s",
         "ratio": r["plain/encrypted (median records/s)"], "goal": f"ratio <= {GOAL_RATIO:g}",
         "met": r["plain/encrypted (median records/s)"] <= GOAL_RATIO},
        {"metric": "batch save, CPU time", "value": b["encrypted"]["cpu_records_per_s"], "unit": "records/CPU-s",
         "baseline": f"sqlite-utils {b['plain']['cpu_records_per_s']:,.0f}/CPU-s",
         "ratio": r["plain/encrypted (CPU time)"], "goal": None, "met": None},
        {"metric": "batch save vs plain + indexes", "value": enc, "unit": "records/s",
         "baseline": f"sqlite-utils + indexes {b['plain_indexed']['records_per_s']:,.0f}/s",
         "ratio": r["plain+indexes/encrypted (median records/s)"], "goal": None, "met": None},
        {"metric": "single put (insert), p50", "value": lat["put_insert"]["p50_ms"], "unit": "ms",
         "baseline": f"sqlite-utils insert {lat['plain insert (sqlite-utils, indexed)']['p50_ms']} ms",
         "ratio": round(lat["put_insert"]["p50_ms"] / lat["plain insert (sqlite-utils, indexed)"]["p50_ms"], 2),
         "goal": None, "met": None},
        {"metric": "search (find), worst p99", "value": worst, "unit": "ms", "baseline": None, "ratio": None,
         "goal": f"< {GOAL_SEARCH_MS:g} ms", "met": worst < GOAL_SEARCH_MS},
        {"metric": "list one grid (300 households), p99", "value": lat["list households (300)"]["p99_ms"],
         "unit": "ms", "baseline": None, "ratio": None, "goal": None, "met": None},
    ]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(result: Mapping[str, Any]) -> str:
    """The human-readable summary of :func:`run`'s result."""
    m, s, b = result["machine"], result["setup"], result["batch"]
    labels = (
        ("encrypted", "fieldsync Store.put_many (encrypted)"),
        ("plain", "sqlite-utils insert_all (plain)"),
        ("plain_indexed", "sqlite-utils insert_all + indexes"),
    )
    out = [
        f"fieldsync store benchmark ({result['command']})",
        f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"files on: {m['filesystem']}; load average before {m['loadavg_before']}, after {m['loadavg_after']}",
        f"source: {m['source']}",
        f"records: {s['records']} ({', '.join(f'{v} {k}' for k, v in s['mix'].items())}), "
        f"batches of {s['batch_size']}, {s['repeats']} runs; {s['pragmas']}",
        "",
        _table(
            [
                ("batch save", "median rec/s", "best rec/s", "CPU rec/s", "runs", "on disk"),
                *[
                    (
                        label,
                        f"{b[k]['records_per_s']:,.0f}",
                        f"{b[k]['best_records_per_s']:,.0f}",
                        f"{b[k]['cpu_records_per_s']:,.0f}",
                        " / ".join(f"{r:,.0f}" for r in b[k]["runs_records_per_s"]),
                        f"{b[k]['bytes_on_disk'] / 1e6:.1f} MB",
                    )
                    for k, label in labels
                ],
            ]
        ),
        "",
        _table([("ratio", "x"), *[(k, f"{v:.2f}") for k, v in result["ratios"].items()]]),
        "",
        _table(
            [
                ("operation", "n", "p50 ms", "p99 ms", "max ms"),
                *[
                    (k, str(v["n"]), f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}", f"{v['max_ms']:.3f}")
                    for k, v in result["latency"].items()
                    if k != "store"
                ],
            ]
        ),
        "",
        "PIN key derivation (once per unlock): "
        + ", ".join(f"{k} {v['median_s'] * 1000:.0f} ms" for k, v in result["kdf"].items()),
        "",
    ]
    for name, goal in result["goals"].items():
        out.append(f"goal {name}: {goal['value']} -> {'MET' if goal['met'] else 'MISSED'}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records instead of 10,000")
    parser.add_argument("--json", metavar="PATH", help="also write the results and machine description as JSON")
    parser.add_argument(
        "--dir", metavar="DIR", help="where to put the temporary databases (default: the system temp dir)"
    )
    parser.add_argument("--seed", type=int, default=1, help="data generator seed (default 1)")
    parser.add_argument("--repeats", type=int, help="batch-save runs per side (default 5, 3 with --quick)")
    parser.add_argument("--profile", action="store_true", help="cProfile the first encrypted batch run and print it")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, where=args.dir, seed=args.seed, profile=args.profile, repeats=args.repeats)
    print(report(result))
    if args.profile:
        print("\n" + result["profile_top"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
