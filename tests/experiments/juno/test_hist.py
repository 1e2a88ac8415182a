"""The hist step on real ROOT files: known entries in known bins, fixed binning, sampling."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import uproot
from typer.testing import CliRunner

from runwatch import cli
from runwatch.experiments.juno import detector, formats, hist, rootio

ROOT = Path(__file__).resolve().parents[3]
T0_NS = 1_750_000_000_000_000_000
RATIO_HISTOGRAMS = {"pmt_fired_fraction", "trigger_rate"}  # per file: they do not add


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli.build()


def write_calib(path: Path, events: list[dict[str, Any]], step: int = 2) -> None:
    """A calib file; each event is a dict of t_s, trigger, pmt, npe, time (lists)."""
    with rootio.TreeWriter(path, formats.CALIB_TREE, formats.CALIB_BRANCHES) as writer:
        for start in range(0, len(events), step):
            writer.extend(_calib_chunk(events[start : start + step], start))


def _calib_chunk(part: list[dict[str, Any]], first: int) -> dict[str, Any]:
    counts = np.array([len(e["pmt"]) for e in part], dtype=np.int64)

    def flat(key: str, dtype: type[np.generic]) -> Any:
        values = np.concatenate([np.asarray(e[key], dtype=dtype) for e in part])
        return rootio.jagged(values, counts)

    return {
        "event_id": np.arange(first, first + len(part), dtype=np.int64),
        "timestamp_ns": np.array([T0_NS + round(e["t_s"] * 1e9) for e in part], dtype=np.int64),
        "trigger_type": np.array([e["trigger"] for e in part], dtype=np.int32),
        "pmt_id": flat("pmt", np.int32),
        "npe": flat("npe", np.float32),
        "time_ns": flat("time", np.float32),
    }


def write_rec(path: Path, rows: dict[str, list[Any]]) -> None:
    """A rec file from columns; event_id, timestamp_ns, trigger_type etc. get defaults."""
    n = len(rows["x_mm"])
    defaults = {
        "event_id": np.arange(n),
        "timestamp_ns": T0_NS + np.arange(n) * 1_000_000,
        "trigger_type": np.ones(n),
        "t0_ns": np.full(n, 200.5),
        "energy_mev": np.full(n, 2.5),
        "total_pe": np.full(n, 4000.0),
        "nhit": np.full(n, 3000),
        "fit_ok": np.ones(n, dtype=bool),
    }
    columns = {**defaults, **{k: np.asarray(v) for k, v in rows.items()}}
    with rootio.TreeWriter(path, formats.REC_TREE, formats.REC_BRANCHES) as writer:
        writer.extend(
            {
                name: np.asarray(columns[name]).astype(kind)
                for name, kind in formats.REC_BRANCHES.items()
            }
        )


def random_events(rng: np.random.Generator, n: int, n_pmt: int = 200) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        k = int(rng.integers(0, 60))
        events.append(
            {
                "t_s": i * 0.37,
                "trigger": int(rng.integers(1, 4)),
                "pmt": rng.choice(n_pmt, k, replace=False),
                "npe": rng.exponential(1.5, k),
                "time": rng.uniform(-50, 1000, k),
            }
        )
    return events


def known_events() -> list[dict[str, Any]]:
    many = list(range(1000, 1150))  # 150 hits: nhit bin 1
    return [
        {"t_s": 0.0, "trigger": 1, "pmt": [0, 5], "npe": [1.05, 2.05], "time": [200.5, 300.5]},
        {"t_s": 0.5, "trigger": 1, "pmt": [5], "npe": [0.55], "time": [-50.0]},
        {"t_s": 2.2, "trigger": 3, "pmt": [], "npe": [], "time": []},
        {"t_s": 2.7, "trigger": 2, "pmt": many, "npe": [1.0] * 150, "time": [400.0] * 150},
    ]


def test_known_calib_entries_land_in_known_bins(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", known_events())

    h = hist.fill_histograms(tmp_path / "c.root", None)

    assert h["n_events"].values().tolist() == [4]
    assert h["trigger_type"].values().tolist() == [2, 1, 1]
    assert h["trigger_rate"].values()[:4].tolist() == [2, 0, 2, 0]  # events per second
    assert h["nhit"].values()[:3].tolist() == [3, 1, 0]
    assert h["total_pe"].values()[:3].tolist() == [3, 1, 0]  # 3.1, 0.55, 0 and 150 PE
    hit_time = h["hit_time"].values()
    assert {i: hit_time[i] for i in np.flatnonzero(hit_time)} == {25: 1, 150: 1, 200: 1, 250: 150}
    hit_npe = h["hit_npe"].values()
    assert {i: hit_npe[i] for i in np.flatnonzero(hit_npe)} == {5: 1, 10: 151, 20: 1}
    pmt_hits = h["pmt_hits"].values()
    assert (pmt_hits[0], pmt_hits[5], pmt_hits[1000], pmt_hits[1149]) == (1, 2, 1, 1)
    assert pmt_hits.sum() == 153 and len(pmt_hits) == detector.N_PMT
    assert h["pmt_fired_fraction"].values()[5] == pytest.approx(0.5)
    assert h["pmt_npe_sum"].values()[5] == pytest.approx(2.6, rel=1e-6)
    assert h["pmt_time_sum"].values()[5] == pytest.approx(250.5, rel=1e-6)
    assert h["n_rec_events"].values().tolist() == [0]


def test_known_rec_entries_land_in_known_bins(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", known_events())
    r = detector.LS_RADIUS_MM * 0.505 ** (1 / 3)  # r³ = 0.505 R_LS³: bin 50
    write_rec(
        tmp_path / "r.root",
        {
            "x_mm": [1000.0, 0.0],
            "y_mm": [-1000.0, 0.0],
            "z_mm": [0.0, r],
            "energy_mev": [2.51, 7.49],
            "t0_ns": [202.5, 990.0],
            "fit_ok": [True, False],
        },
    )

    h = hist.fill_histograms(tmp_path / "c.root", tmp_path / "r.root")

    assert h["n_rec_events"].values().tolist() == [2]
    assert np.flatnonzero(h["energy"].values()).tolist() == [50, 149]
    assert np.flatnonzero(h["vertex_x"].values()).tolist() == [100, 105]
    assert np.flatnonzero(h["vertex_y"].values()).tolist() == [95, 100]
    assert np.flatnonzero(h["vertex_z"].values()).tolist() == [100, 170]
    assert h["vertex_r3"].values()[50] == 1
    assert np.flatnonzero(h["t0"].values()).tolist() == [40, 198]
    assert h["fit_ok"].values().tolist() == [1, 1]
    xy = h["vertex_xy"].values()
    assert xy[42, 38] == 1 and xy[40, 40] == 1 and xy.sum() == 2
    assert h["energy_vs_r3"].values()[25, 37] == 1  # r³ 0.505 in 0.02 bins, 7.49 MeV in 0.2
    rho2_z = h["vertex_rho2_z"].values()
    assert rho2_z[0, 40] == 1 and rho2_z[0, 68] == 1  # z = 0 and 14.09 m in 0.5 m bins


def test_per_pmt_counts_match_a_plain_count(tmp_path: Path) -> None:
    events = random_events(np.random.default_rng(11), 57)
    write_calib(tmp_path / "c.root", events, step=5)

    h = hist.fill_histograms(tmp_path / "c.root", None, step_events=7)

    expected = np.zeros(detector.N_PMT)
    charge = np.zeros(detector.N_PMT)
    for event in events:
        for pmt, npe in zip(event["pmt"], event["npe"], strict=True):
            expected[pmt] += 1
            charge[pmt] += np.float32(npe)
    np.testing.assert_array_equal(h["pmt_hits"].values(), expected)
    np.testing.assert_allclose(h["pmt_npe_sum"].values(), charge, rtol=1e-6)
    np.testing.assert_allclose(h["pmt_fired_fraction"].values(), expected / 57)
    assert h["nhit"].sum() == 57
    assert h["hit_time"].sum(flow=True) == expected.sum()


def test_chunk_size_does_not_change_the_histograms(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", random_events(np.random.default_rng(3), 40), step=6)

    one = hist.fill_histograms(tmp_path / "c.root", None, step_events=1)
    many = hist.fill_histograms(tmp_path / "c.root", None, step_events=1000)

    for name in one:
        np.testing.assert_allclose(one[name].values(flow=True), many[name].values(flow=True))


def test_sampled_rec_fills_rec_histograms_from_rec_entries_only(tmp_path: Path) -> None:
    events = random_events(np.random.default_rng(5), 50)
    write_calib(tmp_path / "c.root", events)
    sampled = np.arange(0, 50, 5)  # rec at 20 %: 10 of the 50 events
    write_rec(
        tmp_path / "r.root",
        {"x_mm": sampled * 100.0, "y_mm": sampled * 0.0, "z_mm": sampled * 0.0},
    )

    h = hist.fill_histograms(tmp_path / "c.root", tmp_path / "r.root")

    assert h["n_events"].values()[0] == 50
    assert h["nhit"].sum(flow=True) == 50
    assert h["n_rec_events"].values()[0] == 10
    assert h["energy"].sum(flow=True) == 10
    assert h["vertex_x"].sum(flow=True) == 10
    assert h["pmt_hits"].sum() == sum(len(e["pmt"]) for e in events)


def test_output_file_names_classes_titles_and_axes(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", known_events())
    write_rec(tmp_path / "r.root", {"x_mm": [1.0], "y_mm": [2.0], "z_mm": [3.0]})

    result = hist.run_hist(tmp_path / "c.root", tmp_path / "r.root", tmp_path / "h.root")

    assert (result.events, result.rec_events) == (4, 1)
    specs = {spec.name: spec for spec in hist.specs()}
    with uproot.open(tmp_path / "h.root") as file:
        classes = {key.split(";")[0]: cls for key, cls in file.classnames().items()}
        assert classes == {
            name: "TH1D" if len(spec.axes) == 1 else "TH2D" for name, spec in specs.items()
        }
        for name, spec in specs.items():
            written = file[name]
            assert written.title == spec.title
            for i, axis in enumerate(spec.axes):
                assert written.axis(i).member("fTitle") == axis.label
                edges = np.linspace(axis.start, axis.stop, axis.bins + 1)
                np.testing.assert_allclose(written.axis(i).edges(), edges)
        assert file["pmt_hits"].values()[5] == 2
        assert file["n_events"].values().tolist() == [4]
        assert file["vertex_xy"].values().sum() == 1
    assert not list(tmp_path.glob("*.part"))


def test_two_files_add_bin_by_bin(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    first, second = random_events(rng, 30), random_events(rng, 45)
    for event in second:
        event["npe"] = event["npe"] * 40  # a very different file: same bins all the same
        event["t_s"] += 1_000
    write_calib(tmp_path / "a.root", first)
    write_calib(tmp_path / "b.root", second)
    write_calib(tmp_path / "ab.root", first + second)
    write_rec(tmp_path / "ra.root", {"x_mm": [5.0, -3e4], "y_mm": [0, 0], "z_mm": [0, 0]})
    write_rec(tmp_path / "rb.root", {"x_mm": [9e3], "y_mm": [0], "z_mm": [0]})
    for name in ("a", "b"):
        hist.run_hist(tmp_path / f"{name}.root", tmp_path / f"r{name}.root", tmp_path / f"h{name}")

    combined = hist.fill_histograms(tmp_path / "ab.root", None)
    with uproot.open(tmp_path / "ha") as a, uproot.open(tmp_path / "hb") as b:
        for spec in hist.specs():
            ha, hb = a[spec.name], b[spec.name]
            for i in range(len(spec.axes)):
                np.testing.assert_array_equal(ha.axis(i).edges(), hb.axis(i).edges())
            if spec.source == "calib" and spec.name not in RATIO_HISTOGRAMS:
                summed = ha.values(flow=True) + hb.values(flow=True)
                np.testing.assert_allclose(summed, combined[spec.name].values(flow=True))
        assert (a["vertex_x"].values(flow=True) + b["vertex_x"].values(flow=True)).sum() == 3


def test_calib_only_writes_every_histogram_with_empty_rec_ones(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", known_events())

    hist.run_hist(tmp_path / "c.root", None, tmp_path / "h.root")

    with uproot.open(tmp_path / "h.root") as file:
        assert {k.split(";")[0] for k in file} == {s.name for s in hist.specs()}
        assert file["energy"].values().sum() == 0
        assert file["n_rec_events"].values().tolist() == [0]


def test_truncated_or_wrong_inputs_fail_without_output(tmp_path: Path) -> None:
    write_calib(tmp_path / "c.root", random_events(np.random.default_rng(1), 200), step=20)
    data = (tmp_path / "c.root").read_bytes()
    (tmp_path / "cut.root").write_bytes(data[: len(data) * 2 // 3])

    with pytest.raises(rootio.InputFileError, match=r"cut\.root"):
        hist.run_hist(tmp_path / "cut.root", None, tmp_path / "h.root", step_events=20)
    with pytest.raises(rootio.InputFileError, match="has no tree 'rec'"):
        hist.run_hist(tmp_path / "c.root", tmp_path / "c.root", tmp_path / "h.root")
    assert not (tmp_path / "h.root").exists()
    assert not list(tmp_path.glob("*.part"))


def test_cli_round_trip_and_failure(tmp_path: Path, app: typer.Typer) -> None:
    runner = CliRunner()
    write_calib(tmp_path / "c.root", known_events())
    write_rec(tmp_path / "r.root", {"x_mm": [1.0], "y_mm": [2.0], "z_mm": [3.0]})
    out = tmp_path / "h.root"

    ok = runner.invoke(
        app,
        [
            "juno",
            "hist",
            "--calib",
            str(tmp_path / "c.root"),
            "--rec",
            str(tmp_path / "r.root"),
            str(out),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "4 events, 1 reconstructed" in ok.output
    with uproot.open(out) as file:
        assert file["n_rec_events"].values().tolist() == [1]

    out.unlink()
    bad = runner.invoke(app, ["juno", "hist", "--calib", str(tmp_path / "r.root"), str(out)])
    assert bad.exit_code == 1
    assert "error:" in bad.output and "has no tree 'calib'" in bad.output
    assert not out.exists()


def test_every_histogram_is_documented() -> None:
    text = (ROOT / "docs" / "juno.md").read_text()
    section = re.search(r"^## Calibration and histograms\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section is not None, "docs/juno.md lacks its 'Calibration and histograms' section"
    missing = [s.name for s in hist.specs() if f"`{s.name}`" not in section.group(1)]
    assert missing == [], f"document these histograms in docs/juno.md: {missing}"
