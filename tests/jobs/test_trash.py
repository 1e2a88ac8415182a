from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from runwatch.jobs.trash import Trash
from tests.waiting import wait_for


def _workdir(parent: Path, name: str) -> Path:
    path = parent / name
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "out.txt").write_text("output")
    (path / "log.txt").write_text("log")
    return path


def test_a_discarded_work_directory_vanishes_at_once_and_is_deleted_later(
    tmp_path: Path,
) -> None:
    trash = Trash(tmp_path / "trash")
    trash.start()
    try:
        workdir = _workdir(tmp_path, "task-1-attempt-1")
        trash.discard(workdir)
        assert not workdir.exists()
        wait_for(lambda: not any((tmp_path / "trash").iterdir()), 10, "the trash emptied")
    finally:
        trash.stop()


def test_leftovers_of_a_killed_worker_are_deleted_at_start(tmp_path: Path) -> None:
    _workdir(tmp_path / "trash", "123-task-2-attempt-1")
    trash = Trash(tmp_path / "trash")
    trash.start()
    trash.stop()
    assert list((tmp_path / "trash").iterdir()) == []


def test_a_directory_on_another_file_system_is_deleted_in_place(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        workdir = _workdir(Path(other), "task-3-attempt-1")
        trash = Trash(tmp_path / "trash")
        trash.start()
        try:
            trash.discard(workdir)
            assert not workdir.exists()
        finally:
            trash.stop()


def test_discarding_what_is_already_gone_is_a_no_op(tmp_path: Path) -> None:
    trash = Trash(tmp_path / "trash")
    trash.discard(tmp_path / "never-made")
    assert not (tmp_path / "trash").exists() or not any((tmp_path / "trash").iterdir())
