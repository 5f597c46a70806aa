"""The benchmark suite: every benchmark in one command, one results table, one machine description.

Run ``python -m bench [--quick] [--only NAME[,NAME]] [--out DIR] [--pg-url URL]``.

Each part is a module ``bench.<name>`` with ``run(quick: bool) -> dict``; the dict's ``"table"``
holds rows ``{metric, value, unit, baseline, ratio, goal, met}``.  Every part runs in a child
process of its own (``python -m bench.suite --child NAME``), one after the other, so one part's
memory, threads or crash cannot touch the next, and a part that is missing, fails or times out
is recorded as failed while the others still run; the exit status is then 1.

Writes ``results.json`` (the machine, every part's status, table and full result) and
``results.md`` (the same as Markdown tables) into ``--out`` (default ``docs/bench-results/``,
committed as the record of a run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .procs import cpu_model, git, loadavg

__all__ = ["PARTS", "main", "machine", "normalise_rows", "markdown"]

REPO = Path(__file__).resolve().parent.parent
PARTS = ("store", "sync", "app", "photos", "growth", "peers", "load")
DEFAULT_OUT = REPO / "docs" / "bench-results"
ROW_KEYS = ("metric", "value", "unit", "baseline", "ratio", "goal", "met")
TIMEOUT_S = {True: 1200.0, False: 5400.0}  # per part: quick, full
PG_BIN = "/usr/lib/postgresql/15/bin"


# -- the machine ------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _ram_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _postgresql(pg_url: str | None) -> str | None:
    """The server version of ``pg_url``'s cluster, else the installed binaries' version, else None."""
    if pg_url:
        try:
            import psycopg

            with psycopg.connect(pg_url, connect_timeout=10) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                return f"{row[0]} (server)" if row else None
        except Exception as exc:  # noqa: BLE001 - the description says why there is no version
            return f"unreachable: {exc.__class__.__name__}"
    exe = shutil.which("postgres") or (f"{PG_BIN}/postgres" if Path(f"{PG_BIN}/postgres").exists() else None)
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"\(PostgreSQL\) (\S+)", out)
        return f"{found.group(1)} (binaries; bench.sync starts a throwaway cluster)" if found else None
    return None


def machine(pg_url: str | None = None) -> dict[str, Any]:
    """What the suite ran on (load average is added around the run by :func:`run_suite`)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgresql(pg_url),
        "git": {"commit": git("rev-parse", "HEAD").strip(), "describe": git("log", "-1", "--format=%h %s").strip(),
                "uncommitted": dirty},
    }


# -- rows ---------------------------------------------------------------------------------------
def _goal_rows(goals: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    rows = []
    for name, g in goals.items():
        if isinstance(g, Mapping) and "met" in g:
            rows.append({"metric": f"{prefix}{name}", "value": g.get("value"), "unit": "", "baseline": None,
                         "ratio": None, "goal": name, "met": g.get("met")})
    return rows


def _find_goals(result: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Rows from every ``goals`` mapping in a result (for parts that have no ``table``)."""
    if not isinstance(result, Mapping):
        return []
    rows = _goal_rows(result["goals"], prefix) if isinstance(result.get("goals"), Mapping) else []
    for key, value in result.items():
        if key != "goals" and isinstance(value, Mapping):
            rows += _find_goals(value, f"{prefix}{key}: ")
    return rows


def _label(row: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    return " ".join(str(v) for k, v in row.items() if isinstance(v, str) and k not in skip)


def _ratio_rows(ratios: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from a list of comparisons such as ``{ours, peer, phase, ratio, goal, met}``."""
    rows = []
    for r in ratios:
        if not isinstance(r, Mapping) or not isinstance(r.get("ratio"), (int, float)):
            continue
        peer = r.get("peer") if r.get("peer") is not None else r.get("baseline")
        head = f"{r['phase']}: " if isinstance(r.get("phase"), str) else ""
        ours = r.get("ours") or _label(r, ("phase", "peer", "baseline", "unit", "goal"))
        goal = r.get("goal")
        rows.append({"metric": f"{head}{ours} vs {peer}" if peer else f"{head}{ours}", "value": r.get("value"),
                     "unit": r.get("unit", ""), "baseline": peer, "ratio": r["ratio"],
                     "goal": f"ratio {goal:g} (see the part)" if isinstance(goal, (int, float)) else goal, "met": r.get("met")})
    return rows


def _wide_rows(table: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per number of a wide table (one row per system or backend, one column per figure)."""
    rows = []
    for r in table:
        if not isinstance(r, Mapping):
            continue
        label = _label(r)
        for key, value in r.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"metric": f"{label}: {key}" if label else key, "value": value, "unit": "",
                             "baseline": None, "ratio": None, "goal": None, "met": None})
    return rows


def normalise_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The part's table rows with every key present (``peer`` is taken as ``baseline``).

    A ``table`` of ``{metric, value, ...}`` rows is taken as it is.  Otherwise the rows come from
    what the result has: a ``ratios`` list of comparisons, every ``goals`` mapping, and a wide
    ``table`` (one row per system, one column per figure), one row per number.
    """
    raw = result.get("table")
    if isinstance(raw, list) and raw and all(isinstance(r, Mapping) and "metric" in r for r in raw):
        rows_in: list[Any] = raw
    else:
        rows_in = _ratio_rows(result["ratios"]) if isinstance(result.get("ratios"), list) else []
        rows_in += _find_goals(result)
        rows_in += _wide_rows(raw) if isinstance(raw, list) else []
    rows = []
    for r in rows_in:
        if not isinstance(r, Mapping):
            continue
        row = {k: r.get(k) for k in ROW_KEYS}
        if row["baseline"] is None and r.get("peer") is not None:
            row["baseline"] = r.get("peer")
        rows.append(row)
    return rows


# -- running the parts -------------------------------------------------------------------------
def _child(name: str, quick: bool, out: str) -> int:
    """In the child process: import ``bench.<name>``, call ``run(quick)``, write the result as JSON."""
    module = importlib.import_module(f"bench.{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        raise RuntimeError(f"bench.{name} has no run(quick) function")
    result = run(quick=quick)
    if not isinstance(result, Mapping):
        raise TypeError(f"bench.{name}.run returned {type(result).__name__}, not a dict")
    Path(out).write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return 0


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_part(name: str, quick: bool, folder: Path, timeout: float, env: Mapping[str, str]) -> dict[str, Any]:
    """Run one part in a child process; returns {status, seconds, table, result | error, log_tail}."""
    out, log = folder / f"{name}.json", folder / f"{name}.log"
    args = [sys.executable, "-m", "bench.suite", "--child", name, str(out)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    load = loadavg()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, cwd=REPO, env=dict(env), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            error = None if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the child's own process group: its servers go with it
            proc.wait()
            code, error = -9, f"timed out after {timeout:.0f} s"
    seconds = round(time.perf_counter() - t0, 1)
    text = log.read_text(errors="replace")
    part: dict[str, Any] = {"status": "ok", "seconds": seconds, "loadavg_before": load, "loadavg_after": loadavg()}
    if error is None and out.exists():
        result = json.loads(out.read_text(encoding="utf-8"))
        part["table"] = normalise_rows(result)
        part["result"] = result
        if not part["table"]:
            part["note"] = "the part returned no table rows"
    else:
        missing = f"No module named 'bench.{name}'" in text
        part.update(status="missing" if missing else "failed", error=error or "no result written",
                    log_tail=_tail(text), table=[])
    return part


def run_suite(parts: Sequence[str], quick: bool, out_dir: Path, pg_url: str | None,
              timeout: float | None = None, echo: bool = True) -> dict[str, Any]:
    env = dict(os.environ)
    if pg_url:
        env["FIELDSYNC_BENCH_PG"] = pg_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    started = datetime.now(timezone.utc)
    desc = machine(pg_url)
    desc["loadavg_before"] = loadavg()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-suite-") as tmp:
        for name in parts:
            if echo:
                print(f"[bench] {name}{' --quick' if quick else ''} ...", flush=True)
            part = run_part(name, quick, Path(tmp), timeout or TIMEOUT_S[quick], env)
            results[name] = part
            if echo:
                met = [r["met"] for r in part["table"] if r["met"] is not None]
                print(f"[bench] {name}: {part['status']} in {part['seconds']} s"
                      + (f", goals met {sum(met)}/{len(met)}" if met else "")
                      + (f" - {part['error']}" if part.get("error") else ""), flush=True)
    desc["loadavg_after"] = loadavg()
    failed = [n for n, p in results.items() if p["status"] != "ok"]
    suite = {
        "command": "python -m bench" + (" --quick" if quick else "")
        + ("" if list(parts) == list(PARTS) else f" --only {','.join(parts)}"),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
        "quick": quick,
        "parts": list(parts),
        "failed": failed,
    }
    record = {"suite": suite, "machine": desc, "parts": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(record, ensure_ascii=False, indent=1, default=str) + "\n",
                                          encoding="utf-8")
    (out_dir / "results.md").write_text(markdown(record), encoding="utf-8")
    return record


# -- Markdown -------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def markdown(record: Mapping[str, Any]) -> str:
    s, m = record["suite"], record["machine"]
    git = m.get("git", {})
    lines = [f"# Benchmark results: `{s['command']}`", "",
             f"Started {s['started']}, {s['seconds']} s in all. Written by `python -m bench` "
             "(see docs/benchmarks.md, \"Running the suite\").", "", "## Machine", ""]
    lines += _md_table(("", ""), [
        ("CPU", m.get("cpu")), ("cores (usable / all)", f"{m.get('cores_usable')} / {m.get('cores')}"),
        ("RAM", f"{m.get('ram_gb')} GB"), ("load average before", " ".join(map(str, m.get("loadavg_before", [])))),
        ("load average after", " ".join(map(str, m.get("loadavg_after", [])))), ("platform", m.get("platform")),
        ("Python", m.get("python")), ("SQLite", m.get("sqlite")), ("PostgreSQL", m.get("postgresql")),
        ("git commit", f"{git.get('commit', '')[:12]} ({git.get('describe', '')})"),
        ("uncommitted files", ", ".join(git.get("uncommitted", [])) or "none"),
    ])
    lines += ["", "## Parts", ""]
    summary = []
    for name, p in record["parts"].items():
        met = [r["met"] for r in p["table"] if r["met"] is not None]
        summary.append((name, p["status"] if p["status"] == "ok" else f"**{p['status']}**", p["seconds"],
                        f"{sum(met)} / {len(met)}" if met else "", " ".join(map(str, p.get("loadavg_before", []))),
                        p.get("error", "")))
    lines += _md_table(("part", "status", "seconds", "goals met", "load average at start", "error"), summary)
    for name, p in record["parts"].items():
        lines += ["", f"## {name}", ""]
        if p["status"] != "ok":
            lines += [f"Not measured: {p['status']} ({p.get('error')}). Last lines of its output:", "", "```",
                      p.get("log_tail", ""), "```"]
            continue
        res = p.get("result", {})
        if res.get("command"):
            lines += [f"`{res['command']}`" + (f", {res['when']}" if res.get("when") else ""), ""]
        if not p["table"]:
            lines.append("(no table rows)")
            continue
        lines += _md_table(("metric", "value", "unit", "baseline / peer", "ratio", "goal", "met"),
                           [tuple(r[k] for k in ROW_KEYS) for r in p["table"]])
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        return _child(argv[1], "--quick" in argv[3:], argv[2])
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part's quick mode (a few minutes in all)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these parts (of {', '.join(PARTS)})")
    parser.add_argument("--out", metavar="DIR", type=Path, default=DEFAULT_OUT,
                        help="where results.json and results.md go (default docs/bench-results)")
    parser.add_argument("--pg-url", metavar="URL", default=os.environ.get("FIELDSYNC_BENCH_PG"),
                        help="PostgreSQL for the parts that use it (default $FIELDSYNC_BENCH_PG; without one, "
                             "bench.sync starts a throwaway cluster)")
    parser.add_argument("--timeout", type=float, help="seconds per part before it is stopped and recorded as "
                        "failed (default 1200 with --quick, 5400 without)")
    args = parser.parse_args(argv)
    parts = list(PARTS)
    if args.only:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    record = run_suite(parts, args.quick, args.out, args.pg_url, args.timeout)
    m = record["machine"]
    print(f"[bench] load average before {m['loadavg_before']}, after {m['loadavg_after']}; "
          f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    if record["suite"]["failed"]:
        print(f"[bench] FAILED: {', '.join(record['suite']['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
