"""A store restored from an older copy loses nothing (docs/protocol.md §6.4, outbox_behind).

The copy numbers its new changes from where it stopped, and the server has already applied
other changes of this device under those seqs.  Before the fix the server skipped them as
changes sent again, acknowledged them, and they were lost without a word.
"""

from __future__ import annotations

import json
import logging
import shutil

from serverkit import PIN, Tap, assert_matches_server, call, error_of, household, json_of, rows

from fieldsync import Store
from fieldsync.sync import SyncClient


def _households(district) -> set[str]:
    return {json.loads(body)["address"][0] for (body,) in rows(
        district, "SELECT body FROM records WHERE collection = 'households'")}


def _restore(dev, copy) -> None:
    """Put the copy of the store back in place, as a restore from a backup does."""
    dev.store.close()
    for suffix in ("", "-wal", "-shm"):
        target = dev.path.with_name(dev.path.name + suffix)
        target.unlink(missing_ok=True)
        source = copy.with_name(copy.name + suffix)
        if source.exists():
            shutil.copy(source, target)
    dev.store = Store.open(dev.path, PIN)
    dev.client = SyncClient(dev.store, dev.transport, sleep=lambda s: None)


def _copy(dev, tmp_path):
    copy = tmp_path / "copy.fsdb"
    dev.store.close()
    for suffix in ("", "-wal", "-shm"):
        source = dev.path.with_name(dev.path.name + suffix)
        if source.exists():
            shutil.copy(source, copy.with_name(copy.name + suffix))
    dev.store = Store.open(dev.path, PIN)
    dev.client = SyncClient(dev.store, dev.transport, sleep=lambda s: None)
    return copy


def test_new_changes_of_a_restored_copy_reuse_no_seq_and_are_all_applied(district, make_device, inproc, tmp_path,
                                                                          caplog):
    tap = Tap(inproc)
    dev = make_device("w1", tap)
    dev.sync()
    for n in range(3):
        dev.store.put("households", household("g1", n))
    dev.sync()
    copy = _copy(dev, tmp_path)
    for n in range(3, 8):  # pushed under seqs the copy does not know
        dev.store.put("households", household("g1", n))
    dev.sync()

    _restore(dev, copy)
    dev.client = SyncClient(dev.store, tap, sleep=lambda s: None)
    for n in range(100, 108):  # the copy numbers these from where it stopped
        dev.store.put("households", household("g1", n))
    tap.clear()
    with caplog.at_level(logging.WARNING, logger="fieldsync.sync"):
        result = dev.sync()

    pushes = tap.to("/v1/push")
    assert pushes[0].response.status == 409 and error_of(pushes[0].response)["code"] == "outbox_behind"
    (me,) = [d for d in district.devices() if d["id"] == dev.device_id]
    assert error_of(pushes[0].response)["last_seq"] == 8 and me["last_seq"] == 16
    assert [p.response.status for p in pushes[1:]] == [200]
    assert result.pushed == 8 and dev.store.outbox_size() == 0
    assert "8 pending changes renumbered after seq 8" in caplog.text
    expected = {household("g1", n)["address"] for n in [*range(8), *range(100, 108)]}
    assert _households(district) == expected, "nothing the copy saved was lost"
    assert_matches_server(dev.store, district)

    # The next change is numbered after everything the server has seen of this device.
    dev.store.put("households", household("g1", 200))
    assert [e.seq for e in dev.store.outbox()] == [17]
    assert dev.sync().pushed == 1 and household("g1", 200)["address"] in _households(district)


def test_a_copy_that_confirms_less_than_the_device_did_is_caught_even_with_no_seq_reused(
        district, make_device, inproc, tmp_path):
    dev = make_device("w1")
    dev.sync()
    dev.store.put("households", household("g1", 1))
    copy = _copy(dev, tmp_path)  # one change pending, seq 1
    dev.sync()
    dev.store.put("households", household("g1", 2))
    dev.sync()  # confirms seq 1 to the server
    dev.store.put("households", household("g1", 3))
    dev.sync()  # confirms seq 2; the server's push log forgets seqs 1 and 2

    _restore(dev, copy)
    dev.store.put("households", household("g1", 4))  # seq 2 on the copy: the server applied another change there
    assert dev.store.push_confirmed() == 0
    result = dev.sync()
    assert result.pushed == 2 and dev.store.outbox_size() == 0
    assert _households(district) == {household("g1", n)["address"] for n in (1, 2, 3, 4)}
    assert_matches_server(dev.store, district)


def test_outbox_behind_changes_nothing_on_the_server_and_names_its_last_seq(district, make_device, inproc):
    dev = make_device("w1")
    dev.sync()
    for n in range(3):
        dev.store.put("households", household("g1", n))
    dev.sync()
    dev.store.put("households", household("g1", 9))
    dev.sync()
    (seq_before,) = rows(district, "SELECT last_seq FROM devices WHERE id = ?", (dev.device_id,))[0]
    state = rows(district, "SELECT collection, id, server_seq, digest FROM records ORDER BY collection, id")
    # The last push confirmed seq 3 (the answer it carried was to seq 4); the server still holds
    # which write seq 4 was, so a different change under seq 4 is caught as well.
    change = {"seq": 4, "collection": "households", "id": "h-other", "grid": "g1",
              "fields": {"grid_id": ["g1", "0190000000aa-000000-n1", None]}}
    for confirmed, why in ((0, "confirmed seq 3 before"), (3, "seq 4 is not the change")):
        body = {"schema_version": 1, "confirmed_seq": confirmed, "changes": [change]}
        resp = call(inproc, dev.identity, "/v1/push", body)
        err = error_of(resp)
        assert resp.status == 409 and err["code"] == "outbox_behind" and why in err["message"]
        assert err["last_seq"] == seq_before == 4
    assert rows(district, "SELECT collection, id, server_seq, digest FROM records ORDER BY collection, id") == state
    # The same change sent again (a lost answer) is still a plain duplicate.
    again = json_of(call(inproc, dev.identity, "/v1/push", {"schema_version": 1, "confirmed_seq": 3, "changes": []}))
    assert again["acked_seq"] == 4 and again["applied"] == 0


def test_push_log_keeps_only_changes_the_device_has_not_confirmed(district, make_device):
    dev = make_device("w1")
    dev.sync()
    for round_ in range(4):
        for n in range(5):
            dev.store.put("households", household("g1", 10 * round_ + n))
        dev.sync()
    logged = rows(district, "SELECT first_seq, last_seq, writes FROM push_log WHERE device_id = ?", (dev.device_id,))
    (confirmed,) = rows(district, "SELECT confirmed FROM push_marks WHERE device_id = ?", (dev.device_id,))[0]
    assert confirmed == 15 and [r[:2] for r in logged] == [(16, 20)], "one unconfirmed push, no more"
    writes = json.loads(logged[0][2])
    assert [seq for seq, _ in writes] == [16, 17, 18, 19, 20]
    assert all(w.startswith("households/") and "@" in w for _, w in writes)
    assert dev.store.push_confirmed() == 20


def test_a_push_without_confirmed_seq_works_as_before_and_keeps_no_log(district, make_device, inproc):
    dev = make_device("w1")
    change = {"seq": 1, "collection": "households", "id": "h-old-client", "grid": "g1",
              "fields": {"grid_id": ["g1", "0190000000aa-000000-n1", None],
                         "address": ["花园山1栋", "0190000000aa-000000-n1", None]}}
    answer = json_of(call(inproc, dev.identity, "/v1/push", {"schema_version": 1, "changes": [change]}))
    assert answer["acked_seq"] == 1 and answer["applied"] == 1
    assert rows(district, "SELECT count(*) FROM push_log")[0][0] == 0
    for bad in (-1, "3", True, 2**63, 1.5):
        resp = call(inproc, dev.identity, "/v1/push", {"schema_version": 1, "confirmed_seq": bad, "changes": []})
        assert resp.status == 400 and "confirmed_seq" in error_of(resp)["message"]
