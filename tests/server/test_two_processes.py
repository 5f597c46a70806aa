"""Two server processes on one PostgreSQL: concurrent devices, no gaps, no duplicates, convergence."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import pytest
from serverkit import Tap, assert_matches_server, household, rows

from fieldsync.sync import SyncResult
from fieldsync.transport import Request, RequestsTransport, Response
from server_stub.replica import Actor

pytestmark = pytest.mark.postgres

ROUNDS = 12
SHARED = {"g1": "h-shared-g1", "g2": "h-shared-g2"}


@pytest.fixture
def backend() -> str:
    """Several server processes need a shared database server: PostgreSQL only."""
    return "postgresql"


@dataclass
class Switch:
    """Sends each request to one of several servers; ``use`` picks which."""

    servers: list[RequestsTransport]
    use: int = 0
    served: list[int] = field(default_factory=lambda: [0, 0])

    def handle(self, request: Request) -> Response:
        self.served[self.use] += 1
        return self.servers[self.use].handle(request)


def test_devices_on_two_server_processes_converge(district, make_device, server_factory):
    urls = [server_factory(), server_factory()]
    district.add_worker("w4", "赵六")
    district.assign("w4", "g1")
    district.assign("w4", "g2")
    district.write_many(Actor("cc", "command"), "households",
                        [{"id": hid, **household(grid, 0)} for grid, hid in SHARED.items()])

    devices = []
    for i, worker in enumerate(("w1", "w2", "w3", "w4")):
        switch = Switch([RequestsTransport(u) for u in urls], use=i % 2)
        dev = make_device(worker, Tap(switch))
        dev.sync()
        devices.append((dev, switch))

    created: dict[str, set[tuple[str, str]]] = {d.worker: set() for d, _ in devices}
    results: dict[str, list[SyncResult]] = {d.worker: [] for d, _ in devices}
    errors: list[BaseException] = []
    start = threading.Barrier(len(devices))

    def work(index: int) -> None:
        dev, switch = devices[index]
        try:
            for rnd in range(ROUNDS):
                grids = dev.store.grids()
                grid = grids[rnd % len(grids)]
                start.wait(timeout=60)
                edits = []
                for n in range(2):
                    edits.append(("households", household(grid, 100 * index + 10 * rnd + n)))
                edits.append(("visits", {"grid_id": grid, "household_id": SHARED[grid], "worker_id": dev.worker,
                                         "visited_at": "2024-05-01T09:30:00+08:00", "purpose": f"第{rnd}次走访"}))
                shared = ("households", {"id": SHARED[grid], "notes": f"{dev.worker} 第{rnd}轮"})
                # Half the devices touch the shared record first, half last: both lock orders.
                edits = [shared, *edits] if (index + rnd) % 2 else [*edits, shared]
                for collection, values in edits:
                    rid = dev.store.put(collection, values)
                    if "id" not in values:
                        created[dev.worker].add((collection, rid))
                switch.use = (index + rnd) % 2
                results[dev.worker].append(dev.sync())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a sync hung"
    assert not errors, errors

    for final in range(2):
        for i, (dev, switch) in enumerate(devices):
            switch.use = (i + final) % 2
            results[dev.worker].append(dev.sync())

    # Both processes served, and none of them failed under the concurrency.
    for dev, switch in devices:
        assert all(switch.served), f"{dev.worker} talked to one server only"
        failures = [e.response.status for e in dev.transport.exchanges if e.response and e.response.status >= 500]
        assert failures == [], f"{dev.worker} got server errors {failures}"
        assert dev.store.rejections() == []
        assert dev.store.outbox_size() == 0

    # No duplicates: the server holds exactly what the devices created (plus the setup).
    everything = set().union(*created.values())
    assert len(everything) == len(devices) * ROUNDS * 3
    server_ids = {(c, r) for c, r in rows(district, "SELECT collection, id FROM records")
                  if c in ("households", "visits")}
    assert server_ids == everything | {("households", h) for h in SHARED.values()}

    # Every server_seq a device ever received names one record only, and the counters agree with the rows.
    owner: dict[tuple[str, int], tuple[str, str]] = {}
    for dev, _ in devices:
        for exchange in dev.transport.to("/v1/pull"):
            for change in json.loads(exchange.response.body)["changes"]:
                key = (change["grid"], change["server_seq"])
                assert owner.setdefault(key, (change["collection"], change["id"])) == (change["collection"], change["id"]), \
                    f"server_seq {key} was given to two records"
    for grid in ("g1", "g2"):
        (top,) = rows(district, "SELECT seq FROM grid_state WHERE grid = ?", (grid,))[0]
        (highest,) = rows(district, "SELECT max(s) FROM (SELECT server_seq AS s FROM records WHERE grid = ? "
                                    "UNION ALL SELECT server_seq FROM departures WHERE grid = ?) AS x", (grid, grid))[0]
        assert int(top) == int(highest)
        seqs = [int(s) for (s,) in rows(district, "SELECT server_seq FROM records WHERE grid = ?", (grid,))]
        assert len(seqs) == len(set(seqs)), "two records share a server_seq"

    # Every device ends equal to the server (values and checksums), and the shared records agree.
    for dev, _ in devices:
        assert_matches_server(dev.store, district)
    for grid, hid in SHARED.items():
        holders = [d for d, _ in devices if grid in d.store.grids()]
        assert {d.store.get("households", hid)["notes"] for d in holders} == {district.get("households", hid)["notes"]}
    # A gap-free cursor never needs the checksum repair to catch up.
    repaired = {w: sum(r.repaired for r in rs) for w, rs in results.items()}
    assert not any(repaired.values()), f"repairs were needed: {repaired}"
