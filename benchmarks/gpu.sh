#!/usr/bin/env bash
# The one prepared GPU run of issue #15 (benchmarks/gpu.py): generate (batch 1 and 8, eager and the default
# path), train (default flags, --no-cache-latents, --small-scale, and diffusers' step) and the depth/pose
# annotators at SD1.5 size with random weights, printed as one table next to the issue's baselines.
# Installs nothing and downloads nothing; about 5 minutes on an H100/H200 (each step has a time limit).
#
#   bash benchmarks/gpu.sh                 # on a CUDA machine
#   bash benchmarks/gpu.sh --toy           # or CNET_BENCH_TOY=1: tiny models on the CPU, a smoke run
#   PYTHON=/path/to/python bash benchmarks/gpu.sh --out results/   # another interpreter; keep the JSON + logs
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" "$ROOT/benchmarks/gpu.py" "$@"
