#!/usr/bin/env bash
# The runtime-only install: a fresh venv gets `pip install "<repo>[cpu]"` (not editable), which must
# bring numpy, Pillow, click, tqdm and onnxruntime and nothing of torch, torchvision or onnx; then
# `capkit caption IMAGE --model BUNDLE` must caption from outside the repository.
#
# Usage: scripts/runtime_only_check.sh [BUNDLE IMAGE]
#   Without arguments it first exports a tiny random-weight bundle and writes an image with .venv
#   (the development environment, which has torch).
# Env: PYTHON (the interpreter for the new venv, default python3); KEEP=1 keeps the temporary folder.
# Exits non-zero, with one line on stderr, when any check fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/capkit-runtime-only.XXXXXX")
trap '[ -n "${KEEP:-}" ] && echo "runtime-only: kept $work" >&2 || rm -rf "$work"' EXIT
fail() { echo "runtime-only check FAILED: $*" >&2; exit 1; }

if [ $# -eq 0 ]; then
  [ -x "$repo/.venv/bin/python" ] || fail "no BUNDLE IMAGE given and no $repo/.venv to export one with"
  echo "runtime-only: exporting a tiny bundle with .venv" >&2
  "$repo/.venv/bin/python" - "$work/bundle" "$work/image.png" <<'EOF'
import sys

import numpy as np
import torch
from PIL import Image

from capkit.export import export_model
from capkit.models import CaptionModel, CaptionModelConfig
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

torch.manual_seed(0)
vocab = Vocabulary(SPECIAL_TOKENS + ("a", "red", "blue", "square", "circle", "on", "white"))
model = CaptionModel(CaptionModelConfig(vocab_size=len(vocab), encoder="resnet18", embed_dim=16, hidden_dim=32)).eval()
export_model(model, vocab, PreprocessSpec(resize=32, crop=32), 8, sys.argv[1])
Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(sys.argv[2])
EOF
  set -- "$work/bundle" "$work/image.png"
fi
[ $# -eq 2 ] || fail "usage: $0 [BUNDLE IMAGE]"
bundle=$(cd "$1" && pwd) || fail "$1: no such bundle folder"
image="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
[ -f "$image" ] || fail "$2: no such image"

# A copy of the sources git knows about (tracked, or untracked and not ignored): no .venv, runs, build.
"$PYTHON" - "$repo" "$work/src" <<'EOF'
import os, shutil, subprocess, sys

repo, dst = sys.argv[1:]
try:
    listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual outputs
    skip = {".git", ".venv", "runs", "bundles", "build", "dist", "__pycache__", ".cache", ".pytest_cache"}
    listed = []
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info") and not d.startswith(".venv")]
        listed += [os.path.relpath(os.path.join(root, f), repo) for f in files]
for name in filter(None, listed):
    if os.path.isfile(os.path.join(repo, name)):
        os.makedirs(os.path.dirname(os.path.join(dst, name)), exist_ok=True)
        shutil.copy2(os.path.join(repo, name), os.path.join(dst, name))
EOF

echo "runtime-only: creating a venv and installing capkit[cpu]" >&2
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --disable-pip-version-check "$work/src[cpu]" >"$work/pip.log" 2>&1 \
  || { tail -20 "$work/pip.log" >&2; fail "pip install capkit[cpu] failed"; }
! grep -iE "deprecat" "$work/pip.log" >&2 || fail "pip install printed a deprecation warning (above)"

cd "$work"  # away from the repository, so that only the installed capkit can be imported
"$py" - "$work/venv" <<'EOF' || fail "the runtime-only venv is not runtime-only (see above)"
import importlib.util, sys

present = [m for m in ("torch", "torchvision", "onnx", "onnxscript") if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"importable in the runtime-only venv: {', '.join(present)}")
import capkit, capkit.runtime, onnxruntime  # noqa: E401

if not capkit.__file__.startswith(sys.argv[1]):
    sys.exit(f"capkit imported from {capkit.__file__}, not from the venv")
print(f"runtime-only: capkit from {capkit.__file__}; onnxruntime {onnxruntime.__version__}", file=sys.stderr)
EOF

output=$("$work/venv/bin/capkit" caption "$image" --model "$bundle" --json 2>"$work/stderr") \
  || fail "capkit caption exited non-zero"
[ ! -s "$work/stderr" ] || fail "capkit caption printed on stderr: $(head -c 300 "$work/stderr")"
"$py" -c 'import json, sys; d = json.loads(sys.argv[1]); assert "caption" in d and isinstance(d["tokens"], list), d' \
  "$output" || fail "unexpected output: $output"
echo "$output"

# --checkpoint needs PyTorch: without it, one line saying so and exit status 1, no traceback.
set +e
message=$("$work/venv/bin/capkit" caption "$image" --checkpoint "$work/none.pt" 2>&1)
status=$?
set -e
[ "$status" -eq 1 ] && [ "$(printf '%s\n' "$message" | wc -l)" -eq 1 ] && [[ "$message" == *"needs PyTorch"* ]] \
  || fail "--checkpoint without torch: exit $status, output: $message"
# serve-web needs the source checkout's clients/: one line saying so.
set +e
message=$("$work/venv/bin/capkit" serve-web "$bundle" --port 0 2>&1)
status=$?
set -e
[ "$status" -eq 1 ] && [ "$(printf '%s\n' "$message" | wc -l)" -eq 1 ] && [[ "$message" == *"source checkout"* ]] \
  || fail "serve-web from an installed package: exit $status, output: $message"
echo "runtime-only: OK in $(( $(date +%s) - started ))s" >&2
