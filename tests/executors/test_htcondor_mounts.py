"""The HTCondor pool's view of host folders (scripts/services/htcondor.sh): its jobs must
see the folder at a path now, not one of the same name that an earlier start mounted and
that was deleted since. CI clones each commit to the same path, and the pool outlives a
clone: a job then ran ``python -m runwatch`` against the deleted sources ("No module named
runwatch"). Real bind mounts, so root only; the chroot is a plain folder here."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def pool_script(root: Path, command: str) -> str:
    """Run ``command`` in bash with the pool script's functions, its chroot at ``root``."""
    script = f"""
        set -euo pipefail
        log() {{ echo "$*"; }}
        die() {{ echo "error: $*" >&2; exit 1; }}
        source {SCRIPTS}/lib/apt.sh
        source {SCRIPTS}/services/htcondor.sh
        {command}
    """
    env = {**os.environ, "RUNWATCH_CONDOR_ROOT": str(root)}
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def chroot(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "chroot"
    root.mkdir()
    yield root
    for target in sorted(mounts_under(root), reverse=True):  # the deepest first
        subprocess.run(["umount", "-l", target], check=True)


def mounts_under(root: Path) -> list[str]:
    """The mount points under ``root`` (mountinfo's fifth field; none has a space here)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [t for t in (line.split()[4] for line in lines) if t.startswith(f"{root}/")]


def test_a_folder_made_anew_is_mounted_anew(chroot: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "commit").write_text("first")
    seen = chroot / str(clone).lstrip("/")
    pool_script(chroot, f"condor_share {clone}")
    assert (seen / "commit").read_text() == "first"
    assert pool_script(chroot, "condor_stale_mounts") == ""

    subprocess.run(["rm", "-rf", str(clone)], check=True)
    clone.mkdir()
    (clone / "commit").write_text("second")
    assert pool_script(chroot, "condor_stale_mounts").split() == [str(seen)]

    pool_script(chroot, f"condor_share {clone}")
    assert (seen / "commit").read_text() == "second"
    assert pool_script(chroot, "condor_stale_mounts") == ""
    pool_script(chroot, f"condor_share {clone}")  # already right: left as it is
    assert mounts_under(chroot) == [str(seen)]


def test_mounts_of_deleted_folders_are_let_go(chroot: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    pool_script(chroot, f"condor_share {gone}")
    gone.rmdir()
    seen = chroot / str(gone).lstrip("/")
    assert pool_script(chroot, "condor_stale_mounts").split() == [str(seen)]
    # condor_shared_mounts lets them go first; then it mounts the folders jobs need (made
    # here, under the test's chroot, which is not the pool's).
    pool_script(chroot, "condor_shared_mounts")
    assert str(seen) not in mounts_under(chroot)
    assert f"{chroot}/tmp" in mounts_under(chroot)
