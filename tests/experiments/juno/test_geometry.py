"""PMT positions: the real JUNO file, the built-in sphere, and every malformed-file error."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from runwatch.experiments.juno import detector
from runwatch.experiments.juno.geometry import GeometryError, builtin_geometry, load_geometry
from tests.conftest import shared_path


def test_the_real_juno_file_loads_17612_pmts_on_their_sphere_fast() -> None:
    path = shared_path("data", "juno", "PMTPos_CD_LPMT.csv")
    started = time.perf_counter()
    geometry = load_geometry(path)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert geometry.n_pmt == detector.N_PMT
    assert geometry.source == path
    assert np.array_equal(geometry.ids, np.arange(detector.N_PMT))
    # JUNO's photocathodes sit at 19.39-19.43 m, just beyond the built-in 19.4 m sphere
    assert 19_300 < geometry.radius_mm.min() <= geometry.radius_mm.max() < 19_500
    assert np.allclose(np.linalg.norm(geometry.unit, axis=1), 1.0)
    # the file's own angles agree with its positions (phi modulo a turn)
    theta = np.degrees(np.arccos(geometry.unit[:, 2]))
    assert np.abs(theta - geometry.theta_deg).max() < 5.0


def test_the_builtin_geometry_spreads_pmts_evenly_on_the_sphere() -> None:
    geometry = load_geometry(None)
    assert geometry.source is None
    assert geometry.n_pmt == detector.N_PMT
    assert np.array_equal(geometry.ids, np.arange(detector.N_PMT))
    assert np.allclose(geometry.radius_mm, detector.PMT_RADIUS_MM)
    # nearest-neighbour distances of a sample of PMTs are all close to the mean spacing
    sample = geometry.positions[:: detector.N_PMT // 150]
    distance = np.linalg.norm(sample[:, None, :] - geometry.positions[None, :, :], axis=2)
    distance[distance == 0] = np.inf
    nearest = distance.min(axis=1)
    spacing = np.sqrt(4 * np.pi * detector.PMT_RADIUS_MM**2 / detector.N_PMT)
    assert 0.8 * spacing < nearest.min() and nearest.max() < 1.2 * spacing
    # and every octant holds an eighth of them
    octant = (geometry.unit > 0) @ np.array([1, 2, 4])
    counts = np.bincount(octant, minlength=8)
    assert np.all(np.abs(counts - detector.N_PMT / 8) < 0.01 * detector.N_PMT / 8)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pmts.csv"
    path.write_text(text)
    return path


def _rows(n: int = 20) -> list[str]:
    geometry = builtin_geometry(n, 19_400.0)
    return [
        f"{i} {x:.4f} {y:.4f} {z:.4f} {t:.4f} {p:.4f}"
        for i, (x, y, z), t, p in zip(
            geometry.ids, geometry.positions, geometry.theta_deg, geometry.phi_deg, strict=True
        )
    ]


def test_headers_comments_commas_and_any_order_are_accepted(tmp_path: Path) -> None:
    rows = _rows()
    text = "id x y z theta phi\n# large PMTs\n\n" + "\n".join(
        row.replace(" ", ",") for row in reversed(rows)
    )
    geometry = load_geometry(_write(tmp_path, text + "\n# end\n"))
    assert geometry.n_pmt == 20
    assert np.allclose(geometry.positions, builtin_geometry(20, 19_400.0).positions, atol=1e-3)


@pytest.mark.parametrize(
    ("change", "line", "words"),
    [
        (lambda rows: [*rows[:5], "5 1.0 2.0 3.0", *rows[6:]], 7, "expected 6 columns"),
        (lambda rows: [*rows[:3], rows[3].replace("3 ", "3 abc ", 1), *rows[4:]], 5, "columns"),
        (lambda rows: [*rows[:3], "3 1e3 x 2 0 0", *rows[4:]], 5, "y is not a number"),
        (lambda rows: [*rows[:8], rows[2], *rows[9:]], 10, "duplicate id 2 (also on line 4)"),
        (
            lambda rows: [*rows[:7], rows[7].replace("7 ", "70 ", 1), *rows[8:]],
            9,
            "id 70 is outside",
        ),
        (lambda rows: [*rows[:7], rows[7].replace("7 ", "7.5 ", 1), *rows[8:]], 9, "integer"),
        (lambda rows: [*rows[:4], "4 100 100 100 0 0", *rows[5:]], 6, "off the sphere"),
        (lambda rows: [*rows[:4], "4 nan 1 1 0 0", *rows[5:]], 6, "not finite"),
    ],
)
def test_a_malformed_file_names_its_line(
    tmp_path: Path, change: Callable[[list[str]], list[str]], line: int, words: str
) -> None:
    path = _write(tmp_path, "id x y z theta phi\n" + "\n".join(change(_rows())) + "\n")
    with pytest.raises(GeometryError) as caught:
        load_geometry(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert words in message


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing\n", "id x y z theta phi\n"])
def test_a_file_without_pmts_is_an_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GeometryError, match="no PMT positions"):
        load_geometry(path)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GeometryError, match="cannot read"):
        load_geometry(tmp_path / "absent.csv")
