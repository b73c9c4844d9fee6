#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repo root, with .whl/ carried along
# (benchmarks/gpu/fetch_wheels.sh fills it). Prints the whole GPU grid:
# step time per backend (JAX, torch) at k = 6 and 12 of 12 BERT-Base blocks
# against plain 6- and 12-block models, then JAX end to end (6-8-10-12).
# Everything also goes to $OUT/gpu_grid.log when $OUT is set.
# The end-to-end run is 1500 steps per method by default: RaPTr compiles once
# per stage (4 compiles), which a short run cannot amortize. Budget: about
# 3 min per backend's grid and 4 for the end-to-end run (the time limits
# GRID_TIMEOUT and E2E_TIMEOUT, seconds); E2E_STEPS=0 skips the end-to-end
# run, BACKENDS=jax the torch grid.
# COMPILE_AHEAD=both adds a RaPTr run with StageScheduler(compile_ahead=False).
#   SIZE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh  # CPU check
set -uo pipefail
cd "$(dirname "$0")/../.."
SIZE="${SIZE:-gpu}"
mkdir -p "${OUT:-/tmp}"
LOG="${OUT:-/tmp}/gpu_grid.log"
PY="${PYTHON:-python3}"
# Keras defaults to TensorFlow, which the GPU machine lacks; each benchmark
# worker sets its own backend.
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
if ! "$PY" -c "import keras" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "keras is not importable and .whl/ has no wheels:" \
             "run benchmarks/gpu/fetch_wheels.sh first and carry .whl" >&2
        exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$(pwd):${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false
E2E_DONE=0
run_e2e() {
    E2E_DONE=1
    [ "${E2E_STEPS:-1500}" = 0 ] && return
    echo "== end to end: jax, ${E2E_STEPS:-1500} steps (limit ${E2E_TIMEOUT} s)"
    timeout "$E2E_TIMEOUT" "$PY" benchmarks/step_time.py --size "$SIZE" \
        --backends jax --end-to-end --e2e-steps "${E2E_STEPS:-1500}" \
        --compile-ahead "${COMPILE_AHEAD:-on}" $MP \
        || echo "== end to end ended with status $?"
}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
    "$PY" - <<'PYEOF'
import importlib
for name in ("keras", "keras_hub", "jax", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # informational
        print(name, "unavailable:", e)
PYEOF
    MP=""
    DEFAULT_KEEPS=4,8  # L = 8 at SIZE=cpu
    if [ "$SIZE" = gpu ]; then
        MP="--mixed-precision mixed_bfloat16"
        DEFAULT_KEEPS=6,12
    fi
    # Sections run in this order, each under its own time limit (seconds),
    # so that one slow or failing section leaves the others their time:
    # the JAX grid, JAX end to end, then the grid of every other backend.
    GRID_TIMEOUT="${GRID_TIMEOUT:-180}"
    E2E_TIMEOUT="${E2E_TIMEOUT:-230}"
    for backend in $(echo "${BACKENDS:-jax,torch}" | tr , ' '); do
        if [ "$backend" != jax ] && [ "$E2E_DONE" != 1 ]; then
            run_e2e
        fi
        echo "== step-time grid: $backend (limit ${GRID_TIMEOUT} s)"
        timeout "$GRID_TIMEOUT" "$PY" benchmarks/step_time.py --size "$SIZE" \
            --backends "$backend" --keeps "${KEEPS:-$DEFAULT_KEEPS}" $MP \
            --json "${OUT:-/tmp}/step_time_$backend.json" \
            || { echo "== grid $backend ended with status $?: the table of" \
                      "what it finished follows"
                 [ -s "${OUT:-/tmp}/step_time_$backend.json" ] \
                     && "$PY" benchmarks/step_time.py --size "$SIZE" \
                        --table-from "${OUT:-/tmp}/step_time_$backend.json"; }
    done
    [ "$E2E_DONE" = 1 ] || run_e2e
} 2>&1 | tee "$LOG"
