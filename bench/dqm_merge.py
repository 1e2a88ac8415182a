"""DQM merge benchmark (issue 4): merging a run's per-file histogram files.

Workload: 200 files x 50 histograms, seeded, written like the JUNO hist step writes them
(uproot, LZ4): 5 per-PMT TH1Ds of 17,612 bins, 6 TH2Ds (80 x 75), 2 TProfiles (200 bins)
and 37 TH1Ds of 50-518 bins; ~0.65 MB a file, 130 MB in all.

- full merge: ``merge_into`` of all 200 files into a new merged file, and, side by side in
  the same process, ``hepconvert.add_histograms`` (the Python ``hadd``) of the same files
  (``same_names=True``: its other mode fails on TH2s in hepconvert 1.4). hepconvert adds
  only TH1/TH2/TH3, so its merge has 48 histograms, ours 50. MB/s = input bytes / wall.
- add one: the wall time of ``merge_into`` adding file 101 to a merge of 100 files (read
  the merged file, check and read the new one, write the merged file atomically), median
  over ``--add-repeats`` runs, each from a fresh copy of the 100-file merge. Checksums are
  given, as the engine records them when the hist task finishes.

    python bench/dqm_merge.py                  # ~1-2 minutes on 2 cores
    python bench/dqm_merge.py --repeats 3      # 3 full merges of each kind

The last line is RESULT {json}: files, hists, wall_s (our full merge, median),
hepconvert_wall_s (median), speedup, add_one_ms (median).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from runwatch.dqm.histogram import Axis, Hist, stats_from_bins, to_uproot
from runwatch.dqm.merge import Contribution, merge_into, read_merged
from runwatch.storage.checksum import adler32_file

N_PMT = 17_612
FILES = 200
COMPRESSION = uproot.LZ4(1)  # as the JUNO hist step writes (experiments/juno/rootio.py)


def file_hists(rng: np.random.Generator) -> dict[str, Hist]:
    """One file's 50 histograms: fixed binning, random contents."""
    hists: dict[str, Hist] = {}
    pmt = Axis.regular_axis(N_PMT, -0.5, N_PMT - 0.5, "PMT id")
    for i in range(5):
        w = rng.poisson(50.0, N_PMT + 2).astype(np.float64)
        hists[f"pmt_{i}"] = Hist(f"pmt_{i}", "per PMT", "TH1D", (pmt,), w, w.copy(), w.sum())
    xy = (Axis.regular_axis(80, -2e4, 2e4, "x [mm]"), Axis.regular_axis(75, 0.0, 1.5, "r3"))
    for i in range(6):
        w = rng.poisson(3.0, (82, 77)).astype(np.float64)
        hists[f"map_{i}"] = Hist(f"map_{i}", "2D", "TH2D", xy, w, w.copy(), w.sum())
    time_axis = Axis.regular_axis(200, 0.0, 1000.0, "t [ns]")
    for i in range(2):
        n = rng.poisson(20.0, 202).astype(np.float64)
        y = rng.random(202) * n
        hists[f"profile_{i}"] = Hist(
            f"profile_{i}", "profile", "TProfile", (time_axis,), n, n.copy(), n.sum(), {}, y, y * y
        )
    for i in range(37):
        bins = 50 + 13 * i
        w = rng.poisson(10.0, bins + 2).astype(np.float64)
        axis = Axis.regular_axis(bins, 0.0, float(bins), "value")
        hists[f"h1_{i}"] = Hist(f"h1_{i}", "1D", "TH1D", (axis,), w, w.copy(), w.sum())
    for hist in hists.values():
        hist.stats = stats_from_bins(hist)
    return hists


def make_files(directory: Path, count: int) -> list[Contribution]:
    rng = np.random.default_rng(20261129)
    inputs = []
    for i in range(count):
        path = directory / f"hist_{i:03d}.root"
        with uproot.recreate(path, compression=COMPRESSION) as file:
            for key, hist in file_hists(rng).items():
                file[key] = to_uproot(hist)
        inputs.append(Contribution(f"task-{i}", path, adler32_file(path), events=80_000))
    return inputs


def timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def full_merges(work: Path, inputs: list[Contribution], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each full merge, ours and hepconvert's alternately."""
    try:
        import hepconvert
    except ImportError:
        hepconvert = None
        print("hepconvert is not installed (pip install hepconvert): its side is skipped")
    walls: dict[str, list[float]] = {"ours": [], "hepconvert": []}
    paths = [str(item.path) for item in inputs]
    merged, out = work / "merged.root", work / "hadd.root"
    for _ in range(repeats):
        merged.unlink(missing_ok=True)
        walls["ours"].append(timed(lambda: merge_into(merged, inputs)))
        if hepconvert is not None:
            walls["hepconvert"].append(
                timed(lambda: hepconvert.add_histograms(out, paths, force=True, same_names=True))
            )
    report = read_merged(work / "merged.root")
    assert len(report.included) == len(inputs) and len(report.hists) == 50
    if hepconvert is not None:
        check_against_hepconvert(work / "merged.root", work / "hadd.root")
    return walls


def check_against_hepconvert(ours: Path, theirs: Path) -> None:
    """Both merges give the same TH1 contents; hepconvert 1.4's TH2 sums are scrambled.

    (Its TH2 bins disagree with the bin-by-bin sum of the inputs as uproot reads them,
    which ours equal: tests/dqm checks that against uproot's own model.)
    """
    scrambled = 0
    with uproot.open(ours) as a, uproot.open(theirs) as b:
        for key, classname in b.classnames(cycle=False).items():
            mine, other = a[key].values(flow=True), b[key].values(flow=True)
            if classname.startswith("TH1"):
                np.testing.assert_allclose(mine, other)
            elif not np.allclose(mine, other):
                scrambled += 1
    print(f"TH1 sums agree with hepconvert's; {scrambled} of its TH2 sums do not (its bug)")


def add_one(work: Path, inputs: list[Contribution], repeats: int) -> list[float]:
    """Milliseconds to add file 101 to a merge of 100, each from a fresh copy."""
    base = work / "base100.root"
    merge_into(base, inputs[:100])
    merged = work / "merged_live.root"
    times = []
    for _ in range(repeats):
        shutil.copyfile(base, merged)
        seconds = timed(lambda: merge_into(merged, inputs[:101]))
        times.append(seconds * 1000)
    assert read_merged(merged).included.keys() == {item.key for item in inputs[:101]}
    return times


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--repeats", type=int, default=3, help="full merges of each kind")
    parser.add_argument("--add-repeats", type=int, default=9, help="single-file adds")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, uproot {uproot.__version__}, {platform.node()}")
    with tempfile.TemporaryDirectory(prefix="dqm-merge-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        inputs = make_files(work, args.files)
        megabytes = sum(item.path.stat().st_size for item in inputs) / 1e6
        print(
            f"wrote {args.files} files x 50 histograms, {megabytes:.0f} MB, "
            f"in {time.perf_counter() - start:.1f} s"
        )
        walls = full_merges(work, inputs, args.repeats)
        adds = add_one(work, inputs, args.add_repeats)
    ours = statistics.median(walls["ours"])
    print(f"full merge, runwatch:   {spread(walls['ours'])} s, {megabytes / ours:.0f} MB/s")
    theirs = statistics.median(walls["hepconvert"]) if walls["hepconvert"] else None
    if theirs is not None:
        print(
            f"full merge, hepconvert: {spread(walls['hepconvert'])} s, "
            f"{megabytes / theirs:.0f} MB/s"
        )
        print(
            f"speedup {theirs / ours:.1f}x (per repeat: "
            + ", ".join(
                f"{t / o:.1f}" for o, t in zip(walls["ours"], walls["hepconvert"], strict=True)
            )
            + ")"
        )
    print(f"add one file to a 100-file merge: {spread(adds)} ms")
    result = {
        "files": args.files,
        "hists": 50,
        "wall_s": round(ours, 3),
        "hepconvert_wall_s": None if theirs is None else round(theirs, 3),
        "speedup": None if theirs is None else round(theirs / ours, 2),
        "add_one_ms": round(statistics.median(adds), 1),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
