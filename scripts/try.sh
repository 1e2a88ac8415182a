#!/usr/bin/env bash
# Try runwatch in one command: installs it, then `runwatch demo` sets up a deployment in
# ./runwatch-demo (SQLite, local executor, a dropbox directory: no server to install),
# starts the scheduler, simulates JUNO runs into the dropbox and shows them go from
# Data Taking to All Completed. Extra arguments go to `runwatch demo` (see --help).
# Builds the web pages' front end first (scripts/build-web.sh), for `runwatch serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . 2>&1 | grep -v "as the 'root' user" || true
bash scripts/build-web.sh  # the web pages' JSROOT, from npm (no CDN at run time)
exec python3 -m runwatch demo runwatch-demo "$@"
