#!/usr/bin/env bash
# Streaming vs whole-utterance TTS (CSM-1B, GPU): same conversation, same LLM/ASR, only tts= changes; compare time to
# first audio and voice-to-voice. Needs a CUDA GPU and sesame/csm-1b in the HF cache.
#   bash recipes/compare_tts_streaming.sh [optim=full] [llm=llama3_2_1b] ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$root"
py=.venv/bin/python
$py run.py -m tts=csm_streaming,csm device=cuda optim=full "$@"
$py tracking/compare.py --parent latest --plot outputs/tts_streaming_breakdown.png \
  --metrics median_voice_to_voice_ms,median_tts_first_audio_ms,median_first_clause_ms,median_round_trip_wer,turn_errors
