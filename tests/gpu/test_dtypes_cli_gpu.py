"""The dtypes outside the kernels, on a real GPU: `nmgen check --dtype`, the tuner, `nmgen bench
--dtype` with its baselines (cuBLAS of the same dtype, torch's semi-structured 2:4), and the fuzzer's
tensor-core cases. Their CPU twins run on the fake GPU (tests/test_check.py, test_search.py,
test_bench.py, test_fuzz.py)."""
import json
from dataclasses import replace

import numpy as np
import pytest

from nmgen import Pattern, Problem
from nmgen.cli import main


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: its arrays and baselines are not tested")


def torch_setting(torch):
    """torch's float32 matmul setting, whichever API this torch has (to see that it is restored)."""
    m = torch.backends.cuda.matmul
    return getattr(m, "fp32_precision", None), m.allow_tf32


# ---- nmgen check --dtype -------------------------------------------------------------------------
SHAPES = [("17x100x64", "8:32", 32), ("1x4096x4096", "4:32", 32), ("4095x4100x1024", "16:32", 32),
          ("33x70x96", "2:8", 8)]
DTYPES = [("fp32", None), ("tf32", None), ("bf16", None), ("fp16", None), ("bf16", "fp32"), ("fp16", "bf16"),
          ("tf32", "bf16")]


@pytest.mark.parametrize("dtype,out", DTYPES, ids=lambda x: x or "")
@pytest.mark.parametrize("a_major", ["row", "col"])
@pytest.mark.parametrize("shape,pattern,vector", SHAPES, ids=lambda x: str(x))
def test_check_in_every_dtype(capsys, dtype, out, a_major, shape, pattern, vector):
    """nmgen's own choice of kernel per dtype, numpy arrays (16-bit: ml_dtypes), within the derived bound."""
    rc = main(["check", "--shape", shape, "--pattern", pattern, "--vector", str(vector), "--a-major", a_major,
               "--dtype", dtype, *(["--out-dtype", out] if out else []), "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "PASS" in text, text


@pytest.mark.parametrize("dtype,out", DTYPES, ids=lambda x: x or "")
@pytest.mark.parametrize("a_major", ["row", "col"])
def test_check_in_every_dtype_on_torch_tensors(capsys, dtype, out, a_major):
    """The same through torch tensors of the dtype, used in place (A column-major: a transposed view)."""
    torch_or_skip()
    rc = main(["check", "--shape", "257x300x512", "--pattern", "8:32", "--vector", "16", "--a-major", a_major,
               "--dtype", dtype, *(["--out-dtype", out] if out else []), "--seed", "2", "--array", "torch"])
    text = capsys.readouterr().out
    assert rc == 0 and "PASS" in text and "(torch)" in text, text


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "tf32"])
def test_check_with_split_k_into_a_16_bit_c(capsys, dtype):
    """split-K adds fp32 partial sums into a workspace converted to C afterwards."""
    s = '{"thread_m": 0, "thread_n": 0, "a_pad": 8, "block_m": 32, "block_n": 64, "warp_m": 32, "warp_n": 32, ' \
        '"k_windows": 4, "split_k": 3}'
    rc = main(["check", "--shape", "40x136x1024", "--pattern", "12:32", "--vector", "32", "--a-major", "col",
               "--dtype", dtype, "--out-dtype", "bf16", "--seed", "3", "--schedule", s])
    text = capsys.readouterr().out
    assert rc == 0 and "PASS" in text and "sk3" in text, text


# ---- the tuner -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,c_dtype,a_major", [("bf16", None, "col"), ("f16", "f32", "row"), ("tf32", None, "row"),
                                                   ("bf16", None, "row")])
def test_tuner_measures_in_the_dtype(tmp_path, dtype, c_dtype, a_major):
    """Every candidate's result within the bound (no wrong_result), some measured, all under the dtype's key."""
    from nmgen.api import current_device
    from nmgen.db import TuningDB
    from nmgen.search.tuner import Tuner
    p = Problem(256, 2048, 2048, Pattern(8, 32, 32), dtype, a_major, c_dtype)
    db = TuningDB(tmp_path / "t.db")
    t = Tuner(p, current_device(), db, progress=False, reps=5)
    results = t.run("model-topk", topk=6, refine=1, remeasure=2)
    wrong = [(r.schedule.short(), r.error) for r in results if r.status == "wrong_result"]
    assert not wrong, wrong
    assert any(r.status == "ok" for r in results), [(r.schedule.short(), r.status, r.error) for r in results]
    assert {r["problem_key"] for r in db.rows()} == {p.key()}
    assert all(r.schedule.mma for r in results)


# ---- the baselines -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "tf32", "bf16", "f16"])
def test_dense_baseline_runs_in_its_dtype_and_restores_torch(dtype):
    torch = torch_or_skip()
    from nmgen import cublas
    before = torch_setting(torch)
    g = cublas.dense_gemm(64, 128, 256, np.random.default_rng(0), dtype)
    with g.precision():
        g.run()
    torch.cuda.synchronize()
    assert torch_setting(torch) == before
    assert cublas.baseline_title(dtype) in g.library
    from nmgen.ir.dtypes import DTYPES
    assert g.out.dtype == getattr(torch, DTYPES[dtype].torch)


def test_fp32_baseline_is_ieee_and_tf32_baseline_is_tf32():
    """The same inputs (same seed): FP32 within float32 rounding of float64, TF32 visibly off it."""
    torch = torch_or_skip()
    from nmgen import cublas
    M, N, K = 64, 128, 1024
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    err = {}
    for dtype in ("f32", "tf32"):
        g = cublas.dense_gemm(M, N, K, np.random.default_rng(0), dtype)
        with g.precision():
            g.run()
        torch.cuda.synchronize()
        C = g.out.cpu().numpy().astype(np.float64)
        err[dtype] = np.linalg.norm(C - ref) / np.linalg.norm(ref)
    assert err["f32"] < 1e-6 < 1e-4 < err["tf32"] < 1e-2, err


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_semi_structured_2_4_runs_on_this_gpu(dtype):
    """torch's cuSPARSELt backend runs 2:4 on sm_90 (its CUTLASS backend refuses sm_90): a product
    to time, checked against the dense one inside semi_structured_2_4."""
    torch = torch_or_skip()
    from nmgen import cublas
    before = torch_setting(torch)
    g = cublas.semi_structured_2_4(256, 2048, 2048, np.random.default_rng(0), dtype)
    assert not isinstance(g, str), g
    g.run()
    torch.cuda.synchronize()
    assert "semi-structured 2:4" in g.library and torch_setting(torch) == before


@pytest.mark.parametrize("shape", [(1, 4096, 4096), (4095, 4100, 1024)], ids=str)
@pytest.mark.parametrize("dtype", ["f32", "tf32"])
def test_semi_structured_2_4_times_or_says_why(shape, dtype):
    """Shapes and dtypes torch may refuse: a DenseGemm or a one-line reason, never an exception."""
    torch_or_skip()
    from nmgen import cublas
    g = cublas.semi_structured_2_4(*shape, np.random.default_rng(0), dtype)
    assert isinstance(g, cublas.DenseGemm) or (isinstance(g, str) and "\n" not in g and g), g
    print(shape, dtype, g if isinstance(g, str) else g.library)


# ---- nmgen bench --dtype ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,a_major", [("bf16", "col"), ("tf32", "row"), ("fp16", "row")])
def test_bench_against_the_baseline_of_its_dtype(tmp_path, capsys, dtype, a_major):
    torch = torch_or_skip()
    from nmgen import cublas
    from nmgen.cli.common import DTYPE_OPTIONS
    before = torch_setting(torch)
    suite = tmp_path / "shapes.txt"
    suite.write_text("256x2048x2048\n")
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    rc = main(["bench", "--suite", str(suite), "--patterns", "16:32,8:32", "--vector", "32", "--dtype", dtype,
               "--a-major", a_major, "--db", str(tmp_path / "t.db"), "--tune-topk", "4", "--candidates", "2",
               "--reps", "20", "--quiet", "--json", str(out), "--markdown", str(md)])
    text = capsys.readouterr().out
    name = DTYPE_OPTIONS[dtype]
    title = cublas.baseline_title(name)
    assert rc == 0, text
    assert f"geomean speedup over {title}" in text and torch_setting(torch) == before
    data = json.loads(out.read_text())
    assert data["dtype"] == name and data["baseline"] == f"cublas_{dtype}" and title in data["cublas"]
    assert {r["pattern"] for r in data["rows"]} == {"16:32", "8:32"}
    for r in data["rows"]:
        assert r["check"] == "pass" and r["dtype"] == name and r["baseline_ms"] == r["cublas_ms"] > 0
        assert r["speedup_vs_baseline"] == pytest.approx(r["cublas_ms"] / r["ms"])
        has_semi = "semi_structured_2_4_ms" in r or "semi_structured_2_4_error" in r
        assert has_semi == (r["pattern"] == "16:32"), r
        if name in ("bf16", "f16") and r["pattern"] == "16:32":
            assert r.get("semi_structured_2_4_ms", 0) > 0, r.get("semi_structured_2_4_error")
    assert f"| {title} ms |" in md.read_text()


# ---- the fuzzer's tensor-core cases ----------------------------------------------------------------
def test_fuzz_tensor_core_dtypes(rng):
    from nmgen import fuzz as fz
    from nmgen.api import current_device
    try:
        import torch  # noqa: F401
        arrays = ("numpy", "torch")
    except ImportError:
        arrays = ("numpy",)
    seed = int(rng.integers(2**31))
    print(f"fuzz seed {seed}")
    outs = fz.fuzz(120, seed, current_device(), interpret=False, limits=replace(fz.GPU_LIMITS, macs=5e8),
                   arrays=arrays, dtypes=("bf16", "f16", "tf32"), progress=False)
    failed = [(o.case.command(), o.detail) for o in outs if not o.ok]
    assert not failed, failed
    assert {o.case.dtype for o in outs} == {"bf16", "f16", "tf32"}
