#!/usr/bin/env bash
# The test command: installs what is missing (apt packages, FerretDB, the venv), starts
# the real servers and a local Ray on 127.0.0.1, and runs every test. Arguments go to pytest.
# The servers keep running afterwards for quick reruns: `scripts/services.sh stop ray clickhouse mongodb tsdb`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/services.sh" start clickhouse mongodb tsdb ray
cd "$ROOT"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep Ray on loopback (see scripts/services.sh)
exec "$ROOT/.venv/bin/python" -m pytest "$@"
