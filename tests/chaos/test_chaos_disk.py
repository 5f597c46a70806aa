"""Disk full and I/O errors on the device: a clear error, nothing half-written, retry works later.

The store lives on a real 2 MiB tmpfs (``mount -t tmpfs -o size=2m``); the device fills it with
household saves until SQLite reports the disk full.  Where mounting is impossible (not root, no
tmpfs) the test falls back to a connection that answers every write with SQLite's disk-full
error, and says so in its output (docs/reliability.md records which one CI ran).  Real I/O
errors come from the kernel: a child process lowers RLIMIT_FSIZE, so growing a file fails with
EFBIG ("disk I/O error").
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from chaos_faults import LoopTransport
from serverkit import PIN, assert_matches_server, household

from fieldsync import KdfParams, Store
from fieldsync.errors import RecordNotFound, StoreFullError
from fieldsync.sync import SyncClient, enroll
from server_stub.district import District
from server_stub.replica import Actor

HERE = Path(__file__).resolve().parent


@pytest.fixture
def backend() -> str:
    """A device-side failure: the server's backend does not matter here."""
    return "sqlite"


class SmallDisk:
    """A 2 MiB tmpfs at ``path`` that can be grown; or, if mounting is impossible, a marker that
    the test must inject disk-full errors instead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.real = done.returncode == 0
        self.why = done.stderr.strip()
        if self.real and os.environ.get("FIELDSYNC_CHAOS_NO_MOUNT"):
            # Exercise the fallback on a machine where mounting works.
            subprocess.run(["umount", str(path)], check=True)
            self.real, self.why = False, "FIELDSYNC_CHAOS_NO_MOUNT is set"

    def grow(self) -> None:
        if self.real:
            subprocess.run(["mount", "-o", "remount,size=32m", str(self.path)], check=True)

    def unmount(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small")
    print("disk full: real 2 MiB tmpfs" if disk.real else f"disk full: INJECTED errors (mount failed: {disk.why})")
    yield disk
    disk.unmount()


class _FullConnection:
    """Fallback only: a sqlite3 connection whose writes fail with SQLite's disk-full error once
    ``budget`` write statements went through (the disk "fills up")."""

    def __init__(self, conn: sqlite3.Connection, budget: int = 120) -> None:
        self._conn = conn
        self.budget = budget

    def _guard(self, sql: str) -> None:
        if sql.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            self.budget -= 1
            if self.budget < 0:
                raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> Any:
        self._guard(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._guard(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _fill(store: Store, disk: SmallDisk) -> tuple[list[str], StoreFullError]:
    """Save households until the disk is full; the ids acknowledged and the error."""
    if not disk.real:
        wrapped = _FullConnection(store._conn)
        store._conn = wrapped  # type: ignore[assignment]
        store.db.conn = wrapped  # type: ignore[assignment]
    saved: list[str] = []
    for n in range(100_000):
        before = store.outbox_size()
        rid = f"full-{n:05d}"
        try:
            store.put("households", {"id": rid, **household("g1", n), "notes": "走访记录" * 450})
        except StoreFullError as exc:
            assert store.outbox_size() == before, "a failed save left an outbox entry"
            with pytest.raises(RecordNotFound):
                store.get("households", rid)
            return saved, exc
        saved.append(rid)
    raise AssertionError("the disk never filled up")


def _unfill(store: Store, disk: SmallDisk) -> None:
    disk.grow()
    if not disk.real:
        wrapped = store._conn
        assert isinstance(wrapped, _FullConnection)
        store._conn = wrapped._conn
        store.db.conn = wrapped._conn


def test_disk_full_is_a_clear_error_and_sync_works_when_space_is_back(
        small_disk: SmallDisk, district: District, inproc: LoopTransport) -> None:
    store = Store.create(small_disk.path / "tablet.fsdb", PIN, kdf=KdfParams(n=2**10))
    enroll(store, "http://in-process", district.issue_code("w1")[0], transport=inproc)
    client = SyncClient(store, inproc, retries=0, page_limit=10)
    store.put("households", household("g1", 1))
    client.sync()

    saved, error = _fill(store, small_disk)
    assert len(saved) > 3, "the disk filled before anything could be saved"
    assert "nothing was saved" in str(error) and "full" in str(error), f"unclear error: {error}"
    assert store.integrity_check() == "ok"

    with pytest.raises(StoreFullError):  # a batch is all or nothing
        store.put_many("households", [{"id": f"batch-{i}", **household("g1", 900 + i)} for i in range(3)])
    assert not [r for r in store.list("households") if r["id"].startswith("batch-")], "half a batch was saved"

    # The server has news; the device cannot store it (or its own acknowledgements) right now.
    district.write_many(Actor("cc", "command"), "households",
                        [{"id": f"h-cc-{n}", **household("g1", 500 + n)} for n in range(40)])
    cursors = store.cursors()
    with pytest.raises(StoreFullError):
        client.sync()
    assert store.integrity_check() == "ok"
    assert store.cursors() == cursors, "a page was half applied"
    assert all(store.get("households", rid)["id"] == rid for rid in saved)

    _unfill(store, small_disk)
    client.sync()
    assert store.outbox_size() == 0
    assert_matches_server(store, district)
    for rid in saved:
        assert district.get("households", rid) is not None, f"acknowledged save {rid} never reached the server"
    (me,) = [d for d in district.devices() if d["worker_id"] == "w1"]
    assert me["last_seq"] == len(saved) + 1, "each save was applied exactly once"
    store.close()
    reopened = Store.open(small_disk.path / "tablet.fsdb", PIN)
    assert reopened.integrity_check() == "ok"
    reopened.close()


def test_io_errors_from_the_kernel_are_clear_and_lose_nothing(
        tmp_path: Path, district: District, inproc: LoopTransport) -> None:
    path = tmp_path / "tablet.fsdb"
    store = Store.create(path, PIN, kdf=KdfParams(n=2**10))
    enroll(store, "http://in-process", district.issue_code("w1")[0], transport=inproc)
    SyncClient(store, inproc, retries=0).sync()
    store.close()

    done = subprocess.run([sys.executable, str(HERE / "io_error_child.py"), str(path)],
                          env={**os.environ, "FIELDSYNC_PIN": PIN}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print({k: v for k, v in result.items() if k != "saved"}, len(result["saved"]), "saved")
    assert "nothing was saved" in result["error"] and "I/O error" in result["error"], result["error"]
    assert "nothing was saved" in result["batch_error"], "a batch was saved past the file size limit"
    assert result["integrity"] == "ok"

    store = Store.open(path, PIN)
    assert store.integrity_check() == "ok"
    ids = {r["id"] for r in store.list("households")}
    assert set(result["saved"]) == ids, "acknowledged saves lost, or an unacknowledged one appeared"
    assert store.outbox_size() == len(ids)
    SyncClient(store, inproc, retries=0).sync()
    assert store.outbox_size() == 0
    assert_matches_server(store, district)
