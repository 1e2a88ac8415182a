"""Where JUNO's large PMTs are: a position file, or a built-in even spread on a sphere.

The position file has one PMT per line, ``id x y z theta phi`` (millimetres and degrees),
separated by blanks or commas; lines starting with ``#``, blank lines and header lines
before the first PMT are skipped. Ids must be exactly ``0..N-1`` (in any order), since the
raw data, the constants and the histograms index PMTs by id. Anything else is a
``GeometryError`` naming the file and the line.

Parsing is NumPy's (``np.loadtxt``); only when it fails is the file walked line by line, to
say which line is wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from runwatch.experiments.juno import detector

COLUMNS = ("id", "x", "y", "z", "theta", "phi")

OFF_SPHERE_TOLERANCE = 0.05
"""A PMT further than this fraction of the median radius from it is a typo, not JUNO
(the real file's radii differ by 0.25 %: the polar PMTs sit a little lower)."""

_NUMBER = re.compile(r"^[+-]?(\d|\.\d)")


class GeometryError(ValueError):
    """A PMT position file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Geometry:
    """PMT positions, indexed by PMT id (row ``i`` is PMT ``i``).

    ``positions`` are the photocathode centres in mm (N x 3), ``unit`` the same as unit
    vectors, ``radius_mm`` their distances from the centre, ``theta_deg``/``phi_deg`` the
    angles as given by the file (computed from the positions for the built-in geometry).
    ``source`` is the file read, or None for the built-in geometry.
    """

    ids: np.ndarray
    positions: np.ndarray
    unit: np.ndarray
    radius_mm: np.ndarray
    theta_deg: np.ndarray
    phi_deg: np.ndarray
    source: Path | None = None

    @property
    def n_pmt(self) -> int:
        return len(self.ids)


def _from_positions(
    positions: np.ndarray,
    theta_deg: np.ndarray | None = None,
    phi_deg: np.ndarray | None = None,
    source: Path | None = None,
) -> Geometry:
    radius = np.linalg.norm(positions, axis=1)
    unit = positions / radius[:, None]
    if theta_deg is None or phi_deg is None:
        theta_deg = np.degrees(np.arccos(np.clip(unit[:, 2], -1.0, 1.0)))
        phi_deg = np.degrees(np.arctan2(unit[:, 1], unit[:, 0])) % 360.0
    return Geometry(
        ids=np.arange(len(positions), dtype=np.int64),
        positions=positions,
        unit=unit,
        radius_mm=radius,
        theta_deg=theta_deg,
        phi_deg=phi_deg,
        source=source,
    )


def builtin_geometry(
    n_pmt: int = detector.N_PMT, radius_mm: float = detector.PMT_RADIUS_MM
) -> Geometry:
    """``n_pmt`` PMTs spread evenly on a sphere (a Fibonacci lattice), ids ``0..n_pmt-1``."""
    i = np.arange(n_pmt, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n_pmt  # equal-area bands, so the spacing is even
    rho = np.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))  # the golden angle: no two PMTs line up
    unit = np.column_stack([rho * np.cos(phi), rho * np.sin(phi), z])
    return _from_positions(unit * radius_mm)


def load_geometry(path: Path | None = None) -> Geometry:
    """The geometry in ``path``, or the built-in one when ``path`` is None."""
    if path is None:
        return builtin_geometry()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GeometryError(f"{path}: cannot read ({exc})") from exc
    numbers = _data_line_numbers(path, lines)
    rows = _parse(path, lines, numbers)
    return _validated(path, rows, numbers)


def _data_line_numbers(path: Path, lines: list[str]) -> np.ndarray:
    """1-based numbers of the lines holding PMTs (after any header, without comments)."""
    numbers: list[int] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not numbers and not _NUMBER.match(text):
            continue  # a header line before the first PMT
        numbers.append(number)
    if not numbers:
        raise GeometryError(f"{path}: no PMT positions (expected lines of {' '.join(COLUMNS)})")
    return np.asarray(numbers)


def _parse(path: Path, lines: list[str], numbers: np.ndarray) -> np.ndarray:
    data = [lines[n - 1].replace(",", " ") for n in numbers]
    try:
        rows = np.loadtxt(data, dtype=np.float64, ndmin=2)
    except ValueError:
        _diagnose(path, data, numbers)
    if rows.shape[1] != len(COLUMNS):
        _diagnose(path, data, numbers)
    return rows


def _diagnose(path: Path, data: list[str], numbers: np.ndarray) -> NoReturn:
    """Raise a GeometryError for the first line NumPy could not parse."""
    for text, number in zip(data, numbers, strict=True):
        fields = text.split()
        where = f"{path}, line {number}"
        if len(fields) != len(COLUMNS):
            raise GeometryError(
                f"{where}: expected {len(COLUMNS)} columns ({' '.join(COLUMNS)}), got {len(fields)}"
            )
        for name, field in zip(COLUMNS, fields, strict=True):
            try:
                value = float(field)
            except ValueError:
                raise GeometryError(f"{where}: {name} is not a number: {field!r}") from None
            if not math.isfinite(value):
                raise GeometryError(f"{where}: {name} is not finite: {field!r}")
    raise GeometryError(f"{path}: cannot be parsed as {' '.join(COLUMNS)}")


def _validated(path: Path, rows: np.ndarray, numbers: np.ndarray) -> Geometry:
    if not np.isfinite(rows).all():
        bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise GeometryError(f"{path}, line {numbers[bad]}: a value is not finite")
    ids = rows[:, 0]
    fractional = np.flatnonzero(ids != np.round(ids))
    if len(fractional):
        bad = int(fractional[0])
        raise GeometryError(f"{path}, line {numbers[bad]}: id {ids[bad]} is not an integer")
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order].astype(np.int64)
    _check_ids(path, ids_sorted, order, numbers)
    rows, numbers = rows[order], numbers[order]
    positions = rows[:, 1:4].copy()
    _check_sphere(path, positions, numbers)
    return _from_positions(positions, rows[:, 4].copy(), rows[:, 5].copy(), path)


def _check_ids(path: Path, ids: np.ndarray, order: np.ndarray, numbers: np.ndarray) -> None:
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if len(repeated):
        first, again = sorted(numbers[order[repeated[0] : repeated[0] + 2]])
        raise GeometryError(
            f"{path}, line {again}: duplicate id {ids[repeated[0]]} (also on line {first})"
        )
    # N distinct ids all within 0..N-1 are exactly 0..N-1
    outside = np.flatnonzero((ids < 0) | (ids >= len(ids)))
    if len(outside):
        k = int(outside[0])
        raise GeometryError(
            f"{path}, line {numbers[order[k]]}: id {ids[k]} is outside 0..{len(ids) - 1} "
            f"(ids must number the file's {len(ids)} PMTs without gaps)"
        )


def _check_sphere(path: Path, positions: np.ndarray, numbers: np.ndarray) -> None:
    radius = np.linalg.norm(positions, axis=1)
    median = float(np.median(radius))
    off = np.flatnonzero(np.abs(radius - median) > OFF_SPHERE_TOLERANCE * median)
    if median <= 0 or len(off):
        k = int(off[0]) if len(off) else 0
        raise GeometryError(
            f"{path}, line {numbers[k]}: PMT {k} is {radius[k]:.0f} mm from the centre, "
            f"off the sphere of the others ({median:.0f} mm)"
        )
