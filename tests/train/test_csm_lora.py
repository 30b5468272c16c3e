"""CSM LoRA on the tiny random CSM + Mimi (CPU): the amortised loss against an independent full-loss computation,
an overfit run on four espeak-ng clips with bad rows mixed in, the adapter through CsmSynthesizer, MLflow, the cache."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import TEXTS, mlflow_artifacts, mlflow_history, mlflow_run, train_run

from fern.train.csm_loss import collate, csm_loss, embed, text_ids, tiny_mimi, tiny_model
from fern.tts.csm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = [{"text_ids": text_ids(ByteTokenizer(), t, 0),
              "codes": torch.randint(0, 2048, (n, 32), generator=g).tolist()}
             for t, n in (("Hello there.", 7), ("A longer line of text here.", 4))]
    return collate(items)


def _reference_loss(model, batch) -> torch.Tensor:
    """Backbone CE on codebook 0 of every audio row (predicted from the row before) + depth-decoder CE on codebooks
    1..31 of every audio row, one frame at a time: no label tricks, no transformers loss helpers."""
    h = model.backbone_model(inputs_embeds=embed(model, batch), attention_mask=batch["attention_mask"])[0]
    logits = model.lm_head(h)
    labels = batch["labels"]
    ce0, depth = [], []
    for b, t in (labels[..., 0] != -100).nonzero().tolist():
        ce0.append(torch.nn.functional.cross_entropy(logits[b, t - 1], labels[b, t, 0]))
        ids = torch.cat([torch.zeros(1, dtype=torch.long), labels[b, t, :31]])[None]
        out = model.depth_decoder(input_ids=ids, backbone_last_hidden_state=h[b, t - 1][None])
        depth.append(torch.nn.functional.cross_entropy(out.logits[0], labels[b, t, 1:], reduction="none"))
    return torch.stack(ce0).mean() + torch.cat(depth).mean()


def test_amortised_loss_with_amortise_1_is_the_full_loss():
    model, batch = tiny_model(3), _batch()
    with torch.no_grad():
        ours = csm_loss(model, batch, amortise=1.0).loss
        ref = _reference_loss(model, batch)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), (ours, ref)


@pytest.mark.parametrize("share", [1 / 16, 0.25, 1.0])
def test_depth_decoder_runs_on_the_amortised_share_of_frames(share):
    model, batch = tiny_model(3), _batch()
    frames = int((batch["labels"][..., 0] != -100).sum())  # 7 + 4 audio frames + 2 EOS frames
    seen = []
    hook = model.depth_decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                         with_kwargs=True)
    with torch.no_grad():
        out = csm_loss(model, batch, amortise=share)
    hook.remove()
    assert seen == [max(1, math.ceil(share * frames))]
    assert torch.isfinite(out.loss) and out.depth_decoder_loss > 0


def test_text_rows_are_the_synthesizers():
    from fern.tts.csm.synthesizer import CsmSynthesizer

    synth = CsmSynthesizer(_modules=(tiny_model(), ByteTokenizer(), tiny_mimi()), warmup=False, device="cpu")
    assert text_ids(ByteTokenizer(), "Hello there.", 1) == synth._ids("Hello there.", 1)


CSM_OVERRIDES = ["task=csm_lora", "data=wav_txt", "model.size=tiny", "trainer.max_steps=24", "trainer.batch_size=4",
                 "trainer.lr=8e-3", "trainer.warmup_steps=2", "trainer.checkpoint_every_n_steps=100"]


@pytest.fixture(scope="module")
def csm_run(tmp_path_factory, wav_txt_dir):
    root = tmp_path_factory.mktemp("csm")
    overrides = CSM_OVERRIDES + [f"data.path={wav_txt_dir}", f"data.cache_dir={root / 'cache'}"]
    return train_run(root, "run", overrides), root, overrides


def test_csm_lora_overfits_four_clips(csm_run):
    summary, _, _ = csm_run
    assert summary["steps"] == 24 and summary["train_rows"] == 4
    assert summary["last_loss"] <= 0.5 * summary["first_loss"], summary
    assert summary["val_loss"] <= 0.5 * summary["first_loss"], summary  # every frame, not the amortised share


def test_bad_rows_are_skipped_and_counted_with_reasons(csm_run):
    skipped = csm_run[0]["skipped_rows"]
    assert skipped["by_reason"] == {"missing audio file": 1, "unreadable audio": 1, "empty text": 1}, skipped
    assert {r["id"] for r in skipped["rows"]} == {"orphan", "empty", "blank"}


def test_adapter_loads_in_the_synthesizer_and_speaks_the_trained_codes(csm_run, wav_txt_dir):
    from fern.train.csm import mimi_encode
    from fern.train.data import AudioRow
    from fern.tts.csm.synthesizer import CsmSynthesizer

    adapter = csm_run[0]["adapter"]
    assert {"adapter_model.safetensors", "adapter_config.json", "fern_train.yaml"} <= {
        p.name for p in __import__("pathlib").Path(adapter).iterdir()}
    frames = {}
    for lora in (None, adapter):
        synth = CsmSynthesizer(_modules=(tiny_model(0), ByteTokenizer(), tiny_mimi()), temperature=0.0, warmup=False,
                               device="cpu", max_audio_s=2.0, lora=lora)
        frames[lora] = torch.cat(list(synth.engine.generate([], synth._segment(TEXTS[0], 0), 12))).cpu()
    assert not torch.equal(frames[None], frames[adapter])
    target = torch.tensor(mimi_encode(tiny_mimi(), AudioRow("0", TEXTS[0], path=str(wav_txt_dir / "clip0.wav"))
                                      .load(24000), "cpu"))
    n = min(len(target), len(frames[adapter]), len(frames[None]))
    learnt = (frames[adapter][:n] == target[:n]).float().mean()
    base = (frames[None][:n] == target[:n]).float().mean()
    assert learnt > 0.05 and learnt > 5 * base, (learnt, base)  # the clip's own codes come back


def test_mlflow_holds_params_metrics_and_artifacts(csm_run):
    summary, root, _ = csm_run
    run = mlflow_run(root / "mlflow.db", summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["task.kind"] == "csm_lora" and params["trainer.max_steps"] == "24"
    assert params["data.skipped_rows"] == "3" and int(params["model.trainable_params"]) > 0
    losses = mlflow_history(root / "mlflow.db", summary["mlflow_run_id"], "train/loss")
    assert [m.step for m in losses] == list(range(24))
    assert run.data.metrics["val/loss"] == pytest.approx(summary["val_loss"])
    assert {"summary.json", "config.yaml"} <= set(mlflow_artifacts(root / "mlflow.db", summary["mlflow_run_id"]))


def test_mimi_codes_are_cached_and_reused(csm_run):
    """A second preparation of the same files never builds Mimi: the codes come from the datasets cache."""
    from train_helpers import base_overrides, compose_train

    from fern.train.csm import CsmLoraTask

    _, root, overrides = csm_run
    task = CsmLoraTask(compose_train(base_overrides(root / "again", root / "mlflow.db") + overrides))
    task.read()

    def no_mimi(device):
        raise AssertionError("Mimi was built although the codes are cached")

    task._mimi = no_mimi
    train, _ = task.prepare()
    assert len(train) == 4 and list((root / "cache").glob("mimi-codes-*.arrow"))
