"""The calib step on real ROOT files: constants applied exactly, bad inputs refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import typer
import uproot
from typer.testing import CliRunner

from runwatch import cli
from runwatch.experiments.juno import calib, formats, rootio
from runwatch.experiments.juno.constants import ConstantsError, PmtConstants, read_constants

N_PMT = 64  # small detector: constants and per-PMT checks stay readable


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return cli.build()


def raw_content(hits_per_event: list[int], seed: int = 1, wave: bool = False) -> dict[str, Any]:
    """Events with ``hits_per_event[i]`` hits in event i, as flat arrays of true values."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(hits_per_event, dtype=np.int64)
    n = len(counts)
    pmt = np.concatenate([rng.choice(N_PMT, c, replace=False) for c in counts] + [[]])
    content = {
        "event_id": np.arange(100, 100 + n, dtype=np.int64),
        "timestamp_ns": 1_750_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1_000_000,
        "trigger_type": rng.integers(1, 4, n).astype(np.int32),
        "counts": counts,
        "pmt_id": pmt.astype(np.int32),
        "npe": (rng.integers(1, 40, len(pmt)) * 0.25).astype(np.float32),  # exact in binary
        "time": (rng.integers(0, 4000, len(pmt)) * 0.25).astype(np.float32),
    }
    branches = {k: v for k, v in formats.RAW_BRANCHES.items() if wave or k != "wave"}
    return {**content, "branches": branches}


def store_raw(path: Path, content: dict[str, Any], constants: PmtConstants, step: int = 3) -> None:
    """Write ``content`` as raw data: ADC = npe x gain, TDC = time + offset."""
    pmt, counts = content["pmt_id"], content["counts"]
    adc = content["npe"] * constants.gain_adc_per_pe[pmt].astype(np.float32)
    tdc = content["time"] + constants.time_offset_ns[pmt].astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    with rootio.TreeWriter(path, formats.RAW_TREE, content["branches"]) as writer:
        for start in range(0, len(counts), step):
            stop = min(start + step, len(counts))
            lo, hi = offsets[start], offsets[stop]
            part = counts[start:stop]
            chunk = {k: content[k][start:stop] for k in ("event_id", "timestamp_ns")}
            chunk["trigger_type"] = content["trigger_type"][start:stop]
            chunk["pmt_id"] = rootio.jagged(pmt[lo:hi], part)
            chunk["adc"] = rootio.jagged(adc[lo:hi], part)
            chunk["tdc"] = rootio.jagged(tdc[lo:hi], part)
            if "wave" in content["branches"]:
                chunk["wave"] = rootio.jagged(np.zeros((hi - lo) * 8, np.int16), part * 8)
            writer.extend(chunk)


def exact_constants() -> PmtConstants:
    """Gains that are powers of two and offsets in quarter ns: the results are exact."""
    gain = 2.0 ** np.arange(5, 10)[np.arange(N_PMT) % 5]
    offset = (np.arange(N_PMT) % 17 - 8) * 0.25
    return PmtConstants(gain, offset)


def read_calib(path: Path) -> ak.Array:
    with uproot.open(path) as file:
        return file[formats.CALIB_TREE].arrays(list(formats.CALIB_BRANCHES))


def test_calib_applies_known_constants_exactly(tmp_path: Path) -> None:
    constants = exact_constants()
    constants.write(tmp_path / "constants.csv")
    content = raw_content([5, 0, 12, 64, 1, 3, 0, 7])
    store_raw(tmp_path / "raw.rtraw", content, constants)

    result = calib.run_calib(
        tmp_path / "raw.rtraw", tmp_path / "out.root", tmp_path / "constants.csv", N_PMT, 3
    )

    assert (result.events, result.hits) == (8, int(content["counts"].sum()))
    out = read_calib(tmp_path / "out.root")
    assert out["event_id"].tolist() == content["event_id"].tolist()
    assert out["timestamp_ns"].tolist() == content["timestamp_ns"].tolist()
    assert out["trigger_type"].tolist() == content["trigger_type"].tolist()
    assert ak.num(out["pmt_id"]).tolist() == content["counts"].tolist()
    np.testing.assert_array_equal(ak.flatten(out["pmt_id"]), content["pmt_id"])
    np.testing.assert_array_equal(ak.flatten(out["npe"]), content["npe"])
    np.testing.assert_array_equal(ak.flatten(out["time_ns"]), content["time"])
    assert not list(tmp_path.glob("*.part"))


def test_calib_with_constants_from_csv_matches_float64_arithmetic(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    PmtConstants(rng.uniform(60, 140, N_PMT), rng.normal(0, 4, N_PMT)).write(tmp_path / "c.csv")
    constants = read_constants(tmp_path / "c.csv", N_PMT)  # as rounded by the CSV
    content = raw_content([20, 30, 40], seed=3)
    store_raw(tmp_path / "raw.rtraw", content, PmtConstants(np.ones(N_PMT), np.zeros(N_PMT)))
    # Stored ADC = npe, TDC = time: the expected values are ADC / gain and TDC - offset.

    calib.run_calib(tmp_path / "raw.rtraw", tmp_path / "out.root", tmp_path / "c.csv", N_PMT)

    out = read_calib(tmp_path / "out.root")
    pmt = content["pmt_id"]
    expected_npe = content["npe"].astype(np.float64) / constants.gain_adc_per_pe[pmt]
    expected_time = content["time"].astype(np.float64) - constants.time_offset_ns[pmt]
    np.testing.assert_allclose(ak.flatten(out["npe"]), expected_npe, rtol=1e-6)
    np.testing.assert_allclose(ak.flatten(out["time_ns"]), expected_time, rtol=0, atol=1e-4)


def test_calib_reads_only_the_branches_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constants = exact_constants()
    constants.write(tmp_path / "c.csv")
    content = raw_content([4, 6], wave=True)
    store_raw(tmp_path / "raw.rtraw", content, constants)
    asked: list[list[str]] = []
    real_iterate = rootio.iterate

    def spy(path: Path, tree: str, branches: list[str], step: int) -> Any:
        asked.append(list(branches))
        return real_iterate(path, tree, branches, step)

    monkeypatch.setattr(rootio, "iterate", spy)
    calib.run_calib(tmp_path / "raw.rtraw", tmp_path / "out.root", tmp_path / "c.csv", N_PMT)

    assert asked == [list(calib.RAW_INPUTS)]
    assert "wave" not in asked[0]
    np.testing.assert_array_equal(
        ak.flatten(read_calib(tmp_path / "out.root")["npe"]), content["npe"]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pmt_id,gain_adc_per_pe,time_offset_ns\n0,100,0\n", "no constants for 63 PMTs"),
        ("0,100,0\n0,100,1\n", "appears twice"),
        ("0,-5,0\n", "gain must be positive"),
        ("0,100\n", "expected 3 fields"),
        ("99,100,0\n", "outside 0..63"),
    ],
)
def test_bad_constants_fail_before_any_output(tmp_path: Path, text: str, message: str) -> None:
    content = raw_content([3])
    store_raw(tmp_path / "raw.rtraw", content, exact_constants())
    (tmp_path / "bad.csv").write_text(text)

    with pytest.raises(ConstantsError, match=message):
        calib.run_calib(tmp_path / "raw.rtraw", tmp_path / "out.root", tmp_path / "bad.csv", N_PMT)
    assert {p.name for p in tmp_path.iterdir()} == {"raw.rtraw", "bad.csv"}


def big_raw(tmp_path: Path) -> Path:
    """A raw file of 60 events written in chunks of 3, and its constants in c.csv."""
    constants = exact_constants()
    constants.write(tmp_path / "c.csv")
    content = raw_content([40] * 60, seed=5)
    store_raw(tmp_path / "raw.rtraw", content, constants)
    return tmp_path / "raw.rtraw"


def test_truncated_input_fails_and_leaves_no_output(tmp_path: Path) -> None:
    raw = big_raw(tmp_path)
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) // 2])

    with pytest.raises(rootio.InputFileError, match=r"raw\.rtraw"):
        calib.run_calib(raw, tmp_path / "out.root", tmp_path / "c.csv", N_PMT, step_events=10)
    assert not (tmp_path / "out.root").exists()
    assert not list(tmp_path.glob("*.part"))


def test_damaged_input_fails_and_leaves_no_output(tmp_path: Path) -> None:
    raw = big_raw(tmp_path)
    data = bytearray(raw.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)  # zeroes over compressed baskets
    raw.write_bytes(bytes(data))

    with pytest.raises(rootio.InputFileError, match="cannot be read"):
        calib.run_calib(raw, tmp_path / "out.root", tmp_path / "c.csv", N_PMT, step_events=10)
    assert not (tmp_path / "out.root").exists()


def test_not_root_and_missing_input_are_clear_errors(tmp_path: Path) -> None:
    exact_constants().write(tmp_path / "c.csv")
    (tmp_path / "text.rtraw").write_text("not a ROOT file\n")
    with pytest.raises(rootio.InputFileError, match="not a readable ROOT file"):
        calib.run_calib(tmp_path / "text.rtraw", tmp_path / "o.root", tmp_path / "c.csv", N_PMT)
    with pytest.raises(rootio.InputFileError, match="no such file"):
        calib.run_calib(tmp_path / "none.rtraw", tmp_path / "o.root", tmp_path / "c.csv", N_PMT)
    assert not (tmp_path / "o.root").exists()


def test_pmt_id_beyond_the_constants_is_an_input_error(tmp_path: Path) -> None:
    content = raw_content([5, 5])
    store_raw(tmp_path / "raw.rtraw", content, exact_constants())
    small = PmtConstants(np.ones(8), np.zeros(8))
    small.write(tmp_path / "small.csv")

    with pytest.raises(rootio.InputFileError, match=r"pmt_id \d+ is outside 0..7"):
        calib.run_calib(tmp_path / "raw.rtraw", tmp_path / "o.root", tmp_path / "small.csv", 8)
    assert not (tmp_path / "o.root").exists()


def test_cli_round_trip_and_failure(tmp_path: Path, app: typer.Typer) -> None:
    runner = CliRunner()
    geometry = tmp_path / "geometry.csv"
    # A 64-PMT detector on the 19.4 m sphere, written as JUNO's position file is.
    z = 1 - (2 * np.arange(N_PMT) + 1) / N_PMT
    phi = np.arange(N_PMT) * 2.4
    rho = np.sqrt(1 - z * z)
    xyz = 19_400 * np.column_stack([rho * np.cos(phi), rho * np.sin(phi), z])
    rows = [f"{i} {x:.1f} {y:.1f} {zz:.1f} 0 0" for i, (x, y, zz) in enumerate(xyz)]
    geometry.write_text("\n".join(rows) + "\n")
    constants = exact_constants()
    constants.write(tmp_path / "c.csv")
    content = raw_content([3, 9, 27])
    store_raw(tmp_path / "raw.rtraw", content, constants)
    args = ["juno", "calib", str(tmp_path / "raw.rtraw"), str(tmp_path / "out.root")]

    ok = runner.invoke(
        app, [*args, "--constants", str(tmp_path / "c.csv"), "--geometry", str(geometry)]
    )
    assert ok.exit_code == 0, ok.output
    assert "3 events, 39 hits" in ok.output
    np.testing.assert_array_equal(
        ak.flatten(read_calib(tmp_path / "out.root")["npe"]), content["npe"]
    )

    (tmp_path / "out.root").unlink()
    # Without --geometry the constants must cover JUNO's 17,612 PMTs.
    bad = runner.invoke(app, [*args, "--constants", str(tmp_path / "c.csv")])
    assert bad.exit_code == 1
    assert "error:" in bad.output and "no constants for 17548 PMTs" in bad.output
    assert not (tmp_path / "out.root").exists()
