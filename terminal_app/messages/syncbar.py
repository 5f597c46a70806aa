from ..i18n import register

register({
    "sync.online": ("在线", "Online"),
    "sync.offline": ("离线", "Offline"),
    "sync.pending": ("待同步 {n} 条", "{n} to sync"),
    "sync.last": ("上次同步 {when}", "Last sync {when}"),
    "sync.never": ("尚未同步", "Never synced"),
    "sync.now": ("同步", "Sync"),
    "sync.pushing": ("正在上传 {n} 条", "Sending {n}"),
    "sync.pulling": ("正在下载 {n} 条", "Receiving {n}"),
    "sync.repairing": ("正在核对数据", "Checking data"),
    "sync.error": ("同步失败：{message}", "Sync failed: {message}"),
    "sync.rejections": ("{n} 条被退回", "{n} rejected"),
    "sync.conflicts": ("{n} 处冲突", "{n} conflicts"),
    "sync.just_now": ("刚刚", "just now"),
    "sync.minutes_ago": ("{n} 分钟前", "{n} min ago"),
    "sync.hours_ago": ("{n} 小时前", "{n} h ago"),
})
