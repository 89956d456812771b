#!/usr/bin/env bash
# The one prepared GPU run of issue #15 (benchmarks/gpu.py): generate (batch 1 and 8, eager and the default
# path), train (default flags, --no-cache-latents, --small-scale, and diffusers' step) and the depth/pose
# annotators at SD1.5 size with random weights, printed as one table next to the issue's baselines; then issue
# #12's SDXL rows (train step at 1024 px, batch 1 and 4, with the memory flags vs diffusers' SDXL script's step;
# generate at 1024 px, 20 steps, batch 1) and issue #21's 1-GPU DeepSpeed ZeRO-2 + 8-bit Adam vs DDP peak-memory
# rows (skipped, with the reason, without deepspeed), in what is left of a 9-minute budget.
# Installs nothing and downloads nothing; under 9 minutes on an H100/H200 (each step has a time limit).
#
#   bash benchmarks/gpu.sh                 # on a CUDA machine
#   bash benchmarks/gpu.sh --toy           # or CNET_BENCH_TOY=1: tiny models on the CPU, a smoke run
#   bash benchmarks/gpu.sh --only sdxl     # just the SDXL rows (also with --toy)
#   bash benchmarks/gpu.sh --only zero2    # just ZeRO-2 vs DDP (--toy: DDP on the CPU, ZeRO-2 skipped)
#   PYTHON=/path/to/python bash benchmarks/gpu.sh --out results/   # another interpreter; keep the JSON + logs
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" "$ROOT/benchmarks/gpu.py" "$@"
