"""Schemas of the CSM presets of the tts config group (see fern.config.schema).

Light on purpose (dataclasses + omegaconf only): Hydra imports this before any stage is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


class CsmKernels(str, Enum):
    """The depth decoder's kernels (fern.tts.csm.engine.KERNELS)."""

    torch = "torch"  # the torch fast path
    triton = "triton"  # fused Triton steps: 4 launches per layer and step + 1 per head
    persistent = "persistent"  # one persistent Triton launch per frame
    auto = "auto"  # persistent on CUDA where Triton runs (the step kernels if its grid barrier gives up), else torch

    def __str__(self) -> str:  # as written in the config, in logs, params and sweep directory names
        return self.value


class CsmBackboneKernels(str, Enum):
    """The backbone's one-row step (fern.tts.csm.engine.BACKBONE_KERNELS)."""

    torch = "torch"  # the torch fast path (13 operators per layer)
    triton = "triton"  # 5 Triton launches per layer (fern.tts.csm.fused_backbone)
    persistent = "persistent"  # all 16 layers as one Triton launch, grid-wide barriers between phases
    auto = "auto"  # persistent on CUDA where Triton runs (the step kernels if its grid barrier gives up), else torch

    def __str__(self) -> str:
        return self.value


@dataclass
class CsmContextSegment:
    """One voice-prompt segment: what a speaker said (text) and how it sounded (a wav file, any rate)."""

    text: str = ""
    audio: str = ""  # path to a wav; resampled to 24 kHz
    speaker: int = 0


@dataclass
class CsmTTSConfig:
    _target_: str = "fern.tts.csm.synthesizer.CsmSynthesizer"
    model: str = "sesame/csm-1b"  # hub repo id or local dir (transformers CsmForConditionalGeneration + tokenizer)
    mimi_repo: str = "kyutai/moshiko-pytorch-bf16"  # where the reference implementation takes Mimi from
    mimi_weights: Optional[str] = None  # local Mimi safetensors; null: hub file moshi.models.loaders.MIMI_NAME
    cache_dir: Optional[str] = None  # hub cache; null: huggingface_hub's default (HF_HOME)
    local_files_only: bool = False  # never touch the network (the offline cache only)
    device: str = "${device}"
    dtype: str = "auto"  # auto (bf16 on a GPU when bf16, else float32) | float32 | bfloat16 | float16
    bf16: bool = "${optim.bf16}"  # type: ignore[assignment]
    # streaming: yield audio as frames are generated (tts/csm_streaming); false: whole utterance, then one chunk
    streaming: bool = True
    first_chunk_frames: int = 1  # frames (80 ms each) before the first chunk is yielded
    chunk_frames: int = 4  # frames per later chunk
    temperature: float = 0.9  # 0: greedy
    top_k: int = 50
    max_audio_s: float = 20.0  # per utterance; bounds generation when no EOS frame comes
    speaker: int = 0
    context: list[CsmContextSegment] = field(default_factory=list)  # voice prompt, encoded once per session
    keep_history: bool = True  # previous agent utterances become context (oldest dropped past the window)
    max_text_tokens: int = 160  # longer text is split into sentences (then words) and spoken piece by piece
    lora: Optional[str] = None  # peft adapter dir (e.g. from train.py); merged into the weights at load
    lora_merge: bool = True
    # benchmarking only: build the architecture with random weights (no download); the audio is noise
    random_weights: bool = False
    cuda_graphs: bool = "${optim.cuda_graphs}"  # type: ignore[assignment]  # one graph per frame (backbone+depth)
    compile: bool = "${optim.compile}"  # type: ignore[assignment]  # torch.compile the step functions
    # depth decoder kernels: torch | triton (fused, fern.tts.csm.fused; falls back to torch, logged, where Triton
    # cannot run) | persistent (the same math as one launch per frame) | auto (persistent on CUDA, else torch). From
    # optim: auto with optim=full (7.07 ms/frame on the H200 against 11.03 for torch, README), torch otherwise
    kernels: CsmKernels = "${optim.tts_kernels}"  # type: ignore[assignment]
    # the backbone's step: torch | triton | persistent | auto, as the depth decoder's (falls back to torch, logged,
    # where Triton cannot run)
    backbone_kernels: CsmBackboneKernels = "${optim.tts_kernels}"  # type: ignore[assignment]
    weights: str = "${optim.tts_weights}"  # depth decoder weights: bf16 (the model's) | int8 | fp8 (weight-only)
    tf32: bool = "${optim.tf32}"  # type: ignore[assignment]
    cudnn_benchmark: bool = "${optim.cudnn_benchmark}"  # type: ignore[assignment]
    warmup: bool = True  # run one short utterance at build (graph capture, Mimi graph capture)
    seed: Optional[int] = None
    sample_rate: int = 24000


SCHEMAS: dict[str, dict[str, type]] = {"tts": {"csm": CsmTTSConfig}}
