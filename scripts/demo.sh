#!/usr/bin/env bash
# The demo: set up .venv, generate the synthetic dataset, train the default model, evaluate it over
# temperatures, export the ONNX bundle (checked for parity with PyTorch), then caption a few test
# images with the torch-free runtime, greedy and at T=0.1. Extra arguments go to `capkit train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
data=$(capkit data synthetic)
capkit train "$@"
capkit eval --temps 0,0.1,0.2,0.7,1,1.5,2
capkit export
samples=$(.venv/bin/python - "$data" <<'PY'
import json, sys
test = json.load(open(f"{sys.argv[1]}/annotations/captions_test.json"))
print(" ".join(f"{sys.argv[1]}/images/{image['file_name']}" for image in test["images"][:4]))
PY
)
echo "greedy:" >&2
capkit caption $samples
echo "temperature 0.1:" >&2
capkit caption $samples --temp 0.1 --seed 0
