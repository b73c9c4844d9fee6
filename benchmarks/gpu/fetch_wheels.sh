#!/usr/bin/env bash
# Run HERE (a machine with package-registry access), from the repo root:
# downloads the wheels the GPU machine lacks (it has JAX, torch, numpy, h5py,
# rich, absl, ml-dtypes, regex, sentencepiece, tokenizers, but no Keras) for
# its Python 3.12 into .whl/ (git-ignored; carried with `carry: [".whl"]`).
# Checked on CPU: SIZE=cpu BACKENDS=jax PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh
# and SIZE=cpu MODE=e2e E2E_STEPS=8 PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 --platform any -d .whl "$@"
}
download keras==3.15.1 keras-hub==0.32.0 namex optree kagglehub kagglesdk
ls -la .whl
