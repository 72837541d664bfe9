#!/usr/bin/env bash
# The demo: generate the synthetic dataset, train the default model, evaluate it over temperatures,
# export the ONNX bundle (with its parity check), caption sample images greedy and at T=0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
data=$(capkit data synthetic)
capkit train "$@"
capkit eval --temps 0,0.1,0.2,0.7,1,1.5,2
