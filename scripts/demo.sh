#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the demo: the server with every endpoint and a worker for
# each, on http://127.0.0.1:7777 (extra arguments go to jobhive-server, e.g. -p 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/jobhive-server --demo "$@"
