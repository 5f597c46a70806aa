"""Kinto peer client for :mod:`bench.peers`, run by the Kinto virtualenv's interpreter (it imports kinto-http).

``python bench/peers_kinto_client.py SERVER_URL DATA_JSON`` reads one command per line on stdin and
answers each with one JSON line on stdout (``seconds`` and ``client_cpu_s`` measured here):

- ``setup``: create the bucket and one collection per record kind (not timed by the benchmark);
- ``push``: device A sends every record through kinto-http's batch (``client.batch()``, which the
  library splits into requests of the server's ``batch_max_requests``), one ``create_record`` each;
- ``pull``: device B, a fresh client, lists every collection (``get_records``, all pages);
- ``change [K]``: nothing to do locally (kinto-http keeps no local copy), answered at once; it
  notes round K: in round K > 1 every changed string gets `` #K`` appended;
- ``incr``: A sends the changes in one batch (``patch_record`` each), then B fetches what changed
  since the newest ``last_modified`` it saw (``get_records(_since=...)``), as kinto.js does;
- ``quit``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

from kinto_http import Client

BUCKET = "fieldsync-bench"
AUTH = ("bench", "bench-password")


def main() -> None:
    url, data_file = sys.argv[1], sys.argv[2]
    with open(data_file, encoding="utf-8") as fh:
        data = json.load(fh)
    collections = sorted({d["collection"] for d in data["docs"]})
    device_a = Client(server_url=url, auth=AUTH, bucket=BUCKET)
    device_b = Client(server_url=url, auth=AUTH, bucket=BUCKET)
    since: dict[str, int] = {}
    state = {"round": 1}

    def round_value(v: Any) -> Any:
        return f"{v} #{state['round']}" if isinstance(v, str) and state["round"] > 1 else v

    def setup() -> dict[str, Any]:
        device_a.create_bucket(id=BUCKET, if_not_exists=True)
        for c in collections:
            device_a.create_collection(id=c, bucket=BUCKET, if_not_exists=True)
        return {"records": 0}

    def push() -> dict[str, Any]:
        with device_a.batch() as batch:
            for d in data["docs"]:
                batch.create_record(id=d["id"], data=d["record"], collection=d["collection"])
        results = batch.results()
        return {"records": len(results)}

    def pull() -> dict[str, Any]:
        n = 0
        for c in collections:
            records = device_b.get_records(collection=c)
            n += len(records)
            since[c] = max((r["last_modified"] for r in records), default=0)
        return {"records": n}

    def change(arg: str | None = None) -> dict[str, Any]:
        state["round"] = int(arg or 1)
        return {"records": len(data["changes"])}

    def incr() -> dict[str, Any]:
        t0 = time.perf_counter()
        with device_a.batch() as batch:
            for c in data["changes"]:
                batch.patch_record(id=c["id"], data={f: round_value(v) for f, v in c["fields"].items()},
                                   collection=c["collection"])
        pushed = len(batch.results())
        push_s = time.perf_counter() - t0
        n = 0
        for c in collections:
            records = device_b.get_records(collection=c, _since=since[c])
            n += len(records)
            since[c] = max([since[c], *(r["last_modified"] for r in records)])
        return {"records": n, "pushed": pushed, "push_seconds": push_s}

    commands: dict[str, Callable[..., dict[str, Any]]] = {
        "setup": setup, "push": push, "pull": pull, "change": change, "incr": incr}
    print(json.dumps({"ok": True, "cmd": "ready"}), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "quit":
            break
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            out = commands[cmd](*args)
            out = {"ok": True, "cmd": cmd, "seconds": time.perf_counter() - t0,
                   "client_cpu_s": time.process_time() - cpu0, **out}
        except Exception as exc:  # reported to the benchmark, which stops
            out = {"ok": False, "cmd": cmd, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
