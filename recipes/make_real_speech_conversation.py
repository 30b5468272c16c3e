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
from fern.bench.turn_data import MID_SENTENCE_CUTS, cut_between_words  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en")
PROMPTS = ["conf-onlyperson", "conf-placeintoconf", "conf-waitforleader", "conf-invalid", "agent-newlocation",
           "conf-onlyone", "conf-kicked", "confbridge-lock-no-join"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gap-s", type=float, default=7.0, help="silence after each prompt")
    parser.add_argument("--turns", type=int, default=len(PROMPTS))
    parser.add_argument("--pause-s", type=float, default=None,
                        help="instead: the MID_SENTENCE_CUTS prompts, each with a mid-sentence pause this long")
    args = parser.parse_args()
    parts = [np.zeros(8000, np.float32)]
    names = list(MID_SENTENCE_CUTS) if args.pause_s else PROMPTS[:args.turns]
    for name in names:
        speech = read_wav(SOUNDS / f"{name}.wav", 16000)
        if args.pause_s:
            cut = cut_between_words(speech, *MID_SENTENCE_CUTS[name])
            speech = np.concatenate([speech[:cut], np.zeros(int(args.pause_s * 16000), np.float32), speech[cut:]])
        parts += [speech, np.zeros(int(args.gap_s * 16000), np.float32)]
    audio = np.concatenate(parts)
    print(write_wav(args.out, audio, 16000), f"{audio.size / 16000:.1f} s, {len(names)} prompts")


if __name__ == "__main__":
    main()
