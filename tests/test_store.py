"""The encrypted Store facade: records, validation, search, outbox, transactions."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

import fieldsync
from fieldsync import (
    Field,
    Kind,
    NotAStoreError,
    RecordNotFound,
    Stamp,
    Store,
    StoreError,
    UnknownKindError,
    ValidationError,
)

PIN = "2580"
GRID = "wc-lds-hys-01"
OTHER_GRID = "wc-lds-hys-02"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_number(first17: str) -> str:
    """A resident ID number with its GB 11643 check digit (computed independently of fieldsync)."""
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


ID_ZHANG = "420106195203150020"
ID_WITH_X = id_number("42010619800101100")  # ends in X
ID_LI = id_number("42010619751123302")  # ends in X as well
ID_WANG = id_number("42010619881207451")


def test_id_number_helper_matches_known_examples() -> None:
    assert id_number(ID_ZHANG[:17]) == ID_ZHANG
    assert ID_WITH_X.endswith("X") and ID_LI.endswith("X")
    assert fieldsync.schema.valid_id_number(ID_WANG)


def household(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "grid_id": GRID,
        "address": "武汉市武昌区粮道街花园山社区3栋2单元301",
        "building": "3",
        "unit": "2",
        "room": "301",
        "head_name": "张桂兰",
        "phone": "13807132468",
        "members": 3,
        "tags": ["低保", "独居老人"],
        "notes": "老人独居,子女在外地",
        "last_visit": "2026-11-20",
    }
    rec.update(over)
    return rec


def resident(hid: str, **over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "grid_id": GRID,
        "household_id": hid,
        "name": "张桂兰",
        "id_number": ID_ZHANG,
        "birth_date": "1952-03-15",
        "gender": "女",
        "relation": "户主",
        "phone": "13807132468",
        "tags": ["独居老人"],
    }
    rec.update(over)
    return rec


def default_kind_samples(hid: str) -> dict[str, dict[str, object]]:
    return {
        "grids": {"id": GRID, "name": "花园山社区第一网格", "community": "花园山社区", "street": "粮道街",
                  "workers": ["w-lijing"]},
        "households": household(),
        "residents": resident(hid),
        "visits": {"grid_id": GRID, "household_id": hid, "worker_id": "w-lijing",
                   "visited_at": "2026-11-28T09:30:00+08:00", "purpose": "独居老人探访",
                   "notes": "血压偏高,已提醒按时服药", "needs": ["送药上门"], "follow_up": "2026-12-05",
                   "location": {"lat": 30.5446, "lon": 114.3107}},
        "reports": {"grid_id": GRID, "category": "乱张贴", "description": "花园山社区4栋楼道有小广告",
                    "location": "花园山社区4栋", "attachments": ["a" * 64], "reporter_id": "w-lijing",
                    "reported_at": "2026-11-28T10:05:00+08:00", "status": "submitted", "department": "城管",
                    "timeline": [{"at": "2026-11-28T10:05:00+08:00", "status": "submitted"}]},
        "tasks": {"grid_id": GRID, "assignee": "w-lijing", "kind": "回访", "title": "回访张桂兰",
                  "related": {"household_id": hid}, "due": "2026-12-05", "status": "open",
                  "notes": "确认药已送到"},
    }


# -- round trips ---------------------------------------------------------------

def test_every_default_kind_round_trips(store: Store) -> None:
    hid = store.put("households", household())
    samples = default_kind_samples(hid)
    assert set(samples) == {kind.name for kind in fieldsync.schema.DEFAULT_KINDS}
    for collection, rec in samples.items():
        rid = store.put(collection, rec)
        assert isinstance(rid, str) and rid
        assert store.get(collection, rid) == {"id": rid, **rec}
    assert store.get("grids", GRID)["name"] == "花园山社区第一网格"


def test_round_trip_survives_reopen(store: Store, store_path: Path) -> None:
    hid = store.put("households", household())
    rid = store.put("residents", resident(hid))
    store.close()
    again = Store.open(store_path, PIN)
    assert again.get("residents", rid)["id_number"] == ID_ZHANG
    assert again.get("households", hid)["address"].startswith("武汉市武昌区粮道街花园山社区")


def test_put_with_given_id_uses_it(store: Store) -> None:
    assert store.put("households", household(id="h-0301")) == "h-0301"
    assert store.get("households", "h-0301")["room"] == "301"


def test_update_with_partial_fields_keeps_others(store: Store) -> None:
    hid = store.put("households", household())
    assert store.put("households", {"id": hid, "members": 2, "notes": "老伴去世"}) == hid
    got = store.get("households", hid)
    assert got["members"] == 2 and got["notes"] == "老伴去世"
    assert got["head_name"] == "张桂兰" and got["tags"] == ["低保", "独居老人"]


def test_field_set_to_none_is_cleared(store: Store) -> None:
    hid = store.put("households", household())
    store.put("households", {"id": hid, "phone": None, "notes": None})
    got = store.get("households", hid)
    assert got.get("phone") is None and got.get("notes") is None
    assert got["head_name"] == "张桂兰"
    assert store.find("households", "phone", "13807132468") == []


def test_required_field_cannot_be_cleared(store: Store) -> None:
    hid = store.put("households", household())
    with pytest.raises(ValidationError) as err:
        store.put("households", {"id": hid, "address": None})
    assert err.value.field == "address"
    assert store.get("households", hid)["address"].endswith("301")


def test_unchanged_put_writes_no_outbox_entry(store: Store) -> None:
    hid = store.put("households", household())
    before = store.outbox_size()
    store.put("households", {"id": hid, **household()})
    store.put("households", {"id": hid, "members": 3})
    assert store.outbox_size() == before == 1


def test_unknown_fields_are_kept(store: Store) -> None:
    extra = {"elevator": True, "survey_2027": {"floor": 3, "备注": "新字段"}}
    hid = store.put("households", household(**extra))
    got = store.get("households", hid)
    assert got["elevator"] is True and got["survey_2027"] == {"floor": 3, "备注": "新字段"}


def test_reserved_underscore_field_is_refused(store: Store) -> None:
    with pytest.raises(ValidationError) as err:
        store.put("households", household(_deleted=True))
    assert err.value.field == "_deleted"
    assert store.count("households") == 0


# -- outbox --------------------------------------------------------------------

def test_outbox_records_field_writes_in_seq_order(store: Store) -> None:
    hid = store.put("households", household())
    store.put("households", {"id": hid, "members": 2})
    store.put("households", {"id": hid, "members": 1, "notes": "独居"})
    entries = store.outbox()
    assert [e.seq for e in entries] == sorted(e.seq for e in entries) and len(entries) == 3
    first, second, third = entries
    assert all(e.collection == "households" and e.id == hid and e.grid == GRID for e in entries)
    assert set(first.fields) == set(household())
    assert all(w.base is None for w in first.fields.values())
    assert first.fields["members"].value == 3
    assert set(second.fields) == {"members"}
    assert second.fields["members"].value == 2
    assert second.fields["members"].base == first.fields["members"].stamp
    assert second.fields["members"].stamp > first.fields["members"].stamp
    assert set(third.fields) == {"members", "notes"}
    assert third.fields["members"].base == second.fields["members"].stamp
    assert third.fields["notes"].base == first.fields["notes"].stamp
    assert third.fields["notes"].value == "独居"
    assert isinstance(third.fields["members"].stamp, Stamp)


def test_outbox_changes_are_the_push_wire_form(store: Store) -> None:
    hid = store.put("households", household())
    store.put("households", {"id": hid, "members": 2, "notes": "独居 \"老人\" \\ 家"})
    store.put("households", household(room="202"))
    entries = store.outbox()
    changes = store.outbox_changes()
    assert [seq for seq, _ in changes] == [e.seq for e in entries]
    for (_, raw), e in zip(changes, entries):
        change = json.loads(raw)
        assert change == {"seq": e.seq, "collection": "households", "id": e.id, "grid": GRID,
                          "fields": {k: w.to_wire() for k, w in e.fields.items()}}
        assert raw == fieldsync.protocol.dumps(change), "the one wire encoding, byte for byte"
    assert json.loads(changes[1][1])["fields"]["notes"][0] == "独居 \"老人\" \\ 家"
    assert [seq for seq, _ in store.outbox_changes(limit=1, after=entries[0].seq)] == [entries[1].seq]


def test_outbox_paging_and_acknowledge(store: Store) -> None:
    for i in range(5):
        store.put("households", household(room=f"{i + 1}01"))
    entries = store.outbox()
    assert len(entries) == 5
    assert [e.seq for e in store.outbox(limit=2)] == [e.seq for e in entries[:2]]
    assert [e.seq for e in store.outbox(after=entries[2].seq)] == [e.seq for e in entries[3:]]
    assert store.acknowledge(entries[2].seq) == 3
    assert [e.seq for e in store.outbox()] == [e.seq for e in entries[3:]]
    assert store.outbox_size() == 2
    assert store.acknowledge(entries[-1].seq) == 2
    assert store.outbox() == [] and store.outbox_size() == 0
    assert store.count("households") == 5


# -- delete --------------------------------------------------------------------

def test_delete_hides_record_and_queues_tombstone(store: Store) -> None:
    hid = store.put("households", household())
    keep = store.put("households", household(room="302", head_name="李建国"))
    assert store.count("households") == 2
    store.delete("households", hid)
    with pytest.raises(RecordNotFound):
        store.get("households", hid)
    assert store.count("households") == 1
    assert [r["id"] for r in store.list("households")] == [keep]
    assert store.find("households", "head_name", "张桂兰") == []
    tomb = store.outbox()[-1]
    assert tomb.id == hid and set(tomb.fields) == {"_deleted"}
    assert tomb.fields["_deleted"].value is True and tomb.fields["_deleted"].base is None
    with pytest.raises(RecordNotFound):
        store.delete("households", hid)
    with pytest.raises(RecordNotFound):
        store.delete("households", "no-such-id")


def test_put_after_delete_restores(store: Store) -> None:
    hid = store.put("households", household())
    store.delete("households", hid)
    store.put("households", {"id": hid, "notes": "户主回来了"})
    got = store.get("households", hid)
    assert got["notes"] == "户主回来了" and got["head_name"] == "张桂兰"
    assert store.count("households") == 1
    assert [r["id"] for r in store.find("households", "head_name", "张桂兰")] == [hid]
    restore = store.outbox()[-1]
    assert restore.fields["_deleted"].value is False
    assert restore.fields["_deleted"].base == store.outbox()[-2].fields["_deleted"].stamp


# -- search --------------------------------------------------------------------

def test_find_resident_by_id_number_normalised(store: Store) -> None:
    hid = store.put("households", household())
    rid = store.put("residents", resident(hid, name="陈晓明", id_number=ID_WITH_X))
    store.put("residents", resident(hid, name="张桂兰", id_number=ID_ZHANG))
    for query in (ID_WITH_X, ID_WITH_X.lower(), " ".join([ID_WITH_X[:6], ID_WITH_X[6:14], ID_WITH_X[14:].lower()])):
        found = store.find("residents", "id_number", query)
        assert [r["id"] for r in found] == [rid], query
    assert store.find("residents", "id_number", ID_LI) == []


def test_find_household_by_head_name_ignores_spaces(store: Store) -> None:
    hid = store.put("households", household(head_name="欧阳 娜娜"))
    store.put("households", household(head_name="欧阳明"))
    assert [r["id"] for r in store.find("households", "head_name", "欧阳娜娜")] == [hid]
    assert [r["id"] for r in store.find("households", "head_name", " 欧 阳娜 娜 ")] == [hid]
    assert store.find("households", "head_name", "欧阳") == []


def test_find_by_phone_with_country_code_and_dashes(store: Store) -> None:
    hid = store.put("households", household(phone="13800138000"))
    rid = store.put("residents", resident(hid, phone="138 0013 8000"))
    assert [r["id"] for r in store.find("households", "phone", "+86 138-0013-8000")] == [hid]
    assert [r["id"] for r in store.find("residents", "phone", "+86 138-0013-8000")] == [rid]
    assert store.find("households", "phone", "13800138001") == []


def test_find_on_non_searchable_field_names_it(store: Store) -> None:
    store.put("households", household())
    with pytest.raises(ValidationError) as err:
        store.find("households", "address", "花园山")
    assert err.value.field == "address" and "address" in str(err.value)
    assert "head_name" in str(err.value)  # lists what is searchable


def test_search_tokens_follow_value_changes(store: Store) -> None:
    hid = store.put("households", household(head_name="张桂兰", phone="13807132468"))
    store.put("households", {"id": hid, "head_name": "李秀英", "phone": "13912345678"})
    assert store.find("households", "head_name", "张桂兰") == []
    assert store.find("households", "phone", "13807132468") == []
    assert [r["id"] for r in store.find("households", "head_name", "李秀英")] == [hid]
    assert [r["id"] for r in store.find("households", "phone", "139 1234 5678")] == [hid]
    # one token per searchable field of the record, not an accumulating pile
    with sqlite3.connect(store.path) as raw:
        n = raw.execute("SELECT count(*) FROM search WHERE id = ?", (hid,)).fetchone()[0]
    assert n == 2


def test_find_returns_several_matches(store: Store) -> None:
    a = store.put("households", household(room="101"))
    b = store.put("households", household(room="102"))
    found = store.find("households", "head_name", "张桂兰")
    assert sorted(r["id"] for r in found) == sorted([a, b])
    assert {r["room"] for r in found} == {"101", "102"}


def test_list_filters_by_grid(store: Store) -> None:
    a = store.put("households", household(room="101"))
    b = store.put("households", household(room="102"))
    c = store.put("households", household(grid_id=OTHER_GRID, room="201"))
    assert sorted(r["id"] for r in store.list("households")) == sorted([a, b, c])
    assert sorted(r["id"] for r in store.list("households", GRID)) == sorted([a, b])
    assert [r["id"] for r in store.list("households", OTHER_GRID)] == [c]
    assert store.list("households", "wc-nowhere") == []
    assert store.list("residents") == []


def test_moving_record_to_other_grid_updates_grid_column(store: Store) -> None:
    hid = store.put("households", household())
    store.put("households", {"id": hid, "grid_id": OTHER_GRID})
    assert store.list("households", GRID) == []
    assert [r["id"] for r in store.list("households", OTHER_GRID)] == [hid]
    assert store.outbox()[-1].grid == OTHER_GRID


# -- validation ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("collection", "bad", "field"),
    [
        ("households", {"address": None}, "address"),
        ("households", {"members": "三"}, "members"),
        ("households", {"phone": "12"}, "phone"),
        ("households", {"last_visit": "2026-13-01"}, "last_visit"),
        ("households", {"tags": "低保"}, "tags"),
        ("households", {"grid_id": "网格一"}, "grid_id"),
        ("residents", {"id_number": ID_ZHANG[:17] + "9"}, "id_number"),
        ("residents", {"name": ""}, "name"),
        ("residents", {"gender": "未知"}, "gender"),
        ("visits", {"visited_at": "昨天"}, "visited_at"),
        ("reports", {"status": "lost"}, "status"),
        ("reports", {"location": {"lat": 95, "lon": 114.3}}, "location"),
    ],
)
def test_validation_error_names_field_and_writes_nothing(
    store: Store, collection: str, bad: dict[str, object], field: str
) -> None:
    hid = store.put("households", household())
    good = default_kind_samples(hid)[collection]
    outbox_before = store.outbox()
    count_before = store.count(collection)
    with pytest.raises(ValidationError) as err:
        store.put(collection, {**good, **bad})
    assert err.value.field == field
    assert field in str(err.value)
    assert store.outbox() == outbox_before
    assert store.count(collection) == count_before


def test_failed_update_leaves_record_unchanged(store: Store) -> None:
    hid = store.put("households", household())
    rid = store.put("residents", resident(hid))
    before_rec, before_out = store.get("residents", rid), store.outbox()
    with pytest.raises(ValidationError) as err:
        store.put("residents", {"id": rid, "relation": "配偶", "phone": "1"})
    assert err.value.field == "phone"
    assert store.get("residents", rid) == before_rec
    assert store.outbox() == before_out


def test_non_object_record_is_refused(store: Store) -> None:
    with pytest.raises(ValidationError):
        store.put("households", ["not", "a", "record"])  # type: ignore[arg-type]


def test_unknown_collection(store: Store) -> None:
    with pytest.raises(UnknownKindError):
        store.put("water_meters", {"grid_id": GRID})
    with pytest.raises(UnknownKindError):
        store.get("water_meters", "x")


# -- transactions --------------------------------------------------------------

def test_atomic_rolls_back_every_write_on_error(store: Store) -> None:
    kept = store.put("households", household(room="100"))
    with pytest.raises(RuntimeError):
        with store.atomic():
            hid = store.put("households", household(room="101"))
            store.put("residents", resident(hid))
            store.put("households", {"id": kept, "members": 9})
            store.delete("households", kept)
            raise RuntimeError("power cut simulation")
    assert store.count("households") == 1 and store.count("residents") == 0
    assert store.get("households", kept)["members"] == 3
    assert store.outbox_size() == 1
    with pytest.raises(RecordNotFound):
        store.get("households", hid)


def test_atomic_commits_group_together(store: Store) -> None:
    with store.atomic():
        hid = store.put("households", household())
        rid = store.put("residents", resident(hid))
    assert store.get("residents", rid)["household_id"] == hid
    assert store.outbox_size() == 2


def test_nested_atomic_is_a_savepoint(store: Store) -> None:
    with store.atomic():
        outer = store.put("households", household(room="101"))
        with pytest.raises(ValueError):
            with store.atomic():
                store.put("households", household(room="102"))
                store.put("households", {"id": outer, "members": 7})
                raise ValueError("inner block fails")
        after = store.put("households", household(room="103"))
    rooms = sorted(r["room"] for r in store.list("households"))
    assert rooms == ["101", "103"]
    assert store.get("households", outer)["members"] == 3
    assert store.get("households", after)["room"] == "103"
    assert store.outbox_size() == 2


def test_put_many_is_all_or_nothing(store: Store) -> None:
    good = [household(room=f"{i}01") for i in range(1, 4)]
    ids = store.put_many("households", good)
    assert len(ids) == 3 and len(set(ids)) == 3
    assert store.count("households") == 3
    batch = [household(room="501"), household(room="502", members="two"), household(room="503")]
    with pytest.raises(ValidationError) as err:
        store.put_many("households", batch)
    assert err.value.field == "members"
    assert store.count("households") == 3
    assert store.outbox_size() == 3


# -- custom kinds ----------------------------------------------------------------

def water_meter_kind() -> Kind:
    return Kind("water_meters", {
        "grid_id": Field(required=True),
        "meter_no": Field(required=True, search="text"),
        "owner_phone": Field(search="phone"),
        "reading": Field("number"),
    })


def test_custom_kind_in_registry_copy(store_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    reg = fieldsync.default_registry()
    reg.register(water_meter_kind())
    assert "water_meters" not in fieldsync.default_registry()
    store = Store.create(store_path, PIN, kdf=fast_kdf, registry=reg)
    mid = store.put("water_meters", {"grid_id": GRID, "meter_no": "WM 0042", "owner_phone": "027-8888 6666",
                                     "reading": 1234.5})
    assert store.get("water_meters", mid)["reading"] == 1234.5
    assert [r["id"] for r in store.find("water_meters", "meter_no", "wm   0042")] == [mid]
    assert [r["id"] for r in store.find("water_meters", "owner_phone", "02788886666")] == [mid]
    with pytest.raises(ValidationError) as err:
        store.put("water_meters", {"grid_id": GRID, "reading": "many"})
    assert err.value.field in {"meter_no", "reading"}
    assert store.status().records["water_meters"] == 1
    store.close()
    plain = Store.open(store_path, PIN)
    with pytest.raises(UnknownKindError):
        plain.get("water_meters", mid)


# -- clock, meta, status ------------------------------------------------------

def test_clock_persists_across_reopen(store_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    store = Store.create(store_path, PIN, kdf=fast_kdf, wall=lambda: 2_000_000_000_000)
    hid = store.put("households", household())
    store.put("households", {"id": hid, "members": 2})
    before = max(w.stamp for e in store.outbox() for w in e.fields.values())
    store.close()
    # The wall clock went back an hour (tablet battery pulled, clock reset):
    # stamps must still order after everything written before.
    again = Store.open(store_path, PIN, wall=lambda: 2_000_000_000_000 - 3_600_000)
    assert again.node_id == before.node
    again.put("households", {"id": hid, "members": 1})
    after = again.outbox()[-1].fields["members"]
    assert after.stamp > before
    assert after.base == store_outbox_members_stamp(again, hid, 2)


def store_outbox_members_stamp(store: Store, hid: str, value: int) -> Stamp:
    (write,) = [e.fields["members"] for e in store.outbox() if e.id == hid and
                "members" in e.fields and e.fields["members"].value == value]
    return write.stamp


def test_meta_round_trip(store: Store, store_path: Path) -> None:
    assert store.get_meta("pull_cursor") is None
    store.set_meta("pull_cursor", "c-000123")
    store.set_meta("last_synced_ms", 1_764_300_000_000)
    store.set_meta("pull_cursor", "c-000124")
    assert store.get_meta("pull_cursor") == "c-000124"
    store.close()
    again = Store.open(store_path, PIN)
    assert again.get_meta("pull_cursor") == "c-000124"
    assert again.get_meta("last_synced_ms") == 1_764_300_000_000
    # app meta cannot reach the key material
    assert again.get_meta("wrapped_dek") is None and again.get_meta("salt") is None


def test_status_counts(store: Store, tmp_path: Path) -> None:
    st = store.status()
    assert st.records == {name: 0 for name in fieldsync.default_registry().names()}
    assert st.outbox == 0 and st.attachments == 0
    hid = store.put("households", household())
    store.put("households", household(room="302"))
    store.put("residents", resident(hid))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(1000))
    store.attachments.add(photo)
    store.delete("households", hid)
    st = store.status()
    assert st.records["households"] == 1 and st.records["residents"] == 1 and st.records["visits"] == 0
    assert st.outbox == 4 and st.attachments == 1
    assert isinstance(st, fieldsync.StoreStatus)


# -- opening and creating --------------------------------------------------------

def test_constructor_is_not_the_way_in() -> None:
    with pytest.raises(TypeError):
        Store()
    with pytest.raises(TypeError):
        Store("tablet.fsdb", PIN)


def test_open_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path / "missing.fsdb", PIN)
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path, PIN)


def test_open_non_store_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("网格员工作日志\n" * 200, encoding="utf-8")
    with pytest.raises(NotAStoreError):
        Store.open(text, PIN)


def test_open_other_sqlite_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE people (name TEXT)")
        raw.execute("INSERT INTO people VALUES ('张三')")
    raw.close()
    with pytest.raises(NotAStoreError):
        Store.open(other, PIN)
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)")
        raw.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    raw.close()
    with pytest.raises(NotAStoreError):
        Store.open(other, PIN)


def test_open_does_not_modify_a_foreign_sqlite_file(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE people (name TEXT)")
    raw.close()
    os.chmod(other, 0o644)
    before = other.read_bytes()
    with pytest.raises(NotAStoreError):
        Store.open(other, PIN)
    assert other.read_bytes() == before, "opening a foreign SQLite file must not rewrite it (journal mode)"
    assert stat.S_IMODE(other.stat().st_mode) == 0o644, "opening a foreign file must not change its mode"


def test_create_over_existing_path_raises(store: Store, store_path: Path, fast_kdf: fieldsync.KdfParams,
                                          tmp_path: Path) -> None:
    hid = store.put("households", household())
    with pytest.raises(StoreError):
        Store.create(store_path, "9999", kdf=fast_kdf)
    assert store.get("households", hid)["head_name"] == "张桂兰"
    other = tmp_path / "photo.jpg"
    other.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    with pytest.raises(StoreError):
        Store.create(other, PIN, kdf=fast_kdf)
    assert other.read_bytes() == b"\xff\xd8\xff\xe0jpeg"


def test_short_pin_is_refused_and_leaves_nothing(store_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    with pytest.raises(fieldsync.AuthError):
        Store.create(store_path, "123", kdf=fast_kdf)
    assert not store_path.exists()
    assert not Path(f"{store_path}-wal").exists()


def test_store_file_is_private(store: Store, store_path: Path) -> None:
    store.put("households", household())
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.attachments.folder.stat().st_mode) & 0o077 == 0


def test_closed_store_refuses_writes(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.put("households", household())


def test_context_manager_closes(store_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    with Store.create(store_path, PIN, kdf=fast_kdf) as s:
        s.put("households", household())
    with pytest.raises(StoreError):
        s.put("households", household())
    with Store.open(store_path, PIN) as s2:
        assert s2.count("households") == 1


def test_record_bodies_are_not_json_in_clear(store: Store) -> None:
    hid = store.put("households", household())
    with sqlite3.connect(store.path) as raw:
        grid, body = raw.execute("SELECT grid, body FROM records WHERE id = ?", (hid,)).fetchone()
    assert grid == GRID
    with pytest.raises((UnicodeDecodeError, json.JSONDecodeError)):
        json.loads(body)


def test_local_values_stay_on_the_device_and_are_sealed(store: Store, store_path: Path) -> None:
    before = store.outbox_size()
    store.put_local("draft:visit", {"notes": "独居老人王秀英,血压偏高", "purpose": "独居老人探访"})
    store.put_local("draft:report", {"description": "楼道堆放杂物"})
    store.put_local("draft_other", 1)
    assert store.get_local("draft:visit") == {"notes": "独居老人王秀英,血压偏高", "purpose": "独居老人探访"}
    assert store.local_names("draft:") == ["draft:report", "draft:visit"]  # '_' in a prefix is literal
    assert store.outbox_size() == before  # never synced
    raw = b"".join(p.read_bytes() for p in store_path.parent.glob(store_path.name + "*") if p.is_file())
    assert "血压偏高".encode() not in raw and "楼道堆放杂物".encode() not in raw
    store.delete_local("draft:visit")
    assert store.get_local("draft:visit", "gone") == "gone"


def test_migration_0004_indexes_digests_of_an_older_store(store_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    """A grid's checksum reads a covering index (grid, server_digest); a store from before
    migration 0004 gains it when opened, and the checksum is the same with or without it."""
    store = Store.create(store_path, PIN, kdf=fast_kdf)
    store.put_many("households", [{"grid_id": "g1", "address": f"花园山{i}号", "head_name": "张三"} for i in range(30)])
    store.db.execute("UPDATE records SET server_digest = unicode(substr(id, 2, 1)) * 7919 + unicode(substr(id, 5, 1))")
    with_index = store.grid_checksum("g1")
    assert with_index != 0
    store.db.execute("DROP INDEX records_grid_digest")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_grid_digest_index'")
    store.db.conn.commit()
    assert store.grid_checksum("g1") == with_index  # the same answer from a scan of the table
    store.close()
    again = Store.open(store_path, PIN)
    plan = again.db.execute("EXPLAIN QUERY PLAN SELECT server_digest FROM records "
                            "WHERE grid = 'g1' AND server_digest IS NOT NULL").fetchall()
    assert "COVERING INDEX records_grid_digest" in str(plan)
    assert again.grid_checksum("g1") == with_index
