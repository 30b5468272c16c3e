"""Local LLM through transformers with our own decode loop.

Why not ``model.generate``: we want (1) the KV cache of the system prompt and history kept across turns, so that a new
turn only prefills the tokens that changed (time to first token does not grow with the conversation), (2) a cancel
check between tokens (barge-in), and (3) on GPU a static cache with a compiled one-token decode step.

Prefix reuse: after each call we remember which token ids have their keys/values in the cache (prompt + generated
tokens that were fed back). The next prompt is compared with them; the longest common prefix is kept (a DynamicCache is
cropped to it, a StaticCache simply overwrites the positions after it, which the causal mask hides) and only the rest is
prefilled. Dropping the oldest turns from the history changes the prefix right after the system prompt, so then only
the system prompt is reused; the history window bounds the prompt length anyway.
"""

from __future__ import annotations

import inspect
import logging
import struct
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from fern.errors import ConfigValueError, MissingWeightsError
from fern.events import CancelToken, StreamInfo

log = logging.getLogger(__name__)


@dataclass
class HFCausalLMConfig:
    _target_: str = "fern.llm.hf.HFCausalLM"
    model: str = MISSING  # hub repo id or local dir
    gguf_file: Optional[str] = None  # load a GGUF file from ``model`` (dir) with transformers + gguf
    device: str = "${device}"
    dtype: str = "auto"  # auto (bf16 on a GPU when bf16, else float32) | float32 | bfloat16 | float16
    bf16: bool = "${optim.bf16}"  # type: ignore[assignment]
    attn_implementation: str = "${optim.attn_implementation}"
    max_new_tokens: int = 120
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    compile: bool = "${optim.compile}"  # type: ignore[assignment]
    static_cache: bool = "${optim.static_cache}"  # type: ignore[assignment]
    lora: Optional[str] = None  # a peft adapter dir (python train.py task=llm_lora), merged into the weights at load


SCHEMAS = {"llm": {"hf": HFCausalLMConfig}}


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _load_model_and_tokenizer(model: str, gguf_file: str | None, dtype, attn_implementation: str | None):
    """Load from a local dir / GGUF or the hub cache; turn every "not here" failure into MissingWeightsError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if gguf_file:
        path = Path(model) / gguf_file
        if not path.is_file():
            raise MissingWeightsError(
                f"GGUF file {path} is missing; run the set-up (`bash scripts/setup.sh`) to extract the offline models"
                " (or set FERN_MODELS_DIR to where they are)"
            )
        kwargs["gguf_file"] = gguf_file
    local = Path(model).is_dir()
    try:
        if gguf_file:
            converted = _converted_gguf(Path(model) / gguf_file)
            if converted is not None:
                model, kwargs = str(converted), {}
        tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        mkw = dict(kwargs)
        if attn_implementation:
            mkw["attn_implementation"] = attn_implementation
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **mkw)
    except (OSError, ValueError) as e:  # hub errors (gated, 404, offline) subclass OSError
        if isinstance(e, ValueError):
            msg = str(e).lower()
            if "attn" in msg or "attention" in msg or "flash" in msg:
                raise ConfigValueError(f"attn_implementation={attn_implementation!r} is not usable here: {e}") from e
            raise
        where = f"the local directory {model}" if local else f"the Hugging Face hub repo {model!r}"
        raise MissingWeightsError(
            f"could not load LLM weights from {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            + (
                "Check the path, or run `bash scripts/setup.sh`."
                if local or gguf_file
                else f"Pre-download them on a machine with internet: `hf download {model}` (gated repos: accept the "
                "licence on huggingface.co and `hf auth login` first), then run offline with HF_HUB_OFFLINE=1."
            )
        ) from e
    return lm, tokenizer


def _converted_gguf(path: Path) -> Path | None:
    """A transformers copy of the GGUF file ``path`` (safetensors + tokenizer files), made on first use beside it.

    transformers rebuilds model and tokenizer from a GGUF file on every load (~18 s for SmolLM2-135M on 2 cores:
    parsing, de-quantizing, converting the vocabulary); from the copy it takes ~0.2 s. The copy holds the
    de-quantized weights in float32, exactly what a GGUF load produces, so loading it in any dtype gives that load's
    tensors. Its name carries the file's size and mtime and the transformers version, so a replaced file or another
    converter makes a new copy. Several processes may convert at once (a parallel sweep): each writes its own temporary
    directory and renames it into place; the first rename wins. None (load the GGUF itself) when the directory is
    not writable."""
    import transformers

    st = path.stat()
    target = path.parent / ".converted" / f"{path.stem}-{st.st_size}-{st.st_mtime_ns}-tf{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    import os
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s for transformers, once (%s)", path.name, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        log.warning("cannot keep a converted copy of %s (%s): loading the GGUF file itself", path, e)
        return None
    try:
        import torch

        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                      **_dense_gguf())
        except (ValueError, KeyError, IndexError, EOFError, struct.error) as e:  # a truncated or foreign file
            raise MissingWeightsError(
                f"GGUF file {path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): it is "
                "truncated or not a causal LM in GGUF format (the offline model: delete it and run "
                "`bash scripts/setup.sh` again)") from e
        _forget_gguf_quantizer(lm)
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the copy from the file's other users
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not another process's copy that got there first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dense_gguf() -> dict:
    """from_pretrained arguments that unpack a GGUF file's weights into a dense model. transformers 5 may otherwise
    keep them in GGUF blocks (GgufConfig, a quantizer); 4.x always unpacks and has no such option."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_gguf_quantizer(lm: Any) -> None:
    """transformers 5 marks a model loaded from GGUF as quantized even when its weights were unpacked (see
    _dense_gguf), and then refuses to save it. Ours is an ordinary dense model: drop the mark, so the copy saves and
    its config loads without the GGUF file."""
    if getattr(lm, "hf_quantizer", None) is None:
        return
    if not getattr(lm.hf_quantizer.quantization_config, "dequantize", True):
        raise RuntimeError("the GGUF weights were kept packed; expected them unpacked (GgufConfig(dequantize=True))")
    lm.hf_quantizer = None
    for config in (lm.config, lm.config.get_text_config()):
        if getattr(config, "quantization_config", None) is not None:
            del config.quantization_config


def _apply_lora(model: Any, path: str) -> Any:
    """Merge a peft adapter (e.g. train.py task=llm_lora's) into the weights: the decode loop below is unchanged."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigValueError(f"llm.lora={path} is not a peft adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(model, path).merge_and_unload()


class IncrementalDecoder:
    """Token ids in, new text out. Decoding the ids one by one is wrong for byte-level BPE (a multi-byte character is
    split over tokens) and for SentencePiece (a leading space belongs to the next word), so we decode the whole reply
    and emit what is new, holding back while the text ends in an incomplete UTF-8 sequence (U+FFFD)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") or len(text) <= len(self.text):
            return ""
        piece = text[len(self.text):] if text.startswith(self.text) else text[_common_prefix_len(text, self.text):]
        self.text = text
        return piece


class HFCausalLM:
    """A transformers causal LM behind the LanguageModel protocol (see module docstring)."""

    def __init__(
        self,
        model: str,
        gguf_file: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        bf16: bool = True,
        attn_implementation: str | None = "eager",
        max_new_tokens: int = HFCausalLMConfig.max_new_tokens,
        temperature: float = HFCausalLMConfig.temperature,
        top_p: float = HFCausalLMConfig.top_p,
        top_k: int = HFCausalLMConfig.top_k,
        compile: bool = False,
        static_cache: bool = False,
        lora: str | None = None,
        *,
        max_cache_len: int = 4096,
        ignore_eos: bool = False,
        _model: Any = None,
        _tokenizer: Any = None,
    ) -> None:
        import torch

        from fern.devices import resolve_torch_device, resolve_torch_dtype

        if max_new_tokens < 1:
            raise ConfigValueError(f"llm.max_new_tokens must be >= 1, got {max_new_tokens}")
        self.device = resolve_torch_device(device)
        self.dtype = resolve_torch_dtype(dtype, self.device, "llm.dtype", half=bf16)
        if _model is not None:  # built in code (benchmarks, tests with random weights)
            self.model, self.tokenizer = _model, _tokenizer
            self.name = f"hf:{getattr(_model.config, 'model_type', 'model')}-random"
        else:
            self.model, self.tokenizer = _load_model_and_tokenizer(model, gguf_file, self.dtype, attn_implementation)
            name = Path(model).name if Path(model).is_dir() else model
            self.name = f"hf:{name}" + (f"/{gguf_file}" if gguf_file else "")
        if lora:
            self.model = _apply_lora(self.model, lora)
            self.name += f"+lora:{Path(lora).name}"
        self.model.to(self.device).eval()
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.ignore_eos = ignore_eos
        self.static_cache = bool(static_cache)
        self.compile = bool(compile)
        if self.compile and not self.static_cache:
            # A dynamic cache changes shape every token: the compiled step would recompile until dynamo gives up.
            log.info("llm.compile=true implies a static KV cache; using static_cache=true")
            self.static_cache = True
        self.max_cache_len = int(max_cache_len)
        self._vocab_limit = len(self.tokenizer)
        self._eos_ids = self._stop_ids()
        self._cache = None
        self._cached_ids: list[int] = []
        self._decode_fn = None
        self._takes_cache_position = "cache_position" in inspect.signature(self.model.forward).parameters
        self.last_token_ids = []
        if self.compile:
            # Compile only the one-token decode step: fixed shapes, so one graph (and CUDA graphs with a static cache).
            mode = "reduce-overhead" if (self.device.startswith("cuda") and self.static_cache) else None
            self._decode_fn = torch.compile(self.model.forward, mode=mode, dynamic=False)

    def __repr__(self) -> str:
        return (f"HFCausalLM({self.name!r}, device={self.device!r}, static_cache={self.static_cache}, "
                f"compile={self.compile})")

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        if not ids and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        # Chat models often end turns with a dedicated token the generation config may not list.
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok) if tok in self.tokenizer.get_vocab() else None
            if isinstance(tid, int):
                ids.add(tid)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_messages(self, messages: Sequence[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys") and "input_ids" in ids:  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def reset_cache(self) -> None:
        """Forget the cached prefix (the next call prefills everything). Benchmarks use it for cold figures."""
        self._cached_ids = []
        if self._cache is not None and not self.static_cache:
            self._cache = None

    def _new_cache(self):
        from transformers import DynamicCache, StaticCache

        if not self.static_cache:
            try:
                return DynamicCache(config=self.model.config)
            except TypeError:
                return DynamicCache()
        params = inspect.signature(StaticCache.__init__).parameters
        kw: dict[str, Any] = {"config": self.model.config, "max_cache_len": self.max_cache_len}
        for k, v in (("max_batch_size", 1), ("batch_size", 1), ("device", self.device), ("dtype", self.dtype)):
            if k in params:
                kw[k] = v
        return StaticCache(**kw)

    def _rewind_cache(self, keep: int) -> int:
        """Roll the cache back to its first ``keep`` positions (the prefix the new prompt shares with it); returns
        how many it kept (0 where it cannot rewind: the caller prefills the whole prompt).

        A dynamic cache, and the static layers of transformers versions that can crop them, drop the rest (a negative
        count removes tokens on 4.x and 5.x alike; 5.x rejects a positive length). Static layers that cannot crop
        but keep their own write position (``cumulative_length``, transformers 5.17) have it set back in place, so
        compiled graphs stay valid: the next tokens overwrite the stale ones, which the causal mask hides until then.
        A sliding-window layer that has rolled holds no prefix to keep. 4.x static caches write wherever
        ``cache_position`` says: nothing to rewind."""
        layers = getattr(self._cache, "layers", None) or [None]
        surplus = int(self._cache.get_seq_length()) - keep
        if surplus <= 0:
            return keep
        if not self.static_cache or getattr(layers[0], "is_croppable", False):
            self._cache.crop(-surplus)
            return keep
        if any(getattr(layer, "cumulative_length_int", 0) > getattr(layer, "max_cache_len", 0) for layer in layers):
            keep = 0
        for layer in layers:
            length = getattr(layer, "cumulative_length", None)
            if hasattr(length, "fill_"):
                length.fill_(keep)
            if hasattr(layer, "cumulative_length_int"):  # sliding-window static layers count in a Python int too
                layer.cumulative_length_int = keep
        return keep

    def _forward(self, ids, positions, *, decode: bool):
        import torch

        # inference_mode per call, not around the generator: a `with` held across `yield` would leak the mode into
        # the consumer's thread between tokens.
        with torch.inference_mode():
            return self._forward_inner(ids, positions, decode=decode)

    def _forward_inner(self, ids, positions, *, decode: bool):
        fn = self._decode_fn if (decode and self._decode_fn is not None) else self.model.forward
        if decode and self._decode_fn is not None and self.device.startswith("cuda"):
            import torch

            torch.compiler.cudagraph_mark_step_begin()
        kw: dict[str, Any] = {"position_ids": positions.unsqueeze(0)}
        if self._takes_cache_position:  # transformers 4.x; 5.x may derive it from the cache and position_ids
            kw["cache_position"] = positions
        out = fn(input_ids=ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1, **kw)
        return out.logits[:, -1, : self._vocab_limit].float()

    def _pick(self, logits):
        import torch

        if self.temperature <= 0:
            return int(torch.argmax(logits, dim=-1).item())
        logits = logits / self.temperature
        if self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            keep = torch.cumsum(sp, dim=-1) - sp < self.top_p
            sp = sp * keep
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return int(torch.multinomial(probs, 1).item())

    # ---- the LanguageModel protocol ----------------------------------------------------------------------------
    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Generator[str, None, StreamInfo]:
        import torch

        t0 = time.perf_counter()
        prompt = self.encode_messages(messages)
        info = StreamInfo(backend=self.name, prompt_tokens=len(prompt), reused_tokens=0)
        self.last_token_ids: list[int] = []
        if self.static_cache and len(prompt) + self.max_new_tokens > self.max_cache_len:
            raise ConfigValueError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens exceeds the static cache ({self.max_cache_len});"
                " lower dialogue.history_max_tokens"
            )
        keep = min(_common_prefix_len(prompt, self._cached_ids), len(prompt) - 1)
        if self._cache is None or (keep == 0 and not self.static_cache):
            self._cache = self._new_cache()
            keep = 0
        else:  # a static cache is kept, even for a new prompt: compiled decode steps hold its buffers
            keep = self._rewind_cache(keep)
        info.reused_tokens = keep
        self._cached_ids = prompt[:keep]  # if we are interrupted, only this much is known to be valid
        dev = self.device
        generated = self.last_token_ids
        decoder = IncrementalDecoder(self.tokenizer)
        t_first = None
        try:
            ids = torch.tensor([prompt[keep:]], device=dev)
            pos = torch.arange(keep, len(prompt), device=dev)
            logits = self._forward(ids, pos, decode=False)
            self._cached_ids = list(prompt)
            n_pos = len(prompt)
            while True:
                tok = self._pick(logits)
                if tok in self._eos_ids and not self.ignore_eos:
                    break
                generated.append(tok)
                if t_first is None:
                    t_first = time.perf_counter()
                    info.ttft_s = t_first - t0
                info.n_tokens = len(generated)
                piece = decoder.push(tok)
                if piece:
                    yield piece
                if cancel.cancelled:
                    info.cancelled = True
                    break
                if len(generated) >= self.max_new_tokens:
                    break
                if self.static_cache and n_pos >= self.max_cache_len:
                    break
                logits = self._forward(torch.tensor([[tok]], device=dev), torch.tensor([n_pos], device=dev),
                                       decode=True)
                self._cached_ids.append(tok)
                n_pos += 1
        except GeneratorExit:
            info.cancelled = True
            raise
        except Exception as e:
            info.error = f"{type(e).__name__}: {e}"
            self.reset_cache()
            self._cache = None
            raise
        finally:
            if t_first is not None:
                info.decode_s = time.perf_counter() - t_first
        return info
