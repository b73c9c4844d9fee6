#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment (.venv) with every
# backend, KerasHub and the test tools at the project's pinned versions.
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.raptr-installed"
WANT="$(cat pyproject.toml | sha1sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "Installing keras_raptr and its pinned dependencies into .venv ..."
    .venv/bin/python -m pip install -q --upgrade pip
    # torch is pinned (==2.13.0) in pyproject: an unpinned torch would pull
    # a multi-GB CUDA build.
    .venv/bin/python -m pip install -q -e ".[all,test]"
    echo "$WANT" > "$STAMP"
fi
