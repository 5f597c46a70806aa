"""The long chaos campaign (``scripts/chaos``): many seeds, both backends, in parallel.

    scripts/chaos --seeds 1000 --backend both            # 1000 seeds on SQLite and on PostgreSQL
    scripts/chaos --seeds 200 --transport proxy          # all through the TCP fault proxy
    scripts/chaos --seed 1234 --backend sqlite           # replay one run, round by round

Each seed is one whole run (chaos_campaign.run_campaign).  ``--transport mixed`` (the default)
sends every ``--proxy-every``-th seed through the TCP fault proxy and a real uvicorn, the rest
through the in-process fault-injecting transport.  The summary counts faults by kind,
operations, invariant checks, and lists every failing seed with its replay command; ``--json``
writes it all to a file.  The exit status is 1 when any run violated an invariant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "server", HERE.parents[1]):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def _scratch() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def play(seed: int, backend: str, transport: str, rounds: int, verbose: bool = False,
         profile: str | None = None, threads: bool | None = None) -> dict[str, Any]:
    """One run in a fresh scratch folder; its report as JSON (a crash of the harness is a failure)."""
    from chaos_campaign import run_campaign

    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(dir=_scratch(), prefix=f"chaos-{seed}-") as d:
            report = run_campaign(seed, backend, Path(d), transport=transport, rounds=rounds, profile=profile,
                                  concurrent=threads, log=print if verbose else None)
        out = report.to_json()
        out["summary"] = report.summary()
        out["replay"] = report.replay()
        return out
    except Exception:  # noqa: BLE001 - reported as a failed run
        return {"seed": seed, "backend": backend, "transport": transport, "rounds": rounds,
                "violations": [f"[harness] {traceback.format_exc()}"], "seconds": time.monotonic() - started,
                "summary": f"chaos seed {seed} [{backend}/{transport}]: HARNESS ERROR",
                "replay": f"scripts/chaos --seed {seed} --backend {backend} --transport {transport}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds per backend (default 100)")
    p.add_argument("--start", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--seed", type=int, help="replay this one seed (verbose)")
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--transport", choices=("inproc", "proxy", "mixed"), default="mixed")
    p.add_argument("--proxy-every", type=int, default=10, help="with --transport mixed: every N-th seed (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per run (default 10)")
    p.add_argument("--profile", choices=("calm", "rough", "storm"),
                   help="fault rates (default: drawn from each seed)")
    p.add_argument("--threads", action=argparse.BooleanOptionalAction, default=None,
                   help="sync all tablets at once in threads (default: drawn from each seed)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel runs (default: CPUs)")
    p.add_argument("--json", type=Path, help="write every report and the summary to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's full summary")
    args = p.parse_args(argv)

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "postgresql" in backends and not os.environ.get("FIELDSYNC_TEST_PG"):
        p.error("PostgreSQL needs FIELDSYNC_TEST_PG (scripts/chaos starts a throwaway cluster when it is unset)")

    def transport_of(seed: int) -> str:
        if args.transport != "mixed":
            return str(args.transport)
        return "proxy" if seed % args.proxy_every == 0 else "inproc"

    if args.seed is not None:
        results = []
        for backend in backends:
            r = play(args.seed, backend, transport_of(args.seed), args.rounds, verbose=True, profile=args.profile,
                     threads=args.threads)
            print(r["summary"])
            results.append(r)
        return 0 if all(not r["violations"] for r in results) else 1

    tasks = [(seed, backend, transport_of(seed)) for backend in backends
             for seed in range(args.start, args.start + args.seeds)]
    print(f"chaos campaign: {len(tasks)} runs ({args.seeds} seeds from {args.start} x {', '.join(backends)}), "
          f"transport {args.transport}, {args.rounds} rounds each, {args.jobs} at a time")
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(play, seed, backend, transport, args.rounds, False, args.profile, args.threads)
                   for seed, backend, transport in tasks]
        for n, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results.append(r)
            if r["violations"] or args.verbose:
                print(r["summary"], flush=True)
            if n % 50 == 0 or n == len(tasks):
                bad = sum(1 for x in results if x["violations"])
                print(f"  ... {n}/{len(tasks)} runs, {bad} failing, {time.monotonic() - started:.0f} s", flush=True)
    summary = summarise(results, time.monotonic() - started)
    print(summary["text"])
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": results}, ensure_ascii=False, indent=1))
        print(f"reports written to {args.json}")
    return 1 if summary["failing"] else 0


def summarise(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    syncs: Counter[str] = Counter()
    observations: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    by: Counter[str] = Counter()
    failing = []
    for r in results:
        by[f"{r['backend']}/{r['transport']}"] += 1
        for name, into in (("faults", faults), ("ops", ops), ("checks", checks), ("syncs", syncs),
                           ("observations", observations)):
            into.update(r.get(name, {}))
        if r["violations"]:
            failing.append(r)
            for v in r["violations"]:
                kinds[v.split("]", 1)[0].lstrip("[")] += 1
    lines = [f"{len(results)} runs in {seconds:.0f} s: {dict(sorted(by.items()))}",
             f"failing runs: {len(failing)}",
             f"invariant checks: {sum(checks.values())} {dict(sorted(checks.items()))}",
             f"faults injected: {sum(v for k, v in faults.items() if k not in ('requests', 'tcp_requests'))} "
             f"{dict(sorted(faults.items()))}",
             f"operations: {sum(ops.values())} {dict(sorted(ops.items()))}",
             f"sync outcomes: {dict(sorted(syncs.items()))}",
             f"observations: {dict(sorted(observations.items()))}"]
    if kinds:
        lines.append(f"violations by invariant: {dict(sorted(kinds.items()))}")
    for r in sorted(failing, key=lambda x: (x["backend"], x["seed"]))[:60]:
        first = r["violations"][0].splitlines()[0][:220]
        lines.append(f"  FAIL seed {r['seed']} {r['backend']}/{r['transport']}: {first}")
        lines.append(f"       replay: {r['replay']}")
    return {"text": "\n".join(lines), "runs": len(results), "failing": len(failing), "faults": dict(faults),
            "ops": dict(ops), "checks": dict(checks), "syncs": dict(syncs), "observations": dict(observations),
            "violations_by_invariant": dict(kinds), "by": dict(by),
            "failing_seeds": [(r["seed"], r["backend"], r["transport"]) for r in failing], "seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
