#!/usr/bin/env bash
# Try runwatch in one command: installs it, then `runwatch demo` sets up a deployment in
# ./runwatch-demo (SQLite, local executor, a dropbox directory: no server to install),
# starts the scheduler, simulates JUNO runs into the dropbox and shows them go from
# Data Taking to All Completed. Extra arguments go to `runwatch demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . 2>&1 | grep -v "as the 'root' user" || true
exec python3 -m runwatch demo runwatch-demo "$@"
