"""The CSM LoRA step's maths, free of the training plumbing (no Hydra/OmegaConf: the GPU benchmark imports it):
batch layout, transformers' CSM loss with the depth decoder on an amortised share of frames, and the tiny random
models of the tests and smoke runs. See fern.train.csm for the layout and how frames leave the depth loss.
"""

from __future__ import annotations

import math
from typing import Any

# backbone and depth-decoder attention + MLP projections; not Mimi (codec_model), not the heads or embeddings
CSM_LORA_TARGETS = (r".*(backbone_model|depth_decoder\.model)\.layers\.\d+\."
                    r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")


def text_ids(tokenizer: Any, text: str, speaker: int) -> list[int]:
    """The text row of one utterance, as CsmSynthesizer._ids builds it at inference."""
    ids = list(tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False))
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    return ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])


def tiny_model(seed: int = 0):
    """Tiny random CSM (fern.tts.csm.tiny's shapes) with weights large enough for a LoRA to move its outputs: at the
    default 0.02 init the frozen heads cap every logit near +-1, so no adapter can fit anything."""
    import torch
    from transformers import CsmForConditionalGeneration

    from fern.tts.csm.tiny import tiny_csm_config

    config = tiny_csm_config()
    config.initializer_range = 0.2
    config.depth_decoder_config.initializer_range = 0.2
    torch.manual_seed(seed)
    return CsmForConditionalGeneration(config).eval()


def tiny_mimi(seed: int = 0, device: str = "cpu"):
    """fern.tts.csm.tiny's Mimi with random codebooks: moshi starts its codebooks at zero (they are learnt by EMA),
    so an untrained Mimi maps every frame to code 0 in all 32 codebooks, i.e. to CSM's EOS frame. The scale (0.01)
    matches the tiny encoder's latents (std ~0.03), so frames get different codes."""
    import torch
    from moshi.quantization.core_vq import EuclideanCodebook

    from fern.tts.csm.tiny import make_tiny_mimi

    mimi = make_tiny_mimi(seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed)
    for m in mimi.modules():
        if isinstance(m, EuclideanCodebook):
            m.embedding_sum.copy_(torch.randn(m.embedding_sum.shape, generator=gen).to(m.embedding_sum) * 0.01)
            m.cluster_usage.fill_(1.0)
            m._initialized.fill_(1.0)
            m._cached_initialized = False
            m.register_buffer("_embedding", None, persistent=False)
    return mimi


def select_depth_frames(labels, share: float, generator=None):
    """Labels with codebooks 1..31 set to -100 on all but ``ceil(share * frames)`` random labelled frames."""
    import torch

    if share >= 1:
        return labels
    frames = (labels[..., 0] != -100).nonzero(as_tuple=False)  # (n, 2): batch, row
    k = max(1, math.ceil(share * frames.shape[0]))
    keep = frames[torch.randperm(frames.shape[0], generator=generator, device="cpu")[:k].to(frames.device)]
    out = labels.clone()
    drop = torch.ones(labels.shape[:2], dtype=torch.bool, device=labels.device)
    drop[keep[:, 0], keep[:, 1]] = False
    out[..., 1:][drop] = -100
    return out


def embed(model, batch):
    """Backbone input rows: text embeddings on text rows, summed codebook embeddings on audio rows."""
    import torch

    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = m.embed_text_tokens(batch["text"])
    audio = m.backbone_model.embed_tokens(batch["audio"])
    return torch.where(batch["is_audio"][..., None], audio, text)


def csm_loss(model, batch, amortise: float = 1.0, generator=None):
    """-> transformers' CsmOutputWithPast (loss = backbone_loss + depth_decoder_loss) on a collated batch."""
    labels = select_depth_frames(batch["labels"], amortise, generator)
    return model(inputs_embeds=embed(model, batch), attention_mask=batch["attention_mask"], labels=labels)


def collate(items: list[dict]) -> dict:
    import torch

    lengths = [len(i["text_ids"]) + len(i["codes"]) + 1 for i in items]
    n_cb = len(items[0]["codes"][0])
    b, t = len(items), max(lengths)
    text = torch.zeros(b, t, dtype=torch.long)
    audio = torch.zeros(b, t, n_cb, dtype=torch.long)
    is_audio = torch.zeros(b, t, dtype=torch.bool)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t, n_cb), -100, dtype=torch.long)
    for j, item in enumerate(items):
        nt, nf = len(item["text_ids"]), len(item["codes"])
        text[j, :nt] = torch.tensor(item["text_ids"])
        audio[j, nt:nt + nf] = torch.as_tensor(item["codes"], dtype=torch.long)  # then the all-zero EOS frame
        is_audio[j, nt:nt + nf + 1] = True
        labels[j, nt:nt + nf + 1] = audio[j, nt:nt + nf + 1]
        mask[j, :lengths[j]] = 1
    return {"text": text, "audio": audio, "is_audio": is_audio, "attention_mask": mask, "labels": labels}
