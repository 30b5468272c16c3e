"""LLM LoRA on chat JSONL (persona / style): loss on the assistant tokens only; the adapter loads in the local LLM
presets with ``llm.lora=<out_dir>/adapter`` (merged at load, so the decode loop is unchanged).

Assistant spans come from the model's own chat template: the tokens of ``messages[:i]`` + generation prompt are a
prefix of ``messages[:i+1]``, and what lies between is assistant i's reply (with its end-of-turn token, so the model
also learns to stop). A template that is not prefix-consistent skips the row, with that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fern.train.task import LoraSettings, Task, apply_lora, save_adapter


@dataclass
class LlmLoraTaskConfig:
    kind: str = "llm_lora"
    base_model: str = "${fern.models:smollm2}"  # default of model.name: the offline SmolLM2-135M (GGUF)
    base_gguf_file: Optional[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"
    # prepended to conversations that have none; match run.py's dialogue.system_prompt to train what it will see
    system_prompt: Optional[str] = None
    attn_implementation: str = "sdpa"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32))


SCHEMAS: dict[str, dict[str, type]] = {"task": {"llm_lora": LlmLoraTaskConfig}}


def _ids(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if hasattr(ids, "keys") and "input_ids" in ids:
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def encode_chat(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int]] | str:
    """-> (input ids, labels with -100 outside assistant replies), or the reason the row cannot be used."""
    ids = _ids(tokenizer, messages, False)
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _ids(tokenizer, messages[:i], True) if i else []
        upto = _ids(tokenizer, messages[: i + 1], False)
        if ids[: len(upto)] != upto or upto[: len(before)] != before:
            return "chat template is not prefix-consistent"
        labels[len(before):len(upto)] = ids[len(before):len(upto)]
    if all(x == -100 for x in labels):
        return "no assistant tokens"
    return ids, labels


def tiny_tokenizer(rows: list[dict]):
    """model.size=tiny: fern.llm.testing's word-level tokenizer over the words of the data (and 64 fillers)."""
    from fern.llm.testing import word_tokenizer

    words = sorted({w for r in rows for m in r["messages"] for w in re.findall(r"\w+|[^\w\s]", m["content"])})
    return word_tokenizer(n_words=64, extra_words=tuple(words))


def tiny_model(tokenizer: Any, seed: int = 0):
    from fern.llm.testing import random_llama

    return random_llama("tiny", vocab_size=len(tokenizer), seed=seed)


class LlmLoraTask(Task):
    def read(self) -> None:
        from fern.train.data import read_chat_rows

        self.rows, self.skips = read_chat_rows(self.cfg.data)

    def _load(self) -> None:
        mcfg = self.cfg.model
        if mcfg.size == "tiny":
            self.tokenizer = tiny_tokenizer(self.rows)
            self.model = tiny_model(self.tokenizer, int(self.cfg.seed))
            return
        from fern.llm.hf import _load_model_and_tokenizer

        self.model, self.tokenizer = _load_model_and_tokenizer(
            str(mcfg.name), mcfg.gguf_file, self.model_dtype(), self.cfg.task.attn_implementation)

    def prepare(self) -> tuple[list, list]:
        self._load()
        system = self.cfg.task.system_prompt
        items = []
        for row in self.rows:
            messages = row["messages"]
            if system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": str(system)}] + messages
            enc = encode_chat(self.tokenizer, messages)
            if isinstance(enc, str):
                self.skips.add(row["id"], enc)
            elif len(enc[0]) > int(self.cfg.data.max_tokens):
                self.skips.add(row["id"], "too long", f"{len(enc[0])} tokens > data.max_tokens")
            else:
                items.append({"input_ids": enc[0], "labels": enc[1]})
        return self.split(items, float(self.cfg.data.val_fraction), int(self.cfg.data.seed))

    def build_model(self) -> Any:
        model = self.model
        model.config.use_cache = False
        return apply_lora(model, self.cfg.task.lora)

    def collate(self, items: list[dict]) -> dict:
        import torch

        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        n = max(len(i["input_ids"]) for i in items)
        ids = torch.full((len(items), n), int(pad), dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, item in enumerate(items):
            k = len(item["input_ids"])
            ids[b, :k] = torch.tensor(item["input_ids"])
            labels[b, :k] = torch.tensor(item["labels"])
            mask[b, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def loss(self, model: Any, batch: dict, train: bool):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, {}

    def export(self, model: Any, state_dict: dict, out_dir: Path, config: dict) -> dict[str, Any]:
        path = save_adapter(model, state_dict, out_dir / "adapter", config)
        return {"adapter": str(path)}
