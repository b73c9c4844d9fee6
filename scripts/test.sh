#!/usr/bin/env bash
# Sets up .venv, then runs the whole test suite once per Keras backend.
# Fails if any backend fails. Extra arguments go to pytest. Each backend's
# run ends with its 15 slowest tests.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" || exit 1
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in jax tensorflow torch; do
    echo "=== tests on KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
        --durations=15 "$@" \
        || status=1
done
if [ $status -ne 0 ]; then
    echo "FAILED on at least one backend"
fi
exit $status
