#!/usr/bin/env bash
# Try runwatch in one command: installs it, makes a deployment in ./demo (SQLite, local
# executor, a dropbox directory: no server to install), drops two short runs of raw files
# into the dropbox the way a transfer system would, and runs the scheduler until both runs
# are All Completed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . 2>&1 | grep -v "as the 'root' user" || true
rm -rf demo
runwatch init demo >/dev/null
cd demo
python3 - <<'PY'
import json, zlib
from pathlib import Path

dropbox = Path("dropbox")
for run, files in ((1001, 4), (1002, 3)):
    for seq in range(1, files + 1):
        name = f"RUN.{run}.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.5.0.rtraw"
        data = (f"run {run} file {seq}\n" * 1000).encode()
        (dropbox / name).write_bytes(data)
        semaphore = dropbox / f"{name}.done"
        if seq < files:  # an empty semaphore: metadata comes from the file name
            semaphore.write_text("")
        else:  # the last file: a JSON semaphore carrying the end-of-run flag
            semaphore.write_text(json.dumps({
                "name": name, "url": (dropbox / name).resolve().as_uri(), "run": run,
                "stream": "Physics", "sequence": seq, "size": len(data),
                "adler32": f"{zlib.adler32(data):08x}", "created": "2025-08-26T12:00:00Z",
                "end_of_run": True}))
PY
echo "7 raw files of runs 1001 and 1002 are in demo/dropbox; starting the scheduler"
runwatch scheduler >scheduler.log 2>&1 &
scheduler=$!
trap 'kill $scheduler 2>/dev/null || true' EXIT
export COLUMNS=${COLUMNS:-120}  # wide enough for the runs table when not on a terminal
completed=no
for _ in $(seq 1 60); do
  status=$(runwatch status 2>/dev/null || true)
  if [[ $status == *"All Completed: 2"* ]]; then completed=yes; break; fi
  sleep 0.5
done
runwatch runs list
runwatch status
if [ "$completed" != yes ]; then
  echo "The runs did not complete within a minute; see demo/scheduler.log" >&2
  exit 1
fi
echo
echo "Look around (in demo/): runwatch runs show 1001 | runwatch tasks list | runwatch tasks show 1"
echo "Outputs are under demo/data/, job logs under demo/work/logs/."
