"""Child program for test_chaos_disk.py: real I/O errors from the kernel while saving.

Usage: python io_error_child.py STORE_PATH

Opens the store (PIN in FIELDSYNC_PIN), lowers RLIMIT_FSIZE just above the store's current
file sizes and ignores SIGXFSZ, so a write that would grow a file fails with EFBIG, which SQLite
reports as "disk I/O error".  It saves households until a save fails, tries a batch while the
limit holds, lifts the limit and saves the failed record again.  One JSON line on stdout
says what happened; every id in ``saved`` was acknowledged (its put returned).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path


def record(n: int) -> dict[str, object]:
    return {"id": f"io-{n:05d}", "grid_id": "g1", "address": f"花园山{n}栋", "notes": "走访记录" * 400}


def main() -> None:
    from fieldsync import Store, StoreFullError

    path = Path(sys.argv[1])
    store = Store.open(path, os.environ["FIELDSYNC_PIN"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    sizes = [p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()]
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 128 * 1024, hard))
    saved: list[str] = []
    error = batch_error = ""
    n = 0
    while n < 10_000:
        try:
            store.put("households", record(n))
        except StoreFullError as exc:
            error = str(exc)
            break
        saved.append(f"io-{n:05d}")
        n += 1
    try:
        store.put_many("households", [record(90_000 + i) for i in range(3)])
    except StoreFullError as exc:
        batch_error = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    store.put("households", record(n))
    saved.append(f"io-{n:05d}")
    print(json.dumps({"saved": saved, "failed_at": n, "error": error, "batch_error": batch_error,
                      "integrity": store.integrity_check()}), flush=True)
    store.close()


if __name__ == "__main__":
    main()
