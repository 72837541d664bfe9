#!/usr/bin/env bash
# The CUDA check (scripts/gpu_check.py): training steps, export, CUDA-vs-CPU parity, fp16, 8 threads,
# `capkit caption --device cuda`, `capkit bench --device cuda`. `--cpu` runs every step on the CPU
# (what CI does). Uses .venv when there is one, else the python3 on PATH with capkit importable.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
exec "$python" scripts/gpu_check.py "$@"
