"""The prepared-weights cache key (ir.operands.layout_key), and the model's "rows" list length
(ir.operands.rows_length), against what `prepare` really makes.

nmgen.api and nmgen.torch keep one prepared copy of a weight matrix per layout_key and hand it to
every kernel whose schedule has that key. A field `prepare` reads but the key leaves out makes a
kernel compute with another kernel's layout: wrong results, silently (the wgmma core-matrix order
of B once shared a key with mma.sync's row order; the tuner then recorded every second kernel of
such a pair as a wrong result, and a program calling both got garbage from the second).
"""
import numpy as np
import pytest

import nmgen
from nmgen import Pattern, Problem, Schedule
from nmgen.checking import random_inputs, stored_weights
from nmgen.ir import for_arch
from nmgen.ir.operands import layout_key, prepare, rows_length
from nmgen.search.refine import refinements
from nmgen.search.space import enumerate_space, rows_lengths

from helpers import ok

H100 = for_arch("sm_90")

# (M, N, K, n, m, V, dtype, A's order): the tensor-core dtypes (mma.sync and wgmma, all three A loads,
# "rows" lists coloured or not), tf32's scalar gathers, FFMA's offset chunks
PROBLEMS = [(64, 160, 128, 16, 32, 32, "bf16", "col"), (17, 100, 96, 8, 32, 32, "f16", "row"),
            (64, 96, 128, 4, 32, 16, "bf16", "col"), (40, 72, 64, 2, 8, 8, "tf32", "col"),
            (33, 72, 96, 4, 16, 8, "f32", "row")]


def _arrays(ops) -> tuple:
    return tuple(None if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in (ops.bv, ops.bi, ops.arows))


@pytest.mark.parametrize("spec", PROBLEMS, ids=lambda s: "%dx%dx%d-%d:%dx%d-%s-%s" % s)
def test_schedules_sharing_a_key_get_the_same_prepared_weights(rng, spec):
    """Every schedule of the space (and its tuner refinements) is prepared; within each key all
    prepare byte-identical arrays. And keys are not so coarse that this holds trivially: the space
    has several of them. The model's cheap list length (rows_length) is the one prepare makes."""
    M, N, K, n, m, V, dtype, a_major = spec
    p = Problem(M, N, K, Pattern(n, m, V), dtype, a_major)
    _, B = random_inputs(p, rng)
    B = stored_weights(p, B)
    groups: dict = {}
    a_rows = rows_lengths(p, B)                 # the model's lengths, cached per layout that decides them
    for s in enumerate_space(p, H100):
        for c in [s] + refinements(p, s, H100, None):
            groups.setdefault(layout_key(p, c), {})[c.hash()] = c
    assert len(groups) >= 4
    for key, members in groups.items():
        first = None
        for s in members.values():
            ops = prepare(p, s, B.values, B.indices)
            if s.a_load == "rows":
                assert rows_length(p, s, B.indices) == ops.geometry.a_rows == a_rows(s), s.short()
            got = _arrays(ops)
            if first is None:
                first, who = got, s
            assert got == first, f"{s.short()} and {who.short()} share the key {key} but not their weights"


def test_wgmma_and_mma_sync_of_one_tile_do_not_share_weights():
    """The pair that once shared a key: B in wgmma's core-matrix order against mma.sync's rows."""
    p = Problem(256, 512, 256, Pattern(16, 32, 32), "bf16", "col")
    mma = Schedule(block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=0, thread_n=0, a_pad=8,
                   k_windows=2, stages=4, a_load="rows")
    wgmma = mma.replace(warp_m=64, warp_n=256, wgmma=1)
    assert layout_key(p, mma) != layout_key(p, wgmma)


def test_one_weight_matrix_through_a_wgmma_and_an_mma_sync_kernel(rng, monkeypatch):
    """Through the API's cache (fake H100: the interpreter runs the kernels): the second kernel
    of a weight matrix computes with its own layout, whichever came first."""
    import fake_gpu as fake
    fake.install(monkeypatch)
    p = Problem(64, 256, 128, Pattern(16, 32, 32), "bf16", "col")
    A, B = random_inputs(p, rng)
    B = stored_weights(p, B)
    A = np.asarray(A).astype(B.values.dtype)
    base = dict(block_m=64, block_n=256, thread_m=0, thread_n=0, a_pad=8, k_windows=1, stages=3, a_load="rows")
    for fields in (dict(base, warp_m=64, warp_n=256, wgmma=1), dict(base, warp_m=64, warp_n=32)):
        k = nmgen.compile(p, schedule=fields, B=B, a_major="col", dtype="bf16")
        v = ok(np.asarray(k(A.T.copy().T, B)).astype(np.float32), A, B, compute="mma", out_dtype="bf16")
        assert v, f"{k.schedule.short()}: {v.summary()}"
