"""An interrupted pull resumes from its stored cursor; divergence is repaired bucket by bucket."""

from __future__ import annotations

import json

import pytest
from serverkit import Tap, assert_matches_server, grid_state, household, rows

from fieldsync.errors import NetworkError, SyncError
from fieldsync.protocol import N_BUCKETS, bucket_of, record_digest
from fieldsync.transport import Request
from server_stub.replica import Actor, load_state

N_HOUSEHOLDS = 300
PAGE = 50


@pytest.fixture
def big_grid(district) -> list[str]:
    """300 households in g1, written by the command centre (so grid g1 holds 301 changes)."""
    ids = [f"h{n:04d}" for n in range(N_HOUSEHOLDS)]
    district.write_many(Actor("cc", "command"), "households",
                        [{"id": hid, **household("g1", n)} for n, hid in enumerate(ids)])
    return ids


def test_interrupted_pull_resumes_from_the_stored_cursor(district, make_device, via, big_grid):
    def cut_third_page(request: Request, n: int) -> None:
        if request.path == "/v1/pull" and n == 3:
            raise NetworkError("the connection dropped")

    tap = Tap(via, before=cut_third_page)
    dev = make_device("w1", tap, page_limit=PAGE, retries=0)
    with pytest.raises(SyncError):
        dev.sync()
    pulls = tap.to("/v1/pull")
    assert len(pulls) == 3 and pulls[2].response is None
    second = pulls[1].answer()
    assert second["more"] is True and len(second["changes"]) == PAGE
    stored = dev.store.cursors()
    assert stored == second["cursors"] and stored["g1"] > 0
    assert dev.store.count("households") + dev.store.count("grids") == 2 * PAGE
    assert dev.client.status.online is False and dev.client.status.last_error

    tap.before = None
    tap.clear()
    result = dev.sync()
    pulls = tap.to("/v1/pull")
    assert pulls[0].payload()["cursors"]["g1"] == stored["g1"], "the next sync starts where the last one stopped"
    remaining = N_HOUSEHOLDS + 1 - 2 * PAGE
    assert result.pulled == remaining
    assert len(pulls) == -(-remaining // PAGE)
    assert result.repaired == 0 and not tap.to("/v1/repair")
    assert dev.store.count("households") == N_HOUSEHOLDS
    assert dev.store.cursors()["g1"] == grid_state(district, "g1")[0]
    assert_matches_server(dev.store, district)


def test_device_corruption_is_repaired_by_diverged_buckets_only(district, make_device, inproc, big_grid):
    tap = Tap(inproc)
    dev = make_device("w1", tap)
    dev.sync()
    assert dev.store.count("households") == N_HOUSEHOLDS

    lost = big_grid[:4]
    with dev.store.atomic():
        for hid in lost:
            dev.store._conn.execute("DELETE FROM records WHERE collection = 'households' AND id = ?", (hid,))
    diverged = {bucket_of("households", hid) for hid in lost}
    # The grid moves on meanwhile, so the next page carries a new checksum to compare with.
    district.write(Actor("cc", "command"), "households", big_grid[-1], {"notes": "指挥中心备注"})
    # A record sharing a bucket with a lost one, edited by the worker while the repair runs.
    edited = next(h for h in big_grid[4:] if bucket_of("households", h) in diverged)

    def edit_before_repair(request: Request, n: int) -> None:
        if request.path == "/v1/buckets":
            dev.store.put("households", {"id": edited, "notes": "修复期间的修改"})

    tap.before = edit_before_repair
    tap.clear()
    result = dev.sync()
    assert result.pulled == 1 and result.repaired > 0
    (repair,) = tap.to("/v1/repair")
    asked = set(repair.payload()["buckets"])
    assert asked == diverged and len(asked) < N_BUCKETS
    assert {r["id"] for r in repair.answer()["records"]} >= set(lost)
    assert len(repair.answer()["records"]) < N_HOUSEHOLDS / 4
    for hid in lost:
        assert dev.store.get("households", hid) == district.get("households", hid)
    assert dev.store.get("households", edited)["notes"] == "修复期间的修改", "unsynced work survives the repair"
    assert dev.store.outbox_size() == 1

    tap.before = None
    dev.sync()
    assert district.get("households", edited)["notes"] == "修复期间的修改"
    assert_matches_server(dev.store, district)


def test_server_side_divergence_is_repaired(district, make_device, inproc, big_grid):
    """A server record changed under the protocol (say, restored from a backup) reaches the device."""
    tap = Tap(inproc)
    dev = make_device("w1", tap)
    dev.sync()
    target = big_grid[7]
    with district.db.transaction() as tx:
        body, digest = tx.one("SELECT body, digest FROM records WHERE collection = 'households' AND id = ?", (target,))
        state = {k: w.to_wire() for k, w in load_state(body).items()}
        state["room"] = ["909", state["address"][1], None]
        new_digest = record_digest("households", target, {k: w[1] for k, w in state.items()})
        tx.execute("UPDATE records SET body = ?, digest = ? WHERE collection = 'households' AND id = ?",
                   (json.dumps(state, ensure_ascii=False), new_digest, target))
        (checksum,) = tx.one("SELECT checksum FROM grid_state WHERE grid = 'g1'")
        tx.execute("UPDATE grid_state SET checksum = ? WHERE grid = 'g1'", (int(checksum) ^ int(digest) ^ new_digest,))
    tap.clear()
    result = dev.sync()
    assert result.repaired >= 1
    (repair,) = tap.to("/v1/repair")
    assert repair.payload()["buckets"] == [bucket_of("households", target)]
    assert dev.store.get("households", target)["room"] == "909"
    assert_matches_server(dev.store, district)
    assert rows(district, "SELECT count(*) FROM records WHERE collection = 'households'")[0][0] == N_HOUSEHOLDS
