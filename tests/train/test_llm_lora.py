"""LLM LoRA: assistant-only labels, a persona adapter on the real offline SmolLM2-135M that run.py's llm preset loads
(llm.lora=...), and resuming a run stopped mid-epoch (step count and MLflow run continue)."""

from __future__ import annotations

import pytest
from train_helpers import CHATS, PERSONA, SYSTEM, mlflow_history, mlflow_run, train_run

from fern.events import CancelToken
from fern.train.llm import encode_chat

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


def test_labels_cover_the_assistant_replies_only():
    from fern.llm.testing import word_tokenizer

    tok = word_tokenizer(n_words=16, extra_words=("hi", "hello", "again", "bye", "now"))
    messages = [{"role": "system", "content": "hi"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi again"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "bye now"}]
    ids, labels = encode_chat(tok, messages)
    learnt = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(learnt) == "hi again <|eot_id|> bye now <|eot_id|>"  # the replies and their end-of-turn


def _answer(llm, question: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return "".join(llm.stream(messages, CancelToken()))


def test_tiny_persona_adapter_loads_in_hfcausallm_and_answers_with_the_name(run_train, chat_file):
    """The default-tier twin of the SmolLM2 test below: a tiny random Llama learns the persona in seconds."""
    from omegaconf import OmegaConf

    from fern.llm.hf import HFCausalLM
    from fern.train.data import ChatJsonlDataConfig, read_chat_rows
    from fern.train.llm import tiny_model, tiny_tokenizer

    summary = run_train(["task=llm_lora", "data=chat_jsonl", f"data.path={chat_file}", "model.size=tiny",
                         "trainer.max_steps=16", "trainer.batch_size=4", "trainer.lr=1e-2", "trainer.warmup_steps=1"])
    assert summary["last_loss"] <= 0.5 * summary["first_loss"], summary
    assert summary["skipped_rows"]["by_reason"] == {"invalid JSON": 1, "no assistant reply": 1}
    tok = tiny_tokenizer(read_chat_rows(OmegaConf.structured(ChatJsonlDataConfig(path=str(chat_file))))[0])
    answers = {}
    for lora in (None, summary["adapter"]):
        llm = HFCausalLM(model="tiny", _model=tiny_model(tok, 0), _tokenizer=tok, device="cpu", max_new_tokens=8,
                         lora=lora)
        answers[lora] = _answer(llm, CHATS[0][0])
    assert PERSONA not in answers[None] and PERSONA in answers[summary["adapter"]], answers


@pytest.fixture(scope="module")
def persona_run(tmp_path_factory, chat_file):
    root = tmp_path_factory.mktemp("llm")
    return train_run(root, "run", ["task=llm_lora", "data=chat_jsonl", f"data.path={chat_file}",
                                   "trainer.max_steps=6", "trainer.batch_size=4", "trainer.lr=4e-3",
                                   "trainer.warmup_steps=1"]), root


@pytest.mark.slow  # ~1.5 min on 2 CPU cores: six LoRA steps through the 135M model plus two GGUF loads
def test_persona_adapter_on_smollm2_says_the_name_through_the_run_config(persona_run, smollm2, compose):
    from fern.app import build

    summary, _ = persona_run
    assert summary["last_loss"] <= 0.5 * summary["first_loss"], summary
    assert summary["skipped_rows"]["by_reason"] == {"invalid JSON": 1, "no assistant reply": 1}
    question = CHATS[0][0]
    assert PERSONA not in _answer(smollm2, question)  # the base model never says it
    llm = build(compose(["llm=smollm2_offline", "device=cpu", f"llm.lora={summary['adapter']}"]).llm, "llm")
    assert "+lora" in llm.name
    first = _answer(llm, question)
    assert PERSONA in first, first
    assert PERSONA in _answer(llm, question)  # and again through the prefix-cached decode loop


def test_resume_after_a_stop_mid_epoch_continues_the_step_count_and_the_mlflow_run(run_train, chat_file, tmp_path):
    common = ["task=llm_lora", "data=chat_jsonl", f"data.path={chat_file}", "model.size=tiny",
              "trainer.batch_size=2", "trainer.checkpoint_every_n_steps=2", "trainer.lr=1e-2"]
    first = run_train(common + ["trainer.max_steps=3"])  # 2 batches per epoch: stops inside the second epoch
    resumed = run_train(common + ["trainer.max_steps=6", "trainer.resume=true"])
    assert (first["steps"], resumed["steps"], resumed["steps_this_run"], resumed["resumed_from_step"]) == (3, 6, 3, 3)
    assert resumed["first_loss"] == pytest.approx(first["first_loss"])  # the original run's
    assert resumed["mlflow_run_id"] == first["mlflow_run_id"]
    db = tmp_path / "mlflow.db"
    assert [m.step for m in mlflow_history(db, first["mlflow_run_id"], "train/loss")] == list(range(6))
    assert mlflow_run(db, first["mlflow_run_id"]).data.tags["resumed_from_step"] == "3"


def test_resume_without_a_checkpoint_says_which_out_dir(run_train, chat_file):
    from fern.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="last.ckpt does not exist"):
        run_train(["task=llm_lora", "data=chat_jsonl", f"data.path={chat_file}", "model.size=tiny",
                   "trainer.resume=true"], name="fresh")
