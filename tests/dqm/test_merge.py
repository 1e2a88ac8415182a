"""Exactly-once incremental merging: re-runs, re-produced inputs, bad inputs, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runwatch.dqm.histogram import Hist, add, read_histograms, write_histograms
from runwatch.dqm.merge import Contribution, merge_into, read_merged
from tests.dqm.samples import assert_same, sample_hists, write_sample


def make_inputs(tmp_path: Path, n: int, seed: int = 0) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(n):
        path = tmp_path / f"hist_{i:03d}.root"
        write_sample(path, rng)
        inputs.append(Contribution(f"task-{i}", path, events=100 + i))
    return inputs


def expected_sum(inputs: list[Contribution]) -> dict[str, Hist]:
    total: dict[str, Hist] = {}
    for item in inputs:
        for key, hist in read_histograms(item.path).items():
            total[key] = add(total[key], hist) if key in total else hist
    return total


def assert_merged(path: Path, inputs: list[Contribution]) -> None:
    """The merged file holds exactly ``inputs``: in its list and in its bins."""
    state = read_merged(path)
    assert sorted(state.included) == sorted(item.key for item in inputs)
    expected = expected_sum(inputs)
    assert sorted(state.hists) == sorted(expected)
    for key, hist in expected.items():
        assert_same(state.hists[key], hist)


def test_a_merge_is_the_bin_by_bin_sum_with_its_completeness(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 4)
    report = merge_into(tmp_path / "merged.root", inputs)
    assert report.added == [item.key for item in inputs]
    assert (report.files_included, report.events_included) == (4, 100 + 101 + 102 + 103)
    assert report.written and not report.errors and not report.rebuilt
    assert_merged(tmp_path / "merged.root", inputs)


def test_merging_the_same_inputs_again_changes_nothing(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 3)
    merge_into(tmp_path / "merged.root", inputs)
    before = (tmp_path / "merged.root").read_bytes()
    again = merge_into(tmp_path / "merged.root", inputs)
    assert again.skipped == [item.key for item in inputs]
    assert not again.added and not again.written
    assert (tmp_path / "merged.root").read_bytes() == before
    assert_merged(tmp_path / "merged.root", inputs)


def test_new_inputs_are_added_incrementally(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 5)
    merge_into(tmp_path / "merged.root", inputs[:2])
    report = merge_into(tmp_path / "merged.root", inputs)
    assert report.skipped == ["task-0", "task-1"]
    assert report.added == ["task-2", "task-3", "task-4"]
    assert_merged(tmp_path / "merged.root", inputs)
    # Only the new ones need to be given.
    (tmp_path / "more").mkdir()
    more = [Contribution("task-5", make_inputs(tmp_path / "more", 1, seed=9)[0].path, events=7)]
    assert merge_into(tmp_path / "merged.root", more).added == ["task-5"]
    assert_merged(tmp_path / "merged.root", [*inputs, *more])


def test_a_reproduced_input_rebuilds_the_merge(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 4)
    merge_into(tmp_path / "merged.root", inputs)
    write_sample(inputs[1].path, np.random.default_rng(99))  # task-1 was re-run
    redone = Contribution("task-1", inputs[1].path, events=500)
    current = [inputs[0], redone, inputs[2], inputs[3]]
    report = merge_into(tmp_path / "merged.root", current)
    assert report.rebuilt and report.replaced == ["task-1"]
    assert report.events_included == 100 + 500 + 102 + 103
    assert_merged(tmp_path / "merged.root", current)
    # A rebuild re-reads earlier contributions that were not given again.
    write_sample(inputs[2].path, np.random.default_rng(98))
    report = merge_into(tmp_path / "merged.root", [inputs[2]])
    assert report.rebuilt and sorted(report.added) == ["task-0", "task-1", "task-2", "task-3"]
    assert_merged(tmp_path / "merged.root", current)


def test_an_explicit_rebuild_keeps_only_the_inputs_given(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 3)
    merge_into(tmp_path / "merged.root", inputs)
    report = merge_into(tmp_path / "merged.root", inputs[1:], rebuild=True)
    assert report.rebuilt and report.files_included == 2
    assert_merged(tmp_path / "merged.root", inputs[1:])


def test_incompatible_binning_is_reported_and_the_rest_merged(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 3)
    odd = tmp_path / "odd.root"
    hists = sample_hists(np.random.default_rng(5), n_pmt=12)  # pmt_hits: 12 bins, not 40
    write_histograms(odd, hists, {})
    bad = Contribution("task-odd", odd, events=50)
    report = merge_into(tmp_path / "merged.root", [inputs[0], bad, *inputs[1:]])
    assert [(e.key, e.path) for e in report.errors] == [("task-odd", str(odd))]
    assert "axis x has 40 bins in one and 12 in the other" in report.errors[0].reason
    assert report.files_included == 3
    assert_merged(tmp_path / "merged.root", inputs)  # nothing of the bad input, not even half
    assert read_merged(tmp_path / "merged.root").hists["pmt_hits"].axes[0].nbins == 40


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_a_corrupt_input_is_reported_excluded_and_retried(tmp_path: Path, damage: str) -> None:
    inputs = make_inputs(tmp_path, 3)
    good = inputs[1].path.read_bytes()
    if damage == "truncate":
        inputs[1].path.write_bytes(good[: len(good) // 3])
    elif damage == "garbage":
        inputs[1].path.write_bytes(b"\0" * 1000)
    else:
        inputs[1].path.unlink()
    report = merge_into(tmp_path / "merged.root", inputs)
    assert [e.key for e in report.errors] == ["task-1"]
    assert str(inputs[1].path) == report.errors[0].path and report.errors[0].reason
    assert report.files_included == 2
    assert_merged(tmp_path / "merged.root", [inputs[0], inputs[2]])
    excluded = read_merged(tmp_path / "merged.root")
    assert excluded.included.keys() == {"task-0", "task-2"}
    inputs[1].path.write_bytes(good)  # fixed: the next merge includes it, once
    assert merge_into(tmp_path / "merged.root", inputs).added == ["task-1"]
    assert_merged(tmp_path / "merged.root", inputs)


def test_a_recorded_checksum_that_does_not_match_the_file_is_an_error(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, 2)
    wrong = Contribution("task-1", inputs[1].path, checksum="0000abcd", events=1)
    report = merge_into(tmp_path / "merged.root", [inputs[0], wrong])
    assert "checksum mismatch" in report.errors[0].reason
    assert report.files_included == 1


def test_a_crash_after_the_temporary_file_leaves_the_old_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = make_inputs(tmp_path, 4)
    merged = tmp_path / "merged.root"
    merge_into(merged, inputs[:2])

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    with monkeypatch.context() as patch:
        patch.setattr("runwatch.dqm.histogram.os.replace", killed)
        with pytest.raises(KeyboardInterrupt):
            merge_into(merged, inputs)
    assert_merged(merged, inputs[:2])
    (tmp_path / "merged.root.part").write_bytes(b"a half-written leftover")
    report = merge_into(merged, inputs)
    assert report.added == ["task-2", "task-3"]
    assert_merged(merged, inputs)
    assert not (tmp_path / "merged.root.part").exists()


KILLED_MERGER = """
import sys
from pathlib import Path
from runwatch.dqm.merge import Contribution, merge_into
inputs = [Contribution(f"task-{i}", Path(p)) for i, p in enumerate(sys.argv[2:])]
while True:
    for n in range(1, len(inputs) + 1):
        merge_into(sys.argv[1], inputs[:n])
    Path(sys.argv[1]).unlink()
"""


def test_kill_9_during_merges_leaves_a_consistent_file(tmp_path: Path) -> None:
    """A merger killed at random instants: the file on disk always holds exactly its list."""
    inputs = make_inputs(tmp_path, 6)
    merged = tmp_path / "merged.root"
    rng = np.random.default_rng(4)
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_MERGER, str(merged), *(str(i.path) for i in inputs)]
        )
        time.sleep(0.8 + float(rng.uniform(0.0, 0.6)))  # start-up takes ~0.6 s
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if merged.exists():
            included = read_merged(merged).included
            assert_merged(merged, [i for i in inputs if i.key in included])
    merge_into(merged, inputs)
    assert_merged(merged, inputs)
