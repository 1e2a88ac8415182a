from __future__ import annotations

import subprocess
import sys


def test_an_experiments_step_program_starts_without_loading_the_engine() -> None:
    """`runwatch juno ...` runs once per task: it must not import SQLAlchemy or the web."""
    probe = (
        "import sys\n"
        "sys.argv = ['runwatch', 'juno', '--help']\n"
        "from runwatch.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "engine = ('sqlalchemy', 'fastapi', 'uvicorn')\n"
        "print('LOADED', sorted(m for m in engine if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "calib" in out and "rec" in out and "daqsim" in out
    assert "LOADED []" in out


def test_the_full_command_still_lists_the_experiments_and_the_engine() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runwatch", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "juno" in out and "scheduler" in out
