"""Child program for tests/test_crash.py: writes records until it is killed.

Usage: python tests/crash_writer.py STORE_PATH RUN [BATCH]

Opens the existing store (PIN in FIELDSYNC_PIN), prints ``ready``, then
saves records for ever.  Without BATCH each record is one ``put`` (its own
transaction) and its id is printed once ``put`` has returned; with BATCH,
``put_many`` saves BATCH records at once and the batch id is printed once it
returned.  Every printed line is flushed at once: a printed id is an
acknowledged write.  Record content is derived from the id
(:func:`record_for`), so the parent can check it.
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import Any

COLLECTION = "households"


def record_for(rid: str) -> dict[str, Any]:
    """The exact record the writer saves under ``rid``."""
    n = zlib.crc32(rid.encode())
    return {
        "id": rid,
        "grid_id": f"wc-lds-hys-{n % 3:02d}",
        "address": f"武昌区粮道街花园山社区{n % 40 + 1}栋{n % 6 + 1}单元{n % 30 + 101}",
        "head_name": "张王李赵刘陈杨黄"[n % 8] + "桂兰建国秀英明华"[n % 7],
        "phone": f"139{n % 10**8:08d}",
        "members": n % 7 + 1,
        "tags": [["低保"], ["独居老人"], ["残疾", "失业"], []][n % 4],
        "notes": "走访记录" * (n % 60),
    }


def batch_ids(batch_id: str, size: int) -> list[str]:
    return [f"{batch_id}-{j}" for j in range(size)]


def main() -> None:
    from fieldsync import Store

    path, run = sys.argv[1], int(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    store = Store.open(path, os.environ["FIELDSYNC_PIN"])
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for i in range(1_000_000):
        if batch:
            bid = f"b{run:03d}-{i:05d}"
            store.put_many(COLLECTION, [record_for(rid) for rid in batch_ids(bid, batch)])
            out.write(bid + "\n")
        else:
            rid = f"c{run:03d}-{i:05d}"
            store.put(COLLECTION, record_for(rid))
            out.write(rid + "\n")
        out.flush()
    store.close()


if __name__ == "__main__":
    main()
