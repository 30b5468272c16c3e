#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU machine lacks, for `run(carry=[".whl"])` and recipes/gpu_bench.sh.
# The GPU machine has Python 3.12, torch 2.11, transformers 5.17, peft, lightning, numpy; no moshi, no hydra, no
# faster-whisper, no onnxruntime (../shared/README.md). The carry limit is 64 MiB in all, so the default turn stack
# (CTranslate2 43 MB + onnxruntime 28 MB) does not travel: gpu_bench.sh's replay then uses vad=webrtc turn=silence.
#   bash recipes/gpu_wheels.sh          # ~55 MB; prints what it fetched and the total
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps -d "$DEST"
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# CSM + streaming Mimi on the machine's torch (checked on the H100 then): moshi and the transformers 4.57 line
"$PY" -m pip download -q "${TARGET[@]}" moshi==0.2.13 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
# run.py itself (the replay of step 5): the versions this checkout's .venv runs, and webrtcvad for vad=webrtc
pinned() { "$PY" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
# (soundfile reads the WAVs, with cffi; scipy resamples between the stages' rates; jiwer scores each turn's round
# trip at the end of the run, which crashed there without it: none of them is on the machine's image as far as
# ../shared/README.md knows; gpu_bench.sh step 5 names any module still missing)
"$PY" -m pip download -q "${TARGET[@]}" "$(pinned hydra-core)" "$(pinned omegaconf)" "$(pinned webrtcvad-wheels)" \
  "$(pinned soundfile)" "$(pinned cffi)" "$(pinned pycparser)" "$(pinned scipy)" \
  "$(pinned jiwer)" "$(pinned rapidfuzz)" "$(pinned click)"
# omegaconf's parser runtime is published as a source archive only: build its (pure Python) wheel here
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$(pinned antlr4-python3-runtime)"
rm -f "$DEST"/*.tar.gz
ls -1 "$DEST"
du -ch "$DEST"/*.whl | tail -1
