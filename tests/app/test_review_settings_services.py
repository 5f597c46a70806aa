"""Services behind the review and settings screens (no Kivy): rejections, conflicts, PIN change, settings file.

Rejections and conflicts come from a real in-process district server, the
way a tablet meets them: a household written into a grid the worker does
not have, a report created as ``resolved``, a field only the command centre
sets, and the same phone number changed on two tablets while offline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

import fieldsync
from fieldsync import KdfParams, Store
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import ASGITransport
from server_stub.app import create_app
from server_stub.district import District
from server_stub.replica import Actor
from terminal_app.config import AppConfig
from terminal_app.services import review
from terminal_app.services.session import Session

PIN = "258025"
KDF = KdfParams(n=2**10, r=8, p=1)
HOUSEHOLD = {"id": "h1", "grid_id": "g1", "address": "彭刘杨路12号", "building": "10栋", "unit": "1单元",
             "room": "101", "head_name": "孙宇", "phone": "18100006422", "members": 3}


class Tablet:
    def __init__(self, store: Store, transport: ASGITransport) -> None:
        self.store = store
        self.client = SyncClient(store, transport, sleep=lambda s: None)

    def sync(self) -> fieldsync.sync.SyncResult:
        return self.client.sync()


@pytest.fixture
def district(tmp_path: Path) -> Iterator[District]:
    d = District(f"sqlite:///{tmp_path / 'district.db'}")
    d.add_worker("w1", "李璟")
    d.assign("w1", "g1")
    d.add_worker("w2", "小张")
    d.assign("w2", "g2")
    admin = Actor("admin", "admin")
    d.write_many(admin, "grids", [{"id": "g1", "name": "彭刘杨社区第一网格"}, {"id": "g2", "name": "花园山社区第三网格"}])
    d.write_many(admin, "households", [HOUSEHOLD])
    d.write_many(admin, "reports", [{"id": "rep-old", "grid_id": "g1", "category": "安全隐患", "description": "楼道堆物",
                                     "status": "submitted", "reporter_id": "w1"}])
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def transport(district: District) -> Iterator[ASGITransport]:
    t = ASGITransport(create_app(district))
    yield t
    t.close()


@pytest.fixture
def tablet(district: District, transport: ASGITransport, tmp_path: Path):
    made = iter(range(1, 100))

    def make(worker: str = "w1", ahead_ms: int = 0) -> Tablet:
        wall = (lambda: time.time_ns() // 1_000_000 + ahead_ms) if ahead_ms else None
        store = Store.create(tmp_path / f"{worker}-{next(made)}.fsdb", PIN, kdf=KDF, wall=wall)
        code, _ = district.issue_code(worker)
        enroll(store, "http://in-process", code, transport=transport)
        t = Tablet(store, transport)
        t.sync()
        return t

    return make


def _refused(tablet: Tablet) -> dict[str, review.ReviewItem]:
    """Three refused changes of different kinds, synced; keyed by rejection code."""
    s = tablet.store
    s.put("households", {"id": "h-else", "grid_id": "g2", "address": "粮道街3栋", "head_name": "周建国"})
    s.put("reports", {"id": "rep-new", "grid_id": "g1", "category": "违规张贴广告", "description": "小广告",
                      "status": "resolved"})
    s.put("reports", {"id": "rep-old", "department": "城管"})
    result = tablet.sync()
    assert result.rejected == 3
    items = {i.code: i for i in review.review_items(s) if i.kind == "rejection"}
    assert set(items) == {"out_of_scope", "transition_not_allowed", "field_not_allowed"}
    return items


# -- rejections ----------------------------------------------------------------------------------------

def test_rejections_are_listed_with_what_was_sent(tablet) -> None:
    t = tablet()
    items = _refused(t)
    scope = items["out_of_scope"]
    assert (scope.collection, scope.record_id, scope.field) == ("households", "h-else", "grid_id")
    assert scope.values == {"grid_id": "g2", "address": "粮道街3栋", "head_name": "周建国"}
    status = items["transition_not_allowed"]
    assert (status.field, status.values["status"]) == ("status", "resolved")
    assert items["field_not_allowed"].values == {"department": "城管"}
    assert review.open_counts(t.store) == (3, 0)
    assert all(review.can_resubmit(i) for i in items.values())


def test_resubmitting_a_fixed_rejection_reaches_the_server(tablet, district: District) -> None:
    t = tablet()
    items = _refused(t)
    s = t.store
    grid_item, status_item = items["out_of_scope"], items["transition_not_allowed"]
    assert review.field_choices(s, grid_item) == ["g1"]  # only the tablet's own grids
    assert review.field_choices(s, status_item) == ["submitted"]  # a new report can only be submitted
    review.resubmit_rejection(s, int(grid_item.key), {"grid_id": "g1"})
    review.resubmit_rejection(s, int(status_item.key), {"status": "submitted"})
    # A field the worker may not set is resubmitted without it: nothing is left to send.
    dept = items["field_not_allowed"]
    review.resubmit_rejection(s, int(dept.key), {"department": review.parse_input(s, "reports", "department", "")})
    assert review.open_counts(s) == (0, 0)
    t.sync()
    assert district.get("households", "h-else")["grid_id"] == "g1"
    assert district.get("households", "h-else")["head_name"] == "周建国"
    assert district.get("reports", "rep-new")["status"] == "submitted"
    assert district.get("reports", "rep-old").get("department") is None
    assert s.rejections() == []


def test_an_invalid_correction_is_refused_and_nothing_is_saved(tablet) -> None:
    t = tablet()
    items = _refused(t)
    s = t.store
    before = s.outbox_size()
    seq = int(items["out_of_scope"].key)
    with pytest.raises(fieldsync.ValidationError) as err:
        review.resubmit_rejection(s, seq, {"grid_id": "g1", "phone": "12"})
    assert err.value.field == "phone"
    assert review.problem_key(err.value.problem) == ("review.problem.phone", {})
    assert s.outbox_size() == before
    assert [r.seq for r in s.rejections()].count(seq) == 1, "the rejection stays open"
    with pytest.raises(fieldsync.RecordNotFound):
        s.get("households", "h-else")


def test_dismissing_a_rejection(tablet) -> None:
    t = tablet()
    items = _refused(t)
    review.dismiss_rejection(t.store, int(items["field_not_allowed"].key))
    assert review.open_counts(t.store) == (2, 0)
    assert {i.code for i in review.review_items(t.store)} == {"out_of_scope", "transition_not_allowed"}


def test_rejections_that_one_field_cannot_fix_are_only_dismissed() -> None:
    item = review.ReviewItem("rejection", "7", "photos", "p1", None, "unknown_kind", "no kind", {"x": 1})
    assert not review.can_resubmit(item)
    scope = review.ReviewItem("rejection", "8", "households", "h1", None, "out_of_scope", "not yours", {})
    assert not review.can_resubmit(scope)
    conflict = review.ReviewItem("conflict", "c1", "households", "h1", "phone", "conflict", "", {})
    assert not review.can_resubmit(conflict)


# -- conflicts -------------------------------------------------------------------------------------------

def _conflict(tablet) -> tuple[Tablet, Tablet, review.ReviewItem]:
    a, b = tablet(), tablet(ahead_ms=2000)  # b's clock is ahead, so b's write is the later one
    a.store.put("households", {"id": "h1", "phone": "13800138001"})
    b.store.put("households", {"id": "h1", "phone": "13900139002"})
    a.sync()
    b.sync()
    a.sync()
    (item,) = [i for i in review.review_items(a.store) if i.kind == "conflict"]
    return a, b, item


def test_a_conflict_shows_both_values_and_who_wrote_them(tablet) -> None:
    a, b, item = _conflict(tablet)
    assert (item.collection, item.record_id, item.field) == ("households", "h1", "phone")
    assert item.values == {"kept": "13900139002", "lost": "13800138001"}
    assert review.label_of(a.store, item) == "10栋1单元101"
    log = a.store.get("conflicts", item.key)
    assert review.stamp_origin(a.store, log["lost_stamp"])[0] is True  # this tablet's value was overwritten
    assert review.stamp_origin(a.store, log["kept_stamp"])[0] is False
    assert review.stamp_origin(b.store, log["kept_stamp"])[0] is True
    assert review.stamp_origin(a.store, "garbage") == (None, None)
    assert review.open_counts(a.store) == (0, 1)


def test_keeping_a_conflict_closes_it_everywhere(tablet, district: District) -> None:
    a, b, item = _conflict(tablet)
    review.keep_conflict(a.store, item.key)
    assert review.review_items(a.store) == []
    a.sync()
    b.sync()
    assert district.get("households", "h1")["phone"] == "13900139002"
    assert district.get("conflicts", item.key)["status"] == "kept"
    assert [i for i in review.review_items(b.store) if i.kind == "conflict"] == []


def test_restoring_a_conflict_writes_the_overwritten_value_back(tablet, district: District) -> None:
    a, b, item = _conflict(tablet)
    lost = "13800138001"
    review.restore_conflict(a.store, item.key)
    assert a.store.get("households", "h1")["phone"] == lost
    a.sync()
    b.sync()
    assert district.get("households", "h1")["phone"] == lost
    assert b.store.get("households", "h1")["phone"] == lost
    assert district.get("conflicts", item.key)["status"] == "restored"


# -- words and values --------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem, expected", [
    ("is required", ("review.problem.required", {})),
    ("households.phone: must be a phone number of 7-15 digits", ("review.problem.phone", {})),
    ("must be at most 50 characters", ("review.problem.too_long", {"n": "50"})),
    ("must be one of 男, 女", ("review.problem.choices", {"choices": "男, 女"})),
    ("is not a valid 18-character ID number (check digit)", ("review.problem.id_number", {})),
    ("must be a date like 2024-05-31", ("review.problem.date", {})),
    ("something new", ("review.problem.other", {"problem": "something new"})),
])
def test_problem_key(problem: str, expected: tuple[str, dict[str, str]]) -> None:
    assert review.problem_key(problem) == expected


def test_every_problem_and_reason_has_both_languages() -> None:
    from terminal_app.i18n import keys, load_catalog, tr

    load_catalog()
    known = set(keys())
    names = {name for _, name in review._PROBLEMS} | {"other"}
    for name in names:
        assert f"review.problem.{name}" in known
    for code in (*review.FIXABLE_CODES, "unknown_kind", "other"):
        assert f"review.reason.{code}" in known
    for kind in ("households", "residents", "visits", "reports", "tasks", "grids", "conflicts"):
        assert tr(f"settings.kind.{kind}", "zh") != tr(f"settings.kind.{kind}", "en")
        assert f"review.kind.{kind}" in known


def test_parse_input_follows_the_field_type(store: Store) -> None:
    assert review.parse_input(store, "households", "members", " 4 ") == 4
    with pytest.raises(fieldsync.ValidationError) as err:
        review.parse_input(store, "households", "members", "四")
    assert err.value.field == "members"
    assert review.parse_input(store, "households", "tags", "低保、独居老人, 残疾") == ["低保", "独居老人", "残疾"]
    assert review.parse_input(store, "visits", "location", "30.54, 114.31") == {"lat": 30.54, "lon": 114.31}
    assert review.parse_input(store, "visits", "location", "彭刘杨路口") == "彭刘杨路口"
    assert review.parse_input(store, "households", "phone", "  ") is None
    assert review.parse_input(store, "nosuchkind", "x", "text") == "text"


def test_value_text_round_trips_what_parse_input_reads(store: Store) -> None:
    for collection, field, value in (("households", "members", 4), ("households", "tags", ["低保", "残疾"]),
                                     ("visits", "location", {"lat": 30.5, "lon": 114.3}),
                                     ("households", "phone", "13800138000")):
        assert review.parse_input(store, collection, field, review.value_text(value)) == value
    assert review.value_text(None) == ""


def test_field_choices_use_declared_choices(store: Store) -> None:
    item = review.ReviewItem("rejection", "1", "residents", "r1", "gender", "validation_failed", "", {"gender": "x"})
    assert review.field_choices(store, item) == ["男", "女"]
    free = review.ReviewItem("rejection", "2", "households", "h1", "phone", "validation_failed", "", {})
    assert review.field_choices(store, free) is None


def test_record_labels() -> None:
    assert review.record_label("households", {"address": "彭刘杨路12号"}) == "彭刘杨路12号"
    assert review.record_label("residents", {"name": "王芳"}) == "王芳"
    assert review.record_label("reports", {"category": "占道经营", "description": "流动摊贩"}) == "占道经营 · 流动摊贩"
    assert review.record_label("visits", {"purpose": "低保复核", "visited_at": "2026-11-02T09:30:00+08:00"}) \
        == "低保复核 · 2026-11-02"
    assert review.record_label("unknown", {"x": 1}) == ""


# -- settings: PIN and the settings file ----------------------------------------------------------------------

def test_change_pin_through_the_session(tmp_path: Path) -> None:
    config = AppConfig(str(tmp_path))
    session = Session(config, kdf=KDF)
    Store.create(config.store_path, PIN, kdf=KDF).close()
    session.unlock(PIN)
    with pytest.raises(fieldsync.WrongPinError) as err:
        session.change_pin("000000", "369369")
    assert err.value.attempts_left == 9
    session.change_pin(PIN, "369369")
    session.lock()
    with pytest.raises(fieldsync.WrongPinError):
        session.unlock(PIN)
    assert session.unlock("369369") is session.store
    session.lock()


def test_change_pin_needs_an_unlocked_store(tmp_path: Path) -> None:
    with pytest.raises(fieldsync.AuthError):
        Session(AppConfig(str(tmp_path))).change_pin(PIN, "369369")


def test_settings_survive_a_restart(tmp_path: Path) -> None:
    config = AppConfig.load(tmp_path)
    assert (config.language, config.lock_timeout_s, config.server_url) == ("zh", 300, "")
    config.language = "en"
    config.lock_timeout_s = 120
    config.server_url = "https://wgh.wuchang.gov.cn"
    config.save()
    again = AppConfig.load(tmp_path)
    assert (again.language, again.lock_timeout_s, again.server_url) == ("en", 120, "https://wgh.wuchang.gov.cn")
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_settings_file_falls_back_to_defaults(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text("{not json", encoding="utf-8")
    assert AppConfig.load(tmp_path).lock_timeout_s == 300
    (tmp_path / "settings.json").write_text(json.dumps({"lock_timeout_s": 600, "from_a_newer_app": 1}),
                                            encoding="utf-8")
    assert AppConfig.load(tmp_path).lock_timeout_s == 600
