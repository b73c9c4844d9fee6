#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repo root, with .whl/ carried along
# (benchmarks/gpu/fetch_wheels.sh fills it). Prints the GPU grid (step time
# per backend, JAX and torch, at k = 6 and 12 of 12 BERT-Base blocks against
# plain 6- and 12-block models) or the JAX end-to-end run (6-8-10-12).
# Everything also goes to $OUT/gpu_grid.log when $OUT is set.
# MODE=grid (default): the step-time grid of each backend in BACKENDS, each
# under GRID_TIMEOUT seconds (default 180).
# MODE=e2e: JAX end to end, the full model then RaPTr (6-8-10-12), E2E_STEPS
# steps each (default 6000), under E2E_TIMEOUT seconds (default 560).
# They are two device calls: RaPTr compiles once per stage, and compiling
# ahead hides a compile only behind a stage longer than it. On an H200
# (2026-11-29) a stage's compile took about 30 s and a step 20-34 ms, so
# 1,500 steps (375-step stages) were too short; 6,000 steps per method take
# about 8 min (estimate from that run's step times), more than fits beside
# the grids in one 10-minute call.
#   BACKENDS=jax,torch bash benchmarks/gpu/run.sh      # grids, about 6 min
#   MODE=e2e bash benchmarks/gpu/run.sh                 # about 8-9 min
# MODE=ops: what one step issues, RaPTr against plain (benchmarks/step_ops.py):
# torch's operators, kernel launches and synchronisations per step, JAX's
# compiled bytes and kernels; each backend in BACKENDS under OPS_TIMEOUT
# seconds (default 240). About 3 min for both (estimate: four compiles of
# about 25 s on JAX, 40 profiled steps on torch).
#   MODE=ops bash benchmarks/gpu/run.sh
# MODE takes several sections, run in order, e.g. after an e2e call:
#   MODE=grid,ops BACKENDS=torch bash benchmarks/gpu/run.sh  # about 3.5 min
# LAYOUT_ROWS=1 adds two rows per k to the grid and ops sections: `stacked`,
# the prototype layout that holds the middle blocks' weights stacked between
# steps (benchmarks/stacked_layout.py), and `idle`, a plain k-block model
# holding the other blocks idle (zero gradient and AdamW update: the limit
# under RaPTr's gradient semantics). On JAX about 3 compiles more.
#   MODE=grid,ops LAYOUT_ROWS=1 BACKENDS=jax KEEPS=6 bash benchmarks/gpu/run.sh
# MODELS (grid only) runs just those models (step_time.py --models; `plain`
# gives both the limit, plain k, and the full model, plain L). A short A/B
# of RaPTr against its two limits at one k, on JAX about 3 min at the GPU
# size (four compiles of about 30 s, each in its own process; an estimate):
#   MODE=grid MODELS=plain,raptr,idle BACKENDS=jax KEEPS=6 bash benchmarks/gpu/run.sh
# COMPILE_AHEAD=both adds a RaPTr run with StageScheduler(compile_ahead=False).
#   SIZE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh  # CPU check
#   SIZE=cpu MODE=e2e E2E_STEPS=8 PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh
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
    STK=""  # grid and ops only
    [ -n "${LAYOUT_ROWS:-}" ] && STK="--stacked --idle"
    DEFAULT_KEEPS=4,8  # L = 8 at SIZE=cpu
    if [ "$SIZE" = gpu ]; then
        MP="--mixed-precision mixed_bfloat16"
        DEFAULT_KEEPS=6,12
    fi
    for mode in $(echo "${MODE:-grid}" | tr , ' '); do
    case "$mode" in
    e2e)
        E2E_TIMEOUT="${E2E_TIMEOUT:-560}"
        echo "== end to end: jax, ${E2E_STEPS:-6000} steps" \
             "(limit ${E2E_TIMEOUT} s)"
        timeout "$E2E_TIMEOUT" "$PY" benchmarks/step_time.py --size "$SIZE" \
            --backends jax --end-to-end --e2e-steps "${E2E_STEPS:-6000}" \
            --compile-ahead "${COMPILE_AHEAD:-on}" $MP \
            || echo "== end to end ended with status $?"
        ;;
    ops)
        OPS_TIMEOUT="${OPS_TIMEOUT:-240}"
        for backend in $(echo "${BACKENDS:-jax,torch}" | tr , ' '); do
            echo "== step anatomy: $backend (limit ${OPS_TIMEOUT} s)"
            STEPS=""  # profiled steps: torch only (JAX compiles one step)
            [ "$backend" = torch ] && STEPS="--steps 10"
            KERAS_BACKEND="$backend" timeout "$OPS_TIMEOUT" "$PY" \
                benchmarks/step_ops.py --size "$SIZE" $STEPS \
                --keeps "${KEEPS:-$DEFAULT_KEEPS}" $MP $STK \
                || echo "== step anatomy $backend ended with status $?"
        done
        ;;
    grid)
        GRID_TIMEOUT="${GRID_TIMEOUT:-180}"
        for backend in $(echo "${BACKENDS:-jax,torch}" | tr , ' '); do
            echo "== step-time grid: $backend (limit ${GRID_TIMEOUT} s)"
            timeout "$GRID_TIMEOUT" "$PY" benchmarks/step_time.py \
                --size "$SIZE" --backends "$backend" \
                --keeps "${KEEPS:-$DEFAULT_KEEPS}" $MP $STK \
                ${MODELS:+--models "$MODELS"} \
                --json "${OUT:-/tmp}/step_time_$backend.json" \
                || { echo "== grid $backend ended with status $?: the" \
                          "table of what it finished follows"
                     [ -s "${OUT:-/tmp}/step_time_$backend.json" ] \
                         && "$PY" benchmarks/step_time.py --size "$SIZE" \
                            --table-from "${OUT:-/tmp}/step_time_$backend.json"; }
        done
        ;;
    *)
        echo "MODE takes a comma-separated list of grid, e2e and ops;" \
             "got '$mode'" >&2
        ;;
    esac
    done
} 2>&1 | tee "$LOG"
