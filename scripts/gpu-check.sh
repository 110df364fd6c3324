#!/usr/bin/env bash
# Everything only a GPU can show, in one run (<= 7 minutes by default, each section in its own process
# and killed at its cap), written to
# one JSON summary: pytest -m gpu; CUDA vs CPU preprocessing on real decoded frames (max |Δ|); a
# 1-epoch AMP training run; TensorRT FP32/FP16/INT8 engines built and run (where TensorRT is
# importable, else skipped with the reason); a 1080p stream with --preprocess cuda vs cpu (fps, p99);
# GPU timings. On a machine without an NVIDIA GPU it says there is nothing to check and exits 0.
#
#   bash scripts/gpu-check.sh [--out gpu-check.json] [--budget 420] [--only preprocess,train_amp]
#
# Python: $PYTHON, else .venv/bin/python, else python3 (needs edgeskd[dev] and a CUDA binding).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
