#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
# Two processes (the machine's two cores), each taking whole test files: a file's module-scoped
# servers and models are started once, and its tests run in their order.
exec .venv/bin/python -m pytest -n "${JOBHIVE_TEST_PROCESSES:-2}" --dist loadfile "$@"
