"""Record kinds: realistic grid-work records validate, bad ones fail naming the field and the problem."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.errors import FieldsyncError, UnknownKindError, ValidationError
from fieldsync.schema import (
    DEFAULT_KINDS,
    REPORT_STATUSES,
    SCHEMA_VERSION,
    Field,
    Kind,
    Registry,
    default_registry,
    normalise,
    valid_id_number,
)

GRID = "wuchang-ldj-hys-03"  # 武昌区粮道街花园山社区第三网格


def gb11643_check_digit(first17: str) -> str:
    """The GB 11643-1999 check character, computed here independently of fieldsync."""
    total = sum(int(d) * (2 ** (17 - i) % 11) for i, d in enumerate(first17))
    check = (12 - total % 11) % 11
    return "X" if check == 10 else str(check)


# 420106: 武汉市武昌区; born 1952-03-08
RESIDENT_ID = "420106195203084" + "42"
RESIDENT_ID += gb11643_check_digit(RESIDENT_ID)
KNOWN_VALID_ID = "11010519491231002X"


def records() -> dict[str, dict[str, Any]]:
    """One realistic record per default kind (fresh copies each call)."""
    return {
        "grids": {
            "id": GRID,
            "name": "花园山社区第三网格",
            "community": "花园山社区",
            "street": "粮道街",
            "workers": ["w-0012", "w-0031"],
        },
        "households": {
            "id": "hh-000417",
            "grid_id": GRID,
            "address": "湖北省武汉市武昌区粮道街花园山社区花园山4号",
            "building": "4",
            "unit": "2",
            "room": "502",
            "head_name": "张桂兰",
            "phone": "027-8888 6666",
            "members": 1,
            "tags": ["低保", "独居老人"],
            "notes": "老人行动不便，每周上门一次。",
            "last_visit": "2024-05-20",
        },
        "residents": {
            "id": "rs-001203",
            "grid_id": GRID,
            "household_id": "hh-000417",
            "name": "张桂兰",
            "id_number": RESIDENT_ID,
            "birth_date": "1952-03-08",
            "gender": "女",
            "relation": "户主",
            "phone": "+86 138-0013-8000",
            "tags": ["独居老人"],
        },
        "visits": {
            "id": "vs-20240531-0007",
            "grid_id": GRID,
            "household_id": "hh-000417",
            "worker_id": "w-0012",
            "visited_at": "2024-05-31T09:30:00+08:00",
            "purpose": "入户走访",
            "notes": "血压偏高，已联系社区医生。",
            "needs": ["助餐", "就医陪护"],
            "follow_up": "2024-06-07",
            "location": {"lat": 30.5436, "lon": 114.3062},
        },
        "reports": {
            "id": "rp-20240531-0002",
            "grid_id": GRID,
            "category": "环境卫生",
            "description": "花园山4号楼下垃圾堆积，已有异味。",
            "location": "花园山4号楼下",
            "attachments": ["att-9f2c"],
            "household_id": "hh-000417",
            "reporter_id": "w-0012",
            "reported_at": "2024-05-31T10:05:00+08:00",
            "status": "submitted",
            "department": "城管",
            "due_at": "2024-06-01T18:00:00+08:00",
            "timeline": [{"at": "2024-05-31T10:05:00+08:00", "status": "submitted"}],
        },
        "tasks": {
            "id": "tk-0091",
            "grid_id": GRID,
            "assignee": "w-0012",
            "kind": "回访",
            "title": "回访张桂兰家用药情况",
            "related": {"household_id": "hh-000417"},
            "due": "2024-06-07",
            "status": "open",
            "notes": "",
        },
    }


# --- the default kinds -------------------------------------------------------


def test_default_kinds_are_the_grid_work_kinds() -> None:
    reg = default_registry()
    grid_work = {"grids", "households", "reports", "residents", "tasks", "visits"}
    assert [k.name for k in DEFAULT_KINDS] == ["grids", "households", "residents", "visits", "reports", "tasks"]
    # A registry may also hold system kinds that sync relies on; the grid-work kinds are all there.
    assert grid_work <= set(reg.names())
    assert reg.names() == sorted(reg.names())
    assert {k.name for k in reg} == set(reg.names())
    assert all(reg.get(k.name) is k for k in DEFAULT_KINDS)
    assert default_registry() is not reg
    assert "households" in reg and "water_meters" not in reg
    assert SCHEMA_VERSION >= 1
    assert "submitted" in REPORT_STATUSES


def test_the_known_valid_id_number_is_valid() -> None:
    assert gb11643_check_digit(KNOWN_VALID_ID[:17]) == "X"
    assert valid_id_number(KNOWN_VALID_ID)
    assert valid_id_number(RESIDENT_ID)


@pytest.mark.parametrize("kind_name", sorted(records()))
def test_each_default_kind_validates_a_realistic_record(kind_name: str) -> None:
    kind = default_registry().get(kind_name)
    record = records()[kind_name]
    original = copy.deepcopy(record)
    out = kind.validate(record)
    assert out == original
    assert out is not record
    assert record == original  # validation does not modify its input
    assert kind.grid_of(out) == GRID


def test_minimal_records_with_only_required_fields_validate() -> None:
    reg = default_registry()
    minimal = {
        "grids": {"id": GRID, "name": "第三网格"},
        "households": {"grid_id": GRID, "address": "花园山4号"},
        "residents": {"grid_id": GRID, "household_id": "hh-1", "name": "李四"},
        "visits": {
            "grid_id": GRID,
            "household_id": "hh-1",
            "worker_id": "w-1",
            "visited_at": "2024-05-31T09:30:00",
            "purpose": "走访",
        },
        "reports": {"grid_id": GRID, "category": "安全隐患", "description": "楼道堆放杂物"},
        "tasks": {"grid_id": GRID, "assignee": "w-1", "kind": "核查"},
    }
    for name, record in minimal.items():
        assert reg.get(name).validate(record) == record


def test_valid_variants_are_accepted() -> None:
    reg = default_registry()
    residents = reg.get("residents")
    r = records()["residents"]
    r["id_number"] = KNOWN_VALID_ID.lower()  # a lower-case x is still valid
    assert residents.validate(r)["id_number"] == KNOWN_VALID_ID.lower()
    r["phone"] = "１３８ ００１３ ８０００"  # full-width digits typed on a Chinese keyboard
    residents.validate(r)
    visits = reg.get("visits")
    v = records()["visits"]
    v["location"] = {"lat": -90, "lon": 180}
    visits.validate(v)
    v["location"] = "花园山4号门口"
    visits.validate(v)
    v["location"] = None  # optional fields may be absent or null
    visits.validate(v)


def test_search_fields_name_the_blind_indexed_fields() -> None:
    reg = default_registry()
    assert reg.get("residents").search_fields() == {"name": "name", "id_number": "id_number", "phone": "phone"}
    assert reg.get("households").search_fields() == {"head_name": "name", "phone": "phone"}
    assert reg.get("tasks").search_fields() == {}


# --- validation errors ----------------------------------------------------


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        record[name] = value

    return change


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        del record[name]

    return change


BAD_ID = RESIDENT_ID[:17] + ("0" if RESIDENT_ID[17] != "0" else "1")

ERROR_CASES = [
    ("households", _drop("address"), "address", "is required"),
    ("households", _set("address", ""), "address", "is required"),
    ("households", _set("address", None), "address", "is required"),
    ("households", _drop("grid_id"), "grid_id", "is required"),
    ("residents", _drop("name"), "name", "is required"),
    ("visits", _drop("visited_at"), "visited_at", "is required"),
    ("households", _set("members", "3"), "members", "must be a whole number"),
    ("households", _set("members", 2.5), "members", "must be a whole number"),
    ("households", _set("members", True), "members", "must be a whole number"),
    ("households", _set("head_name", 123), "head_name", "must be text"),
    ("households", _set("last_visit", "2024-02-30"), "last_visit", "must be a date like 2024-05-31"),
    ("households", _set("last_visit", "昨天"), "last_visit", "must be a date"),
    ("households", _set("last_visit", 20240520), "last_visit", "must be a date"),
    ("visits", _set("visited_at", "2024-05-31 25:00"), "visited_at", "must be a date and time"),
    ("residents", _set("id_number", BAD_ID), "id_number", "check digit"),
    ("residents", _set("id_number", RESIDENT_ID[:15]), "id_number", "18-character"),
    ("residents", _set("phone", "12345"), "phone", "7-15 digits"),
    ("residents", _set("phone", "打电话"), "phone", "7-15 digits"),
    ("residents", _set("gender", "M"), "gender", "must be one of 男, 女"),
    ("reports", _set("status", "closed"), "status", "must be one of submitted"),
    ("households", _set("notes", "很" * 2001), "notes", "must be at most 2000 characters"),
    ("residents", _set("name", "王" * 51), "name", "must be at most 50 characters"),
    ("households", _set("tags", "低保"), "tags", "must be a list of non-empty text tags"),
    ("households", _set("tags", ["低保", ""]), "tags", "must be a list of non-empty text tags"),
    ("households", _set("tags", ["低保", 3]), "tags", "must be a list of non-empty text tags"),
    ("visits", _set("location", {"lat": 91, "lon": 114.3}), "location", "lat/lon out of range"),
    ("visits", _set("location", {"lat": 30.5, "lon": -181}), "location", "lat/lon out of range"),
    ("visits", _set("location", {"lat": "30.5", "lon": 114.3}), "location", "needs numeric lat and lon"),
    ("visits", _set("location", {"lat": True, "lon": 114.3}), "location", "needs numeric lat and lon"),
    ("visits", _set("location", {"latitude": 30.5}), "location", "needs numeric lat and lon"),
    ("visits", _set("location", "   "), "location", "must not be empty"),
    ("visits", _set("location", [30.5, 114.3]), "location", "must be text or {lat, lon}"),
    ("reports", _set("timeline", "submitted"), "timeline", "must be a list"),
    ("tasks", _set("related", "hh-000417"), "related", "must be an object"),
    ("tasks", _set("status", "finished"), "status", "must be one of open, done, cancelled"),
    ("households", _set("id", "户-1"), "id", "must be 1-64 characters"),
    ("households", _set("id", 417), "id", "must be 1-64 characters"),
    ("households", _set("id", "h" * 65), "id", "must be 1-64 characters"),
    ("households", _set("id", "hh-000417\n"), "id", "must be 1-64 characters"),
    ("households", _set("grid_id", "花园山 3"), "grid_id", "must be a grid id"),
    ("households", _set("grid_id", "wuchang-03\n"), "grid_id", "must be a grid id"),
    ("grids", _set("id", "grid 3"), "id", "must be 1-64 characters"),
]


@pytest.mark.parametrize(
    ("kind_name", "change", "field", "problem"),
    ERROR_CASES,
    ids=[f"{k}.{f}:{p[:24]}" for k, _, f, p in ERROR_CASES],
)
def test_validation_error_names_the_field_and_the_problem(
    kind_name: str, change: Callable[[dict[str, Any]], None], field: str, problem: str
) -> None:
    kind = default_registry().get(kind_name)
    record = records()[kind_name]
    change(record)
    with pytest.raises(ValidationError) as info:
        kind.validate(record)
    err = info.value
    assert isinstance(err, FieldsyncError)
    assert err.kind == kind_name
    assert err.field == field
    assert problem in err.problem
    assert str(err) == f"{kind_name}.{field}: {err.problem}"


@pytest.mark.parametrize("value", ["hh-000417\n", "\nhh", "hh\r\n"])
def test_record_ids_with_line_breaks_are_rejected(value: str) -> None:
    # An id travels into SQL keys, file names and logs: a line break must not slip through.
    households = default_registry().get("households")
    record = records()["households"]
    record["id"] = value
    with pytest.raises(ValidationError) as info:
        households.validate(record)
    assert info.value.field == "id"


def test_errors_do_not_echo_personal_data() -> None:
    residents = default_registry().get("residents")
    record = records()["residents"]
    record["id_number"] = BAD_ID
    with pytest.raises(ValidationError) as info:
        residents.validate(record)
    assert BAD_ID not in str(info.value)
    record = records()["residents"]
    record["phone"] = "138001"
    with pytest.raises(ValidationError) as info:
        residents.validate(record)
    assert "138001" not in str(info.value)


@pytest.mark.parametrize("record", [None, "张桂兰", ["hh-1"], 42])
def test_a_record_must_be_an_object(record: Any) -> None:
    with pytest.raises(ValidationError) as info:
        default_registry().get("households").validate(record)
    assert info.value.field == "*"
    assert "must be an object" in str(info.value)


def test_first_problem_is_reported_in_declaration_order() -> None:
    households = default_registry().get("households")
    record = records()["households"]
    del record["address"]
    record["members"] = "many"
    with pytest.raises(ValidationError) as info:
        households.validate(record)
    assert info.value.field == "address"


def test_grid_of_requires_the_grid() -> None:
    households = default_registry().get("households")
    with pytest.raises(ValidationError) as info:
        households.grid_of({"address": "花园山4号"})
    assert info.value.field == "grid_id"
    grids = default_registry().get("grids")
    assert grids.grid_of({"id": GRID, "name": "x"}) == GRID


# --- unknown fields -------------------------------------------------------

HOUSEHOLD_KEYS = frozenset(records()["households"])


def test_unknown_fields_are_kept() -> None:
    households = default_registry().get("households")
    record = records()["households"]
    record["heating"] = "集中供暖"  # a field a newer server added
    record["insurance"] = {"type": "城乡居民医保", "paid_until": "2024-12-31"}
    record["_server_rev"] = 7
    out = households.validate(record)
    assert out["heating"] == "集中供暖"
    assert out["insurance"] == {"type": "城乡居民医保", "paid_until": "2024-12-31"}
    assert out["_server_rev"] == 7
    assert out == record


@settings(max_examples=200, print_blob=True)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: k not in HOUSEHOLD_KEYS),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3)),
        max_size=5,
    )
)
def test_any_unknown_fields_survive_validation(extra: dict[str, Any]) -> None:
    households = default_registry().get("households")
    record = {**records()["households"], **extra}
    out = households.validate(record)
    for k, v in extra.items():
        assert out[k] == v
    assert set(out) == set(record)


# --- registry and kinds defined by the app ---------------------------------


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


WATER_METERS = Kind(
    "water_meters",
    {
        "grid_id": Field(required=True),
        "household_id": Field(required=True),
        "meter_no": Field(required=True, search="text", max_length=30),
        "reading": Field("number", required=True, check=_non_negative),
        "read_on": Field("date"),
        "owner_phone": Field(search="phone", description="户主联系电话"),
    },
    description="A household's water meter reading.",
)


def test_a_kind_defined_by_the_app_registers_in_a_copy_and_validates() -> None:
    base = default_registry()
    reg = base.copy()
    assert reg.register(WATER_METERS) is WATER_METERS
    assert reg.get("water_meters") is WATER_METERS
    assert "water_meters" in reg
    assert "water_meters" not in base  # the copy is independent
    assert "water_meters" not in default_registry()
    assert reg.get("households") is base.get("households")

    record = {
        "id": "wm-0417",
        "grid_id": GRID,
        "household_id": "hh-000417",
        "meter_no": "WC-2023-0417",
        "reading": 1287.5,
        "read_on": "2024-05-31",
        "owner_phone": "13800138000",
        "photo": "att-55aa",  # unknown to this kind: kept
    }
    kind = reg.get("water_meters")
    assert kind.validate(record) == record
    assert kind.grid_of(record) == GRID
    assert kind.search_fields() == {"meter_no": "text", "owner_phone": "phone"}

    with pytest.raises(ValidationError) as info:
        kind.validate({**record, "reading": -3})
    assert (info.value.kind, info.value.field) == ("water_meters", "reading")
    assert "must not be negative" in str(info.value)
    with pytest.raises(ValidationError) as info:
        kind.validate({**record, "meter_no": "W" * 31})
    assert info.value.field == "meter_no"


def test_registering_the_same_kind_twice_is_harmless() -> None:
    reg = Registry([WATER_METERS])
    reg.register(WATER_METERS)
    reg.register(Kind("water_meters", dict(WATER_METERS.fields), description=WATER_METERS.description))
    assert reg.names().count("water_meters") == 1
    assert reg.get("water_meters") == WATER_METERS


def test_registering_a_different_kind_under_a_taken_name_raises() -> None:
    reg = default_registry().copy()
    reg.register(WATER_METERS)
    other = Kind("water_meters", {"grid_id": Field(required=True), "reading": Field("integer")})
    with pytest.raises(ValueError, match="water_meters"):
        reg.register(other)
    assert reg.get("water_meters") is WATER_METERS
    impostor = Kind("households", {"grid_id": Field(required=True)})
    with pytest.raises(ValueError, match="households"):
        reg.register(impostor)
    assert reg.get("households") is default_registry().get("households")
    with pytest.raises(ValueError):
        Registry([WATER_METERS, other])


def test_unknown_kind_error_names_the_known_kinds() -> None:
    reg = default_registry()
    with pytest.raises(UnknownKindError) as info:
        reg.get("water_meters")
    message = str(info.value)
    assert isinstance(info.value, FieldsyncError)
    assert "water_meters" in message
    for name in ("grids", "households", "residents", "visits", "reports", "tasks"):
        assert name in message
    with pytest.raises(UnknownKindError, match="households"):
        Registry().get("households")


@pytest.mark.parametrize("name", ["_deleted", "_id", "_anything", "id"])
def test_reserved_field_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        Kind("water_meters", {"grid_id": Field(), name: Field()})


@pytest.mark.parametrize("name", ["WaterMeters", "1meters", "water-meters", "", "水表", "w" * 41])
def test_bad_kind_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="kind name"):
        Kind(name, {"grid_id": Field()})


def test_bad_field_declarations_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown field type"):
        Field("string")
    with pytest.raises(ValueError, match="unknown search normaliser"):
        Field(search="pinyin")
    assert Field().type == "text"


# --- normalise and ID numbers -----------------------------------------------


@pytest.mark.parametrize(
    ("how", "a", "b"),
    [
        ("phone", "+86 138-0013-8000", "13800138000"),
        ("phone", "86 13800138000", "13800138000"),
        ("phone", "(027) 8888-6666", "02788886666"),
        ("phone", "１３８００１３８０００", "13800138000"),
        ("name", "张 三", "张三"),
        ("name", " 张　三 ", "张三"),  # an ideographic (full-width) space
        ("name", "阿卜杜·热合曼", "阿卜杜热合曼"),
        ("name", "Li Lei", "lilei"),
        ("id_number", "11010519491231002x", "11010519491231002X"),
        ("id_number", "110105 19491231 002X", "11010519491231002X"),
        ("id_number", "１１０１０５１９４９１２３１００２ｘ", "11010519491231002X"),
        ("text", "  Hua  Yuan\tShan ", "hua yuan shan"),
        ("text", "ＷＣ－２０２３", "wc-2023"),
    ],
)
def test_normalise(how: str, a: str, b: str) -> None:
    assert normalise(how, a) == b
    assert normalise(how, a) == normalise(how, b)


def test_normalise_keeps_different_values_apart() -> None:
    assert normalise("name", "张三") != normalise("name", "张叁")
    assert normalise("phone", "13800138000") != normalise("phone", "13800138001")
    assert normalise("phone", "8613800138000") == "13800138000"  # 13 digits starting 86: country code
    assert normalise("phone", "862788886666") == "862788886666"  # 12 digits: not stripped


def test_normalise_unknown_normaliser() -> None:
    with pytest.raises(KeyError):
        normalise("pinyin", "zhang san")


@settings(max_examples=200, print_blob=True)
@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_valid_id_number_agrees_with_gb11643(first17: str) -> None:
    good = gb11643_check_digit(first17)
    assert valid_id_number(first17 + good)
    assert valid_id_number(first17 + good.lower())
    for wrong in "0123456789X":
        if wrong != good:
            assert not valid_id_number(first17 + wrong)


@pytest.mark.parametrize(
    "value",
    ["", "11010519491231002", "11010519491231002XX", "11010519491231002Y", "1101051949123100X2", "A1010519491231002X"],
)
def test_valid_id_number_rejects_malformed(value: str) -> None:
    assert not valid_id_number(value)
