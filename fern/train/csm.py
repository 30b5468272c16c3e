"""CSM-1B LoRA (voice cloning): audio encoded once with moshi's Mimi and cached, LoRA on the backbone and depth-decoder
projections (never Mimi), loss = codebook 0 on every frame + the depth decoder on a random ``amortise`` share of them.

Layout of one sample (what CsmSynthesizer feeds at inference): the text row ``bos + "[speaker]text" + eos`` (text
embeddings), then the audio frames and the all-zero EOS frame (sum of the 32 codebook embeddings). Labels are
``(batch, seq, 32)`` codes at audio rows, -100 elsewhere, and go through transformers' own CSM loss:
``CsmForConditionalGeneration`` trains the backbone on codebook 0 of every labelled row (shifted: row t-1 predicts
frame t) and runs the depth decoder only on rows whose codebooks 1..31 are not all -100. That is how transformers
leaves frames out of the depth loss (its processor marks them with label -101, which it turns into -100 on
codebooks 1..31); we do the same directly, choosing ``ceil(amortise * frames)`` frames per batch at random
(Sesame's "compute amortisation": the depth decoder runs on 1/16 of the frames). With ``amortise=1`` the loss is the
full loss. Validation always uses every frame.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fern.train.csm_loss import CSM_LORA_TARGETS, collate, csm_loss, text_ids, tiny_mimi, tiny_model
from fern.train.task import LoraSettings, Task, apply_lora, save_adapter

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000


@dataclass
class CsmLoraTaskConfig:
    kind: str = "csm_lora"
    base_model: str = "sesame/csm-1b"  # default of model.name
    base_gguf_file: Optional[str] = None
    mimi_repo: str = "kyutai/moshiko-pytorch-bf16"
    mimi_weights: Optional[str] = None  # local Mimi safetensors; null: the hub file from mimi_repo
    hub_cache_dir: Optional[str] = None  # null: huggingface_hub's default
    local_files_only: bool = False
    amortise: float = 0.0625  # share of frames the depth decoder trains on (Sesame: 1/16); 1: all
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=32, alpha=32, target_modules=CSM_LORA_TARGETS))


SCHEMAS: dict[str, dict[str, type]] = {"task": {"csm_lora": CsmLoraTaskConfig}}


class CsmLoraTask(Task):
    def read(self) -> None:
        from fern.train.data import read_audio_rows

        self.rows, self.skips = read_audio_rows(self.cfg.data)

    # ---- models -----------------------------------------------------------------------------------------------
    def _tokenizer(self):
        mcfg, tcfg = self.cfg.model, self.cfg.task
        from fern.tts.csm.tokenizer import ByteTokenizer

        if mcfg.size == "tiny" or mcfg.random_weights:
            return ByteTokenizer()
        from transformers import AutoTokenizer

        from fern.tts.csm.loading import _missing

        try:
            return AutoTokenizer.from_pretrained(str(mcfg.name), cache_dir=tcfg.hub_cache_dir,
                                                 local_files_only=bool(tcfg.local_files_only))
        except (OSError, ValueError) as exc:
            raise _missing(str(mcfg.name), tcfg.hub_cache_dir, exc) from exc

    def _mimi_tag(self) -> str:
        """Names the codec weights: part of the code cache key."""
        mcfg, tcfg = self.cfg.model, self.cfg.task
        if mcfg.size == "tiny":
            return "tiny-mimi-random-codebooks-seed0"
        if mcfg.random_weights:
            return "random-mimi-seed0"
        return f"{tcfg.mimi_repo}:{tcfg.mimi_weights or 'hub'}"

    def _mimi(self, device: str):
        import torch

        mcfg, tcfg = self.cfg.model, self.cfg.task
        if mcfg.size == "tiny":
            return tiny_mimi(seed=0, device=device)
        from fern.tts.csm.loading import load_mimi

        if mcfg.random_weights:
            torch.manual_seed(0)
        return load_mimi(tcfg.mimi_repo, tcfg.mimi_weights, device, cache_dir=tcfg.hub_cache_dir,
                         local_files_only=bool(tcfg.local_files_only), random_weights=bool(mcfg.random_weights))

    def build_model(self) -> Any:
        mcfg, tcfg = self.cfg.model, self.cfg.task
        if mcfg.size == "tiny":
            model = tiny_model(int(self.cfg.seed)).to(self.model_dtype())
        else:
            from fern.tts.csm.loading import load_csm

            dtype = str(mcfg.dtype)
            model, _ = load_csm(str(mcfg.name), "cpu", dtype if dtype != "auto" else _dtype_name(self.model_dtype()),
                                cache_dir=tcfg.hub_cache_dir, local_files_only=bool(tcfg.local_files_only),
                                random_weights=bool(mcfg.random_weights))
        model.codec_model = None  # moshi's Mimi encodes the audio (once, cached); the HF codec is never run
        self.max_positions = int(model.config.max_position_embeddings)
        return apply_lora(model, tcfg.lora)

    # ---- data -------------------------------------------------------------------------------------------------
    def prepare(self) -> tuple[list, list]:
        from fern.devices import resolve_torch_device
        from fern.train.data import cache_dir

        dcfg = self.cfg.data
        tokenizer = self._tokenizer()
        device = resolve_torch_device(str(self.cfg.device))
        encoded = encode_rows(self.rows, lambda: self._mimi(device), self._mimi_tag(), cache_dir(dcfg), device,
                              float(dcfg.min_duration_s), float(dcfg.max_duration_s), self.skips)
        max_rows = 2048  # CSM's position window (the tiny config's too)
        items = []
        for row, codes in encoded:
            ids = text_ids(tokenizer, row.text, row.speaker)
            if len(ids) + len(codes) + 1 > max_rows:
                self.skips.add(row.id, "too long", f"{len(ids)} text + {len(codes)} audio rows > {max_rows}")
                continue
            items.append({"text_ids": ids, "codes": codes})
        return self.split(items, float(dcfg.val_fraction), int(dcfg.seed))

    def collate(self, items: list[dict]) -> dict:
        return collate(items)

    def batch_size(self, batch: dict) -> int:
        return int(batch["text"].shape[0])

    def loss(self, model: Any, batch: dict, train: bool):
        out = csm_loss(model, batch, float(self.cfg.task.amortise) if train else 1.0)
        return out.loss, {"backbone_loss": out.backbone_loss.detach(), "depth_loss": out.depth_decoder_loss.detach()}

    def export(self, model: Any, state_dict: dict, out_dir: Path, config: dict) -> dict[str, Any]:
        return {"adapter": str(save_adapter(model, state_dict, out_dir / "adapter", config))}


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def encode_rows(rows: list, make_mimi, tag: str, cache_root: Path, device: str, min_s: float, max_s: float,
                skips) -> list:
    """-> [(row, codes (frames, 32) as lists)] for the usable rows. Mimi runs once per distinct set of files: the
    codes are a ``datasets`` table on disk keyed by the files' content hashes, the codec and the duration limits."""
    import datasets

    keys = [row.key() for row in rows]
    built: list = []

    def mimi():  # built only when the cache misses
        if not built:
            built.append(make_mimi())
        return built[0]

    digest = hashlib.sha1("|".join([tag, f"{min_s}:{max_s}", *keys]).encode()).hexdigest()[:20]
    path = cache_root / f"mimi-codes-{digest}.arrow"
    if not path.is_file():
        log.info("encoding %d clips with Mimi (cached in %s)", len(rows), path)

    def encode(example: dict) -> dict:
        from fern.errors import AudioInputError

        row = rows[example["index"]]
        try:
            wav = row.load(SAMPLE_RATE)
        except AudioInputError as exc:
            return {"codes": [], "error": "unreadable audio", "detail": str(exc)[:200]}
        seconds = len(wav) / SAMPLE_RATE
        if seconds < min_s:
            return {"codes": [], "error": "too short", "detail": f"{seconds:.2f} s < data.min_duration_s={min_s}"}
        if seconds > max_s:
            return {"codes": [], "error": "too long", "detail": f"{seconds:.2f} s > data.max_duration_s={max_s}"}
        return {"codes": mimi_encode(mimi(), wav, device), "error": "", "detail": ""}

    table = datasets.Dataset.from_dict({"index": list(range(len(rows))), "key": keys})
    features = datasets.Features({"index": datasets.Value("int64"), "key": datasets.Value("string"),
                                  "codes": datasets.Sequence(datasets.Sequence(datasets.Value("int16"))),
                                  "error": datasets.Value("string"), "detail": datasets.Value("string")})
    table = table.map(encode, cache_file_name=str(path), new_fingerprint=digest, load_from_cache_file=True,
                      features=features, desc="Mimi encode")
    out = []
    for ex in table:
        row = rows[ex["index"]]
        if ex["error"]:
            skips.add(row.id, ex["error"], ex["detail"])
        else:
            out.append((row, ex["codes"]))
    return out


def mimi_encode(mimi, wav, device: str) -> list:
    """24 kHz float mono -> (frames, num_codebooks) Mimi codes."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)[None, None]
    with torch.no_grad():
        return mimi.encode(x)[0].T.cpu().tolist()
