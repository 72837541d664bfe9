#!/usr/bin/env bash
# Creates .venv and installs capkit with its development extras (torch, torchvision, onnx,
# onnxruntime-gpu, pycocoevalcap, pytest). Re-runs the install only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.capkit-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing capkit[dev] into .venv (first time: a few minutes, several GB for torch)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  echo "$want" > "$stamp"
fi
# The Ray extra (capkit[ray]: Ray Data and Ray Serve) for the --ray tests and benchmark: about 80 MB (Serve: 100 MB
# more); a failed install is reported, not fatal.
if ! .venv/bin/python -c "import ray.data, ray.serve" 2>/dev/null; then
  echo "setup: installing ray[data,serve] (capkit[ray])" >&2
  .venv/bin/python -m pip install -q "ray[data,serve]>=2.9" >&2 || echo "setup: ray[data,serve] did not install; the Ray tests are skipped" >&2
fi
# The JavaScript runtime (clients/js): its npm packages from the committed lock file, installed again only
# when the lock changes (install scripts skipped: onnxruntime-node's would fetch CUDA binaries), and
# Chromium for the page's browser test. Without node/npm or apt-get, those tests are skipped, not failed.
if command -v npm >/dev/null 2>&1; then
  js_stamp=clients/js/node_modules/.capkit-installed
  js_want=$(sha256sum clients/js/package-lock.json | cut -d' ' -f1)
  if [ "$(cat "$js_stamp" 2>/dev/null)" != "$js_want" ]; then
    echo "setup: npm ci in clients/js" >&2
    if (cd clients/js && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
      echo "$js_want" > "$js_stamp"
    else
      echo "setup: npm ci failed in clients/js; the JavaScript tests are skipped" >&2
    fi
  fi
else
  echo "setup: npm not found; the JavaScript tests are skipped" >&2
fi
apt_install() {  # PACKAGE WHAT-FOR WITHOUT-IT: a Debian package, where apt-get can install it
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $1 (apt-get) for $2" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1"; } >&2 2>/dev/null \
      || echo "setup: $1 did not install; $3" >&2
  fi
}
[ -x /usr/bin/chromium ] || apt_install chromium "the page's browser test" "the browser test is skipped"
command -v wrk >/dev/null 2>&1 || apt_install wrk "reports/serve.py's load runs" "reports/serve.py uses its httpx client"
command -v hey >/dev/null 2>&1 || apt_install hey "reports/serve.py's overload run" "reports/serve.py uses its httpx client"
