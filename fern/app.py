"""A session of the agent: build the stages from the config, run the pipeline with its observers, report.

The order matters to the user: cheap, input-validating stages first (a bad WAV fails before minutes of model
loading), then the tracking run (an unreachable server fails before the models load), then the models.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fern.errors import FernError

log = logging.getLogger("fern")


class _Interrupted(Exception):
    """Ctrl-C ended the session; the turns it had are already written and logged."""

    def __init__(self, records: list) -> None:
        super().__init__("interrupted")
        self.records = records


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Instantiate a stage, surfacing our own errors as they are instead of Hydra's wrapper."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, FernError):
            raise cause from None
        raise FernError(f"could not build the {what} stage: {cause or exc}") from exc


def run_session(cfg: DictConfig) -> float:
    """run.py's body: one line on stderr and exit code 2 for anything the user can fix."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "faster_whisper", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # GGUF progress bars and tokenizer notices
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader uses tqdm directly
    try:
        return _run(cfg)
    except FernError as exc:
        print(f"fern: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _run(cfg: DictConfig) -> float:
    from fern.metrics import format_table, summarise

    if cfg.io.get("list_devices"):  # io=live io.list_devices=true: the device table, nothing else
        from fern.io.live import format_devices

        print(format_devices())
        return float("nan")
    out_dir = output_dir_for(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    # the turn detector's text model waits for the reply LLM when both are the same weights (built once, below)
    text_from_llm = text_model_shares_llm(cfg)
    turn = build(cfg.turn, "turn", text=None, reads_text=True) if text_from_llm else build(cfg.turn, "turn")
    cheap = {"source": build(cfg.io.source, "audio source"), "sink": build(cfg.io.sink, "audio sink"),
             "vad": build(cfg.vad, "vad"), "turn": turn, "chunker": build(cfg.chunker, "chunker")}
    from fern.llm.history import ChatHistory

    ChatHistory(cfg.dialogue.system_prompt, cfg.dialogue.history_max_tokens)  # validates the dialogue settings

    import torch

    from fern.optim import apply_optim

    torch.manual_seed(cfg.seed)
    applied = apply_optim(cfg.optim)
    tracker = start_tracking(cfg, applied) if cfg.tracking.enabled else None
    status = "FAILED"
    records: list = []
    try:
        records = _converse(cfg, out_dir, t_start, tracker, text_from_llm, **cheap)
        status = "FINISHED"
    except _Interrupted as stop:
        # Ctrl-C ends a live session: the observers have written and logged the turns so far (pipeline.run's
        # finally), so this is a normal end, not an error
        status, records = "KILLED", stop.records
        print("fern: interrupted; the turns so far are written", file=sys.stderr)
    finally:
        if tracker:
            tracker.close(status)
    print(format_table(records))
    print(f"outputs: {out_dir}")
    if tracker:
        print(f"mlflow run {tracker.run_id} in {tracker.display_uri}")
    return summarise(records).get("median_voice_to_voice_ms", float("nan"))


def text_model_shares_llm(cfg: DictConfig) -> bool:
    """The turn detector reads words with the same causal LM file as the reply LLM (turn=semantic's SmolLM2 and
    llm=smollm2_offline): load it once (saves ~20 s of start-up and ~0.5 GB on a CPU)."""
    text, llm = cfg.turn.get("text"), cfg.llm
    return (text is not None and llm.get("_target_") == "fern.llm.hf.HFCausalLM" and not llm.get("lora")
            and text.get("model") == llm.get("model") and text.get("gguf_file") == llm.get("gguf_file"))


def attach_text_model(cfg: DictConfig, turn: Any, llm: Any) -> None:
    """Give the turn detector the reply LLM's loaded weights where they can serve both (a CPU float32 copy: on a GPU
    the LLM runs in half precision, which the calibrated text scores were not measured with), else its own copy."""
    import torch

    from fern.turn.text_eot import TextEndOfTurnModel

    text_cfg = cfg.turn.text
    if getattr(llm, "device", None) == "cpu" and getattr(llm, "dtype", None) == torch.float32:
        text = TextEndOfTurnModel.from_loaded(llm.model, llm.tokenizer, end_token=text_cfg.end_token,
                                              normalize=text_cfg.normalize, max_tokens=text_cfg.max_tokens,
                                              system_prompt=text_cfg.system_prompt)
        log.info("turn detector reads words with the reply LLM's weights (%s)", llm.name)
    else:
        text = build(text_cfg, "turn text model")
    turn.attach_text_model(text)


def _converse(cfg: DictConfig, out_dir: Path, t_start: float, tracker: Any, text_from_llm: bool,
              **stages: Any) -> list:
    """Load the models, run the conversation; the observers write and log what happened, also after an error."""
    from fern.llm.history import ChatHistory
    from fern.observers import ConsoleObserver, MlflowObserver, OutputWriter, RoundTripEvaluator
    from fern.pipeline import VoicePipeline

    tts = build(cfg.tts, "tts")
    asr = build(cfg.asr, "asr")
    llm = build(cfg.llm, "llm")
    if text_from_llm:
        attach_text_model(cfg, stages["turn"], llm)
    history = ChatHistory(cfg.dialogue.system_prompt, cfg.dialogue.history_max_tokens, count_tokens=llm.count_tokens)
    if cfg.warmup:
        warm_up(asr, llm, tts, stages["vad"].sample_rate)
    startup_s = time.perf_counter() - t_start
    log.info("stages ready in %.1f s", startup_s)
    if tracker:
        tracker.log_metrics({"startup_s": startup_s})
        if applied := applied_stage_params(tts):
            tracker.log_params(applied)

    sink = stages["sink"]
    pipeline = VoicePipeline(asr=asr, llm=llm, tts=tts, history=history, preroll_ms=cfg.listener.preroll_ms,
                             postroll_ms=cfg.listener.postroll_ms, max_turn_s=cfg.listener.max_turn_s,
                             inner_pause_ms=cfg.listener.inner_pause_ms, reply_words=cfg.listener.reply_words.value,
                             workers=cfg.listener.workers, barge_in=cfg.barge_in.enabled,
                             barge_in_min_speech_ms=cfg.barge_in.min_speech_ms,
                             self_speech_guard=cfg.barge_in.self_speech_guard, **stages)
    recorder = pipeline.recorder
    writer = OutputWriter(out_dir, recorder, sink, config=redacted_config(cfg))
    observers: list = [ConsoleObserver()]
    if cfg.round_trip_eval:
        observers.append(RoundTripEvaluator(recorder, sink, asr))
    observers.append(writer)
    if tracker:
        observers.append(MlflowObserver(tracker, recorder, writer))
    pipeline.bus.observers.extend(observers)
    try:
        pipeline.run_sync()
    except KeyboardInterrupt:
        raise _Interrupted(pipeline.records) from None
    finally:
        report_speculation(pipeline.speculation, tracker)
    return pipeline.records


def applied_stage_params(tts: Any) -> dict[str, str]:
    """What a stage resolved its settings to once built, beside the settings themselves (``tts.kernels=auto`` runs
    persistent, triton after a fallback, or torch): a sweep compares what ran."""
    engine = getattr(tts, "engine", None)
    if engine is None or not hasattr(engine, "kernels"):
        return {}
    return {"tts.applied.kernels": engine.kernels, "tts.applied.backbone_kernels": engine.backbone_kernels,
            "tts.applied.weights": engine.weights}


def report_speculation(counts: dict[str, int], tracker: Any) -> None:
    """Replies prepared before the end of the turn was confirmed: kept (the turn ended there) or dropped (the user
    went on; nothing of them was played)."""
    if not any(counts.values()):
        return
    log.info("speculative replies: %d kept, %d dropped", counts["kept"], counts["dropped"])
    if tracker:
        tracker.log_metrics({"speculated_kept": float(counts["kept"]), "speculated_dropped": float(counts["dropped"])})


def warm_up(asr: Any, llm: Any, tts: Any, sample_rate: int) -> None:
    """First calls pay for lazy initialisation (kernels, caches); pay it before the user speaks."""
    import numpy as np

    from fern.events import CancelToken

    asr.transcribe(np.zeros(sample_rate, np.float32))
    for _, _ in zip(range(2), llm.stream([{"role": "user", "content": "Hi"}], CancelToken())):
        pass
    for _ in tts.stream("Hello.", CancelToken()):
        pass


def output_dir_for(cfg: DictConfig) -> Path:
    if cfg.io.get("output_dir"):
        return Path(cfg.io.output_dir).expanduser().resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise FernError("io.output_dir is not set and Hydra is not running: pass io.output_dir=<dir>")


def run_name_for(cfg: DictConfig) -> str | None:
    """Explicit name, else the command-line overrides (what tells sweep members apart in `mlflow ui`)."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().job.override_dirname or "defaults"
    return None


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    from fern.tracking.mlflow_tracker import redact_tree

    return redact_tree(OmegaConf.to_container(cfg, resolve=True))


def start_tracking(cfg: DictConfig, applied: dict[str, Any]):
    from fern.tracking.mlflow_tracker import MlflowTracker, flatten

    tracker = MlflowTracker(cfg.tracking.experiment, cfg.tracking.tracking_uri, run_name_for(cfg),
                            tags={"device": "cuda" if applied["optim.applied.cuda_available"] else "cpu"})
    try:
        tracker.log_params({**flatten(OmegaConf.to_container(cfg, resolve=True)), **applied})
    except BaseException:
        tracker.close("FAILED")  # never leave a run open: the next job of a sweep could not start its own
        raise
    return tracker
