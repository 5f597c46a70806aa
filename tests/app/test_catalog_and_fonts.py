"""Every visible string goes through the one catalog, in both languages; the CJK font is found or explained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from terminal_app import i18n
from terminal_app.fonts import FontNotFound, find_cjk_font

APP = Path(__file__).resolve().parents[2] / "terminal_app"
KEY_IN_KV = re.compile(r"""app\.t\(\s*['"]([a-z_]+\.[^'"]+)['"]""")
KEY_IN_PY = re.compile(r"""\.t\(\s*(?:f)?['"]([a-z_]+\.[a-z_.\u4e00-\u9fff]+)['"]""")


def test_every_entry_has_chinese_first_and_english() -> None:
    i18n.load_catalog()
    assert len(i18n.keys()) > 200
    for key in i18n.keys():
        zh, en = i18n.tr(key, "zh"), i18n.tr(key, "en")
        assert zh and en, key
        if key.startswith(("tag.", "cat.", "visit.purpose.", "visit.need.", "dept.")):
            continue  # domain words: the Chinese is the value itself
        assert re.search(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]", zh) or zh == en, f"{key}: the Chinese text has no Chinese: {zh!r}"


def test_every_key_the_screens_use_is_in_the_catalog() -> None:
    i18n.load_catalog()
    known = set(i18n.keys())
    used: set[str] = set()
    for path in APP.rglob("*.kv"):
        used |= {k for k in KEY_IN_KV.findall(path.read_text(encoding="utf-8")) if not k.endswith(".")}
    for path in APP.rglob("*.py"):
        used |= {k for k in KEY_IN_PY.findall(path.read_text(encoding="utf-8")) if not k.endswith(".")}
    assert len(used) > 100
    missing = sorted(k for k in used if k not in known)
    assert missing == [], missing


def test_no_visible_literal_text_in_kv_files() -> None:
    literal = re.compile(r"^\s*(text|hint_text|title):\s*['\"]([^'\"]*[A-Za-z\u4e00-\u9fff][^'\"]*)['\"]\s*$")
    offenders = []
    for path in APP.rglob("*.kv"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = literal.match(line)
            if m:
                offenders.append(f"{path.name}:{n}: {m.group(2)}")
    assert offenders == []


def test_placeholders_are_filled() -> None:
    i18n.load_catalog()
    assert i18n.tr("sync.pending", "zh", n=3) == "待同步 3 条"
    assert i18n.tr("sync.pending", "en", n=3) == "3 to sync"


def test_font_found_from_a_configured_path(tmp_path: Path) -> None:
    font = tmp_path / "my-cjk.ttc"
    font.write_bytes(b"font")
    assert find_cjk_font(str(font), candidates=()) == font


def test_font_found_on_the_system_or_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDSYNC_CJK_FONT", raising=False)
    assert find_cjk_font().is_file()  # the machine has one (scripts/bootstrap installs fonts-wqy-microhei)
    with pytest.raises(FontNotFound) as err:
        find_cjk_font(str(tmp_path / "missing.ttc"), candidates=(str(tmp_path / "NotoSansCJK-Regular.ttc"),))
    message = str(err.value)
    assert "missing.ttc (configured, not found)" in message
    assert "fonts-wqy-microhei" in message and "FIELDSYNC_CJK_FONT" in message
