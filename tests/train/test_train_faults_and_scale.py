"""train.py as a user runs it: presets compose, bad sources fail before any model loads with one line and exit 2,
readers count bad rows, a local HF dataset maps its columns, and 2-process CPU DDP completes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fern.errors import ConfigValueError
from fern.paths import CONF_DIR, PROJECT_ROOT

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


@pytest.mark.parametrize("group,preset", [(g, p.stem) for g in ("task", "data", "trainer")
                                          for p in sorted((CONF_DIR / g).glob("*.yaml"))])
def test_every_train_preset_composes(train_compose, group, preset):
    from omegaconf import OmegaConf

    cfg = train_compose([f"{group}={preset}", "data.path=/somewhere"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "task" or (group == "data" and preset != "elise"):
        assert cfg[group].kind == preset
    if group == "data" and preset == "elise":
        assert cfg.data.kind == "hf"


def test_model_defaults_follow_the_task(train_compose):
    assert train_compose(["task=whisper"]).model.name == "openai/whisper-tiny.en"
    llm = train_compose(["task=llm_lora", "data=chat_jsonl", "data.path=x.jsonl"])
    assert llm.model.name.endswith("models/smollm2") and llm.model.gguf_file.endswith(".gguf")
    assert train_compose(["model.name=my/csm"]).model.name == "my/csm"


def test_fsdp_preset_builds_a_lightning_fsdp_strategy(train_compose):
    from lightning.pytorch.strategies import FSDPStrategy

    from fern.llm.testing import random_llama
    from fern.train.llm import LlmLoraTask

    cfg = train_compose(["trainer=fsdp", "task=llm_lora", "data=chat_jsonl", "data.path=x"])
    assert cfg.trainer.strategy == "fsdp"
    layers = LlmLoraTask(cfg).layer_classes(random_llama("tiny"))
    assert {c.__name__ for c in layers} == {"LlamaDecoderLayer"}
    FSDPStrategy(auto_wrap_policy=layers, use_orig_params=True, state_dict_type="full")


def test_missing_folder_fails_before_anything_loads(run_train, tmp_path):
    with pytest.raises(ConfigValueError, match="is not a folder"):
        run_train(["task=csm_lora", "data=wav_txt", f"data.path={tmp_path / 'nope'}", "model.size=tiny"])
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "mlflow.db").exists()


def test_ljspeech_reader_counts_bad_lines(tmp_path, wav_txt_dir):
    from omegaconf import OmegaConf

    from fern.train.data import LJSpeechDataConfig, read_audio_rows

    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "a.wav").write_bytes((wav_txt_dir / "clip0.wav").read_bytes())
    (tmp_path / "metadata.csv").write_text("a|Hello there.|Hello there.\nb|No file.|No file.\nbroken line\nc||\n")
    cfg = OmegaConf.structured(LJSpeechDataConfig(path=str(tmp_path)))
    rows, skips = read_audio_rows(cfg)
    assert [(r.id, r.text) for r in rows] == [("a", "Hello there.")]
    assert skips.summary()["by_reason"] == {"missing audio file": 1, "malformed metadata line": 1, "empty text": 1}


def test_hf_dataset_columns_are_config(tmp_path, wav_txt_dir):
    import datasets
    from omegaconf import OmegaConf

    from fern.train.data import HFDataConfig, read_audio_rows

    audio = [{"bytes": (wav_txt_dir / f"clip{i}.wav").read_bytes(), "path": None} for i in range(2)]
    ds = datasets.Dataset.from_dict({"speech": audio, "transcript": ["Hello there.", ""], "spk": [3, 4]})
    ds.cast_column("speech", datasets.Audio()).save_to_disk(str(tmp_path / "ds"))
    cfg = OmegaConf.structured(HFDataConfig(path=str(tmp_path / "ds"), audio_column="speech",
                                            text_column="transcript", speaker_column="spk"))
    rows, skips = read_audio_rows(cfg)
    assert [(r.text, r.speaker) for r in rows] == [("Hello there.", 3)] and len(skips) == 1
    assert rows[0].load(24000).size > 10000  # decoded from the stored bytes
    cfg.text_column = "text"
    with pytest.raises(ConfigValueError, match="has no column"):
        read_audio_rows(cfg)


def _train_py(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env_args = [f"out_dir={tmp_path / 'out'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "trainer.progress_bar=false"]
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), *args, *env_args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def test_unknown_dataset_id_is_one_line_and_exit_2_before_anything_loads(tmp_path):
    t0 = time.perf_counter()
    proc = _train_py(["task=csm_lora", "data=hf", "data.path=nobody-fern/no-such-dataset"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fern: error:")]
    assert len(lines) == 1 and "nobody-fern/no-such-dataset" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # failed before MLflow opened, so before any model
    assert time.perf_counter() - t0 < 120


def test_nothing_usable_left_is_an_error_that_counts_the_reasons(run_train, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(ConfigValueError, match=r"no usable chat_jsonl rows left \(2 skipped: 1 no messages list, 1 "
                                               r"invalid JSON\)"):
        run_train(["task=llm_lora", "data=chat_jsonl", f"data.path={bad}", "model.size=tiny"])


def test_ddp_with_two_cpu_processes_completes(tmp_path, chat_file):
    t0 = time.perf_counter()
    proc = _train_py(["task=llm_lora", "data=chat_jsonl", f"data.path={chat_file}", "model.size=tiny",
                      "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
                      "trainer.batch_size=2", "data.val_fraction=0"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4, summary
    assert Path(summary["adapter"], "adapter_model.safetensors").is_file()
    assert time.perf_counter() - t0 < 600
