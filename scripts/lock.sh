#!/usr/bin/env bash
# Refresh constraints.txt, the lock scripts/setup.sh and CI install from: resolve vidlab's dependencies (and
# its test tools) afresh in a scratch venv from today's registry, then write every installed version.
# Run the test suite on the new lock before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PY" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$scratch/venv/bin/python" -m pip install -q ${VIDLAB_TORCH:-torch==2.14.1 torchvision==0.29.1}
"$scratch/venv/bin/python" -m pip install -q ".[test]"
{
    echo "# vidlab's lock: every package scripts/setup.sh installs, at the versions CI tests."
    echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$scratch/venv/bin/python" -V) on $(uname -sm)."
    "$scratch/venv/bin/python" -m pip freeze --exclude vidlab
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
