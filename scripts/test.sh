#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
# Three processes on the two cores (the tests wait about a third of the time: job delays,
# leases, failovers; a third process fills those waits: 5:34 -> 5:08 here), each taking whole
# groups of test files (tests/conftest.py RUNS_WITH): a group's module-scoped
# servers and models are started once, and its tests run in their order.
exec .venv/bin/python -m pytest -n "${JOBHIVE_TEST_PROCESSES:-3}" --dist loadfile "$@"
