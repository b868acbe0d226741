"""The dashboard at `/`: server-rendered pages (Jinja2) over `tether.Client`.

Pages are glue like the API's routes: each reads through `Client` and the views every surface shares
(`_ops/views.py`: stored values as data, nothing restored), and each form posts to a route
that makes one `Client` call. Jinja2 autoescapes every page, so a stored string is shown
as text, never as markup. Forms are urlencoded and carry the session's CSRF token (see
`_session.py`). A small script (`static/dashboard.js`) makes pages live: it listens to
the execution's Server-Sent Events (or the store-wide change stream) and swaps the
regions marked `data-live` for freshly rendered ones; without it, every page still works.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from .._core.positions import display, sort_key
from .._core.status import Status
from .._memory.views import memory_json
from .._ops import views
from .._ops.client import Client
from ..errors import (
    InputTooLarge,
    InputValidationError,
    InvalidStateError,
    TetherError,
    UsageError,
    WaitAlreadyResolved,
    WaitNotFound,
)
from . import _errors, _forms, _memories, _stream
from ._session import COOKIE, Refused, Session, Sessions, csrf_ok, may

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tether.server", "templates"),
    autoescape=True,  # every value is text unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_PAGE = 50
# Capped status counts on the list page; checkpoint calls per execution page (rendering one
# with its result takes a fraction of a millisecond: thousands would take seconds).
_COUNT_CAP = 10_000
_CALLS_PAGE = 50
_MAX_FORM = 4 * 1024 * 1024  # input itself is capped lower, by Client.input_json
_STATUSES = [s.value for s in Status]


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _when(value: str | None) -> str:
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _cost(value: Any) -> str:
    return "" if not isinstance(value, int | float) else f"${value:.4f}"


def _clock(value: str | None) -> str:
    """A moment as its time of day when that is today (UTC), else with its date."""
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    if moment.date() == dt.datetime.now(dt.UTC).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _epoch(value: str | None) -> str:
    """A moment as epoch seconds: what dashboard.js counts down to (see `countdown`)."""
    if not value:
        return ""
    return f"{dt.datetime.fromisoformat(value).timestamp():.3f}"


_ENV.filters.update(
    json_text=_json_text, when=_when, clock=_clock, seconds=_seconds, cost=_cost, epoch=_epoch
)
_ENV.globals["urlquote"] = lambda s: urllib.parse.quote(str(s), safe="")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the dashboard's forms send nothing else); the last value
    of a repeated name wins."""
    raw = await request.body()
    if len(raw) > _MAX_FORM:
        raise InputTooLarge(f"a form of {len(raw)} bytes is more than this dashboard takes")
    body = raw.decode("utf-8", errors="replace")
    return dict(urllib.parse.parse_qsl(body, keep_blank_values=True))


Form = Annotated[dict[str, str], Depends(_form)]


def router(client: Client, *, poll: float, stream_seconds: float) -> APIRouter:
    sessions = Sessions(client)
    pages = APIRouter(include_in_schema=False)

    def render(
        request: Request, session: Session | None, template: str, code: int = 200, **ctx: Any
    ) -> HTMLResponse:
        ctx.setdefault("notice", None)
        html = _ENV.get_template(template).render(
            request_path=request.url.path,
            session=session,
            operate=session is not None and may(session, "operate"),
            **ctx,
        )
        response = HTMLResponse(html, status_code=code, headers=_HEADERS)
        _keep(request, response, session)
        return response

    def _keep(request: Request, response: Response, session: Session | None) -> None:
        if session is not None and session.fresh:
            response.set_cookie(
                COOKIE,
                session.id,
                max_age=max(0, int(session.expires - time.time())),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            session.fresh = False

    def refused(request: Request, exc: Refused) -> Response:
        if exc.login:
            target = urllib.parse.quote(str(request.url.path) + _query(request), safe="")
            return RedirectResponse(f"/login?next={target}", status_code=303)
        return render(request, None, "message.html", 401, title="Not allowed", message=exc.message)

    def failed(request: Request, session: Session, exc: TetherError) -> HTMLResponse:
        code = _errors.status_of(exc)
        return render(
            request, session, "message.html", code, title=type(exc).__name__, message=str(exc)
        )

    def page(
        request: Request, build: Callable[[Session], Response | tuple[str, dict[str, Any]]]
    ) -> Response:
        try:
            session = sessions.viewer(request)
        except Refused as exc:
            return refused(request, exc)
        try:
            built = build(session)
        except TetherError as exc:
            return failed(request, session, exc)
        if isinstance(built, Response):
            _keep(request, built, session)
            return built
        template, ctx = built
        return render(request, session, template, **ctx)

    def action(
        request: Request, form: dict[str, str], build: Callable[[Session], Response]
    ) -> Response:
        """A form post: a signed-in session that may operate, with its CSRF token."""
        try:
            session = sessions.viewer(request)
        except Refused as exc:
            return refused(request, exc)
        if not csrf_ok(session, form.get("csrf")):
            message = "the form is out of date (its CSRF token does not match); reload the page"
            return render(request, session, "message.html", 403, title="Refused", message=message)
        if not may(session, "operate"):
            message = f"token {session.name!r} may only read; this needs an operate token"
            return render(request, session, "message.html", 403, title="Forbidden", message=message)
        try:
            return build(session)
        except TetherError as exc:
            return failed(request, session, exc)

    # --- sign in ----------------------------------------------------------------------------

    @pages.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        session = sessions.anonymous(request)
        return render(request, session, "login.html", next=_local(next), error=None)

    @pages.post("/login", response_class=HTMLResponse)
    def login(request: Request, form: Form) -> Response:
        session = sessions.anonymous(request)
        target = _local(form.get("next", "/"))
        if not csrf_ok(session, form.get("csrf")):
            error = "the form is out of date; try again"
            return render(request, session, "login.html", 403, next=target, error=error)
        signed = sessions.sign_in(request, form.get("token", ""))
        if signed is None:
            retry = sessions.anonymous(request)
            error = "unknown or revoked token"
            return render(request, retry, "login.html", 401, next=target, error=error)
        response = RedirectResponse(target, status_code=303)
        _keep(request, response, signed)
        return response

    @pages.post("/logout")
    def logout(request: Request, form: Form) -> Response:
        session = sessions.anonymous(request)
        if csrf_ok(session, form.get("csrf")):
            sessions.end(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- executions -------------------------------------------------------------------------

    @pages.get("/", response_class=HTMLResponse)
    def executions(
        request: Request,
        status: str | None = None,
        flow: str | None = None,
        q: str | None = None,
        cursor: str | None = None,
        queue: str | None = None,
        parent: str | None = None,
    ) -> Response:
        def build(session: Session) -> Response | tuple[str, dict[str, Any]]:
            notice = None
            prefix = q.strip() if q and q.strip() else None
            if prefix:
                try:
                    found = client.resolve_id(prefix)
                except TetherError as exc:  # none, or several (listed below): say which
                    notice = str(exc)
                else:
                    return RedirectResponse(f"/executions/{found}", status_code=303)
            chosen = status if status in _STATUSES else None
            selection = {
                "flow": _given(flow),
                "queue": _given(queue),
                "parent": _given(parent),
                "id_prefix": prefix,
            }
            result = client.page(chosen, limit=_PAGE, cursor=cursor or None, **selection)
            # Capped: exact counts of 100,000 executions cost more than the rest of the page.
            # They count what the other filters select: the `all` count is the list's size.
            found_counts = client.status_counts(_COUNT_CAP, **selection)
            counts = {s.value: n for s, n in found_counts.items()}
            capped = {s for s, n in counts.items() if n >= _COUNT_CAP}
            rows = [views.execution_json(r) for r in result.items]
            now = dt.datetime.now(dt.UTC)
            others = {k: v for k, v in selection.items() if k != "id_prefix"}
            filters = {"status": chosen, **others, "q": prefix}
            return "executions.html", {
                "rows": rows,
                "counts": counts,
                "capped": capped,
                "statuses": _STATUSES,
                "filters": filters,
                "q": q or "",
                "notice": notice,
                "next_url": _url("/", **filters, cursor=result.next) if result.next else None,
                "first_url": _url("/", **filters) if cursor else None,
                "status_url": lambda s: _url("/", **{**filters, "status": s}),
                "attention": {r.id: client.attention(r) for r in result.items},
                # Seconds to the start of each execution that waits for one.
                "delayed": {
                    r.id: _until(r.not_before, now) for r in result.items if _delayed(r, now)
                },
                "loaded_at": now.timestamp(),
            }

        return page(request, build)

    @pages.get("/executions/{execution_id}", response_class=HTMLResponse)
    def execution(
        request: Request, execution_id: str, done: str | None = None, calls: int = 0
    ) -> Response:
        def build(session: Session) -> tuple[str, dict[str, Any]]:
            return "execution.html", _execution_context(
                client, execution_id, done, calls=max(calls, 0)
            )

        return page(request, build)

    @pages.post("/executions/{execution_id}/{verb}", response_class=HTMLResponse)
    def operate(request: Request, execution_id: str, verb: str, form: Form) -> Response:
        def build(session: Session) -> Response:
            if verb == "cancel":
                client.cancel(execution_id)
            elif verb == "resume":
                client.resume(execution_id)
            elif verb == "retry":
                client.retry(execution_id)
            elif verb == "replay":
                return _replay(request, session, execution_id, form)
            else:
                raise UsageError(f"the dashboard has no action {verb!r}")
            return RedirectResponse(f"/executions/{execution_id}?done={verb}", status_code=303)

        return action(request, form, build)

    def _replay(
        request: Request, session: Session, execution_id: str, form: dict[str, str]
    ) -> Response:
        errors: list[str] = []
        overrides: Any = {}
        args: Any = None
        try:
            overrides = json.loads(form.get("overrides") or "{}")
            if not isinstance(overrides, dict):
                errors.append('overrides are a JSON object: {"checkpoint name": value}')
        except ValueError as exc:
            errors.append(f"overrides are not valid JSON: {exc}")
        if (form.get("args") or "").strip():
            try:
                args = json.loads(form["args"])
                if not isinstance(args, list | dict):
                    errors.append("arguments are a JSON list (positional) or object (keywords)")
            except ValueError as exc:
                errors.append(f"arguments are not valid JSON: {exc}")
        start = form.get("from", "")
        if not errors:
            try:
                handle = client.replay(execution_id, from_=start, overrides=overrides, args=args)
            except UsageError as exc:
                errors.append(str(exc))
            else:
                return RedirectResponse(f"/executions/{handle.id}?done=replay", status_code=303)
        ctx = _execution_context(client, execution_id, None)
        ctx["replay"] = {"errors": errors, "form": form}
        return render(request, session, "execution.html", 422, **ctx)

    # --- waits ------------------------------------------------------------------------------

    @pages.get("/waits", response_class=HTMLResponse)
    def waits(request: Request, flow: str | None = None) -> Response:
        def build(session: Session) -> tuple[str, dict[str, Any]]:
            pending = client.pending_waits(flow or None, 200)
            items = [_wait_item(views.wait_json(w)) for w in pending if w.kind == "input"]
            return "waits.html", {"items": items, "flow": flow or ""}

        return page(request, build)

    @pages.post("/waits/{execution_id}/{name:path}", response_class=HTMLResponse)
    def answer(request: Request, execution_id: str, name: str, form: Form) -> Response:
        def build(session: Session) -> Response:
            record = client.get(execution_id)
            wait = next((w for w in record.waits if w.name == name), None)
            if record.status.finished:
                raise InvalidStateError(
                    f"execution {execution_id} already {record.status.value}; it takes no "
                    "more input"
                )
            if wait is None or wait.kind != "input":
                raise WaitNotFound(f"execution {execution_id} has no wait {name!r} for input")
            if wait.status != "pending":
                raise WaitAlreadyResolved(
                    f"wait {name!r} of execution {execution_id} is already {wait.status}"
                    + (f" (by {wait.resolved_by})" if wait.resolved_by else "")
                )
            shown = views.wait_json(wait)
            fields = _forms.build(shown["json_schema"])
            value, errors = _forms.read(fields, form)
            if not errors:
                try:
                    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
                    client.input_json(execution_id, name, text, by=session.name)
                except InputValidationError as exc:
                    for err in getattr(exc, "errors", None) or []:
                        errors.setdefault(_forms.path_of(err.get("loc", [])), []).append(
                            str(err.get("msg"))
                        )
                    if not errors:
                        errors[_forms.ROOT] = [str(exc)]
                else:
                    return RedirectResponse(
                        f"/executions/{execution_id}?done=input", status_code=303
                    )
            item = _wait_item(shown, errors=errors, entered=form)
            back = form.get("back") == "execution"
            if back:
                ctx = _execution_context(client, execution_id, None)
                ctx["answers"] = {name: item}
                return render(request, session, "execution.html", 422, **ctx)
            return render(request, session, "waits.html", 422, items=[item], flow="")

        return action(request, form, build)

    # --- schedules --------------------------------------------------------------------------

    @pages.get("/schedules", response_class=HTMLResponse)
    def schedules(request: Request, done: str | None = None) -> Response:
        def build(session: Session) -> tuple[str, dict[str, Any]]:
            items = [views.schedule_json(s) for s in client.schedules()]
            return "schedules.html", {"items": items, "notice": _SCHEDULE_DONE.get(done or "")}

        return page(request, build)

    @pages.post("/schedules/{name}/{verb}", response_class=HTMLResponse)
    def operate_schedule(request: Request, name: str, verb: str, form: Form) -> Response:
        def build(session: Session) -> Response:
            if verb == "pause":
                client.pause_schedule(name)
            elif verb == "resume":
                client.resume_schedule(name)
            else:
                raise UsageError(f"the dashboard has no schedule action {verb!r}")
            return RedirectResponse(f"/schedules?done={verb}", status_code=303)

        return action(request, form, build)

    # --- memory -----------------------------------------------------------------------------

    @pages.get("/memory", response_class=HTMLResponse)
    def memory_page(
        request: Request,
        scope: str | None = None,
        scope_id: str | None = None,
        prefix: str | None = None,
        key: str | None = None,
    ) -> Response:
        def build(session: Session) -> tuple[str, dict[str, Any]]:
            chosen = scope if scope in ("execution", "flow", "namespace") else None
            where = (chosen, scope_id or None)
            entries = _memories.entries(where[0], where[1], prefix or None, 500)
            versions: list[dict[str, Any]] = []
            if key and chosen and scope_id:
                versions = _memories.history(chosen, scope_id, key)
            return "memory.html", {
                "entries": [memory_json(e) for e in entries],
                "filters": {"scope": chosen or "", "scope_id": scope_id or "", "prefix": prefix},
                "key": key,
                "versions": versions,
                "memory_url": lambda e: _url(
                    "/memory", scope=e["scope"], scope_id=e["scope_id"], key=e["key"]
                ),
            }

        return page(request, build)

    # --- live -------------------------------------------------------------------------------

    @pages.get("/executions/{execution_id}/live")
    def execution_events(request: Request, execution_id: str) -> Response:
        try:
            sessions.viewer(request)
        except Refused as exc:
            return refused(request, exc)
        client.summary(execution_id)
        last = request.headers.get("last-event-id")
        after = int(last) if last and last.isdigit() else 0
        stream = _stream.events(client, execution_id, after, poll=poll, max_seconds=stream_seconds)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_NO_CACHE)

    @pages.get("/live")
    def changes(request: Request) -> Response:
        try:
            sessions.viewer(request)
        except Refused as exc:
            return refused(request, exc)
        stream = _stream.changes(client, poll=poll, max_seconds=stream_seconds)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_NO_CACHE)

    return pages


# Scripts and styles come from /static only; nobody may frame the pages (an approve button
# under another site's overlay is a click nobody meant). Inline styles draw the bars.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _local(target: str) -> str:
    """A redirect target on this site (a `next=` pointing elsewhere would let a link send a
    person who just signed in to another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _given(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _url(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urllib.parse.urlencode(kept)}" if kept else path


def _wait_item(
    shown: dict[str, Any],
    *,
    errors: dict[str, list[str]] | None = None,
    entered: dict[str, str] | None = None,
) -> dict[str, Any]:
    form = _forms.build(shown["json_schema"])
    errors = errors or {}
    known = _forms.paths(form)
    return {
        "wait": shown,
        "form": form,
        "errors": errors,
        "other_errors": [m for p, ms in errors.items() if p not in known for m in ms],
        "entered": entered or {},
    }


_DONE = {
    "cancel": "Cancellation requested.",
    "resume": "Resumed: a worker continues it.",
    "retry": "Retried: a worker runs it again.",
    "replay": "Replay started: a worker runs it from the chosen point.",
    "input": "Input given: the execution continues.",
}


_SCHEDULE_DONE = {
    "pause": "Paused on every worker: its ticks pass without starting executions.",
    "resume": "Resumed: its next tick starts an execution.",
}


def _execution_context(
    client: Client, execution_id: str, done: str | None, *, calls: int = 0
) -> dict[str, Any]:
    record = client.get(  # a unique start of an id will do
        client.resolve_id(execution_id), checkpoint_offset=calls, checkpoint_limit=_CALLS_PAGE
    )
    shown = views.execution_json(record, full=True)
    logs: dict[str | None, list[dict[str, Any]]] = {}
    for log in client.logs(record.id):
        logs.setdefault(log.position, []).append(views.log_json(log))
    start = record.started_at or record.created_at
    now = dt.datetime.now(dt.UTC)
    end = record.finished_at or now
    span = max((end - start).total_seconds(), 1e-6)

    def bar(begin: dt.datetime | None, finish: dt.datetime | None) -> dict[str, float]:
        if begin is None:
            return {"left": 0.0, "width": 0.0}
        left = min(max((begin - start).total_seconds() / span, 0.0), 1.0)
        width = ((finish or end) - begin).total_seconds() / span
        return {"left": round(left * 100, 2), "width": round(min(max(width, 0.004), 1.0) * 100, 2)}

    timeline: list[tuple[Any, dict[str, Any]]] = []
    for cp, cp_json in zip(record.checkpoints, shown["checkpoints"], strict=True):
        item = {"type": "checkpoint", "cp": cp_json, "bar": bar(cp.started_at, cp.finished_at)}
        item["logs"] = logs.get(cp.position, [])
        timeline.append((sort_key(cp.position), item))
    for wait in record.waits:
        wait_shown = views.wait_json(wait)
        resolved = wait.resolved_at
        item = {
            "type": "wait",
            "wait": wait_shown,
            "bar": bar(wait.created_at, resolved),
            "answer": _wait_item(wait_shown) if wait.status == "pending" else None,
        }
        timeline.append((sort_key(wait.position), item))
    timeline.sort(key=lambda pair: pair[0])
    running = [{"type": "running", "run": r} for r in shown["running"]]
    events = [e for e in shown["events"] if e["kind"] not in ("output", "log")]
    fork_points = [
        (item["cp"]["position"], f"{item['cp']['position']} {item['cp']['name']}")
        if item["type"] == "checkpoint"
        else (item["wait"]["position"], f"{item['wait']['position']} {item['wait']['label']}")
        for _, item in timeline
    ]
    return {
        "x": shown,
        "status": record.status.value,
        "finished": record.status.finished,
        "attention": client.attention(record),
        "lease_left": None
        if record.lease_expires is None
        else (record.lease_expires - dt.datetime.now(dt.UTC)).total_seconds(),
        "elapsed": span if record.started_at else None,
        "timed_out": _timed_out(shown),
        # One instant for the countdowns and the clock dashboard.js counts them on from.
        "deadline_left": _until(record.deadline, now),
        "starts_in": _until(record.not_before, now) if _delayed(record, now) else None,
        "timeline": [item for _, item in timeline] + running,
        "calls": _calls_window(record, calls),
        "events": events,
        "fork_points": fork_points,
        "replay": {"errors": [], "form": {}},
        "answers": {},
        "notice": _DONE.get(done or ""),
        "loaded_at": now.timestamp(),
        "display": display,
    }


def _until(moment: dt.datetime | None, now: dt.datetime) -> float | None:
    """Seconds from `now` to `moment` (negative once it passed)."""
    return None if moment is None else (moment - now).total_seconds()


def _delayed(record: Any, now: dt.datetime | None = None) -> bool:
    """Queued with a start time still to come (`delay=` / `not_before=`): no worker takes it
    yet, which is no fault to flag."""
    return (
        record.status is Status.QUEUED
        and record.not_before is not None
        and record.not_before > (now or dt.datetime.now(dt.UTC))
    )


def _timed_out(shown: dict[str, Any]) -> bool:
    """Cancelled because its deadline passed (its recorded error is ExecutionTimedOut)."""
    error = shown.get("error") or {}
    return shown["status"] == "cancelled" and str(error.get("type", "")).endswith(
        "ExecutionTimedOut"
    )


def _calls_window(record: Any, offset: int) -> dict[str, Any] | None:
    """Where the shown calls sit among all of them, with links to the windows around, or
    None when every call is shown."""
    total = record.checkpoint_count or 0
    if offset == 0 and total <= _CALLS_PAGE:
        return None
    path = f"/executions/{record.id}"
    end = min(offset + _CALLS_PAGE, total)
    return {
        "first": offset + 1 if offset < total else total,
        "last": end,
        "total": total,
        "prev_url": _url(path, calls=max(offset - _CALLS_PAGE, 0) or None) if offset else None,
        "next_url": _url(path, calls=end) if end < total else None,
    }
