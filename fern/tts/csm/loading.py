"""Loading CSM (transformers), Mimi (moshi) and LoRA adapters (peft), with errors a user can act on."""

from __future__ import annotations

import logging
from pathlib import Path

from fern.errors import ConfigValueError, MissingWeightsError

log = logging.getLogger(__name__)


def resolve_dtype(dtype: str, device: str, half: bool = True):
    from fern.devices import resolve_torch_dtype

    return resolve_torch_dtype(dtype, device, "tts.dtype", half=half)


def hub_cache(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _missing(repo: str, cache_dir: str | None, exc: Exception) -> MissingWeightsError:
    return MissingWeightsError(
        f"weights for '{repo}' are not in the offline cache {hub_cache(cache_dir)} and could not be downloaded "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Fetch them once with network "
        f"access (`huggingface-cli download {repo}`; sesame/csm-1b is gated: accept its licence and log in), set "
        f"HF_HOME to a cache that holds them, or point the config at a local directory."
    )


def random_csm(device: str, dtype, config=None):
    """The full CSM-1B architecture with random weights. BENCHMARKING ONLY: the audio it makes is noise."""
    import torch
    from transformers import CsmConfig, CsmForConditionalGeneration

    log.warning("tts.random_weights=true: CSM-1B architecture with RANDOM weights, for benchmarking only")
    with torch.device(device):
        model = CsmForConditionalGeneration(config or CsmConfig())
    return model.to(dtype=dtype).eval()


def load_csm(repo: str, device: str, dtype: str, *, cache_dir=None, local_files_only=False, random_weights=False,
             half: bool = True):
    """-> (CsmForConditionalGeneration on ``device``, tokenizer). ``half``: what ``dtype=auto`` means on a GPU."""
    import torch  # noqa: F401
    from transformers import AutoTokenizer, CsmForConditionalGeneration

    torch_dtype = resolve_dtype(dtype, device, half)
    if random_weights:
        from fern.tts.csm.tokenizer import ByteTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # noqa: BLE001 - benchmarking without the real files: bytes are enough
            tokenizer = ByteTokenizer()
        return random_csm(device, torch_dtype), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=cache_dir, local_files_only=local_files_only)
        model = CsmForConditionalGeneration.from_pretrained(
            repo, dtype=torch_dtype, cache_dir=cache_dir, local_files_only=local_files_only
        )
    except (OSError, ValueError) as exc:  # offline / not cached / gated: transformers raises OSError
        raise _missing(repo, cache_dir, exc) from exc
    # the transformers codec (an HF Mimi) is unused: we decode and encode with moshi's Mimi
    model.codec_model = None
    return model.to(device).eval(), tokenizer


def build_mimi(device: str = "cpu", config: dict | None = None, weights: str | None = None, num_codebooks: int = 32):
    from moshi.models import loaders

    return loaders.get_mimi(weights, config, device=device, num_codebooks=num_codebooks)


def load_mimi(repo: str, weights: str | None, device: str, *, cache_dir=None, local_files_only=False,
              random_weights=False):
    from moshi.models import loaders

    if random_weights:
        return build_mimi(device)
    if weights is None:
        try:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(repo, loaders.MIMI_NAME, cache_dir=cache_dir, local_files_only=local_files_only)
        except Exception as exc:  # noqa: BLE001 - hub errors have many types (offline, gated, not found)
            raise _missing(repo, cache_dir, exc) from exc
    elif not Path(weights).is_file():
        raise ConfigValueError(f"tts.mimi_weights={weights} does not exist")
    return build_mimi(device, weights=str(weights))


def apply_lora(model, path: str, merge: bool = True):
    """Load a peft adapter saved from a CsmForConditionalGeneration (e.g. by train.py) onto ``model``."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ConfigValueError(f"tts.lora={path} is not a peft adapter directory (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model, path)
    if merge:
        return peft_model.merge_and_unload().eval()  # merged: no extra kernels per step
    return peft_model.base_model.model.eval()  # LoRA layers stay in the modules our loop calls
