#!/usr/bin/env bash
# Fine-tune the LLM with LoRA on chat data, then compare the base model with the adapter on the same conversation.
# The base model is train.py's default for task=llm_lora (the offline SmolLM2-135M, run.py's default LLM too).
#   DATA=my_chats.jsonl bash recipes/compare_finetuned_llm.sh [train.py overrides: trainer.max_steps=...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$root"
py=.venv/bin/python
out="${OUT_DIR:-$root/outputs/lora/$(date +%Y-%m-%d_%H-%M-%S)}"
$py train.py task=llm_lora data=chat_jsonl data.path="${DATA:?set DATA=<chat .jsonl file>}" out_dir="$out" "$@"
$py run.py -m "llm.lora=null,$out/adapter"
$py tracking/compare.py --parent latest --plot outputs/finetuned_llm_breakdown.png \
  --metrics median_voice_to_voice_ms,median_llm_ttft_ms,median_first_clause_ms,median_round_trip_wer,turn_errors
