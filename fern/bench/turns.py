"""Turn-taking benchmark: false cut-offs vs endpoint delay on real human speech, every detector driven the way the
live listener drives it (fern.turn.segmenter over real VAD decisions, decide() at each checkpoint).

    python -m fern.bench.turns                          # held-out third: silence 300/500/700, smart_turn, semantic
    python -m fern.bench.turns --limit 20 --no-mlflow   # a quick look
    python -m fern.bench.turns --calibrate              # fit the semantic preset's combiner + thresholds on train

Set-up: the labelled set (fern.bench.turn_data) is built into ``--cache`` on first use. Each case's audio is cut into
32 ms frames and run through ``vad=silero``; the frames drive a Segmenter with the detector's checkpoints. At a
checkpoint the detector gets a PauseState (the turn so far with 300 ms of pre-roll, the silence so far, and, for a
detector that reads words, the transcript once the real ASR (``--asr``, the run preset) has finished).

Timing model (all compute measured on this machine, in this run): the detector runs on one lane (the listener's
thread): a decision starts at its checkpoint or when the previous decision finished, whichever is later, and ends
after its measured compute. ASR runs on a second lane (the responder's thread, started by the listener at the first
checkpoint of a pause); its transcript reaches the detector at the first decision that starts after the ASR finished,
and one extra decision is made at the 32 ms frame where it arrives (the listener re-asks "when a transcript is
ready"). The endpoint delay is (decision finished) - (end of the last voiced VAD frame of the utterance).

A **false cut-off** is a turn ended at a pause after which the user still speaks (the VAD's last voiced frame of the
case is later). The issue's rate is over the pause cases (a 0.4-1.5 s pause inserted mid-sentence); ends at natural
pauses inside complete utterances are counted apart. Delays are over complete utterances that were not cut off.

Sweeps replay each detector's own decision rule (``rule(scores, silence_s, threshold)``, what ``decide`` applies)
over scores recorded once at every checkpoint; the rule at the configured threshold is the table's row, and the
test suite checks that replaying it equals calling decide() through the Segmenter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fern.config.schema import ListenerConfig
from fern.paths import PROJECT_ROOT

# the turn as the listener hands it to the models: its pre-roll, and pauses the user spoke after, shortened
PRE_ROLL_S = ListenerConfig.preroll_ms / 1000
INNER_PAUSE_S = ListenerConfig.inner_pause_ms / 1000
DEFAULT_CACHE = PROJECT_ROOT / ".cache"
SILENCE_SWEEP_MS = (160, 224, 300, 400, 500, 600, 700, 800, 1000, 1200, 1500, 1800)
THRESHOLD_SWEEP = tuple(round(x, 3) for x in np.concatenate([np.linspace(0.05, 0.9, 18),
                                                             [0.93, 0.95, 0.97, 0.98, 0.99, 0.995]]))


# ---- driving a detector over one case -------------------------------------------------------------------------
@dataclass
class Decision:
    t: float  # when the decision could start (checkpoint, or transcript arrival)
    done: float  # when its verdict was known (after the lane was free and the compute ran)
    silence_s: float
    t_last_voiced: float
    pause: int  # which pause of the case (0, 1, ...)
    last: bool  # the detector's last checkpoint: the turn ends whatever
    scores: dict[str, float] = field(default_factory=dict)
    compute_s: float = 0.0
    asr_s: float = float("nan")  # ASR compute for this pause (on its own lane), where it started here
    has_transcript: bool = False


@dataclass
class CaseRun:
    case_id: str
    kind: str
    t_final: float  # end of the last voiced VAD frame of the case
    decisions: list[Decision]
    transcripts: dict[int, str] = field(default_factory=dict)
    pause_text_scores: dict[int, float] = field(default_factory=dict)
    pause_asr_logprob: dict[int, float] = field(default_factory=dict)
    resumed_at: dict[int, float] = field(default_factory=dict)  # pause -> when the user spoke again


def vad_decisions(vad, audio: np.ndarray) -> list[bool]:
    vad.reset()
    n = vad.frame_samples
    return [vad.is_speech(audio[i:i + n]) for i in range(0, audio.size - n + 1, n)]


def run_case(detector, audio: np.ndarray, speech: list[bool], frame_s: float, sample_rate: int, asr=None,
             case_id: str = "", kind: str = "", inner_pause_s: float = INNER_PAUSE_S) -> CaseRun:
    """Drive ``detector`` over one case through a Segmenter without ever ending the turn, recording the scores
    and timing of every decision (scoring is independent of thresholds, so any threshold can be replayed). The
    models get the turn as the listener gives it: each pause the user spoke after shortened to ``inner_pause_s``."""
    from fern.turn.base import PauseState
    from fern.turn.segmenter import Checkpoint, Resume, Segmenter, SpeechStart, squeeze_pauses

    seg = Segmenter(detector.checkpoints_s, detector.speech_start_ms, detector.min_speech_ms)
    voiced_ends = [(i + 1) * frame_s for i, s in enumerate(speech) if s]
    run = CaseRun(case_id, kind, voiced_ends[-1] if voiced_ends else float("nan"), [])
    lane_a = 0.0  # detector lane free at
    lane_b = 0.0  # ASR lane free at
    pause = -1
    transcript: str | None = None
    logprob = float("nan")
    ready_at = math.inf
    delivered = False
    in_pause = False
    t_start = 0.0
    wants_text = asr is not None and getattr(detector, "needs_transcript", False)  # the detector reads the words
    scorer = getattr(detector, "score", None)

    def turn_audio(t: float) -> np.ndarray:
        a = int(max(0.0, t_start - PRE_ROLL_S) * sample_rate)
        return squeeze_pauses(audio[a:int(round(t * sample_rate))], sample_rate, a / sample_rate, seg.pauses,
                              inner_pause_s)

    def decide_at(t: float, silence_s: float, t_last_voiced: float, last: bool, asr_s: float = float("nan")):
        nonlocal lane_a, delivered
        start = max(t, lane_a)
        have = wants_text and transcript is not None and ready_at <= start
        state = PauseState(turn_audio(t), sample_rate, silence_s, transcript if have else None,
                           logprob if have else float("nan"))
        c0 = time.perf_counter()
        scores = scorer(state) if scorer else {}
        compute = time.perf_counter() - c0 if scorer else 0.0
        lane_a = start + compute
        delivered = delivered or have
        run.decisions.append(Decision(t, lane_a, silence_s, t_last_voiced, pause, last, scores, compute, asr_s, have))

    for i, is_speech in enumerate(speech):
        t = (i + 1) * frame_s
        event = seg.push(t, frame_s, is_speech)
        if isinstance(event, SpeechStart):
            t_start = event.t
        elif isinstance(event, Resume):
            run.resumed_at[pause] = t
            in_pause, transcript, ready_at, delivered = False, None, math.inf, False
        elif isinstance(event, Checkpoint):
            asr_s = float("nan")
            if event.index == 0:
                pause += 1
                in_pause = True
                if asr is not None:  # recognised at the first checkpoint, as the listener does, for the reply
                    c0 = time.perf_counter()
                    transcript, logprob = transcribe_scored(asr, turn_audio(t))
                    asr_s = time.perf_counter() - c0
                    ready_at = max(t, lane_b) + asr_s
                    lane_b = ready_at
                    run.transcripts[pause] = transcript
                    run.pause_asr_logprob[pause] = logprob
            decide_at(t, event.silence_s, event.t_last_voiced, event.last, asr_s)
            if event.last:
                in_pause = False
            continue
        if in_pause and wants_text and not delivered and ready_at <= t:
            decide_at(t, seg.silence_s, seg.t_last_voiced, False)
    return run


def transcribe_scored(asr, audio: np.ndarray) -> tuple[str, float]:
    from fern.protocols import ScoredRecognizer

    return asr.transcribe_scored(audio) if isinstance(asr, ScoredRecognizer) else (asr.transcribe(audio), math.nan)


def first_end(run: CaseRun, rule, threshold: float | None) -> Decision | None:
    """The decision that ends the turn under ``rule`` at ``threshold`` (None: only the last checkpoint ends it)."""
    for d in run.decisions:
        if d.done > run.resumed_at.get(d.pause, math.inf) + 1e-9:
            continue  # its verdict came after the user spoke again: the listener voids it
        if d.last or (rule is not None and rule(d.scores, d.silence_s, threshold).end):
            return d
    return None


def is_cutoff(run: CaseRun, d: Decision) -> bool:
    return d.t_last_voiced < run.t_final - 1e-6


def evaluate(runs: list[CaseRun], rule, threshold: float | None,
             asr_final: dict[str, float] | None = None) -> dict[str, float]:
    """Cut-off rates, endpoint delays and speculation counts of ``rule`` at ``threshold``. With ``asr_final``
    (case id -> ASR seconds on the utterance at its final pause) also when a reply could start: the turn is over
    and its transcript exists, ASR having been started at the pause's first checkpoint (as the listener does)."""
    pause_cut, complete_cut, delays, reply, after_pause = [], [], [], [], []
    spec_kept = spec_dropped = 0
    for run in runs:
        d = first_end(run, rule, threshold)
        if d is None:
            continue  # the case never paused long enough (it has no final pause): nothing to judge
        cut = is_cutoff(run, d)
        (pause_cut if run.kind == "pause" else complete_cut).append(cut)
        if run.kind == "pause" and not cut:
            after_pause.append(d.done - run.t_final)
        if run.kind == "complete" and not cut:
            delays.append(d.done - run.t_final)
            if asr_final and run.case_id in asr_final:
                t0 = next(x.t for x in run.decisions if x.pause == d.pause)
                reply.append(max(d.done, t0 + asr_final[run.case_id]) - run.t_final)
        if rule is not None:  # pauses on which a reply would have been prepared before the turn ended
            speculated = {(x.pause, is_cutoff(run, x)) for x in run.decisions
                          if x.done <= d.done and rule(x.scores, x.silence_s, threshold).speculate}
            spec_dropped += sum(1 for _, nonfinal in speculated if nonfinal)
            spec_kept += sum(1 for _, nonfinal in speculated if not nonfinal)
    ms = lambda xs: np.array(xs) * 1000 if xs else np.array([np.nan])  # noqa: E731
    out = {
        "cutoff_pause": float(np.mean(pause_cut)) if pause_cut else float("nan"),
        "cutoff_complete": float(np.mean(complete_cut)) if complete_cut else float("nan"),
        "delay_median_ms": float(np.median(ms(delays))),
        "delay_p95_ms": float(np.percentile(ms(delays), 95)),
        # the end of a sentence the user paused inside: the models hear the pause, shortened
        "delay_after_pause_median_ms": float(np.median(ms(after_pause))),
        "n_pause": len(pause_cut), "n_complete": len(complete_cut),
        "speculated_kept": spec_kept, "speculated_dropped": spec_dropped,
    }
    if reply:
        out["reply_start_median_ms"] = float(np.median(ms(reply)))
    return out


def with_instant_transcripts(runs: list[CaseRun]) -> list[CaseRun]:
    """What-if: every decision of a pause already has that pause's words (ASR at zero latency; not this CPU)."""
    from dataclasses import replace

    out = []
    for run in runs:
        decisions = []
        for d in run.decisions:
            scores = dict(d.scores)
            if d.pause in run.transcripts and "ellipsis" not in scores:
                scores["ellipsis"] = float(run.transcripts[d.pause].rstrip().endswith(("...", "\u2026")))
                if d.pause in run.pause_text_scores:
                    scores["text"] = run.pause_text_scores[d.pause]
                if math.isfinite(run.pause_asr_logprob.get(d.pause, math.nan)):
                    scores["asr"] = run.pause_asr_logprob[d.pause]
            decisions.append(replace(d, scores=scores))
        out.append(replace(run, decisions=decisions))
    return out


def compute_stats(runs: list[CaseRun]) -> dict[str, float]:
    comp = [d.compute_s * 1000 for r in runs for d in r.decisions if d.scores]
    asr = [d.asr_s * 1000 for r in runs for d in r.decisions if d.asr_s == d.asr_s]
    text_first = [d.compute_s * 1000 for r in runs for d in r.decisions if d.has_transcript and "text" in d.scores]
    first = {}  # the first decision of each pause: where the models run (later ones reuse their scores)
    for n, r in enumerate(runs):
        for d in r.decisions:
            if d.scores:
                first.setdefault((n, d.pause), d.compute_s * 1000)
    out = {"compute_median_ms": float(np.median(comp)) if comp else 0.0,
           "compute_p95_ms": float(np.percentile(comp, 95)) if comp else 0.0,
           "first_decision_median_ms": float(np.median(list(first.values()))) if first else 0.0}
    if asr:
        out["asr_median_ms"] = float(np.median(asr))
    if text_first:
        out["decision_with_text_median_ms"] = float(np.median(text_first))
    return out


# ---- building things from the presets ---------------------------------------------------------------------------
def compose_group(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fern.config import register
    from fern.paths import CONF_DIR

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("run", overrides=overrides + ["io.input=unused.wav"])
    GlobalHydra.instance().clear()
    return cfg


def build(node):
    from hydra.utils import instantiate

    return instantiate(node)


# ---- calibration ------------------------------------------------------------------------------------------------
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """Newton's method on the L2-regularised log-loss; returns [bias, w...]."""
    xb = np.hstack([np.ones((x.shape[0], 1)), x])
    w = np.zeros(xb.shape[1])
    reg = np.eye(xb.shape[1]) * l2
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


EARLY_THRESHOLDS = (None, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)  # None: the end threshold


def calibrate(runs: list[CaseRun], detector, target_cutoff: float = 0.02) -> dict[str, Any]:
    """Fit the combiner's weights (the inputs its configured weights name) by logistic regression on every
    decision of ``runs`` (label: the user had finished): ``weights`` as if each pause's words were there from its
    first checkpoint, ``early_weights`` on what each decision really had. Then the lowest median delay at
    <= ``target_cutoff`` over end thresholds and, where the two stages differ, early thresholds."""
    from fern.turn.semantic import CombinerWeights, feature_values

    names, early_names = detector.weights.features, detector.early_weights.features
    xs_t, xs_a, ys_t, ys_a = [], [], [], []
    for run, instant in zip(runs, with_instant_transcripts(runs)):  # each pause's words weigh on all its decisions
        for d, di in zip(run.decisions, instant.decisions):
            if "audio" not in d.scores:
                continue
            y = float(d.t_last_voiced >= run.t_final - 1e-6)
            values = feature_values(d.scores, d.silence_s)
            if all(n in values for n in early_names):
                xs_a.append([values[n] for n in early_names])
                ys_a.append(y)
            values = feature_values(di.scores, di.silence_s)
            if all(n in values for n in names):
                xs_t.append([values[n] for n in names])
                ys_t.append(y)
    wt = fit_logistic(np.array(xs_t), np.array(ys_t))
    wa = fit_logistic(np.array(xs_a), np.array(ys_a))
    detector.weights = CombinerWeights(float(wt[0]), dict(zip(names, map(float, wt[1:]))))
    detector.early_weights = CombinerWeights(float(wa[0]), dict(zip(early_names, map(float, wa[1:]))))
    two_stage = set(names) != set(early_names)
    sweep = {}
    for early in EARLY_THRESHOLDS if two_stage else (None,):
        detector.early_threshold = early
        for th in THRESHOLD_SWEEP + tuple(np.linspace(0.5, 0.99, 50)):
            sweep[(float(th), early)] = evaluate(runs, detector.rule, th)
    ok = {key: m for key, m in sweep.items()
          if m["cutoff_pause"] <= target_cutoff and m["cutoff_complete"] <= target_cutoff}
    best = (min(ok, key=lambda key: (ok[key]["delay_median_ms"], -key[0])) if ok
            else max(sweep, key=lambda key: (key[0], key[1] or 0.0)))
    detector.early_threshold = best[1]
    rounded = lambda w: {k: round(v, 4) for k, v in w.as_dict().items()}  # noqa: E731
    return {"weights": rounded(detector.weights), "early_weights": rounded(detector.early_weights),
            "end_threshold": round(best[0], 3), "early_threshold": best[1], "train": sweep[best],
            "n_decisions": len(ys_a), "n_decisions_with_text": len(ys_t)}


def redacted_override(override: str) -> str:
    """``key=value`` as logged: the value hidden where the key names a secret (an API key passed on the command line
    must not reach MLflow)."""
    from fern.tracking.mlflow_tracker import redact_value

    key, sep, value = override.partition("=")
    return f"{key}{sep}{redact_value(key.lstrip('+~'), value)}" if sep else override


# ---- the report -------------------------------------------------------------------------------------------------
ROW_KEYS = ("cutoff_pause", "cutoff_complete", "delay_median_ms", "delay_p95_ms", "delay_after_pause_median_ms",
            "reply_start_median_ms",
            "compute_median_ms", "compute_p95_ms", "first_decision_median_ms", "asr_median_ms", "speculated_kept",
            "speculated_dropped")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = ("| detector | false cut-offs (pauses) | early ends (complete) | median delay | p95 delay | "
            "median delay after a pause | reply can start (median) | compute / decision (median, p95; a pause's "
            "first) | ASR (own lane) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, m in rows.items():
        asr = f"{m['asr_median_ms']:.0f} ms" if "asr_median_ms" in m else "-"
        reply = f"{m['reply_start_median_ms']:.0f} ms" if "reply_start_median_ms" in m else "-"
        lines.append(f"| {name} | {100 * m['cutoff_pause']:.1f} % ({m['n_pause']}) | "
                     f"{100 * m['cutoff_complete']:.1f} % ({m['n_complete']}) | {m['delay_median_ms']:.0f} ms | "
                     f"{m['delay_p95_ms']:.0f} ms | {m.get('delay_after_pause_median_ms', math.nan):.0f} ms | "
                     f"{reply} | "
                     f"{m['compute_median_ms']:.1f}, {m['compute_p95_ms']:.1f}; "
                     f"{m.get('first_decision_median_ms', 0.0):.1f} ms"
                     f" | {asr} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["delay_median_ms"])
        ax.plot([p["delay_median_ms"] for p in pts], [100 * p["cutoff_pause"] for p in pts], "o-", ms=3, label=name)
    for name, m in rows.items():
        ax.plot(m["delay_median_ms"], 100 * m["cutoff_pause"], "k*", ms=9)
        ax.annotate(name, (m["delay_median_ms"], 100 * m["cutoff_pause"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.axvspan(0, 250, ymax=1, alpha=0.04, color="green")
    ax.axhline(3, ls=":", c="g", lw=1)
    ax.axvline(250, ls=":", c="g", lw=1)
    ax.set_xlabel("median endpoint delay on complete utterances (ms, incl. compute)")
    ax.set_ylabel("false cut-offs on mid-sentence pauses (%)")
    ax.set_xlim(0, min(3200, max(1000, ax.get_xlim()[1])))
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fern.bench.turns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test", choices=["test", "train", "all"])
    parser.add_argument("--limit", type=int, default=0, help="first N cases of the split (0: all)")
    parser.add_argument("--sample", type=int, default=0, help="N cases of the split drawn with --seed (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default="silence,smart_turn,semantic")
    parser.add_argument("--silence-ms", default="300,500,700", help="turn=silence rows of the table")
    parser.add_argument("--asr", default="whisper_tiny_en_offline", help="asr preset of the reply (and of the words "
                        "turn=semantic_asr reads)")
    parser.add_argument("--vad", default="silero")
    parser.add_argument("--semantic-preset", default="semantic", help="turn preset of the semantic row: semantic "
                        "(Whisper reads the pause), semantic_asr (the reply ASR's confidence), semantic_lm (+ a "
                        "causal LM on the words)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench/turns/<time>")
    parser.add_argument("--calibrate", action="store_true", help="fit --semantic-preset on the train split, print it")
    parser.add_argument("--target-cutoff", type=float, default=0.02, help="--calibrate: max cut-off rate on train")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--override", action="append", default=[],
                        help="extra config override (repeatable); turn.* ones apply to the semantic row only")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fern.errors import FernError

    try:
        return _run(args)
    except FernError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from fern.bench.turn_data import load
    from fern.turn.silence import SilenceTurnDetector

    split = "train" if args.calibrate else args.split
    cases = load(args.cache, split)
    if args.sample and args.sample < len(cases):
        keep = set(np.random.default_rng(args.seed).choice(len(cases), args.sample, replace=False).tolist())
        cases = [c for n, c in enumerate(cases) if n in keep]
    if args.limit:
        cases = cases[:args.limit]
    out = args.out or PROJECT_ROOT / "outputs" / "bench" / "turns" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    wanted = ["semantic"] if args.calibrate else [d.strip() for d in args.detectors.split(",") if d.strip()]
    shared = [o for o in args.override if not o.lstrip("+~").startswith("turn.")]
    cfg = compose_group([f"vad={args.vad}", f"asr={args.asr}", *shared])
    vad = build(cfg.vad)
    sr, frame_s = vad.sample_rate, vad.frame_ms / 1000
    print(f"{len(cases)} cases ({split}); VAD {args.vad}: {sum(c.kind == 'pause' for c, _ in cases)} with a "
          f"mid-sentence pause", flush=True)
    speech = {c.id: vad_decisions(vad, a) for c, a in cases}

    rows: dict[str, dict] = {}
    curves: dict[str, list[dict]] = {}
    raw: dict[str, list] = {}
    asr_final: dict[str, float] = {}

    def run_all(name: str, det, with_asr=None) -> list[CaseRun]:
        t0 = time.perf_counter()
        runs = []
        for n, (case, audio) in enumerate(cases):
            runs.append(run_case(det, audio, speech[case.id], frame_s, sr, with_asr, case.id, case.kind))
            if with_asr is not None and getattr(det, "text_model", None) is not None:
                for pause, text in runs[-1].transcripts.items():
                    runs[-1].pause_text_scores[pause] = det.text_probability(text)
            if (n + 1) % 50 == 0:
                print(f"  {name}: {n + 1}/{len(cases)} cases ({time.perf_counter() - t0:.0f} s)", flush=True)
        raw[name] = [asdict(r) for r in runs]
        return runs

    plans = []  # (row name or None, curve name, runs, rule, configured threshold, sweep values, sweep key, stats)
    if "semantic" in wanted:  # first: its ASR timings also give every detector's "reply can start"
        print(f"loading turn={args.semantic_preset} (Smart Turn, the text model if any) and the ASR ...", flush=True)
        det = build(compose_group([f"turn={args.semantic_preset}", *args.override]).turn)
        # the reply's ASR: read by a detector that needs the words, else run only for "reply can start"
        asr = build(cfg.asr) if det.needs_transcript or not args.calibrate else None
        if asr is not None:
            asr.transcribe(np.zeros(sr, np.float32))  # warm-up
        det.audio_model.probability(np.zeros(sr, np.float32))
        if det.text_model is not None:
            det.text_model.probability("hello there")
        if det.words_model is not None:
            det.words_model.cues(np.zeros(sr, np.float32), sr)
        runs = run_all("semantic", det, asr)
        if args.calibrate:
            (out / "turns_decisions.json").write_text(json.dumps(raw))
            result = calibrate(runs, det, args.target_cutoff)
            print(json.dumps(result, indent=1))
            (out / "calibration.json").write_text(json.dumps(result, indent=1))
            return 0
        stats = compute_stats(runs)
        plans.append((f"semantic (p>={det.end_threshold})", "semantic", runs, det.rule, None, THRESHOLD_SWEEP,
                      "threshold", stats))
        if set(det.early_weights.features) <= {"audio", "silence"}:
            def audio_only(scores, silence_s, threshold=None, rule=det.rule):  # bound now: det is reused below
                return rule({"audio": scores["audio"]}, silence_s, threshold)  # ablation: no words at all

            plans.append(("semantic, audio only (ablation)", "semantic audio only", runs, audio_only, None,
                          THRESHOLD_SWEEP, "threshold", stats))
        if det.needs_transcript:
            plans.append(("semantic if ASR took 0 ms (what-if, not this CPU)", "semantic, ASR at 0 ms (what-if)",
                          with_instant_transcripts(runs), det.rule, None, THRESHOLD_SWEEP, "threshold", stats))
        for run in runs:
            final = [d.asr_s for d in run.decisions if d.asr_s == d.asr_s and not is_cutoff(run, d)]
            if final:
                asr_final[run.case_id] = final[0]
    if "smart_turn" in wanted:
        det = build(compose_group(["turn=smart_turn", *shared]).turn)
        runs = run_all("smart_turn", det)
        plans.append((f"smart_turn (p>={det.threshold})", "smart_turn", runs, det.rule, None, THRESHOLD_SWEEP,
                      "threshold", compute_stats(runs)))
    if "silence" in wanted:
        table_ms = {int(x) for x in args.silence_ms.split(",") if x}
        for ms in sorted(set(SILENCE_SWEEP_MS) | table_ms):
            runs = run_all(f"silence_{ms}", SilenceTurnDetector(silence_ms=ms))
            if ms not in table_ms:
                raw.pop(f"silence_{ms}")
            plans.append((f"silence {ms} ms" if ms in table_ms else None, "silence", runs, None, None, (ms,),
                          "silence_ms", compute_stats(runs)))
    for row, curve, runs, rule, threshold, sweep, key, stats in plans:
        if row:
            rows[row] = evaluate(runs, rule, threshold, asr_final) | stats
        curves.setdefault(curve, []).extend(evaluate(runs, rule, th if rule else None, asr_final) | {key: th}
                                            for th in sweep)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    table = format_table(rows)
    print(f"\n{len(cases)} {split} cases, vad={args.vad}, asr={args.asr}; {machine}\n{table}")
    for name, pts in curves.items():
        key = "silence_ms" if name == "silence" else "threshold"
        print(f"curve {name}: " + ", ".join(f"{p[key]}: {100 * p['cutoff_pause']:.0f}%/{p['delay_median_ms']:.0f}ms"
                                            for p in pts))
    png = out / "turns_curve.png"
    plot(curves, rows, png, f"turn-taking, {len(cases)} {split} cases (asterisk prompts), {machine}")
    (out / "turns_table.md").write_text(table + "\n")
    (out / "turns_results.json").write_text(json.dumps({"rows": rows, "curves": curves}, indent=1))
    (out / "turns_decisions.json").write_text(json.dumps(raw))
    print(f"wrote {png}, {out / 'turns_table.md'}")
    if not args.no_mlflow:
        from fern.tracking.mlflow_tracker import bench_run

        with bench_run("turns", f"turns-{split}") as tracker:
            tracker.log_params({"split": split, "cases": len(cases), "vad": args.vad, "asr": args.asr,
                                "detectors": ",".join(wanted), "machine": machine,
                                "overrides": " ".join(redacted_override(o) for o in args.override)})
            for name, m in rows.items():
                key = name.split(" (")[0].replace(" ", "_").replace(",", "")
                tracker.log_metrics({f"{key}.{k}": float(m[k]) for k in ROW_KEYS if k in m})
            tracker.log_files([png, out / "turns_table.md", out / "turns_results.json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
