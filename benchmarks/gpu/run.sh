#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repo root, with .whl/ carried along
# (benchmarks/gpu/fetch_wheels.sh fills it). Prints the whole GPU grid:
# step time per backend (JAX, torch) at k = 6 and 12 of 12 BERT-Base blocks
# against plain 6- and 12-block models, then JAX end to end (6-8-10-12).
# Everything also goes to $OUT/gpu_grid.log when $OUT is set.
# The end-to-end run is 1500 steps per method by default: RaPTr compiles once
# per stage (4 compiles), which a short run cannot amortize. Budget: about
# 5 min for the grid and 5 min for the end-to-end run on an H100 (estimate,
# not yet measured); split with E2E_STEPS=0 / BACKENDS=... if needed.
# COMPILE_AHEAD=both adds a RaPTr run with StageScheduler(compile_ahead=False).
#   SIZE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh  # CPU check
set -uo pipefail
cd "$(dirname "$0")/../.."
SIZE="${SIZE:-gpu}"
mkdir -p "${OUT:-/tmp}"
LOG="${OUT:-/tmp}/gpu_grid.log"
PY="${PYTHON:-python3}"
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
    BACKENDS="${BACKENDS:-jax,torch}"
    MP=""
    DEFAULT_KEEPS=4,8  # L = 8 at SIZE=cpu
    if [ "$SIZE" = gpu ]; then
        MP="--mixed-precision mixed_bfloat16"
        DEFAULT_KEEPS=6,12
    fi
    "$PY" benchmarks/step_time.py --size "$SIZE" --backends "$BACKENDS" \
        --keeps "${KEEPS:-$DEFAULT_KEEPS}" $MP --json "${OUT:-/tmp}/step_time.json"
    [ "${E2E_STEPS:-1500}" = 0 ] || "$PY" benchmarks/step_time.py --size "$SIZE" --backends jax \
        --end-to-end --e2e-steps "${E2E_STEPS:-1500}" \
        --compile-ahead "${COMPILE_AHEAD:-on}" $MP
} 2>&1 | tee "$LOG"
