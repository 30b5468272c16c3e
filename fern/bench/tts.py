"""CSM TTS benchmark: ms/frame, time to first audio, RTF, Mimi ms/frame, peak VRAM, and stock transformers
``generate`` on the same model in the same run as the baseline ratio.

    python -m fern.bench.tts --size tiny                      # this CPU, tiny random config
    python -m fern.bench.tts --size full --device cuda        # full CSM-1B architecture, RANDOM weights
    python -m fern.bench.tts --size full --device cuda --kernels triton --variants triton:int8,triton:fp8

``--kernels``/``--weights`` pick the depth decoder's path (fern.tts.csm.fused) for the main figures; ``--variants``
adds, in the same run on the same model, the frame loop of other kernels:weights pairs (ms/frame, kernels/frame,
weight bytes read per frame and the share of ``--peak-tbps`` that is, graph capture time).

``--size full`` uses random weights (the ``random_weights`` switch: benchmarking only, the audio is noise), so the
figures measure speed, not quality. Figures are medians over ``--runs`` after a warm-up; graph capture and compile
times are reported separately. If MLFLOW_TRACKING_URI is set (and mlflow importable) the figures are logged there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

LINE_15_WORDS = "Sure, I can help with that: the next train to Boston leaves at half past seven tonight."


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(size: str, device: str, dtype: str):
    import torch

    from fern.tts.csm.loading import build_mimi, random_csm, resolve_dtype
    from fern.tts.csm.tiny import make_tiny_csm, make_tiny_mimi
    from fern.tts.csm.tokenizer import ByteTokenizer

    if size == "tiny":
        model = make_tiny_csm(device=device).to(resolve_dtype(dtype, device) if dtype != "auto" else torch.float32)
        mimi = make_tiny_mimi(device=device)
    else:
        model = random_csm(device, resolve_dtype(dtype, device))
        mimi = build_mimi(device)
    return model, ByteTokenizer(), mimi


def bench(args) -> dict:
    import torch

    with torch.no_grad():
        return _bench(args)


def _bench(args) -> dict:
    import torch

    from fern.events import CancelToken
    from fern.tts.csm.synthesizer import CsmSynthesizer

    device = args.device
    torch.manual_seed(0)
    if device.startswith("cuda"):
        from fern.optim import set_backend_flags

        set_backend_flags(tf32=True, cudnn_benchmark=False)
    t0 = time.perf_counter()
    model, tok, mimi = build(args.size, device, args.dtype)
    _sync(device)
    res: dict = {"size": args.size, "device": device, "build_s": time.perf_counter() - t0, "frames": args.frames}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    res["torch"] = torch.__version__
    import transformers

    res["transformers"] = transformers.__version__
    res["dtype"] = str(next(model.parameters()).dtype)

    t0 = time.perf_counter()
    synth = CsmSynthesizer(
        _modules=(model, tok, mimi), temperature=args.temperature, top_k=50, max_audio_s=args.frames / 12.5,
        first_chunk_frames=1, chunk_frames=args.chunk_frames, cuda_graphs=args.cuda_graphs, compile=args.compile,
        keep_history=False, warmup=True, device=device, kernels=args.kernels, weights=args.weights,
        backbone_kernels=args.backbone_kernels,
    )
    _sync(device)
    res["startup_s"] = time.perf_counter() - t0  # includes graph capture / compile and Mimi graph capture
    res["graph_capture_s"] = synth.engine.stats.get("graph_capture_s", 0.0)
    res["kernels"], res["weights"] = synth.engine.kernels, synth.engine.weights
    res["backbone_kernels"] = synth.engine.backbone_kernels
    # warm Mimi and the frame graph on the full length once more
    for _ in synth.stream(LINE_15_WORDS, CancelToken()):
        pass

    # 1) end to end: the SpeechSynthesizer stream (generation + streaming Mimi + host copies)
    ttfa, per_frame, rtf = [], [], []
    for _ in range(args.runs):
        _sync(device)
        t0 = time.perf_counter()
        first = None
        n = 0
        for chunk in synth.stream(LINE_15_WORDS, CancelToken()):
            if first is None:
                first = time.perf_counter() - t0
            n += len(chunk)
        total = time.perf_counter() - t0
        frames = synth.stats["frames"]
        ttfa.append(first * 1e3)
        per_frame.append(total / frames * 1e3)
        rtf.append(total / (n / 24000))
    res.update(ttfa_ms=statistics.median(ttfa), e2e_ms_per_frame=statistics.median(per_frame),
               rtf=statistics.median(rtf))

    # 2) the frame loop alone (no Mimi)
    seg = synth._segment(LINE_15_WORDS, 0)
    res["gen_ms_per_frame"] = _frame_loop_ms(synth.engine, seg, args)
    res.update(_bandwidth(synth.engine, res["gen_ms_per_frame"], args))
    res["backbone_ms_per_frame"] = _backbone_ms(synth.engine, seg, args)
    res["backbone_share"] = res["backbone_ms_per_frame"] / res["gen_ms_per_frame"]
    if args.compare_modules:
        res.update(_module_path(synth, model, seg, args))
    if not args.compile:  # compiled code runs Inductor kernels, not dispatched operators
        res.update(_kernel_counts(synth.engine, seg))
    if device.startswith("cuda"):
        try:
            res.update(_grid_barrier_us(device))
        except Exception as exc:  # noqa: BLE001 - a figure of its own: the rest of the run stands without it
            res["grid_barrier_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    res.update(_barrier_figures(synth.engine, res))
    if args.profile and device.startswith("cuda"):
        res.update(_profile(synth, seg, args))

    # 3) streaming Mimi alone
    frames = synth.last_frames.to(device).long()
    mimi_t = []
    with torch.no_grad():
        for _ in range(args.runs):
            synth.mimi.reset_streaming()
            _sync(device)
            t0 = time.perf_counter()
            for i in range(frames.shape[0]):
                synth._decode_frame(frames[i : i + 1])
            _sync(device)
            mimi_t.append((time.perf_counter() - t0) / frames.shape[0] * 1e3)
    res["mimi_ms_per_frame"] = statistics.median(mimi_t)

    # 4) stock transformers generate, same model, same prompt rows
    if args.baseline_frames > 0:
        emb = synth.engine.embed_segment(seg)
        mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        kw = dict(inputs_embeds=emb, attention_mask=mask, max_new_tokens=args.baseline_frames)
        if args.temperature > 0:
            kw.update(do_sample=True, temperature=args.temperature, top_k=50, depth_decoder_do_sample=True,
                      depth_decoder_temperature=args.temperature, depth_decoder_top_k=50)
        else:
            kw.update(do_sample=False)
        with torch.no_grad():
            model.generate(**{**kw, "max_new_tokens": 2})  # warm-up
            base = []
            for _ in range(max(1, args.baseline_runs)):
                _sync(device)
                t0 = time.perf_counter()
                out = model.generate(**kw)
                _sync(device)
                base.append((time.perf_counter() - t0) / out.shape[1] * 1e3)
        res["stock_ms_per_frame"] = statistics.median(base)
        res["speedup_vs_stock_gen"] = res["stock_ms_per_frame"] / res["gen_ms_per_frame"]
        res["speedup_vs_stock_e2e"] = res["stock_ms_per_frame"] / res["e2e_ms_per_frame"]
    if device.startswith("cuda"):
        res["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for variant in [v for v in (args.variants or "").split(",") if v]:
        v = res[f"variant_{variant}"] = _variant(model, seg, variant, synth.engine, args, res)
        # progress, and the figures so far on disk: a run cut short by its time box keeps what it measured
        print(f"variant {variant}: " + (f"FAILED {v['error']}" if "error" in v else
                                         f"{v['gen_ms_per_frame']:.3f} ms/frame"), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(res, partial=True), f, indent=1)
    if args.phase_times:
        try:
            res["phase_times"] = phase_times(model, seg, args.phase_times, synth.engine)
        except Exception as exc:  # noqa: BLE001 - a figure of its own: the rest of the run stands without it
            res["phase_times"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return res


def phase_times(model, seg, variant: str, main_engine, frames: int = 3) -> dict:
    """Where a persistent variant's frame goes inside its kernels, phase by phase (GPU only: the kernels read PTX
    clocks, TIMING=1 / timing=1 added to its launch shapes): program 0's work and barrier wait per phase kind, from
    the last of ``frames`` eager frames (the first compiles). {"depth": ..., "backbone": ...} as
    kernels.phase_breakdown, for whichever of the two runs persistent."""
    from fern.tts.csm.engine import CsmEngine

    kernels, weights, backbone, blocks, bb_blocks = parse_variant(variant)
    if "persistent" not in (kernels, backbone):
        raise ValueError(f"phase times need a persistent kernel, got {variant!r}")
    engine = CsmEngine(model, kernels=kernels, weights=weights, backbone_kernels=backbone,
                       blocks=dict(blocks, TIMING=1) if kernels == "persistent" else blocks or None,
                       backbone_blocks=dict(bb_blocks, timing=1) if backbone == "persistent" else bb_blocks or None)
    engine.temperature, engine.top_k = main_engine.temperature, main_engine.top_k
    engine.prepare([], seg)
    for _ in range(frames):
        engine._run_frame()
    _sync(str(engine.device))
    out = {"variant": variant}
    if kernels == "persistent":
        out["depth"] = engine.depth.phase_times()
    if backbone == "persistent":
        out["backbone"] = engine.bb_fused.phase_times()
    return out


def frame_weight_bytes(engine) -> int:
    """Bytes of weights one frame reads: the backbone's layers, final norm, lm_head and depth projector once, and
    the depth decoder's per step (its own figure for the fused path). Embedding rows read per frame are ignored."""
    m = engine.model
    nbytes = lambda mod: sum(p.numel() * p.element_size() for p in mod.parameters())  # noqa: E731
    total = nbytes(m.backbone_model.layers) + nbytes(m.backbone_model.norm) + nbytes(m.lm_head)
    total += nbytes(m.depth_decoder.model.inputs_embeds_projector)
    if engine.depth is not None:
        return total + engine.depth.weight_bytes_per_frame()
    depth = m.depth_decoder
    steps = engine.n_cb - 1  # positions 0 and 1 share one two-row step on the torch path
    return total + steps * (nbytes(depth.model.layers) + nbytes(depth.model.norm)) + nbytes(depth.codebooks_head)


def _bandwidth(engine, ms_per_frame: float, args) -> dict:
    b = frame_weight_bytes(engine)
    return {"weight_gb_per_frame": b / 1e9, "bandwidth_floor_ms": b / (args.peak_tbps * 1e12) * 1e3,
            "bandwidth_share": b / (ms_per_frame / 1e3) / (args.peak_tbps * 1e12)}


def _kernel_counts(engine, seg) -> dict:
    from fern.bench.opcount import count_kernels

    engine.prepare([], seg)
    counts = count_kernels(engine._frame)
    return {"ops_per_frame": float(sum(counts.values())),
            "triton_launches_per_frame": float(sum(v for k, v in counts.items() if k.startswith("triton:")))}


def _variant(model, seg, variant: str, main_engine, args, main: dict) -> dict:
    """One kernels:weights[:backbone][@block=value;...] variant's frame loop on the same model, same run: ms/frame,
    kernels/frame, bytes, share. ``backbone``: the backbone's kernels (torch, the default, triton or persistent). The
    part after @ overrides the depth decoder's Triton launch shapes (fused.GPU_BLOCKS / FRAME_GPU_BLOCKS keys), and
    the backbone's with keys prefixed ``bb.`` (``persistent:bf16:persistent@bb.num_warps=4;bb.qkv_bp=8``)."""
    import torch

    from fern.tts.csm.engine import CsmEngine

    tuning = variant.partition("@")[2]
    try:
        kernels, weights, backbone, blocks, bb_blocks = parse_variant(variant)
        t0 = time.perf_counter()
        engine = CsmEngine(model, cuda_graphs=args.cuda_graphs, kernels=kernels, weights=weights,
                           blocks=blocks or None, backbone_kernels=backbone, backbone_blocks=bb_blocks or None)
        engine.temperature, engine.top_k = main_engine.temperature, main_engine.top_k
        engine.prepare([], seg)
        engine._run_frame()  # graph capture
        _sync(args.device)
        out = {"kernels": engine.kernels, "weights": engine.weights, "backbone_kernels": engine.backbone_kernels,
               "blocks": tuning,
               "startup_s": time.perf_counter() - t0,
               "graph_capture_s": engine.stats.get("graph_capture_s", 0.0)}
        out["gen_ms_per_frame"] = _frame_loop_ms(engine, seg, args)
        if any(part is not None and part.barrier_timed_out() for part in (engine.depth, engine.bb_fused)):
            raise RuntimeError("a persistent kernel gave up waiting at a grid barrier: its figures are void")
        out.update(_bandwidth(engine, out["gen_ms_per_frame"], args))
        out.update(_kernel_counts(engine, seg))
        out.update(_barrier_figures(engine, main))
        if engine.backbone_kernels != main_engine.backbone_kernels:  # its own backbone: its own backbone time
            out["backbone_ms_per_frame"] = _backbone_ms(engine, seg, args)
        if args.profile and args.device.startswith("cuda"):
            from fern.bench.opcount import profile_cuda_kernels

            engine.prepare([], seg)
            out["profile_replay"] = profile_cuda_kernels(engine._run_frame, min(args.frames, 20))
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return out
    except Exception as exc:  # one variant failing must not lose the others' figures
        return {"error": f"{type(exc).__name__}: {exc}"}


def parse_variant(variant: str) -> tuple[str, str, str, dict, dict]:
    """``kernels:weights[:backbone][@block=value;...]`` -> (kernels, weights, backbone kernels, the depth decoder's
    launch shapes, the backbone's: keys prefixed ``bb.``). Checks names and keys against the defaults they override
    (``fused`` / ``fused_backbone``'s GPU_BLOCKS or FRAME_GPU_BLOCKS) without building anything, so a typo in a device
    recipe's variant fails on this machine's tests, not in a scarce device session. ValueError on anything wrong."""
    from fern.tts.csm import fused, fused_backbone
    from fern.tts.csm import kernels as K
    from fern.tts.csm.engine import BACKBONE_KERNELS, KERNELS

    spec, _, tuning = variant.partition("@")
    kernels, _, rest = spec.partition(":")
    weights, _, backbone = rest.partition(":")
    weights, backbone = weights or "bf16", backbone or "torch"
    for what, value, known in (("kernels", kernels, KERNELS), ("weights", weights, fused.WEIGHT_KINDS),
                               ("backbone kernels", backbone, BACKBONE_KERNELS)):
        if value not in known:
            raise ValueError(f"variant {variant!r}: {what} must be one of {known}, got {value!r}")
    blocks = {}
    for kv in filter(None, tuning.split(";")):
        key, eq, value = kv.partition("=")
        if not eq or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"variant {variant!r}: {kv!r} is not block=integer")
        blocks[key.strip()] = int(value)
    bb_blocks = {k[3:]: blocks.pop(k) for k in list(blocks) if k.startswith("bb.")}
    for value in (blocks.get("PREFETCH", 0), bb_blocks.get("prefetch", 0)):
        K.check_prefetch(value)  # its value; the device is checked when the engine is built
    for value in (blocks.get("TIMING", 0), bb_blocks.get("timing", 0)):
        K.check_timing(value)
    K.check_stages(blocks)
    K.check_stages(bb_blocks)
    if blocks:
        if kernels not in ("triton", "persistent", "auto"):
            raise ValueError(f"variant {variant!r}: launch shapes need triton, persistent or auto kernels")
        K.check_blocks(blocks, fused.GPU_BLOCKS if kernels == "triton" else fused.FRAME_GPU_BLOCKS,
                       f"the depth decoder's kernels ({kernels})")
    if bb_blocks:
        if backbone == "torch":
            raise ValueError(f"variant {variant!r}: bb. launch shapes need a triton or persistent backbone")
        K.check_blocks(bb_blocks, fused_backbone.GPU_BLOCKS if backbone == "triton"
                       else fused_backbone.FRAME_GPU_BLOCKS, f"the backbone's kernels ({backbone})")
    return kernels, weights, backbone, blocks, bb_blocks


def launch_barrier_loop(sync, n: int, grid: int) -> None:
    """``n`` grid-wide barriers in one launch of ``grid`` programs, 8 warps each (as the persistent kernels run)."""
    from fern.tts.csm import kernels as K
    from fern.tts.csm.fused import MAX_SPINS

    K.launch("_barrier_loop", (grid,), sync, n, MAX_SPINS=MAX_SPINS, num_warps=8)


def _grid_barrier_us(device: str, short: int = 256, long: int = 4352, runs: int = 5) -> dict:
    """What one grid-wide barrier of the persistent kernels costs on this GPU (us): a launch of nothing but ``long``
    barriers against one of ``short`` (the launch's own cost cancels), one program per SM and 8 warps, as the
    persistent kernels run; the median of ``runs``. CUDA only."""
    import torch

    from fern.tts.csm import kernels as K

    grid = torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    sync = torch.zeros(4, device=device, dtype=torch.int32)

    def ms(n: int) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch_barrier_loop(sync, n, grid)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    with K.no_counting():
        ms(short)  # compilation
        per = [(ms(long) - ms(short)) / (long - short) * 1e3 for _ in range(runs)]
    passed, timed_out = int(sync[3]), bool(sync[2])
    if timed_out or passed != short:
        raise RuntimeError(f"the barrier loop passed {passed} of {short} barriers (timed out: {timed_out})")
    return {"grid_barrier_us": statistics.median(per), "grid_barrier_programs": grid}


def _barrier_figures(engine, main: dict) -> dict:
    """Grid-wide barriers per frame of the engine's persistent kernels, and what they cost at the measured
    ``grid_barrier_us`` (an estimate: a barrier inside a kernel also waits for the slowest program's phase)."""
    n = sum(part.barriers_per_frame() for part in (engine.depth, engine.bb_fused) if part is not None)
    out = {"barriers_per_frame": float(n)}
    if n and "grid_barrier_us" in main:
        out["barrier_ms_per_frame"] = n * main["grid_barrier_us"] / 1e3
    return out


def _frame_loop_ms(engine, seg, args) -> float:
    """Median ms per frame of ``engine``'s frame loop alone (no Mimi) over ``args.runs`` runs of ``args.frames``."""
    times = []
    for _ in range(args.runs):
        engine.prepare([], seg)
        _sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.frames):
            engine._run_frame()
        _sync(args.device)
        times.append((time.perf_counter() - t0) / args.frames * 1e3)
    return statistics.median(times)


def _backbone_ms(engine, seg, args) -> float:
    """Median ms of the backbone's part of a frame alone (its 16 layers, codebook 0 and the depth decoder's input
    rows), replayed as a CUDA graph of ``args.frames`` steps where the frame loop uses graphs. Set against
    ``gen_ms_per_frame`` it says what fusing the backbone could save once the depth decoder is one launch: the
    question issue 12 leaves to the profile."""
    import torch

    table = engine._dd_tables[0]

    def steps() -> None:
        for _ in range(args.frames):
            noise = engine._frame_noise(rows=1)
            engine._bb_step(engine.emb_in, engine.pos, None if noise is None else noise[0], table)
            engine.pos.add_(1)

    run = steps
    if engine.cuda_graphs:
        engine.prepare([], seg)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            steps()  # warm-up (and compilation) outside the graph
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            steps()
        run = graph.replay
    times = []
    for _ in range(args.runs):
        engine.prepare([], seg)
        _sync(args.device)
        t0 = time.perf_counter()
        run()
        _sync(args.device)
        times.append((time.perf_counter() - t0) / args.frames * 1e3)
    return statistics.median(times)


def _module_path(synth, model, seg, args) -> dict:
    """The same frame loop through the transformers modules (``CsmEngine(fast=False)``), same run, same flags:
    what the fast path's fused operators buy."""
    from fern.bench.opcount import count_ops
    from fern.tts.csm.engine import CsmEngine

    engine = CsmEngine(model, cuda_graphs=args.cuda_graphs, fast=False)
    engine.temperature, engine.top_k = synth.engine.temperature, synth.engine.top_k
    engine.prepare([], seg)
    for _ in range(3):  # graph capture and warm-up
        engine._run_frame()
    gen_ms = _frame_loop_ms(engine, seg, args)
    engine.prepare([], seg)
    out = {"modules_gen_ms_per_frame": gen_ms,
           "modules_ops_per_frame": float(sum(count_ops(engine._frame).values()))}
    del engine
    return out


def _profile(synth, seg, args) -> dict:
    """Where a frame's time goes on the GPU: kernels per frame and their kinds, eagerly and as the replayed graph."""
    from fern.bench.opcount import profile_cuda_kernels

    out = {}
    engine = synth.engine
    for label, fn in (("eager", engine._frame), ("replay", engine._run_frame)):
        try:
            engine.prepare([], seg)
            out[f"profile_{label}"] = profile_cuda_kernels(fn, min(args.frames, 20))
        except Exception as exc:  # the figures above stand without the profile
            out[f"profile_{label}"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _print_profile(label: str, prof: dict) -> None:
    if "error" in prof:
        print(f"  profile {label}: failed: {prof['error']}")
        return
    shares = ", ".join(f"{k[6:]} {v:.0%}" for k, v in prof.items() if k.startswith("share_"))
    print(f"  profile {label}: {prof['kernels_per_repeat']:.0f} kernels/frame, GPU busy "
          f"{prof.get('kernel_busy_ms_per_repeat', 0):.2f} of {prof.get('kernel_span_ms_per_repeat', 0):.2f} ms span "
          f"({shares})")
    for k in prof.get("top_kernels", [])[:8]:
        print(f"    {k['share']:5.1%} {k['per_repeat']:6.1f}/frame {k['avg_us']:7.2f} us  {k['name']}")


def _print_phase_times(pt: dict) -> None:
    if "error" in pt:
        print(f"  phase times FAILED {pt['error']}")
        return
    print(f"  phase times of {pt['variant']} (program 0, per phase kind: mean work and barrier wait, how many per "
          f"frame, ms per frame)")
    for part in ("depth", "backbone"):
        if part not in pt:
            continue
        print(f"    {part}: {pt[part]['launch_ms']:.3f} ms per launch ({pt[part]['ns_per_cycle']:.3f} ns per cycle)")
        for kind, r in pt[part]["phases"].items():
            print(f"      {kind:15s} work {r['work_us']:8.2f} us  wait {r['wait_us']:7.2f} us  x{r['per_launch']:4d}"
                  f"  = {r['ms_per_launch']:.3f} ms")


def _log_mlflow(res: dict, args) -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    try:
        import mlflow
    except ImportError:
        print("MLFLOW_TRACKING_URI is set but mlflow is not installed: figures not logged")
        return
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("fern-bench-tts")
    with mlflow.start_run(run_name=f"csm-{args.size}-{args.device}-{args.kernels}-{args.weights}"
                                   f"-bb_{args.backbone_kernels}"):
        mlflow.log_params({k: v for k, v in res.items() if isinstance(v, str)} | {
            "cuda_graphs": args.cuda_graphs, "compile": args.compile, "random_weights": True,
            "variants": args.variants})
        flat = dict(res)
        for key, v in res.items():  # variants: one metric per figure, prefixed with the variant
            if key.startswith("variant_") and isinstance(v, dict):
                flat.update({f"{key}.{k}": x for k, x in v.items() if isinstance(x, (int, float))})
        for part, pt in res.get("phase_times", {}).items():  # phase_times.depth.down.work_us, ...
            if isinstance(pt, dict):
                flat[f"phase_times.{part}.launch_ms"] = pt["launch_ms"]
                flat.update({f"phase_times.{part}.{kind}.{k}": x for kind, r in pt["phases"].items()
                             for k, x in r.items()})
        # metric names allow letters, digits and _ - . / space: a variant's ":", "@", "=", ";" become "_"
        mlflow.log_metrics({re.sub(r"[^\w\-. /]", "_", k): float(v) for k, v in flat.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 50 on cuda, 12 on cpu)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--baseline-frames", type=int, default=None, help="0 skips stock generate")
    p.add_argument("--baseline-runs", type=int, default=1)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-compare-modules", dest="compare_modules", action="store_false",
                   help="skip timing the same loop through the transformers modules (CsmEngine(fast=False))")
    p.add_argument("--profile", action="store_true", help="CUDA: kernels per frame, by kind, eager and replayed")
    p.add_argument("--kernels", default="torch", choices=["torch", "triton", "persistent", "auto"],
                   help="depth decoder kernels of the main figures (tts.kernels)")
    p.add_argument("--weights", default="bf16", choices=["bf16", "int8", "fp8"],
                   help="depth decoder weights of the main figures (optim.tts_weights)")
    p.add_argument("--backbone-kernels", default="torch", choices=["torch", "triton", "persistent", "auto"],
                   help="the backbone's step of the main figures (tts.backbone_kernels)")
    p.add_argument("--variants", default="",
                   help="comma list of kernels:weights[:backbone][@block=value;...], e.g. triton:int8,"
                        "persistent:bf16@num_warps=4,persistent:bf16:persistent")
    p.add_argument("--peak-tbps", type=float, default=4.8, help="memory bandwidth for the share (H200: 4.8 TB/s)")
    p.add_argument("--phase-times", default="", metavar="VARIANT",
                   help="GPU: where this persistent variant's frame goes inside its kernels, phase by phase "
                        "(e.g. persistent:bf16:persistent; the kernels time themselves with TIMING=1)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    if args.frames is None:
        args.frames = 50 if cuda else 12
    if args.baseline_frames is None:
        args.baseline_frames = 20 if cuda else 6
    if args.size == "full":
        print("NOTE: --size full builds CSM-1B with RANDOM weights (benchmarking only; the audio is noise)")
    res = bench(args)
    res["cuda_graphs"] = bool(args.cuda_graphs and cuda)
    res["compile"] = bool(args.compile)
    print(f"CSM {args.size} on {res.get('gpu', args.device)} ({res['dtype']}, torch {res['torch']}, "
          f"transformers {res['transformers']}, cuda_graphs={res['cuda_graphs']}, compile={res['compile']}, "
          f"kernels={res['kernels']}, weights={res['weights']}, backbone_kernels={res['backbone_kernels']})")
    keys = ("gen_ms_per_frame", "backbone_ms_per_frame", "backbone_share", "e2e_ms_per_frame", "ttfa_ms", "rtf",
            "mimi_ms_per_frame", "stock_ms_per_frame",
            "speedup_vs_stock_gen", "speedup_vs_stock_e2e", "peak_vram_gib", "startup_s", "graph_capture_s",
            "ops_per_frame", "triton_launches_per_frame", "barriers_per_frame", "grid_barrier_us",
            "barrier_ms_per_frame", "weight_gb_per_frame", "bandwidth_floor_ms",
            "bandwidth_share", "modules_gen_ms_per_frame", "modules_ops_per_frame")
    for key in keys:
        if key in res:
            print(f"  {key:26s} {res[key]:10.3f}")
    if "grid_barrier_error" in res:
        print(f"  grid barrier timing failed: {res['grid_barrier_error']}")
    for label in ("eager", "replay"):
        if f"profile_{label}" in res:
            _print_profile(label, res[f"profile_{label}"])
    for key, v in res.items():
        if key.startswith("variant_"):
            if "error" in v:
                print(f"  {key}: FAILED {v['error']}")
                continue
            bb_ms = v.get("backbone_ms_per_frame", res["backbone_ms_per_frame"])
            share = bb_ms / v["gen_ms_per_frame"]
            print(f"  {key} (ran {v['kernels']}:{v['weights']}:{v['backbone_kernels']}): "
                  f"{v['gen_ms_per_frame']:.3f} ms/frame (backbone {bb_ms:.3f} ms, {share:.0%}), "
                  f"{v['ops_per_frame']:.0f} kernels/frame ({v['triton_launches_per_frame']:.0f} Triton), "
                  f"{v['barriers_per_frame']:.0f} barriers/frame, "
                  f"{v['weight_gb_per_frame']:.2f} GB/frame, bandwidth share {v['bandwidth_share']:.1%}, "
                  f"capture {v['graph_capture_s']:.2f} s")
            if "profile_replay" in v:
                _print_profile("replay", v["profile_replay"])
    if "phase_times" in res:
        _print_phase_times(res["phase_times"])
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    _log_mlflow(res, args)
    return res


if __name__ == "__main__":
    main()
