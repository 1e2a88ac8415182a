"""Nudges reach the listening scheduler, and are harmless when nobody listens."""

from __future__ import annotations

import threading
from pathlib import Path

from runwatch.workflow.nudge import NudgeListener, nudge, socket_path


def test_a_nudge_wakes_the_listener(tmp_path: Path) -> None:
    woken = threading.Event()
    listener = NudgeListener(socket_path(tmp_path), woken.set)
    assert listener.start()
    try:
        nudge(listener.path)
        assert woken.wait(2)
    finally:
        listener.stop()
    assert not Path(listener.path).exists()


def test_nudging_nobody_is_silent(tmp_path: Path) -> None:
    nudge(str(tmp_path / "nobody"))  # no socket: nothing raised
    nudge(None)
    assert not (tmp_path / "nobody").exists()


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    first = NudgeListener(socket_path(tmp_path), lambda: None)
    assert first.start()
    woken = threading.Event()
    second = NudgeListener(socket_path(tmp_path), woken.set)
    assert second.start()  # e.g. the first scheduler was killed and its file stayed
    try:
        first.stop()  # the old holder's stop must leave the new socket alone
        assert Path(second.path).exists()
        nudge(second.path)
        assert woken.wait(2)
    finally:
        second.stop()


def test_a_path_too_long_for_a_socket_turns_nudges_off(tmp_path: Path) -> None:
    listener = NudgeListener(str(tmp_path / ("x" * 120)), lambda: None)
    assert not listener.start()
    listener.stop()
