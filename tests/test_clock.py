"""Hybrid logical clock: monotonic whatever the wall clock does, drift-guarded, text-ordered."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.clock import DEFAULT_MAX_DRIFT_MS, HybridClock, Stamp
from fieldsync.errors import ClockDriftError, FieldsyncError

MAX_COUNTER = 16**6 - 1
MAX_WALL = 16**12 - 1
T0 = 1_717_000_000_000  # 2024-05-29, a realistic epoch-ms reading


class ManualWall:
    """A wall clock the test moves by hand (milliseconds since the epoch)."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


node_ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-", min_size=1, max_size=64
)
stamps = st.builds(
    Stamp,
    wall_ms=st.integers(min_value=0, max_value=MAX_WALL),
    counter=st.integers(min_value=0, max_value=MAX_COUNTER),
    node=node_ids,
)


# --- monotonicity ---------------------------------------------------------


def test_now_uses_wall_time_when_it_moves_forward() -> None:
    wall = ManualWall()
    clock = HybridClock("tablet-7", wall=wall)
    first = clock.now()
    assert first == Stamp(T0, 0, "tablet-7")
    wall.ms += 25
    assert clock.now() == Stamp(T0 + 25, 0, "tablet-7")


def test_monotonic_when_wall_clock_jumps_backwards() -> None:
    wall = ManualWall()
    clock = HybridClock("tablet-7", wall=wall)
    before = [clock.now() for _ in range(3)]
    wall.ms -= 3_600_000  # the tablet's clock is set back an hour
    after = [clock.now() for _ in range(3)]
    issued = before + after
    assert all(x < y for x, y in zip(issued, issued[1:]))
    # The clock keeps the highest wall time seen and counts on from it.
    assert after[0].wall_ms == T0
    assert after[-1] == Stamp(T0, 5, "tablet-7")
    # Once the wall catches up again, the counter resets.
    wall.ms = T0 + 1
    assert clock.now() == Stamp(T0 + 1, 0, "tablet-7")


@settings(max_examples=200, print_blob=True)
@given(st.lists(st.integers(min_value=-10_000, max_value=10_000), min_size=1, max_size=60))
def test_monotonic_under_arbitrary_wall_jumps(jumps: list[int]) -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall)
    previous = clock.now()
    for jump in jumps:
        wall.ms += jump
        current = clock.now()
        assert current > previous
        assert current.encode() > previous.encode()
        assert current.wall_ms >= wall.ms
        assert current.counter <= MAX_COUNTER
        previous = current


def test_strictly_increasing_at_frozen_wall_time() -> None:
    clock = HybridClock("n1", wall=ManualWall())
    issued = [clock.now() for _ in range(5_000)]
    assert all(x < y for x, y in zip(issued, issued[1:]))
    assert len({s.encode() for s in issued}) == 5_000
    assert issued[-1] == Stamp(T0, 4_999, "n1")
    assert clock.last == issued[-1]


def test_strictly_increasing_across_threads() -> None:
    clock = HybridClock("n1", wall=ManualWall())
    results: list[list[Stamp]] = [[] for _ in range(4)]

    def work(out: list[Stamp]) -> None:
        for _ in range(1_000):
            out.append(clock.now())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [s for out in results for s in out]
    assert len(set(everything)) == 4_000
    for out in results:
        assert all(x < y for x, y in zip(out, out[1:]))


def test_counter_overflow_rolls_into_next_millisecond() -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall, last=Stamp(T0, MAX_COUNTER - 1, "n1"))
    assert clock.now() == Stamp(T0, MAX_COUNTER, "n1")
    rolled = clock.now()
    assert rolled == Stamp(T0 + 1, 0, "n1")
    assert len(rolled.encode()) == len(Stamp(T0, MAX_COUNTER, "n1").encode())
    # Still frozen wall: the clock keeps counting in the borrowed millisecond.
    assert clock.now() == Stamp(T0 + 1, 1, "n1")


def test_observe_of_counter_exhausted_stamp_rolls_over() -> None:
    clock = HybridClock("n1", wall=ManualWall())
    remote = Stamp(T0, MAX_COUNTER, "n2")
    clock.observe(remote)
    nxt = clock.now()
    assert nxt > remote
    assert nxt.counter <= MAX_COUNTER
    assert nxt.wall_ms == T0 + 1


# --- observe --------------------------------------------------------------


def test_observe_remote_ahead_makes_later_stamps_greater() -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall)
    clock.now()
    remote = Stamp(T0 + 60_000, 42, "n2")  # a minute ahead, within drift
    kept = clock.observe(remote)
    assert kept == remote
    later = clock.now()
    assert later > remote
    assert later.wall_ms == remote.wall_ms  # the local wall has not caught up


def test_observe_same_wall_higher_node_still_orders_after() -> None:
    # Same wall and counter, and the remote node sorts after ours: only the
    # counter can put our next stamp after it.
    clock = HybridClock("aaa", wall=ManualWall())
    mine = clock.now()
    remote = Stamp(mine.wall_ms, mine.counter, "zzz")
    assert remote > mine
    clock.observe(remote)
    assert clock.last >= remote
    assert clock.now() > remote


def test_observe_remote_behind_keeps_local_clock_ahead() -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall)
    mine = clock.now()
    remote = Stamp(T0 - 10_000, 3, "n2")
    assert clock.observe(remote) == remote
    nxt = clock.now()
    assert nxt > mine > remote


def test_observe_when_wall_is_ahead_of_both() -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall)
    clock.now()
    wall.ms += 1000
    remote = Stamp(T0 + 500, 9, "n2")
    clock.observe(remote)
    assert clock.last.wall_ms == T0 + 1000
    assert clock.now() > remote


@settings(max_examples=200, print_blob=True)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.integers(min_value=-5_000, max_value=5_000)),
            st.tuples(st.just("now"), st.just(0)),
            st.tuples(
                st.just("observe"),
                st.integers(min_value=-DEFAULT_MAX_DRIFT_MS * 2, max_value=DEFAULT_MAX_DRIFT_MS),
            ),
        ),
        max_size=60,
    ),
    st.integers(min_value=0, max_value=MAX_COUNTER),
)
def test_every_stamp_issued_follows_everything_seen(ops: list[tuple[str, int]], remote_counter: int) -> None:
    wall = ManualWall()
    clock = HybridClock("local", wall=wall)
    highest: Stamp | None = None
    for op, arg in ops:
        if op == "tick":
            wall.ms += arg
        elif op == "now":
            s = clock.now()
            if highest is not None:
                assert s > highest
            assert s.wall_ms >= wall.ms
            highest = s
        else:
            remote = Stamp(wall.ms + arg, remote_counter, "remote")
            kept = clock.observe(remote)
            assert kept == remote  # within drift: nothing is clamped
            assert clock.last >= kept  # ``last`` covers what was observed, so it can be persisted
            highest = max(highest, kept) if highest is not None else kept
    s = clock.now()
    if highest is not None:
        assert s > highest


# --- drift ---------------------------------------------------------------


def test_remote_leading_by_more_than_max_drift_raises() -> None:
    wall = ManualWall()
    clock = HybridClock("n1", wall=wall, max_drift_ms=60_000)
    before = clock.now()
    year_fast = Stamp(T0 + 365 * 24 * 3_600_000, 0, "bad-tablet")
    with pytest.raises(ClockDriftError) as info:
        clock.observe(year_fast)
    assert isinstance(info.value, FieldsyncError)
    assert "60000 ms" in str(info.value)
    # A refused stamp leaves the clock untouched.
    assert clock.last == before
    assert clock.now() == Stamp(T0, 1, "n1")


def test_drift_limit_is_inclusive() -> None:
    clock = HybridClock("n1", wall=ManualWall(), max_drift_ms=1_000)
    exactly = Stamp(T0 + 1_000, 0, "n2")
    assert clock.observe(exactly) == exactly
    with pytest.raises(ClockDriftError):
        clock.observe(Stamp(T0 + 1_001, 0, "n2"))


def test_default_max_drift_is_five_minutes() -> None:
    clock = HybridClock("n1", wall=ManualWall())
    assert clock.max_drift_ms == DEFAULT_MAX_DRIFT_MS == 300_000
    clock.observe(Stamp(T0 + 300_000, 0, "n2"))
    with pytest.raises(ClockDriftError):
        clock.observe(Stamp(T0 + 300_001, 0, "n2"))


def test_clamp_treats_far_future_stamp_as_wall_plus_max_drift() -> None:
    wall = ManualWall()
    server = HybridClock("server", wall=wall, max_drift_ms=60_000)
    far = Stamp(T0 + 10 * 3_600_000, 17, "bad-tablet")
    kept = server.observe(far, clamp=True)
    assert kept == Stamp(T0 + 60_000, 0, "bad-tablet")
    assert kept < far
    nxt = server.now()
    assert nxt > kept
    assert nxt < far  # the fast tablet did not drag the server ten hours ahead
    assert nxt.wall_ms == T0 + 60_000


def test_clamped_stamps_keep_the_order_they_were_clamped_in() -> None:
    """Two writes of one fast tablet clamped within one millisecond: the writer's own counters
    (here 5, then 0) cannot order them any more, the clamp order does (chaos seed 6)."""
    server = HybridClock("server", wall=ManualWall(), max_drift_ms=60_000)
    first = server.observe(Stamp(T0 + 86_400_000, 5, "fast"), clamp=True)
    second = server.observe(Stamp(T0 + 86_400_010, 0, "fast"), clamp=True)
    third = server.observe(Stamp(T0 + 86_400_020, 0, "fast"), clamp=True)
    assert first < second < third
    assert {s.node for s in (first, second, third)} == {"fast"}
    assert first.wall_ms == T0 + 60_000


def test_clamp_leaves_stamp_within_drift_unchanged() -> None:
    server = HybridClock("server", wall=ManualWall(), max_drift_ms=60_000)
    near = Stamp(T0 + 59_999, 3, "tablet")
    assert server.observe(near, clamp=True) is near


# --- encoding -------------------------------------------------------------


@settings(max_examples=200, print_blob=True)
@given(stamps)
def test_encode_decode_round_trip(stamp: Stamp) -> None:
    text = stamp.encode()
    assert Stamp.decode(text) == stamp
    assert str(stamp) == text
    assert len(text) == 12 + 1 + 6 + 1 + len(stamp.node)


@settings(max_examples=200, print_blob=True)
@given(st.lists(stamps, min_size=2, max_size=30))
def test_encoded_order_equals_stamp_order(many: list[Stamp]) -> None:
    assert sorted(s.encode() for s in many) == [s.encode() for s in sorted(many)]
    a, b = many[0], many[1]
    assert (a < b) == (a.encode() < b.encode())
    assert (a == b) == (a.encode() == b.encode())


def test_encoded_order_example() -> None:
    # Decimal-looking walls that would sort wrongly as plain numbers-in-text.
    a = Stamp(9, 0, "z")
    b = Stamp(10, 0, "a")
    c = Stamp(10, 1, "a")
    d = Stamp(10, 1, "b")
    assert a < b < c < d
    assert a.encode() < b.encode() < c.encode() < d.encode()
    assert Stamp(T0, 0, "n").encode() == f"{T0:012x}-000000-n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "0000000000001-000000-node",  # 13 wall digits
        "00000000001-000000-node",  # 11 wall digits
        "000000000001-00000-node",  # 5 counter digits
        "000000000001-000000-",  # no node
        "000000000001-000000-" + "n" * 65,  # node too long
        "00000000000G-000000-node",  # not hex
        "00000000000A-000000-node",  # upper-case hex is not what encode writes
        "000000000001_000000-node",
        "000000000001-000000-no de",
        "000000000001-000000-节点",
        " 000000000001-000000-node",
        "000000000001-000000-node\n",  # a trailing newline is not part of a stamp
        "000000000001-000000-node\nmore",
    ],
)
def test_decode_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        Stamp.decode(text)


@pytest.mark.parametrize("value", [None, 12, b"000000000001-000000-node", ["000000000001-000000-node"]])
def test_decode_rejects_non_text(value: object) -> None:
    with pytest.raises(ValueError):
        Stamp.decode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("node", ["", "has space", "n" * 65, "节点", "tablet\n", "a/b"])
def test_clock_rejects_bad_node_ids(node: str) -> None:
    with pytest.raises(ValueError):
        HybridClock(node, wall=ManualWall())


@settings(max_examples=200, print_blob=True)
@given(node_ids)
def test_stamps_from_any_valid_node_decode(node: str) -> None:
    clock = HybridClock(node, wall=ManualWall())
    s = clock.now()
    assert Stamp.decode(s.encode()) == s


# --- restart --------------------------------------------------------------


def test_restore_with_last_continues_after_it() -> None:
    wall = ManualWall()
    first = HybridClock("n1", wall=wall)
    issued = [first.now() for _ in range(10)]
    saved = first.last.encode()

    wall.ms -= 120_000  # the tablet rebooted with its clock two minutes behind
    restarted = HybridClock("n1", wall=wall, last=Stamp.decode(saved))
    assert restarted.last == issued[-1]
    nxt = restarted.now()
    assert nxt > issued[-1]
    assert nxt == Stamp(T0, 10, "n1")


def test_restore_with_last_observed_from_other_node() -> None:
    # ``last`` may be a stamp received from another node; later local stamps follow it.
    observed = Stamp(T0 + 1_000, 5, "zz-server")
    clock = HybridClock("aa-tablet", wall=ManualWall(), last=observed)
    assert clock.now() > observed


def test_fresh_clock_starts_from_wall() -> None:
    clock = HybridClock("n1", wall=ManualWall())
    assert clock.last == Stamp(0, 0, "n1")
    assert clock.now() == Stamp(T0, 0, "n1")


def test_default_wall_is_system_time() -> None:
    import time

    before = time.time_ns() // 1_000_000
    s = HybridClock("n1").now()
    after = time.time_ns() // 1_000_000
    assert before <= s.wall_ms <= after
