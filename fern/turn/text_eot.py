"""P(end of turn | the words so far) from a causal chat LM, with no training.

The user's words are put in the model's chat template as a user message, and the message is left open: the
template's end-of-message marker (``<|im_end|>`` for ChatML models such as SmolLM2) is cut off. The model's next-token
probability of that marker is how likely it thinks the user's message is already over. This is the idea behind
LiveKit's turn detector (a SmolLM fine-tuned for exactly this); here the instruct model is used as it is, so any
causal LM id or local dir works (``model``/``gguf_file`` as for ``llm=hf``).

``normalize`` lower-cases the text and drops punctuation (keeping apostrophes and hyphens), as LiveKit does: the ASR
adds a full stop to fragments too, and the marker's probability should come from the words.
The system prompt's keys/values are computed once and reused, so a call costs a forward pass over the user's words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from fern.errors import ConfigValueError

_SPLIT = "\x00FERN_USER_TEXT\x00"


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text.lower())
    text = "".join(ch for ch in text if ch in "'-" or not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


class TextEndOfTurnModel:
    def __init__(self, model: str, gguf_file: Optional[str] = None, end_token: str = "<|im_end|>",
                 normalize: bool = True, max_tokens: int = 96, threads: int = 0,
                 system_prompt: Optional[str] = None) -> None:
        if threads < 0:
            raise ConfigValueError(f"text end-of-turn model: threads={threads} must be >= 0 (0: leave torch's)")
        if max_tokens < 4:
            raise ConfigValueError(f"text end-of-turn model: max_tokens={max_tokens} must be >= 4")
        import torch

        from fern.llm.hf import _load_model_and_tokenizer

        if threads:  # process-wide in torch: it also applies to an LLM in the same process
            torch.set_num_threads(threads)
        lm, tokenizer = _load_model_and_tokenizer(model, gguf_file, torch.float32, None)
        self._setup(lm, tokenizer, model, end_token, normalize, max_tokens, system_prompt)

    @classmethod
    def from_loaded(cls, lm, tokenizer, end_token: str = "<|im_end|>", normalize: bool = True, max_tokens: int = 96,
                    system_prompt: Optional[str] = None) -> "TextEndOfTurnModel":
        """Share an already loaded causal LM (e.g. the reply LLM's weights) instead of loading a second copy."""
        self = cls.__new__(cls)
        self._setup(lm, tokenizer, getattr(lm, "name_or_path", "the model"), end_token, normalize, max_tokens,
                    system_prompt)
        return self

    def _setup(self, lm, tokenizer, name: str, end_token: str, normalize: bool, max_tokens: int,
               system_prompt: Optional[str]) -> None:
        import torch

        if max_tokens < 4:
            raise ConfigValueError(f"text end-of-turn model: max_tokens={max_tokens} must be >= 4")
        self._torch = torch
        self.model, self.tokenizer = lm.eval(), tokenizer
        ids = tokenizer.convert_tokens_to_ids(end_token)
        if ids is None or ids == tokenizer.unk_token_id:
            raise ConfigValueError(f"text end-of-turn model: end_token={end_token!r} is not a token of {name}")
        self.end_id = int(ids)
        self.normalize = normalize
        self.max_tokens = max_tokens
        messages = [{"role": "user", "content": _SPLIT}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        except Exception as exc:  # no chat template: a plain causal LM
            raise ConfigValueError(f"text end-of-turn model {name} has no usable chat template ({exc})") from exc
        prefix, _, suffix = rendered.partition(_SPLIT)
        if not suffix.lstrip().startswith(end_token):
            raise ConfigValueError(f"text end-of-turn model: {name}'s chat template does not close a user message "
                                   f"with {end_token!r}; set end_token")
        self._prefix_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            self._prefix_cache = lm(self._prefix_ids, use_cache=True).past_key_values

    def probability(self, text: str) -> float:
        """P(the end-of-message token follows ``text`` as the user's message)."""
        torch = self._torch
        text = normalize_text(text) if self.normalize else text.strip()
        if not text:
            return 0.0  # nothing said yet: not a finished message
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, -self.max_tokens:]
        n_prefix = self._prefix_ids.shape[1]
        with torch.inference_mode():
            try:
                out = self.model(ids, past_key_values=self._prefix_cache, use_cache=True,
                                 position_ids=torch.arange(n_prefix, n_prefix + ids.shape[1])[None],
                                 attention_mask=torch.ones(1, n_prefix + ids.shape[1], dtype=torch.long),
                                 logits_to_keep=1)
            finally:
                self._prefix_cache.crop(n_prefix)  # the pass appended the words' keys/values: drop them
            probs = torch.softmax(out.logits[0, -1].float(), dim=-1)
        return float(probs[self.end_id])


@dataclass
class TextEndOfTurnConfig:
    _target_: str = "fern.turn.text_eot.TextEndOfTurnModel"
    model: str = "${fern.models:smollm2}"  # any causal chat LM: hub id or local dir
    gguf_file: Optional[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"
    end_token: str = "<|im_end|>"
    normalize: bool = True
    max_tokens: int = 96  # only the last max_tokens of the words are scored
    threads: int = 0  # torch intra-op threads (process-wide!); 0: leave as is
    system_prompt: Optional[str] = None  # null: the template's default
