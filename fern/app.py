"""A session of the agent: build every stage from the config, run the pipeline, write outputs and metrics."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fern.errors import FernError

log = logging.getLogger("fern")

SUMMARY_METRICS = ("endpoint_delay_ms", "asr_ms", "llm_ttft_ms", "first_clause_ms", "tts_first_audio_ms",
                   "voice_to_voice_ms", "asr_rtf", "tts_rtf", "llm_ms_per_token", "round_trip_wer")


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


def run_name_for(cfg: DictConfig) -> str | None:
    """Explicit name, else the command-line overrides (what tells sweep members apart in `mlflow ui`)."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().job.override_dirname or "defaults"
    return None


def output_dir_for(cfg: DictConfig) -> Path:
    if cfg.io.get("output_dir"):
        return Path(cfg.io.output_dir).expanduser().resolve()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise FernError("io.output_dir is not set and Hydra is not running: pass io.output_dir=<dir>")


def warm_up(stages: dict[str, Any], sample_rate: int) -> None:
    """First calls pay for lazy initialisation (kernels, caches); pay it before the user speaks."""
    import numpy as np

    from fern.events import CancelToken

    stages["asr"].transcribe(np.zeros(sample_rate, np.float32))
    for _, _ in zip(range(2), stages["llm"].stream([{"role": "user", "content": "Hi"}], CancelToken())):
        pass
    for _ in stages["tts"].stream("Hello.", CancelToken()):
        pass


def evaluate_round_trip(records: list, sink: Any, asr: Any) -> None:
    """TTS quality without references: the ASR transcribes what the agent said and we compare it to what it meant
    to say. Runs after the session so it cannot disturb the latency figures."""
    from fern.audio import resample
    from fern.quality import word_error_rate

    agent = sink.track("agent")
    for rec in records:
        if rec.error or rec.t_first_agent_sample is None or not rec.agent_text:
            continue  # an interrupted reply was cut on purpose: its WER would measure the interruption
        start = int(rec.t_first_agent_sample * sink.sample_rate)
        speech = agent[start:int(rec.t_last_agent_sample * sink.sample_rate)]
        heard = asr.transcribe(resample(speech, sink.sample_rate, asr.sample_rate))
        rec.quality["round_trip_text"] = heard
        rec.quality["round_trip_wer"] = word_error_rate(rec.agent_text, heard)


def write_outputs(out_dir: Path, records: list, sink: Any) -> dict[str, Path]:
    from fern.audio import write_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    turns = [r.to_dict() for r in records]
    transcript = out_dir / "transcript.json"
    transcript.write_text(json.dumps({"turns": turns}, indent=2, allow_nan=True))
    table = out_dir / "turns.csv"
    with table.open("w", newline="") as f:
        metric_names = list(dict.fromkeys(k for r in records for k in r.metrics())) or list(SUMMARY_METRICS)
        writer = csv.writer(f)
        writer.writerow(["turn_id", "user_text", "agent_text", "backend", "error", *metric_names])
        for r in records:
            m = r.metrics()
            writer.writerow([r.turn_id, r.user_text, r.agent_text, r.backend, r.error or "",
                             *(m.get(k, float("nan")) for k in metric_names)])
    paths = {"transcript": transcript, "turns": table,
             "timeline": write_wav(out_dir / "timeline.wav", sink.timeline(), sink.sample_rate)}
    if hasattr(sink, "track"):  # the agent's side alone: what the round-trip quality check listens to
        paths["agent"] = write_wav(out_dir / "agent.wav", sink.track("agent"), sink.sample_rate)
    return paths


def summarise(records: list) -> dict[str, float]:
    failed = [r for r in records if r.error and r.error != "no speech recognised"]
    summary: dict[str, float] = {"turns": float(len(records)), "turn_errors": float(len(failed))}
    per_turn = [r.metrics() for r in records]
    for name in SUMMARY_METRICS:
        values = [v for m in per_turn if not math.isnan(v := m.get(name, float("nan")))]
        if values:
            summary[f"median_{name}"] = float(statistics.median(values))
    return summary


def _run(cfg: DictConfig) -> float:
    out_dir = output_dir_for(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # cheap, input-validating stages first: bad input fails before minutes of model loading
    source = build(cfg.io.source, "audio source")
    sink = build(cfg.io.sink, "audio sink")
    vad = build(cfg.vad, "vad")
    turn = build(cfg.turn, "turn")
    chunker = build(cfg.chunker, "chunker")
    from fern.llm.history import ChatHistory

    ChatHistory(cfg.dialogue.system_prompt, cfg.dialogue.history_max_tokens)  # validates the dialogue settings

    import torch

    from fern.optim import apply_optim

    torch.manual_seed(cfg.seed)
    applied = apply_optim(cfg.optim)
    # an unreachable tracking server is found now, not after the models have loaded
    tracker = start_tracking(cfg, applied) if cfg.tracking.enabled else None
    status = "FAILED"
    try:
        records = _converse(cfg, out_dir, t_start, tracker, source=source, sink=sink, vad=vad, turn=turn,
                            chunker=chunker)
        status = "FINISHED"
    finally:
        if tracker:
            tracker.close(status)
    print(format_table(records))
    print(f"outputs: {out_dir}")
    if tracker:
        print(f"mlflow run {tracker.run_id} in {tracker.display_uri}")
    return summarise(records).get("median_voice_to_voice_ms", float("nan"))


def _converse(cfg: DictConfig, out_dir: Path, t_start: float, tracker: Any, **stages: Any) -> list:
    """Load the models, run the conversation, write and log what happened (also when it ended in an error)."""
    from fern.llm.history import ChatHistory
    from fern.pipeline import VoicePipeline

    tts = build(cfg.tts, "tts")
    asr = build(cfg.asr, "asr")
    llm = build(cfg.llm, "llm")
    history = ChatHistory(cfg.dialogue.system_prompt, cfg.dialogue.history_max_tokens,
                          count_tokens=getattr(llm, "count_tokens", None))
    if cfg.warmup:
        warm_up({"asr": asr, "llm": llm, "tts": tts}, stages["vad"].sample_rate)
    startup_s = time.perf_counter() - t_start
    log.info("stages ready in %.1f s", startup_s)
    if tracker:
        tracker.log_metrics({"startup_s": startup_s})

    def on_turn(rec) -> None:
        log.info("turn %d | user: %s | agent: %s | v2v %.0f ms%s", rec.turn_id, rec.user_text, rec.agent_text,
                 rec.metrics()["voice_to_voice_ms"], f" | {rec.error}" if rec.error else "")

    sink = stages["sink"]
    pipeline = VoicePipeline(asr=asr, llm=llm, tts=tts, history=history, on_turn=on_turn, **stages)
    try:
        pipeline.run_sync()
    finally:
        # whatever happened, the turns that did happen are written out and logged
        records = pipeline.records
        if cfg.round_trip_eval and hasattr(sink, "track"):
            evaluate_round_trip(records, sink, asr)
        paths = write_outputs(out_dir, records, sink)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(redacted_config(cfg)))
        if tracker:
            for rec in records:
                tracker.log_metrics(rec.metrics(), step=rec.turn_id)
            tracker.log_metrics(summarise(records))
            tracker.log_files([*paths.values(), out_dir / "config.yaml"])
    return records


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


def format_table(records: list) -> str:
    columns = ("endpoint_delay_ms", "asr_ms", "llm_ttft_ms", "first_clause_ms", "tts_first_audio_ms",
               "voice_to_voice_ms")
    lines = ["turn | " + " | ".join(columns) + " | user -> agent"]
    for r in records:
        m = r.metrics()
        lines.append(f"{r.turn_id:>4} | " + " | ".join(f"{m[c]:>{len(c)}.0f}" for c in columns)
                     + f" | {r.user_text!r} -> {r.agent_text!r}")
    return "\n".join(lines)


def run_session(cfg: DictConfig) -> float:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "faster_whisper", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # GGUF progress bars and tokenizer notices
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader uses tqdm directly
    try:
        return _run(cfg)
    except FernError as exc:
        # one clear line, no traceback: these are the user's to fix
        print(f"fern: error: {exc}", file=sys.stderr)
        sys.exit(2)
