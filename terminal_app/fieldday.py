"""A grid worker's field day, played by the real app with real taps (offscreen or on screen).

Used by the main demo (``scripts/demo`` with no display) and by the UI
tests: enroll with a code and choose a PIN, lock and unlock, find a resident
by ID number, record a visit while the network is down, report an incident
with a photo, come back online (the app syncs by itself), and see the status
the command centre set.  The server and the command centre are outside the
app, so they come in as callbacks.  Every screen is saved as a screenshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .driver import AppDriver

__all__ = ["FieldDay", "Shot"]

PIN = "258025"


@dataclass
class Shot:
    name: str
    path: Path
    screen: str


@dataclass
class FieldDay:
    driver: AppDriver
    shots_dir: Path
    say: Callable[[str], None] = print
    shots: list[Shot] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.driver.app

    def shot(self, name: str) -> Path:
        path = self.driver.screenshot(self.shots_dir / f"{name}.png")
        self.shots.append(Shot(name, path, self.app.manager.current))
        return path

    # -- the day, step by step -------------------------------------------------------
    def enroll(self, server_url: str, code: str, pin: str = PIN) -> None:
        d, screen = self.driver, self.app.screen
        assert self.app.manager.current == "setup", self.app.manager.current
        self.shot("01-setup")
        d.type(screen.ids.server, server_url)
        d.type(screen.ids.code, code)
        d.tap(self.app.t("common.next"))
        if screen.step != "pin":
            raise AssertionError(f"the server was refused: {screen.message}")
        d.type(screen.ids.pin, pin)
        d.type(screen.ids.pin_again, pin)
        self.shot("02-setup-pin")
        d.tap(self.app.t("setup.enroll"))
        d.wait_until(lambda: self.app.manager.current == "overview", what="the grid overview after enrolling")
        d.wait_until(lambda: bool(self.app.screen.rows), 60, "the first sync to fill the grid")
        self.say(f"enrolled as {self.app.worker_id}; {len(self.app.screen.rows)} households in the grid")

    def lock_and_unlock(self, pin: str = PIN, wrong: str = "000000") -> str:
        d = self.driver
        d.tap(self.app.t("nav.settings"))
        d.tap(self.app.t("settings.lock_now"))
        assert self.app.manager.current == "unlock"
        d.type(self.app.screen.ids.pin, wrong)
        d.tap(self.app.t("unlock.button"))
        warning = self.app.screen.message
        self.shot("03-unlock-wrong-pin")
        d.type(self.app.screen.ids.pin, pin)
        d.tap(self.app.t("unlock.button"))
        d.wait_until(lambda: self.app.manager.current == "overview", what="the overview after unlocking")
        self.shot("04-overview")
        self.say(f"locked and unlocked; a wrong PIN said: {warning}")
        return warning

    def find_household(self, text: str) -> str:
        """Search (name, phone or ID number) and open the first household found; returns its id."""
        d, screen = self.driver, self.app.screen
        d.type(screen.ids.search_input, text, submit=True)
        if not screen.rows:
            raise AssertionError(f"search for {text!r} found nothing: {screen.message}")
        self.shot("05-overview-search")
        from .screens.overview import HouseholdRowView

        d.tap(d.find(cls=HouseholdRowView))
        assert self.app.manager.current == "household"
        self.shot("06-household")
        hid = self.app.screen.household_id
        self.say(f"found household {hid} by {text!r}")
        return str(hid)

    def record_visit(self, purpose: str = "独居老人探访", notes: str = "老人血压偏高，已提醒按时服药",
                     need: str = "医疗救助") -> None:
        d = self.driver
        d.tap(self.app.t("household.new_visit"))
        assert self.app.manager.current == "visit"
        d.tap(self.app.t(f"visit.purpose.{purpose}"))
        d.type(self.app.screen.ids.notes, notes)
        d.tap(self.app.t(f"visit.need.{need}"))
        d.tap(self.app.t("visit.plus_days", n=7))
        self.shot("07-visit")
        d.tap(self.app.t("visit.save"))
        d.wait_until(lambda: self.app.manager.current == "household", what="the household after saving the visit")
        d.wait_until(lambda: not self.app.status.online, 30, "the sync bar to show offline")
        self.shot("08-household-after-visit")
        self.say(f"visit saved; pending changes: {self.app.status.pending}")

    def report_incident(self, photo: Path, category: str = "违规张贴广告",
                        description: str = "3栋楼道内贴满小广告，住户反映多次", place: str = "3栋1单元楼道") -> None:
        d = self.driver
        d.tap(self.app.t("nav.report"))
        screen = self.app.screen
        assert self.app.manager.current == "report"
        d.tap(self.app.t(f"cat.{category}"))
        d.type(screen.ids.description, description)
        chooser = screen.open_chooser()
        chooser.folder = str(photo.parent.resolve())
        d.pump(5)
        chooser.on_open()  # the file list was rebuilt for the folder: its column titles again
        d.tap(d.find(photo.name, where=chooser))  # the worker taps the photo in the list
        if not chooser.ids.files.selection:
            raise AssertionError("tapping the photo in the file list did not select it")
        self.shot("09-report-photo-chooser")
        d.tap(d.find(self.app.t("report.photo.use"), where=chooser))
        d.wait_until(lambda: bool(screen.photo_hash), what="the photo to be stored")
        d.type(screen.ids.place, place)
        self.shot("10-report")
        d.tap(self.app.t("report.save"))
        d.wait_until(lambda: self.app.manager.current == "inbox", what="the inbox after reporting")
        self.shot("11-inbox")
        self.say(f"report saved with its photo; pending changes: {self.app.status.pending}")

    def wait_synced(self, timeout: float = 60) -> None:
        """Wait until the app has synced everything by itself (the sync worker)."""
        self.driver.wait_until(lambda: self.app.status.online and self.app.status.pending == 0
                               and self.app.status.phase == "idle", timeout, "the app to sync by itself")
        self.say("back online: the app synced by itself, nothing pending")

    def my_last_report(self) -> dict[str, Any]:
        store = self.app.session.require_store()
        mine = [r for r in store.list("reports") if r.get("reporter_id") == self.app.worker_id]
        mine.sort(key=lambda r: r.get("reported_at") or "")
        return mine[-1] if mine else {}

    def my_report_status(self) -> str:
        return str(self.my_last_report().get("status", ""))

    def see_status(self, status: str, timeout: float = 60) -> None:
        """Wait for the command centre's status to arrive, then open the report's timeline."""
        self.driver.wait_until(lambda: self.my_report_status() == status, timeout,
                               f"the report to become {status!r} on the tablet")
        d = self.driver
        d.tap(self.app.t("nav.inbox"))
        from .screens.inbox import InboxRowView

        rid = self.my_last_report().get("id")
        rows = [w for w in d._walk(self.app.screen) if isinstance(w, InboxRowView) and w.item_id == rid]
        if not rows:
            raise AssertionError(f"report {rid} is not in the inbox: {d.visible_texts()[:30]}")
        d.tap(rows[0])
        self.shot(f"12-inbox-{status}")
        self.say(f"the inbox shows the report {self.app.t('status.' + status)} with its timeline")

    def tour(self) -> None:
        """Screenshots of the remaining screens, and the overview in English."""
        d = self.driver
        d.tap(self.app.t("nav.review"))
        self.shot("13-review")
        d.tap(self.app.t("nav.settings"))
        self.shot("14-settings")
        d.tap("English")
        d.tap(self.app.t("nav.overview"))
        self.shot("15-overview-en")
        d.tap(self.app.t("nav.settings"))
        d.tap("中文")
        d.tap(self.app.t("nav.overview"))
