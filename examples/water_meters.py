"""Water-meter readings, offline and synced: fieldsync embedded in another app.

A water utility's meter readers walk their routes with tablets that are often
offline in basements.  This program shows everything such an app does with
fieldsync, end to end, against a REAL district server on 127.0.0.1:

1. define its own record kind (``water_meters``) and a registry holding it;
2. give the server the same registry and start it (uvicorn, in a thread);
3. add a meter reader, put a grid (a reading route) in their scope, issue an
   enrollment code;
4. tablet A: create an encrypted store, save readings (and a meter photo)
   while offline, enroll with the one-time code, sync;
5. tablet B (a colleague on the same route): enroll, sync, find a reading by
   meter number through the encrypted search index;
6. tablet B saves a reading for a route it is not assigned: the server
   refuses it as a rejection, which the app shows to the reader.

Run from the repository root::

    .venv/bin/python examples/water_meters.py              # PIN 2580, production KDF cost
    .venv/bin/python examples/water_meters.py --fast-kdf   # cheap KDF (tests)

Exit status 0 on success; otherwise one ``error:`` line and status 1.
Only public API is used: ``fieldsync``, ``fieldsync.sync``,
``server_stub.district``, ``server_stub.app`` and ``server_stub.replica.Actor``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from fieldsync import (
    Field,
    FieldsyncError,
    KdfParams,
    Kind,
    Registry,
    Store,
    default_registry,
)
from fieldsync.sync import SyncClient, SyncProgress, SyncResult, SyncStatus, enroll
from server_stub.app import create_app
from server_stub.district import District
from server_stub.replica import Actor

ROUTE = "wm-hys-01"  # the grid: one meter reader's route in 花园山社区
OTHER_ROUTE = "wm-lds-07"  # a route nobody here is assigned to
METER = "WM-2024-0042"
READING = 1234.5

# -- 1. the app's own record kind ----------------------------------------------------


def _meter_no_check(value: object) -> str | None:
    """Meter numbers look like WM-2024-0042 (the check never repeats the value)."""
    text = str(value).strip().upper()
    parts = text.split("-")
    if len(parts) == 3 and parts[0] == "WM" and parts[1].isdigit() and parts[2].isdigit():
        return None
    return "must look like WM-2024-0042"


WATER_METERS = Kind(
    "water_meters",
    {
        "grid_id": Field(required=True, description="The reading route (grid) the meter is on."),
        "address": Field(max_length=200, description="Where the meter is."),
        "meter_no": Field(required=True, search="text", max_length=32, check=_meter_no_check,
                          description="Meter number, searchable through the blind index."),
        "reading": Field("number", description="Counter reading in cubic metres."),
        "read_at": Field("datetime", description="When it was read, ISO 8601 with offset."),
        "photo": Field("tags", description="Content hashes of photos in store.attachments."),
    },
    description="One reading of one water meter.",
)


def build_registry() -> Registry:
    """The grid-work kinds plus ours: the SAME registry goes to every store and to the server."""
    registry = default_registry()
    registry.register(WATER_METERS)
    return registry


# -- 2. a real server in a background thread ----------------------------------------


class BackgroundServer:
    """uvicorn serving ``app`` on 127.0.0.1 at a free port, in a daemon thread."""

    def __init__(self, app: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port, already ours
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="district-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the district server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


# -- helpers for readable output -------------------------------------------------------


def step(text: str) -> None:
    print(f"\n== {text}")


def say(text: str) -> None:
    print(f"   {text}")


def show_progress(p: SyncProgress) -> None:
    say(f"... {p.phase:<9} {p.records:>3} records, {p.bytes_sent} B sent, {p.bytes_received} B received")


def describe(result: SyncResult) -> str:
    return (f"sent {result.pushed}, rejected {result.rejected}, received {result.pulled}, "
            f"removed {result.removed}, repaired {result.repaired} "
            f"({result.requests} request{'s' if result.requests != 1 else ''}, {result.seconds:.2f} s); "
            f"routes {', '.join(result.grids)}")


# -- the walk-through ----------------------------------------------------------------


def run(workdir: Path, pin: str, kdf: KdfParams) -> None:
    registry = build_registry()

    step("District server: same registry as the tablets, SQLite file, real HTTP on 127.0.0.1")
    district = District(f"sqlite:///{workdir / 'district.db'}", registry=registry)
    server = BackgroundServer(create_app(district))
    server.start()
    stores: list[Store] = []
    try:
        say(f"listening on {server.url}")

        step("Command centre: two meter readers on route " + ROUTE)
        district.add_worker("mr-zhao", "赵师傅")
        district.add_worker("mr-qian", "钱师傅")
        for reader in ("mr-zhao", "mr-qian"):
            district.assign(reader, ROUTE)
        district.write_many(Actor("admin", "command"), "grids",
                            [{"id": ROUTE, "name": "花园山社区 抄表1线", "community": "花园山社区"}])
        code_a, _ = district.issue_code("mr-zhao")
        code_b, _ = district.issue_code("mr-qian")
        say(f"enrollment code for 赵师傅's tablet: {code_a} (one use, 15 minutes)")

        step("Tablet A (offline): create the encrypted store and save readings")
        store_a = Store.create(workdir / "tablet-a.fsdb", pin, registry=registry, kdf=kdf)
        stores.append(store_a)
        photo = store_a.attachments.add(io.BytesIO(b"\xff\xd8\xff\xe0 a meter photo " * 512))
        say(f"photo kept encrypted on tablet A, content hash {photo.hash[:12]}..., {photo.size} bytes")
        readings = [
            {"grid_id": ROUTE, "address": "花园山3栋 地下室", "meter_no": METER, "reading": READING,
             "read_at": "2026-11-28T09:30:00+08:00", "photo": [photo.hash]},
            {"grid_id": ROUTE, "address": "花园山4栋 1单元", "meter_no": "WM-2024-0043", "reading": 877.0,
             "read_at": "2026-11-28T09:41:00+08:00"},
        ]
        with store_a.atomic():  # both readings, their clocks and outbox entries: one transaction
            ids = [store_a.put("water_meters", r) for r in readings]
        say(f"saved {len(ids)} readings; waiting to be sent: {store_a.outbox_size()}")
        try:
            store_a.put("water_meters", {"grid_id": ROUTE, "meter_no": "42"})
        except FieldsyncError as exc:  # ValidationError names the kind, field and problem
            say(f"a bad meter number is refused on the tablet: {exc}")

        step("Tablet A: enroll with the code, then sync")
        identity = enroll(store_a, server.url, code_a, device_name="赵师傅的平板")
        say(f"enrolled as device {identity.device_id} for {identity.worker_id}")
        statuses: list[SyncStatus] = []
        client_a = SyncClient(store_a, on_status=statuses.append)  # a UI would observe these
        result = client_a.sync(progress=show_progress)
        say(describe(result))
        say(f"status for the UI: phase={client_a.status.phase} pending={client_a.status.pending} "
            f"online={client_a.status.online} ({len(statuses)} status updates)")
        on_server = district.get("water_meters", ids[0])
        if on_server is None or on_server["reading"] != READING:
            raise RuntimeError("the server does not have tablet A's reading")
        say(f"the server has {METER}: reading {on_server['reading']}")

        step("Tablet B (钱师傅): new store, enroll, sync")
        store_b = Store.create(workdir / "tablet-b.fsdb", pin, registry=registry, kdf=kdf)
        stores.append(store_b)
        enroll(store_b, server.url, code_b, device_name="钱师傅的平板")
        client_b = SyncClient(store_b)
        say(describe(client_b.sync(progress=show_progress)))

        step(f"Tablet B: find meter {METER.lower()!r} (search is normalised: case and spaces do not matter)")
        found = store_b.find("water_meters", "meter_no", f"  {METER.lower()} ")
        if len(found) != 1:
            raise RuntimeError(f"expected one reading of {METER} on tablet B, found {len(found)}")
        hit = found[0]
        print(f"   FOUND on tablet B: meter {hit['meter_no']} at {hit['address']}: "
              f"reading {hit['reading']} m3, read at {hit['read_at']}")
        if hit["reading"] != READING:
            raise RuntimeError(f"tablet B has reading {hit['reading']}, expected {READING}")
        has_photo = store_b.attachments.exists(hit["photo"][0])
        say(f"the photo hash came along; the photo file itself is {'here' if has_photo else 'only on tablet A'} "
            "(attachments do not travel in protocol v1)")

        step(f"Tablet B: a reading for route {OTHER_ROUTE}, which 钱师傅 is not assigned")
        store_b.put("water_meters", {"grid_id": OTHER_ROUTE, "meter_no": "WM-2024-9001", "reading": 5.0})
        result = client_b.sync()
        say(describe(result))
        rejections = store_b.rejections()
        if result.rejected != 1 or len(rejections) != 1 or rejections[0].code != "out_of_scope":
            raise RuntimeError(f"expected one out_of_scope rejection, got {[r.code for r in rejections]}")
        rej = rejections[0]
        say(f"rejected by the server: {rej.code} on {rej.collection}.{rej.field}: {rej.message}")
        say(f"the refused values are kept for the reader to fix: meter {rej.values['meter_no']}; "
            f"outbox now {store_b.outbox_size()}, readings on tablet B {store_b.count('water_meters')}")
        store_b.dismiss_rejection(rej.seq)
    finally:
        for store in stores:
            store.close()
        server.stop()
        district.close()

    step("Done: readings saved offline, synced once, found on a second tablet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fieldsync embedded in a water-meter reading app")
    parser.add_argument("--pin", default=os.environ.get("WATER_METERS_PIN", "2580"),
                        help="PIN for the tablet stores (default: $WATER_METERS_PIN or 2580)")
    parser.add_argument("--fast-kdf", action="store_true",
                        help="cheap PIN key derivation (scrypt N=2^14) for tests; never in production")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the stores and server database here (default: a temporary folder)")
    args = parser.parse_args(argv)
    kdf = KdfParams(n=2**14) if args.fast_kdf else KdfParams()
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            run(args.workdir, args.pin, kdf)
        else:
            with tempfile.TemporaryDirectory(prefix="water-meters-") as tmp:
                run(Path(tmp), args.pin, kdf)
    except Exception as exc:  # noqa: BLE001 - the program's contract: one line, non-zero status
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
