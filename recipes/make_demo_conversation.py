"""Regenerate assets/demo_conversation.wav, the embedded default input of run.py: two spoken questions (espeak-ng)
with pauses long enough for the agent to answer.

    .venv/bin/python recipes/make_demo_conversation.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fern.audio import write_wav  # noqa: E402
from fern.paths import ASSETS_DIR  # noqa: E402
from fern.tts.espeak import speak_conversation  # noqa: E402

DEMO_LINES = ["What is the capital of France?", "Can you tell me a short story about a cat?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "demo_conversation.wav")
    parser.add_argument("--gap-s", type=float, default=8.0, help="silence after each question")
    args = parser.parse_args()
    audio = speak_conversation(DEMO_LINES, sample_rate=16000, gap_s=args.gap_s)
    print(write_wav(args.out, audio, 16000), f"{audio.size / 16000:.1f} s")


if __name__ == "__main__":
    main()
