"""Token agreement of the depth decoder's weight variants (optim.tts_weights=int8|fp8, and the fused bf16 path) with a
reference frame loop, on RANDOM weights. Real-weight quality is NOT measured by this (no real weights here).

    python -m fern.bench.csm_quant --size tiny                                  # CPU, fp32 reference
    python -m fern.bench.csm_quant --size full --device cuda --backend triton   # CSM-1B shapes, bf16 model

Teacher-forced: the reference engine (the torch fast path, greedy) runs ``--frames`` frames; for each frame every
variant's depth decoder gets the reference's backbone state and codebook 0, and before each step the reference's
previous token, so one disagreement does not cascade. Agreement = share of codebooks 1..31 equal to the reference.
``--ref-dtype float32`` runs the reference on an fp32 copy of the model (the variants keep the model's dtype).
"""

from __future__ import annotations

import argparse
import json
import os


def agreement(model, ref_model, frames: int, kinds: list[str], backend: str, text_ids: list[int],
              ref_fast: bool = True, modes: tuple[str, ...] = ("steps",)) -> dict:
    """Teacher-forced token agreement of each weight kind's fused depth decoder (``backend``) with the reference
    engine over ``ref_model`` (``ref_fast=False``: through the transformers modules). ``modes``: the fused
    decoder's step kernels (keys: the kind) and/or its persistent kernel (``frame``; keys: ``frame_<kind>``)."""
    import torch

    from fern.tts.csm.engine import CsmEngine, Segment
    from fern.tts.csm.fused import FusedDepth

    ref = CsmEngine(ref_model, fast=ref_fast)
    host = CsmEngine(model)  # owns the variants' weights and tables
    variants = {(k if m == "steps" else f"{m}_{k}"): FusedDepth(host, backend, k, mode=m) for m in modes for k in kinds}
    seg = Segment(torch.tensor(text_ids))
    ref.prepare([], seg)
    same = {k: 0 for k in variants}
    total = 0
    with torch.no_grad():
        for _ in range(frames):
            c0, x = ref._bb_step(ref.emb_in, ref.pos, None, ref._dd_tables[0])  # rewritten identically by the frame
            ref._run_frame()
            want = ref.frame_out[0].clone()
            x = x.to(host.dtype)
            for k, depth in variants.items():
                got = depth.run(x, c0, None, 0, force=want)[0]
                same[k] += int((got[1:] == want[1:]).sum())
            total += want.numel() - 1
    return {k: same[k] / total for k in variants} | {"codebooks_compared": total}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto", help="the model's dtype (auto: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--ref-dtype", default=None, help="reference dtype (default: the model's)")
    p.add_argument("--backend", choices=["torch", "triton"], default="torch",
                   help="variants through the Triton kernels or their torch reference (same math)")
    p.add_argument("--kinds", default="bf16,int8,fp8")
    p.add_argument("--modes", default="steps", help="comma list: steps (step kernels), frame (the persistent one)")
    p.add_argument("--frames", type=int, default=None, help="default 24 (tiny), 12 (full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.backend == "triton" and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before transformers imports Triton
    from fern.bench.tts import build

    frames = args.frames or (24 if args.size == "tiny" else 12)
    torch.manual_seed(args.seed)
    model, _, _ = build(args.size, args.device, args.dtype)
    ref_model = model
    if args.ref_dtype:
        import copy

        from fern.tts.csm.loading import resolve_dtype

        ref_model = copy.deepcopy(model).to(resolve_dtype(args.ref_dtype, args.device))
    kinds = [k for k in args.kinds.split(",") if k]
    modes = tuple(m for m in args.modes.split(",") if m)
    res = agreement(model, ref_model, frames, kinds, args.backend, list(range(1, 25)), modes=modes)
    keys = [k for k in res if k != "codebooks_compared"]
    res.update(size=args.size, device=args.device, backend=args.backend, frames=frames,
               dtype=str(next(model.parameters()).dtype), ref_dtype=str(next(ref_model.parameters()).dtype))
    print(f"CSM {args.size} depth decoder, RANDOM weights, {frames} frames teacher-forced, variants through "
          f"{args.backend}, model {res['dtype']}, reference {res['ref_dtype']} torch fast path (greedy)")
    for k in keys:
        print(f"  {k:10s} token agreement {res[k]:.4f}")
    print("  real-weight quality is unverified: random weights only")
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        try:
            import mlflow

            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("fern-bench-tts")
            with mlflow.start_run(run_name=f"csm-quant-{args.size}-{args.device}-{args.backend}"):
                mlflow.log_params({k: v for k, v in res.items() if isinstance(v, str)} | {"random_weights": True})
                mlflow.log_metrics({f"agreement_{k}": res[k] for k in keys})
        except ImportError:
            print("MLFLOW_TRACKING_URI is set but mlflow is not installed: figures not logged")
    return res


if __name__ == "__main__":
    main()
