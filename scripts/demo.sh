#!/usr/bin/env bash
# The main command: installs what is missing, then runs the pipeline on local defaults
# (scripts/demo.py; arguments go to it, e.g. --once). Safe to run again: it reuses what is there.
# `scripts/demo.sh stop` stops everything it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ "${1:-}" = stop ] || "$ROOT/scripts/setup.sh"
cd "$ROOT"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep Ray on loopback (see scripts/services.sh)
exec "$ROOT/.venv/bin/python" scripts/demo.py "$@"
