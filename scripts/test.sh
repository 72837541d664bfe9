#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the test suite. The suite includes the
# runtime-only check (tests/test_torch_free.py): a fresh virtual environment with capkit[cpu]
# alone (no torch, torchvision or onnx) installs capkit and captions with an exported bundle.
# Set CAPKIT_RUNTIME_ONLY_CHECK=0 to skip that one (it needs the package registry or a pip cache).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CAPKIT_RUNTIME_ONLY_CHECK=${CAPKIT_RUNTIME_ONLY_CHECK:-1}
.venv/bin/python -m pytest "$@"
