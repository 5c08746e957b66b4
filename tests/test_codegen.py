"""Generated PTX: every default schedule assembles with ptxas for every architecture, without
spills or stack; one small schedule's PTX is pinned as a golden file."""

import pytest

from nmgen import Pattern, Problem, Schedule
from nmgen.api import compile
from nmgen.codegen import generate_ptx, target_for
from nmgen.ir.device import ARCHS
from nmgen.errors import CompileError
from nmgen.ir import build

from helpers import assert_golden_ptx

SHAPES = [(1, 4096, 4096), (17, 100, 64), (64, 64, 64), (4095, 4100, 1024), (256, 2048, 2048), (4096, 4096, 4096)]
PATTERNS = [(2, 4, 1), (2, 8, 4), (8, 32, 32), (4, 16, 64), (16, 32, 32), (12, 32, 32), (4, 32, 32)]


@pytest.mark.parametrize("arch", ARCHS)   # the GPUs nmgen targets (sm_90a is a kernel target, not a device)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_default_schedules_assemble_without_spills(arch, shape):
    for n, m, v in PATTERNS:
        p = Problem(*shape, Pattern(n, m, v))
        k = compile(p, arch=arch)
        r = k.resources
        assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack_frame == 0, f"{p} {k.schedule.short()}: {r.summary()}"
        assert r.registers <= 255


def test_the_rows_strategy_and_split_k_assemble():
    p = Problem(4096, 4096, 4096, Pattern(4, 32, 32))
    for s in (Schedule(a_load="rows", k_windows=2), Schedule(split_k=5, stages=4), Schedule(raster=1, min_blocks=2),
              Schedule(prefetch=1, min_blocks=2)):   # prefetch held to two blocks of 256 threads: 128 registers
        r = compile(p, schedule=s, arch="sm_90").resources
        assert r.spill_stores == 0 and r.stack_frame == 0, (s.short(), r.summary())


@pytest.mark.parametrize("dtype,fields", [
    ("f32", {}), ("f32", dict(a_load="rows", k_windows=2, prefetch=1)),
    ("bf16", dict(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=0, thread_n=0, a_pad=8, k_windows=4,
                  a_load="rows", prefetch=1))])
@pytest.mark.parametrize("tail", [(28, 4), (1, 2), ("all", 3)], ids=lambda t: "tail%sx%d" % t)
def test_a_tail_split_assembles(dtype, fields, tail):
    """The last tiles' K split over blocks, up to all of them (no whole tile: the block-order test
    against the first tail block must not wrap around), for FFMA and mma.sync, without spills; the
    workspace holds the tail's tiles only (fp32 sums, then a count each)."""
    p = Problem(1024, 4096, 5120, Pattern(8, 32, 32), dtype, "col")
    bm, bn = fields.get("block_m", 128), fields.get("block_n", 128)
    tiles = (1024 // bm) * (4096 // bn)
    count = tiles if tail[0] == "all" else tail[0]
    s = Schedule(**fields, tail_tiles=count, tail_split=tail[1])
    k = compile(p, schedule=s, arch="sm_90")
    assert k.ir.grid == (tiles - count + count * tail[1], 1, 1)
    assert k.ir.workspace_words == count * bm * bn + count
    r = k.resources
    assert r.spill_stores == 0 and r.stack_frame == 0, (s.short(), r.summary())


def test_unsigned_index_operators_refuse_negative_constants():
    """The GPU compares and divides indices unsigned, the interpreter as Python ints: an expression
    that compares with a negative constant would run right on the CPU and wrong on the GPU."""
    from nmgen.ir.build import CTAID_X
    from nmgen.ir.expr import lt
    from nmgen.ir.nodes import If, Let
    import dataclasses
    k = build(Problem(64, 64, 64, Pattern(8, 32, 32)), Schedule(block_m=32, warp_m=32, thread_m=4))
    bad = dataclasses.replace(k, body=(Let("x", 0), If(lt(0 - 1, CTAID_X), (Let("x", 1),))) + k.body)
    with pytest.raises(ValueError, match="negative constant"):
        generate_ptx(bad, "sm_90")


@pytest.mark.parametrize("prefetch", [0, 1])
def test_inner_loop_is_fma_with_16_byte_loads(prefetch):
    ptx = compile(Problem(4096, 4096, 4096, Pattern(8, 32, 32)), schedule=Schedule(prefetch=prefetch), arch="sm_90").ptx
    assert ptx.count("fma.rn.f32") == 8 * 64           # 8 kept rows x 8x8 thread tile, unrolled
    loads = ptx.count("ld.shared")
    if not prefetch:   # 2 A + 2 B float4 per kept row, and the A rows' byte offsets four kept rows per vector
        assert ptx.count("ld.shared.v4") == loads == 8 * 4 + 8 // 4
    else:              # the first row's fragments also in the prologue; the byte offsets of the rows loaded
        # ahead (first and last) narrower: at most the three such look-ups and one shortened vector
        assert ptx.count("ld.shared.v4") >= (8 + 1) * 4 + 1 and loads - ptx.count("ld.shared.v4") <= 4
    assert "cp.async.cg.shared.global" in ptx and "cp.async.wait_group" in ptx and "bar.sync" in ptx


def test_unknown_arch_is_refused_before_llvm():
    with pytest.raises(CompileError, match="sm_100a.*not supported"):
        target_for("sm_100a")


def test_golden_ptx():
    """Unintended codegen changes show up here. After an intended change (or an LLVM update),
    regenerate with NMGEN_UPDATE_GOLDEN=1 and review the diff."""
    k = build(Problem(17, 100, 64, Pattern(8, 32, 32)), Schedule(block_m=32, warp_m=32, thread_m=4, split_k=2))
    ptx = generate_ptx(k, "sm_90")
    assert_golden_ptx("nmspmm_17x100x64_8_32_32.ptx", ptx)


@pytest.mark.parametrize("arch", ["sm_90", "sm_86"])
def test_the_launch_bound_is_capped_at_what_shared_memory_lets_run(arch):
    # min_blocks=8 on a ~62 KB block: ptxas, asked for 8, capped registers at 32 and spilled for blocks
    # that never fit; it is asked for what the target's shared memory admits instead
    from nmgen.ir.device import for_arch
    p = Problem(256, 4096, 4096, Pattern(8, 32, 32))
    dev = for_arch(arch)
    for asked in (8, 2, 1):
        k = build(p, Schedule(stages=3, min_blocks=asked))
        fit = dev.smem_per_sm // (k.smem_bytes + dev.reserved_smem_per_block)
        assert f".minnctapersm {max(1, min(asked, fit))}" in generate_ptx(k, arch)
    assert for_arch("sm_90").smem_per_sm // (k.smem_bytes + for_arch("sm_90").reserved_smem_per_block) == 3
