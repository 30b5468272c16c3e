"""A byte-level text tokenizer: for the tiny random-weight test models and the random-weight benchmark only.

The real model uses its own Llama-3 tokenizer from the ``sesame/csm-1b`` files.
"""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes shifted by 3; 0 = pad, 1 = begin of text, 2 = end of text. Needs a text vocab of >= 259."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")
