"""Long-poll: an online tablet learns of a change in its grid within seconds."""

from __future__ import annotations

import threading
import time
from typing import Any

from serverkit import call, error_of, household, json_of

from fieldsync.sync import SyncClient
from server_stub.district import District
from server_stub.replica import Actor


def test_wait_returns_soon_after_a_change_in_the_grid(district: District, make_device: Any, live: Any) -> None:
    watcher = make_device("w1", live)
    watcher.sync()
    result: dict[str, Any] = {}

    def wait() -> None:
        start = time.monotonic()
        result["changed"] = watcher.client.wait_for_changes(timeout_s=20)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(1.5)  # the watcher is waiting now
    district.write(Actor("cc", "command"), "households", "h-wait-1", household("g1", 1))
    thread.join(25)
    assert result["changed"] == ["g1"]
    assert 1.0 < result["seconds"] < 6, result  # woken by the change, not by the timeout
    assert watcher.sync().pulled >= 1


def test_wait_times_out_empty_and_ignores_other_grids(district: District, make_device: Any, live: Any) -> None:
    watcher = make_device("w3", live)  # grid g2
    watcher.sync()
    district.write(Actor("cc", "command"), "households", "h-wait-2", household("g1", 2))  # not its grid
    start = time.monotonic()
    assert watcher.client.wait_for_changes(timeout_s=2) == []
    assert time.monotonic() - start >= 1.9
    # a forged cursor map naming g1 does not reveal g1's activity
    forged = {**watcher.store.cursors(), "g1": 0}
    answer = json_of(call(watcher.transport, watcher.identity, "/v1/wait",
                          {"schema_version": 1, "cursors": forged, "timeout_ms": 0}))
    assert answer["changed"] == []


def test_wait_rejects_bad_timeouts(make_device: Any, inproc: Any) -> None:
    device = make_device("w1")
    resp = call(inproc, device.identity, "/v1/wait", {"schema_version": 1, "timeout_ms": 10**9})
    assert resp.status == 400 and error_of(resp)["code"] == "bad_request"
    assert isinstance(device.client, SyncClient)
