#!/usr/bin/env bash
# Issue 11's GPU benchmark as its own device call (recipes/gpu_bench.sh already fills the 10-minute limit):
# full-size CSM-1B LoRA training steps with RANDOM weights, bf16, batch 8 x 10 s clips, with and without
# amortisation: samples/s, peak memory, MFU, and the anchor workload (60 steps x 8) projected against <= 20 s.
# Carry .whl/ as for gpu_bench.sh (transformers 4.57.6 etc.; ../shared/README.md). DRY_RUN=1: the tiny CPU run.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/fern_out}; mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" = 1 ]; then
  exec .venv/bin/python -m fern.bench.train --size tiny --device cpu --no-mlflow --json "$OUT/bench_train.json"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
timeout "${TRAIN_BENCH_S:-300}" python3 -m fern.bench.train --size full --device cuda --no-mlflow \
  --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.txt"
