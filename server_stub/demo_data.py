"""Deterministic, realistic grid-work records for benchmarks, demos and tests.

Every function takes a ``seed`` and returns the same records for the same
arguments on every machine and Python run (string seeds go through
``random.Random``, which hashes them with SHA-512, not with ``hash()``).
Records carry explicit ids, so residents, visits and reports can point at
their household, and every record passes
``fieldsync.default_registry().get(kind).validate(record)``.

Places are the Wuchang (Wuhan) streets and communities of the seed article;
people are invented.  Resident ID numbers are well-formed (GB 11643 check
character, Wuchang area code 420106 for most) but belong to nobody.

Usage::

    from server_stub import demo_data as datagen

    grid = datagen.GRIDS[0]["id"]
    hh = datagen.households(300, grid, seed=1)
    people = datagen.residents(hh, seed=1)
    calls = datagen.visits(hh, per_household=2, seed=1)
    found = datagen.reports(20, grid, seed=1, households=hh)
    datagen.check({"households": hh, "residents": people, "visits": calls, "reports": found})

    # or one whole grid at once:
    records = datagen.grid_records(grid, 300, seed=1)   # {"grids": [...], "households": [...], ...}

``python -m server_stub.demo_data`` prints a sample and validates a few thousand records.
"""

from __future__ import annotations

import random
import zlib
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

from fieldsync.schema import Registry, default_registry

__all__ = [
    "GRIDS",
    "HOUSEHOLD_TAGS",
    "VISIT_PURPOSES",
    "Record",
    "grids",
    "households",
    "residents",
    "visits",
    "reports",
    "grid_records",
    "id_number",
    "check",
]

Record = dict[str, Any]

CST = timezone(timedelta(hours=8))

#: Grids in the Wuchang streets and communities the seed article names.
GRIDS: tuple[Mapping[str, str], ...] = (
    {"id": "wc-ldj-hys-03", "name": "花园山社区第三网格", "community": "花园山社区", "street": "粮道街"},
    {"id": "wc-hhl-ply-01", "name": "彭刘杨社区第一网格", "community": "彭刘杨社区", "street": "黄鹤楼街道"},
    {"id": "wc-jyq-jdhy-03", "name": "金地花园社区第三网格", "community": "金地花园社区", "street": "积玉桥街道"},
    {"id": "wc-hhl-ply-02", "name": "彭刘杨社区第二网格", "community": "彭刘杨社区", "street": "黄鹤楼街道"},
    {"id": "wc-ldj-hys-01", "name": "花园山社区第一网格", "community": "花园山社区", "street": "粮道街"},
    {"id": "wc-jyq-jdhy-01", "name": "金地花园社区第一网格", "community": "金地花园社区", "street": "积玉桥街道"},
)

HOUSEHOLD_TAGS = ("低保", "独居老人", "残疾", "失业")
VISIT_PURPOSES = ("社保年审", "低保复核", "独居老人探访", "政策宣传", "矛盾调解")

# Common surnames, most frequent first; the weights fall off like the real frequency table.
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
    "于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江"
)
_SURNAME_WEIGHTS = tuple(1.0 / (1 + i * 0.15) for i in range(len(_SURNAMES)))
# The male and female sets share no character, so a name's gender can be read back.
_MALE_CHARS = "伟强磊军勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆旭宁龙林峰文博诚毅"
_FEMALE_CHARS = "芳娜敏静丽艳娟霞婷雪琳晶颖慧倩洁红梅兰萍燕玲丹欣悦怡琴云凤秀"
_OLD_MALE_NAMES = ("建国", "国强", "建华", "志强", "德明", "永福", "卫东", "振华", "国庆", "树林")
_OLD_FEMALE_NAMES = ("桂英", "秀英", "玉兰", "秀兰", "凤英", "淑珍", "桂兰", "美珍", "素芬", "翠兰")

# 420106 is Wuchang; a few residents were born in other Wuhan districts.
_AREA_CODES = ("420106",) * 17 + ("420102", "420111", "420105")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

# Household sizes in an inner-city grid: (members, weight).
_FAMILY_SIZES = ((1, 18), (2, 30), (3, 27), (4, 14), (5, 8), (6, 3))
_LAST_BIRTH_YEAR = 2023

_VISIT_NOTES = {
    "社保年审": (
        "已协助完成养老金资格认证",
        "提醒携带身份证到街道行政事务服务中心办理",
        "老人行动不便，已预约上门认证",
    ),
    "低保复核": ("核对家庭收入情况，材料齐全", "子女已就业，家庭人均收入需重新核定", "需补交医疗费用票据后再复核"),
    "独居老人探访": ("老人身体状况良好，生活能自理", "家中燃气灶老化，建议更换", "老人反映腿脚不便，需要助餐服务"),
    "政策宣传": ("宣传全区通办，可在任一街道窗口办事", "发放网格员联系卡，登记联系电话", "讲解城乡居民医保缴费政策"),
    "矛盾调解": ("楼上漏水影响楼下，已约双方协商", "邻里因楼道堆放杂物发生争执，已调解", "物业费纠纷，已联系物业公司"),
}
_VISIT_NEEDS = ("助餐", "就业介绍", "医疗救助", "家政服务", "房屋维修", "心理疏导")

# Report categories, the department the command centre usually sends them to, descriptions.
_REPORT_KINDS = (
    ("违规张贴广告", "城管", ("{place}楼道内有人张贴小广告", "{place}住户在楼上悬挂广告横幅，要求拆除不配合")),
    ("占道经营", "城管", ("{place}门口有流动摊贩占道经营", "{place}旁早餐摊占用人行道")),
    ("安全隐患", "公安", ("{place}楼道内给电动车充电，存在火灾隐患", "{place}单元门门禁损坏，陌生人随意出入")),
    ("食品安全", "食药监", ("{place}附近小餐馆后厨卫生差，居民投诉", "{place}旁小卖部出售过期食品")),
    ("无证经营", "工商", ("{place}一楼住户改作无证经营的棋牌室", "{place}底商无营业执照经营")),
    ("居民求助", "民政", ("{place}独居老人摔倒后行动不便，需要帮助", "{place}困难家庭申请临时救助")),
    ("突发疾病", "医院", ("{place}有老人突发不适，家属请求协助就医",)),
)
_STATUS_PATH = ("submitted", "dispatched", "in_progress", "resolved", "confirmed")
_STATUS_WEIGHTS = (40, 25, 15, 12, 8)

# Roughly the middle of Wuchang district.
_LAT, _LON = 30.554, 114.316


def _rng(seed: int | str, *parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def _grid_info(grid_id: str) -> Mapping[str, str]:
    for g in GRIDS:
        if g["id"] == grid_id:
            return g
    return {**GRIDS[zlib.crc32(grid_id.encode()) % len(GRIDS)], "id": grid_id}


def _phone(rng: random.Random) -> str:
    second = rng.choice("358")
    third = rng.choice("0123456789" if second != "5" else "012356789")
    return "1" + second + third + "".join(rng.choice("0123456789") for _ in range(8))


def _name(rng: random.Random, surname: str, male: bool, born: int) -> str:
    if born < 1965 and rng.random() < 0.6:
        return surname + rng.choice(_OLD_MALE_NAMES if male else _OLD_FEMALE_NAMES)
    chars = _MALE_CHARS if male else _FEMALE_CHARS
    return surname + "".join(rng.choice(chars) for _ in range(1 if rng.random() < 0.35 else 2))


def _is_male_name(name: str) -> bool:
    given = name[1:]
    return given in _OLD_MALE_NAMES or all(c in _MALE_CHARS for c in given)


def _birth(rng: random.Random, year: int) -> date:
    year = min(max(year, 1925), _LAST_BIRTH_YEAR)
    return date(year, 1, 1) + timedelta(days=rng.randrange(365))


def _location(rng: random.Random) -> dict[str, float]:
    return {"lat": round(_LAT + rng.uniform(-0.02, 0.02), 6), "lon": round(_LON + rng.uniform(-0.02, 0.02), 6)}


def _at(rng: random.Random, start: date, days: int) -> datetime:
    day = start + timedelta(days=rng.randrange(days))
    minute = rng.randrange(8 * 60 + 30, 17 * 60 + 30)
    return datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=CST)


def id_number(birth: date, male: bool, rng: random.Random, area: str = "420106") -> str:
    """A well-formed 18-character resident ID number (GB 11643).

    Six-digit area code (420106 = Wuchang), birth date ``YYYYMMDD``, a
    three-digit order code whose last digit is odd for men and even for
    women, then the check character: the digits weighted by
    7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2, summed, mod 11, looked up in
    ``'10X98765432'``.  ``rng`` picks the order code.
    """
    order = rng.randrange(500) * 2 + (1 if male else 0)
    body = f"{area}{birth:%Y%m%d}{order:03d}"
    return body + _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS)) % 11]


def grids(seed: int = 0) -> list[Record]:
    """The :data:`GRIDS` as ``grids`` records, each with one worker id (``w-<grid>-<nnn>``)."""
    rng = _rng(seed, "grids")
    return [{**g, "workers": [f"w-{g['id']}-{rng.randrange(100, 1000)}"]} for g in GRIDS]


def _family_sizes(rng: random.Random, n: int, people: int | None) -> list[int]:
    sizes, weights = zip(*_FAMILY_SIZES)
    out = rng.choices(sizes, weights, k=n)
    if people is not None:
        if not n <= people <= 6 * n:
            raise ValueError(f"{people} people cannot fill {n} households of 1-6 members")
        total = sum(out)
        while total != people:
            i = rng.randrange(n)
            if total < people and out[i] < 6:
                out[i] += 1
                total += 1
            elif total > people and out[i] > 1:
                out[i] -= 1
                total -= 1
    return out


def households(n: int, grid_id: str = GRIDS[0]["id"], seed: int = 0, *, people: int | None = None) -> list[Record]:
    """``n`` households of one grid, each at its own address.

    Addresses are unique within the call, e.g. ``武昌区粮道街花园山社区3栋2单元301``.
    ``members`` follows a typical inner-city family-size mix (1-6, mean about
    2.7); pass ``people`` to make the members add up to exactly that many, so
    that :func:`residents` yields exactly ``people`` residents.  ``tags`` come
    from 低保/独居老人/残疾/失业 (独居老人 only on one-person households of
    people born before 1960).  Ids are ``h-<grid>-<nnnnn>``.  Raises
    ``ValueError`` when ``people`` cannot fill ``n`` households.
    """
    rng = _rng(seed, "households", grid_id, n)
    info = _grid_info(grid_id)
    sizes = _family_sizes(rng, n, people)
    floors = rng.choice((6, 7, 7, 18))
    doors = 2 if floors > 7 else rng.choice((2, 3))
    units = rng.choice((2, 3, 4))
    per_building = units * floors * doors
    first_building = rng.randrange(1, 20)
    out: list[Record] = []
    for i, members in enumerate(sizes):
        building = first_building + i // per_building
        unit = 1 + (i % per_building) // (floors * doors)
        room = f"{1 + (i % (floors * doors)) // doors}{(i % doors) + 1:02d}"
        born = rng.randrange(1938, 1996)
        tags: list[str] = []
        if members == 1 and born < 1960 and rng.random() < 0.7:
            tags.append("独居老人")
        if rng.random() < 0.08:
            tags.append("低保")
        if rng.random() < 0.05:
            tags.append("残疾")
        if born > 1965 and rng.random() < 0.06:
            tags.append("失业")
        surname = rng.choices(_SURNAMES, _SURNAME_WEIGHTS)[0]
        out.append(
            {
                "id": f"h-{grid_id}-{i:05d}",
                "grid_id": grid_id,
                "address": f"武昌区{info['street']}{info['community']}{building}栋{unit}单元{room}",
                "building": f"{building}栋",
                "unit": f"{unit}单元",
                "room": room,
                "head_name": _name(rng, surname, rng.random() < 0.55, born),
                "phone": _phone(rng),
                "members": members,
                "tags": tags,
            }
        )
    return out


def _relations(head_born: int, rng: random.Random) -> list[str]:
    if head_born < 1960:
        others = ["子女", "孙子女", "子女", "孙子女", "其他"]
    elif head_born < 1975:
        others = ["子女", "父母", "子女", "孙子女", "其他"]
    else:
        others = ["子女", "父母", "父母", "子女", "其他"]
    return (["配偶"] if rng.random() < 0.85 else []) + others + ["其他"] * 6


def residents(households: Sequence[Mapping[str, Any]], per_household: int | None = None, seed: int = 0) -> list[Record]:
    """The people living in ``households``: ``members`` of each (or ``per_household``).

    The first resident of a household is its head (``relation`` 户主, the
    household's ``head_name`` and ``phone``); then spouse, children, parents
    or grandchildren with plausible ages and family names.  Every resident has
    a valid 18-character ID number whose birth date and gender digit match
    ``birth_date`` and ``gender``; ID numbers are unique within the call.
    Ids are ``r-<grid>-<nnnnn>-<k>``.
    """
    out: list[Record] = []
    seen: set[str] = set()
    for h in households:
        rng = _rng(seed, "residents", h["id"])
        count = int(h.get("members") or 1) if per_household is None else per_household
        tags = set(h.get("tags") or ())
        head_born = rng.randrange(1938, 1960) if "独居老人" in tags else rng.randrange(1938, 1996)
        head_male = _is_male_name(h["head_name"])
        surname = h["head_name"][0]
        relations = ["户主"] + _relations(head_born, rng)
        for k in range(count):
            relation = relations[k]
            if relation == "户主":
                male, born, name = head_male, head_born, h["head_name"]
            else:
                if relation == "配偶":
                    male, born = not head_male, head_born + rng.randrange(-4, 5)
                elif relation == "子女":
                    male, born = rng.random() < 0.5, head_born + rng.randrange(22, 36)
                elif relation == "父母":
                    male, born = rng.random() < 0.45, head_born - rng.randrange(22, 33)
                elif relation == "孙子女":
                    male, born = rng.random() < 0.5, head_born + rng.randrange(48, 62)
                else:
                    male, born = rng.random() < 0.5, rng.randrange(1950, 2005)
                born = min(born, _LAST_BIRTH_YEAR)
                same_family = relation in ("子女", "孙子女") or (relation == "父母" and male)
                family = surname if same_family else rng.choices(_SURNAMES, _SURNAME_WEIGHTS)[0]
                name = _name(rng, family, male, born)
            birth = _birth(rng, born)
            area = rng.choice(_AREA_CODES)
            number = id_number(birth, male, rng, area)
            while number in seen:
                number = id_number(birth, male, rng, area)
            seen.add(number)
            record: Record = {
                "id": f"r{h['id'][1:]}-{k}",
                "grid_id": h["grid_id"],
                "household_id": h["id"],
                "name": name,
                "id_number": number,
                "birth_date": birth.isoformat(),
                "gender": "男" if male else "女",
                "relation": relation,
            }
            adult = _LAST_BIRTH_YEAR - birth.year >= 18
            if relation == "户主" and h.get("phone"):
                record["phone"] = h["phone"]
            elif adult and rng.random() < 0.75:
                record["phone"] = _phone(rng)
            person_tags = sorted(tags & {"独居老人", "残疾", "失业"}) if relation == "户主" else []
            if relation != "户主" and rng.random() < 0.03:
                person_tags.append("残疾")
            if relation != "户主" and adult and birth.year > 1965 and rng.random() < 0.04:
                person_tags.append("失业")
            record["tags"] = person_tags
            out.append(record)
    return out


def _purpose(tags: set[str], rng: random.Random) -> str:
    if "独居老人" in tags and rng.random() < 0.6:
        return "独居老人探访"
    if "低保" in tags and rng.random() < 0.6:
        return "低保复核"
    return rng.choices(VISIT_PURPOSES, (30, 10, 10, 35, 15))[0]


def visits(
    households: Sequence[Mapping[str, Any]],
    per_household: int = 1,
    seed: int = 0,
    *,
    worker_id: str | None = None,
    start: date = date(2024, 3, 1),
    days: int = 90,
) -> list[Record]:
    """``per_household`` door-to-door visits to each household.

    Purposes are 社保年审, 低保复核, 独居老人探访, 政策宣传 or 矛盾调解 (weighted by the
    household's tags); ``visited_at`` is an ISO datetime with ``+08:00`` on a
    working day-time within ``days`` days from ``start``.  ``worker_id``
    defaults to ``w-<grid>-01``.  Ids are ``v-<grid>-<nnnnn>-<k>``.
    """
    out: list[Record] = []
    for h in households:
        rng = _rng(seed, "visits", h["id"])
        tags = set(h.get("tags") or ())
        for k in range(per_household):
            purpose = _purpose(tags, rng)
            at = _at(rng, start, days)
            record: Record = {
                "id": f"v{h['id'][1:]}-{k}",
                "grid_id": h["grid_id"],
                "household_id": h["id"],
                "worker_id": worker_id or f"w-{h['grid_id']}-01",
                "visited_at": at.isoformat(),
                "purpose": purpose,
                "notes": rng.choice(_VISIT_NOTES[purpose]),
                "needs": rng.sample(_VISIT_NEEDS, rng.choice((0, 0, 0, 1, 1, 2))),
                "location": _location(rng),
            }
            if rng.random() < 0.3:
                record["follow_up"] = (at.date() + timedelta(days=rng.randrange(7, 31))).isoformat()
            out.append(record)
    return out


def reports(
    n: int,
    grid_id: str = GRIDS[0]["id"],
    seed: int = 0,
    *,
    households: Sequence[Mapping[str, Any]] = (),
    reporter_id: str | None = None,
    start: date = date(2024, 3, 1),
    days: int = 90,
) -> list[Record]:
    """``n`` incidents a grid worker found on patrol, at various dispatch stages.

    Categories are matched with the department the command centre sends them
    to (城管, 公安, 食药监, 工商, 民政, 医院).  ``status`` runs along
    submitted → dispatched → in_progress → resolved → confirmed, and
    ``timeline`` lists each step as ``{"status", "at", "by"}``.  Given
    ``households``, places are their buildings and help requests name one.
    Ids are ``p-<grid>-<nnnnn>``.
    """
    rng = _rng(seed, "reports", grid_id, n)
    info = _grid_info(grid_id)
    reporter = reporter_id or f"w-{grid_id}-01"
    out: list[Record] = []
    for i in range(n):
        category, department, texts = rng.choice(_REPORT_KINDS)
        home = rng.choice(households) if households else None
        if home is not None:
            place = f"{info['community']}{home['building']}{home['unit']}"
        else:
            place = f"{info['community']}{rng.randrange(1, 30)}栋"
        at = _at(rng, start, days)
        status = rng.choices(_STATUS_PATH, _STATUS_WEIGHTS)[0]
        timeline: list[dict[str, str]] = []
        step_at = at
        for step in _STATUS_PATH[: _STATUS_PATH.index(status) + 1]:
            by = (
                reporter
                if step in ("submitted", "confirmed")
                else ("command-centre" if step == "dispatched" else department)
            )
            timeline.append({"status": step, "at": step_at.isoformat(), "by": by})
            step_at += timedelta(hours=rng.randrange(1, 30))
        record: Record = {
            "id": f"p-{grid_id}-{i:05d}",
            "grid_id": grid_id,
            "category": category,
            "description": rng.choice(texts).format(place=place),
            "location": _location(rng),
            "attachments": [],
            "reporter_id": reporter,
            "reported_at": at.isoformat(),
            "status": status,
            "timeline": timeline,
        }
        if status != "submitted":
            record["department"] = department
            record["due_at"] = (at + timedelta(days=3)).isoformat()
        if home is not None and department in ("民政", "医院"):
            record["household_id"] = home["id"]
        out.append(record)
    return out


def grid_records(
    grid_id: str = GRIDS[0]["id"],
    n_households: int = 300,
    seed: int = 0,
    *,
    people: int | None = None,
    visits_per_household: int = 1,
    n_reports: int = 10,
) -> dict[str, list[Record]]:
    """One grid's worth of records, keyed by collection (grids, households, residents, visits, reports)."""
    info = _grid_info(grid_id)
    hh = households(n_households, grid_id, seed, people=people)
    return {
        "grids": [{**info, "workers": [f"w-{grid_id}-01"]}],
        "households": hh,
        "residents": residents(hh, seed=seed),
        "visits": visits(hh, visits_per_household, seed),
        "reports": reports(n_reports, grid_id, seed, households=hh),
    }


def check(records: Mapping[str, Sequence[Mapping[str, Any]]], registry: Registry | None = None) -> int:
    """Validate every record against its kind; returns how many were checked.

    Raises :class:`fieldsync.ValidationError` (naming the kind and field) on
    the first record that fails.
    """
    reg = registry or default_registry()
    n = 0
    for kind_name, items in records.items():
        kind = reg.get(kind_name)
        for record in items:
            kind.validate(record)
            n += 1
    return n


def _main() -> None:
    import json

    total = 0
    for i, g in enumerate(GRIDS):
        total += check(grid_records(g["id"], 300, seed=i, visits_per_household=2, n_reports=20))
    sample = grid_records(GRIDS[0]["id"], 3, seed=0, n_reports=1)
    print(json.dumps(sample, ensure_ascii=False, indent=1))
    print(f"validated {total} generated records against fieldsync.default_registry()")


if __name__ == "__main__":
    _main()
