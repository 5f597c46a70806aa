"""The console in real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

A demo district served by a real uvicorn process; screenshots of the main pages go to
docs/screenshots/console-*.png.  These tests fail, never skip, when Chromium is missing:
scripts/bootstrap installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from photo import jpeg

from fieldsync import KdfParams, Store
from fieldsync.sync import enroll
from fieldsync.transport import RequestsTransport
from server_stub import jobs
from server_stub.accounts import set_password
from server_stub.demo import build_demo
from server_stub.replica import Actor

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM = os.environ.get("FIELDSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FIELDSYNC_CHROMEDRIVER", "/usr/bin/chromedriver")
DEMO_PASSWORDS = {"cc-wangcc": "zhihui-2019", "dept-1": "chengguan-2019", "dept-3": "gongan-2019"}


@pytest.fixture
def backend() -> str:
    """The browser tests run on SQLite only; the same pages run on both backends in test_console_http.py."""
    return "sqlite"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).exists() or shutil.which(path)):
            pytest.fail(f"{path} is missing: run scripts/bootstrap (apt-get install {package})", pytrace=False)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                "--lang=zh-CN", "--window-size=1366,960", "--hide-scrollbars",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def demo(district: Any, staff: dict[str, str]) -> Any:
    """The demo district (4 grids, 20 households each) with console passwords, on the test database."""
    build_demo(district, households_per_grid=20, seed=2019)
    for user, password in DEMO_PASSWORDS.items():
        set_password(district.db, user, password)
    jobs.run("coverage", district)
    return district


def _node_gone(e: Exception) -> bool:
    """True for chromedriver's two ways of saying a node's page was replaced: a stale element, or
    (seen twice in full runs, inside selenium's own staleness_of) an inspector error that the node "does
    not belong to the document"."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    return isinstance(e, StaleElementReferenceException) or (
        isinstance(e, WebDriverException) and "does not belong to the document" in str(e.msg))


class Console:
    def __init__(self, driver: Any, base: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.base, self.By = driver, base, By
        driver.delete_all_cookies()

    def open(self, path: str) -> None:
        self.driver.get(self.base + "/console" + path)

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.By.CSS_SELECTOR, css)

    def texts(self, css: str) -> set[str]:
        """The texts of every element matched."""
        return set(self.settled(lambda d: {e.text for e in d.find_elements(self.By.CSS_SELECTOR, css)}))

    def type(self, css: str, text: str) -> None:
        """Replace the text of an input or textarea."""
        def typed(d: Any) -> None:
            field = d.find_element(self.By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)
        self.settled(typed)

    def settled(self, action: Callable[[Any], Any]) -> Any:
        """Run ``action(driver)``, again while chromedriver reports the node it acted on as gone.

        The action finds its nodes afresh on each attempt.  Any other error is raised.
        """
        from selenium.webdriver.support.ui import WebDriverWait

        def attempt(driver: Any) -> Any:
            try:
                return (action(driver),)
            except Exception as e:  # noqa: BLE001 - only a gone node is retried
                if _node_gone(e):
                    return None
                raise

        return WebDriverWait(self.driver, 10).until(attempt)[0]

    def click(self, css: str) -> None:
        self.settled(lambda d: d.find_element(self.By.CSS_SELECTOR, css).click())

    def choose(self, css: str, value: str) -> None:
        """Pick the option with this value in a <select>."""
        from selenium.webdriver.support.ui import Select

        self.settled(lambda d: Select(d.find_element(self.By.CSS_SELECTOR, css)).select_by_value(value))
        assert self.settled(lambda d: d.find_element(self.By.CSS_SELECTOR, css).get_property("value")) == value

    def chosen(self, css: str) -> str:
        """The text of the option selected in a <select>."""
        from selenium.webdriver.support.ui import Select

        return str(self.settled(
            lambda d: Select(d.find_element(self.By.CSS_SELECTOR, css)).first_selected_option.text))

    def go(self, css: str) -> None:
        """Click something that loads a new page, and wait until the new page is there."""
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.find("html")
        self.click(css)

        def replaced(_: Any) -> bool:
            try:
                old.is_enabled()
            except Exception as e:  # noqa: BLE001 - only a gone node means the page was replaced
                if _node_gone(e):
                    return True
                raise
            return False

        WebDriverWait(self.driver, 15).until(replaced)
        WebDriverWait(self.driver, 15).until(
            lambda d: d.execute_script("return document.readyState") == "complete")

    def image_width(self, css: str) -> int:
        """The natural width of an image once it has loaded and decoded (0 if it never does)."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        img = self.find(css)
        try:
            WebDriverWait(self.driver, 10).until(lambda _: img.get_property("complete"))
        except TimeoutException:
            pass
        return int(img.get_property("naturalWidth") or 0)

    def text(self, css: str = "body") -> str:
        return str(self.settled(lambda d: d.find_element(self.By.CSS_SELECTOR, css).text))

    def sign_in(self, user: str, password: str) -> None:
        self.open("/login")
        self.type("#user", user)
        self.type("#password", password)
        self.go("#sign-in")

    def sign_out(self) -> None:
        self.go("#sign-out")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1366, max(760, min(int(height) + 140, 2000)))
        assert self.driver.save_screenshot(str(SHOTS / f"console-{name}.png"))
        self.driver.set_window_size(1366, 960)

    def no_overlap(self, css: str) -> None:
        """The elements matched do not overlap one another (legible, nothing drawn on top)."""
        boxes = self.settled(lambda d: [e.rect for e in d.find_elements(self.By.CSS_SELECTOR, css)
                                        if e.is_displayed()])
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                apart = (a["x"] + a["width"] <= b["x"] + 1 or b["x"] + b["width"] <= a["x"] + 1
                         or a["y"] + a["height"] <= b["y"] + 1 or b["y"] + b["height"] <= a["y"] + 1)
                assert apart, f"{css}: {a} overlaps {b}"


def _submitted(district: Any, category: str | None = None, besides: str = "") -> str:
    for rid, _grid, r in jobs.live_records(district, "reports"):
        if r.get("status") == "submitted" and category in (None, r.get("category")) and rid != besides:
            return rid
    raise AssertionError(f"the demo has no submitted {category} report")


def test_command_centre_dispatches_issues_a_code_and_revokes(browser, demo, live_server, tmp_path):
    c = Console(browser, live_server)
    c.open("/login")
    assert "网格化管理指挥中心" in c.text() and "登录" in c.text()
    c.shot("01-login")
    c.sign_in("cc-wangcc", "wrong-password")
    assert "账号或密码不正确" in c.text("#login-failed")

    c.sign_in("cc-wangcc", DEMO_PASSWORDS["cc-wangcc"])
    assert "汪陈琛" in c.text("#who") and "事件列表" in c.text("h1")
    assert len(c.all("#reports tbody tr")) == 48
    c.no_overlap("header.top nav a, header.top .who > *")
    c.shot("02-reports")
    c.choose("#f-status", "submitted")
    c.go("#f-apply")
    assert c.texts("#reports .status") == {"已上报"}

    rid = _submitted(demo, "占道经营")
    grid = demo.get("reports", rid)["grid_id"]
    # The worker's photo is referred to but not uploaded yet: the page says so.
    demo.write(Actor("w-zhang", "worker", frozenset({grid})), "reports", rid, {"attachments": ["ab" * 32]})
    c.open(f"/reports/{rid}")
    assert "照片尚未上传" in c.text("#photo-pending")
    assert c.chosen("#department-select") == "城管"
    c.no_overlap(".columns > .card")
    c.shot("03-report")
    c.go("#dispatch")
    assert "已派遣" in c.text("#status") and "已保存" in c.text("#flash")
    assert demo.get("reports", rid)["department"] == "城管"
    assert "汪陈琛" in c.text("#timeline")
    c.shot("04-dispatched")

    c.open("/devices")
    c.choose("#code-worker", "w-lijing")
    c.go("#issue-code")
    code = c.text("#code").strip()
    assert c.settled(lambda d: d.find_element(c.By.CSS_SELECTOR, "#qr svg").size["width"]) >= 200
    c.shot("05-enroll-code")
    store = Store.create(tmp_path / "tablet.fsdb", "2580", kdf=KdfParams(n=2**10))
    ident = enroll(store, live_server, code, transport=RequestsTransport(live_server))
    c.open("/devices")
    row = f'#devices tr[data-id="{ident.device_id}"]'
    assert "正常" in c.text(row + " .state")
    c.click(row + ' input[name="wipe"]')
    c.go(row + " .revoke")
    assert "已停用并擦除" in c.text(row + " .state")
    assert [d for d in demo.devices() if d["id"] == ident.device_id][0]["wipe"] == 1
    c.shot("06-devices")

    c.open("/coverage")
    assert len(c.all("#chart-grid svg rect")) == 8 and "花园山社区第三网格" in c.text("#chart-grid")
    c.shot("07-coverage")

    c.go("header .lang")
    assert "Reports" in c.text("header nav")
    c.open(f"/reports/{rid}")
    assert "Dispatched" in c.text("#status") and "Progress" in c.text()
    c.shot("08-report-en")
    c.go("header .lang")
    c.sign_out()
    assert "登录" in c.text("h1")


def test_a_department_works_its_report_and_cannot_open_another(browser, demo, live_server):
    photo = jpeg()
    digest = hashlib.sha256(photo).hexdigest()
    demo.attachments.append(digest, 0, photo, len(photo))
    cc = Actor("cc-wangcc", "command")
    ours = _submitted(demo, "违规张贴广告")
    grid = demo.get("reports", ours)["grid_id"]
    demo.write(Actor("w-zhang", "worker", frozenset({grid})), "reports", ours, {"attachments": [digest]})
    theirs = _submitted(demo, besides=ours)
    their_text = demo.get("reports", theirs)["description"]
    for rid, dept in ((ours, "城管"), (theirs, "公安")):
        demo.write(cc, "reports", rid, {"status": "dispatched", "department": dept,
                                        "due_at": "2031-01-01T18:00:00+08:00"})

    c = Console(browser, live_server)
    c.sign_in("dept-1", DEMO_PASSWORDS["dept-1"])
    assert "派给城管的事件" in c.text("h1")
    assert c.texts("#reports tbody tr td:nth-child(6)") == {"城管"}
    assert not c.all("header nav a[href$='/devices']"), "no device menu for a department"
    c.shot("09-department-list")

    c.open(f"/reports/{ours}")
    assert c.image_width("img.photo") == 320, "the photo is served and decodes"
    c.type("#note", "已派城管中队前往现场")
    c.go("#start")
    assert "处理中" in c.text("#status")
    c.type("#note", "小广告已清除，楼道已恢复整洁")
    c.go("#resolve")
    assert "已办结" in c.text("#status") and "小广告已清除" in c.text("#resolution")
    assert "小广告已清除，楼道已恢复整洁" in c.text("#timeline")
    assert demo.get("reports", ours)["status"] == "resolved"
    c.no_overlap("ol.timeline li")
    c.shot("10-department-resolved")

    c.open(f"/reports/{theirs}")
    assert "没有找到" in c.text("#error")
    assert their_text not in c.text("main")
    c.shot("11-other-department-refused")
    c.open("/devices")
    assert "不能执行此操作" in c.text("#error")
    c.sign_out()

    c.sign_in("dept-3", DEMO_PASSWORDS["dept-3"])
    assert c.texts("#reports tbody tr td:nth-child(6)") == {"公安"}
    c.open(f"/reports/{ours}")
    assert "没有找到" in c.text("#error")
