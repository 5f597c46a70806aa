"""A push whose answer is lost after the server committed is applied exactly once."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

from serverkit import Tap, assert_matches_server, grid_state, household, json_of, resign, rows

from fieldsync.errors import NetworkError
from fieldsync.transport import Request, Response


def _seqs(request: Request) -> list[int]:
    body = request.body
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return [c["seq"] for c in json.loads(body)["changes"]]


def _count(district, collection: str) -> int:
    return int(rows(district, "SELECT count(*) FROM records WHERE collection = ?", (collection,))[0][0])


def test_lost_push_answer_is_retried_and_applied_once(district, make_device, via):
    lost: list[dict] = []
    armed = False

    def lose_first_push_answer(request: Request, response: Response, n: int) -> None:
        if armed and request.path == "/v1/push" and not lost:
            lost.append(json_of(response))
            raise NetworkError("connection reset after the server answered")

    tap = Tap(via, after=lose_first_push_answer)
    dev = make_device("w1", tap)
    dev.sync()
    hid = dev.store.put("households", household("g1", 1))
    dev.sync()
    tap.clear()
    armed = True
    seq_before = grid_state(district, "g1")[0]

    for i in range(5):
        dev.store.put("visits", {"grid_id": "g1", "household_id": hid, "worker_id": "w1",
                                 "visited_at": f"2024-05-0{i + 1}T09:30:00+08:00", "purpose": "走访"})
    dev.store.put("households", {"id": hid, "members": 4})
    result = dev.sync()

    pushes = tap.to("/v1/push")
    assert len(pushes) == 2, "the push was retried once"
    assert pushes[0].request.body == pushes[1].request.body, "the retry resends the same changes"
    assert pushes[0].request.headers["X-Fieldsync-Nonce"] != pushes[1].request.headers["X-Fieldsync-Nonce"]
    assert lost[0]["applied"] == 6 and lost[0]["acked_seq"] == 7
    retried = pushes[1].answer()
    assert retried["applied"] == 0 and retried["acked_seq"] == 7 and retried["rejections"] == []
    assert result.pushed == 6 and dev.store.outbox_size() == 0

    assert _count(district, "visits") == 5
    assert district.get("households", hid)["members"] == 4
    assert grid_state(district, "g1")[0] == seq_before + 6, "six changes, six server_seqs, none twice"
    (me,) = [d for d in district.devices() if d["id"] == dev.device_id]
    assert me["last_seq"] == 7
    assert dev.store.count("visits") == 5
    assert_matches_server(dev.store, district)

    # A raw re-POST of the identical body, freshly signed, changes nothing and gets the same ack.
    state = grid_state(district, "g1")
    again = json_of(via.handle(resign(dev.identity, pushes[0].request)))
    assert again["acked_seq"] == 7 and again["applied"] == 0 and again["rejections"] == []
    assert grid_state(district, "g1") == state
    assert _count(district, "visits") == 5


def test_replayed_push_reports_the_same_rejections(district, make_device, inproc):
    """A retried push whose first answer carried a rejection gets that rejection again."""
    tap = Tap(inproc)
    dev = make_device("w1", tap)
    dev.store.put("households", household("g2", 1))  # not w1's grid
    dev.store.put("households", household("g1", 2))
    dev.sync()
    (push,) = tap.to("/v1/push")
    first = push.answer()
    assert [r["code"] for r in first["rejections"]] == ["out_of_scope"]
    again = json_of(inproc.handle(resign(dev.identity, push.request)))
    assert again["rejections"] == first["rejections"] and again["acked_seq"] == first["acked_seq"] == 2
    assert again["applied"] == 0
    assert len(dev.store.rejections()) == 1


def test_a_partly_acknowledged_batch_is_resent_before_the_next(district, make_device, inproc):
    """The client encodes its next batch while the server works on one; an answer that
    acknowledges only part of its batch makes the rest go again first, and a save made
    during the push is sent too."""
    pushes: list[Request] = []

    class PartialAck:
        """The real server, but its first push answer acknowledges only two of the three changes."""

        def handle(self, request: Request) -> Response:
            response = inproc.handle(request)
            if request.path != "/v1/push" or not armed:
                return response
            pushes.append(request)
            if len(pushes) == 1:
                dev.store.put("visits", visit(99))  # a save while the server works on the first batch
                answer = json_of(response)
                assert answer["acked_seq"] == _seqs(request)[-1]
                answer["acked_seq"] = _seqs(request)[1]
                response = replace(response, body=json.dumps(answer).encode())
            return response

    armed = False
    dev = make_device("w1", PartialAck(), push_batch=3)
    dev.sync()
    hid = dev.store.put("households", household("g1", 1))

    def visit(day: int) -> dict:
        return {"grid_id": "g1", "household_id": hid, "worker_id": "w1",
                "visited_at": f"2024-05-{day % 28 + 1:02d}T09:30:00+08:00", "purpose": "走访"}

    for day in range(7):
        dev.store.put("visits", visit(day))
    queued = [e.seq for e in dev.store.outbox()]
    assert len(queued) == 8
    armed = True
    result = dev.sync()

    sent = [_seqs(r) for r in pushes]
    assert sent[0] == queued[:3]
    assert sent[1][0] == queued[2], "the change left unacknowledged goes again, first"
    flat = [seq for batch in sent[1:] for seq in batch]
    assert flat == sorted(flat) and len(flat) == len(set(flat)), "later batches follow in seq order, once"
    assert set(queued[2:]) <= set(flat) and len(flat) == len(queued) - 2 + 1, "and the save made meanwhile"
    assert all(len(batch) <= 3 for batch in sent)
    assert dev.store.outbox_size() == 0 and result.pushed == 9 and result.rejected == 0
    assert _count(district, "visits") == 8 and dev.store.count("visits") == 8
    assert_matches_server(dev.store, district)
