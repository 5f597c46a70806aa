"""The service side of the household and visit screens (no Kivy): masking, ages, the visit form, drafts."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

import fieldsync
from fieldsync import Store
from fieldsync.schema import default_registry
from terminal_app.i18n import keys, load_catalog, tr
from terminal_app.services.forms import (
    FOLLOW_UP_BAD_DATE,
    FOLLOW_UP_PAST,
    LOCATION_MAX,
    VISIT_NEEDS,
    VISIT_PURPOSES,
    Drafts,
    VisitForm,
    follow_up_after,
    parse_follow_up,
    problem_message,
    submit_visit,
    visit_draft_name,
)
from terminal_app.services.grid import GridModel, age_on, first_line, household_place, iso_day, mask_id_number

PIN = "258025"
TODAY = date(2024, 6, 15)
GRID = "wc-hhl-ply-01"
HOUSEHOLD = {"id": "h-1", "grid_id": GRID, "address": "武昌区黄鹤楼街道彭刘杨社区14栋2单元302",
             "building": "14栋", "unit": "2单元", "room": "302", "head_name": "谭伟", "phone": "15562863307"}


@pytest.fixture
def store(store_path: Path, fast_kdf: fieldsync.KdfParams) -> Store:
    s = Store.create(store_path, PIN, kdf=fast_kdf)
    s.put("households", HOUSEHOLD)
    return s


def _submit(store: Store, form: VisitForm, **kwargs: object) -> str:
    args = {"grid_id": GRID, "household_id": "h-1", "worker_id": "w-lijing", "today": TODAY}
    args.update(kwargs)
    return submit_visit(store, form, **args)  # type: ignore[arg-type]


# -- household detail helpers ----------------------------------------------------


@pytest.mark.parametrize(("raw", "masked"), [
    ("420106198508120020", "420106********0020"),
    ("42010619850812002X", "420106********002X"),
    (" 420106 198508120020 ", "420106********0020"),
    ("1234567", "*****67"),
    ("123", "***"),
    ("", ""),
])
def test_id_number_is_masked_keeping_area_code_and_last_four(raw: str, masked: str) -> None:
    assert mask_id_number(raw) == masked


def test_masked_id_number_never_shows_the_birth_date() -> None:
    assert "19850812" not in mask_id_number("420106198508120020")


@pytest.mark.parametrize(("born", "age"), [
    ("1985-06-15", 39),  # birthday today
    ("1985-06-16", 38),  # birthday tomorrow
    ("1985-06-14", 39),
    ("2000-02-29", 24),
    ("2024-06-15", 0),
    ("2024-06-16", None),  # in the future: a typing error, not an age
    ("1985/06/15", None),
    ("", None),
    (None, None),
    (19850615, None),
])
def test_age_on(born: object, age: int | None) -> None:
    assert age_on(born, TODAY) == age


def test_age_on_leap_day_birthday_in_a_common_year() -> None:
    assert age_on("2000-02-29", date(2023, 2, 28)) == 22
    assert age_on("2000-02-29", date(2023, 3, 1)) == 23


def test_first_line_skips_blank_lines_and_trims() -> None:
    assert first_line("\n  \n  老人独居，身体尚可。 \n叮嘱按时服药") == "老人独居，身体尚可。"
    assert first_line("") == ""
    assert first_line(None) == ""
    assert first_line(["not", "text"]) == ""


def test_iso_day_reads_the_day_in_the_records_own_offset() -> None:
    assert iso_day("2024-05-04T23:45:00+08:00") == "2024-05-04"
    assert iso_day("2024-05-04") == "2024-05-04"
    assert iso_day("yesterday") == ""
    assert iso_day(None) == ""


def test_household_place_falls_back_to_the_address() -> None:
    assert household_place(HOUSEHOLD) == "14栋2单元302"
    assert household_place({"address": "武昌区粮道街花园山社区"}) == "武昌区粮道街花园山社区"
    assert household_place({}) == ""


# -- the visit form ------------------------------------------------------------------


def test_visit_draft_name_is_per_household() -> None:
    assert visit_draft_name("h-1") == "visit:h-1"
    assert visit_draft_name("h-1") != visit_draft_name("h-2")


def test_visit_form_round_trips_through_a_draft() -> None:
    form = VisitForm(purpose="低保复核", notes="收入无变化\n材料齐全", needs=["助餐", "医疗救助"],
                     follow_up="2024-07-01", location="14栋门口")
    assert VisitForm.from_draft(form.to_draft()) == form


@pytest.mark.parametrize("draft", [None, [], "text", 3, {"purpose": 5, "needs": "助餐", "notes": None}])
def test_malformed_draft_gives_an_empty_form_not_an_error(draft: object) -> None:
    form = VisitForm.from_draft(draft)
    assert form == VisitForm()
    assert form.is_empty()


def test_draft_keeps_the_good_fields_of_a_partly_malformed_draft() -> None:
    form = VisitForm.from_draft({"purpose": "政策宣传", "needs": ["助餐", 7, "", "助餐", "心理疏导"], "extra": 1})
    assert form.purpose == "政策宣传"
    assert form.needs == ["助餐", "心理疏导"]


def test_whitespace_only_form_is_empty() -> None:
    assert VisitForm(notes="  \n", location=" ", follow_up=" ").is_empty()
    assert not VisitForm(needs=["助餐"]).is_empty()
    assert not VisitForm(purpose="社保年审").is_empty()


def test_follow_up_quick_buttons() -> None:
    assert follow_up_after(TODAY, 7) == "2024-06-22"
    assert follow_up_after(date(2024, 12, 20), 30) == "2025-01-19"


@pytest.mark.parametrize(("typed", "stored"), [
    ("", None),
    ("   ", None),
    ("2024-07-01", "2024-07-01"),
    ("2024-7-1", "2024-07-01"),
    ("2024/7/1", "2024-07-01"),
    ("2024.07.01", "2024-07-01"),
    ("２０２４－０７－０１", "2024-07-01"),  # full-width, as a Chinese keyboard may type it
    (" 2024-06-15 ", "2024-06-15"),  # today is allowed
])
def test_parse_follow_up_accepts(typed: str, stored: str | None) -> None:
    assert parse_follow_up(typed, TODAY) == stored


@pytest.mark.parametrize("typed", ["2024-13-01", "2024-02-30", "01-07-2024", "下周一", "2024-07", "20240701"])
def test_parse_follow_up_rejects_what_is_not_a_date(typed: str) -> None:
    with pytest.raises(fieldsync.ValidationError) as err:
        parse_follow_up(typed, TODAY)
    assert (err.value.field, err.value.problem) == ("follow_up", FOLLOW_UP_BAD_DATE)


def test_parse_follow_up_rejects_a_past_date() -> None:
    with pytest.raises(fieldsync.ValidationError) as err:
        parse_follow_up("2024-06-14", TODAY)
    assert (err.value.field, err.value.problem) == ("follow_up", FOLLOW_UP_PAST)


def test_submit_visit_saves_a_clean_record(store: Store) -> None:
    form = VisitForm(purpose="独居老人探访", notes="  老人独居，血压偏高。\n叮嘱服药 ", needs=["医疗救助", "助餐"],
                     follow_up="2024-6-22", location=" 14栋门口 ")
    vid = _submit(store, form, visited_at="2024-06-15T10:30:00+08:00")
    visit = store.get("visits", vid)
    assert visit["grid_id"] == GRID and visit["household_id"] == "h-1" and visit["worker_id"] == "w-lijing"
    assert visit["purpose"] == "独居老人探访"
    assert visit["notes"] == "老人独居，血压偏高。\n叮嘱服药"
    assert visit["needs"] == ["助餐", "医疗救助"]  # the order of VISIT_NEEDS, whatever order they were tapped in
    assert visit["follow_up"] == "2024-06-22"
    assert visit["location"] == "14栋门口"
    assert store.outbox_size() == 2  # the household and the visit


def test_submit_visit_leaves_optional_fields_out(store: Store) -> None:
    visit = store.get("visits", _submit(store, VisitForm(purpose="政策宣传")))
    assert not {"notes", "needs", "follow_up", "location"} & set(visit)
    assert default_registry().get("visits").validate(visit)


@pytest.mark.parametrize(("form", "field", "problem"), [
    (VisitForm(notes="只写了情况"), "purpose", "is required"),
    (VisitForm(purpose="  "), "purpose", "is required"),
    (VisitForm(purpose="社保年审", follow_up="明天"), "follow_up", FOLLOW_UP_BAD_DATE),
    (VisitForm(purpose="社保年审", follow_up="2024-01-01"), "follow_up", FOLLOW_UP_PAST),
    (VisitForm(purpose="社保年审", location="门" * (LOCATION_MAX + 1)), "location",
     f"must be at most {LOCATION_MAX} characters"),
    (VisitForm(purpose="社保年审", notes="字" * 4001), "notes", "must be at most 4000 characters"),
])
def test_submit_visit_refuses_a_bad_form_and_saves_nothing(store: Store, form: VisitForm, field: str,
                                                          problem: str) -> None:
    before = store.outbox_size()
    with pytest.raises(fieldsync.ValidationError) as err:
        _submit(store, form)
    assert (err.value.field, err.value.problem) == (field, problem)
    assert store.count("visits") == 0
    assert store.outbox_size() == before


def test_submit_visit_without_an_enrolled_worker_names_the_field(store: Store) -> None:
    with pytest.raises(fieldsync.ValidationError) as err:
        _submit(store, VisitForm(purpose="社保年审"), worker_id="")
    assert err.value.field == "worker_id"


def test_saved_visit_comes_first_in_the_household_detail(store: Store) -> None:
    _submit(store, VisitForm(purpose="社保年审"), visited_at="2024-05-01T09:00:00+08:00")
    new = _submit(store, VisitForm(purpose="低保复核"), visited_at="2024-06-15T09:00:00+08:00")
    detail = GridModel(store, TODAY).detail("h-1")
    assert [v["id"] for v in detail.visits][0] == new
    assert [v["purpose"] for v in detail.visits] == ["低保复核", "社保年审"]


# -- drafts ------------------------------------------------------------------------------


def test_visit_draft_survives_closing_the_store_and_stays_encrypted(store: Store, store_path: Path,
                                                                  fast_kdf: fieldsync.KdfParams) -> None:
    form = VisitForm(purpose="矛盾调解", notes="邻里因楼道堆放杂物争执谭伟家", needs=["心理疏导"])
    Drafts(store).save(visit_draft_name("h-1"), form.to_draft())
    store.close()
    raw = b"".join(p.read_bytes() for p in store_path.parent.glob(store_path.name + "*") if p.is_file())
    assert "谭伟家".encode() not in raw and "矛盾调解".encode() not in raw
    reopened = Store.open(store_path, PIN)
    drafts = Drafts(reopened)
    assert VisitForm.from_draft(drafts.load(visit_draft_name("h-1"))) == form
    assert drafts.load(visit_draft_name("h-2")) == {}
    drafts.clear(visit_draft_name("h-1"))
    assert VisitForm.from_draft(drafts.load(visit_draft_name("h-1"))).is_empty()


# -- messages -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _catalog() -> None:
    load_catalog()


@pytest.mark.parametrize(("problem", "key", "values"), [
    ("is required", "common.required", {}),
    (FOLLOW_UP_BAD_DATE, "visit.problem.bad_date", {}),
    (FOLLOW_UP_PAST, "visit.problem.past", {}),
    ("must be at most 4000 characters", "visit.problem.too_long", {"n": 4000}),
    ("must be one of 男, 女", "visit.problem.choice", {}),
    ("needs numeric lat and lon", "visit.problem.other", {"problem": "needs numeric lat and lon"}),
])
def test_problem_message(problem: str, key: str, values: dict[str, object]) -> None:
    assert problem_message(problem) == (key, values)
    for lang in ("zh", "en"):
        text = tr(key, lang, field="F", **values)
        assert "F" in text and "{" not in text


def test_every_purpose_need_and_visit_field_has_both_languages() -> None:
    known = set(keys())
    wanted = [f"visit.purpose.{p}" for p in VISIT_PURPOSES] + [f"visit.need.{n}" for n in VISIT_NEEDS]
    wanted += [f"visit.field.{f}" for f in default_registry().get("visits").fields]
    assert not [k for k in wanted if k not in known]
    for key in wanted:
        assert tr(key, "zh") and tr(key, "en") and tr(key, "en") != key
    # English is not Chinese copied over (the purposes are stored in Chinese, shown translated).
    assert all(tr(f"visit.purpose.{p}", "en") != p for p in VISIT_PURPOSES)
