"""A tensor-core tile of C staged through shared memory before it is stored (ir.build.c_stage):
which kernels stage it and in what vectors, the alignment that asks of C, the interpreter's
hazard when the buffer is written over a stage still in use, and the stores in the PTX."""
import dataclasses

import pytest

from nmgen import Pattern, Problem, Schedule
from nmgen.checking import kernel_a, random_inputs, run_interpreter
from nmgen.ir import HazardError, build, interpret, nodes
from nmgen.ir.build import c_stage_pitch
from nmgen.ir.operands import prepare
from nmgen.reference import compare

MMA = dict(thread_m=0, thread_n=0, a_pad=8)
TILE = dict(MMA, block_m=64, block_n=64, warp_m=32, warp_n=32, k_windows=2)


@pytest.mark.parametrize("N,vec", [
    (128, 8),     # 16-byte row vectors
    (100, 4),     # rows of C start 8 bytes apart: 8-byte vectors
])
def test_mma_tiles_are_staged_in_the_widest_vector_c_s_rows_allow(N, vec):
    p = Problem(64, N, 128, Pattern(8, 32, 32), "bf16", "col")
    k = build(p, Schedule(**TILE))
    assert k.c_staged == vec
    assert k.buffer("Cs").offset == 0 and k.buffer("Cs").nbytes <= k.smem_bytes
    assert k.c_alignment == vec * 2


@pytest.mark.parametrize("N,c_dtype", [
    (98, "bf16"),     # rows 4 bytes apart: staged vectors would be no wider than the direct pairs
    (99, "bf16"),     # odd N: 2-byte stores either way
    (128, "f32"),     # an fp32 C already goes out in 8-byte pairs (whole 32-byte sectors a row)
])
def test_tiles_whose_stores_staging_would_not_widen_are_stored_directly(N, c_dtype):
    k = build(Problem(64, N, 128, Pattern(8, 32, 32), "bf16", "col", c_dtype), Schedule(**TILE))
    assert k.c_staged == 0 and "Cs" not in {b.name for b in k.shared}


@pytest.mark.parametrize("block_n", range(8, 264, 8))
def test_the_staged_tile_s_pitch_keeps_fragment_writes_free_of_bank_conflicts(block_n):
    """A warp's st.shared.b32 of an m16n8 fragment's pair: lane = 4 * row + t writes the 4 bytes of
    columns 2t, 2t + 1 of one of 8 rows. 32 banks of 4 bytes: each bank at most once."""
    pitch = c_stage_pitch(block_n, 2)
    assert pitch >= block_n and (2 * pitch) % 16 == 0       # rows 16-byte aligned for the row vectors
    banks = [((row * pitch + 2 * t) * 2 // 4) % 32 for row in range(8) for t in range(4)]
    assert len(set(banks)) == 32


@pytest.mark.parametrize("problem,fields", [
    (Problem(64, 128, 128, Pattern(8, 32, 32), "f32", "col"),              # FFMA: runs of 8 floats already
     dict(block_m=64, block_n=64, warp_m=32, warp_n=32, thread_m=8, thread_n=4, k_windows=2)),
    (Problem(64, 128, 128, Pattern(8, 32, 32), "bf16", "col"), dict(TILE, warps_k=2)),   # sliced K
    (Problem(64, 128, 128, Pattern(8, 32, 32), "bf16", "col"), dict(TILE, split_k=2)),   # atomic adds
])
def test_kernels_that_do_not_stage_c(problem, fields):
    k = build(problem, Schedule(**fields))
    assert k.c_staged == 0
    assert "Cs" not in {b.name for b in k.shared}


def test_a_buffer_larger_than_the_pipeline_is_not_made():
    """64x256 tile, one K tile of 16 kept rows in two stages: the pipeline holds less than the
    tile of C, which is then stored directly rather than growing the block's shared memory."""
    p = Problem(64, 256, 64, Pattern(16, 32, 32), "bf16", "col", "f32")
    k = build(p, Schedule(**dict(MMA, block_m=64, block_n=256, warp_m=64, warp_n=32, k_windows=1, stages=2)))
    assert k.c_staged == 0


@pytest.mark.parametrize("M,N,K,dtype,block_n", [(17, 100, 64, "bf16", 64), (64, 104, 96, "f16", 64),
                                                 (40, 136, 128, "bf16", 40)])
def test_staged_kernels_compute_the_product(rng, M, N, K, dtype, block_n):
    p = Problem(M, N, K, Pattern(8, 32, 8), dtype, "col")
    s = Schedule(**dict(TILE, block_n=block_n, warp_n=8 if block_n % 32 else 32))
    assert build(p, s).c_staged
    A, B = random_inputs(p, rng)
    v = compare(run_interpreter(p, s, A, B), A, B, compute="mma", out_dtype=p.c_dtype)
    assert v.ok, v.summary()


def test_staging_over_a_stage_still_read_fails_on_the_cpu(rng):
    """Without the barrier before it, the staged store would overwrite a stage some warp may still
    be reading: the interpreter refuses it."""
    p = Problem(64, 64, 128, Pattern(16, 32, 32), "bf16", "col")
    s = Schedule(**TILE)
    A, B = random_inputs(p, rng)
    ops = prepare(p, s, B.values, B.indices)
    k = build(p, s)
    body = list(k.body)
    at = next(i for i, st in enumerate(body) if isinstance(st, nodes.StoreAcc))
    assert body[at].via and isinstance(body[at - 1], nodes.Barrier)
    del body[at - 1]
    with pytest.raises(HazardError, match="StoreAcc through Cs writes over"):
        interpret(dataclasses.replace(k, body=tuple(body)), {"A": kernel_a(p, A), "Bv": ops.bv, "Bi": ops.bi})


def test_the_ptx_stores_whole_row_vectors():
    from nmgen.codegen import generate_ptx
    p = Problem(128, 256, 128, Pattern(8, 32, 32), "bf16", "col")
    ptx = generate_ptx(build(p, Schedule(**dict(MMA, block_m=128, block_n=256, warp_m=128, warp_n=32, k_windows=4))),
                       "sm_90")
    assert "st.global.b32" not in ptx
    # 128 x 256 bf16 = 4096 row vectors of 16 bytes over 256 threads: 16 each, read back from
    # shared memory in as many 16-byte loads; each thread's 128 accumulators go in as 64 converted pairs
    assert ptx.count("st.global.v4.b32") == 16
    assert ptx.count("ld.shared.v4.b32") == 16
    assert ptx.count("st.shared.b32") == 64
