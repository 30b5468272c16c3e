"""Dataset presets (the ``data`` group) and their row readers.

Readers are cheap and run before any model loads: a wrong path or an unknown dataset id fails in a second with one
line. Rows that cannot be used (missing file, empty text, malformed line...) are skipped and counted with their
reason; audio-level faults (unreadable, too short/long) are found when a task decodes the audio and go to the same
``Skips``. Nothing left is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from fern.errors import ConfigValueError, FernError
from fern.paths import PROJECT_ROOT


# ---- schemas ----------------------------------------------------------------------------------------------------
@dataclass
class AudioDataConfig:
    kind: str = MISSING
    path: str = MISSING  # a folder, a file, or a hub dataset id (data=hf)
    val_fraction: float = 0.1  # share of rows held out for validation; 0: validate on the training rows
    max_rows: Optional[int] = None  # use only the first N usable rows
    min_duration_s: float = 0.3
    max_duration_s: float = 20.0  # longer clips are skipped (CSM: 20 s = 250 frames of its 2048 positions)
    speaker: int = 0  # speaker id given to every row (data=hf: unless speaker_column is set)
    cache_dir: Optional[str] = None  # encoded-audio cache (CSM Mimi codes); null: <project>/.cache/train
    seed: int = 0  # validation split


@dataclass
class LJSpeechDataConfig(AudioDataConfig):
    """A folder with ``metadata.csv`` (``id|text|normalized``) and ``wavs/<id>.wav``."""

    kind: str = "ljspeech"
    text_field: str = "normalized"  # normalized | text (normalized falls back to text when a line lacks it)


@dataclass
class WavTxtDataConfig(AudioDataConfig):
    """A folder of ``*.wav`` files, each with its transcript in a same-name ``*.txt``."""

    kind: str = "wav_txt"


@dataclass
class HFDataConfig(AudioDataConfig):
    """A Hugging Face dataset: hub id (from the cache when offline) or a local ``save_to_disk`` / data folder."""

    kind: str = "hf"
    split: str = "train"
    revision: Optional[str] = None
    audio_column: str = "audio"
    text_column: str = "text"
    speaker_column: Optional[str] = None  # integer speaker ids per row; null: ``speaker`` for all


@dataclass
class ChatJsonlDataConfig:
    """One ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line."""

    kind: str = "chat_jsonl"
    path: str = MISSING
    val_fraction: float = 0.1
    max_rows: Optional[int] = None
    max_tokens: int = 1024  # longer conversations are skipped
    seed: int = 0


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"ljspeech": LJSpeechDataConfig, "wav_txt": WavTxtDataConfig, "hf": HFDataConfig,
             "chat_jsonl": ChatJsonlDataConfig},
}

AUDIO_KINDS = ("ljspeech", "wav_txt", "hf")


# ---- rows and skips ---------------------------------------------------------------------------------------------
@dataclass
class AudioRow:
    id: str
    text: str
    speaker: int = 0
    path: Optional[str] = None  # a file, or
    data: Optional[bytes] = None  # encoded audio bytes (HF datasets)

    def key(self) -> str:
        """Content hash of the audio (what encoded-audio caches are keyed by)."""
        h = hashlib.sha1()
        if self.data is not None:
            h.update(self.data)
        else:
            with open(self.path, "rb") as f:  # type: ignore[arg-type]
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def load(self, sample_rate: int):
        """-> float32 mono at ``sample_rate``; raises fern.errors.AudioInputError when unreadable."""
        from fern.audio import read_wav, resample, to_mono_float32
        from fern.errors import AudioInputError

        if self.data is None:
            return read_wav(self.path, sample_rate)  # type: ignore[arg-type]
        import numpy as np
        import soundfile as sf

        try:
            samples, rate = sf.read(io.BytesIO(self.data), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - soundfile raises several types for bad bytes
            raise AudioInputError(f"row {self.id}: audio bytes are not decodable ({exc})") from exc
        mono = to_mono_float32(samples)
        if mono.size == 0 or not np.all(np.isfinite(mono)):
            raise AudioInputError(f"row {self.id}: audio holds no (finite) samples")
        return resample(mono, int(rate), sample_rate)


@dataclass
class Skips:
    """Rows left out, with why. ``reason`` is a short category (what summary.json counts), ``detail`` the specifics."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, row_id: str, reason: str, detail: str = "") -> None:
        self.rows.append((str(row_id), reason, detail))

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self, limit: int = 50) -> dict[str, Any]:
        return {"count": len(self.rows), "by_reason": dict(Counter(r for _, r, _ in self.rows)),
                "rows": [{"id": i, "reason": r, "detail": d} for i, r, d in self.rows[:limit]]}


def nothing_left(what: str, skips: Skips) -> FernError:
    reasons = ", ".join(f"{n} {r}" for r, n in Counter(r for _, r, _ in skips.rows).items()) or "none found"
    return ConfigValueError(f"no usable {what} rows left ({len(skips)} skipped: {reasons}); check data.path and the"
                            f" data settings")


def cache_dir(cfg: Any) -> Path:
    path = Path(cfg.get("cache_dir") or PROJECT_ROOT / ".cache" / "train").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def split(rows: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """-> (train, val). ``val_fraction`` 0 (or a single row) validates on the training rows."""
    if val_fraction <= 0 or len(rows) < 2:
        return list(rows), list(rows)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction)))
    val = sorted(order[:n_val])
    keep = set(val)
    return [r for i, r in enumerate(rows) if i not in keep], [rows[i] for i in val]


# ---- audio readers ----------------------------------------------------------------------------------------------
def read_audio_rows(cfg: Any) -> tuple[list[AudioRow], Skips]:
    kind = cfg.kind
    readers = {"ljspeech": _read_ljspeech, "wav_txt": _read_wav_txt, "hf": _read_hf}
    if kind not in readers:
        raise ConfigValueError(f"data={kind} has no audio; this task needs one of {', '.join(AUDIO_KINDS)}")
    skips = Skips()
    rows = readers[kind](cfg, skips)
    if cfg.get("max_rows"):
        rows = rows[: int(cfg.max_rows)]
    return rows, skips


def _folder(cfg: Any) -> Path:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_dir():
        raise ConfigValueError(f"data.path={cfg.path} is not a folder (data={cfg.kind})")
    return path


def _read_ljspeech(cfg: Any, skips: Skips) -> list[AudioRow]:
    root = _folder(cfg)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise ConfigValueError(f"data.path={cfg.path} has no metadata.csv (data=ljspeech wants id|text|normalized)")
    rows = []
    for n, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 2 or not parts[0].strip():
            skips.add(f"metadata.csv:{n}", "malformed metadata line", line[:80])
            continue
        rid = parts[0].strip()
        text = parts[2] if cfg.text_field == "normalized" and len(parts) > 2 and parts[2].strip() else parts[1]
        wav = root / "wavs" / f"{rid}.wav"
        if not text.strip():
            skips.add(rid, "empty text")
        elif not wav.is_file():
            skips.add(rid, "missing audio file", str(wav))
        else:
            rows.append(AudioRow(rid, text.strip(), int(cfg.speaker), path=str(wav)))
    return rows


def _read_wav_txt(cfg: Any, skips: Skips) -> list[AudioRow]:
    root = _folder(cfg)
    rows = []
    wavs = {p.stem: p for p in root.glob("*.wav")}
    for stem in sorted(set(wavs) | {p.stem for p in root.glob("*.txt")}):
        wav, txt = wavs.get(stem), root / f"{stem}.txt"
        if wav is None:
            skips.add(stem, "missing audio file", f"{txt} has no {stem}.wav")
        elif not txt.is_file():
            skips.add(stem, "missing transcript", f"no {stem}.txt")
        elif not (text := txt.read_text(encoding="utf-8", errors="replace").strip()):
            skips.add(stem, "empty text")
        else:
            rows.append(AudioRow(stem, " ".join(text.split()), int(cfg.speaker), path=str(wav)))
    if not wavs and not rows:
        raise ConfigValueError(f"data.path={cfg.path} holds no *.wav files (data=wav_txt)")
    return rows


def load_hf_dataset(path: str, split_name: str, revision: str | None):
    """A local ``save_to_disk`` folder, a local data folder, or a hub id (cache first when offline)."""
    import datasets

    local = Path(path).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "state.json").is_file()
                               or (local / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(local))
            return ds[split_name] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset(str(local) if local.exists() else path, split=split_name, revision=revision)
    except FernError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, offline and format errors have many types
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigValueError(
            f"data.path={path}: no such local dataset, and the hub dataset could not be loaded ({type(exc).__name__}:"
            f" {first}). Check the id, or download it on a connected machine (`hf download --repo-type dataset "
            f"{path}`) and run with HF_HUB_OFFLINE=1") from exc


def _read_hf(cfg: Any, skips: Skips) -> list[AudioRow]:
    import datasets

    ds = load_hf_dataset(str(cfg.path), cfg.split, cfg.get("revision"))
    cols = set(ds.column_names)
    wanted = [cfg.audio_column, cfg.text_column] + ([cfg.speaker_column] if cfg.get("speaker_column") else [])
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise ConfigValueError(f"data.path={cfg.path} has no column(s) {missing}; its columns are {sorted(cols)}"
                               f" (set data.audio_column / data.text_column / data.speaker_column)")
    if isinstance(ds.features[cfg.audio_column], datasets.Audio):
        # decode ourselves (soundfile): datasets' own audio decoding needs torchcodec, which we do not install
        ds = ds.cast_column(cfg.audio_column, datasets.Audio(decode=False))
    ds = ds.select_columns(wanted)
    rows = []
    for i, ex in enumerate(ds):
        rid = str(i)
        text = ex[cfg.text_column]
        audio = ex[cfg.audio_column]
        speaker = int(ex[cfg.speaker_column]) if cfg.get("speaker_column") else int(cfg.speaker)
        if not isinstance(text, str) or not text.strip():
            skips.add(rid, "empty text")
            continue
        data, path = None, None
        if isinstance(audio, dict):
            data, path = audio.get("bytes"), audio.get("path")
        elif isinstance(audio, (bytes, str)):
            data, path = (audio, None) if isinstance(audio, bytes) else (None, audio)
        if data is None and (not path or not Path(path).is_file()):
            skips.add(rid, "missing audio file", str(path))
            continue
        rows.append(AudioRow(rid, " ".join(text.split()), speaker, path=path, data=data))
    return rows


# ---- chat reader ------------------------------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")


def read_chat_rows(cfg: Any) -> tuple[list[dict], Skips]:
    if cfg.kind != "chat_jsonl":
        raise ConfigValueError(f"task=llm_lora needs data=chat_jsonl, got data={cfg.kind}")
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise ConfigValueError(f"data.path={cfg.path} is not a file (data=chat_jsonl: one JSON object per line)")
    skips, rows = Skips(), []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        rid = f"line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            skips.add(rid, "invalid JSON", str(exc))
            continue
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages:
            skips.add(rid, "no messages list")
            continue
        if not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                   for m in messages):
            skips.add(rid, "malformed message", f"roles must be {ROLES} with string content")
            continue
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            skips.add(rid, "no assistant reply")
            continue
        rows.append({"id": rid, "messages": [{"role": m["role"], "content": m["content"]} for m in messages]})
    if cfg.get("max_rows"):
        rows = rows[: int(cfg.max_rows)]
    return rows, skips
