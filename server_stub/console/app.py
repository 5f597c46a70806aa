"""The command centre's web console: server-rendered pages (Jinja2), mounted at ``/console``.

Roles: the command centre (``command``) sees every report, dispatches, rejects and confirms,
issues enrollment codes, revokes devices, and sees coverage and the review queue; a department
(``department``) sees only the reports dispatched to it — any other report is a 404, even by
URL — and moves them to in progress and resolved with a note.

Security: server-side sessions (``accounts.py``) in an HttpOnly, SameSite=Strict cookie limited
to the console's path (``Secure`` over HTTPS); every POST form carries the session's CSRF token
(the sign-in form a double-submit token); answers are ``no-store`` with a strict CSP (no script
at all).  Every action and every refusal is written to the audit log, without personal data.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote

import segno
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fieldsync.workflow import allowed_next

from .. import accounts, audit, auth
from ..accounts import Session, Staff
from ..attachments import is_content_hash
from ..auth import ApiError
from ..district import District
from ..jobs import DEFAULT_RULES, coverage_rows, last_runs
from ..replica import Actor
from ..reportflow import command_move, department_move, dispatch, write_if
from . import queries
from .charts import bar_chart
from .messages import LANGS, STATUS_KEYS, t

__all__ = ["create_console", "SESSION_COOKIE", "LANG_COOKIE"]

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "fs_console"
LOGIN_COOKIE = "fs_login"
LANG_COOKIE = "fs_lang"
MAX_FORM = 64 * 1024
PHOTO_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"RIFF", "image/webp"))
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


class Refusal(Exception):
    """Answer with an error page: 403 forbidden, 404 not found, 400 bad form."""

    def __init__(self, status: int, key: str) -> None:
        self.status = status
        self.key = key


def _local_input(value: str) -> str:
    """A ``datetime-local`` form value (server local time) as ISO 8601 with the offset."""
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        at = at.astimezone()
    return at.isoformat(timespec="seconds")


def create_console(district: District) -> Starlette:
    """The console as an ASGI app; mount it at ``/console`` (``Mount("/console", app=...)``)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(fmt_time=queries.fmt_time, is_overdue=queries.is_overdue, STATUS_KEYS=STATUS_KEYS)
    env.filters["ms_iso"] = lambda ms: (datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
                                        if isinstance(ms, int) else "")

    def base_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def lang_of(request: Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, "zh")
        return lang if lang in LANGS else "zh"

    def render(request: Request, template: str, status: int = 200, session: Session | None = None,
               **ctx: Any) -> HTMLResponse:
        lang = lang_of(request)
        html = env.get_template(template).render(
            lang=lang, t=lambda key, **kw: t(lang, key, **kw), base=base_of(request), session=session,
            staff=session.staff if session else None, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def redirect(request: Request, to: str) -> RedirectResponse:
        return RedirectResponse(base_of(request) + to, status_code=303, headers={"Cache-Control": "no-store"})

    def cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path=base_of(request) or "/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    async def form_of(request: Request) -> dict[str, str]:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_FORM:
            raise Refusal(400, "error.csrf")
        raw = await request.body()
        if len(raw) > MAX_FORM:
            raise Refusal(400, "error.csrf")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return {}
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}

    async def refused(request: Request, session: Session | None, status: int, key: str) -> Response:
        if session is not None and status in (403, 404):
            who = session.staff.id

            def note() -> None:
                with district.db.transaction() as tx:
                    audit.append(tx, f"console:{who}", "authz.refused_console", request.url.path[:120],
                                 {"status": status})
            await run_in_threadpool(note)
        return render(request, "error.html", status, session, message_key=key)

    Page = Callable[[Request, Session, dict[str, str]], Awaitable[Response]]

    def staff_only(*roles: str) -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
        """A page for signed-in staff of ``roles``; POSTs must carry the session's CSRF token."""
        def wrap(page: Page) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = await run_in_threadpool(accounts.session_of, district.db, request.cookies.get(SESSION_COOKIE))
                if session is None:
                    return redirect(request, "/login")
                try:
                    form: dict[str, str] = {}
                    if request.method == "POST":
                        form = await form_of(request)
                        if not secrets.compare_digest(form.get("csrf", ""), session.csrf):
                            raise Refusal(403, "error.csrf")
                    if session.staff.role not in roles:
                        raise Refusal(403, "error.forbidden")
                    return await page(request, session, form)
                except Refusal as exc:
                    return await refused(request, session, exc.status, exc.key)
            return endpoint
        return wrap

    def actor_of(staff: Staff) -> Actor:
        return Actor(staff.id, staff.role)

    def load_report(session: Session, rid: str) -> dict[str, Any]:
        report = queries.get_report(district, rid)
        if report is None or not queries.visible_to(session.staff, report):
            raise Refusal(404, "error.not_found")
        return report

    def note_action(staff: Staff, action: str, obj: str, detail: dict[str, Any]) -> None:
        with district.db.transaction() as tx:
            audit.append(tx, f"console:{staff.id}", action, obj, detail)

    # -- sign-in ------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        session = await run_in_threadpool(accounts.session_of, district.db, request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return redirect(request, "/reports")
        return login_form(request, failed=False)

    def login_form(request: Request, failed: bool, user: str = "") -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", 401 if failed else 200, None, login_csrf=token, failed=failed, user=user)
        cookie(request, response, LOGIN_COOKIE, token, 3600)
        return response

    async def login(request: Request) -> Response:
        try:
            form = await form_of(request)
        except Refusal:
            return login_form(request, failed=True)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not secrets.compare_digest(form.get("csrf", ""), expected):
            return render(request, "error.html", 403, None, message_key="error.csrf")
        user, password = form.get("user", "").strip(), form.get("password", "")
        staff = await run_in_threadpool(accounts.sign_in, district.db, user, password)
        if staff is None:
            return login_form(request, failed=True, user=user[:64])
        sid, _ = await run_in_threadpool(accounts.open_session, district.db, staff)
        response = redirect(request, "/reports")
        cookie(request, response, SESSION_COOKIE, sid, accounts.SESSION_TTL_S)
        response.delete_cookie(LOGIN_COOKIE, path=base_of(request) or "/")
        return response

    @staff_only("command", "department")
    async def logout(request: Request, session: Session, form: dict[str, str]) -> Response:
        await run_in_threadpool(accounts.close_session, district.db, request.cookies.get(SESSION_COOKIE))
        response = redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=base_of(request) or "/")
        return response

    async def language(request: Request) -> Response:
        lang = request.path_params["lang"]
        nxt = request.query_params.get("next", "")
        base = base_of(request)
        target = nxt if nxt.startswith(base + "/") and not nxt.startswith("//") and "\\" not in nxt else base + "/reports"
        response = RedirectResponse(target, status_code=303)
        if lang in LANGS:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 24 * 3600, path=base or "/", samesite="strict",
                                httponly=True, secure=request.url.scheme == "https")
        return response

    async def home(request: Request) -> Response:
        return redirect(request, "/reports")

    # -- reports ------------------------------------------------------------------------------
    @staff_only("command", "department")
    async def reports(request: Request, session: Session, form: dict[str, str]) -> Response:
        q = request.query_params
        flt = queries.ReportFilter(status=q.get("status", "")[:20], category=q.get("category", "")[:50],
                                   grid=q.get("grid", "")[:64], overdue=q.get("overdue") == "1")

        def load() -> dict[str, Any]:
            rows, total = queries.list_reports(district, session.staff, flt)
            everyone, _ = queries.list_reports(district, session.staff, queries.ReportFilter())
            return {"rows": rows, "total": total, "grids": queries.grid_names(district),
                    "categories": queries.categories(everyone)}
        data = await run_in_threadpool(load)
        return render(request, "reports.html", session=session, flt=flt, **data)

    @staff_only("command", "department")
    async def report_page(request: Request, session: Session, form: dict[str, str]) -> Response:
        rid = request.path_params["rid"]

        def load() -> dict[str, Any]:
            report = load_report(session, rid)
            names = queries.people(district)
            photos = []
            for h in report.get("attachments") or []:
                if is_content_hash(h):
                    photos.append({"hash": h, "complete": district.attachments.state(h).complete})
            return {"report": report, "names": names, "grids": queries.grid_names(district), "photos": photos,
                    "departments": queries.departments(district)}
        data = await run_in_threadpool(load)
        report = data["report"]
        role = session.staff.role
        moves = allowed_next(role, report.get("status"))
        can_dispatch = role == "command" and report.get("status") in ("submitted", "reopened", "dispatched")
        command_moves = [m for m in moves if role == "command" and m in ("rejected", "confirmed")]
        department_moves = [m for m in moves if role == "department" and m in ("in_progress", "resolved")]
        rule = DEFAULT_RULES.get(str(report.get("category")))
        due_default = (datetime.now() + timedelta(hours=rule.hours if rule else 72)).strftime("%Y-%m-%dT%H:%M")
        steps = sorted((s for s in report.get("timeline") or [] if isinstance(s, dict)), key=lambda s: str(s.get("at")))
        return render(request, "report.html", session=session, can_dispatch=can_dispatch, steps=steps,
                      command_moves=command_moves, department_moves=department_moves,
                      suggested=rule.department if rule else "", due_default=due_default,
                      done=request.query_params.get("done", ""), changed=request.query_params.get("changed") == "1",
                      **data)

    async def _act(request: Request, session: Session, rid: str, action: Callable[[], Any], audit_action: str,
                   detail: dict[str, Any]) -> Response:
        def run() -> str:
            load_report(session, rid)
            try:
                action()
            except ApiError as exc:
                if exc.code in ("transition_not_allowed", "busy"):
                    return "changed"
                if exc.code == "report_unknown":
                    raise Refusal(404, "error.not_found") from None
                if exc.code == "note_required":
                    return "note"
                raise Refusal(400, "error.csrf") from None
            note_action(session.staff, audit_action, f"report:{rid}", detail)
            return "ok"
        outcome = await run_in_threadpool(run)
        where = f"/reports/{quote(rid)}"
        if outcome == "changed":
            return redirect(request, where + "?changed=1")
        if outcome == "note":
            return redirect(request, where + "?done=note")
        return redirect(request, where + f"?done={quote(str(detail.get('status', '')))}")

    @staff_only("command")
    async def dispatch_report(request: Request, session: Session, form: dict[str, str]) -> Response:
        rid = request.path_params["rid"]
        department = form.get("department", "").strip()
        try:
            due = _local_input(form.get("due_at", ""))
        except ValueError:
            raise Refusal(400, "error.csrf") from None
        if department not in await run_in_threadpool(queries.departments, district):
            raise Refusal(400, "error.csrf")
        return await _act(request, session, rid,
                          lambda: dispatch(district, actor_of(session.staff), rid, department, due, form.get("note")),
                          "report.dispatch", {"status": "dispatched", "department": department})

    @staff_only("command")
    async def command_action(request: Request, session: Session, form: dict[str, str]) -> Response:
        rid = request.path_params["rid"]
        status = form.get("status", "")
        if status not in ("rejected", "confirmed"):
            raise Refusal(400, "error.csrf")
        return await _act(request, session, rid,
                          lambda: command_move(district, actor_of(session.staff), rid, status, form.get("note")),
                          f"report.{status}", {"status": status})

    @staff_only("department")
    async def department_action(request: Request, session: Session, form: dict[str, str]) -> Response:
        rid = request.path_params["rid"]
        status = form.get("status", "")
        if status not in ("in_progress", "resolved"):
            raise Refusal(400, "error.csrf")
        dept = session.staff.department or ""
        return await _act(request, session, rid,
                          lambda: department_move(district, actor_of(session.staff), dept, rid, status, form.get("note")),
                          f"report.{status}", {"status": status, "department": dept})

    @staff_only("command", "department")
    async def photo(request: Request, session: Session, form: dict[str, str]) -> Response:
        rid, digest = request.path_params["rid"], request.path_params["hash"]

        def load() -> bytes:
            report = load_report(session, rid)
            if digest not in (report.get("attachments") or []) or not is_content_hash(digest):
                raise Refusal(404, "error.not_found")
            state = district.attachments.state(digest)
            if not state.complete:
                raise Refusal(404, "report.photo_pending")
            chunks, offset = [], 0
            while offset < state.received:
                part = district.attachments.open_range(digest, offset, 1024 * 1024)
                if not part:
                    break
                chunks.append(part)
                offset += len(part)
            note_action(session.staff, "attachment.view", f"attachment:{digest}", {"report": rid})
            return b"".join(chunks)
        data = await run_in_threadpool(load)
        kind = next((m for magic, m in PHOTO_TYPES if data.startswith(magic)), "application/octet-stream")
        return Response(data, media_type=kind, headers={**SECURITY_HEADERS, "Cache-Control": "private, no-store"})

    # -- devices ------------------------------------------------------------------------------
    @staff_only("command")
    async def devices_page(request: Request, session: Session, form: dict[str, str]) -> Response:
        def load() -> dict[str, Any]:
            return {"devices": district.devices(), "names": queries.people(district),
                    "workers": queries.workers(district)}
        data = await run_in_threadpool(load)
        return render(request, "devices.html", session=session, revoked=request.query_params.get("revoked", "")[:40],
                      **data)

    @staff_only("command")
    async def issue_code(request: Request, session: Session, form: dict[str, str]) -> Response:
        worker = form.get("worker", "")

        def issue() -> tuple[str, int, str]:
            known = dict(queries.workers(district))
            if worker not in known:
                raise Refusal(400, "error.csrf")
            code, expires = auth.issue_code(district.db, worker, auth.CODE_TTL_S, actor=f"console:{session.staff.id}")
            return code, expires, known[worker]
        code, expires, name = await run_in_threadpool(issue)
        qr = segno.make(code, error="m").svg_inline(scale=6, border=2, dark="#000", light="#fff", omitsize=False)
        until = datetime.fromtimestamp(expires / 1000, tz=timezone.utc).astimezone().strftime("%H:%M")
        return render(request, "code.html", session=session, code=code, qr=qr, worker=worker, worker_name=name, until=until)

    @staff_only("command")
    async def revoke(request: Request, session: Session, form: dict[str, str]) -> Response:
        device_id = request.path_params["device_id"]
        wipe = form.get("wipe") == "1"
        try:
            await run_in_threadpool(district.revoke, device_id, wipe, f"console:{session.staff.id}")
        except ApiError:
            raise Refusal(404, "error.not_found") from None
        return redirect(request, f"/devices?revoked={quote(device_id)}")

    # -- coverage and review ------------------------------------------------------------------
    @staff_only("command")
    async def coverage_page(request: Request, session: Session, form: dict[str, str]) -> Response:
        lang = lang_of(request)

        def load() -> dict[str, Any]:
            return {"rows": coverage_rows(district), "grids": queries.grid_names(district),
                    "names": queries.people(district), "runs": last_runs(district)}
        data = await run_in_threadpool(load)
        rows, grids, names = data["rows"], data["grids"], data["names"]
        of = t(lang, "coverage.of", visited="{value}", total="{total}")
        by_grid = [(grids.get(r["grid"], r["grid"]), r["visited"], r["households"]) for r in rows if not r["worker_id"]]
        by_worker = [(f"{names.get(r['worker_id'], r['worker_id'])} · {grids.get(r['grid'], r['grid'])}",
                      r["visited"], r["households"]) for r in rows if r["worker_id"]]
        charts = {
            "grid": bar_chart(by_grid, t(lang, "coverage.by_grid"), value_text=of, label_width=190) if by_grid else "",
            "worker": bar_chart(by_worker, t(lang, "coverage.by_worker"), value_text=of, label_width=230)
            if by_worker else "",
        }
        days = rows[0]["days"] if rows else 30
        computed = queries.fmt_time(datetime.fromtimestamp(rows[0]["computed_ms"] / 1000, tz=timezone.utc).isoformat()) \
            if rows else ""
        return render(request, "coverage.html", session=session, charts=charts, days=days, computed=computed,
                      runs=data["runs"], rows=rows)

    @staff_only("command")
    async def review_page(request: Request, session: Session, form: dict[str, str]) -> Response:
        def load() -> dict[str, Any]:
            dups, escalated = queries.review_items(district)
            return {"dups": dups, "escalated": escalated, "grids": queries.grid_names(district)}
        data = await run_in_threadpool(load)
        return render(request, "review.html", session=session, **data)

    @staff_only("command")
    async def close_review(request: Request, session: Session, form: dict[str, str]) -> Response:
        tid = request.path_params["tid"]

        def close() -> None:
            def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
                if current is None or current.get("assignee") != "command" or current.get("status", "open") != "open":
                    return None
                return {"status": "done"}
            if write_if(district, actor_of(session.staff), "tasks", tid, decide):
                note_action(session.staff, "review.close", f"task:{tid}", {})
        await run_in_threadpool(close)
        return redirect(request, "/review")

    routes = [
        Route("/", home, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang/{lang}", language, methods=["GET"]),
        Route("/reports", reports, methods=["GET"]),
        Route("/reports/{rid}", report_page, methods=["GET"]),
        Route("/reports/{rid}/dispatch", dispatch_report, methods=["POST"]),
        Route("/reports/{rid}/command", command_action, methods=["POST"]),
        Route("/reports/{rid}/department", department_action, methods=["POST"]),
        Route("/reports/{rid}/photos/{hash}", photo, methods=["GET"]),
        Route("/devices", devices_page, methods=["GET"]),
        Route("/devices/code", issue_code, methods=["POST"]),
        Route("/devices/{device_id}/revoke", revoke, methods=["POST"]),
        Route("/coverage", coverage_page, methods=["GET"]),
        Route("/review", review_page, methods=["GET"]),
        Route("/review/{tid}/close", close_review, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)
