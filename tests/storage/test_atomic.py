from __future__ import annotations

from pathlib import Path

import pytest

from runwatch.storage.atomic import written_atomically


@pytest.mark.parametrize("durable", [False, True])
def test_the_file_appears_only_when_complete(tmp_path: Path, durable: bool) -> None:
    final = tmp_path / "sub" / "merged.root"
    with written_atomically(final, durable=durable) as part:
        part.write_text("half")
        assert not final.exists()
    assert final.read_text() == "half" and not part.exists()


def test_a_failed_write_leaves_neither_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "merged.root"
    final.write_text("old and whole")
    with pytest.raises(RuntimeError), written_atomically(final) as part:
        part.write_text("half")
        raise RuntimeError("killed mid-write")
    assert final.read_text() == "old and whole"
    assert not part.exists()
