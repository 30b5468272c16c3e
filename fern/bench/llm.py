"""LLM latency vs conversation length: time to first token (TTFT) and ms/token at turn 1, 10 and 50.

    python -m fern.bench.llm --size smollm2_offline                 # the real offline GGUF, CPU
    python -m fern.bench.llm --size llama1b --device cuda           # Llama-3.2-1B-size, random weights, no download
    python -m fern.bench.llm --size llama1b --device cuda --variants eager,static,compile

For turn k the model first answers turn k-1 of the same conversation (so its KV cache holds that prefix, as in a
live session), then turn k is timed: "ttft" is from the call to the first new token (chat template, prefill of the
tokens not already cached, first sampled token); "cold" is the same prompt after the cache was dropped, i.e. what
TTFT would be without prefix reuse. ms/token is the decode time after the first token / (tokens - 1).
Figures are medians of --runs runs after one warm-up run per turn index. Logs to MLflow only if MLFLOW_TRACKING_URI
is set.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any

SYSTEM = ("You are FERN, a friendly voice assistant. Answer in one or two short spoken sentences, without lists, "
          "markdown or emojis.")
TOPICS = ["the weather", "a good book", "cooking pasta", "the moon", "learning French", "bicycles", "coffee",
          "the ocean", "chess", "gardening"]


def user_msg(i: int) -> str:
    return f"Question {i}: could you tell me something short and interesting about {TOPICS[i % len(TOPICS)]} ?"


def assistant_msg(i: int) -> str:
    return (f"Sure , here is a short thought about {TOPICS[i % len(TOPICS)]} , number {i} : it is a lovely subject "
            "and there is always more to learn about it .")


def conversation(k: int) -> list[dict[str, str]]:
    """System prompt, k-1 earlier exchanges, then the k-th user message."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for i in range(1, k):
        msgs += [{"role": "user", "content": user_msg(i)}, {"role": "assistant", "content": assistant_msg(i)}]
    msgs.append({"role": "user", "content": user_msg(k)})
    return msgs


def corpus_words() -> tuple[str, ...]:
    words: list[str] = []
    for i in range(0, 200):
        words += user_msg(i).replace(":", " :").split() + assistant_msg(i).split()
    words += SYSTEM.replace(",", " ,").replace(".", " .").split()
    return tuple(dict.fromkeys(words))


VARIANTS = {"eager": dict(static_cache=False, compile=False), "static": dict(static_cache=True, compile=False),
            "compile": dict(static_cache=True, compile=True)}


def build(size: str, device: str, dtype: str, variant: str, new_tokens: int, max_cache_len: int, attn: str):
    flags = VARIANTS[variant]
    if size == "smollm2_offline":
        from fern.llm.hf import HFCausalLM
        from fern.paths import models_dir

        return HFCausalLM(model=str(models_dir() / "smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                          device=device, dtype="float32" if dtype == "auto" else dtype, attn_implementation=attn,
                          max_new_tokens=new_tokens, ignore_eos=True, max_cache_len=max_cache_len, **flags)
    from fern.devices import resolve_torch_device
    from fern.llm.testing import random_hf_lm, word_tokenizer

    dev = resolve_torch_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    return random_hf_lm(size, device=dev, dtype=dtype, tokenizer=word_tokenizer(extra_words=corpus_words()),
                        attn_implementation=attn, max_new_tokens=new_tokens, ignore_eos=True,
                        max_cache_len=max_cache_len, **flags)


def one(lm, msgs) -> dict[str, Any]:
    from dataclasses import asdict

    from fern.events import CancelToken
    from fern.streams import drain

    _, stream_info = drain(lm.stream(msgs, CancelToken()))
    info = asdict(stream_info)
    n = info["n_tokens"]
    info["ms_per_token"] = 1000 * info["decode_s"] / (n - 1) if n > 1 else float("nan")
    return info


def bench_turn(lm, k: int, runs: int) -> dict[str, Any]:
    prev = conversation(k - 1) if k > 1 else [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": "Hello there ."}]
    cur = conversation(k)
    # Warm-up (first compile / graph capture / allocator growth), not counted.
    one(lm, prev)
    one(lm, cur)
    ttft, cold, mspt, reused = [], [], [], []
    prompt = 0
    for _ in range(runs):
        one(lm, prev)  # the cache now holds turn k-1, as in a live session
        info = one(lm, cur)
        ttft.append(1000 * info["ttft_s"])
        mspt.append(info["ms_per_token"])
        reused.append(info["reused_tokens"])
        prompt = info["prompt_tokens"]
        lm.reset_cache()
        cold.append(1000 * one(lm, cur)["ttft_s"])
    return {"turn": k, "prompt_tokens": prompt, "reused_tokens": int(statistics.median(reused)),
            "ttft_ms": statistics.median(ttft), "cold_ttft_ms": statistics.median(cold),
            "ms_per_token": statistics.median(mspt), "n_runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="smollm2_offline", choices=["smollm2_offline", "llama1b", "tiny"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: eager | sdpa | flash_attention_2")
    ap.add_argument("--variants", default=None, help="comma list of eager,static,compile (default: eager on CPU, "
                    "eager,compile on CUDA)")
    ap.add_argument("--turns", default="1,10,50")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    turns = [int(t) for t in args.turns.split(",")]
    variants = (args.variants or ("eager,compile" if args.device.startswith("cuda") else "eager")).split(",")
    # Static cache length: the longest prompt in this benchmark plus the reply, rounded up.
    max_cache_len = ((max(turns) * 110 + 400 + args.new_tokens) // 256 + 1) * 256
    try:
        import transformers

        tv = transformers.__version__
    except Exception:  # noqa: BLE001
        tv = "?"
    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available()
               else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads")
    print(f"# fern.bench.llm size={args.size} device={args.device} dtype={args.dtype} attn={args.attn} "
          f"new_tokens={args.new_tokens} runs={args.runs} | {machine} | torch {torch.__version__} "
          f"transformers {tv}", flush=True)
    results: list[dict[str, Any]] = []
    for variant in variants:
        t0 = time.perf_counter()
        try:
            lm = build(args.size, args.device, args.dtype, variant, args.new_tokens, max_cache_len, args.attn)
            load_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            one(lm, conversation(1))
            first_call_s = time.perf_counter() - t1  # includes compile / CUDA graph capture
            print(f"[{variant}] load {load_s:.1f} s, first call (compile/capture) {first_call_s:.1f} s", flush=True)
            for k in turns:
                r = bench_turn(lm, k, args.runs)
                r.update(variant=variant, load_s=load_s, first_call_s=first_call_s)
                results.append(r)
                # Complete figures per line, so a run cut by a timeout still reports what it measured.
                print(f"[{variant}] turn {k}: TTFT {r['ttft_ms']:.1f} ms (cold {r['cold_ttft_ms']:.1f} ms), "
                      f"{r['ms_per_token']:.2f} ms/token, prompt {r['prompt_tokens']} tok "
                      f"({r['reused_tokens']} cached)", flush=True)
            del lm
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - report the variant's failure and go on with the others
            print(f"[{variant}] FAILED: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            results.append({"variant": variant, "error": f"{type(e).__name__}: {e}"})

    print()
    print("| variant | turn | prompt tok | reused tok | TTFT ms (prefix cache) | TTFT ms (cold) | ms/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | FAILED: {r['error'][:80]} | | | | | |")
            continue
        print(f"| {r['variant']} | {r['turn']} | {r['prompt_tokens']} | {r['reused_tokens']} | {r['ttft_ms']:.1f} | "
              f"{r['cold_ttft_ms']:.1f} | {r['ms_per_token']:.2f} |")

    if os.environ.get("MLFLOW_TRACKING_URI"):
        try:
            import mlflow

            mlflow.set_experiment("fern-bench-llm")
            with mlflow.start_run(run_name=f"llm-{args.size}-{args.device}"):
                mlflow.log_params({"size": args.size, "device": args.device, "dtype": args.dtype, "attn": args.attn,
                                   "new_tokens": args.new_tokens, "runs": args.runs, "machine": machine,
                                   "torch": torch.__version__, "transformers": tv})
                for r in results:
                    if "error" in r:
                        continue
                    p = f"{r['variant']}.turn{r['turn']}"
                    mlflow.log_metrics({f"{p}.ttft_ms": r["ttft_ms"], f"{p}.cold_ttft_ms": r["cold_ttft_ms"],
                                        f"{p}.ms_per_token": r["ms_per_token"],
                                        f"{p}.prompt_tokens": r["prompt_tokens"],
                                        f"{r['variant']}.first_call_s": r["first_call_s"]})
        except Exception as e:  # noqa: BLE001
            print(f"MLflow logging failed: {e}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
