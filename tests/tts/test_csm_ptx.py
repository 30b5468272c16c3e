"""The fused depth decoder's kernels compile for the H100 / H200 (sm_90) exactly as the engine launches them at
CSM-1B's shapes, without a GPU (fern.bench.ptx: Triton compiles for a named target and ships ptxas), and stay out of
local memory. A kernel that does not compile for the GPU would otherwise be found only in a scarce device session
(a PTX modifier clash in the head kernel was, here, before any GPU ran it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.models  # ~30 s of compiling: the full tier


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    # a process of its own: Triton's interpreter mode (set for the kernel tests) cannot compile for a GPU
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "fern.bench.ptx", "--json", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def test_every_kernel_compiles_for_sm90(report):
    rows, stdout = report
    assert {(r["mode"], r["weights"]) for r in rows} == {(m, k) for m in ("steps", "frame")
                                                          for k in ("bf16", "int8", "fp8")} | {
        ("backbone", "bf16"), ("backbone_frame", "bf16"), ("barrier", "bf16")}
    failed = [(r["mode"], r["weights"], r["kernel"], r["error"]) for r in rows if "error" in r]
    assert not failed, failed
    assert "FAILED" not in stdout


def test_launches_per_frame_at_csm1b_shapes(report):
    """4 depth-decoder layers x 32 positions per step kernel, 31 heads; the persistent kernels: one launch; the
    backbone's step: one launch per kernel and layer (16)."""
    rows, _ = report
    for r in rows:
        if r["mode"] == "backbone":
            assert r["launches_per_frame"] == 16, r
            continue
        want = {"norm_qkv_cache": 128, "attn_o_residual": 128, "norm_gateup_swiglu": 128, "down_residual": 128,
                "norm_head_sample": 31, "depth_frame": 1, "backbone_frame": 1, "barrier_loop": 1}[r["kernel"]]
        assert r["launches_per_frame"] == want, r
    assert {r["kernel"] for r in rows if r["mode"] == "backbone"} == {
        "norm_qkv_cache", "attn_split", "attn_combine_o_residual", "norm_gateup_swiglu", "down_residual"}


def test_no_spills_and_bounded_compilations(report):
    """No kernel spills registers to local memory with the GPU launch shapes (fused.GPU_BLOCKS / FRAME_GPU_BLOCKS),
    and none compiles more than twice per frame's launches (arguments at varying offsets are not specialised on
    alignment; the head kernel's last step is its second build)."""
    rows, _ = report
    for r in rows:
        if "error" in r:  # reported by test_every_kernel_compiles_for_sm90
            continue
        assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, r
        assert r["registers"] <= 255, r
        assert r["compilations"] <= (2 if r["kernel"] == "norm_head_sample" else 1), r
    frame = [r for r in rows if r["kernel"] in ("depth_frame", "backbone_frame")]
    assert len(frame) == 4, frame
    # the persistent kernels run one program per SM: 8 warps may use the whole 64K register file
    assert all(r["num_warps"] * 32 * r["registers"] <= 65536 for r in frame), frame


def test_weight_loads_are_vector_loads(report):
    """The GEMV weights are read 16 bytes per thread and load (the width the bandwidth figures assume): every weight
    load of the step kernels and of the persistent depth decoder (whose o-projection loads its block for all heads
    at once), and all of the persistent backbone's but the o-projection's (7 % of its bytes: a [16, 64] tile per
    head, 8 bytes per thread). Pipelined loops load through cp.async, counted alike. The backbone's persistent kernel
    reaches its layers through loaded offsets, whose 16-byte alignment it states (tl.multiple_of): without that,
    every weight load would be 2 bytes wide. Found by this check: the codebook heads in the model's (hidden, 2051)
    layout were read 2 bytes at a time, now stored (vocab, hidden)."""
    rows, _ = report
    for r in rows:
        if "error" in r or r["kernel"] in ("attn_split", "barrier_loop"):  # the KV cache, or nothing, no weights
            continue
        widths = {int(k): v for k, v in r["weight_loads_by_bytes"].items()}
        assert widths, r  # the weight loads were found in the PTX's line info
        assert set(widths) == ({16, 8} if r["kernel"] == "backbone_frame" else {16}), r


# the phases of the persistent kernels, by the names fern.bench.ptx gives them (branch comment or helper)
_DEPTH_PHASES = {"q|k|v": "norm -> q|k|v", "o": "attention over positions", "gate|up": "_gateup_rows",
                 "down": "_down_rows", "head": "head p-1"}
_BACKBONE_PHASES = {"q|k|v": "_qkv_rope_pairs", "o": "_o_rows", "gate|up": "_gateup_rows", "down": "_down_rows"}


def test_persistent_kernels_keep_dram_busy(report):
    """Each phase of the persistent kernels keeps enough weight bytes in flight per program (one per SM) to cover
    DRAM's latency: 4.8 TB/s x ~600 ns / 132 SMs ~ 22 KB (Little's law). Counted in the SASS: a load is in flight
    from its issue to the first instruction that names its registers, a pipelined copy until the wait that retires
    it. Before the loops were pipelined a program had 8 KB in flight in the depth decoder's down projection (16
    round trips per block), 4 KB in its head and 2 KB in the o-projection (a round trip per head), 2-8 KB in the
    backbone's q|k|v and o-projection. The o-projections (16 KB; 8 with 1-byte weights) and the 1-byte heads and
    q|k|v (16 KB) load each program's whole block at once: one round trip, whatever the figure."""
    rows, _ = report
    frame = [r for r in rows if r["kernel"] in ("depth_frame", "backbone_frame") and "error" not in r]
    assert len(frame) == 4, frame
    for r in frame:
        names = _DEPTH_PHASES if r["kernel"] == "depth_frame" else _BACKBONE_PHASES
        got = {short: [kb for phase, kb in r["weight_kb_in_flight"].items() if phase.startswith(prefix)]
               for short, prefix in names.items()}
        assert all(len(v) == 1 for v in got.values()) and len(r["weight_kb_in_flight"]) == len(names), (r, got)
        kb = {short: v[0] for short, v in got.items()}
        assert kb["gate|up"] >= 32 and kb["down"] >= 32, (r["kernel"], r["weights"], kb)
        one_byte = r["weights"] != "bf16"
        assert kb["q|k|v"] >= (16 if one_byte else 32) and kb["o"] >= (8 if one_byte else 16), kb
        if r["kernel"] == "depth_frame":
            assert kb["head"] >= (16 if one_byte else 32), kb
        assert r["shared_bytes"] <= 99 * 1024, r  # pipeline buffers within what an RTX 4090 allows a block


def _sass(*lines: str) -> str:
    """nvdisasm -c -g's layout: a source line comment, then instructions; labels at column 0."""
    out = []
    for item in lines:
        if item.startswith(".L_x_"):
            out.append(item)
        elif item.startswith("line "):
            out.append(f'\t//## File "/x/fern/tts/csm/kernels.py", {item}')
        else:
            out.append(f"        /*0000*/                   {item} ;")
    return "\n".join(out)


@pytest.mark.parametrize("body,want", [
    # two 16-byte loads issued before the first use: 32 bytes in flight
    (["line 7", "LDG.E.128 R4, desc[UR4][R2.64]", "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "line 9",
      "FFMA R12, R4, R5, R12", "FFMA R12, R8, R9, R12"], {7: 32}),
    # load, use, load, use: one at a time
    (["line 7", "LDG.E.128 R4, desc[UR4][R2.64]", "line 9", "FFMA R12, R4, R5, R12", "line 7",
      "LDG.E.128 R4, desc[UR4][R2.64+0x10]", "line 9", "FFMA R12, R4, R5, R12"], {7: 16}),
    # a guarded 8-byte load; a load of another line (not a weight) does not count
    (["line 7", "@!P0 LDG.E.64 R4, desc[UR4][R2.64]", "line 8", "LDG.E.128 R20, desc[UR4][R2.64]", "line 9",
      "FADD R12, R4, R20"], {7: 8}),
    # in a loop: R8, loaded at the end of an iteration, is still in flight when the next one loads R20
    ([".L_x_1:", "line 7", "LDG.E.128 R20, desc[UR4][R2.64]", "line 9", "FFMA R12, R8, R9, R12",
      "FADD R13, R20, R13", "line 7", "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "BRA `(.L_x_1)"], {7: 32}),
    # the same loop closed by a predicated branch (as ptxas writes some): still a loop
    ([".L_x_1:", "line 7", "LDG.E.128 R20, desc[UR4][R2.64]", "line 9", "FFMA R12, R8, R9, R12",
      "FADD R13, R20, R13", "line 7", "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "@P1 BRA P0, `(.L_x_1)"], {7: 32}),
    # the same outside a loop: one pass, one load at a time
    (["line 7", "LDG.E.128 R20, desc[UR4][R2.64]", "line 9", "FFMA R12, R8, R9, R12", "FADD R13, R20, R13",
      "line 7", "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "BRA `(.L_x_9)"], {7: 16}),
    # cp.async pipelining: two committed groups of 16 bytes pending after the wait, then one more issued
    (["line 7", "LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]", "LDGDEPBAR",
      "LDGSTS.E.BYPASS.128 [R1+0x1000], desc[UR4][R2.64+0x10]", "LDGDEPBAR", ".L_x_2:", "line 9",
      "DEPBAR.LE SB0, 0x1", "LDS.128 R4, [R1]", "line 7", "LDGSTS.E.BYPASS.128 [R1+0x2000], desc[UR4][R2.64+0x20]",
      "LDGDEPBAR", "line 9", "BRA `(.L_x_2)"], {7: 32}),
])
def test_bytes_in_flight_from_sass(body, want):
    """The in-flight count itself, on SASS in nvdisasm's layout (line 7 holds the weight load, 8 another load)."""
    from fern.bench.ptx import weight_bytes_in_flight

    assert weight_bytes_in_flight(_sass(*body), {7}, "fern/tts/csm/kernels.py") == want


def test_barrier_atomics_are_one_per_program(report):
    """The persistent kernels' grid barriers and the head kernel's last-program count add one per program: each
    atomic (and the barrier's acquire poll) is issued by thread 0 alone, as the counts assume."""
    rows, _ = report
    for r in rows:
        if "error" in r:
            continue
        if r["kernel"] in ("depth_frame", "backbone_frame", "norm_head_sample", "barrier_loop"):
            assert r.get("atomics_by_one_thread") is True, r
        else:
            assert "atomics_by_one_thread" not in r, r  # no atomics in the other step kernels


# guards as Triton writes them: 3.5 tests tid == 0, 3.6 lane 0 of warp 0 through masks; the rest must be refused:
# one thread per warp (a mask, or a shift that drops the warp bits), whole warps, guards the evaluation cannot
# follow for every thread (a loop variable, a guarded or loaded redefinition, definitions that disagree)
_GUARDS = {
    "tid": ("setp.eq.b32 %p1, %r1, 0;", True),
    "lane_and_warp": ("and.b32 %r2, %r1, 31;\n and.b32 %r3, %r1, 127;\n cvt.u64.u32 %rd3, %r3;\n"
                      " cvt.u32.u64 %r4, %rd3;\n setp.eq.b32 %p2, %r2, 0;\n setp.lt.u32 %p3, %r4, 32;\n"
                      " and.pred %p1, %p2, %p3;", True),
    "two_branches_same": ("and.b32 %r2, %r1, 127;\n and.b32 %r2, %r1, 127;\n setp.eq.b32 %p1, %r2, 0;", True),
    "lane_only": ("and.b32 %r2, %r1, 31;\n setp.eq.b32 %p1, %r2, 0;", False),
    "shift_drops_warp_bits": ("shl.b32 %r2, %r1, 27;\n setp.eq.b32 %p1, %r2, 0;", False),
    "first_warp": ("and.b32 %r2, %r1, -32;\n setp.eq.s32 %p1, %r2, 0;", False),
    "two_branches_differ": ("setp.eq.b32 %p1, %r1, 0;\n and.b32 %r2, %r1, 31;\n setp.eq.b32 %p1, %r2, 0;", False),
    "guarded_redefinition": ("setp.eq.b32 %p1, %r1, 0;\n @%p4 setp.ne.b32 %p1, %r1, 5;", False),
    "loaded": ("ld.shared.b32 %r2, [global_smem];\n setp.eq.b32 %p1, %r2, 0;", False),
    "loop_variable": ("add.s32 %r2, %r2, 1;\n setp.eq.b32 %p1, %r2, 0;", False),
    "three_operand_setp": ("setp.eq.and.b32 %p1, %r1, 0, %p5;", False),
}


@pytest.mark.parametrize("guard", list(_GUARDS))
@pytest.mark.parametrize("sync", ["atom.global.gpu.acq_rel.add.u32 %r9, [ %rd1 + 0 ], %r8;",
                                  "red.global.gpu.add.u32 [ %rd1 + 0 ], %r8;",
                                  "ld.acquire.gpu.global.b32 %r9, [ %rd1 + 0 ];"])
def test_one_thread_check_evaluates_the_guard_for_every_thread(guard, sync):
    from fern.bench.ptx import atomics_by_one_thread

    body, want = _GUARDS[guard]
    ptx = f".reqntid 128\n{{\n mov.u32 %r1, %tid.x;\n {body}\n @%p1 {sync}\n}}\n"
    assert atomics_by_one_thread(ptx) is want
    assert atomics_by_one_thread(ptx.replace("@%p1 ", "")) is False  # unguarded: every thread adds
    assert atomics_by_one_thread(ptx.replace(sync, "st.global.b32 [ %rd1 + 0 ], %r8;")) is None  # no atomics


def test_no_prefetch_or_timing_by_default(report):
    """The persistent kernels' L2 prefetch (PREFETCH / prefetch) and phase timing (TIMING / timing) are off in the
    default launch shapes: the figures fern.bench.tts credits to the defaults are measured without them."""
    rows, _ = report
    assert all(r.get("l2_prefetches", 0) == 0 and r.get("clock_reads", 0) == 0 for r in rows if "error" not in r)


@pytest.mark.parametrize("mode,key", [("frame", "TIMING"), ("backbone_frame", "timing")])
def test_phase_timing_compiles_unspilled(tmp_path, mode, key):
    """With the phase timing on, the persistent kernels read the SM's cycle counter around every barrier and the
    GPU's timer at the launch's ends, and still fit the register file unspilled with one arrival per program."""
    out = tmp_path / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "fern.bench.ptx", "--kinds", "bf16", "--modes", mode,
                        "--blocks", json.dumps({key: 1}), "--json", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert "error" not in row, row
    assert row["clock_reads"] >= 4, row  # before and after the barrier, and both clocks at the ends
    assert row["spill_store_bytes"] == 0 and row["registers"] <= 255 and row["atomics_by_one_thread"] is True, row


@pytest.mark.parametrize("mode,kinds,key", [("frame", "bf16,int8,fp8", "PREFETCH"),
                                            ("backbone_frame", "bf16", "prefetch")])
def test_prefetch_is_issued_before_the_barrier_without_spills(tmp_path, mode, kinds, key):
    """With the L2 prefetch on, the persistent kernels issue it (PTX prefetch.global.L2, one per 128-byte line of a
    program's first block of the next phase) right before the grid barrier's arrival, with no memory access
    between (DRAM fetches the next weights while the programs wait), and still fit the register file unspilled."""
    out = tmp_path / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "fern.bench.ptx", "--kinds", kinds, "--modes", mode,
                        "--blocks", json.dumps({key: 1}), "--json", str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == len(kinds.split(",")), rows
    for row in rows:
        assert "error" not in row, row
        assert row["l2_prefetches"] > 0 and row["prefetches_then_barrier"] is True, row
        assert row["spill_store_bytes"] == 0 and row["spill_load_bytes"] == 0 and row["registers"] <= 255, row
        assert row["atomics_by_one_thread"] is True, row


_RELEASE = "@%p1 atom.global.gpu.release.add.u32 %r9, [ %rd1 + 0 ], %r8;"


@pytest.mark.parametrize("body,want", [
    (f"prefetch.global.L2 [%rd5];\n prefetch.global.L2 [%rd6];\n bar.sync 0;\n {_RELEASE}", True),
    (f"{_RELEASE}\n prefetch.global.L2 [%rd5];\n ld.global.v4.b32 {{%r1, %r2, %r3, %r4}}, [%rd5];", False),
    (f"prefetch.global.L2 [%rd5];\n ld.global.v4.b32 {{%r1, %r2, %r3, %r4}}, [%rd5];\n {_RELEASE}", False),
    ("prefetch.global.L2 [%rd5];\n ret;", False),
    (f"ld.global.b32 %r1, [%rd5];\n {_RELEASE}", None),
])
def test_prefetch_placement_check(body, want):
    """The placement check itself: a prefetch must be followed by a barrier arrival before any memory access (after
    the barrier, or with a load between, it would no longer overlap the wait)."""
    from fern.bench.ptx import prefetches_then_barrier

    assert prefetches_then_barrier(f"{{\n {body}\n}}\n") is want
