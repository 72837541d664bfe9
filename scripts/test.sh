#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the test suite. The suite includes the
# runtime-only check (tests/test_torch_free.py): a fresh virtual environment with capkit[cpu]
# alone (no torch, torchvision or onnx) installs capkit and captions with an exported bundle.
# Set CAPKIT_RUNTIME_ONLY_CHECK=0 to skip that one (it needs the package registry or a pip cache).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CAPKIT_RUNTIME_ONLY_CHECK=${CAPKIT_RUNTIME_ONLY_CHECK:-1}
# The JavaScript runtime's unit tests (Node's test runner) and the type check of its JSDoc (tsc, as
# `npm test` runs them); its parity with Python and the page's browser test are in the pytest suite
# (tests/test_js_parity.py, tests/test_js_constants.py).
if command -v node >/dev/null 2>&1 && [ -d clients/js/node_modules ]; then
  (cd clients/js && node --test --test-reporter=dot test/ && node_modules/.bin/tsc -p jsconfig.json)
else
  echo "test: node or clients/js/node_modules missing; the JavaScript unit tests are skipped" >&2
fi
.venv/bin/python -m pytest "$@"
