from __future__ import annotations

from pathlib import Path

import pytest

from fern.paths import models_dir

SMOL_DIR = models_dir() / "smollm2"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2():
    """The real offline SmolLM2-135M (GGUF), loaded once per session."""
    if not (Path(SMOL_DIR) / SMOL_GGUF).is_file():
        pytest.fail(f"{SMOL_DIR / SMOL_GGUF} missing: run `bash scripts/setup.sh`")
    from fern.llm.hf import HFCausalLM

    return HFCausalLM(model=str(SMOL_DIR), gguf_file=SMOL_GGUF, device="cpu", dtype="float32", max_new_tokens=48)
