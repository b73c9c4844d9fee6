#!/usr/bin/env bash
# Sets up .venv, then runs the main job (the demo). Extra arguments go to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python examples/demo.py "$@"
