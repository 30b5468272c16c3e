"""CSM-1B text-to-speech as a SpeechSynthesizer: frames stream straight into moshi's streaming Mimi decoder.

``tts/csm_streaming`` yields the first chunk after ``first_chunk_frames`` frames (80 ms of audio each) and then every
``chunk_frames``; ``tts/csm`` is the same engine in whole-utterance mode (generate all, decode, one chunk).
Streamed audio is not watermarked: the reference watermark needs the whole utterance.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fern.errors import ConfigValueError
from fern.events import CancelToken

log = logging.getLogger(__name__)

FRAME_RATE = 12.5


class CsmSynthesizer:
    sample_rate: int = 24000

    def __init__(
        self,
        model: str = "sesame/csm-1b",
        mimi_repo: str = "kyutai/moshiko-pytorch-bf16",
        mimi_weights: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        device: str = "auto",
        dtype: str = "auto",
        bf16: bool = True,
        streaming: bool = True,
        first_chunk_frames: int = 1,
        chunk_frames: int = 4,
        temperature: float = 0.9,
        top_k: int = 50,
        max_audio_s: float = 20.0,
        speaker: int = 0,
        context: Sequence[Any] = (),
        keep_history: bool = True,
        max_text_tokens: int = 160,
        lora: str | None = None,
        lora_merge: bool = True,
        random_weights: bool = False,
        cuda_graphs: bool = False,
        compile: bool = False,
        kernels: str = "torch",
        weights: str = "bf16",
        backbone_kernels: str = "torch",
        tf32: bool = False,
        cudnn_benchmark: bool = False,
        warmup: bool = True,
        seed: int | None = None,
        sample_rate: int = 24000,
        _modules: tuple | None = None,  # (model, tokenizer, mimi) already built: tests and benchmarks
    ):
        import torch

        from fern.tts.csm import loading
        from fern.tts.csm.engine import CsmEngine

        if sample_rate != 24000:
            raise ConfigValueError(f"tts.sample_rate must be 24000 (Mimi's rate), got {sample_rate}")
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ConfigValueError("tts.first_chunk_frames and tts.chunk_frames must be >= 1")
        if seed is not None:
            torch.manual_seed(seed)
        if _modules is None:
            from fern.devices import resolve_torch_device
            from fern.optim import set_backend_flags

            dev = resolve_torch_device(device)
            if dev.startswith("cuda"):
                set_backend_flags(tf32, cudnn_benchmark)
            csm, tokenizer = loading.load_csm(
                model, dev, dtype, cache_dir=cache_dir, local_files_only=local_files_only,
                random_weights=random_weights, half=bf16,
            )
            mimi = loading.load_mimi(
                mimi_repo, mimi_weights, dev, cache_dir=cache_dir, local_files_only=local_files_only,
                random_weights=random_weights,
            )
        else:
            csm, tokenizer, mimi = _modules
        if lora:
            csm = loading.apply_lora(csm, lora, merge=lora_merge)
        self.model, self.tokenizer, self.mimi = csm, tokenizer, mimi
        self.mimi.set_num_codebooks(csm.config.num_codebooks)
        self.engine = CsmEngine(csm, cuda_graphs=cuda_graphs, compile=compile, kernels=str(kernels),
                                weights=weights, backbone_kernels=str(backbone_kernels))
        self.engine.temperature, self.engine.top_k = float(temperature), int(top_k)
        self.streaming = bool(streaming)
        self.first_chunk_frames, self.chunk_frames = int(first_chunk_frames), int(chunk_frames)
        self.max_frames = max(1, int(round(max_audio_s * FRAME_RATE)))
        self.speaker = int(speaker)
        self.keep_history = bool(keep_history)
        self.max_text_tokens = int(max_text_tokens)
        self._prompt: list = []  # voice prompt segments (KV prefix reused across utterances)
        self._history: deque = deque()  # earlier agent utterances, oldest first
        self.stats: dict[str, float] = {}
        mimi_device = next(self.mimi.parameters()).device
        self._mimi_stream = torch.cuda.Stream(mimi_device) if mimi_device.type == "cuda" else None
        self.mimi.streaming_forever(1)
        if context:
            self.set_context(
                [(_get(c, "text"), _get(c, "audio"), None, int(_get(c, "speaker", 0) or 0)) for c in context]
            )
        if warmup:
            self.warm_up()

    # ---- text -------------------------------------------------------------------------------------------------
    def _ids(self, text: str, speaker: int) -> list[int]:
        tok = self.tokenizer
        ids = list(tok.encode(f"[{speaker}]{text}", add_special_tokens=False))
        bos = getattr(tok, "bos_token_id", None)
        eos = getattr(tok, "eos_token_id", None)
        return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])

    def split_text(self, text: str) -> list[str]:
        """Whitespace-normalised pieces that each fit ``max_text_tokens``: sentences, then words when needed."""
        text = " ".join(text.split())
        if not text:
            return []
        if len(self._ids(text, self.speaker)) <= self.max_text_tokens:
            return [text]
        pieces: list[str] = []
        for sentence in re.split(r"(?<=[.!?;:])\s+", text):
            current = ""
            for word in sentence.split(" "):
                candidate = f"{current} {word}".strip()
                if current and len(self._ids(candidate, self.speaker)) > self.max_text_tokens:
                    pieces.append(current)
                    current = word
                else:
                    current = candidate
            if current:
                pieces.append(current)
        for piece in pieces:
            if len(self._ids(piece, self.speaker)) > self.max_text_tokens:
                raise ConfigValueError(
                    f"a single word of {len(piece)} characters exceeds tts.max_text_tokens={self.max_text_tokens}"
                )
        return pieces

    # ---- voice prompt / context -------------------------------------------------------------------------------
    def set_context(self, segments: Sequence[tuple[str, Any, int | None, int]]) -> None:
        """Voice prompt: (text, audio, sample_rate, speaker) per segment; audio is a wav path (rate read from the
        file) or a float array at ``sample_rate``. Encoded once; its KV prefix is reused by every utterance."""
        from fern.audio import read_wav, resample, to_mono_float32

        prompt = []
        for text, audio, rate, speaker in segments:
            if isinstance(audio, (str, Path)):
                wav = read_wav(audio, self.sample_rate)
            elif audio is None:
                wav = np.zeros(0, dtype=np.float32)
            else:
                if rate is None:
                    raise ConfigValueError("context audio given as samples needs its sample rate")
                wav = resample(to_mono_float32(np.asarray(audio)), int(rate), self.sample_rate)
            prompt.append(self._segment(text, speaker, self.encode_audio(wav)))
        self._prompt = prompt
        self._history.clear()
        self.engine.invalidate()

    def clear_history(self) -> None:
        self._history.clear()

    def encode_audio(self, wav: np.ndarray):
        """24 kHz float mono -> (frames + 1, num_codebooks) codes, ending with the all-zero EOS frame."""
        import torch

        n_cb = self.model.config.num_codebooks
        if wav.size == 0:
            return torch.zeros(1, n_cb, dtype=torch.long)
        dev = next(self.mimi.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(dev)[None, None]
        with torch.no_grad(), _not_streaming(self.mimi):
            codes = self.mimi.encode(x)[0].T.cpu()  # (frames, n_cb)
        return torch.cat([codes, torch.zeros(1, n_cb, dtype=torch.long)])

    def _segment(self, text: str, speaker: int, audio=None):
        import torch

        from fern.tts.csm.engine import Segment

        return Segment(torch.tensor(self._ids(text, speaker), dtype=torch.long), audio)

    def _layout(self, n_text: int) -> list:
        """Context for the next utterance within the position window: history dropped oldest first, then the
        voice prompt, so text + ``max_frames`` frames still fit."""
        window = self.engine.max_len
        need = n_text + min(self.max_frames, max(window // 4, 1)) + 1

        def total() -> int:
            return sum(len(s) for s in self._prompt) + sum(len(s) for s in self._history)

        while self._history and total() + need > window:
            self._history.popleft()
        while self._prompt and total() + need > window:
            log.warning("CSM voice prompt does not fit the %d-position window with this text: dropping a segment",
                        window)
            self._prompt.pop(0)
        return list(self._prompt) + list(self._history)

    # ---- audio ------------------------------------------------------------------------------------------------
    def _decode_frame(self, frame):
        """Queue the streaming Mimi decode of one frame; on CUDA on its own stream, overlapping the next frame."""
        import torch

        if self._mimi_stream is None:
            codes = frame.clamp(0, self.mimi.cardinality - 1)[:, :, None]  # random weights may emit codes >= 2048
            return self.mimi.decode(codes)[0, 0]
        ready = self.engine.frame_ready
        if ready is not None:
            self._mimi_stream.wait_event(ready)  # this frame is done (not the one launched after it)
        else:
            self._mimi_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._mimi_stream):
            codes = frame.clamp(0, self.mimi.cardinality - 1)[:, :, None]
            pcm = self.mimi.decode(codes)[0, 0]
        return pcm

    def _to_host(self, pcm: list) -> np.ndarray:
        import torch

        if self._mimi_stream is None:
            return torch.cat(pcm).float().cpu().numpy()
        with torch.cuda.stream(self._mimi_stream):  # waits for the decoder only, not the generation queued after
            return torch.cat(pcm).float().cpu().numpy()

    def stream(self, text: str, cancel: CancelToken) -> Generator[np.ndarray, None, dict[str, float]]:
        """Audio chunks for ``text``; returns the figures of its first piece (first_chunk_s: time to first audio
        inside the synthesizer, frames, eos), which reach the turn's metrics."""
        first: dict[str, float] = {}
        for piece in self.split_text(text):
            if cancel.cancelled:
                break
            yield from self._speak(piece, cancel)
            first = first or {k: float(v) for k, v in self.stats.items() if k != "warmup_s"}
        return first

    def _speak(self, text: str, cancel: CancelToken) -> Iterator[np.ndarray]:
        import torch

        seg = self._segment(text, self.speaker)
        context = self._layout(len(seg))
        t0 = time.perf_counter()
        self.mimi.reset_streaming()
        frames: list = []
        pending: list = []
        first = True
        with torch.no_grad():
            for frame in self.engine.generate(context, seg, self.max_frames, cancel):
                frames.append(frame)
                if not self.streaming:
                    continue
                pending.append(self._decode_frame(frame))
                if len(pending) >= (self.first_chunk_frames if first else self.chunk_frames):
                    chunk = self._to_host(pending)
                    pending = []
                    if first:
                        self.stats["first_chunk_s"] = time.perf_counter() - t0
                        self.stats["first_chunk_frame"] = len(frames)
                        first = False
                    yield chunk
                    if cancel.cancelled:
                        return
            if cancel.cancelled:
                return
            if not self.streaming and frames:
                pending = [self._decode_frame(f) for f in frames]
            if pending:
                if first:
                    self.stats["first_chunk_s"] = time.perf_counter() - t0
                    self.stats["first_chunk_frame"] = len(frames)
                yield self._to_host(pending)
        self.stats["frames"] = len(frames)
        self.stats["total_s"] = time.perf_counter() - t0
        self.stats["eos"] = float(self.engine.last_eos)
        self.last_frames = torch.cat(frames).cpu() if frames else torch.zeros(0, self.model.config.num_codebooks)
        if self.keep_history:
            done = self._segment(text, self.speaker, torch.cat([self.last_frames.long(), _zeros(self)]))
            if self.engine.commit(context, done, self.engine.last_rows_written):
                self._history.append(done)

    def warm_up(self) -> None:
        """One short utterance: captures the CUDA graphs (ours and Mimi's) before the first real one."""
        keep, self.keep_history = self.keep_history, False
        saved = self.max_frames
        self.max_frames = max(self.first_chunk_frames, self.chunk_frames) + 1
        t0 = time.perf_counter()
        self.engine.warm_prefill(self.max_text_tokens + 64)
        try:
            for _ in self.stream("Hello there.", CancelToken()):
                pass
        finally:
            self.keep_history, self.max_frames = keep, saved
        self.stats["warmup_s"] = time.perf_counter() - t0

    def close(self) -> None:
        pass


def _zeros(synth: CsmSynthesizer):
    import torch

    return torch.zeros(1, synth.model.config.num_codebooks, dtype=torch.long)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@contextmanager
def _not_streaming(module):
    """Run a moshi module outside its streaming state (the encoder for context audio) and restore the state after,
    so the decoder's captured CUDA graphs survive."""
    saved: list = []
    module._apply_named_streaming(lambda name, m: saved.append((m, m._streaming_state)))
    for m, _ in saved:
        m._streaming_state = None
    try:
        yield
    finally:
        for m, state in saved:
            m._streaming_state = state
