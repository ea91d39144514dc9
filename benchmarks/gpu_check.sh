#!/usr/bin/env bash
# Issue #23's GPU numbers in one JSON (see benchmarks/gpu_check.py), in under 8 minutes on one GPU:
# study trials/h (single seed, configs_per_trial), Qwen3-Embedding-0.6B-shaped encoding texts/s,
# Qwen3-0.6B-shaped generation tokens/s, and the peak GPU memory of each. Nothing is downloaded.
#
#   benchmarks/gpu_check.sh [OUT.json] [extra gpu_check.py arguments, e.g. --cpu-smoke]
#
# PYTHON (default: .venv/bin/python if present, else python) and ABEXRAT_DATA_DIR (default:
# ../shared/data/osha) may be set; the run stops after 8 minutes whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_check.json}"
shift || true
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export ABEXRAT_DATA_DIR="${ABEXRAT_DATA_DIR:-$(pwd)/../shared/data/osha}"
export WANDB_MODE=offline PYTHONWARNINGS=ignore
mkdir -p "$(dirname "$out")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi: CPU only" >&2
exec timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-480}" \
  "$PYTHON" benchmarks/gpu_check.py --json "$out" "$@"
