"""Benchmarks: nmgen's best kernel next to cuBLAS dense GEMM of the same shape and dtype (FP32,
TF32, BF16 or FP16: nmgen.cublas), and for patterns keeping half the rows torch's semi-structured
2:4 of the same shape and dtype, in the same run.

Times are CUDA-event medians of >= 20 runs after warm-up, with L2 warm (the same buffers every
run, as the NM-SpMM paper and ../shared/anchors measure). Every kernel's result is checked once
against the float64 reference (NaN-poisoned output, up to 512 sampled rows, each element within
the error bound of its sum for the dtype's instruction and C's rounding) before it is timed.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .ir.problem import Pattern, Problem, parse_shape

# rows of A up to which a product counts as memory-bound decode: `nmgen bench` reports its time over the
# bytes floor (bytes_moved over the measured copy bandwidth), in any suite
DECODE_M = 64
SUITES = {
    # the six LLM shapes of the H100 anchors (shared/anchors/h100_peers.csv)
    "paper6": [(256, 2048, 2048), (512, 4096, 11008), (1024, 5120, 5120), (2048, 11008, 4096),
               (4096, 4096, 4096), (4096, 8192, 8192)],
    # memory-bound decode: M = 1, 16, 64 on three weight shapes
    "decode": [(M, N, K) for M in (1, 16, DECODE_M) for N, K in ((4096, 4096), (28672, 8192), (8192, 28672))],
    # shapes no tile divides, each followed by its nearest tile-aligned neighbour
    # each tile-aligned shape before its odd neighbour, whose tuning then also tries the aligned
    # shape's best schedules (search/neighbours.py)
    "odd": [(1024, 3072, 4096), (1000, 3000, 4096), (4096, 4096, 1024), (4095, 4100, 1024)],
}
ODD_PAIRS = {(1000, 3000, 4096): (1024, 3072, 4096), (4095, 4100, 1024): (4096, 4096, 1024)}
PAPER_PATTERNS = ["16:32", "12:32", "8:32", "4:32"]


def read_suite(name_or_file: str) -> list[tuple[int, int, int]]:
    """The (M, N, K) shapes of a named suite, or of a file of one MxNxK a line (# comments, blank
    lines; a shape listed twice is benchmarked once). ShapeError for a line with more than a shape."""
    from .errors import ShapeError
    if name_or_file in SUITES:
        return SUITES[name_or_file]
    shapes = []
    with open(name_or_file, encoding="utf-8-sig") as f:      # -sig: a byte-order mark some editors write
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                shape = parse_shape(text)        # (it takes "4096 x 4096 x 4096" too)
            except ShapeError:
                if len(text.split()) == 1:
                    raise
                # e.g. a `search --shapes` file: its patterns would be dropped silently
                raise ShapeError(f"line {number} ({' '.join(text.split())!r}) has more than a shape: a suite lists "
                                 f"one MxNxK a line; give the patterns with --patterns and V with --vector") from None
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def problem_of(shape, pattern: str, vector: int | None, a_major: str = "row", dtype: str = "f32") -> Problem:
    """The benchmark problem of a shape, "n:m" or "n:mxV" text, V (None: the text's, else 32), A's
    order and dtype (C: A's storage dtype)."""
    M, N, K = shape
    return Problem(M, N, K, Pattern.parse(pattern, vector, default=32), dtype, a_major)


KEY_DRAWS = 1 << 24      # random keys drawn per step of random_nm: bounds its sort's temporaries (~200 MB)


def random_nm(p: Problem, rng):
    """Random compressed weights for `p`: normal values, random sorted kept rows per window and
    vector. What a benchmark needs, without pruning a dense K x N matrix first.

    Needs about 5 bytes per kept weight (the float32 values and NMMatrix's finiteness check) plus
    the indices and their check; ShapeError, before allocating, where that exceeds the memory
    available. The keys choosing the kept rows are drawn a slice of windows at a time (the same
    random stream as drawing them at once)."""
    from .format import NMMatrix
    pat, W = p.pattern, p.kept_rows
    dt = np.dtype(np.uint8 if pat.m <= 256 else np.uint16)
    _check_memory(p, W * p.N * 5 + W * p.vectors * (dt.itemsize + 17))
    idx = np.empty((p.windows, pat.n, p.vectors), dt)
    step = max(1, KEY_DRAWS // (pat.m * p.vectors))
    for w in range(0, p.windows, step):
        keys = rng.random((min(step, p.windows - w), pat.m, p.vectors), dtype=np.float32)
        idx[w:w + len(keys)] = np.sort(np.argsort(keys, axis=1)[:, :pat.n, :], axis=1)   # (windows, n, vectors)
    values = rng.standard_normal((W, p.N), dtype=np.float32)
    return NMMatrix(values, idx.reshape(W, p.vectors), pat, (p.K, p.N))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(p: Problem, need: int) -> None:
    avail = available_memory()
    if avail is not None and need > avail:
        from .errors import ShapeError
        raise ShapeError(f"random weights for {p} need {need / 2**30:.1f} GiB of memory and {avail / 2**30:.1f} GiB "
                         f"are available; use a smaller shape")


def sampled_check(A: np.ndarray, B, C: np.ndarray, rng, problem: Problem | None = None):
    """Verdict (nmgen.reference) of C against float64 on reference.check_rows, every element within
    the error bound of its sum (for `problem`'s dtype: its instruction, C's rounding, A and B as its
    kernel multiplies them; float32 FFMA without one); any element of C never written (NaN) fails it."""
    from .reference import check_rows, compare
    C = np.asarray(C, np.float32)
    if not np.isfinite(C).all():
        C = np.full_like(C, np.nan)
    rows = check_rows(A.shape[0], rng)
    if problem is None:
        return compare(C, A, B, rows)
    from .checking import computed
    from .ir.dtypes import DTYPES
    return compare(C, *computed(problem, A, B), rows, compute=DTYPES[problem.dtype].compute,
                   out_dtype=problem.c_dtype)


def measure_kernel(kernel, A: np.ndarray, B, *, reps: int = 30, warmup: int = 10, rng=None):
    """(Timing with L2 warm, Verdict of the sampled check) of `kernel` on A @ B: A (M x K) and B in
    the problem's storage dtype (nmgen.checking.stored), A uploaded in the kernel's layout (its
    column-major copy for a_major "col", 16-bit rows padded to an even length), C of the C dtype."""
    from .api import device_operands, kernel_a_layout, poison
    from .ir.dtypes import DTYPES
    from .runtime.memory import DeviceBuffer, download, synchronize
    from .runtime.timing import time_gpu
    p = kernel.problem
    ops = device_operands(B, p, kernel.schedule)
    a = DeviceBuffer.from_array(kernel_a_layout(A, p))
    c_np = DTYPES[p.c_dtype].storage
    c = DeviceBuffer(p.M * p.N * c_np.itemsize)
    poison(c.ptr, p.M * p.N, p.c_dtype)                    # NaN: unwritten elements fail the check
    kernel.launch(a.ptr, ops, c.ptr)
    synchronize(0, kernel.name)
    v = sampled_check(A, B, download(np.empty((p.M, p.N), c_np), c.ptr), rng or np.random.default_rng(), p)
    return time_gpu(lambda: kernel.launch(a.ptr, ops, c.ptr), 0, warmup, reps), v


def measure_cublas(M: int, N: int, K: int, *, reps: int = 30, warmup: int = 10, rng=None, dtype: str = "f32"):
    """(median ms, library) of cuBLAS's dense M x N x K product in `dtype` (nmgen.cublas), or
    (None, why there is none)."""
    from .cublas import dense_gemm, why_no_gemm
    from .runtime.timing import time_gpu
    g = dense_gemm(M, N, K, rng or np.random.default_rng(), dtype)
    if g is None:
        return None, why_no_gemm(dtype)
    with g.precision():
        return time_gpu(g.run, g.stream, warmup, reps).median_ms, g.library


def measure_semi_structured(M: int, N: int, K: int, *, reps: int = 30, warmup: int = 10, rng=None,
                            dtype: str = "f32"):
    """(median ms, library) of torch's semi-structured 2:4 product of the shape and dtype
    (nmgen.cublas.semi_structured_2_4), or (None, why torch did not run it)."""
    from .cublas import semi_structured_2_4
    from .runtime.timing import time_gpu
    g = semi_structured_2_4(M, N, K, rng or np.random.default_rng(), dtype)
    if isinstance(g, str):
        return None, g
    with g.precision():
        return time_gpu(g.run, g.stream, warmup, reps).median_ms, g.library


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, bytes/s counting read + write (the memory-bound ceiling)."""
    from .runtime.driver import check, driver
    from .runtime.memory import DeviceBuffer
    from .runtime.timing import time_gpu
    src, dst = DeviceBuffer(nbytes), DeviceBuffer(nbytes)
    t = time_gpu(lambda: check(driver().cuMemcpyDtoDAsync(dst.ptr, src.ptr, nbytes, 0), "cuMemcpyDtoDAsync"),
                 0, 3, 10)
    return 2 * nbytes / (t.median_ms * 1e-3)


def bytes_moved(p: Problem) -> int:
    """The fewest bytes the product must move: compressed values and A in the problem's storage
    dtype (4 bytes for f32 and tf32, 2 for bf16 and f16), indices, C in its dtype."""
    from .ir.dtypes import DTYPES
    W = p.kept_rows
    idx = W * p.vectors * (1 if p.pattern.m <= 256 else 2)
    es = DTYPES[p.dtype].itemsize
    return es * (W * p.N + p.M * p.K) + DTYPES[p.c_dtype].itemsize * p.M * p.N + idx


def row(p: Problem, kernel, timing, verdict, cublas_ms, suite: str, semi_structured=None) -> dict:
    """One benchmark row; `verdict` (nmgen.reference.Verdict) of the kernel's sampled check;
    `cublas_ms` the dense baseline of the problem's dtype (None where there is none); `semi_structured`
    (ms, library) of torch's 2:4 of the shape and dtype, or (None, reason), where it was measured.

    `baseline` names the dense baseline (cublas_fp32, cublas_tf32, cublas_bf16, cublas_fp16);
    `baseline_ms` / `speedup_vs_baseline` are its time and nmgen's speedup over it, the same numbers
    as `cublas_ms` / `speedup_vs_cublas` (kept for the FP32 benchmarks' readers)."""
    from .cublas import baseline
    ms = timing.median_ms
    speedup = cublas_ms / ms if cublas_ms else None
    r = {"suite": suite, "M": p.M, "N": p.N, "K": p.K, "pattern": f"{p.pattern.n}:{p.pattern.m}",
         "vector": p.pattern.vector, "a_major": p.a_major, "dtype": p.dtype, "c_dtype": p.c_dtype,
         "sparsity": p.pattern.sparsity, "ms": ms,
         "tflops_dense": p.flops_dense / (ms * 1e-3) / 1e12, "tflops_eff": p.flops_done / (ms * 1e-3) / 1e12,
         "baseline": baseline(p.dtype), "baseline_ms": cublas_ms, "speedup_vs_baseline": speedup,
         "cublas_ms": cublas_ms, "speedup_vs_cublas": speedup,
         "ideal_speedup": 1.0 / (1.0 - p.pattern.sparsity), "rel_err": verdict.rel_err,
         "check": "pass" if verdict.ok else "FAIL", "error_over_bound": verdict.worst,
         "schedule": kernel.schedule.to_dict(), "timing": timing.to_dict(), "bytes": bytes_moved(p)}
    r["fraction_of_ideal"] = speedup / r["ideal_speedup"] if speedup else None
    if semi_structured is not None:
        ss_ms, what = semi_structured
        if ss_ms is None:
            r["semi_structured_2_4_error"] = what
        else:
            r.update(semi_structured_2_4_ms=ss_ms, semi_structured_2_4=what,
                     speedup_vs_semi_structured_2_4=ss_ms / ms)
    return r


def geomean(xs) -> float:
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summarize(rows: list[dict]) -> dict:
    """Per pattern: the geomean speedup over the dense baseline (and over torch's semi-structured
    2:4 where it was timed), the ideal, the number of shapes."""
    out = {}
    for pat in sorted({r["pattern"] for r in rows}, key=lambda s: (-int(s.split(":")[0]), s)):
        sel = [r for r in rows if r["pattern"] == pat]
        out[pat] = {"geomean_speedup": geomean([r["speedup_vs_cublas"] for r in sel]),
                    "ideal": sel[0]["ideal_speedup"], "shapes": len(sel)}
        ss = [r["speedup_vs_semi_structured_2_4"] for r in sel if "speedup_vs_semi_structured_2_4" in r]
        if ss:
            out[pat]["geomean_speedup_vs_semi_structured_2_4"] = geomean(ss)
    return out


def today() -> str:
    return time.strftime("%Y-%m-%d")


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(data: dict) -> str:
    """A short markdown table of a benchmark's JSON (as `nmgen bench --json` writes it), naming the
    baseline (cuBLAS FP32, TF32, BF16 or FP16) and, where it was timed, torch's semi-structured 2:4."""
    from .cublas import baseline_title
    rows, am = data["rows"], data.get("a_major", "row")
    title = baseline_title(data.get("dtype", "f32"))
    dt = "" if data.get("dtype", "f32") == "f32" else f", {data['dtype']}"
    out = [f"### {data['suite']}, A {am}-major{dt}: {data['device']}, {data['date']}",
           f"{title}: {data['cublas']}; L2 {data['l2']}, median of {data['reps']} runs; times in ms.", ""]
    decode = any("time_over_bytes" in r for r in rows)
    odd = any("fraction_of_aligned_eff" in r for r in rows)
    host = any("host_us" in r for r in rows)
    semi = any("semi_structured_2_4_ms" in r or "semi_structured_2_4_error" in r for r in rows)
    head = f"| shape | pattern | nmgen ms | {title} ms | speedup (ideal) | eff TF/s |"
    rule = "|---|---|---|---|---|---|"
    if semi:
        head, rule = head + " torch 2:4 ms | speedup over 2:4 |", rule + "---|---|"
    if decode:
        head, rule = head + " time / bytes-time |", rule + "---|"
    if odd:
        head, rule = head + " eff vs aligned |", rule + "---|"
    if host:
        head += " host us/call eager: nmgen op (torch.mm) | replayed in a CUDA graph: nmgen op (torch.mm) |"
        rule += "---|---|"
    out += [head, rule]
    for r in rows:
        line = (f"| {r['M']}x{r['N']}x{r['K']} | {r['pattern']} | {r['ms']:.4f} | {_num(r['cublas_ms'], '.4f')} | "
                f"{_num(r['speedup_vs_cublas'], '.2f')} ({r['ideal_speedup']:.2f}) | {r['tflops_eff']:.1f} |")
        if semi:
            if "semi_structured_2_4_ms" in r:
                line += f" {r['semi_structured_2_4_ms']:.4f} | {r['speedup_vs_semi_structured_2_4']:.2f} |"
            else:
                line += " - | - |" if "semi_structured_2_4_error" not in r else " refused | - |"
        if decode:       # (rows with M > DECODE_M of a mixed suite have none)
            line += f" {r['time_over_bytes']:.2f} |" if "time_over_bytes" in r else " - |"
        if odd:
            line += f" {r['fraction_of_aligned_eff'] * 100:.0f}% |" if "fraction_of_aligned_eff" in r else " |"
        if host:
            h = r.get("host_us")
            line += (f" {h['nmgen_eager']:.1f} ({h['torch_mm_eager']:.1f}) | {h['nmgen_graph']:.2f} "
                     f"({h['torch_mm_graph']:.2f}) |" if h else " - | - |")
        out.append(line)
    refused = sorted({r["semi_structured_2_4_error"] for r in rows if "semi_structured_2_4_error" in r})
    if refused:
        out += [""] + [f"torch's semi-structured 2:4 did not run: {why}" for why in refused]
    out += ["", f"| pattern | geomean speedup over {title} | ideal |", "|---|---|---|"]
    out += [f"| {pat} | {s['geomean_speedup']:.2f} | {s['ideal']:.2f} |" for pat, s in data["summary"].items()]
    return "\n".join(out) + "\n"
