"""`nmgen check` and the float64 check it (and the tuner, bench, fuzzer, tests) rely on."""
import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from nmgen import Pattern, Problem
from nmgen.checking import command, random_inputs, random_weights, run_interpreter
from nmgen.reference import Expected, compare, error_bound, gamma


def nmgen(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nmgen.cli", *args], capture_output=True, text=True, env=env)


def test_gamma_is_highams():
    u = 2.0 ** -24
    assert gamma(10, u) == pytest.approx(10 * u / (1 - 10 * u))
    assert gamma(2**25, u) == float("inf")


def test_bound_passes_float32_sums_and_catches_one_missing_product(rng):
    """A float32 product passes; the same product missing one kept row's term in one element fails."""
    p = Problem(17, 40, 256, Pattern(8, 32, 32))
    A, B = random_inputs(p, rng)
    C = (A @ B.to_dense()).astype(np.float32)            # float32 accumulation (BLAS order)
    v = compare(C, A, B)
    assert v.ok and v.worst < 1 and v.checked == 17 * 40
    rows = B._rows()                                      # (W, N): the K row of each kept value
    bad = C.copy()
    products = A[2, rows[:, 5]].astype(np.float64) * B.values[:, 5]
    bad[2, 5] -= products[np.argmax(np.abs(products))]   # drop C[2, 5]'s largest product (a random one may be tiny)
    v = compare(bad, A, B)
    assert not v.ok and v.where == (2, 5) and v.bad == 1, v.summary()


def test_nan_fails_and_empty_passes(rng):
    p = Problem(3, 8, 32, Pattern(2, 4, 1))
    A, B = random_inputs(p, rng)
    C = A @ B.to_dense()
    C[1, 1] = np.nan
    v = compare(C, A, B)
    assert not v.ok and "not finite" in v.summary()
    assert compare(np.zeros((0, 8)), A[:0], B).ok


def test_bound_is_per_element_and_grows_with_k(rng):
    """Each element's bound is gamma_k times its own sum of |a||b|, k the kept rows (+1)."""
    p = Problem(2, 3, 64, Pattern(4, 32, 1))
    A, B = random_inputs(p, rng)
    e = Expected(A, B)
    absprod = np.abs(A.astype(np.float64)) @ np.abs(B.to_dense(np.float64))
    k = 64 // 32 * 4 + 1
    np.testing.assert_allclose(e.bound, gamma(k, 2.0 ** -24) * absprod + k * 2.0 ** -126 + 2.0 ** -50 * absprod)
    bf16 = error_bound(A.astype(np.float64), B.to_dense(np.float64), e.ref, k, "mma", "bf16")
    assert (bf16 > e.bound).all()                       # output rounding to bf16 widens it


def test_inputs_replay_from_the_seed():
    p = Problem(5, 70, 96, Pattern(3, 32, 8))
    A1, B1 = random_inputs(p, np.random.default_rng(42))
    A2, B2 = random_inputs(p, np.random.default_rng(42))
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(B1.to_dense(), B2.to_dense())
    np.testing.assert_array_equal(random_weights(p, 42).to_dense(), B1.to_dense())


def test_check_runs_the_schedule_spmm_would_run(tmp_path):
    """Without --schedule, check runs nmgen's own choice (the model's here: no database), which
    for this problem differs from the heuristic default schedule."""
    from nmgen.api import choose_schedule
    from nmgen.ir.device import for_arch
    from nmgen.search.heuristic import default_schedule
    p = Problem(17, 100, 64, Pattern(8, 32, 32))
    B = random_inputs(p, np.random.default_rng(3))[1]
    chosen = choose_schedule(p, for_arch("sm_90"), B)
    assert chosen != default_schedule(p, for_arch("sm_90"))
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "--interpret", "--seed", "3")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    assert f"schedule {chosen.short()} " in r.stdout


@pytest.mark.parametrize("seed", [36, 1, 2])
def test_check_of_a_one_element_product_passes(seed):
    """1x1x1024 at 2:4: a 512-term sum; the fixed 1e-5 tolerance failed 1-4% of seeds."""
    r = nmgen("check", "--shape", "1x1x1024", "--pattern", "2:4", "--interpret", "--seed", str(seed))
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("shape,pattern", [("1x1x67108864", "2:4"), ("1x67108864x1", "1:1")])
def test_interpreter_refuses_what_it_cannot_finish_before_starting(shape, pattern):
    r = nmgen("check", "--shape", shape, "--pattern", pattern, "--interpret")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # judged on memory before a schedule is chosen: no time claimed (it used to say "about 0 s")
    assert re.search(r"would take the CPU interpreter \d+ MB \(limits 120 s, 2048 MB\)", r.stderr), r.stderr
    suggested = re.search(r"`(nmgen check [^`]+)`", r.stderr).group(1)
    again = nmgen(*shlex.split(suggested)[1:])
    assert again.returncode == 0 and "PASS" in again.stdout, again.stdout + again.stderr


def _skip_with_a_gpu():
    from nmgen.api import current_device
    if current_device() is not None:
        pytest.skip("there is a GPU here: the command would run on it")


def test_without_a_gpu_the_readme_command_suggests_one_that_works():
    _skip_with_a_gpu()
    r = nmgen("check", "--shape", "4096x4096x4096", "--pattern", "8:32", "--vector", "32")
    assert r.returncode == 2 and "no GPU here" in r.stderr and "Traceback" not in r.stderr
    suggested = re.search(r"`(nmgen check [^`]+)`", r.stderr).group(1)
    again = nmgen(*shlex.split(suggested)[1:])
    assert again.returncode == 0 and "PASS" in again.stdout, again.stdout + again.stderr


def test_without_a_gpu_a_schedule_that_cannot_run_is_reported_first():
    # the "no GPU here" line used to come first and suggest an --interpret command that then failed
    _skip_with_a_gpu()
    r = nmgen("check", "--shape", "64x64x64", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
              "--schedule", '{"split_k": 2}')
    assert r.returncode == 2 and "split_k=2 exceeds the 1 K tiles" in r.stderr and "no GPU" not in r.stderr
    big = nmgen("check", "--shape", "4096x4096x4096", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
                "--schedule", '{"split_k": 2}')
    assert big.returncode == 2 and "your --schedule is for this shape and is left out" in big.stderr


def test_the_interpreter_runs_what_its_chosen_schedule_can_finish():
    """512^3 2:4 runs in seconds under the schedule check chooses; it was refused as "about 201 s"
    when the time was judged under a 16x32 tile with one window a K tile."""
    r = nmgen("check", "--shape", "512x512x512", "--pattern", "2:4", "--interpret", "--seed", "1")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    seconds = float(re.search(r"CPU interpreter: about ([\d.]+) s", r.stdout).group(1))
    assert seconds < 30


def test_without_a_gpu_a_problem_the_interpreter_runs_is_suggested_as_it_is():
    """The suggested line keeps the user's shape, seed and schedule when the interpreter can run them."""
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "2:4", "--seed", "4", "--schedule", '{"split_k": 2}')
    assert r.returncode == 2 and "checks this problem on the CPU" in r.stderr, r.stderr
    args = shlex.split(re.search(r"`(nmgen check [^`]+)`", r.stderr).group(1))
    assert args[args.index("--shape") + 1] == "17x100x64" and args[args.index("--seed") + 1] == "4"
    assert json.loads(args[args.index("--schedule") + 1])["split_k"] == 2
    again = nmgen(*args[1:])
    assert again.returncode == 0 and "PASS" in again.stdout and "sk2" in again.stdout, again.stdout + again.stderr


def test_command_replays_a_case(tmp_path):
    p = Problem(9, 33, 96, Pattern(3, 6, 3), a_major="col")
    from nmgen import Schedule
    s = Schedule(block_m=32, block_n=64, warp_m=32, warp_n=16, thread_m=4, thread_n=4, k_windows=2, split_k=3)
    line = command(p, s, 5, interpret=True)
    r = nmgen(*shlex.split(line)[1:])
    assert r.returncode == 0 and f"schedule {s.short()} " in r.stdout and "seed 5" in r.stdout, r.stdout + r.stderr
    A, B = random_inputs(p, np.random.default_rng(5))
    assert compare(run_interpreter(p, s, A, B), A, B).ok


# ---- dtypes ------------------------------------------------------------------------------------------
@pytest.fixture
def gpu(monkeypatch):
    """The API on a fake H100 (tests/fake_gpu.py): launches run the kernel IR in the interpreter."""
    import fake_gpu
    return fake_gpu.install(monkeypatch)


@pytest.mark.parametrize("dtype,out,a_major", [("bf16", None, "col"), ("fp16", None, "row"), ("tf32", None, "row"),
                                               ("bf16", "fp32", "row"), ("fp16", "bf16", "col"),
                                               ("fp32", None, "col")])
def test_check_runs_spmm_in_the_dtype(gpu, monkeypatch, capsys, dtype, out, a_major):
    """`nmgen check --dtype D` (the GPU path, on the fake GPU) runs spmm with A and B stored in D
    (bfloat16 as ml_dtypes'), tf32 with allow_tf32, C of the output dtype, and passes."""
    import nmgen.api as api
    from nmgen.cli import main
    from nmgen.cli.common import DTYPE_OPTIONS
    from nmgen.ir.dtypes import DTYPES
    seen = []
    real = api.spmm

    def spy(A, B, out=None, **kw):
        seen.append((A.dtype, A.flags.f_contiguous and not A.flags.c_contiguous, B.dtype, out.dtype,
                     kw.get("allow_tf32")))
        return real(A, B, out=out, **kw)
    monkeypatch.setattr(api, "spmm", spy)
    name = DTYPE_OPTIONS[dtype]
    store = "f32" if name == "tf32" else name
    c = DTYPE_OPTIONS[out] if out else ("f32" if name == "tf32" else name)
    assert main(["check", "--shape", "17x40x64", "--pattern", "8:32", "--vector", "8", "--a-major", a_major,
                 "--dtype", dtype, *(["--out-dtype", out] if out else []), "--seed", "4"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "on H100" in text, text
    assert seen == [(DTYPES[store].storage, a_major == "col", store, DTYPES[c].storage, name == "tf32")]


def test_the_tensor_core_check_catches_one_missing_product(rng):
    """The bf16 bound (tensor cores, C rounded to bf16) still fails a C missing one product."""
    from nmgen.checking import verdict
    p = Problem(9, 40, 256, Pattern(8, 32, 8), "bf16")
    A, B = random_inputs(p, rng)
    C = A.astype(np.float64) @ B.to_dense(np.float64)
    assert verdict(p, C.astype(np.float32), A, B, rng).ok
    rows = B._rows()[:, 5]                          # (kept rows,) input rows of column 5's kept values
    products = A[2, rows].astype(np.float64) * B.values[:, 5]
    r = int(np.argmax(np.abs(products)))            # the largest: a random small one may lie within the bound
    C[2, 5] -= products[r]
    v = verdict(p, C.astype(np.float32), A, B, rng)
    assert not v.ok and v.where == (2, 5), v.summary()


def test_an_f16_c_rounded_into_the_subnormals_passes(rng):
    """One product per element (1:5, K = 5) puts ~1e-4 of the f16 C below the smallest normal:
    rounded to nearest there it is off by up to half the subnormals' spacing (2^-25), more than
    u * |C|; the H200 fuzzer's first run failed such cases. One product too small still fails."""
    p = Problem(1399, 300, 5, Pattern(1, 5, 8), "f16")
    A, B = random_inputs(p, rng)
    C = (A.astype(np.float32) @ B.to_dense()).astype(np.float16)      # exact products, rounded once
    assert np.count_nonzero((C != 0) & (np.abs(C) < np.finfo(np.float16).tiny)) > 0
    v = compare(C, A, B, compute="mma", out_dtype="f16")
    assert v.ok, v.summary()
    C[4, 7] = np.float16(C[4, 7] * 0.99) if abs(C[4, 7]) > 1e-2 else np.float16(1)
    assert not compare(C, A, B, compute="mma", out_dtype="f16").ok


@pytest.mark.parametrize("dtype,out", [("bf16", None), ("tf32", None), ("fp16", "fp32"), ("bf16", "fp16")])
def test_command_carries_the_dtypes_and_replays(dtype, out):
    from nmgen.cli.common import DTYPE_OPTIONS
    p = Problem(9, 48, 96, Pattern(3, 32, 16), DTYPE_OPTIONS[dtype], "col", out and DTYPE_OPTIONS[out])
    line = command(p, None, 7, interpret=True)
    args = shlex.split(line)
    assert args[args.index("--dtype") + 1] == dtype
    assert ("--out-dtype" in args) == (out is not None) and (out is None or args[args.index("--out-dtype") + 1] == out)
    r = nmgen(*args[1:])
    assert r.returncode == 0 and "PASS" in r.stdout and f" {p.pattern} " in r.stdout, r.stdout + r.stderr
    assert str(p).split(" (")[0] in r.stdout          # the same problem: dtype and C dtype


def test_default_out_dtype_is_left_out_of_the_command():
    line = command(Problem(9, 48, 96, Pattern(3, 32, 16), "tf32", c_dtype="f32"), None, 7)
    assert "--dtype tf32" in line and "--out-dtype" not in line
    assert "--dtype fp32" in command(Problem(9, 48, 96, Pattern(3, 32, 16)), None, 7)


def test_torch_arrays_and_the_interpreter_are_refused_together():
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "2:4", "--interpret", "--array", "torch")
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "--array torch passes GPU tensors; the CPU interpreter (--interpret) takes numpy arrays: leave out one of "
        "the two") and "Traceback" not in r.stderr, r.stderr
