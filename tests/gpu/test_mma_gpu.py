"""The tensor-core kernels (mma.sync bf16/f16/tf32, wgmma bf16/f16) on the GPU against float64:
fresh random inputs in their dtype, NaN-poisoned outputs, every element within the error bound of
its fp32 sum rounded to C's dtype (nmgen.reference)."""
import numpy as np
import pytest

from nmgen import Pattern, Problem, Schedule, spmm
from nmgen.checking import random_inputs
from nmgen.ir.dtypes import DTYPES
from helpers import ok

PATTERNS = [(2, 8, 8), (4, 16, 16), (16, 32, 32), (12, 32, 32), (8, 32, 32), (4, 32, 32), (8, 64, 64)]
SHAPES = [(1, 4096, 4096), (17, 100, 64), (4095, 4100, 1024), (256, 2048, 2048), (4096, 4096, 4096)]
MMA = dict(thread_m=0, thread_n=0, a_pad=8)


@pytest.fixture(autouse=True)
def private_db(monkeypatch, tmp_path):
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))   # the model's choices, not this machine's records


def inputs(rng, shape, pattern, dtype, a_major="row", c_dtype=None):
    """(problem, A as passed to spmm (numpy of the dtype; F-ordered when column-major), A and B as
    float32 holding the dtype's values (for the reference), B of the dtype)."""
    p = Problem(*shape, Pattern(*pattern), dtype, a_major, c_dtype)
    A32, B32 = random_inputs(p, rng)
    storage = "f32" if dtype == "tf32" else dtype
    A = A32.astype(DTYPES[storage].storage)
    return p, (np.asfortranarray(A) if a_major == "col" else A), A32, B32, B32.astype(storage)


def check(C, p, A32, B32):
    assert C.shape == (p.M, p.N)
    assert ok(C, A32, B32, compute="mma", out_dtype=p.c_dtype)


@pytest.mark.parametrize("a_major", ["row", "col"])
@pytest.mark.parametrize("dtype", ["bf16", "f16", "tf32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: "%d:%dx%d" % p)
def test_default_tensor_core_kernel_numpy(rng, shape, pattern, dtype, a_major):
    p, A, A32, B32, B = inputs(rng, shape, pattern, dtype, a_major)
    C = spmm(A, B, allow_tf32=dtype == "tf32")
    assert C.dtype == DTYPES[p.c_dtype].storage
    check(C, p, A32, B32)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("a_major", ["row", "col"])
@pytest.mark.parametrize("shape", [(17, 100, 64), (4095, 4100, 1024), (1, 4096, 4096)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pattern", [(8, 32, 32), (2, 8, 8), (8, 64, 64)], ids=lambda p: "%d:%dx%d" % p)
def test_torch_16_bit_in_place_with_poisoned_out(rng, shape, pattern, a_major, dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed: the in-place device path is not tested")
    p, A, A32, B32, B = inputs(rng, shape, pattern, dtype, a_major)
    tdt = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    At = torch.from_numpy(A32).to(tdt).cuda()
    if a_major == "col":
        At = At.t().contiguous().t()
    out = torch.full((p.M, p.N), float("nan"), dtype=tdt, device="cuda")
    assert spmm(At, B, out=out) is out
    torch.cuda.synchronize()
    check(out.float().cpu().numpy(), p, A32, B32)
    fresh = spmm(At, B)                 # C in A's dtype, of A's library
    torch.cuda.synchronize()
    assert fresh.dtype == tdt
    check(fresh.float().cpu().numpy(), p, A32, B32)


WGMMA_A_SMEM = dict(wgmma=1, a_load="gather", wgmma_a_smem=1, a_pad=0, stages=4)


@pytest.mark.parametrize("wgmma", [0, 1, "a_smem"])
@pytest.mark.parametrize("c_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("split_k", range(1, 9))
def test_split_k_even_and_uneven(rng, split_k, c_dtype, wgmma):
    """64 windows in 32 K tiles of 2: splits 3, 5, 6, 7 do not divide them; a bf16 C goes through
    the fp32 workspace and the conversion kernel."""
    p, A, A32, B32, B = inputs(rng, (256, 2048, 2048), (8, 32, 32), "bf16", "col", c_dtype)
    tiles = dict(block_m=128, block_n=128, warp_m=64, warp_n=128, wgmma=1) if wgmma else \
        dict(block_m=128, block_n=128, warp_m=64, warp_n=32)
    if wgmma == "a_smem":
        tiles.update(WGMMA_A_SMEM)
    s = Schedule(**{**MMA, **tiles, "k_windows": 2, "split_k": split_k})
    out = np.full((p.M, p.N), np.nan, DTYPES[c_dtype].storage)
    check(spmm(A, B, out=out, schedule=s), p, A32, B32)


@pytest.mark.parametrize("split_k", [2, 3])
def test_split_k_with_sliced_k_into_a_16_bit_c(rng, split_k):
    """Sliced K (2 warps a warp tile) under split-K into a bf16 C: slice 0's accumulators take the
    tile's sums back from the workspace (the space never pairs them; a user's schedule may)."""
    p, A, A32, B32, B = inputs(rng, (200, 1000, 2048), (8, 32, 32), "bf16", "col", "bf16")
    s = Schedule(**MMA, block_m=64, block_n=128, warp_m=64, warp_n=32, k_windows=4, split_k=split_k, warps_k=2)
    out = np.full((p.M, p.N), np.nan, DTYPES["bf16"].storage)
    check(spmm(A, B, out=out, schedule=s), p, A32, B32)


@pytest.mark.parametrize("wgmma", [0, 1, "a_smem"])
@pytest.mark.parametrize("c_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("tail", [(1, 2), (5, 3), (28, 4), (7, 8), (96, 5)], ids=lambda t: "tail%dx%d" % t)
def test_tail_split(rng, tail, c_dtype, wgmma):
    """The last tiles' K split over blocks (tail_tiles x tail_split; 30 K tiles split 4 and 8 ways
    unevenly; 96 tiles is all of them), the others whole; called twice, so the second call finds the
    workspace the first one left zeroed. Odd M and N: the tail's tiles are cut by both edges."""
    p, A, A32, B32, B = inputs(rng, (1000, 3000, 3840), (8, 32, 32), "bf16", "col", c_dtype)
    tiles = dict(block_m=128, block_n=256, warp_m=64, warp_n=128, wgmma=1) if wgmma else \
        dict(block_m=128, block_n=256, warp_m=128, warp_n=32, prefetch=1, a_load="rows")
    if wgmma == "a_smem":       # each of 8 units' own rows of A: a 128x256 block does not fit 4 stages
        tiles.update(WGMMA_A_SMEM, block_n=128, warp_n=128)
    s = Schedule(**{**MMA, **tiles, "k_windows": 4, "tail_tiles": tail[0], "tail_split": tail[1]})
    for _ in range(2):
        out = np.full((p.M, p.N), np.nan, DTYPES[c_dtype].storage)
        check(spmm(A, B, out=out, schedule=s), p, A32, B32)


FAMILIES = [   # every family of tensor-core schedule the search can pick, on odd sizes
    dict(block_m=128, block_n=128, warp_m=64, warp_n=32, k_windows=2),
    dict(block_m=128, block_n=128, warp_m=64, warp_n=32, k_windows=2, a_load="rows", min_blocks=2),
    dict(block_m=128, block_n=64, warp_m=64, warp_n=32, k_windows=4, a_load="gather"),
    dict(block_m=128, block_n=128, warp_m=64, warp_n=32, k_windows=4, prefetch=1, min_blocks=2),
    dict(block_m=128, block_n=128, warp_m=64, warp_n=32, k_windows=4, refill_row=1, stages=4),
    dict(block_m=64, block_n=128, warp_m=64, warp_n=32, k_windows=4, warps_k=2),
    dict(block_m=64, block_n=256, warp_m=64, warp_n=128, k_windows=2, stages=4, wgmma=1),
    dict(block_m=128, block_n=256, warp_m=64, warp_n=256, k_windows=2, stages=4, wgmma=1),
    dict(block_m=128, block_n=128, warp_m=64, warp_n=128, k_windows=4, stages=4, wgmma=1, a_load="gather"),
    dict(block_m=128, block_n=128, warp_m=128, warp_n=128, k_windows=2, stages=3, wgmma=1, a_load="rows"),
    # the tuner's deeper K tile (search.refine): 64 kept rows a tile at 16:32, rotated loop, 3 stages
    dict(block_m=128, block_n=256, warp_m=128, warp_n=32, k_windows=4, stages=3, a_load="rows", prefetch=1),
    # the tuner's wave-balancing block_n (search.refine): five warps of 128x32, 160 threads
    dict(block_m=128, block_n=160, warp_m=128, warp_n=32, k_windows=4, stages=3, a_load="rows", prefetch=1),
    dict(block_m=128, block_n=160, warp_m=128, warp_n=32, k_windows=2, stages=3),
    # wgmma reading A from shared memory (128-byte swizzle), one group in flight across K tiles
    dict(block_m=128, block_n=128, warp_m=64, warp_n=128, k_windows=2, stages=4, wgmma=1, a_load="gather",
         wgmma_a_smem=1, a_pad=0),
    dict(block_m=256, block_n=32, warp_m=64, warp_n=32, k_windows=8, stages=4, wgmma=1, a_load="gather",
         wgmma_a_smem=1, a_pad=0),
]


def _family_cases():
    """(shape, pattern, a_major, schedule) for every family on odd sizes, where it can run: a
    row-major 16-bit A is copied whole ("mk", window strategy only)."""
    from nmgen.ir import for_arch
    from nmgen.ir.validate import problems
    out = []
    for shape, pattern in (((1000, 3000, 4096), (8, 32, 32)), ((4095, 300, 1024), (4, 32, 32)),
                           ((33, 200, 768), (12, 32, 32)), ((1000, 1000, 1056), (16, 32, 32))):
        for a_major in ("row", "col"):
            for fields in FAMILIES:
                if a_major == "row":
                    if fields.get("a_load", "window") != "window":
                        continue
                    fields = dict(fields, a_smem="mk")
                s = Schedule(**{**MMA, **fields})
                if not problems(Problem(*shape, Pattern(*pattern), "bf16", a_major), s, for_arch("sm_90")):
                    out.append((shape, pattern, a_major, s))
    return out


@pytest.mark.parametrize("shape,pattern,a_major,schedule", _family_cases(),
                         ids=lambda x: x.short().replace(" ", "_") if isinstance(x, Schedule) else str(x))
def test_every_schedule_family(rng, shape, pattern, a_major, schedule):
    p, A, A32, B32, B = inputs(rng, shape, pattern, "bf16", a_major)
    check(spmm(A, B, schedule=schedule), p, A32, B32)


@pytest.mark.parametrize("a_major", ["row", "col"])
def test_one_weight_matrix_through_every_family(rng, a_major):
    """One B for all families, in turn and then in reverse: its prepared copies are cached per
    layout (ir.operands.layout_key), and a kernel handed another family's layout computes garbage
    (wgmma's B and mma.sync's once shared a key)."""
    shape, pattern = (1000, 3000, 4096), (8, 32, 32)
    p, A, A32, B32, B = inputs(rng, shape, pattern, "bf16", a_major)
    cases = [s for sh, pt, am, s in _family_cases() if (sh, pt, am) == (shape, pattern, a_major)]
    assert len(cases) >= (4 if a_major == "row" else len(FAMILIES))
    for s in cases + cases[::-1]:
        C = spmm(A, B, out=np.full((p.M, p.N), np.nan, DTYPES["bf16"].storage), schedule=s)
        v = ok(C, A32, B32, compute="mma", out_dtype=p.c_dtype)
        assert v, f"{s.short()}: {v.summary()}"


def test_empty_batch_16_bit(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    p, A, A32, B32, B = inputs(rng, (5, 64, 64), (8, 32, 32), "bf16")
    C = spmm(np.zeros((0, 64), DTYPES["bf16"].storage), B)
    assert C.shape == (0, 64) and C.dtype == DTYPES["bf16"].storage
    Ct = spmm(torch.zeros((0, 64), dtype=torch.bfloat16, device="cuda"), B)
    assert tuple(Ct.shape) == (0, 64) and Ct.dtype == torch.bfloat16


def test_tf32_matches_torch_rounding(rng):
    """allow_tf32 rounds both operands to TF32 (to nearest, ties away), as the reference does."""
    p, A, A32, B32, B = inputs(rng, (256, 512, 1024), (8, 32, 32), "tf32")
    C = spmm(A, B, allow_tf32=True)
    check(C, p, A32, B32)


@pytest.mark.parametrize("given", ["own", "zeroed", "dirty"])
def test_prepared_split_k_reuses_its_workspace(rng, given):
    """nmgen.prepared with a split-K bf16 kernel, launched three times on one workspace: its own
    (zeroed when made), one zeroed by the caller (workspace_zeroed=True: no memset per call), or
    one holding garbage (workspace_zeroed=False: cleared before each launch). Each product is
    right, so the kernel's in-kernel reduction leaves the workspace zeroed for the next."""
    from nmgen.prepared import PreparedSpMM
    from nmgen.runtime.memory import DeviceBuffer, download, memset16, memset32, synchronize
    p, A, A32, B32, B = inputs(rng, (3, 512, 2048), (8, 32, 32), "bf16")
    s = Schedule(**MMA, block_m=16, block_n=64, warp_m=16, warp_n=32, k_windows=2, split_k=4, a_smem="mk")
    k = PreparedSpMM.for_matrix(B, p.M, schedule=s)
    assert k.workspace_bytes == 4 * (p.M * p.N + k.kernel.ir.grid[0]) and k.launches == 1   # reduced in the kernel
    a = DeviceBuffer.from_array(np.ascontiguousarray(A))
    c = DeviceBuffer(2 * p.M * p.N)
    ws = DeviceBuffer(k.workspace_bytes) if given != "own" else None
    if ws is not None:
        memset32(ws.ptr, k.workspace_words, 0, 0 if given == "zeroed" else 0x7F7F7F7F)
    for _ in range(3):
        memset16(c.ptr, p.M * p.N, 0x7FC0)                      # NaN
        k.launch(a.ptr, c.ptr, 0, ws.ptr if ws else 0, workspace_zeroed=given == "zeroed")
        C = download(np.empty((p.M, p.N), DTYPES["bf16"].storage), c.ptr)
        synchronize()
        check(C, p, A32, B32)
