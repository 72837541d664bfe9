#!/usr/bin/env bash
# The test command: sets up .venv if needed, runs the test suite, then checks that a runtime-only
# environment (no torch, torchvision or onnx) installs capkit and captions with an exported bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m pytest "$@"
