#!/usr/bin/env bash
# One device call: the GPU machine's own newer stack (torch 2.11 + transformers 5.x) with only moshi carried, to show
# the CSM engine and the LLM path work beyond our pinned 4.57: GPU correctness tests, then short benchmarks.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/fern_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site5 .whl/moshi-*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site5:$PWD
{ nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
T0=$(date +%s)
timeout ${GPU_TEST_S:-110} python3 -m pytest tests/tts/test_csm_gpu.py -q -p no:cacheprovider -x 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
echo "tests took $(( $(date +%s) - T0 )) s"
timeout ${BENCH_S:-75} python3 -m fern.bench.tts --size full --device cuda --runs 3 --baseline-frames 20 \
  --baseline-runs 1 --json "$OUT/bench_full_tf5.json" 2>&1 | grep -v "^{" | tail -30 | tee "$OUT/bench_full_tf5.txt"
echo "bench took $(( $(date +%s) - T0 )) s"
timeout ${LLM_S:-60} python3 -m fern.bench.llm --size llama1b --device cuda --variants eager --runs 3 2>&1 \
  | tail -20 | tee "$OUT/llm_bench_tf5.txt"
echo "all took $(( $(date +%s) - T0 )) s"
