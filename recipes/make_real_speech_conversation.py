"""A replay input of real human speech: asterisk-core-sounds-en prompts (one speaker, 8 kHz; CC-BY-SA-3.0,
Digium/Allison Smith; installed by scripts/setup.sh) with pauses for the agent to answer. Used to check that a
change to the pipeline keeps transcripts and turn counts, and to measure the orchestration overhead over many turns.

    .venv/bin/python recipes/make_real_speech_conversation.py --out /tmp/real.wav
    .venv/bin/python run.py io.input=/tmp/real.wav
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fern.audio import read_wav, write_wav  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en")
PROMPTS = ["conf-onlyperson", "conf-placeintoconf", "conf-waitforleader", "conf-invalid", "agent-newlocation",
           "conf-onlyone", "conf-kicked", "confbridge-lock-no-join"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gap-s", type=float, default=7.0, help="silence after each prompt")
    parser.add_argument("--turns", type=int, default=len(PROMPTS))
    args = parser.parse_args()
    parts = [np.zeros(8000, np.float32)]
    for name in PROMPTS[:args.turns]:
        parts += [read_wav(SOUNDS / f"{name}.wav", 16000), np.zeros(int(args.gap_s * 16000), np.float32)]
    audio = np.concatenate(parts)
    print(write_wav(args.out, audio, 16000), f"{audio.size / 16000:.1f} s, {args.turns} prompts")


if __name__ == "__main__":
    main()
