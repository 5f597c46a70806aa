"""A walk through the encrypted store with the ``fieldsync`` CLI (``scripts/demo``).

Each step prints the command it runs and its output, so a reader sees what a
grid worker's tablet keeps and how it is found again.  The store is created
under ``demo-data/`` (removed first); the demo PIN is set in the environment.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_PIN = "2580"


def _run(args: list[str], env: dict[str, str]) -> str:
    shown = " ".join(shlex.quote(a) for a in ["fieldsync", *args])
    print(f"\n$ {shown}")
    proc = subprocess.run([sys.executable, "-m", "fieldsync.cli", *args], env=env, text=True, capture_output=True)
    out = (proc.stdout + proc.stderr).rstrip()
    print(out)
    if proc.returncode != 0 and not args[0].startswith("search"):
        print(f"(exit status {proc.returncode})")
    return proc.stdout.strip()


def main() -> None:
    root = Path("demo-data")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    store = str(root / "tablet.fsdb")
    env = {**os.environ, "FIELDSYNC_PIN": DEMO_PIN}
    print("fieldsync demo: a grid worker's encrypted tablet store (PIN for this demo: 2580)")
    _run(["init", "--store", store], env)
    household = {
        "grid_id": "wc-lds-hys-01", "address": "武昌区粮道街花园山社区3栋2单元301",
        "building": "3", "unit": "2", "room": "301", "head_name": "张桂兰",
        "phone": "138 0713 2468", "members": 3, "tags": ["低保", "独居老人"],
    }
    hid = _run(["put", "--store", store, "households", json.dumps(household, ensure_ascii=False)], env)
    resident = {
        "grid_id": "wc-lds-hys-01", "household_id": hid, "name": "张桂兰",
        "id_number": "420106195203150020", "birth_date": "1952-03-15", "gender": "女", "tags": ["独居老人"],
    }
    _run(["put", "--store", store, "residents", json.dumps(resident, ensure_ascii=False)], env)
    visit = {
        "grid_id": "wc-lds-hys-01", "household_id": hid, "worker_id": "w-lijing",
        "visited_at": "2026-11-28T09:30:00+08:00", "purpose": "独居老人探访",
        "notes": "血压偏高,已提醒按时服药", "needs": ["送药上门"], "follow_up": "2026-12-05",
    }
    _run(["put", "--store", store, "visits", json.dumps(visit, ensure_ascii=False)], env)
    print("\n# Find by ID number or phone through the blind index (values are normalised):")
    _run(["search", "--store", store, "residents", "id_number", "4201 0619 5203 1500 20"], env)
    _run(["search", "--store", store, "households", "phone", "+86 13807132468"], env)
    print("\n# A record that breaks the schema is refused with the field and the problem:")
    _run(["put", "--store", store, "residents", json.dumps({**resident, "id_number": "420106195203150029"}, ensure_ascii=False)], env)
    _run(["status", "--store", store], env)
    raw = Path(store).read_bytes() + (Path(store + "-wal").read_bytes() if Path(store + "-wal").exists() else b"")
    leaked = [s for s in ("张桂兰", "420106195203150020", "13807132468") if s.encode() in raw]
    print(f"\n# Plaintext search of the store file and its WAL for the name, ID number and phone: "
          f"{'FOUND ' + ', '.join(leaked) if leaked else 'none found'}")


if __name__ == "__main__":
    main()
