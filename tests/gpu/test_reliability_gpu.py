"""The API's reliability fixes on a real GPU (their CPU twins, on a fake GPU, are in tests/test_api.py):
degenerate layouts (M = 1, K = 1, N = 1), `out` overlapping A, an empty batch (M = 0), weights that
cannot go stale, and the small-K shapes whose weight preparation crashed."""
import numpy as np
import pytest

import nmgen
from nmgen import Problem, spmm
from helpers import ok, random_problem


@pytest.fixture(autouse=True)
def private_db(monkeypatch, tmp_path):
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))   # the model's choices, not this machine's records


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: the in-place device path is not tested")


def cupy_or_skip():
    return pytest.importorskip("cupy", reason="cupy is not installed: its device path is not tested")


# ---- small K: the weight preparation of these shapes raised numpy's "last axis must be contiguous" --
@pytest.mark.parametrize("shape,pattern", [((1, 4096, 64), (8, 32, 32)), ((16, 256, 32), (8, 32, 32)),
                                           ((1, 4096, 64), (16, 32, 32)), ((16, 1000, 64), (2, 8, 64)),
                                           ((17, 255, 48), (4, 16, 16)), ((1, 77, 8), (2, 4, 1))],
                         ids=lambda x: "x".join(map(str, x)))
def test_small_k_shapes(rng, shape, pattern):
    p, A, B = random_problem(rng, *shape, *pattern)
    assert ok(spmm(A, B), A, B)
    assert ok(spmm(np.asfortranarray(A), B), A, B)


# ---- degenerate dimensions: an A that is both row- and column-major fits kernels of either order ---
DEGENERATE = [((1, 1, 64), (2, 4, 1)), ((1, 4096, 64), (8, 32, 32)), ((5, 3, 1), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))]


@pytest.mark.parametrize("kernel_major", ["row", "col", None])
@pytest.mark.parametrize("shape,pattern", DEGENERATE, ids=str)
def test_degenerate_a_numpy(rng, shape, pattern, kernel_major):
    """`nmgen check --shape 1x1x64 --pattern 2:4 --a-major col` refused its own kernel: a (1, K)
    array is both C- and F-contiguous and spmm decided "row"."""
    p, A, B = random_problem(rng, *shape, *pattern)
    k = nmgen.compile(Problem(*shape, p.pattern, a_major=kernel_major), B=B) if kernel_major else None
    for host in (A, np.asfortranarray(A)):
        assert ok(spmm(host, B, kernel=k), A, B)


@pytest.mark.parametrize("kernel_major", ["row", "col", None])
@pytest.mark.parametrize("shape,pattern", DEGENERATE, ids=str)
def test_degenerate_a_torch(rng, shape, pattern, kernel_major):
    torch = torch_or_skip()
    p, A, B = random_problem(rng, *shape, *pattern)
    k = nmgen.compile(Problem(*shape, p.pattern, a_major=kernel_major), B=B) if kernel_major else None
    rows = torch.from_numpy(A).cuda()
    cols = torch.from_numpy(np.ascontiguousarray(A.T)).cuda().t()       # (1, K) with strides (1, 1) for M = 1
    for a in (rows, cols):
        out = torch.full((p.M, p.N), float("nan"), device="cuda")
        assert spmm(a, B, out=out, kernel=k) is out
        torch.cuda.synchronize()
        assert ok(out.cpu().numpy(), A, B)
        fresh = spmm(a, B, kernel=k)
        torch.cuda.synchronize()
        assert ok(fresh.cpu().numpy(), A, B)


def test_degenerate_a_cupy(rng):
    cupy = cupy_or_skip()
    p, A, B = random_problem(rng, 1, 1, 64, 2, 4, 1)
    for a_major in ("row", "col"):
        k = nmgen.compile(Problem(1, 1, 64, p.pattern, a_major=a_major), B=B)
        out = spmm(cupy.asarray(A), B, kernel=k)
        cupy.cuda.get_current_stream().synchronize()
        assert ok(cupy.asnumpy(out), A, B)


def test_n_one_output_view(rng):
    """A (M, 1) output whose size-1 dimension has an odd stride is still C-contiguous."""
    torch = torch_or_skip()
    p, A, B = random_problem(rng, 17, 1, 64, 2, 4, 1)
    out = torch.full((17,), float("nan"), device="cuda").as_strided((17, 1), (1, 5))
    spmm(torch.from_numpy(A).cuda(), B, out=out)
    torch.cuda.synchronize()
    assert ok(out.cpu().numpy(), A, B)


# ---- an empty batch (M = 0): an empty (0, N) result of A's library, nothing launched --------------
def test_empty_batch_numpy(rng):
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    C = spmm(np.zeros((0, 64), np.float32), B)
    assert isinstance(C, np.ndarray) and C.shape == (0, 100) and C.dtype == np.float32


def test_empty_batch_torch(rng):
    torch = torch_or_skip()
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    A = torch.empty((0, 64), device="cuda")
    C = spmm(A, B)
    assert isinstance(C, torch.Tensor) and C.is_cuda and tuple(C.shape) == (0, 100) and C.dtype == torch.float32
    out = torch.empty((0, 100), device="cuda")
    assert spmm(A, B, out=out) is out
    assert tuple(spmm(torch.empty((64, 0), device="cuda").t(), B).shape) == (0, 100)   # column-major empty
    with pytest.raises(nmgen.ShapeError, match="A's columns must equal B's rows"):
        spmm(torch.empty((0, 32), device="cuda"), B)


def test_empty_batch_cupy(rng):
    cupy = cupy_or_skip()
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    C = spmm(cupy.empty((0, 64), cupy.float32), B)
    assert isinstance(C, cupy.ndarray) and C.shape == (0, 100) and C.dtype == cupy.float32


# ---- out overlapping A: refused on the GPU path (split-K zeroes C before the kernel reads A) ---------
SPLIT = nmgen.Schedule(block_m=16, block_n=64, warp_m=16, warp_n=32, thread_m=4, thread_n=4, split_k=2)


def test_out_overlapping_a_torch(rng):
    torch = torch_or_skip()
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)                 # N == K: out=A type-checks
    At = torch.from_numpy(A).cuda()
    flat = torch.zeros(2 * A.size + 32, device="cuda")
    a = flat[:A.size].view(16, 64)
    a.copy_(At)
    for x, out in ((At, At), (At.view(64, 16).t(), At), (a, flat[32:32 + A.size].view(16, 64)),
                   (a, flat[A.size - 1:2 * A.size - 1].view(16, 64))):   # itself, a column-major view, offset views
        with pytest.raises(nmgen.ShapeError, match="out overlaps A.*pass a separate output array"):
            spmm(x, B, out=out, schedule=SPLIT)
    torch.cuda.synchronize()
    assert np.array_equal(At.cpu().numpy(), A)                             # nothing ran: A is intact
    neighbour = flat[A.size:2 * A.size].view(16, 64)                      # right after A: fine
    for s in (None, SPLIT):
        neighbour.fill_(float("nan"))
        spmm(a, B, out=neighbour, schedule=s)
        torch.cuda.synchronize()
        assert ok(neighbour.cpu().numpy(), A, B)
    assert np.array_equal(a.cpu().numpy(), A)


def test_out_overlapping_a_cupy(rng):
    cupy = cupy_or_skip()
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)
    Ac = cupy.asarray(A)
    with pytest.raises(nmgen.ShapeError, match="out overlaps A"):
        spmm(Ac, B, out=Ac, schedule=SPLIT)


def test_numpy_out_may_be_a(rng):
    """A host A is uploaded before the kernel and out written only by the download after it."""
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)
    for s in (None, SPLIT):
        X = A.copy()
        assert spmm(X, B, out=X, schedule=s) is X
        assert ok(X, A, B)


# ---- weights cannot go stale: the device copies are cached per (read-only) NMMatrix ---------------
def test_changed_weights_are_a_new_matrix(rng):
    torch = torch_or_skip()
    p, A, B = random_problem(rng, 64, 512, 512, 8, 32, 32)
    At = torch.from_numpy(A).cuda()
    C1 = spmm(At, B)
    with pytest.raises(ValueError, match="read-only"):
        B.values[...] *= 2
    B2 = nmgen.NMMatrix(B.values * 2, B.indices, B.pattern, B.shape)
    C2 = spmm(At, B2)
    torch.cuda.synchronize()
    assert ok(C1.cpu().numpy(), A, B)
    assert ok(C2.cpu().numpy(), A, B2)
