"""Child program for test_chaos_crash.py: a tablet that saves and syncs until it is killed.

Usage: python crash_device_child.py STORE_PATH SERVER_URL SEED

Opens the enrolled store (PIN in FIELDSYNC_PIN) and loops for ever: a few saves (new
households, or edits of ones it made before), then a sync with small pages and small push
batches.  Every line on stdout is flushed at once, so the parent knows what was acknowledged
when it sends SIGKILL::

    ready
    intend <id> <json of the values>     before a save
    saved <id>                           the save returned: acknowledged
    phase <pushing|pulling|repairing>    the sync entered that phase
    synced | sync-failed <error>
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    from fieldsync import Store
    from fieldsync.errors import SyncError
    from fieldsync.sync import SyncClient, SyncStatus
    from fieldsync.transport import RequestsTransport

    path, url, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    store = Store.open(path, os.environ["FIELDSYNC_PIN"])
    last_phase = ["idle"]

    def on_status(status: SyncStatus) -> None:
        if status.phase != last_phase[0]:
            last_phase[0] = status.phase
            if status.phase != "idle":
                say(f"phase {status.phase}")

    client = SyncClient(store, RequestsTransport(url), retries=0, page_limit=7, push_batch=5,
                        on_status=on_status)
    say("ready")
    n = 0
    while True:
        mine = [r["id"] for r in store.list("households") if r["id"].startswith(f"k{seed}-")]
        for _ in range(rng.randint(1, 25)):
            n += 1
            values: dict[str, Any]
            if mine and rng.random() < 0.4:
                rid = rng.choice(mine)
                values = {"notes": f"第{n}次修改 {seed}", "members": n}
            else:
                rid = f"k{seed}-{n}"
                values = {"grid_id": "g1", "address": f"花园山{seed}-{n}号", "notes": "走访" * rng.randint(1, 300),
                          "members": n}
            say(f"intend {rid} {json.dumps(values, ensure_ascii=False)}")
            store.put("households", {"id": rid, **values})
            say(f"saved {rid}")
        try:
            client.sync()
            say("synced")
        except SyncError as exc:
            say(f"sync-failed {type(exc).__name__}")


if __name__ == "__main__":
    main()
