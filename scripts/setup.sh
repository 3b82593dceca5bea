#!/usr/bin/env bash
# Create .venv/ in the repo root and install vidlab with its test tools.
# VIDLAB_TORCH overrides the torch/torchvision pins (e.g. a CUDA index for GPU users, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q ${VIDLAB_TORCH:-torch==2.14.1 torchvision==0.29.1}
fi
.venv/bin/python -m pip install -q -e ".[test]"
# The ffmpeg CLI is the reference decoder in tests and the lower bound in benchmarks; Debian's package
# also provides the shared libraries torchcodec needs. Without root, tests fall back to imageio-ffmpeg.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || echo "warning: apt-get install ffmpeg failed" >&2
fi
