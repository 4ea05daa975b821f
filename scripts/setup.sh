#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv with CPU torch 2.13.0 and wan-serve with its test extras.
# On a GPU host, install a CUDA build of torch into .venv first; this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
# Pinned first, so no later requirement pulls the registry's newest torch with its CUDA packages.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[test]"
# The studio's browser test drives Debian's Chromium (never a browser downloaded by playwright). Installed where this
# machine can (root with apt-get); elsewhere the test is skipped and says why.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
      || echo "setup: chromium could not be installed: tests/keyed/test_studio.py will be skipped"
  else
    echo "setup: no chromium, and no root apt-get to install it: tests/keyed/test_studio.py will be skipped"
  fi
fi
