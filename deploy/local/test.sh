#!/usr/bin/env bash
# The test command of the README (`make test`), and what .ci/run calls.
# Installs what the tests need (Debian services, the broker, the Python packages), starts the
# local stack on loopback, runs the linters and every test, and stops what it started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"
VENV="${VENV:-.venv}"

bash .ci/install.sh

if [[ ! -x "${VENV}/bin/python" ]]; then
    python3 -m venv "${VENV}"
fi
"${VENV}/bin/pip" install -q --disable-pip-version-check -e ".[dev,eval]"
touch "${VENV}/.installed"

echo "test: ruff and mypy" >&2
"${VENV}/bin/ruff" check services tests benchmarks
"${VENV}/bin/mypy"

started=0
if ! bash deploy/local/stack.sh status >/dev/null 2>&1; then
    started=1
fi
stop_stack() {
    if [[ "${started}" -eq 1 ]]; then
        bash deploy/local/stack.sh down || true
    fi
}
trap stop_stack EXIT
# Assigned first: a failing `up` stops the run here (inside eval "$(...)" it would not).
exports="$(bash deploy/local/stack.sh up)"
eval "${exports}"

echo "test: pytest" >&2
"${VENV}/bin/pytest" -q "$@"
