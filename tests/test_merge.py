"""Per-field last-writer-wins merge: algebraic properties, conflicts, tombstones, wire form.

The property tests simulate several replicas of one record.  Each replica has
its own :class:`HybridClock` over a wall clock the test moves (forwards and
backwards), writes values to a few fields (the tombstone included), and now
and then pulls another replica's state, observing its stamps first as a real
device does.  So every write's ``base`` is whatever its replica had seen.
Hypothesis prints the falsifying operations (and, with ``print_blob``, a
``@reproduce_failure`` blob); ``--hypothesis-seed`` replays a whole run.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Mapping

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fieldsync.clock import HybridClock, Stamp
from fieldsync.merge import (
    DELETED,
    Conflict,
    FieldWrite,
    MergeResult,
    is_deleted,
    merge_all,
    merge_field,
    merge_states,
    values_of,
)

T0 = 1_717_000_000_000
REPLICAS = 4
FIELDS = ("head_name", "phone", "tags")
VALUES: tuple[Any, ...] = (
    "张三",
    "李四",
    "13800138000",
    None,
    ["低保", "独居老人"],
    {"building": "3", "room": "502"},
)

State = dict[str, FieldWrite]


class ManualWall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


# --- simulation -----------------------------------------------------------

replica_ix = st.integers(min_value=0, max_value=REPLICAS - 1)
field_writes = st.one_of(
    st.tuples(st.sampled_from(FIELDS), st.sampled_from(VALUES)),
    st.tuples(st.just(DELETED), st.booleans()),
)
_write = st.tuples(st.just("write"), replica_ix, field_writes)
operations = st.lists(
    st.one_of(
        _write,
        _write,  # writes are drawn about three times as often as ticks or pulls
        _write,
        st.tuples(st.just("tick"), replica_ix, st.integers(min_value=-40, max_value=40)),
        st.tuples(st.just("pull"), replica_ix, replica_ix),
    ),
    min_size=10,
    max_size=40,
)


class Replica:
    def __init__(self, i: int) -> None:
        self.wall = ManualWall(T0 + 3 * i)
        self.clock = HybridClock(f"tablet-{i}", wall=self.wall)
        self.state: State = {}

    def write(self, name: str, value: Any) -> FieldWrite:
        current = self.state.get(name)
        w = FieldWrite(value, self.clock.now(), current.stamp if current else None)
        self.state[name] = w
        return w

    def pull(self, other: "Replica") -> None:
        for w in other.state.values():
            self.clock.observe(w.stamp)
        self.state = merge_states(self.state, other.state).state


def simulate(ops: list[tuple[Any, ...]]) -> tuple[list[State], list[tuple[str, FieldWrite]]]:
    """Run the operations; return each replica's final state and every write made (with its field)."""
    replicas = [Replica(i) for i in range(REPLICAS)]
    written: list[tuple[str, FieldWrite]] = []
    for op, i, arg in ops:
        r = replicas[i]
        if op == "write":
            name, value = arg
            written.append((name, r.write(name, value)))
        elif op == "tick":
            r.wall.ms += arg
        elif i != arg:
            r.pull(replicas[arg])
    return [r.state for r in replicas], written


def expected_state(states: list[State]) -> State:
    """The oracle: per field, the write with the greatest stamp anywhere."""
    best: State = {}
    for s in states:
        for name, w in s.items():
            if name not in best or w.stamp > best[name].stamp:
                best[name] = w
    return best


def same_json(x: Any, y: Any) -> bool:
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


def conflict_keys(result: MergeResult) -> set[tuple[str, str, str]]:
    return {c.key() for c in result.conflicts}


def check_conflicts_sound(a: Mapping[str, FieldWrite], b: Mapping[str, FieldWrite], result: MergeResult) -> None:
    """Each conflict is a real concurrent overwrite, and none is missing."""
    by_field = {c.field: c for c in result.conflicts}
    assert len(by_field) == len(result.conflicts)  # at most one conflict per field per merge
    for name in a.keys() & b.keys():
        x, y = a[name], b[name]
        winner = result.state[name]
        assert winner in (x, y)
        loser = y if winner is x else x
        concurrent = x != y and winner.base != loser.stamp and not same_json(x.value, y.value)
        if concurrent:
            c = by_field[name]
            assert c.winner == winner and c.loser == loser
            assert c.winner.stamp > c.loser.stamp
        else:
            assert name not in by_field
    assert set(by_field) <= a.keys() & b.keys()


# --- algebraic properties -------------------------------------------------


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_merge_is_commutative(ops: list[tuple[Any, ...]]) -> None:
    states, _ = simulate(ops)
    for a, b in itertools.combinations(states, 2):
        ab, ba = merge_states(a, b), merge_states(b, a)
        assert ab.state == ba.state
        assert conflict_keys(ab) == conflict_keys(ba)
        assert sorted(ab.conflicts, key=Conflict.key) == sorted(ba.conflicts, key=Conflict.key)


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_merge_is_associative(ops: list[tuple[Any, ...]]) -> None:
    states, _ = simulate(ops)
    for a, b, c in itertools.permutations(states, 3):
        left = merge_states(merge_states(a, b).state, c).state
        right = merge_states(a, merge_states(b, c).state).state
        assert left == right


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_merge_is_idempotent(ops: list[tuple[Any, ...]]) -> None:
    states, _ = simulate(ops)
    for a in states:
        result = merge_states(a, a)
        assert result.state == a
        assert result.conflicts == []
        assert result.changed == set()
        # Absorbing: merging a state into something that already holds it changes nothing
        # (a stale concurrent value in ``a`` is reported again; the state does not move).
        full = merge_all(states).state
        again = merge_states(full, a)
        assert again.state == full
        assert again.changed == set()


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_every_merge_order_converges_to_the_latest_writes(ops: list[tuple[Any, ...]]) -> None:
    states, written = simulate(ops)
    oracle = expected_state(states)
    for order in itertools.permutations(states):
        assert merge_all(order).state == oracle
    # Every write made survives in the merged state unless a later write of its field exists.
    merged = merge_all(states).state
    for name, w in written:
        assert merged[name].stamp >= w.stamp


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_pairwise_conflicts_are_exactly_the_concurrent_overwrites(ops: list[tuple[Any, ...]]) -> None:
    states, _ = simulate(ops)
    for a, b in itertools.permutations(states, 2):
        result = merge_states(a, b)
        check_conflicts_sound(a, b, result)
        assert result.changed == {n for n, w in result.state.items() if a.get(n) != w}
        assert set(result.state) == a.keys() | b.keys()


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_replicas_that_pulled_everything_agree(ops: list[tuple[Any, ...]]) -> None:
    # After an all-to-all exchange round, every replica holds the same state.
    replicas = [Replica(i) for i in range(REPLICAS)]
    for op, i, arg in ops:
        r = replicas[i]
        if op == "write":
            r.write(*arg)
        elif op == "tick":
            r.wall.ms += arg
        elif i != arg:
            r.pull(replicas[arg])
    hub = replicas[0]
    for other in replicas[1:]:
        hub.pull(other)
    for other in replicas[1:]:
        other.pull(hub)
    assert all(r.state == hub.state for r in replicas)
    merged = dict(hub.state)
    assert merged == expected_state([merged])
    # Clocks have observed everything: a new write on any replica beats everything merged,
    # and overwrites what that replica holds without a conflict.
    for r in replicas:
        before = dict(r.state)
        w = r.write("head_name", "王五")
        assert all(w.stamp > x.stamp for x in merged.values())
        result = merge_states(before, r.state)
        assert result.conflicts == []
        assert result.state["head_name"] is w


def test_merge_all_deduplicates_conflicts() -> None:
    base = FieldWrite("张三", Stamp(T0, 0, "a"))
    x = FieldWrite("李四", Stamp(T0 + 5, 0, "b"), base.stamp)
    y = FieldWrite("王五", Stamp(T0 + 7, 0, "c"), base.stamp)
    result = merge_all([{"head_name": x}, {"head_name": y}, {"head_name": x}, {"head_name": y}])
    assert result.state == {"head_name": y}
    assert [c.key() for c in result.conflicts] == [("head_name", y.stamp.encode(), x.stamp.encode())]
    assert merge_all([]).state == {}
    assert merge_all([]).conflicts == []


# --- conflicts ------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
any_stamps = st.builds(
    Stamp,
    wall_ms=st.integers(min_value=0, max_value=16**12 - 1),
    counter=st.integers(min_value=0, max_value=16**6 - 1),
    node=st.sampled_from(["a", "b", "c", "server"]),
)


def test_two_overwrites_of_the_same_base_conflict_in_either_order() -> None:
    # Two workers offline each correct the same household's phone.
    wall_a, wall_b = ManualWall(T0), ManualWall(T0 + 2)
    tablet_a = HybridClock("tablet-a", wall=wall_a)
    tablet_b = HybridClock("tablet-b", wall=wall_b)
    base = FieldWrite("13800138000", tablet_a.now())
    tablet_b.observe(base.stamp)
    wall_a.ms += 10
    wall_b.ms += 10
    from_a = FieldWrite("13900139000", tablet_a.now(), base.stamp)
    from_b = FieldWrite("13700137000", tablet_b.now(), base.stamp)
    for x, y in ((from_a, from_b), (from_b, from_a)):
        result = merge_states({"phone": x}, {"phone": y})
        assert len(result.conflicts) == 1
        c = result.conflicts[0]
        assert isinstance(c, Conflict)
        assert c.field == "phone"
        assert {c.winner.value, c.loser.value} == {"13900139000", "13700137000"}
        assert c.winner == from_b  # later wall time
        assert result.state["phone"] == from_b
        winner, conflict = merge_field("phone", x, y)
        assert winner == from_b and conflict == c


@settings(max_examples=200, print_blob=True)
@given(values, values, any_stamps, any_stamps, st.one_of(st.none(), any_stamps))
def test_concurrent_overwrites_with_different_values_always_conflict(
    v1: Any, v2: Any, s1: Stamp, s2: Stamp, base: Stamp | None
) -> None:
    assume(s1 != s2 and not same_json(v1, v2) and base not in (s1, s2))
    x, y = FieldWrite(v1, s1, base), FieldWrite(v2, s2, base)
    for first, second in ((x, y), (y, x)):
        result = merge_states({"f": first}, {"f": second})
        assert len(result.conflicts) == 1
        c = result.conflicts[0]
        assert c.winner.stamp == max(s1, s2) and c.loser.stamp == min(s1, s2)
        values_kept = [c.winner.value, c.loser.value]
        assert any(same_json(v, v1) for v in values_kept)
        assert any(same_json(v, v2) for v in values_kept)
        assert result.state["f"] is c.winner


@settings(max_examples=200, print_blob=True)
@given(values, values, any_stamps, any_stamps, st.one_of(st.none(), any_stamps))
def test_sequential_overwrite_never_conflicts(
    old_value: Any, new_value: Any, s1: Stamp, s2: Stamp, old_base: Stamp | None
) -> None:
    assume(s1 != s2)
    older, newer = sorted((s1, s2))
    loser = FieldWrite(old_value, older, old_base)
    winner = FieldWrite(new_value, newer, older)  # it saw and overwrote the loser
    for a, b in ((loser, winner), (winner, loser)):
        result = merge_states({"f": a}, {"f": b})
        assert result.conflicts == []
        assert result.state["f"] is winner
        assert merge_field("f", a, b) == (winner, None)


@settings(max_examples=200, print_blob=True)
@given(values, any_stamps, any_stamps, st.one_of(st.none(), any_stamps), st.one_of(st.none(), any_stamps))
def test_equal_values_never_conflict(value: Any, s1: Stamp, s2: Stamp, b1: Stamp | None, b2: Stamp | None) -> None:
    # Two workers who independently write the same value do not disagree.
    copy = json.loads(json.dumps(value))
    x, y = FieldWrite(value, s1, b1), FieldWrite(copy, s2, b2)
    assert merge_states({"f": x}, {"f": y}).conflicts == []
    assert merge_states({"f": y}, {"f": x}).conflicts == []


def test_equal_objects_with_different_key_order_do_not_conflict() -> None:
    x = FieldWrite({"building": "3", "room": "502"}, Stamp(T0, 0, "a"))
    y = FieldWrite({"room": "502", "building": "3"}, Stamp(T0 + 1, 0, "b"))
    winner, conflict = merge_field("address", x, y)
    assert conflict is None
    assert winner is y


def test_greater_stamp_wins_and_node_breaks_ties() -> None:
    early = FieldWrite("张三", Stamp(T0, 0, "zz"))
    later_counter = FieldWrite("李四", Stamp(T0, 1, "aa"))
    later_node = FieldWrite("王五", Stamp(T0, 1, "ab"))
    assert merge_field("n", early, later_counter)[0] is later_counter
    assert merge_field("n", later_counter, later_node)[0] is later_node
    assert merge_field("n", later_node, later_counter)[0] is later_node


def test_fields_merge_independently_and_changed_names_replaced_fields() -> None:
    a = {"head_name": FieldWrite("张三", Stamp(T0, 0, "a")), "phone": FieldWrite("138", Stamp(T0 + 9, 0, "a"))}
    b = {"head_name": FieldWrite("张叁", Stamp(T0 + 5, 0, "b")), "tags": FieldWrite(["低保"], Stamp(T0, 0, "b"))}
    result = merge_states(a, b)
    assert values_of(result.state) == {"head_name": "张叁", "phone": "138", "tags": ["低保"]}
    assert result.changed == {"head_name", "tags"}
    assert merge_states(b, a).changed == {"phone"}
    # The inputs are not modified.
    assert set(a) == {"head_name", "phone"} and set(b) == {"head_name", "tags"}


# --- tombstones -------------------------------------------------------------


def test_later_delete_wins_over_earlier_undelete_and_vice_versa() -> None:
    restored = FieldWrite(False, Stamp(T0, 0, "a"))
    deleted = FieldWrite(True, Stamp(T0 + 1, 0, "b"), restored.stamp)
    restored_again = FieldWrite(False, Stamp(T0 + 2, 0, "a"), deleted.stamp)
    name = {"head_name": FieldWrite("张三", Stamp(T0, 5, "a"))}

    s = merge_states({**name, DELETED: restored}, {DELETED: deleted})
    assert s.state[DELETED] is deleted
    assert is_deleted(s.state)
    assert s.conflicts == []
    assert merge_states({DELETED: deleted}, {**name, DELETED: restored}).state == s.state

    s2 = merge_states(s.state, {DELETED: restored_again})
    assert not is_deleted(s2.state)
    assert merge_states({DELETED: restored_again}, s.state).state == s2.state


def test_concurrent_delete_and_edit_keep_both_and_the_tombstone() -> None:
    base_name = FieldWrite("张三", Stamp(T0, 0, "a"))
    edited = FieldWrite("张叁", Stamp(T0 + 10, 0, "a"), base_name.stamp)
    delete = FieldWrite(True, Stamp(T0 + 5, 0, "b"))
    merged = merge_all([{"head_name": edited}, {"head_name": base_name, DELETED: delete}]).state
    assert is_deleted(merged)
    assert values_of(merged) == {"head_name": "张叁"}


@pytest.mark.parametrize(
    ("state", "deleted"),
    [
        ({}, False),
        ({"head_name": FieldWrite("张三", Stamp(T0, 0, "a"))}, False),
        ({DELETED: FieldWrite(True, Stamp(T0, 0, "a"))}, True),
        ({DELETED: FieldWrite(False, Stamp(T0, 0, "a"))}, False),
    ],
)
def test_is_deleted(state: State, deleted: bool) -> None:
    assert is_deleted(state) is deleted


@settings(max_examples=200, print_blob=True)
@given(operations)
def test_tombstone_follows_the_latest_delete_write(ops: list[tuple[Any, ...]]) -> None:
    states, written = simulate(ops)
    merged = merge_all(states).state
    tombstones = [w for name, w in written if name == DELETED]
    if tombstones:
        latest = max(tombstones, key=lambda w: w.stamp)
        assert merged[DELETED] == latest
        assert is_deleted(merged) is latest.value
    else:
        assert DELETED not in merged
        assert not is_deleted(merged)
    plain = values_of(merged)
    assert DELETED not in plain
    assert plain == {n: w.value for n, w in merged.items() if n in FIELDS}


def test_values_of_excludes_only_the_tombstone() -> None:
    state = {
        "head_name": FieldWrite("张三", Stamp(T0, 0, "a")),
        "tags": FieldWrite(["低保", "独居老人"], Stamp(T0, 1, "a")),
        "notes": FieldWrite(None, Stamp(T0, 2, "a")),
        DELETED: FieldWrite(True, Stamp(T0, 3, "a")),
    }
    assert values_of(state) == {"head_name": "张三", "tags": ["低保", "独居老人"], "notes": None}


# --- wire form --------------------------------------------------------------


@settings(max_examples=200, print_blob=True)
@given(values, any_stamps, st.one_of(st.none(), any_stamps))
def test_wire_round_trip_through_json(value: Any, stamp: Stamp, base: Stamp | None) -> None:
    w = FieldWrite(value, stamp, base)
    wire = w.to_wire()
    assert wire[1] == stamp.encode()
    assert wire[2] == (base.encode() if base else None)
    back = FieldWrite.from_wire(json.loads(json.dumps(wire, ensure_ascii=False)))
    assert back.stamp == stamp and back.base == base
    assert same_json(back.value, value)
    assert FieldWrite.from_wire(wire) == w


GOOD = "018fc2a1b000-000000-a"  # a well-formed stamp text


@pytest.mark.parametrize(
    "data",
    [
        None,
        "张三",
        {"value": "张三", "stamp": GOOD, "base": None},
        ("张三", GOOD, None),
        [],
        ["张三", GOOD],
        ["张三", GOOD, None, "extra"],
        ["张三", "not a stamp", None],
        ["张三", None, None],
        ["张三", 12345, None],
        ["张三", GOOD, "not a stamp"],
        ["张三", GOOD, 0],
        ["张三", GOOD, ""],
        ["张三", GOOD + "\n", None],
    ],
)
def test_from_wire_rejects_malformed(data: Any) -> None:
    assert Stamp.decode(GOOD)  # the good stamp really is good
    with pytest.raises(ValueError):
        FieldWrite.from_wire(data)
