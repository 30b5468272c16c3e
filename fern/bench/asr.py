"""ASR speed and accuracy on real human speech: Whisper's encoder context (``asr.encoder_window_s``) x beam size.

    python -m fern.bench.asr          # tiny.en offline: windows 30 s (standard), 10, 8, 6 s; beams 1 and 5
    python -m fern.bench.asr --windows none,8 --beams 5 --limit 40 --no-mlflow

Clips are the held-out split of the turn-taking set (fern.bench.turn_data, built on first use): each complete
utterance with 300 ms of silence after it, and each pause case's words before its pause with 160 ms of silence
after them (what the turn detector transcribes at its first checkpoint; Whisper tends to finish such fragments).
WER is against the words faster-whisper found on the whole prompt. Time is wall time per call on this machine,
after one warm-up call; medians and p95 are printed and logged to MLflow (experiment ``fern-bench-asr``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from fern.bench.turns import DEFAULT_CACHE, compose_group


def clips(cache, split: str, limit: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    from fern.bench.turn_data import SAMPLE_RATE, load

    cases = load(cache, split)
    start = int(0.1 * SAMPLE_RATE)
    out = {"complete": [], "partial": []}
    for case, audio in cases:
        if case.kind == "complete":
            out["complete"].append((case.text, audio[start:int((case.speech_end_s + 0.3) * SAMPLE_RATE)]))
        else:
            out["partial"].append((case.text_before_pause, audio[start:int((case.pause_start_s + 0.16) * SAMPLE_RATE)]))
    return {kind: items[:limit] if limit else items for kind, items in out.items()}


def measure(asr, items: list[tuple[str, np.ndarray]]) -> tuple[list[float], float]:
    from fern.quality import word_error_rate

    times, refs, hyps = [], [], []
    for ref, audio in items:
        t0 = time.perf_counter()
        hyps.append(asr.transcribe(audio))
        times.append(time.perf_counter() - t0)
        refs.append(ref)
    # corpus WER: errors over all reference words (a hallucinated loop on one clip counts its words, not x100 %)
    return times, word_error_rate(" ".join(refs), " ".join(hyps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fern.bench.asr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--asr", default="whisper_tiny_en_offline", help="asr preset")
    parser.add_argument("--windows", default="none,10,8,6", help="asr.encoder_window_s values (none: 30 s)")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--limit", type=int, default=0, help="first N clips of each kind (0: all)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pathlib import Path

    from fern.bench.turns import build
    from fern.errors import FernError

    try:
        data = clips(Path(args.cache), args.split, args.limit)
    except FernError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"asr={args.asr}; {len(data['complete'])} complete utterances, {len(data['partial'])} fragments "
          f"({args.split} split); {machine}, load {os.getloadavg()[0]:.1f}", flush=True)
    print("| encoder window | beam | median ms | p95 ms | WER complete | WER fragments |\n|---|---|---|---|---|---|")
    results = {}
    for beam in [int(b) for b in args.beams.split(",")]:
        for window in args.windows.split(","):
            value = "null" if window.strip().lower() in ("none", "null", "30") else window.strip()
            asr = build(compose_group([f"asr={args.asr}", f"asr.beam_size={beam}",
                                       f"asr.encoder_window_s={value}"]).asr)
            asr.transcribe(data["complete"][0][1])  # warm-up
            t_complete, wer_complete = measure(asr, data["complete"])
            t_partial, wer_partial = measure(asr, data["partial"])
            times = np.array(t_complete + t_partial) * 1000
            label = "30 s (standard)" if value == "null" else f"{value} s"
            key = f"w{'30' if value == 'null' else value}_b{beam}"
            results[key] = {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
                            "wer_complete": wer_complete, "wer_fragments": wer_partial}
            r = results[key]
            print(f"| {label} | {beam} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {100 * wer_complete:.1f} % | "
                  f"{100 * wer_partial:.1f} % |", flush=True)
    if not args.no_mlflow:
        from fern.tracking.mlflow_tracker import bench_run

        with bench_run("asr", f"asr-{args.asr}") as tracker:
            tracker.log_params({"asr": args.asr, "split": args.split, "clips": sum(map(len, data.values())),
                                "machine": machine})
            tracker.log_metrics({f"{key}.{name}": value for key, r in results.items() for name, value in r.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
