#!/usr/bin/env bash
# One device call (issue 12), sized for the 10-minute limit on the H200. Fill .whl/ with `bash recipes/gpu_wheels.sh`
# (moshi 0.2.13, transformers 4.57.6 and what run.py needs; ../shared/README.md), carry it, and run
# `bash recipes/gpu_bench.sh`.
#   1. the current path (torch kernels, 1 740 operators/frame) with --profile, stock `generate` and the module path
#   2. the fused Triton depth decoder (tts.kernels=triton) with --profile, and int8 / fp8 weights as variants in the
#      same run: ms/frame, first audio, RTF, x stock, kernels/frame, bandwidth share, start-up, peak VRAM; then the
#      persistent kernel (tts.kernels=persistent: the whole depth decoder as one launch) in a process of its own, so
#      that a fault in it cannot cost the step kernels' figures, with the backbone's Triton step and its persistent
#      kernel (tts.backbone_kernels=triton | persistent) as variants
#   3. GPU correctness tests (tests/tts/test_csm_gpu.py: graphs, compile, the fused path at CSM-1B shapes)
#   4. teacher-forced token agreement of bf16 / int8 / fp8 fused (step kernels and the persistent one) with the bf16
#      torch path (random weights)
#   5. voice-to-voice replay of the demo conversation through run.py (tts.kernels: the faster of steps 2 and 2b),
#      benchmark-only RANDOM weights throughout:
#      Whisper large-v3-turbo through transformers (asr=hf_whisper_turbo: no faster-whisper on the H200 image),
#      a Llama-3.2-1B-size LLM, CSM-1B streaming (tts.random_weights); the per-turn table and the medians
#   6. a summary table against the issue's goals (last lines of the output)
#   2c. where the persistent kernels' frame goes, phase by phase (the kernels' own clocks: TIMING=1)
# Every step is time-boxed against one deadline (DEADLINE_S, default 570 s), so one failure cannot eat the call;
# they run in the order 1, 2, 2b, 5, 2c, 4, 3 (the README's tables first).
# STEPS="1 2 3 4 5" (default) picks the steps to run, e.g. STEPS=5 for the voice-to-voice replay alone.
# DRY_RUN=1 runs the same steps on this CPU with the tiny config (Triton in its interpreter) to check the logic;
# its step 5 checks that the GPU command composes, then replays with tiny random Whisper/Llama and espeak-ng.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/fern_out}; mkdir -p "$OUT"
T0=$(date +%s)
DEADLINE_S=${DEADLINE_S:-570}
if [ "${DRY_RUN:-0}" = 1 ]; then
  PY=${PY:-.venv/bin/python}; SIZE=tiny; DEV=cpu; FRAMES="--frames 1 --runs 1"; BASE="--baseline-frames 1"
  VARIANTS=triton:int8; PVARIANTS=persistent:bf16:persistent; AGREE_FRAMES=2; DEADLINE_S=${DEADLINE_S_DRY:-1500}
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONPATH=$PWD
else
  PY=python3; SIZE=full; DEV=cuda; FRAMES="--runs 5"; BASE="--baseline-frames 20"
  VARIANTS=triton:int8,triton:fp8; AGREE_FRAMES=8
  # both persistent kernels; the same without pipelined weight loads (one tile in flight per program, as before
  # fern.bench.ptx counted them: is the latency-bound estimate right?); with the L2 prefetch of the next phase's
  # weights before each barrier (does DRAM idle at the barriers?); the backbone's Triton step; int8 without and with
  # the prefetch (half the bytes: the barriers weigh twice); deeper pipelines; half the rows per program. Most wanted
  # first: each variant's figures reach the JSON as it ends, if the box cuts the rest
  PVARIANTS="persistent:bf16:persistent"
  PVARIANTS+=",persistent:bf16:persistent@SD=1;BKH=128;bb.qkv_stages=1;bb.o_stages=1;bb.gu_stages=1;bb.down_stages=1"
  PVARIANTS+=",persistent:bf16:persistent@PREFETCH=1;bb.prefetch=1,persistent:bf16:triton"
  PVARIANTS+=",persistent:int8,persistent:int8@PREFETCH=1"
  PVARIANTS+=",persistent:bf16:persistent@SD=9;bb.gu_stages=5;bb.down_stages=5,persistent:bf16@BNG=32;BND=4;BNO=4;BP=4"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi

STEPS=" ${STEPS:-1 2 3 4 5} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
elapsed() { echo $(( $(date +%s) - T0 )); }
# box SECONDS CMD...: run CMD with at most SECONDS, and never past the deadline (20 s kept for the summary)
box() {
  local want=$1; shift
  local left=$(( DEADLINE_S - $(elapsed) - 20 ))
  local t=$(( want < left ? want : left ))
  if [ "$t" -lt 15 ]; then echo "SKIPPED (deadline): $*"; return 124; fi
  timeout "$t" "$@"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  $PY -c "import torch, transformers, triton as t; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'triton', t.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

if want 1; then
echo "== 1. current path (torch kernels) at $(elapsed) s"
box 200 $PY -m fern.bench.tts --size $SIZE --device $DEV $FRAMES $BASE --profile --kernels torch \
  --json "$OUT/bench_torch.json" 2>&1 | grep -v "^{" | tee "$OUT/bench_torch.txt"
fi

if want 2; then
echo "== 2. fused Triton depth decoder, + int8 / fp8 at $(elapsed) s"
box 200 $PY -m fern.bench.tts --size $SIZE --device $DEV $FRAMES $BASE --profile --kernels triton \
  --no-compare-modules --variants "$VARIANTS" --json "$OUT/bench_triton.json" 2>&1 | grep -v "^{" \
  | tee "$OUT/bench_triton.txt"
echo "== 2b. persistent kernel at $(elapsed) s"
box 170 $PY -m fern.bench.tts --size $SIZE --device $DEV $FRAMES $BASE --profile --kernels persistent \
  --no-compare-modules --variants "$PVARIANTS" --json "$OUT/bench_persistent.json" 2>&1 | grep -v "^{" \
  | tee "$OUT/bench_persistent.txt"
fi

echo "== 5. voice-to-voice replay at $(elapsed) s"
# BENCHMARK ONLY, random weights everywhere (asr/tts.random_weights land in config.yaml and the MLflow params). The
# text is arbitrary words without punctuation, so: the chunker cuts a clause after 6 words (a real reply's first
# clause is about that long), the reply is 12 tokens (2 clauses) of at most 2 s of audio each, the ASR stops after 24
# tokens. The agent then finishes speaking before the demo's second question (user speech at 0.5-2.3 s and
# 10.7-13.1 s), so no turn waits for the speaker. The LLM weights go to /tmp, not $OUT (2.5 GB).
LLM_DIR=${TMPDIR:-/tmp}/fern_rand_llama
V2V=(asr=hf_whisper_turbo asr.random_weights=true asr.max_new_tokens=24 llm=llama3_2_1b "llm.model=$LLM_DIR"
     llm.max_new_tokens=12 chunker.max_words=6 "io.output_dir=$OUT/v2v")
# the depth-decoder kernels that steps 2 and 2b measured faster (bf16 weights, default launch shapes); triton when
# either figure is missing. With the persistent kernel, the backbone's kernels that step 2b measured fastest
read -r TTS_KERNELS TTS_BACKBONE <<< "$(OUT="$OUT" $PY -c '
import json, os
def load(name):
    try:
        r = json.load(open(os.path.join(os.environ["OUT"], name)))
        return r if r.get("weights") == "bf16" and "gen_ms_per_frame" in r else None
    except (OSError, ValueError):
        return None
t, p = load("bench_triton.json"), load("bench_persistent.json")
kernels = "persistent" if p and t and p["gen_ms_per_frame"] < t["gen_ms_per_frame"] else "triton"
backbone = "torch"
if kernels == "persistent":
    ms = {"torch": p["gen_ms_per_frame"]}
    for bk in ("triton", "persistent"):
        v = p.get(f"variant_persistent:bf16:{bk}", {})
        if v.get("backbone_kernels") == bk and "gen_ms_per_frame" in v:
            ms[bk] = v["gen_ms_per_frame"]
    backbone = min(ms, key=ms.get)
print(kernels, backbone)' 2>/dev/null || echo triton torch)"
GPU_V2V=(tts=csm_streaming tts.random_weights=true "tts.kernels=$TTS_KERNELS" "tts.backbone_kernels=$TTS_BACKBONE"
         tts.max_audio_s=2 optim=full device=cuda)
echo "step 5 speaks with tts.kernels=$TTS_KERNELS tts.backbone_kernels=$TTS_BACKBONE (the fastest of steps 2 and 2b)"
if ! want 5; then
  echo "not in STEPS"
elif MISSING=$($PY -c "import importlib.util as u
print(' '.join(m for m in ('hydra', 'omegaconf', 'webrtcvad', 'soundfile', 'scipy') if u.find_spec(m) is None))") \
     && [ -n "$MISSING" ]; then
  echo "SKIPPED: run.py needs $MISSING here; \`bash recipes/gpu_wheels.sh\` puts their wheels in .whl/" \
    | tee "$OUT/v2v.txt"
else
  # turn=semantic's models (CTranslate2 + onnxruntime, 71 MB) exceed the carry limit: without them the replay ends
  # turns on 300 ms of silence (webrtcvad), and its endpoint figure is that rule's, not turn=semantic's
  TURN=()
  if ! $PY -c "import onnxruntime, faster_whisper" 2>/dev/null || [ ! -f models/smart_turn/smart-turn-v3.2-cpu.onnx ] \
     || [ ! -f models/silero_vad/silero_vad.onnx ]; then
    TURN=(vad=webrtc turn=silence turn.silence_ms=300)
    echo "no onnxruntime/faster-whisper/models here: ${TURN[*]} for this replay"
  fi
  if $PY -c "import mlflow" 2>/dev/null; then TRACK=("tracking.tracking_uri='sqlite:///$OUT/mlflow.db'")
  else TRACK=(tracking.enabled=false); echo "mlflow does not import here: tracking off (config.yaml still has it all)"
  fi
  if [ "$DEV" = cpu ]; then
    # the GPU command must compose here (typos in keys fail now, not on the device)
    if CFG=$($PY run.py "${V2V[@]}" "${GPU_V2V[@]}" "${TRACK[@]}" vad=webrtc turn=silence turn.silence_ms=300 \
             --cfg job 2>&1) && CFG=$($PY run.py "${V2V[@]}" "${GPU_V2V[@]}" "${TRACK[@]}" --cfg job 2>&1); then
      echo "the GPU command composes: $(grep -c "random_weights: true" <<<"$CFG") stages with random weights," \
           "asr.model $(sed -n "/^asr:/,/^[a-z]/s/^  model: //p" <<<"$CFG")"
    else
      echo "the GPU command does not compose: $(grep -v HYDRA_FULL_ERROR <<<"$CFG" | tail -1)"
    fi
    LLM_SIZE=tiny; LLM_DT=float32; RUN=(tts=espeak optim=none device=cpu asr.model=openai/whisper-tiny)
  else
    LLM_SIZE=llama1b; LLM_DT=bfloat16; RUN=("${GPU_V2V[@]}")
  fi
  # the LLM: a random-weight Llama saved where run.py's hf LLM loads a local directory (no hub)
  box 90 $PY -c "
from fern.llm.testing import random_llama, word_tokenizer
random_llama('$LLM_SIZE', dtype='$LLM_DT', device='$DEV').save_pretrained('$LLM_DIR')
word_tokenizer().save_pretrained('$LLM_DIR')" || echo "random LLM build failed"
  rm -rf "$OUT/v2v"
  box 240 $PY run.py "${V2V[@]}" "${RUN[@]}" "${TURN[@]}" "${TRACK[@]}" 2>&1 | grep -v "^{" | tail -40 | tee "$OUT/v2v.txt"
  $PY - "$OUT/v2v/turns.csv" <<'EOF' 2>&1 | tee "$OUT/v2v_medians.txt"
import csv, statistics, sys
cols = ("endpoint_delay_ms", "asr_ms", "llm_ttft_ms", "first_clause_ms", "tts_first_audio_ms", "speaker_wait_ms",
        "voice_to_voice_ms")
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError:
    sys.exit(f"no {sys.argv[1]}: run.py failed (see v2v.txt)")
def med(c):
    vals = [float(r[c]) for r in rows if r.get(c) not in (None, "", "nan")]
    return f"{statistics.median(vals):.0f}" if vals else "-"
print(f"voice-to-voice medians over {len(rows)} turns (ms): " + ", ".join(f"{c} {med(c)}" for c in cols))
EOF
fi

# where the persistent kernels' frame goes, phase by phase (their own clocks, TIMING=1): work and barrier wait of
# q|k|v, attention, o, gate|up, down and the head, which says what to tune next. DRY_RUN: refused in the interpreter,
# as the table says
if want 2; then
echo "== 2c. phase times of the persistent kernels at $(elapsed) s"
box 120 $PY -m fern.bench.tts --size $SIZE --device $DEV --frames 4 --runs 1 --baseline-frames 0 \
  --kernels persistent --backbone-kernels persistent --no-compare-modules \
  --phase-times persistent:bf16:persistent --json "$OUT/bench_phases.json" 2>&1 | grep -v "^{" \
  | tee "$OUT/bench_phases.txt"
fi

# token agreement after the replay: the issue's done-when needs the voice-to-voice table, not this
if want 4; then
echo "== 4. token agreement (teacher-forced, random weights) at $(elapsed) s"
box 90 $PY -m fern.bench.csm_quant --size $SIZE --device $DEV --backend triton --frames $AGREE_FRAMES \
  --modes steps,frame \
  --json "$OUT/agreement.json" 2>&1 | grep -v "^{" | tee "$OUT/agreement.txt"
fi

# the tests last: the figures the issue asks for (steps 1, 2, 5, 4) come first if time runs short; STEPS=3
# reruns them alone
echo "== 3. GPU tests at $(elapsed) s"
if ! want 3; then
  echo "not in STEPS"
elif [ "$DEV" = cuda ]; then
  box 200 $PY -m pytest tests/tts/test_csm_gpu.py -q -p no:cacheprovider -rs 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
else
  echo "DRY_RUN: the GPU tests skip without CUDA; not run"
fi

echo "== 6. summary at $(elapsed) s"
OUT="$OUT" STEPS="$STEPS" $PY - <<'EOF' 2>&1 | tee "$OUT/summary.txt"
import json, os
out = os.environ["OUT"]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
rows = []
for step, name in (("1", "bench_torch.json"), ("2", "bench_triton.json"), ("2", "bench_persistent.json")):
    r = load(name)
    if r is None and step not in os.environ["STEPS"].split():
        continue
    if r is None:
        print(f"{name}: missing (step failed or timed out; see its .txt)")
        continue
    rows.append((f"{r['kernels']}:{r['weights']}" + (" (cut short: the variants that ended)" if r.get("partial")
                                                      else ""), r))
    for key, v in r.items():
        if key.startswith("variant_") and "error" not in v:
            label = f"{v['kernels']}:{v['weights']}" + (f"@{v['blocks']}" if v.get("blocks") else "")
            bk = v.get("backbone_kernels", "torch")
            label += f":{bk}-backbone" if bk != "torch" else ""
            # a variant with the run's backbone kernels shares its backbone time; one with other kernels has its own
            bb = v.get("backbone_ms_per_frame", r.get("backbone_ms_per_frame"))
            if isinstance(bb, float):
                v = dict(v, backbone_ms_per_frame=bb, backbone_share=bb / v["gen_ms_per_frame"])
            rows.append((f"{label} (variant)", v))
        elif key.startswith("variant_"):
            print(f"{key}: FAILED {v['error']}")
def f(r, key, fmt):
    return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"
print("| CSM-1B path | ms/frame loop / e2e | backbone ms (share) | first audio ms | RTF | x stock (loop) |"
      " kernels/frame | grid barriers/frame (est. ms) | GB/frame | bandwidth share | start-up s | capture s |"
      " peak VRAM GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for label, r in rows:
    print(f"| {label} | {f(r, 'gen_ms_per_frame', '.2f')} / {f(r, 'e2e_ms_per_frame', '.2f')}"
          f" | {f(r, 'backbone_ms_per_frame', '.2f')} ({f(r, 'backbone_share', '.0%')})"
          f" | {f(r, 'ttfa_ms', '.1f')}"
          f" | {f(r, 'rtf', '.3f')} | {f(r, 'speedup_vs_stock_gen', '.1f')} | {f(r, 'ops_per_frame', '.0f')} |"
          f" {f(r, 'barriers_per_frame', '.0f')} ({f(r, 'barrier_ms_per_frame', '.2f')}) |"
          f" {f(r, 'weight_gb_per_frame', '.2f')} | {f(r, 'bandwidth_share', '.1%')} | {f(r, 'startup_s', '.1f')} |"
          f" {f(r, 'graph_capture_s', '.2f')} | {f(r, 'peak_vram_gib', '.2f')} |")
us = [r["grid_barrier_us"] for _, r in rows if isinstance(r.get("grid_barrier_us"), float)]
if us:
    print(f"one grid-wide barrier (a launch of nothing but barriers, one program per SM): {min(us):.2f} us")
try:
    print(open(os.path.join(out, "v2v_medians.txt")).read().strip())
except OSError:
    pass
pt = (load("bench_phases.json") or {}).get("phase_times", {})
if "error" in pt:
    print(f"phase times: FAILED {pt['error']}")
for part in ("depth", "backbone"):
    if part in pt:  # program 0's work + barrier wait per phase, and how many per frame
        print(f"{part} kernel {pt[part]['launch_ms']:.3f} ms: " + ", ".join(
            f"{k} {r['work_us']:.1f}+{r['wait_us']:.1f} us x{r['per_launch']}" for k, r in pt[part]["phases"].items()))
a = load("agreement.json")
if a:
    print("token agreement with the bf16 torch path (teacher-forced, random weights): "
          + ", ".join(f"{k} {v:.4f}" for k, v in a.items() if isinstance(v, float)))
print("goals: <= 6 then <= 4 ms/frame (>= 50 % of bandwidth), first audio <= 25 ms, >= 40x stock, start-up <= 15 s,"
      " peak VRAM <= 10 GB")
EOF
echo "all took $(elapsed) s"
exit 0
