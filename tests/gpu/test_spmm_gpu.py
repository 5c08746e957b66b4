"""Every kernel against the float64 reference on the GPU: fresh random inputs, NaN-poisoned
outputs, relative error (norm) < 1e-5."""
import numpy as np
import pytest

import nmgen
from nmgen import Schedule, spmm
from helpers import ok, random_problem

PATTERNS = [(2, 4, 1), (2, 8, 4), (8, 32, 32), (4, 16, 64), (16, 32, 32), (12, 32, 32), (4, 32, 32)]
SHAPES = [(1, 4096, 4096), (17, 100, 64), (4095, 4100, 1024), (256, 2048, 2048), (4096, 4096, 4096)]



def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: the in-place device path is not tested")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: "%d:%dx%d" % p)
def test_default_kernel_numpy(rng, shape, pattern):
    p, A, B = random_problem(rng, *shape, *pattern)
    C = spmm(A, B)
    assert C.shape == (p.M, p.N) and C.dtype == np.float32
    assert ok(C, A, B)


@pytest.mark.parametrize("shape", [(17, 100, 64), (256, 2048, 2048), (4095, 4100, 1024)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pattern", [(2, 4, 1), (8, 32, 32), (4, 16, 64)], ids=lambda p: "%d:%dx%d" % p)
def test_torch_in_place_with_poisoned_out(rng, shape, pattern):
    torch = torch_or_skip()
    p, A, B = random_problem(rng, *shape, *pattern)
    At = torch.from_numpy(A).cuda()
    out = torch.full((p.M, p.N), float("nan"), device="cuda")
    res = spmm(At, B, out=out)
    torch.cuda.synchronize()
    assert res is out
    assert ok(out.cpu().numpy(), A, B)
    fresh = spmm(At, B)                       # allocated by nmgen, same library and device
    torch.cuda.synchronize()
    assert isinstance(fresh, torch.Tensor) and fresh.is_cuda
    assert ok(fresh.cpu().numpy(), A, B)


@pytest.mark.parametrize("split_k", range(1, 9))
def test_split_k_even_and_uneven(rng, split_k):
    # 64 windows in 32 K tiles of 2: splits 3, 5, 6, 7 do not divide them
    p, A, B = random_problem(rng, 256, 2048, 2048, 8, 32, 32)
    s = Schedule(k_windows=2, split_k=split_k)
    C = spmm(A, B, schedule=s)
    assert ok(C, A, B)


@pytest.mark.parametrize("schedule", [
    Schedule(a_load="rows", k_windows=2),
    Schedule(a_load="rows", k_windows=2, split_k=3, stages=4),
    Schedule(block_m=64, warp_m=64, block_n=256, warp_n=32, stages=4, raster=1),
    Schedule(block_m=128, block_n=64, warp_m=64, warp_n=16, thread_m=8, thread_n=4, stages=2, a_pad=0),
    Schedule(a_smem="mk", k_windows=2),
    Schedule(a_smem="mk", block_m=128, block_n=256, warp_m=128, warp_n=32, thread_m=16, thread_n=8, split_k=2),
    # fragments of each tile's first row loaded before the previous tile's barrier
    Schedule(a_load="rows", k_windows=2, prefetch=1),
    Schedule(k_windows=1, split_k=3, prefetch=1, min_blocks=2),
    Schedule(block_m=32, block_n=128, warp_m=32, warp_n=32, thread_m=4, thread_n=8, warps_k=4, prefetch=1),  # 4:32: 1 row a slice
    # the next tile's copies issued after the first kept rows of each tile
    Schedule(a_load="rows", k_windows=2, refill_row=1),
    Schedule(k_windows=1, split_k=3, refill_row=2, min_blocks=2),
    # the last tiles' K split over blocks (tail split), the sums in the workspace, the others whole
    Schedule(tail_tiles=7, tail_split=3),
    Schedule(a_load="rows", k_windows=2, prefetch=1, tail_tiles=40, tail_split=5),
], ids=lambda s: s.short().replace(" ", "_"))
@pytest.mark.parametrize("pattern", [(4, 32, 32), (16, 32, 32)], ids=lambda p: "%d:%dx%d" % p)
def test_other_schedules(rng, schedule, pattern):
    p, A, B = random_problem(rng, 1000, 3000, 4096, *pattern)
    C = spmm(A, B, schedule=schedule)
    assert ok(C, A, B)


SLICED = dict(block_m=32, block_n=128, warp_m=32, warp_n=32, thread_m=4, thread_n=8)
SLICED_SCHEDULES = [
    Schedule(**SLICED, k_windows=2, warps_k=2),
    Schedule(**SLICED, k_windows=2, warps_k=4, stages=3),
    Schedule(**SLICED, k_windows=2, warps_k=4, split_k=3),
    Schedule(**SLICED, k_windows=2, warps_k=4, refill_row=1),                 # copies after a slice's first row
    Schedule(block_m=64, block_n=32, warp_m=64, warp_n=32, k_windows=2, warps_k=8, a_load="rows", stages=2),
    Schedule(block_m=64, block_n=64, warp_m=64, warp_n=16, thread_m=8, thread_n=4, k_windows=2, warps_k=2, a_smem="mk"),
]


@pytest.mark.parametrize("schedule,a_major", [(s, a) for s in SLICED_SCHEDULES for a in ("row", "col")
                                              if a == "row" or s.a_smem == "km"],   # column-major A: [k][m] only
                         ids=lambda x: x.short().replace(" ", "_") if isinstance(x, Schedule) else x)
@pytest.mark.parametrize("shape", [(256, 2048, 2048), (17, 100, 2048), (4095, 300, 1024)], ids=lambda s: "x".join(map(str, s)))
def test_sliced_k(rng, schedule, a_major, shape):
    """Warps sharing a warp tile over parts of each K tile, their sums added in shared memory:
    tiles off the problem's edges, with split-K on top, column- and row-major A."""
    p, A, B = random_problem(rng, *shape, 8, 32, 32, a_major)
    X = np.asfortranarray(A) if a_major == "col" else A
    assert ok(spmm(X, B, schedule=schedule), A, B)


def test_compiled_kernel_object(rng):
    p, A, B = random_problem(rng, 64, 512, 512, 8, 32, 32)
    k = nmgen.compile(p)
    assert k.ptx.startswith("//") and k.resources.spill_stores == 0
    assert ok(k(A, B), A, B)


def test_wrong_inputs_are_refused(rng):
    torch = torch_or_skip()
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)
    with pytest.raises(nmgen.ShapeError, match="A's columns must equal B's rows"):
        spmm(np.ones((16, 32), np.float32), B)
    with pytest.raises(nmgen.ShapeError, match="float32"):
        spmm(torch.ones((16, 64), dtype=torch.float64, device="cuda"), B)
    with pytest.raises(nmgen.ShapeError, match="without gaps"):
        spmm(torch.ones((16, 128), device="cuda")[:, ::2], B)
    with pytest.raises(nmgen.ShapeError, match="out must be"):
        spmm(torch.ones((16, 64), device="cuda"), B, out=torch.empty((16, 63), device="cuda"))


@pytest.mark.parametrize("a_smem", ["km", "mk"])
def test_misaligned_a_view_and_odd_k(rng, a_smem):
    """A torch view starting 4 bytes into its storage (16-byte copies need an aligned A: nmgen
    copies it), with K=100 (a partial last K tile) and N, M off every tile."""
    torch = torch_or_skip()
    p, A, B = random_problem(rng, 37, 90, 100, 2, 4, 1)
    flat = torch.empty(A.size + 1, device="cuda")
    At = flat[1:].view(p.M, p.K)
    At.copy_(torch.from_numpy(A))
    s = Schedule(block_m=32, block_n=64, warp_m=32, warp_n=16, thread_m=4, thread_n=4, k_windows=8, a_smem=a_smem)
    out = torch.full((p.M, p.N), float("nan"), device="cuda")
    spmm(At, B, out=out, schedule=s)
    torch.cuda.synchronize()
    assert ok(out.cpu().numpy(), A, B)


@pytest.mark.parametrize("shape,pattern", [((17, 100, 64), (8, 32, 32)), ((1000, 3000, 4096), (4, 32, 32)),
                                           ((64, 4096, 4096), (16, 32, 32)), ((33, 70, 100), (2, 4, 1))])
def test_column_major_a_in_place(rng, shape, pattern):
    """A transposed view (column-major A) runs its own kernels, on torch and on numpy (F order)."""
    torch = torch_or_skip()
    p, A, B = random_problem(rng, *shape, *pattern)
    At = torch.from_numpy(np.ascontiguousarray(A.T)).cuda().t()          # (M, K) view, column-major
    assert not At.is_contiguous()
    out = torch.full((p.M, p.N), float("nan"), device="cuda")
    spmm(At, B, out=out)
    torch.cuda.synchronize()
    assert ok(out.cpu().numpy(), A, B)
    assert ok(spmm(np.asfortranarray(A), B), A, B)
    if p.K >= 4 * p.pattern.m * 2:     # room for two K tiles of two windows
        for s in (Schedule(a_load="rows", k_windows=2), Schedule(k_windows=2, split_k=2)):
            assert ok(spmm(np.asfortranarray(A), B, schedule=s), A, B)
