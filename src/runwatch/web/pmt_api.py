"""The PMT map's data: ``GET /api/v1/runs/{number}/pmt``.

One response carries everything the PMT Info tab draws: each PMT's position (θ, φ in
degrees), fired fraction and class, the counts per class, the cuts in force and the PMTs
whose class changed since the previous good run. 17,612 PMTs are sent as parallel arrays
(index = PMT id), not as a list of objects, with fractions rounded to 5 decimals (float32
holds about 7 digits; 1e-5 is ten times finer than JUNO's narrowest band): ~370 kB of
JSON, ~90 kB gzipped. The Aitoff projection is done in the browser from θ and φ (a few
milliseconds), so the hover can show the angles without a second pair of arrays.

``?dead=&hot=&normal_low=&normal_high=`` reclassifies with other cuts. This is done here,
with the DQM's own ``status_from_fraction``, rather than in the browser: the classes the
page shows then follow exactly the rules the verdict used (NaN fractions, the run's event
floor ``min_events``, cut order checked with the DQM's message), and no second copy of
them in JavaScript can drift. A request costs a few milliseconds.

Where the PMTs are is the detector's business, not the core's: ``[web] detector`` names an
entry point of the ``runwatch.detectors`` group, a callable returning an object with
``theta_deg`` and ``phi_deg`` arrays indexed by PMT id (JUNO's is
``runwatch.experiments.juno.geometry.load_geometry``). It is loaded once per process.

Responses carry an ETag made of the PMT status row (its merge and when it was evaluated)
and the cuts asked for; a browser revalidating gets a 304 without a body.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from runwatch.catalogue.models import Run
from runwatch.config import Settings
from runwatch.dqm.models import DqmPmtStatus
from runwatch.dqm.pmtstatus import CLASSES, CutsError, PmtStatus, status_from_fraction
from runwatch.dqm.service import changed_since_previous_good, stored_status
from runwatch.web.auth import require_read
from runwatch.web.state import app_db, app_settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "runwatch.detectors"
CUT_NAMES = ("dead", "hot", "normal_low", "normal_high")
FRACTION_DECIMALS = 5
ANGLE_DECIMALS = 2

router = APIRouter(prefix="/api/v1", tags=["pmt"])


class PmtPositions(Protocol):
    """What a ``runwatch.detectors`` entry point returns: angles indexed by PMT id."""

    @property
    def theta_deg(self) -> npt.ArrayLike: ...

    @property
    def phi_deg(self) -> npt.ArrayLike: ...


@dataclass(frozen=True)
class DetectorMap:
    """A detector's PMT angles, rounded and already written as JSON arrays."""

    name: str
    n_pmt: int
    theta_json: str
    phi_json: str


class DetectorError(LookupError):
    """A ``[web] detector`` that names no installed detector, or one that fails to load."""


@functools.lru_cache(maxsize=4)
def detector_map(name: str) -> DetectorMap:
    """The PMT angles of detector ``name`` (an entry point of ``runwatch.detectors``)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise DetectorError(f"[web] detector: unknown detector {name!r} (installed: {known})")
    try:
        positions: PmtPositions = found[name].load()()
        theta = np.asarray(positions.theta_deg, dtype=np.float64)
        phi = np.asarray(positions.phi_deg, dtype=np.float64)
    except Exception as exc:
        raise DetectorError(f"detector {name!r}: cannot load its PMT positions: {exc}") from exc
    if theta.shape != phi.shape or theta.ndim != 1:
        raise DetectorError(f"detector {name!r}: theta and phi must be two equal 1D arrays")
    return DetectorMap(name, len(theta), _json_floats(theta), _json_floats(phi))


def _json_floats(values: npt.NDArray[np.float64], decimals: int = ANGLE_DECIMALS) -> str:
    """A JSON array of ``values`` rounded; NaN as null."""
    rounded = np.round(values, decimals).tolist()
    return json.dumps([None if v != v else v for v in rounded], separators=(",", ":"))


def _requested_cuts(
    dead: float | None, hot: float | None, normal_low: float | None, normal_high: float | None
) -> dict[str, float]:
    given = dict(zip(CUT_NAMES, (dead, hot, normal_low, normal_high), strict=True))
    return {k: v for k, v in given.items() if v is not None}


def _etag(row: DqmPmtStatus, cuts: dict[str, float], detector: str) -> str:
    key = f"{row.run_id}:{row.merge_id}:{row.evaluated_at.isoformat()}:{detector}:"
    key += ",".join(f"{k}={cuts[k]!r}" for k in sorted(cuts))
    return '"pmt-' + hashlib.sha256(key.encode()).hexdigest()[:20] + '"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or etag in (part.strip() for part in header.split(","))


def _positions(settings: Settings, n_pmt: int) -> tuple[DetectorMap | None, str | None]:
    """The detector's angles for ``n_pmt`` PMTs, or None and why not."""
    name = settings.web.detector
    if not name:
        return None, "no detector configured ([web] detector): no PMT positions"
    try:
        found = detector_map(name)
    except DetectorError as exc:
        log.warning("%s", exc)
        return None, str(exc)
    if found.n_pmt != n_pmt:
        return None, f"detector {name!r} has {found.n_pmt} PMTs, the run's status {n_pmt}"
    return found, None


def _changes(session: sa.orm.Session, run: Run) -> dict[str, Any] | None:
    changed = changed_since_previous_good(session, run)
    if changed is None:
        return None
    c = changed.changes
    return {
        "previous_run": changed.previous_run,
        "ids": c.ids.tolist(),
        "old": c.old.tolist(),
        "new": c.new.tolist(),
    }


def _body(
    run: Run,
    row: DqmPmtStatus,
    status: PmtStatus,
    changes: dict[str, Any] | None,
    positions: DetectorMap | None,
    problem: str | None,
) -> str:
    head = {
        "run": run.number,
        "stream": run.stream,
        "merge_id": row.merge_id,
        "evaluated_at": row.evaluated_at.isoformat(),
        "n_events": status.n_events,
        "n_pmt": len(status),
        "detector": positions.name if positions else None,
        "problem": problem,
        "classes": [cls.value for cls in CLASSES],
        "cuts": {k: float(v) for k, v in vars(status.cuts).items()},
        "run_cuts": row.cuts,
        "counts": {cls.value: n for cls, n in status.counts().items()},
        "changed": changes,
        "class": status.codes.tolist(),
    }
    parts = [json.dumps(head, separators=(",", ":"))[:-1]]
    parts.append(',"fraction":' + _json_floats(status.fraction, FRACTION_DECIMALS))
    if positions is None:
        parts.append(',"theta":null,"phi":null}')
    else:
        parts.append(f',"theta":{positions.theta_json},"phi":{positions.phi_json}}}')
    return "".join(parts)


@router.get("/runs/{number}/pmt", dependencies=[Depends(require_read)])
def run_pmt_map(
    number: int,
    request: Request,
    dead: float | None = Query(None, ge=0, le=1, description="Dead below (fraction)."),
    hot: float | None = Query(None, ge=0, le=1, description="Hot above (fraction)."),
    normal_low: float | None = Query(None, ge=0, le=1, description="Normal from (fraction)."),
    normal_high: float | None = Query(None, ge=0, le=1, description="Normal to (fraction)."),
) -> Response:
    """A run's PMTs for the map: angles, fired fraction and class per PMT (arrays by PMT
    id), counts per class, the cuts, and the class changes since the previous good run.
    Cuts given as query parameters reclassify the PMTs (over the run's own cuts)."""
    settings = app_settings(request)
    db = app_db(request)
    asked = _requested_cuts(dead, hot, normal_low, normal_high)
    with db.read_session() as session:
        run = session.scalar(sa.select(Run).where(Run.number == number))
        if run is None:
            raise HTTPException(404, f"no run {number}")
        row = session.get(DqmPmtStatus, run.id)
        if row is None:
            raise HTTPException(404, f"run {number} has no PMT status yet")
        etag = _etag(row, asked, settings.web.detector)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        body = _bodies.get(etag, gzipped)
        if body is None:
            status = _reclassified(stored_status(row), asked)
            changes = _changes(session, run)
            positions, problem = _positions(settings, len(status))
            text = _body(run, row, status, changes, positions, problem)
            body = _bodies.put(etag, text.encode(), gzipped)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    headers["Vary"] = "Accept-Encoding"
    return Response(body, media_type="application/json", headers=headers)


class _BodyCache:
    """The last few responses by ETag, plain and gzipped: the map of a run being looked at
    is asked for by every shifter's browser, and building it costs 10-30 ms (gzip most)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._bodies: OrderedDict[tuple[str, bool], bytes] = OrderedDict()

    def get(self, etag: str, gzipped: bool) -> bytes | None:
        with self._lock:
            body = self._bodies.get((etag, gzipped))
            if body is not None:
                self._bodies.move_to_end((etag, gzipped))
            return body

    def put(self, etag: str, body: bytes, gzipped: bool) -> bytes:
        if gzipped:
            body = gzip.compress(body, compresslevel=5)
        with self._lock:
            self._bodies[(etag, gzipped)] = body
            while len(self._bodies) > self._size:
                self._bodies.popitem(last=False)
        return body


_bodies = _BodyCache()


def _reclassified(stored: PmtStatus, asked: dict[str, float]) -> PmtStatus:
    if not asked:
        return stored
    try:
        cuts = stored.cuts.override(**asked)
    except CutsError as exc:
        raise HTTPException(422, str(exc)) from exc
    return status_from_fraction(stored.fraction, cuts, stored.n_events)
