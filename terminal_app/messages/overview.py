from ..i18n import register

register({
    "overview.title": ("我的网格 · {n} 户", "My grid · {n} households"),
    "overview.search_hint": ("姓名 / 电话 / 身份证号", "Name / phone / ID number"),
    "overview.search": ("搜索", "Search"),
    "overview.clear": ("清除", "Clear"),
    "overview.overdue": ("30天未走访", "Not visited 30 days"),
    "overview.overdue_mark": ("{days}天未走访", "No visit in {days} days"),
    "overview.never_visited": ("从未走访", "Never visited"),
    "overview.last_visit": ("上次走访 {day}", "Last visit {day}"),
    "overview.members": ("{n}人", "household of {n}"),
    "overview.found": ("找到 {n} 户", "{n} found"),
    "overview.not_found": ("没有找到匹配的住户", "No matching household"),
})
