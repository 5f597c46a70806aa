"""Crash safety across sync (DESIGN §7): SIGKILL of a tablet during a save, a push and a pull,
and SIGKILL of the district server during a push, on SQLite and on PostgreSQL.

Tablet: a child process (crash_device_child.py) saves and syncs in a loop against a real
uvicorn server; the parent kills it at a random moment of the phase it aims at (after some
saves, just after a push began, in the middle of a paged pull).  After every kill the store must
open with ``PRAGMA integrity_check`` = ok and hold every acknowledged save (a save cut short is
all there or not at all); a clean sync must then need no repair and leave the tablet equal to
the server.  At the end the push ledger proves each change was applied exactly once.

Server: ``uvicorn server_stub.asgi:app`` runs as a child process behind the TCP proxy; when the
proxy forwards a push it sometimes arms a timer that SIGKILLs the server a few milliseconds
later (before, during or after the push's transaction), then the server is started again.
Tablets keep saving and syncing through all of it.  Afterwards the database passes its integrity
check, every grid counter equals its number of records (no change applied twice, none lost),
and every tablet equals the server.

The seed is printed; replay with FIELDSYNC_CHAOS_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from chaos_faults import PushLedger
from chaos_proxy import FaultProxy
from chaos_servers import ServerProcess, ThreadServer
from serverkit import PIN, assert_matches_server, household, rows

from fieldsync import KdfParams, Store
from fieldsync.errors import SyncError
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import RequestsTransport
from server_stub.app import create_app
from server_stub.district import District
from server_stub.replica import Actor

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
CHILD = HERE / "crash_device_child.py"
DEVICE_RUNS = 12
SERVER_ROUNDS = 14


# -- the tablet is killed ---------------------------------------------------------------

class Acks:
    """What the child acknowledged: the latest saved value of every field, and its last intent."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], Any] = {}
        self.created: set[str] = set()

    def read(self, lines: list[str]) -> dict[str, Any] | None:
        """Fold one run's output in; returns the save that was cut short (or None)."""
        intent: tuple[str, dict[str, Any]] | None = None
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "intend":
                rid, _, values = rest.partition(" ")
                intent = (rid, json.loads(values))
            elif kind == "saved":
                assert intent is not None and intent[0] == rest, f"'saved {rest}' without its intent"
                rid, values = intent
                self.created.add(rid)
                for f, v in values.items():
                    self.latest[(rid, f)] = v
                intent = None
        return {"id": intent[0], **intent[1]} if intent else None


def _run_child(store_path: Path, url: str, seed: int, aim: str, rng: random.Random) -> tuple[list[str], str]:
    """Start the child, SIGKILL it at a moment of phase ``aim``; its whole-line output."""
    proc = subprocess.Popen([sys.executable, str(CHILD), str(store_path), url, str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FIELDSYNC_PIN": PIN})
    assert proc.stdout is not None
    seen: list[str] = []
    hit = "never"
    try:
        deadline = time.monotonic() + 60
        saves_first = rng.randint(1, 20)
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if aim == "save" and line.startswith("saved") and sum(s.startswith("saved") for s in seen) >= saves_first:
                time.sleep(rng.uniform(0, 0.004))
                hit = "save"
                break
            if aim == "push" and line.startswith("phase pushing"):
                time.sleep(rng.uniform(0, 0.03))
                hit = "push"
                break
            if aim == "pull" and line.startswith("phase pulling"):
                time.sleep(rng.uniform(0, 0.15))
                hit = "pull"
                break
        proc.send_signal(signal.SIGKILL)
        # Read on through the same buffered pipe (communicate() would skip what readline buffered).
        out = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the child ended on its own ({proc.returncode}): {err[-3000:]}"
    tail = out.split("\n")
    lines = seen + tail[:-1]  # only whole lines count (the last piece has no newline yet)
    return lines, hit


def test_tablet_killed_during_save_push_and_pull(backend: str, district: District, tmp_path: Path,
                                                 seed: int) -> None:
    rng = random.Random(seed)
    ledger = PushLedger(create_app(district))
    path = tmp_path / "tablet.fsdb"
    acks = Acks()
    hits: Counter[str] = Counter()
    with ThreadServer(ledger) as server:
        store = Store.create(path, PIN, kdf=KdfParams(n=2**10))
        identity = enroll(store, server.url, district.issue_code("w1")[0], transport=RequestsTransport(server.url))
        store.close()
        for run in range(DEVICE_RUNS):
            aim = ("save", "push", "pull")[run % 3]
            if aim == "pull":  # something to pull, in several pages
                district.write_many(Actor("cc", "command"), "households",
                                    [{"id": f"h-cc-{run}-{n}", **household("g1", n)} for n in range(40)])
            lines, hit = _run_child(path, server.url, seed * 100 + run, aim, rng)
            hits[hit] += 1
            cut = acks.read(lines)

            store = Store.open(path, PIN)
            try:
                assert store.integrity_check() == "ok", f"seed {seed} run {run}"
                for (rid, f), v in acks.latest.items():
                    got = store.get("households", rid).get(f)
                    if cut is not None and cut["id"] == rid and f in cut and got == cut[f]:
                        continue  # the cut-short save committed before the kill
                    assert got == v, f"seed {seed} run {run}: acknowledged {rid}.{f} = {v!r}, found {got!r}"
                if cut is not None:
                    try:
                        now = store.get("households", cut["id"])
                    except Exception:  # noqa: BLE001 - a new record that never committed
                        now = None
                    if now is not None:
                        new = [f for f in cut if f != "id" and now.get(f) == cut[f]]
                        changed = [f for f in cut if f != "id"]
                        assert not new or sorted(new) == sorted(changed), \
                            f"seed {seed} run {run}: save {cut['id']} half written: {new} of {changed}"
                        if new:  # it committed just before the kill: it is the state from now on
                            acks.created.add(cut["id"])
                            acks.latest.update({(cut["id"], f): cut[f] for f in changed})
                result = SyncClient(store, RequestsTransport(server.url), retries=0).sync()
                assert result.repaired == 0, f"seed {seed} run {run}: a kill ({hit}) left the store needing repair"
                assert store.outbox_size() == 0
                assert_matches_server(store, district)
            finally:
                store.close()
    print(f"seed {seed}: kills landed {dict(hits)}; {len(acks.created)} records, {len(acks.latest)} fields acked")
    assert hits["push"] >= 2 and hits["pull"] >= 2 and hits["save"] >= 2, f"seed {seed}: kills missed: {hits}"

    (me,) = [d for d in district.devices() if d["id"] == identity.device_id]
    rejected = rows(district, "SELECT count(*) FROM rejections WHERE device_id = ?", (identity.device_id,))[0][0]
    assert rejected == 0
    assert ledger.applied_by(identity.device_id) == me["last_seq"], \
        f"seed {seed}: {ledger.applied_by(identity.device_id)} changes applied for seqs 1..{me['last_seq']}"
    for (rid, f), v in acks.latest.items():
        server_value = (district.get("households", rid) or {}).get(f)
        assert server_value == v, f"seed {seed}: {rid}.{f} on the server is {server_value!r}, acknowledged {v!r}"


# -- the server is killed -----------------------------------------------------------------

class Killer:
    """Arms a SIGKILL of the server a few milliseconds after the proxy forwards a push."""

    def __init__(self, server: ServerProcess, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.armed = True
        self.lock = threading.Lock()
        self.timers: list[threading.Timer] = []

    def on_forward(self, path: str) -> None:
        with self.lock:
            if not self.armed or path != "/v1/push" or self.rng.random() < 0.4:
                return
            self.armed = False  # one kill at a time; re-armed after the restart
            timer = threading.Timer(self.rng.uniform(0, 0.12), self.server.kill)
            self.timers.append(timer)
        timer.start()

    def settle(self) -> None:
        """Wait until no kill is pending."""
        with self.lock:
            timers, self.timers = self.timers, []
        for timer in timers:
            timer.join()


def test_server_killed_during_push(backend: str, db_url: str, district: District, tmp_path: Path,
                                   seed: int) -> None:
    rng = random.Random(seed)
    server = ServerProcess(db_url, tmp_path / "server.log")
    server.start()
    killer = Killer(server, rng)
    stats: Counter[str] = Counter()
    proxy = FaultProxy(("127.0.0.1", server.port), rng, {}, stats, on_forward=killer.on_forward)
    tablets: list[tuple[Store, SyncClient, str]] = []
    try:
        for i, worker in enumerate(("w1", "w2", "w3", "w4")):
            store = Store.create(tmp_path / f"t{i}.fsdb", PIN, kdf=KdfParams(n=2**10))
            identity = enroll(store, server.url, district.issue_code(worker)[0],
                              transport=RequestsTransport(server.url))
            client = SyncClient(store, RequestsTransport(proxy.url, timeout=20), retries=0, push_batch=200)
            tablets.append((store, client, identity.device_id))
        created: set[str] = set()
        failed = 0
        for rnd in range(SERVER_ROUNDS):
            for i, (store, _, _) in enumerate(tablets):
                grid = store.grids()[0] if store.grids() else ("g1", "g1", "g2", "g3")[i]
                batch = [{"id": f"s{i}-{rnd}-{n}", **household(grid, n)} for n in range(rng.randint(20, 160))]
                store.put_many("households", batch)
                created.update(r["id"] for r in batch)
            threads = [threading.Thread(target=lambda c=client: _try_sync(c)) for _, client, _ in tablets]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            failed += sum(1 for _, c, _ in tablets if c.status.last_error)
            killer.settle()
            if not server.running():
                server.start()
            killer.armed = True
        killer.armed = False
        killer.settle()
        if not server.running():
            server.start()
        for _ in range(2):
            for _, client, _ in tablets:
                client.sync()
    finally:
        proxy.close()
        server.stop()
    print(f"seed {seed}: {server.kills} server kills, {failed} failed syncs, proxy {dict(stats)}")
    assert server.kills >= 3, f"seed {seed}: only {server.kills} kills"
    assert stats["upstream_lost:/v1/push"] >= 1, f"seed {seed}: no kill landed while a push was in the server"

    if backend == "sqlite":
        path = db_url[len("sqlite:///"):]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    on_server = {rid for (rid,) in rows(district, "SELECT id FROM records WHERE collection = 'households'")}
    assert created <= on_server, f"seed {seed}: saves lost: {sorted(created - on_server)[:5]}"
    assert on_server - created == set(), "records nobody created"
    for grid, seq in rows(district, "SELECT grid, seq FROM grid_state"):
        (count,) = rows(district, "SELECT count(*) FROM records WHERE grid = ?", (grid,))[0]
        assert int(seq) == int(count), f"seed {seed}: grid {grid} counter {seq} for {count} records"
    last = {d["id"]: d["last_seq"] for d in district.devices()}
    for i, (store, _, device_id) in enumerate(tablets):
        assert store.outbox_size() == 0
        assert store.integrity_check() == "ok"
        assert_matches_server(store, district)
        mine = rows(district, "SELECT count(*) FROM records WHERE collection = 'households' AND id LIKE ?",
                    (f"s{i}-%",))[0][0]
        assert last[device_id] == mine, f"seed {seed}: device last_seq {last[device_id]} for {mine} saves"


def _try_sync(client: SyncClient) -> None:
    try:
        client.sync()
    except SyncError:
        pass
