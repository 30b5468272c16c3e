"""CSM LoRA training benchmark: samples/s on ~10 s clips, peak memory, with and without depth-decoder amortisation,
and model FLOP utilisation (MFU).

    python -m fern.bench.train --size full --device cuda     # CSM-1B architecture, RANDOM weights (speed only)
    python -m fern.bench.train --size tiny --device cpu      # smoke run

The step is the one train.py runs (fern.train.csm_loss: LoRA r=32 on the backbone and depth-decoder projections,
transformers' CSM loss, AdamW), on synthetic batches: ``--batch`` clips of ``--clip-s`` seconds (12.5 frames/s + the
EOS frame) after ``--text-tokens`` text rows; the audio codes are random (Mimi runs once per clip in training and is
cached, so it is not part of a step). On CUDA the base weights are bf16 and the step runs under bf16 autocast (what
``trainer.precision=bf16-mixed`` does). Figures are medians of ``--steps`` timed steps after ``--warmup`` steps,
the variants' steps interleaved so that they are compared under the same conditions.

MFU counts the matmul FLOPs a LoRA step needs: forward 2*N*tokens for each stack (backbone on every row, depth
decoder on 32 positions of each trained frame, heads, attention scores), and the same again for the backward pass
through activations (frozen weights get no gradient; the LoRA weight gradients are negligible): 4*N*tokens in all,
not the 6*N*tokens of full training. ``anchor_workload_s`` projects the Unsloth notebook's workload (60 steps of 8
clips; 314 s on a T4) from the measured step time. Figures are logged to MLflow (the project's store unless
``--tracking-uri`` / $MLFLOW_TRACKING_URI says otherwise; ``--no-mlflow`` to skip).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


def build(size: str, device: str):
    import torch
    from peft import LoraConfig, get_peft_model

    from fern.train.csm_loss import CSM_LORA_TARGETS, tiny_model

    if size == "tiny":
        model = tiny_model(0)
        dtype = torch.float32
    else:
        from transformers import CsmConfig, CsmForConditionalGeneration

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        with torch.device(device):
            model = CsmForConditionalGeneration(CsmConfig())
        model = model.to(dtype)
    model.codec_model = None
    # task=csm_lora's default LoRA (fern.train.csm.CsmLoraTaskConfig)
    model = get_peft_model(model.to(device), LoraConfig(r=32, lora_alpha=32, target_modules=CSM_LORA_TARGETS))
    model.train()
    return model, dtype


def synthetic_batch(batch: int, clip_s: float, text_tokens: int, device: str, seed: int = 0):
    import torch

    from fern.train.csm_loss import collate

    g = torch.Generator().manual_seed(seed)
    frames = round(clip_s * 12.5)
    items = [{"text_ids": torch.randint(3, 250, (text_tokens,), generator=g).tolist(),
              "codes": torch.randint(0, 2048, (frames, 32), generator=g).tolist()} for _ in range(batch)]
    return {k: v.to(device) for k, v in collate(items).items()}


def step_flops(model, batch, amortise: float) -> float:
    """Matmul FLOPs of one LoRA training step (see the module docstring)."""
    base = model.get_base_model()
    cfg, dcfg = base.config, base.config.depth_decoder_config
    rows = int(batch["attention_mask"].sum())
    frames = int((batch["labels"][..., 0] != -100).sum())
    trained = frames if amortise >= 1 else max(1, math.ceil(amortise * frames))
    n_backbone = sum(p.numel() for n, p in base.backbone_model.layers.named_parameters() if "lora_" not in n)
    n_depth = sum(p.numel() for n, p in base.depth_decoder.model.layers.named_parameters() if "lora_" not in n)
    n_proj = sum(p.numel() for p in base.depth_decoder.model.inputs_embeds_projector.parameters())
    seq = batch["attention_mask"].shape[1]
    fwd = 2 * rows * (n_backbone + cfg.hidden_size * cfg.vocab_size)  # layers + codebook-0 head
    fwd += 4 * cfg.num_hidden_layers * cfg.hidden_size * seq * rows  # attention scores + weighted sum (full square)
    depth_pos = 32 * trained
    fwd += 2 * depth_pos * (n_depth + n_proj) + 2 * 31 * trained * dcfg.hidden_size * dcfg.vocab_size
    fwd += 4 * dcfg.num_hidden_layers * dcfg.hidden_size * 32 * depth_pos
    return 2.0 * fwd


def bench(model, batch, shares: list[float], steps: int, warmup: int, device: str, dtype) -> dict[float, dict]:
    """Median step time per amortisation share, steps interleaved across the shares (same machine state for each:
    a busy machine slows all of them alike, not one of them). Peak memory is measured per share, on CUDA."""
    import torch

    from fern.train.csm_loss import csm_loss

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuda = device.startswith("cuda")

    def one(share: float) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and dtype == torch.bfloat16):
            loss = csm_loss(model, batch, share).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    peak: dict[float, float] = {}
    for share in shares:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            one(share)
        if cuda:
            peak[share] = torch.cuda.max_memory_allocated() / 2**30
    times: dict[float, list[float]] = {s: [] for s in shares}
    for _ in range(steps):
        for share in shares:
            t0 = time.perf_counter()
            one(share)
            times[share].append(time.perf_counter() - t0)
    n = int(batch["text"].shape[0])
    out = {}
    for share in shares:
        step_s = statistics.median(times[share])
        flops = step_flops(model, batch, share)
        out[share] = {"amortise": share, "step_s": step_s, "samples_per_s": n / step_s,
                      "tflops_per_s": flops / step_s / 1e12, "anchor_workload_s": 60 * step_s * (8 / n)}
        if cuda:
            out[share]["peak_mem_gib"] = peak[share]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default 8; 2 on cpu)")
    p.add_argument("--clip-s", type=float, default=None, help="seconds per clip (default 10; 2 on cpu)")
    p.add_argument("--text-tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10; 7 on cpu)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amortise", default="0.0625,1", help="comma-separated depth-decoder shares to compare")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (MFU denominator)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device == "cpu"
    batch_n = args.batch or (2 if cpu else 8)
    clip_s = args.clip_s or (2.0 if cpu else 10.0)
    steps = args.steps or (7 if cpu else 10)
    torch.manual_seed(0)
    if args.size == "full":
        print("NOTE: --size full builds CSM-1B with RANDOM weights (benchmarking only)")
    t0 = time.perf_counter()
    model, dtype = build(args.size, device)
    build_s = time.perf_counter() - t0
    batch = synthetic_batch(batch_n, clip_s, args.text_tokens, device)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    res: dict = {"size": args.size, "device": device, "gpu": gpu, "dtype": str(dtype).replace("torch.", ""),
                 "torch": torch.__version__, "transformers": transformers.__version__, "batch": batch_n,
                 "clip_s": clip_s, "rows_per_sample": int(batch["attention_mask"].shape[1]), "build_s": build_s,
                 "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                 "total_params": sum(p.numel() for p in model.parameters())}
    shares = [float(x) for x in args.amortise.split(",")]
    for share, r in bench(model, batch, shares, steps, args.warmup, device, dtype).items():
        if peak and not cpu:
            r["mfu"] = r["tflops_per_s"] / peak
        tag = "amortised" if share < 1 else "full_depth"
        res.update({f"{tag}.{k}": v for k, v in r.items()})
    if "amortised.step_s" in res and "full_depth.step_s" in res:
        res["amortisation_speedup"] = res["full_depth.step_s"] / res["amortised.step_s"]
    print(f"CSM LoRA training, {args.size} on {gpu} ({res['dtype']}, torch {res['torch']}, transformers "
          f"{res['transformers']}), batch {batch_n} x {clip_s:g} s clips, {res['trainable_params']:,} trainable of "
          f"{res['total_params']:,} parameters")
    for key, value in res.items():
        if isinstance(value, float):
            print(f"  {key:34s} {value:12.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.mlflow:
        _log_mlflow(res, args.tracking_uri)
    return res


def _log_mlflow(res: dict, uri: str | None) -> None:
    from fern.tracking.mlflow_tracker import MlflowTracker

    try:
        tracker = MlflowTracker("fern-bench-train", uri, run_name=f"csm-lora-{res['size']}-{res['device']}",
                                tags={"random_weights": "true"})
    except ImportError:
        print("mlflow is not installed: figures not logged")
        return
    try:
        tracker.log_params({k: v for k, v in res.items() if not isinstance(v, float)})
        tracker.log_metrics({k: v for k, v in res.items() if isinstance(v, float)})
    finally:
        tracker.close()
    print(f"mlflow run {tracker.run_id} in {tracker.display_uri}")


if __name__ == "__main__":
    main()
