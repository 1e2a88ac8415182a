"""The shifters' pages, rendered on the server with Jinja2 from the API's own queries.

Every page works without JavaScript: filters are GET forms, the run page's tabs are
links (``?tab=``), trends are SVG drawn here, and actions are plain forms posting to the
action routes. JavaScript (``static/runwatch.js``) only adds what needs it -- drawing
histograms with JSROOT, the PMT map, live updates -- through the hooks the templates emit
(``.hist``, ``#pmt-map``, ``data-live``; see docs/web.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from runwatch.catalogue.models import RunStatus
from runwatch.dqm.histogram import HistogramFileError, read_file
from runwatch.dqm.trends import quantities
from runwatch.jobs.logs import read_tail
from runwatch.storage.cache import OutputCache, output_cache
from runwatch.storage.transfer import StageError
from runwatch.storage.urls import URLError
from runwatch.web import queries
from runwatch.web.api_v1 import RunFilters, alarm_states, linker, recent_runs
from runwatch.web.auth import Principal, csrf_token, current_principal, require_read
from runwatch.web.cache import ShortCache
from runwatch.web.files import attempt_log
from runwatch.web.models import Role
from runwatch.web.state import app_db, app_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter(tags=["pages"], dependencies=[Depends(require_read)], include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

TABS = {"base": "Base", "calib": "Calib", "rec": "Rec", "pmt": "PMT Info", "jobs": "Jobs"}
EXPERIMENTS_GROUP = "runwatch.experiments"
TABS_META_KEY = "tabs"
"""The merged file's metadata key naming each tab's histograms: {"calib": [...], ...}."""
CHANGES_SHOWN = 500
CHOICES_TTL_S = 60.0
LOG_BYTES = 256 * 1024
"""The end of a log shown on its page (the whole file is a link away)."""


def _time(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(abs(seconds), 3600)
    text = f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
    return ("-" if seconds < 0 else "") + text


templates.env.filters["time"] = _time
templates.env.filters["duration"] = _duration
templates.env.filters["css"] = lambda text: str(text).lower().replace(" ", "-")
templates.env.globals["status_css"] = {s: s.value.lower().replace(" ", "-") for s in RunStatus}


def render(
    request: Request, name: str, page: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page with what every page needs: who is asking, whether they may act, CSRF."""
    principal: Principal | None = current_principal(request)
    return templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "can_act": principal is not None and principal.role.allows(Role.SHIFTER),
            "csrf_token": csrf_token(request),
            "page": page,
            **context,
        },
        status_code=status_code,
    )


def not_found(request: Request, what: str) -> HTMLResponse:
    return render(request, "not_found.html", "", status_code=404, what=what)


# -- recent runs -------------------------------------------------------------------------


def _number(value: str | None, low: float, high: float, kind: type = int) -> Any:
    """A form field as a number within [low, high], or None (empty or not a number)."""
    try:
        number = kind(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and low <= number <= high else None


def form_filters(params: Mapping[str, str]) -> RunFilters:
    """The recent-runs form's fields, forgiving: what cannot be read takes its default."""
    modes = {m.value: m for m in queries.RunMode}
    sorts = {s.value: s for s in queries.RunSort}
    statuses = {s.value: s for s in RunStatus}
    return RunFilters(
        mode=modes.get(params.get("mode", ""), queries.RunMode.RECENT),
        status=statuses.get(params.get("status", "")),
        stream=(params.get("stream") or "")[:64] or None,
        number=_number(params.get("number"), 0, 2**62),
        sort=sorts.get(params.get("sort", ""), queries.RunSort.END),
        page=_number(params.get("page"), 1, 100_000) or 1,
        per_page=_number(params.get("per_page"), 1, queries.PER_PAGE_MAX) or 50,
        days=_number(params.get("days"), 0.001, 3650, float) or 7.0,
    )


def read(request: Request, query: Callable[[Session], T]) -> T:
    """``query`` in a read-only session of its own."""
    with app_db(request).read_session() as session:
        return query(session)


def choices(request: Request, name: str, find: Callable[[], list[str]]) -> list[str]:
    """A filter's choices (streams, trend quantities), found at most once a minute per
    app: finding them reads a whole table, which the pages themselves never do."""
    found: dict[str, tuple[float, list[str]]] | None = getattr(
        request.app.state, "filter_choices", None
    )
    if found is None:
        found = request.app.state.filter_choices = {}
    now = time.monotonic()
    if name not in found or now - found[name][0] > CHOICES_TTL_S:
        found[name] = (now, find())
    return found[name][1]


def page_link(request: Request, page: int) -> str:
    params = dict(request.query_params) | {"page": str(page)}
    return "/?" + urlencode({k: v for k, v in params.items() if v})


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    if current_principal(request) is None:
        # An anonymous visitor's page depends on the query alone (no name, no CSRF token,
        # no action buttons): the rendered page is shared for [web] cache_seconds like
        # its data, which spares rendering it for every screen in the control room.
        cache: ShortCache = request.app.state.recent_runs
        body = cache.get(("page", request.url.query), lambda: _runs_page(request).body)
        return HTMLResponse(body)
    return _runs_page(request)


def _runs_page(request: Request) -> HTMLResponse:
    filters = form_filters(request.query_params)
    found = recent_runs(request, filters)
    streams = choices(request, "streams", lambda: read(request, queries.streams))
    return render(
        request,
        "runs.html",
        "runs",
        filters=filters,
        result=found,
        streams=streams,
        modes=list(queries.RunMode),
        sorts=list(queries.RunSort),
        statuses=list(RunStatus),
        previous=page_link(request, found.page - 1) if found.page > 1 else None,
        next=page_link(request, found.page + 1) if found.has_next else None,
    )


# -- one run -----------------------------------------------------------------------------


def histogram_tabs(listed: Any) -> dict[str, str]:
    """Histogram name -> tab, from a mapping {"calib": [names], "rec": [names]}."""
    placed: dict[str, str] = {}
    if isinstance(listed, Mapping):
        for tab in ("calib", "rec"):
            names = listed.get(tab)
            if isinstance(names, list | tuple):
                placed.update({str(name): tab for name in names})
    return placed


@functools.cache
def plugin_tabs() -> dict[str, str]:
    """The tabs the experiment plugins place their histograms under.

    An experiment's module (entry point group ``runwatch.experiments``) may define
    ``histogram_tabs()`` returning {"calib": [names], "rec": [names]}; read once.
    """
    placed: dict[str, str] = {}
    for entry in entry_points(group=EXPERIMENTS_GROUP):
        try:
            listed = getattr(entry.load(), "histogram_tabs", None)
            placed |= histogram_tabs(listed() if callable(listed) else None)
        except Exception:
            log.exception("experiment %s: its histogram tabs cannot be read", entry.name)
    return placed


def tab_rule(meta: Mapping[str, Any] | None) -> dict[str, str]:
    """Where a run's histograms go: the merged file's own metadata ``tabs`` first, then
    the experiment plugins' ``histogram_tabs()``; a histogram neither places is Rec's."""
    return plugin_tabs() | histogram_tabs((meta or {}).get(TABS_META_KEY))


def merged_meta(url: str, cache: OutputCache) -> dict[str, Any] | None:
    """The metadata of a merged file (no histograms read); None when unreadable. A file on
    a remote ``[storage] output_root`` is read from the output cache."""
    try:
        return read_file(cache.local_path(url), names=()).meta
    except (HistogramFileError, URLError, StageError, OSError):
        return None


def split_histograms(
    found: queries.RunHistograms, meta: Mapping[str, Any] | None
) -> dict[str, list[queries.HistogramView]]:
    placed = tab_rule(meta)
    tabs: dict[str, list[queries.HistogramView]] = {"calib": [], "rec": []}
    for hist in found.histograms:
        tabs[placed.get(hist.path, "rec")].append(hist)
    return tabs


@router.get("/runs/{number}", response_class=HTMLResponse)
def run_page(request: Request, number: int, tab: str = "base") -> HTMLResponse:
    tab = tab if tab in TABS else "base"
    link = linker(request)
    context: dict[str, Any] = {}
    with app_db(request).read_session() as session:
        summary = queries.run_summary(session, number, link)
        run = queries.find_run(session, number)
        if summary is None or run is None:
            return not_found(request, f"run {number}")
        if tab in ("calib", "rec"):
            found = queries.run_histograms(session, run, link)
            cache = output_cache(app_settings(request))
            meta = merged_meta(found.merge.url, cache) if found.merge else None
            context["histograms"] = split_histograms(found, meta)[tab]
            context["merge"] = found.merge
        elif tab == "pmt":
            context["pmt"] = queries.pmt_summary(session, run, CHANGES_SHOWN)
        elif tab == "jobs":
            context["tasks"] = queries.run_jobs(session, run, link)
    return render(
        request, "run.html", "run", run=summary, tab=tab, tabs=TABS, number=number, **context
    )


# -- alarms, trends, keep-up, logs -------------------------------------------------------


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(request: Request, state: str = "live") -> HTMLResponse:
    state = state if state in ("live", "all", "open", "acknowledged", "cleared") else "live"
    with app_db(request).read_session() as session:
        found = queries.alarms(session, alarm_states(state), limit=500)
    return render(request, "alarms.html", "alarms", alarms=found, state=state)


def svg_plot(
    points: Sequence[queries.TrendPoint], width: int = 800, height: int = 300
) -> dict[str, Any]:
    """Coordinates of a line plot of ``points`` in an SVG of ``width`` by ``height``."""
    margin = 50
    if not points:
        return {"width": width, "height": height, "line": "", "dots": [], "ticks": []}
    xs = [p.run for p in points]
    ys = [p.value for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    sx = (width - 2 * margin) / ((x1 - x0) or 1)
    sy = (height - 2 * margin) / (y1 - y0)

    def at(p: queries.TrendPoint) -> tuple[float, float]:
        x = margin + (p.run - x0) * sx if x1 > x0 else width / 2
        return round(x, 1), round(height - margin - (p.value - y0) * sy, 1)

    dots = [(*at(p), p.run, p.value) for p in points]
    ticks = [
        (round(height - margin - (v - y0) * sy, 1), f"{v:.4g}") for v in (y0, (y0 + y1) / 2, y1)
    ]
    return {
        "width": width,
        "height": height,
        "margin": margin,
        "line": " ".join(f"{x},{y}" for x, y, _, _ in dots),
        "dots": dots,
        "ticks": ticks,
        "runs": (x0, x1),
    }


@router.get("/trends", response_class=HTMLResponse)
def trends_page(
    request: Request, quantity: str = "", stream: str = "", last: str = "50"
) -> HTMLResponse:
    n = _number(last, 1, 5000) or 50
    with app_db(request).read_session() as session:
        known = choices(request, "quantities", lambda: quantities(session))
        streams = choices(request, "streams", lambda: queries.streams(session))
        chosen = quantity if quantity in known else (known[0] if known else "")
        found = queries.trend_of(session, chosen, n, stream or None) if chosen else None
    return render(
        request,
        "trends.html",
        "trends",
        quantities=known,
        quantity=chosen,
        streams=streams,
        stream=stream,
        last=n,
        trend=found,
        plot=svg_plot(found.points) if found else None,
    )


@router.get("/keepup", response_class=HTMLResponse)
def keepup_page(request: Request) -> HTMLResponse:
    with app_db(request).read_session() as session:
        found = queries.keepup(session, dt.datetime.now(dt.UTC))
    peak = max(found.done_per_hour, default=0) or 1
    return render(request, "keepup.html", "keepup", keepup=found, peak=peak)


def log_text(path: Path | None, tail: str | None) -> tuple[str, bool]:
    """The end of a log file (or the attempt's recorded tail); whether it was cut."""
    if path is None:
        return tail or "", False
    return read_tail(path, LOG_BYTES)


@router.get("/tasks/{task_id}/log", response_class=HTMLResponse)
def log_page(request: Request, task_id: int, attempt: int | None = None) -> Response:
    with app_db(request).read_session() as session:
        task = queries.task_detail(session, task_id)
    if task is None:
        return not_found(request, f"task {task_id}")
    found, path = attempt_log(request, task_id, attempt)
    text, cut = log_text(path, found.log_tail)
    return render(
        request,
        "log.html",
        "log",
        task=task,
        attempt=found,
        text=text,
        cut=cut,
        raw=f"/tasks/{task_id}/log.txt?attempt={found.number}" if path else None,
    )
