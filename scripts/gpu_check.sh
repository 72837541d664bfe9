#!/usr/bin/env bash
# The CUDA check (scripts/gpu_check.py): training steps, export, CUDA-vs-CPU parity, fp16, 8 threads,
# `capkit caption --device cuda`, `capkit bench --device cuda`. `--cpu` runs every step on the CPU
# (what CI does). `--throughput [OPTIONS]` measures instead where a batched caption's time goes and
# writes its section of docs/cuda.md (reports/cuda_throughput.py; `--throughput --help` lists its options).
# Uses .venv when there is one, else the python3 on PATH with capkit importable.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if [ "${1:-}" = "--throughput" ]; then
  shift
  exec "$python" reports/cuda_throughput.py "$@"
fi
exec "$python" scripts/gpu_check.py "$@"
