#!/usr/bin/env bash
# Create .venv/ in the repo root and install vidlab with its test tools, at the versions of constraints.txt
# (the lock CI tests; scripts/lock.sh refreshes it).
#   VIDLAB_TORCH="ARGS"  pip arguments for another torch build (e.g. a CUDA index, see README); the lock's
#                        torch family (torch, torchvision, triton, nvidia-*, cuda-*) is then left to them.
#   VIDLAB_UNLOCKED=1    the newest releases pyproject.toml allows for everything but the torch family
#                        (untested by CI: see the README's Install section).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() { .venv/bin/python -m pip install -q "$@"; }
pip_install --upgrade pip
torch_family='^(torch|torchvision|triton|nvidia-.*|cuda-.*)=='
constraints=.venv/constraints.txt
if [ -n "${VIDLAB_UNLOCKED:-}" ]; then
    echo "setup: VIDLAB_UNLOCKED is set: the newest releases, not the tested lock" >&2
    upgrade=(--upgrade --upgrade-strategy eager)
    grep -E "$torch_family" constraints.txt > "$constraints"
else
    upgrade=()
    cp constraints.txt "$constraints"
fi
if [ -n "${VIDLAB_TORCH:-}" ]; then
    grep -v -E "$torch_family" "$constraints" > "$constraints.tmp" && mv "$constraints.tmp" "$constraints"
    if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
        # shellcheck disable=SC2086
        pip_install $VIDLAB_TORCH
    fi
else
    pip_install -c "$constraints" torch torchvision
fi
pip_install "${upgrade[@]}" -c "$constraints" -e ".[test]"
# The ffmpeg CLI is the reference decoder in tests and the lower bound in benchmarks; Debian's package
# also provides the shared libraries torchcodec needs. Without root, tests fall back to imageio-ffmpeg.
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || echo "warning: apt-get install ffmpeg failed" >&2
fi
