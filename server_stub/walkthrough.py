"""The main demo (``scripts/demo``): a district server and a grid worker's tablet, on SQLite.

Every step prints the command it runs and what it answered, so a reader sees
the whole loop: the command centre sets up a district and issues an
enrollment code; the tablet creates its encrypted store, enrolls, pulls its
grid, finds a resident by ID number, records a visit offline and syncs it
back.  Everything lives under ``demo-data/`` (recreated on every run).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DEMO_PIN = "2580"
ROOT = Path("demo-data")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], env: dict[str, str], show: str | None = None, check: bool = True) -> str:
    print(f"\n$ {show or ' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    exe = {"fieldsync": "fieldsync.cli", "fieldsync-server": "server_stub.cli"}[cmd[0]]
    proc = subprocess.run([sys.executable, "-m", exe, *cmd[1:]], env=env, text=True, capture_output=True)
    print((proc.stdout + proc.stderr).rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed with exit status {proc.returncode}")
    return proc.stdout.strip()


def _wait_for(url: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server stopped during start-up; see the log above")
        try:
            with urllib.request.urlopen(url + "/v1/hello", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer at {url} within {timeout:.0f} s")


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir()
    db = f"sqlite:///{ROOT / 'district.db'}"
    store = str(ROOT / "lijing-tablet.fsdb")
    env = {**os.environ, "FIELDSYNC_PIN": DEMO_PIN}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    print("fieldsync demo — 武昌区 grid work, offline-first.  Tablet PIN for this demo: 2580")
    print("\n# 1. The command centre creates the demo district (SQLite file, zero set-up).")
    _run(["fieldsync-server", "init-demo", "--db", db], env)
    print(f"\n# 2. The district server starts on {url}.")
    server = subprocess.Popen([sys.executable, "-m", "server_stub.cli", "serve", "--db", db, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(url, server)
        print("   server is up")
        print("\n# 3. A one-time enrollment code for grid worker 李璟 (w-lijing).")
        code = _run(["fieldsync-server", "enroll-code", "--db", db, "--worker", "w-lijing"], env).splitlines()[0]
        print("\n# 4. The tablet creates its encrypted store, enrolls and pulls its grid.")
        _run(["fieldsync", "init", "--store", store], env)
        _run(["fieldsync", "enroll", "--store", store, "--server", url, "--code", code, "--name", "李璟的平板"], env)
        _run(["fieldsync", "sync", "--store", store], env)
        status = json.loads(_run(["fieldsync", "status", "--store", store, "--json"], env))
        grid = status["grids"][0]
        print("\n# 5. Find a resident by ID number through the blind index (nothing is decrypted to search).")
        from .demo import WORKERS, build_demo  # noqa: F401 - same data as init-demo
        from .demo_data import households, residents

        gi = next(i for wid, _, i in WORKERS if wid == "w-lijing")
        hh = households(300, grid, 2019 + gi)
        person = residents(hh, seed=2019 + gi)[0]
        found = json.loads(_run(["fieldsync", "search", "--store", store, "residents", "id_number",
                                 person["id_number"].lower()], env))
        household_id = found[0]["household_id"] if found else hh[0]["id"]
        print("\n# 6. Offline, 李璟 records a visit (the outbox holds it until the next sync).")
        visit = {"grid_id": grid, "household_id": household_id, "worker_id": "w-lijing",
                 "visited_at": "2026-11-28T10:00:00+08:00", "purpose": "社保年审",
                 "notes": "已协助老人完成社保年审", "follow_up": "2026-12-28"}
        _run(["fieldsync", "put", "--store", store, "visits", json.dumps(visit, ensure_ascii=False)], env,
             show=f"fieldsync put --store {store} visits '{{...社保年审...}}'")
        _run(["fieldsync", "status", "--store", store], env)
        print("\n# 7. Back online: sync sends the visit; the server acknowledges it exactly once.")
        _run(["fieldsync", "sync", "--store", store], env)
        _run(["fieldsync", "status", "--store", store], env)
        _run(["fieldsync-server", "devices", "--db", db], env)
        raw = b"".join(p.read_bytes() for p in ROOT.glob("lijing-tablet.fsdb*") if p.is_file())
        leaked = [v for v in (person["name"], person["id_number"]) if v.encode() in raw]
        print(f"\n# 8. The tablet's files (database and WAL) searched for that resident's name and ID number: "
              f"{'FOUND ' + ', '.join(leaked) if leaked else 'not found — everything personal is encrypted'}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"\nDone.  Files are in {ROOT}/; run the server yourself with:\n"
          f"  .venv/bin/fieldsync-server serve --db {db} --port 8700")


if __name__ == "__main__":
    main()
