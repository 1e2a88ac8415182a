"""The merge as an engine step: starting from the previous live merge, the inventory of
each input, exactly once under re-runs and retries, and kill -9 of a merge process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from runwatch import cli
from runwatch.dqm.histogram import read_file, write_histograms
from runwatch.dqm.merge import META_FORMAT, Contribution, HistEntry, merge_into, read_merged
from tests.dqm.samples import assert_same, sample_hists, write_sample
from tests.dqm.test_merge import assert_merged

runner = CliRunner()
app = cli.build()


def per_file(folder: Path, n: int, seed: int = 0, n_pmt: int = 40) -> list[Path]:
    """``n`` per-file histogram files, keyed (as the merge command keys them) by path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"RUN.7.{i:03d}.hist.root"
        write_histograms(path, sample_hists(rng, n_pmt), {})
        paths.append(path)
    return paths


def keyed(paths: list[Path]) -> list[Contribution]:
    return [Contribution(str(p), p) for p in paths]


def merge_command(merged: Path, *inputs: Path) -> tuple[int, str]:
    args = ["dqm", "merge", str(merged), *map(str, inputs)]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})  # no wrapped paths
    return result.exit_code, result.output


def assert_same_merge(a: Path, b: Path) -> None:
    """Two merged files with the same contributions (in order) and the same histograms."""
    one, other = read_merged(a), read_merged(b)
    assert list(one.included.values()) == list(other.included.values())
    assert sorted(one.hists) == sorted(other.hists)
    for name, hist in one.hists.items():
        assert_same(hist, other.hists[name])


def test_each_contribution_records_the_inventory_of_its_histograms(tmp_path: Path) -> None:
    inputs = per_file(tmp_path / "in", 2)
    merge_into(tmp_path / "merged.root", keyed(inputs))
    included = read_merged(tmp_path / "merged.root").included[str(inputs[1])]
    hists = read_file(inputs[1]).hists
    assert included.inventory == tuple(
        HistEntry(name, h.classname, h.entries) for name, h in hists.items()
    )
    assert {e.path for e in included.inventory} == {
        "pmt_hits",
        "rec/energy",
        "trigger",
        "rec/maps/xy",
        "pmt_time",
    }
    assert {e.classname for e in included.inventory} == {"TH1D", "TH2D", "TProfile"}


def test_a_merged_file_without_inventories_is_read_and_merged_on(tmp_path: Path) -> None:
    """Files merged before inventories were recorded stay readable, and extendable."""
    inputs = per_file(tmp_path / "in", 3)
    merged = tmp_path / "merged.root"
    merge_into(merged, keyed(inputs[:2]))
    found = read_file(merged)
    assert found.meta is not None
    meta = json.loads(json.dumps(found.meta))
    for item in meta["contributions"]:
        del item["inventory"]
    write_histograms(merged, found.hists, meta)
    assert all(c.inventory == () for c in read_merged(merged).included.values())
    report = merge_into(merged, keyed(inputs))
    assert report.skipped == [str(p) for p in inputs[:2]] and report.added == [str(inputs[2])]
    assert_merged(merged, keyed(inputs))
    assert [len(c.inventory) for c in read_merged(merged).included.values()] == [0, 0, 5]


def test_a_merge_starts_from_the_previous_merged_file_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    inputs = per_file(tmp_path / "in", 4)
    previous = tmp_path / "live1" / "run7.merged.root"
    merge_into(previous, keyed(inputs[:2]))
    before = previous.read_bytes()
    output = tmp_path / "live2" / "run7.merged.root"
    report = merge_into(output, keyed(inputs[:3]), start=previous)
    assert report.started_from == previous
    assert report.skipped == [str(p) for p in inputs[:2]] and report.added == [str(inputs[2])]
    assert_merged(output, keyed(inputs[:3]))
    assert previous.read_bytes() == before
    # Nothing new: the output is a copy of the starting point (the task's output must exist).
    again = tmp_path / "live3" / "run7.merged.root"
    report = merge_into(again, keyed(inputs[:3]), start=output)
    assert report.written and not report.added
    assert again.read_bytes() == output.read_bytes()


def test_the_merge_command_recognises_the_previous_merge_among_its_inputs(
    tmp_path: Path,
) -> None:
    inputs = per_file(tmp_path / "in", 3)
    previous = tmp_path / "previous.root"
    assert merge_command(previous, *inputs[:2])[0] == 0
    output = tmp_path / "work" / "merged.root"
    output.parent.mkdir()
    code, out = merge_command(output, inputs[0], previous, *inputs[1:])  # in any position
    assert code == 0, out
    assert f"started from: {previous}" in out
    assert f"added: 1 ({inputs[2].name})" in out
    assert "skipped, already included: 2" in out
    assert_merged(output, keyed(inputs))
    code, out = merge_command(tmp_path / "other.root", previous, output, inputs[0])
    assert code == 2 and "more than one merged file" in out


def test_a_rerun_producer_replaces_its_contribution_in_a_live_merge(tmp_path: Path) -> None:
    """A hist task re-run writes the same path with other content: the next merge, starting
    from the previous one, rebuilds, so the old content is never counted with the new."""
    inputs = per_file(tmp_path / "in", 3)
    previous = tmp_path / "previous.root"
    assert merge_command(previous, *inputs[:2])[0] == 0
    write_sample(inputs[0], np.random.default_rng(42))  # the re-run's new content
    output = tmp_path / "output.root"
    code, out = merge_command(output, previous, *inputs)
    assert code == 0, out
    assert f"rebuilt from scratch; re-produced inputs: {inputs[0].name}" in out
    assert_merged(output, keyed(inputs))


def test_a_retried_merge_task_gives_the_same_merge(tmp_path: Path) -> None:
    """A retry runs the same command in a fresh work directory; and when the killed attempt
    had already stored its output, that output is the retry's starting point."""
    inputs = per_file(tmp_path / "in", 4)
    previous = tmp_path / "previous.root"
    assert merge_command(previous, *inputs[:2])[0] == 0
    first, retry, late = (tmp_path / d / "merged.root" for d in ("a1", "a2", "a3"))
    for out in (first, retry):
        out.parent.mkdir()
        assert merge_command(out, previous, *inputs)[0] == 0
    assert_same_merge(first, retry)
    late.parent.mkdir()
    code, text = merge_command(late, first, *inputs)
    assert code == 0 and "added: 0" in text and "skipped, already included: 4" in text
    assert_same_merge(first, late)
    assert_merged(late, keyed(inputs))


def _merge_process(*args: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "runwatch", "dqm", "merge", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_while_writing(process: subprocess.Popen[bytes], part: Path, delay: float) -> bool:
    """SIGKILL ``delay`` s after ``part`` appears (the write has begun); False if the process
    ended before it did."""
    while not part.exists():
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    return True


def test_kill_9_of_a_merge_process_then_a_rerun_equals_a_one_shot_merge(tmp_path: Path) -> None:
    """A merge process killed at seeded random instants -- while starting, merging, and
    while writing its output -- leaves the old file or the new complete one, never a torn
    one; a re-run then gives what one uninterrupted merge gives."""
    inputs = per_file(tmp_path / "in", 10, n_pmt=17_612)  # JUNO-sized pmt_hits
    previous = tmp_path / "previous.root"
    merge_into(previous, keyed(inputs[:3]))
    one_shot = tmp_path / "one-shot.root"
    began = time.monotonic()
    assert _merge_process(one_shot, previous, *inputs).wait() == 0
    duration = time.monotonic() - began
    output = tmp_path / "output.root"
    shutil.copyfile(previous, output)  # "old": what an earlier merge left under that name
    old = output.read_bytes()
    rng = np.random.default_rng(11)
    killed_writing = 0
    for kind in ("any", "writing", "any", "writing"):
        process = _merge_process(output, previous, *inputs)
        if kind == "any":
            time.sleep(float(rng.uniform(0.0, duration)))
            os.kill(process.pid, signal.SIGKILL)
        else:
            part = output.with_name(output.name + ".part")
            killed_writing += _kill_while_writing(process, part, float(rng.uniform(0.0, 0.02)))
        process.wait()
        if output.read_bytes() != old:
            assert_same_merge(output, one_shot)  # the new file, complete
            shutil.copyfile(previous, output)
    assert killed_writing, "no kill came while the output was being written"
    assert _merge_process(output, previous, *inputs).wait() == 0
    assert_same_merge(output, one_shot)
    assert_merged(output, keyed(inputs))
    assert read_file(output).meta["format"] == META_FORMAT  # type: ignore[index]
