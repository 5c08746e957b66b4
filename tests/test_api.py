"""The Python API's reliability on the CPU: every schedule it can choose prepares and computes the
right product, and bad input is refused with an error that says what and how."""
import numpy as np
import pytest

import nmgen
from nmgen import spmm_reference
from nmgen.ir.operands import layout_key
from nmgen.ir import for_arch
from nmgen.search.refine import refinements
from nmgen.search.space import enumerate_space
import fake_gpu as fake
from helpers import ok, random_problem, run_interpreter

H100 = for_arch("sm_90")


@pytest.fixture(autouse=True)
def tmp_db(tmp_path, monkeypatch):
    """An empty tuning database: `compile` takes the model's choice, never a record of this machine."""
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))


@pytest.fixture
def gpu(monkeypatch):
    """The API on a fake H100 (tests/fake_gpu.py): launches run the kernel IR in the interpreter."""
    return fake.install(monkeypatch)


# ---- 1. every schedule the model or the database can choose is one that prepares and computes -----
PATTERNS = [(2, 4, 1), (2, 8, 4), (8, 32, 32), (16, 32, 32), (2, 8, 64), (4, 16, 16)]
# (M, N, K in windows of m, A's order): K = m, 2m and odd window counts; M = 1, 16, 17; odd N.
# One K tile with one index unit per block made the index chunks a transposed view (issue: small K).
SMALL_K = [(1, 4096, 1, "row"), (16, 256, 1, "row"), (17, 255, 2, "col"), (1, 1001, 3, "col"),
           (17, 100, 5, "row"), (1, 77, 2, "row")]


def _pid(x):
    return "%d:%dx%d" % x if len(x) == 3 else "%dx%dxKw%d-%s" % x


@pytest.mark.parametrize("shape", SMALL_K, ids=_pid)
@pytest.mark.parametrize("pattern", PATTERNS, ids=_pid)
def test_model_choice_prepares_and_computes(rng, pattern, shape):
    """The schedule `compile` picks with no database (the model's), run by the CPU interpreter."""
    M, N, windows, a_major = shape
    n, m, v = pattern
    p, A, B = random_problem(rng, M, N, windows * m, n, m, v, a_major)
    k = nmgen.compile(p, B=B)
    ops = nmgen.api.host_operands(B, k.problem, k.schedule)
    assert ops.bi.flags.c_contiguous and ops.bi.dtype == np.uint8
    assert ok(run_interpreter(p, k.schedule, A, B), A, B)


@pytest.mark.parametrize("shape", [(1, 300, 1, "row"), (16, 256, 1, "row"), (17, 255, 2, "col"),
                                   (1, 1001, 3, "col"), (17, 100, 5, "row")], ids=_pid)
@pytest.mark.parametrize("pattern", PATTERNS, ids=_pid)
def test_every_searchable_layout_prepares_and_computes(rng, pattern, shape):
    """What the database can hold: the space and the tuner's one-step refinements. The prepared
    weights depend only on `layout_key`, so one schedule per key is interpreted."""
    M, N, windows, a_major = shape
    n, m, v = pattern
    p, A, B = random_problem(rng, M, N, windows * m, n, m, v, a_major)
    layouts = {}
    for s in enumerate_space(p, H100):
        for c in [s] + refinements(p, s, H100, None):
            layouts.setdefault(layout_key(p, c), c)
    assert layouts
    for s in layouts.values():
        assert ok(run_interpreter(p, s, A, B), A, B), s.short()


# ---- 13. sizes are integers: refused, never truncated ----------------------------------------------
@pytest.mark.parametrize("args,kwargs,error,match", [
    (("64x64x64",), dict(pattern="2:4", vector=0), nmgen.PatternError, r"V=0 must be at least 1"),
    (("64x64x64",), dict(pattern="2:4", vector=2.5), nmgen.PatternError, r"V=2\.5 must be an integer, got float"),
    (("64x64x64",), dict(pattern="2:4", vector=True), nmgen.PatternError, r"V=True must be an integer, not a bool"),
    (((64.7, 64, 64),), dict(pattern="2:4"), nmgen.ShapeError, r"M=64\.7 must be an integer, got float"),
    (((64, 64.0, 64),), dict(pattern="2:4"), nmgen.ShapeError, r"N=64\.0 must be an integer"),
    (((64, 64, "64"),), dict(pattern="2:4"), nmgen.ShapeError, r"K='64' must be an integer, got str"),
    (((64, 64),), dict(pattern="2:4"), nmgen.ShapeError, r"must be a shape 'MxNxK', a tuple \(M, N, K\)"),
    (((0, 64, 64),), dict(pattern="2:4"), nmgen.ShapeError, r"M=0 must be a positive integer: a kernel needs at "
                                                             r"least one row of A \(nmgen.spmm returns an empty"),
    (("64x64x64",), dict(pattern=(2.5, 4)), nmgen.PatternError, r"n=2\.5 must be an integer"),
    (("64x64x63",), dict(pattern="2:4"), nmgen.ShapeError, r"pad K to 64 .*nmgen\.pad_k\(A, B, m=4\)"),
    ((nmgen.Problem(64, 64, 64, nmgen.Pattern(2, 4)),), dict(pattern="2:8"), nmgen.ShapeError,
     r"disagree with the problem's 2:4x1"),
    # a Problem's own A order and dtypes: never silently kept over different ones given beside it
    ((nmgen.Problem(17, 40, 64, nmgen.Pattern(2, 4, 8)),), dict(dtype="bf16", c_dtype="f16", a_major="col"),
     nmgen.ShapeError, r"a_major='col' and dtype='bf16' and c_dtype='f16' differ from the problem 17x40x64 2:4x8 "
                       r"\(A row-major, f32, C f32\)"),
    ((nmgen.Problem(17, 40, 64, nmgen.Pattern(2, 4, 8), "bf16", "col"),), dict(a_major="row"), nmgen.ShapeError,
     r"a_major='row' differs from the problem"),
])
def test_compile_refuses_what_it_used_to_coerce(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        nmgen.compile(*args, **kwargs)


def test_compile_takes_a_problems_own_fields_given_again():
    p = nmgen.Problem(17, 40, 64, nmgen.Pattern(2, 4, 8), "bf16", "col")
    k = nmgen.compile(p, dtype="bfloat16", a_major="col", c_dtype="bf16", pattern="2:4", vector=8)
    assert k.problem == p and ".bf16" in k.ptx


def test_compile_takes_numpy_integers_as_ints():
    k = nmgen.compile((np.int64(17), np.int32(40), np.uint16(64)), pattern="2:4", vector=np.int64(1))
    assert (k.problem.M, k.problem.N, k.problem.K) == (17, 40, 64) and type(k.problem.M) is int
    assert k.problem == nmgen.Problem(17, 40, 64, nmgen.Pattern(2, 4))



# schedule= takes what the command line's --schedule takes: fields laid over the default schedule
@pytest.mark.parametrize("given", [{"split_k": 1, "stages": 2}, '{"split_k": 1, "stages": 2}'])
def test_compile_lays_schedule_fields_over_the_default(given):
    from nmgen.search.heuristic import default_schedule
    k = nmgen.compile("8x48x64", pattern="2:4", schedule=given)
    default = default_schedule(k.problem, H100)
    assert (default.split_k, default.stages) == (2, 3)          # the fields given are what changed
    assert k.schedule == default.replace(split_k=1, stages=2)


def test_schedule_fields_mean_the_same_in_the_api_and_on_the_command_line():
    import argparse
    from nmgen.cli.common import schedule_from
    text = '{"split_k": 2, "stages": 2}'
    k = nmgen.compile("8x48x64", pattern="2:4", schedule=text)
    assert k.schedule == schedule_from(argparse.Namespace(schedule=text), k.problem, H100)


@pytest.mark.parametrize("given,match", [
    ({"splitk": 2}, r"unknown schedule field\(s\) splitk; known: a_load, .*split_k"),
    ("garbage", r"schedule is not valid JSON .*'garbage'; give a JSON object of schedule fields"),
    ("[2]", "schedule JSON must be an object of fields, got list"),
    (42, r"schedule must be a nmgen.Schedule, a dict of schedule fields or a JSON object of them .*got int 42"),
    ({"split_k": 0}, r"split_k=0 is out of range: it must be at least 1 \(1: no split\)"),
    ({"split_k": "2"}, 'split_k="2" \\(string\\) must be an integer'),
])
def test_bad_schedule_arguments_are_refused_by_compile_and_spmm(rng, given, match):
    with pytest.raises(nmgen.ScheduleError, match=match):
        nmgen.compile("8x48x64", pattern="2:4", schedule=given)
    B = nmgen.NMMatrix.from_dense(rng.standard_normal((64, 48)).astype(np.float32), "2:4", prune_first=True)
    with pytest.raises(nmgen.ScheduleError, match=match):       # before any GPU is looked for
        nmgen.spmm(np.ones((8, 64), np.float32), B, schedule=given)


def test_spmm_takes_schedule_fields(rng, gpu):
    from nmgen.search.heuristic import default_schedule
    B = nmgen.NMMatrix.from_dense(rng.standard_normal((64, 48)).astype(np.float32), "2:4", prune_first=True)
    A = rng.standard_normal((8, 64)).astype(np.float32)
    C = nmgen.spmm(A, B, schedule={"split_k": 1})
    assert ok(C, A, B)
    k = nmgen.compile("8x48x64", pattern="2:4", schedule={"split_k": 1}, B=B)
    assert k.schedule == default_schedule(k.problem, H100).replace(split_k=1)
    assert k.name in gpu.launches[-1]


# ---- 2. the weights cannot change under the caches keyed on them ------------------------------------
def test_nmmatrix_holds_read_only_copies_and_leaves_the_callers_arrays_alone(rng):
    B0 = nmgen.NMMatrix.from_dense(rng.standard_normal((64, 40)), "8:32", vector=32, prune_first=True)
    values, indices = B0.values.copy(), B0.indices.copy()          # the caller's own, writable arrays
    B = nmgen.NMMatrix(values, indices, B0.pattern, B0.shape)
    for name in ("values", "indices"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(B, name)[0, 0] = 1
        with pytest.raises(ValueError, match="read-only"):
            getattr(B, name)[...] *= 2
        with pytest.raises(ValueError):                              # and it cannot be made writable
            getattr(B, name).setflags(write=True)
    with pytest.raises(AttributeError):                              # a frozen dataclass
        B.values = values
    assert values.flags.writeable and indices.flags.writeable      # never frozen behind the caller's back
    values[0, 0] = 123.0                                           # the caller's edit is theirs alone
    assert B.values[0, 0] == B0.values[0, 0] != 123.0
    np.testing.assert_array_equal(B.to_dense(), B0.to_dense())


def test_from_dense_leaves_the_dense_matrix_writable_and_unchanged(rng):
    W = rng.standard_normal((64, 40)).astype(np.float32)
    before = W.copy()
    nmgen.NMMatrix.from_dense(W, "8:32", vector=32, prune_first=True)
    assert W.flags.writeable
    np.testing.assert_array_equal(W, before)


def test_prepared_weights_are_read_only(rng):
    p, A, B = random_problem(rng, 17, 100, 64, 8, 32, 32)
    ops = nmgen.api.host_operands(B, p, nmgen.compile(p, B=B).schedule)
    with pytest.raises(ValueError, match="read-only"):
        ops.bv[0, 0] = 1


def test_new_weights_give_a_new_product_never_a_stale_one(rng, gpu):
    """After a first product (device copies cached on B), editing B in place is refused, and the
    way to change the weights, a new NMMatrix, computes with the new values."""
    p, A, B = random_problem(rng, 17, 100, 64, 8, 32, 32)
    C1 = nmgen.spmm(A, B)
    assert ok(C1, A, B)
    with pytest.raises(ValueError, match="read-only"):
        B.values[...] *= 2
    B2 = nmgen.NMMatrix(B.values * 2, B.indices, B.pattern, B.shape)
    C2 = nmgen.spmm(A, B2)
    assert ok(C2, A, B2)
    assert ok(nmgen.spmm(A, B), A, B)     # B itself is unchanged
    assert len(gpu.launches) == 3


# ---- 7. the model's choice is cached per weight matrix where the weights decide it -----------------
def _weights(p, rng, same_rows: bool):
    """Random values; every vector keeping the same rows (short compacted lists) or random ones."""
    n, m, W, nv = p.pattern.n, p.pattern.m, p.kept_rows, p.vectors
    if same_rows:
        idx = np.tile(np.arange(n, dtype=np.uint8), p.windows)[:, None].repeat(nv, 1)
    else:
        keys = rng.random((p.windows, m, nv))
        idx = np.sort(np.argsort(keys, axis=1)[:, :n, :], axis=1).reshape(W, nv).astype(np.uint8)
    return nmgen.NMMatrix(rng.standard_normal((W, p.N)).astype(np.float32), idx, p.pattern, (p.K, p.N))


@pytest.fixture
def fresh_model_cache(monkeypatch):
    import weakref
    from nmgen.search import choose
    monkeypatch.setattr(choose, "_model_choice", {})
    monkeypatch.setattr(choose, "_model_choice_by_b", weakref.WeakKeyDictionary())
    return choose


def test_second_weight_matrix_gets_its_own_model_choice(rng, fresh_model_cache):
    """Two B's of one shape whose compacted "rows" lists differ: the second must not inherit the first's schedule."""
    from nmgen.search.choose import model_best
    p = nmgen.Problem(64, 256, 256, nmgen.Pattern(4, 32, 32))
    B1, B2 = _weights(p, rng, same_rows=True), _weights(p, rng, same_rows=False)
    best1, best2 = model_best(p, H100, B1), model_best(p, H100, B2)
    assert best1 != best2                       # the premise: the weights decide the model's choice here
    assert fresh_model_cache.choose(p, H100, B1) == best1
    assert fresh_model_cache.choose(p, H100, B2) == best2
    assert fresh_model_cache.choose(p, H100, B1) == best1
    assert nmgen.compile(p, B=B2).schedule == best2


def test_model_choice_cache_key(rng, fresh_model_cache, monkeypatch):
    """Computed once per (problem, device, B) where "rows" schedules exist, once per (problem,
    device) where they do not, and dropped with B."""
    import gc
    calls = []

    def fake_best(problem, device, B=None):
        calls.append(B)
        return nmgen.Schedule(k_windows=len(calls))

    monkeypatch.setattr(fresh_model_cache, "model_best", fake_best)
    choose = fresh_model_cache.choose
    rows = nmgen.Problem(64, 256, 256, nmgen.Pattern(4, 32, 32))        # 4:32 has "rows" schedules
    B1, B2 = _weights(rows, rng, True), _weights(rows, rng, True)
    assert [choose(rows, H100, b).k_windows for b in (B1, B2, B1, B2, None, None)] == [1, 2, 1, 2, 3, 3]
    assert calls == [B1, B2, None]
    plain = nmgen.Problem(64, 256, 256, nmgen.Pattern(2, 4, 1))          # 2:4 row-major: no "rows" schedule
    C1, C2 = _weights(plain, rng, False), _weights(plain, rng, False)
    assert choose(plain, H100, C1) == choose(plain, H100, C2) == choose(plain, H100, None)
    assert len(calls) == 4
    del B1, calls[:]
    gc.collect()
    assert len(fresh_model_cache._model_choice_by_b) == 1


# ---- 6. degenerate dimensions do not make A's layout ambiguous ---------------------------------------
@pytest.mark.parametrize("shape,strides,row,col", [
    ((4, 8), (32, 4), True, False),          # row-major
    ((4, 8), (4, 16), False, True),          # its transpose's view: column-major
    ((1, 8), (32, 4), True, True),           # M = 1 (a row of a bigger matrix): both
    ((1, 8), (4, 4), True, True),            # torch's (8, 1).t(): the size-1 stride is anything
    ((1, 8), (0, 4), True, True),
    ((8, 1), (4, 4), True, True),            # K = 1
    ((8, 1), (4, 999), True, True),
    ((1, 1), (7, 3), True, True),
    ((0, 8), (32, 4), True, True),           # empty: no bytes to place
    ((4, 8), (64, 4), False, False),         # every other row: gaps
    ((4, 8), (32, 8), False, False),         # every other column
    ((1, 8), (32, 8), False, False),         # M = 1 but K strided
    ((4, 8), (4, 32), False, False),         # column-major with gaps
])
def test_dense_layouts_ignore_size_one_strides(shape, strides, row, col):
    from nmgen.runtime.arrays import DeviceArray
    d = DeviceArray(1 << 20, shape, strides, np.dtype(np.float32), 0, 0, None)
    assert (d.c_contiguous, d.f_contiguous) == (row, col)
    if all(s % 4 == 0 and s > 0 for s in strides):   # numpy, given the same strides, agrees
        a = np.lib.stride_tricks.as_strided(np.zeros(4096, np.float32), shape, strides)
        assert (a.flags.c_contiguous, a.flags.f_contiguous) == (row, col)


@pytest.mark.parametrize("row,col,want,expect", [
    (True, False, None, "row"), (False, True, None, "col"), (True, True, None, "either"),
    (True, True, "col", "col"), (True, True, "row", "row"),
    (True, False, "col", "row"),     # not both: A's own order (spmm then refuses the kernel, saying why)
    (False, True, "row", "col"), (False, False, None, None), (False, False, "row", None),
])
def test_a_major_decision(row, col, want, expect):
    from nmgen.api import a_major_of
    assert a_major_of(row, col, want) == expect


# M = 1 (nmgen check --shape 1x1x64 --pattern 2:4 --a-major col refused its own kernel), K = m = 1, N = 1
DEGENERATE = [((1, 1, 64), (2, 4, 1)), ((1, 100, 64), (8, 32, 32)), ((5, 3, 1), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))]


@pytest.mark.parametrize("kernel_major", ["row", "col", None])
@pytest.mark.parametrize("shape,pattern", DEGENERATE, ids=str)
def test_degenerate_a_runs_with_a_kernel_of_either_layout(rng, gpu, shape, pattern, kernel_major):
    p, A, B = random_problem(rng, *shape, *pattern)
    k = nmgen.compile(nmgen.Problem(*shape, p.pattern, a_major=kernel_major), B=B) if kernel_major else None
    for host in (A, np.asfortranarray(A), np.ascontiguousarray(A)):
        assert ok(nmgen.spmm(host, B, kernel=k), A, B)
    rows = fake.FakeCudaArray.from_numpy(gpu, A)                          # row-major
    cols = fake.FakeCudaArray.from_numpy(gpu, np.ascontiguousarray(A.T)).T   # a transposed view
    for a in (rows, cols):
        out = fake.FakeCudaArray.from_numpy(gpu, np.full((p.M, p.N), np.nan, np.float32))
        assert nmgen.spmm(a, B, out=out, kernel=k) is out
        assert ok(out.numpy(), A, B)
    if kernel_major:
        assert all(name == k.name for name in gpu.launches)


def test_a_single_row_runs_a_column_major_only_schedule_and_its_column_major_tuning(rng, gpu, tmp_path):
    """A (1, K) A is both row- and column-major. A schedule only a column-major 16-bit A can run
    ("rows" on wgmma) runs column-major; without one, a column-major tuning record is used
    (`nmgen search --a-major col` of a decode shape), where once both were refused or ignored."""
    from nmgen.checking import random_inputs, stored_weights
    from nmgen.db import TuningDB
    from nmgen.toolchain import toolchain_fields
    p = nmgen.Problem(1, 256, 128, nmgen.Pattern(16, 32, 32), "bf16", "col")
    A, B = random_inputs(p, rng)
    B = stored_weights(p, B)
    A = np.asarray(A).astype(B.values.dtype)
    s = dict(block_m=64, block_n=256, warp_m=64, warp_n=256, thread_m=0, thread_n=0, a_pad=8, wgmma=1, a_load="rows")
    for host in (A, np.asfortranarray(A)):
        C = nmgen.spmm(host, B, schedule=s)
        assert ok(C.astype(np.float32), A, B, compute="mma", out_dtype="bf16")
    k = nmgen.compile(p, schedule=s, B=B, a_major="col", dtype="bf16")
    assert gpu.launches[-1] == k.name
    with pytest.raises(nmgen.ScheduleError, match="a row-major 16-bit A"):   # a schedule neither order runs
        nmgen.spmm(A, B, schedule=dict(s, a_smem="mk"))
    # a column-major record for the decode shape, none row-major: spmm runs the recorded kernel
    tuned = nmgen.Schedule(**{**s, "wgmma": 0, "warp_m": 16, "warp_n": 32, "block_m": 16, "block_n": 64,
                              "a_load": "gather", "k_windows": 2})
    dev = nmgen.ir.for_arch("sm_90")
    db = TuningDB(str(tmp_path / "tuning.db"))
    db.record({"problem_key": p.key(), "schedule_hash": tuned.hash(), "device_key": dev.key(), "M": 1, "N": 256,
               "K": 128, "keep_n": 16, "window_m": 32, "vector": 32, "schedule": tuned.to_json(), "status": "ok",
               "median_us": 5.0, **toolchain_fields(dev.arch, dev.driver)})
    C = nmgen.spmm(A, B)
    assert ok(C.astype(np.float32), A, B, compute="mma", out_dtype="bf16")
    assert gpu.launches[-1] == nmgen.compile(p, schedule=tuned, B=B, a_major="col", dtype="bf16").name


def test_n_one_output_with_any_size_one_stride(rng, gpu):
    p, A, B = random_problem(rng, 17, 1, 64, 2, 4, 1)
    buf = fake.FakeCudaArray.from_numpy(gpu, np.full(17, np.nan, np.float32))
    out = buf.view(0, (17, 1), (1, 5))          # (17, 1) with stride 5 along its size-1 dimension
    assert nmgen.spmm(fake.FakeCudaArray.from_numpy(gpu, A), B, out=out) is out
    assert ok(out.numpy(), A, B)


def test_a_kernel_of_the_other_layout(rng, gpu):
    """A host A is copied in the given kernel's order; a GPU A that is only row-major is refused a
    column-major kernel, with the reason."""
    p, A, B = random_problem(rng, 17, 100, 64, 8, 32, 32)
    col = nmgen.compile(nmgen.Problem(17, 100, 64, p.pattern, a_major="col"), B=B)
    assert ok(nmgen.spmm(A, B, kernel=col), A, B)
    with pytest.raises(nmgen.ShapeError, match=r"compiled for .*\(A column-major\), not 17x100x64 8:32x32: compile"):
        nmgen.spmm(fake.FakeCudaArray.from_numpy(gpu, A), B, kernel=col,
                   out=fake.FakeCudaArray.from_numpy(gpu, np.empty((17, 100), np.float32)))


def _compiled_case(p, s, seed):
    """(kernel, A, B, rng): random inputs of `p` (B in its storage dtype) and the kernel of
    schedule `s` compiled for them, as run_gpu takes them."""
    from nmgen.checking import random_inputs, stored_weights
    rng = np.random.default_rng(seed)
    A, B = random_inputs(p, rng)
    B = stored_weights(p, B)
    return nmgen.compile(p, schedule=s, B=B), A, B, rng


def test_a_given_wgmma_kernel_of_row_lists_is_remade_for_these_weights(gpu):
    """spmm(kernel=k) recompiles a "rows" kernel for the B it is given: for the GPU's architecture
    (sm_90), not the wgmma PTX target (sm_90a) the kernel records (the fuzzer's first H200 run)."""
    from nmgen.checking import run_gpu, verdict
    p = nmgen.Problem(70, 100, 256, nmgen.Pattern(4, 32, 16), "bf16", "col")
    s = nmgen.Schedule(block_m=64, block_n=64, warp_m=64, warp_n=64, thread_m=0, thread_n=0, k_windows=4,
                       a_pad=8, a_load="rows", wgmma=1)
    k, A, B, rng = _compiled_case(p, s, 5)
    assert (k.arch, k.gpu_arch) == ("sm_90a", "sm_90")
    assert (v := verdict(p, run_gpu(k, A, B), A, B, rng)), v.summary()


# ---- 5. an empty batch (M = 0) is an empty product, with no GPU at all ------------------------------
@pytest.fixture
def no_gpu_work(monkeypatch):
    """Anything that would compile or touch the GPU fails the test."""
    from nmgen.runtime import driver

    def refuse(*a, **k):
        raise AssertionError("an empty batch must not compile or touch the GPU")
    monkeypatch.setattr(nmgen.api, "compile", refuse)
    monkeypatch.setattr(driver, "init", refuse)
    monkeypatch.setattr(driver, "use_device", refuse)


def _kernel(problem):
    """A kernel object made directly (nmgen.compile is refused under no_gpu_work)."""
    from nmgen.search.heuristic import default_schedule
    return nmgen.Kernel(problem, default_schedule(problem, H100), "sm_90")


@pytest.mark.parametrize("order", ["C", "F"])
def test_empty_batch_numpy(rng, no_gpu_work, order):
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    A = np.zeros((0, 64), np.float32, order=order)
    C = nmgen.spmm(A, B)
    assert isinstance(C, np.ndarray) and C.shape == (0, 100) and C.dtype == np.float32
    out = np.empty((0, 100), np.float32)
    assert nmgen.spmm(A, B, out=out) is out
    assert nmgen.spmm(np.zeros((0, 64)), B).shape == (0, 100)          # float64 A: converted, still empty
    np.testing.assert_array_equal(spmm_reference(A, B), np.zeros((0, 100)))
    assert nmgen.spmm(A, B, kernel=_kernel(nmgen.Problem(8, 100, 64, B.pattern))).shape == (0, 100)


def test_empty_batch_checks_still_apply(rng, no_gpu_work):
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    with pytest.raises(nmgen.ShapeError, match=r"A is 0x32 but B has K=64 rows"):
        nmgen.spmm(np.zeros((0, 32), np.float32), B)
    with pytest.raises(nmgen.ShapeError, match=r"out must be a writable C-contiguous float32 numpy array of shape "
                                               r"\(0, 100\), got ndarray float32 \(0, 99\)"):
        nmgen.spmm(np.zeros((0, 64), np.float32), B, out=np.empty((0, 99), np.float32))
    other = _kernel(nmgen.Problem(8, 100, 64, nmgen.Pattern(16, 32, 32)))
    with pytest.raises(nmgen.ShapeError, match=r"kernel was compiled for 8x100x64 16:32x32, not for B"):
        nmgen.spmm(np.zeros((0, 64), np.float32), B, kernel=other)


def test_empty_batch_on_the_gpu_path(rng, gpu):
    p, _, B = random_problem(rng, 1, 100, 64, 8, 32, 32)
    A = fake.FakeCudaArray.from_numpy(gpu, np.zeros((0, 64), np.float32))
    C = nmgen.spmm(A, B)
    assert isinstance(C, fake.FakeCudaArray) and C.shape == (0, 100)
    out = fake.FakeCudaArray.from_numpy(gpu, np.zeros((0, 100), np.float32))
    assert nmgen.spmm(A, B, out=out) is out
    assert nmgen.spmm(A.T.T, B, out=out) is out
    assert gpu.launches == [] and gpu.memsets == 0
    with pytest.raises(nmgen.ShapeError, match=r"out must be a C-contiguous float32 GPU array of shape \(0, 100\)"):
        nmgen.spmm(A, B, out=fake.FakeCudaArray.from_numpy(gpu, np.zeros((1, 100), np.float32)))


# ---- 3. an output that overlaps A ---------------------------------------------------------------------
def _dev(ptr, shape, strides, itemsize=4):
    from nmgen.runtime.arrays import DeviceArray
    return DeviceArray(ptr, shape, tuple(s * itemsize for s in strides), np.dtype(f"f{itemsize}"), 0, 0, None)


BASE = 1 << 20
A44 = _dev(BASE, (4, 4), (4, 1))                                   # a 4x4 row-major matrix: 64 bytes


@pytest.mark.parametrize("other,expect", [
    (A44, True),                                                   # itself
    (_dev(BASE, (4, 4), (1, 4)), True),                            # its transpose
    (_dev(BASE + 48, (1, 4), (4, 1)), True),                       # its last row
    (_dev(BASE + 60, (2, 2), (2, 1)), True),                       # starts on its last element
    (_dev(BASE - 16, (2, 2), (2, 1)), False),                      # ends right before it
    (_dev(BASE - 12, (2, 2), (2, 1)), True),                       # ends on its first element
    (_dev(BASE + 64, (4, 4), (4, 1)), False),                      # the next matrix of a batch
    (_dev(BASE + 64, (4, 4), (1, 4)), False),                      # ... transposed
    (_dev(BASE + 64, (0, 4), (4, 1)), False),                      # empty: no bytes
    (_dev(BASE + 32, (0, 4), (4, 1)), False),                      # empty inside A: still none
    (_dev(BASE + 60, (2, 2), (-2, -1)), True),                     # negative strides reaching back into it
    (_dev(BASE + 76, (2, 2), (-2, -1)), False),                    # ... stopping right after it
    (_dev(BASE + 8, (3, 1), (4, 9)), True),                        # a column view (size-1 stride anything)
])
def test_overlap_is_a_byte_range_test(other, expect):
    from nmgen.runtime.arrays import byte_range, overlaps
    assert byte_range(A44.ptr, A44.shape, A44.strides, 4) == (BASE, BASE + 64)
    assert overlaps(A44, other) is expect and overlaps(other, A44) is expect


def test_out_overlapping_a_is_refused_on_the_gpu_path(rng, gpu):
    """out=A with N == K used to run, and split-K's zeroing of C wiped A first."""
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)
    Ad = fake.FakeCudaArray.from_numpy(gpu, A)
    At = fake.FakeCudaArray.from_numpy(gpu, np.ascontiguousarray(A.T)).T      # column-major A
    for a, out in ((Ad, Ad), (Ad, Ad.view(0, (16, 64), (64, 1))), (At, At.T.view(0, (16, 64), (64, 1)))):
        with pytest.raises(nmgen.ShapeError, match=r"out overlaps A: .*pass a separate output array"):
            nmgen.spmm(a, B, out=out, schedule=nmgen.Schedule(block_m=16, block_n=64, warp_m=16, warp_n=32,
                                                              thread_m=4, thread_n=4, split_k=2))
    big = fake.FakeCudaArray.from_numpy(gpu, np.zeros(16 * 64 * 2 + 32, np.float32))
    a = big.view(0, (16, 64), (64, 1))
    a_col = big.view(0, (16, 64), (1, 16))
    gpu.bytes(a.ptr, A.nbytes)[:] = A.reshape(-1).view(np.uint8)
    with pytest.raises(nmgen.ShapeError, match="out overlaps A"):
        nmgen.spmm(a, B, out=big.view(32, (16, 64), (64, 1)))           # half a matrix further on
    with pytest.raises(nmgen.ShapeError, match="out overlaps A"):
        nmgen.spmm(a_col, B, out=big.view(16 * 64 - 1, (16, 64), (64, 1)))   # sharing one element
    assert gpu.launches == []
    out = big.view(16 * 64, (16, 64), (64, 1))                         # the disjoint neighbour: fine
    assert nmgen.spmm(a, B, out=out) is out
    assert ok(out.numpy(), A, B)
    assert np.array_equal(a.numpy(), A)                                  # A untouched


def test_numpy_out_may_be_a(rng, gpu):
    """numpy A is uploaded before the kernel runs and out is written only by the download after
    it: out=A (N == K) is harmless and gives the product, also with split-K."""
    p, A, B = random_problem(rng, 16, 64, 64, 8, 32, 32)
    for s in (None, nmgen.Schedule(block_m=16, block_n=64, warp_m=16, warp_n=32, thread_m=4, thread_n=4,
                                   split_k=2)):
        X = A.copy()
        assert nmgen.spmm(X, B, out=X, schedule=s) is X
        assert ok(X, A, B)
    buf = np.zeros(16 * 64 + 8, np.float32)
    X, out = buf[:16 * 64].reshape(16, 64), buf[8:].reshape(16, 64)    # overlapping views of one buffer
    X[...] = A
    assert nmgen.spmm(X, B, out=out) is out and ok(out, A, B)
    frozen = np.empty((16, 64), np.float32)
    frozen.flags.writeable = False               # the download writes raw bytes: it must not ignore that
    with pytest.raises(nmgen.ShapeError, match="out must be a writable"):
        nmgen.spmm(A, B, out=frozen)


def test_out_refusal_says_which_requirement_failed(rng, gpu):
    B = nmgen.NMMatrix.from_dense(rng.standard_normal((64, 48)).astype(np.float32), "2:4", prune_first=True)
    A = rng.standard_normal((8, 64)).astype(np.float32)
    frozen = np.empty((8, 48), np.float32)
    frozen.flags.writeable = False
    for out, why in [(np.empty((48, 8), np.float32).T, r"it is not C-contiguous: its strides are \(4, 32\) bytes, "
                                                       r"row-major without gaps is \(192, 4\); pass a row-major"),
                     (np.empty((8, 40), np.float32), r"its shape is \(8, 40\), not \(8, 48\)$"),
                     (frozen, "it is read-only$")]:
        with pytest.raises(nmgen.ShapeError, match=r"out must be a writable C-contiguous float32 numpy array of "
                                                   r"shape \(8, 48\), got ndarray float32 .*: " + why):
            nmgen.spmm(A, B, out=out)
    Ad = fake.FakeCudaArray.from_numpy(gpu, A)
    wide = fake.FakeCudaArray.from_numpy(gpu, np.zeros((8, 96), np.float32))
    with pytest.raises(nmgen.ShapeError, match=r"out must be a C-contiguous float32 GPU array of shape \(8, 48\), got "
                                               r".*: it is not C-contiguous: its strides are \(384, 4\) bytes, "
                                               r"row-major without gaps is \(192, 4\)"):
        nmgen.spmm(Ad, B, out=wide.view(0, (8, 48), (96, 1)))
    with pytest.raises(nmgen.ShapeError, match=r"GPU array of shape \(8, 48\), got ndarray float32 \(8, 48\): it "
                                               r"is not on a GPU \(A is\)"):
        nmgen.spmm(Ad, B, out=np.empty((8, 48), np.float32))


def test_download_refuses_arrays_its_raw_copy_would_corrupt():
    """The device-to-host copy writes nbytes at the data pointer: a strided or read-only array
    would get bytes where they do not belong (checked before any CUDA call: no GPU needed)."""
    from nmgen.runtime.memory import download
    frozen = np.zeros((4, 4), np.float32)
    frozen.flags.writeable = False
    for bad in (np.zeros((4, 8), np.float32)[:, ::2], np.zeros((4, 4), np.float32).T[:, :3], frozen):
        with pytest.raises(nmgen.ShapeError, match="C-contiguous writable"):
            download(bad, 1 << 20)


# ---- dtypes: bf16 / f16 / tf32 through the API (tensor-core kernels on the fake GPU) -----------------
def _nm(rng, K, N, pattern, vector, dtype):
    return nmgen.NMMatrix.from_dense(rng.standard_normal((K, N)), pattern, vector=vector, prune_first=True,
                                     dtype=dtype)


@pytest.mark.parametrize("dtype,out_dtype", [("bf16", None), ("f16", None), ("bf16", "f32"), ("f16", "f32")])
def test_16_bit_products_through_spmm(rng, gpu, dtype, out_dtype):
    """A numpy bf16/f16 A and B: a tensor-core kernel, C in A's dtype (or out's), within the bound of
    an fp32 sum rounded to C's dtype, computed from the inputs as stored."""
    from nmgen.ir.dtypes import DTYPES
    B = _nm(rng, 64, 100, "8:32", 32, dtype)
    A = rng.standard_normal((17, 64)).astype(DTYPES[dtype].storage)
    out = None if out_dtype is None else np.full((17, 100), np.nan, DTYPES[out_dtype].storage)
    C = nmgen.spmm(A, B, out=out)
    assert C.dtype == DTYPES[out_dtype or dtype].storage and C.shape == (17, 100)
    assert ok(C, A.astype(np.float32), B.astype("f32"), compute="mma", out_dtype=out_dtype or dtype)
    assert "bf16" in gpu.launches[-1] or "f16" in gpu.launches[-1]


def test_16_bit_split_k_goes_through_an_fp32_workspace(rng, gpu):
    from nmgen.ir.dtypes import DTYPES
    B = _nm(rng, 512, 64, "8:32", 32, "bf16")
    A = rng.standard_normal((33, 512)).astype(DTYPES["bf16"].storage)
    s = nmgen.Schedule(block_m=32, block_n=64, warp_m=32, warp_n=32, thread_m=0, thread_n=0, a_pad=8, k_windows=2,
                       split_k=3)
    C = nmgen.spmm(np.asfortranarray(A), B, schedule=s)
    assert C.dtype == DTYPES["bf16"].storage
    assert ok(C, A.astype(np.float32), B.astype("f32"), compute="mma", out_dtype="bf16")


def test_odd_16_bit_rows_are_padded_to_the_kernels_pitch(rng, gpu):
    """A column-major bf16 A with M = 17: its K rows of 17 elements start 2-byte aligned; the API
    copies A into rows of 18 elements (device path) or uploads it so (host path)."""
    from nmgen.ir.dtypes import DTYPES
    B = _nm(rng, 64, 40, "8:32", 8, "bf16")
    A = rng.standard_normal((17, 64)).astype(DTYPES["bf16"].storage)
    ref_ok = lambda C: ok(C, A.astype(np.float32), B.astype("f32"), compute="mma", out_dtype="bf16")  # noqa: E731
    assert ref_ok(nmgen.spmm(np.asfortranarray(A), B))
    a = fake.FakeCudaArray.from_numpy(gpu, np.ascontiguousarray(A.T)).T
    out = fake.FakeCudaArray.from_numpy(gpu, np.full((17, 40), np.nan, DTYPES["bf16"].storage))
    assert nmgen.spmm(a, B, out=out) is out
    assert ref_ok(out.numpy())


def test_tf32_is_opt_in(rng, gpu):
    B = _nm(rng, 64, 64, "8:32", 32, "f32")
    A = rng.standard_normal((16, 64)).astype(np.float32)
    nmgen.spmm(A, B)
    assert "tf32" not in gpu.launches[-1]
    C = nmgen.spmm(A, B, allow_tf32=True)
    assert "tf32" in gpu.launches[-1] and C.dtype == np.float32
    from nmgen.ir.dtypes import round_tf32
    Bt = nmgen.NMMatrix(round_tf32(B.values), B.indices, B.pattern, B.shape)
    assert ok(C, round_tf32(A), Bt, compute="mma")


def test_tf32_is_a_permission_that_a_small_vector_declines(rng, gpu):
    """allow_tf32 with V = 4 (the tensor cores' 8-column tiles need V a multiple of 8): FFMA, as
    torch's allow_tf32 permits TF32 without demanding it."""
    B = _nm(rng, 64, 64, "2:8", 4, "f32")
    A = rng.standard_normal((16, 64)).astype(np.float32)
    C = nmgen.spmm(A, B, allow_tf32=True)
    assert "tf32" not in gpu.launches[-1] and ok(C, A, B)


def test_mixed_dtypes_are_refused_with_the_fix(rng, gpu):
    from nmgen.ir.dtypes import DTYPES
    B = _nm(rng, 64, 64, "8:32", 32, "f32")
    A = rng.standard_normal((16, 64)).astype(DTYPES["bf16"].storage)
    with pytest.raises(nmgen.ShapeError, match=r"A holds bfloat16 but B holds float32 values.*B.astype\('bf16'\)"):
        nmgen.spmm(A, B)
    with pytest.raises(nmgen.ShapeError, match="out must hold float32, bfloat16 or float16, got ndarray int32"):
        nmgen.spmm(A, B.astype("bf16"), out=np.empty((16, 64), np.int32))
    # a kernel given with an out of another C dtype: the message points at out and c_dtype
    k = nmgen.compile((16, 64, 64), B.pattern, B=B.astype("bf16"), dtype="bf16")
    with pytest.raises(nmgen.ShapeError, match=r"the kernel writes a bfloat16 C but this call asks for float32 \(out's "
                                               r"dtype, else A's\): pass an out of bfloat16, or compile the kernel "
                                               r"with c_dtype='f32'"):
        k(A, B.astype("bf16"), out=np.empty((16, 64), np.float32))
    k32 = nmgen.compile((16, 64, 64), B.pattern, B=B.astype("bf16"), dtype="bf16", c_dtype="f32")
    with pytest.raises(nmgen.ShapeError, match=r"writes a float32 C but this call asks for bfloat16 \(out's dtype, "
                                               r"else A's\)"):                 # no out: A's dtype
        k32(A, B.astype("bf16"))
    # compile has no A: the message names the kernel's dtype
    with pytest.raises(nmgen.ShapeError, match=r"compiled for bf16 \(A and B holding bfloat16\) but B holds float32 "
                                               r"values.*B.astype\('bf16'\)\) or compile for dtype='f32'"):
        nmgen.compile((16, 64, 64), B.pattern, B=B, dtype="bf16")


def test_split_k_into_a_16_bit_c_reuses_its_zeroed_workspace(gpu):
    """A split-K bf16 kernel launched three times through the API: its workspace is zeroed once,
    when made (one memset), and each launch (reducing in the kernel) leaves it zeroed, so every
    product is right, not the sum of the earlier ones."""
    from nmgen.checking import run_gpu, verdict
    p = nmgen.Problem(3, 136, 512, nmgen.Pattern(8, 32, 32), "bf16", "row")
    s = nmgen.Schedule(block_m=16, block_n=64, warp_m=16, warp_n=32, thread_m=0, thread_n=0, k_windows=2,
                       a_pad=8, a_smem="mk", split_k=3)
    k, A, B, rng = _compiled_case(p, s, 11)
    assert k.ir.workspace_words and not k.ir.zero_output
    for call in range(3):
        assert (v := verdict(p, run_gpu(k, A, B), A, B, rng)), (call, v.summary())
    assert len(k._workspaces.buffers) == 1
    ws = next(iter(k._workspaces.buffers.values()))
    assert not gpu.bytes(ws.ptr, 4 * k.ir.workspace_words).any()


def test_a_16_bit_call_with_a_vector_the_tensor_cores_cannot_take_says_so_before_any_gpu_work(rng, monkeypatch):
    # no GPU needed to know: the error used to be "no CUDA driver" on a machine without one
    from nmgen.ir.dtypes import DTYPES
    from nmgen.runtime import driver

    def no_driver():
        raise AssertionError("the driver was asked for before the vector was checked")
    monkeypatch.setattr(driver, "init", no_driver)
    B = _nm(rng, 64, 56, "2:4", 7, "f32").astype("bf16")
    A = rng.standard_normal((16, 64)).astype(DTYPES["bf16"].storage)
    for batch in (A, A[:0]):      # an empty batch too: it must not pass where a full one fails
        with pytest.raises(nmgen.ShapeError, match=r"V=7: bf16 multiplies on the tensor cores.*multiple of 8; for "
                                                   r"V=7 pass float32 A and B \(the FFMA path\)"):
            nmgen.spmm(batch, B)
