from ..i18n import register

register({
    "unlock.title": ("请输入密码", "Enter your PIN"),
    "unlock.button": ("解锁", "Unlock"),
    "unlock.wrong": ("密码错误，还可尝试 {left} 次", "Wrong PIN: {left} attempts left"),
    "unlock.wait": ("密码错误次数过多，请 {seconds} 秒后再试", "Too many wrong PINs: try again in {seconds} s"),
    "unlock.erased": ("连续输错密码,本机数据已清除。请联系指挥中心重新注册。",
                      "Too many wrong PINs: this tablet's data was erased. Ask the command centre to enroll again."),
    "unlock.warning": ("连续输错10次将清除本机所有数据", "10 wrong PINs in a row erase all data on this tablet"),
    "unlock.font_missing": ("未找到中文字体，暂以英文显示：{detail}", "No Chinese font found, showing English: {detail}"),
})
