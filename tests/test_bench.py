"""`nmgen bench` without a GPU: the whole command on the fake GPU (tests/fake_gpu.py: kernels run in
the interpreter and are checked for real; times and baselines are fakes), the baselines' torch
settings, the 2:4 pruning, rows, summaries and tables per dtype."""
import json
import os
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from nmgen import bench, cublas
from nmgen.ir.problem import Pattern, Problem


@pytest.fixture
def fake_device(monkeypatch):
    """The fake H100, every kernel the tuner makes loadable, one 1 ms run per timing; the tuner
    without its local search (ptxas on every refinement made these tests slow)."""
    from functools import partialmethod

    import fake_gpu
    import nmgen.api as api
    from nmgen.runtime import timing
    from nmgen.search.tuner import Tuner
    mem = fake_gpu.install(monkeypatch)
    monkeypatch.setattr(Tuner, "run", partialmethod(Tuner.run, refine=0))
    init = api.Kernel.__init__

    def registered(self, *a, **kw):
        init(self, *a, **kw)
        api._kernels[("made", id(self))] = self
    monkeypatch.setattr(api.Kernel, "__init__", registered)
    monkeypatch.setattr(timing, "time_gpu", lambda run, stream=0, warmup=10, reps=30, flush=None, batch=None: (
        run(), timing.Timing(1.0, 1.0, 1.0, 1.0, reps, warmup, "fake"))[1])
    monkeypatch.setattr(timing, "L2Flush", lambda l2_bytes, stream=0: (lambda: None))
    return mem


@pytest.fixture
def baselines(monkeypatch):
    """Fake baselines that note the dtype they were asked for; torch's 2:4 refuses 24x... shapes."""
    asked = []

    def dense(M, N, K, *, reps=30, warmup=10, rng=None, dtype="f32"):
        asked.append(("dense", dtype))
        return 2.0, f"fake {cublas.baseline_title(dtype)}"

    def semi(M, N, K, *, reps=30, warmup=10, rng=None, dtype="f32"):
        asked.append(("2:4", dtype))
        return (None, "RuntimeError: not on this GPU") if M == 24 else (1.5, "fake 2:4")
    monkeypatch.setattr(bench, "measure_cublas", dense)
    monkeypatch.setattr(bench, "measure_semi_structured", semi)
    return asked


@pytest.mark.parametrize("dtype,a_major", [("bf16", "col"), ("tf32", "row"), ("fp16", "row"), ("fp32", "col")])
def test_bench_runs_each_dtype_against_its_own_baseline(tmp_path, fake_device, baselines, capsys, dtype, a_major):
    from nmgen.cli import main
    from nmgen.cli.common import DTYPE_OPTIONS
    name = DTYPE_OPTIONS[dtype]
    suite = tmp_path / "shapes.txt"
    suite.write_text("32x48x64\n24x48x64\n")
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    assert main(["bench", "--suite", str(suite), "--patterns", "16:32,8:32", "--vector", "16", "--a-major", a_major,
                 "--dtype", dtype, "--db", str(tmp_path / "t.db"), "--tune-topk", "2", "--candidates", "2",
                 "--reps", "20", "--quiet", "--json", str(out), "--markdown", str(md)]) == 0
    text = capsys.readouterr().out
    title = cublas.baseline_title(name)
    assert f"geomean speedup over {title} 2.00" in text and "torch's semi-structured 2:4 1.50" in text, text
    data = json.loads(out.read_text())
    assert data["dtype"] == name and data["baseline"] == cublas.baseline(name)
    assert set(baselines) == {("dense", name), ("2:4", name)}          # every baseline in the benchmark's dtype
    assert len(data["rows"]) == 4 and all(r["check"] == "pass" for r in data["rows"])
    for r in data["rows"]:
        assert r["dtype"] == name and r["baseline"] == f"cublas_{dtype}" and r["baseline_ms"] == r["cublas_ms"] == 2.0
        assert r["speedup_vs_baseline"] == r["speedup_vs_cublas"] == 2.0
        assert all(c["check"] == "pass" for c in r["candidates"]) and 1 <= len(r["candidates"]) <= 2
        half = r["pattern"] == "16:32"
        if half and r["M"] == 32:
            assert r["semi_structured_2_4_ms"] == 1.5 and r["speedup_vs_semi_structured_2_4"] == 1.5
        elif half:
            assert r["semi_structured_2_4_error"] == "RuntimeError: not on this GPU"
        else:
            assert not any(k.startswith("semi_structured") for k in r)
        assert r["bytes"] == bench.bytes_moved(Problem(r["M"], 48, 64, Pattern(int(r["pattern"][:-3]), 32, 16),
                                                       name, a_major))
    assert data["complete"] is True
    table = md.read_text()
    assert f"| {title} ms |" in table and f"geomean speedup over {title}" in table
    assert "torch's semi-structured 2:4 did not run: RuntimeError: not on this GPU" in table


def test_bench_in_a_16_bit_dtype_checks_the_kernel(tmp_path, fake_device, baselines, monkeypatch, capsys):
    """Kernels off by one product are caught in bf16 too: the tuner records them as wrong, and
    bench, left without a schedule that runs correctly, says so and exits 1."""
    import fake_gpu
    from nmgen.cli import main
    real = fake_gpu.interpret
    monkeypatch.setattr(fake_gpu, "interpret", lambda ir, arrays: real(ir, arrays) + np.float32(0.5) * (
        np.arange(ir.M * ir.N).reshape(ir.M, ir.N) == 7))
    suite = tmp_path / "shapes.txt"
    suite.write_text("16x48x64\n")
    assert main(["bench", "--suite", str(suite), "--patterns", "8:32", "--vector", "16", "--dtype", "bf16",
                 "--db", str(tmp_path / "t.db"), "--tune-topk", "1", "--quiet",
                 "--json", str(tmp_path / "b.json")]) == 1
    err = capsys.readouterr().err
    assert "FAIL no schedule of 16x48x64 8:32x16 bf16 ran correctly on H100" in err
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["rows"] == [] and len(data["unrun"]) == 1


def test_an_interrupted_bench_keeps_the_rows_it_measured(tmp_path, fake_device, baselines, monkeypatch, capsys):
    """The JSON is rewritten after every row, marked incomplete until the run ends: a run stopped
    part way (here Ctrl-C while timing the second problem) leaves the first row on disk."""
    from nmgen.cli import main
    real, calls = bench.measure_kernel, []

    def measure(*a, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(bench, "measure_kernel", measure)
    suite = tmp_path / "shapes.txt"
    suite.write_text("32x48x64\n")
    out = tmp_path / "b.json"
    assert main(["bench", "--suite", str(suite), "--patterns", "16:32,8:32", "--vector", "16", "--dtype", "bf16",
                 "--a-major", "col", "--db", str(tmp_path / "t.db"), "--tune-topk", "1", "--candidates", "1",
                 "--reps", "20", "--quiet", "--json", str(out)]) == 130
    data = json.loads(out.read_text())
    assert data["complete"] is False and [r["pattern"] for r in data["rows"]] == ["16:32"]
    assert data["summary"]["16:32"]["shapes"] == 1 and "8:32" not in data["summary"]


def test_bench_json_to_a_pipe_is_one_document(tmp_path, fake_device, baselines, capsys):
    """Rewriting after every row is for files: a device or pipe gets the finished results once."""
    from nmgen.cli import main
    suite = tmp_path / "shapes.txt"
    suite.write_text("32x48x64\n")
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got = []

    def read_until_end():              # every time the writer opens the pipe, one document
        while not got or got[-1] != "end":
            got.append(fifo.read_text())
    reader = threading.Thread(target=read_until_end, daemon=True)
    reader.start()
    assert main(["bench", "--suite", str(suite), "--patterns", "16:32,8:32", "--vector", "16", "--dtype", "bf16",
                 "--a-major", "col", "--db", str(tmp_path / "t.db"), "--tune-topk", "1", "--candidates", "1",
                 "--reps", "20", "--quiet", "--json", str(fifo)]) == 0
    for _ in range(100):               # the reader has the document (the writer closed the pipe) ...
        if got:
            break
        time.sleep(0.05)
    fifo.write_text("end")             # ... before it is told to stop
    reader.join(timeout=30)
    assert got[-1] == "end" and len(got) == 2, got[:-1]      # one document, then our end mark
    data = json.loads(got[0])
    assert data["complete"] is True and len(data["rows"]) == 2


@pytest.mark.parametrize("dtype,es,cs", [("f32", 4, 4), ("tf32", 4, 4), ("bf16", 2, 2), ("f16", 2, 2)])
def test_bytes_floor_counts_the_dtypes_bytes(dtype, es, cs):
    p = Problem(16, 4096, 4096, Pattern(8, 32, 32), dtype)
    idx = 1024 * 128
    assert bench.bytes_moved(p) == es * (1024 * 4096 + 16 * 4096) + cs * 16 * 4096 + idx
    f32_out = Problem(16, 4096, 4096, Pattern(8, 32, 32), "bf16", c_dtype="f32")
    assert bench.bytes_moved(f32_out) == bench.bytes_moved(Problem(16, 4096, 4096, Pattern(8, 32, 32), "bf16")) + \
        2 * 16 * 4096


# ---- the baselines' torch settings -------------------------------------------------------------------
def fake_torch(new_api: bool):
    matmul = types.SimpleNamespace(**({"fp32_precision": "none"} if new_api else {"allow_tf32": False}))
    return types.SimpleNamespace(backends=types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=matmul)))


@pytest.mark.parametrize("new_api", [True, False], ids=["fp32_precision", "allow_tf32"])
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_setting_holds_only_while_the_baseline_runs(new_api, tf32):
    torch = fake_torch(new_api)
    m = torch.backends.cuda.matmul
    before = dict(vars(m))
    with cublas.torch_fp32_precision(torch, tf32)():
        assert vars(m) == ({"fp32_precision": "tf32" if tf32 else "ieee"} if new_api else {"allow_tf32": tf32})
    assert vars(m) == before
    with pytest.raises(KeyError), cublas.torch_fp32_precision(torch, tf32)():
        raise KeyError("a failed run")
    assert vars(m) == before                                   # restored after an error too


def test_without_torch_the_baselines_say_why(monkeypatch):
    monkeypatch.setattr(cublas, "_torch_cuda", lambda: None)
    rng = np.random.default_rng(0)
    for dtype in ("bf16", "tf32"):
        assert bench.measure_cublas(8, 8, 8, rng=rng, dtype=dtype) == (
            None, f"torch (with a GPU) is not installed: no {cublas.baseline_title(dtype)} baseline (cupy has none)")
    assert bench.measure_semi_structured(8, 8, 8, rng=rng, dtype="bf16") == (
        None, "torch (with a GPU) is not installed")


def test_prune_2_4_keeps_the_two_largest_of_every_four():
    W = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    P = cublas.prune_2_4(W)
    g, w = P.reshape(6, 8, 4), W.reshape(6, 8, 4)
    assert ((g != 0).sum(-1) == 2).all()
    kept = np.sort(np.abs(g), -1)[..., 2:]
    np.testing.assert_array_equal(kept, np.sort(np.abs(w), -1)[..., 2:])


def test_markdown_and_summary_name_the_baseline():
    rows = [{"M": 8, "N": 8, "K": 32, "pattern": p, "ms": 1.0, "cublas_ms": c, "speedup_vs_cublas": c and c / 1.0,
             "ideal_speedup": 2.0, "tflops_eff": 1.0} for p, c in (("16:32", 3.0), ("8:32", None))]
    rows[0].update(semi_structured_2_4_ms=2.0, semi_structured_2_4="fake", speedup_vs_semi_structured_2_4=2.0)
    summary = bench.summarize(rows)
    assert summary["16:32"]["geomean_speedup_vs_semi_structured_2_4"] == 2.0
    data = {"suite": "x", "device": "H200", "date": "d", "cublas": "torch", "l2": "warm", "reps": 20, "dtype": "f16",
            "rows": rows, "summary": summary}
    text = bench.markdown(data)
    assert "| cuBLAS FP16 ms |" in text and "geomean speedup over cuBLAS FP16" in text
    assert "| 8x8x32 | 8:32 | 1.0000 | - | - (2.00) |" in text and "| 2.0000 | 2.00 |" in text
    assert "cuBLAS FP32" in bench.markdown({**data, "dtype": "f32"}) and "cuBLAS FP32" in bench.markdown(
        {k: v for k, v in data.items() if k != "dtype"})          # the FP32 benchmarks' JSON, written before dtypes


def test_markdown_shows_host_time_beside_torch_mm():
    """Rows measured with --host-time show nmgen's op and torch.mm, eager and replayed; rows without
    (none measured for them) show dashes."""
    rows = [{"M": 1, "N": 8, "K": 32, "pattern": p, "ms": 1.0, "cublas_ms": 2.0, "speedup_vs_cublas": 2.0,
             "ideal_speedup": 2.0, "tflops_eff": 1.0} for p in ("8:32", "4:32")]
    rows[0]["host_us"] = {"nmgen_eager": 12.34, "nmgen_graph": 0.061, "torch_mm_eager": 9.87, "torch_mm_graph": 0.052}
    data = {"suite": "decode", "device": "H200", "date": "d", "cublas": "torch", "l2": "warm", "reps": 20,
            "dtype": "bf16", "rows": rows, "summary": bench.summarize(rows)}
    text = bench.markdown(data)
    assert "host us/call eager: nmgen op (torch.mm) | replayed in a CUDA graph: nmgen op (torch.mm) |" in text
    assert "| 12.3 (9.9) | 0.06 (0.05) |" in text
    assert text.splitlines()[6].endswith("| 4:32 | 1.0000 | 2.0000 | 2.00 (2.00) | 1.0 | - | - |"), text


def test_markdown_shows_the_bytes_floor_where_measured():
    """A suite mixing decode rows (M <= 64: time over the bytes-time) with compute-bound ones shows the
    ratio for the first and a dash for the second."""
    rows = [{"M": m, "N": 8, "K": 32, "pattern": "8:32", "ms": 1.0, "cublas_ms": 2.0, "speedup_vs_cublas": 2.0,
             "ideal_speedup": 4.0, "tflops_eff": 1.0} for m in (bench.DECODE_M, 4096)]
    rows[0].update(copy_bandwidth=4e12, bytes_ms=0.8, time_over_bytes=1.25)
    data = {"suite": "mixed.txt", "device": "H200", "date": "d", "cublas": "torch", "l2": "warm", "reps": 20,
            "dtype": "bf16", "rows": rows, "summary": bench.summarize(rows)}
    lines = bench.markdown(data).splitlines()
    assert lines[3].endswith("| time / bytes-time |")
    assert lines[5].endswith("| 1.0 | 1.25 |") and lines[6].endswith("| 1.0 | - |"), lines


def test_a_suite_file_lists_shapes_only(tmp_path):
    # a `search --shapes` file's patterns would be dropped silently (and its shapes benchmarked thrice)
    from nmgen.cli.bench import suite_shapes
    from nmgen.errors import NMGenError
    ok = tmp_path / "suite.txt"
    ok.write_text("4096x4096x4096  # square\n\n1x4096x4096\n4096x4096x4096\n")
    assert suite_shapes(str(ok)) == [(4096, 4096, 4096), (1, 4096, 4096)]
    with pytest.raises(NMGenError, match=r"line 4 \('1x4096x4096 16:32 32'\) has more than a shape: .* --patterns"):
        suite_shapes(str(Path(__file__).parent.parent / "examples" / "llama_decode_shapes.txt"))
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("4096 x 4096 x 4096\n")
    assert suite_shapes(str(spaced)) == [(4096, 4096, 4096)]
