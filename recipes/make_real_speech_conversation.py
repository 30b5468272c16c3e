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
# Prompts with a word boundary (seconds, from tiny.en word timestamps) after a word that needs more, for
# --pause-s: a mid-sentence pause where the sentence clearly goes on.
PAUSED = {"conf-getconfno": 2.62,  # "Please enter your conference number followed by the | pound key."
          "vm-enter-num-to-call": 1.68,  # "Please enter the number you wish to | call."
          "vm-reenterpassword": 1.40,  # "Please re-enter your | password followed by the pound key."
          "conf-getpin": 1.04}  # "Please enter the | conference PIN number."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gap-s", type=float, default=7.0, help="silence after each prompt")
    parser.add_argument("--turns", type=int, default=len(PROMPTS))
    parser.add_argument("--pause-s", type=float, default=None,
                        help="instead: the PAUSED prompts, each with a mid-sentence pause this long")
    args = parser.parse_args()
    parts = [np.zeros(8000, np.float32)]
    names = list(PAUSED) if args.pause_s else PROMPTS[:args.turns]
    for name in names:
        speech = read_wav(SOUNDS / f"{name}.wav", 16000)
        if args.pause_s:
            cut = int(PAUSED[name] * 16000)
            speech = np.concatenate([speech[:cut], np.zeros(int(args.pause_s * 16000), np.float32), speech[cut:]])
        parts += [speech, np.zeros(int(args.gap_s * 16000), np.float32)]
    audio = np.concatenate(parts)
    print(write_wav(args.out, audio, 16000), f"{audio.size / 16000:.1f} s, {len(names)} prompts")


if __name__ == "__main__":
    main()
