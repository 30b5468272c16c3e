#!/usr/bin/env bash
# One device call for issue 3 (CSM streaming TTS): install the carried wheels (.whl/: moshi 0.2.13, transformers
# 4.57.6, tokenizers, huggingface_hub; see ../shared/README.md), GPU correctness checks (graph/compile == eager,
# streaming Mimi == whole decode), the full-size benchmark with the stock-generate baseline, the same loop through the
# transformers modules and a kernel profile (--profile), then the compiled variant; the LLM benchmark with WITH_LLM=1.
# Logs go to $OUT. Each step is time-boxed so one failure does not eat the whole call.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/fern_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
T0=$(date +%s)
timeout ${GPU_TEST_S:-150} python3 -m pytest tests/tts/test_csm_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt"
echo "tests took $(( $(date +%s) - T0 )) s"
timeout ${BENCH_S:-180} python3 -m fern.bench.tts --size full --device cuda --runs 5 --profile --json "$OUT/bench_full.json" \
  2>&1 | grep -v "^{" | tee "$OUT/bench_full.txt"
echo "bench took $(( $(date +%s) - T0 )) s"
if [ -f fern/bench/llm.py ] && [ "${WITH_LLM:-0}" = 1 ]; then
  timeout ${LLM_S:-90} python3 -m fern.bench.llm --size llama1b --device cuda 2>&1 | tee "$OUT/llm_bench.txt" || true
fi
echo "llm took $(( $(date +%s) - T0 )) s"
if [ "${WITH_COMPILE:-1}" = 1 ]; then
  timeout ${COMPILE_S:-150} python3 -m fern.bench.tts --size full --device cuda --runs 5 --compile --baseline-frames 0 \
    --no-compare-modules --profile \
    --json "$OUT/bench_full_compile.json" 2>&1 | grep -v "^{" | tee "$OUT/bench_full_compile.txt" || true
fi
echo "all took $(( $(date +%s) - T0 )) s"
exit 0
