"""Whisper fine-tune on the tiny random Whisper (tiny.en's tokenizer, CPU): overfit four espeak-ng clips, WER on the
validation split, export to CTranslate2 int8 + float16, and transcription of the export through faster-whisper."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import TEXTS, mlflow_run, train_run

from fern.quality import normalise

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


@pytest.fixture(scope="module")
def whisper_run(tmp_path_factory, wav_txt_dir):
    root = tmp_path_factory.mktemp("whisper")
    return train_run(root, "run", ["task=whisper", "data=wav_txt", f"data.path={wav_txt_dir}", "model.size=tiny",
                                   "trainer.max_steps=30", "trainer.batch_size=4", "trainer.lr=1e-2",
                                   "trainer.warmup_steps=2", "task.max_new_tokens=12"]), root


def test_whisper_overfits_and_reports_validation_wer(whisper_run):
    summary, root = whisper_run
    assert summary["last_loss"] <= 0.5 * summary["first_loss"], summary
    assert 0 <= summary["val_wer"] < 1.0, summary  # words of the clips come back (random weights: ~1.0)
    metrics = mlflow_run(root / "mlflow.db", summary["mlflow_run_id"]).data.metrics
    assert metrics["val/wer"] == pytest.approx(summary["val_wer"])
    assert summary["skipped_rows"]["count"] == 3


@pytest.mark.parametrize("quant", ["int8", "float16"])
def test_ctranslate2_export_transcribes_through_faster_whisper(whisper_run, wav_txt_dir, quant):
    from fern.asr.faster_whisper import FasterWhisperRecognizer
    from fern.train.data import AudioRow

    summary, _ = whisper_run
    export = Path(summary["exports"][quant])
    assert (export / "model.bin").is_file() and summary["export"] == summary["exports"]["int8"]
    asr = FasterWhisperRecognizer(model=str(export), device="cpu", compute_type=quant)  # float16 -> float32 on a CPU
    vocabulary = {w for t in TEXTS for w in normalise(t).split()}
    heard = [asr.transcribe(AudioRow(str(i), "", path=str(wav_txt_dir / f"clip{i}.wav")).load(16000))
             for i in range(len(TEXTS))]
    words = [w for text in heard for w in normalise(text).split()]
    assert words and set(words) <= vocabulary, heard  # text, and only words it was trained on
