"""nmgen bench: nmgen's best kernels next to cuBLAS of the same dtype (and torch's semi-structured 2:4
for patterns keeping half the rows), in the same run; table, JSON, plot."""
from __future__ import annotations

import json
import os
import sys

from ..errors import CudaUnavailable, NMGenError
from ..bench import DECODE_M, PAPER_PATTERNS, SUITES
from ..files import is_device
from .common import (add_db_arg, add_dtype_arg, add_output_arg, at_least, atomic_output, check_tensor_core_vector,
                     db_for_writing, option_name, positive_int, read_text)


def register(sub):
    p = sub.add_parser("bench", help="benchmark the best kernels against cuBLAS of the same dtype (table, JSON, plot)",
                       description="For each shape and pattern: the tuning database's best schedule (tuning "
                                   "first, model-topk, where there is none), then nmgen and cuBLAS dense GEMM of "
                                   "the same M, N, K and dtype (FP32 without TF32, TF32, BF16 or FP16, through "
                                   "torch; FP32/FP16 also through cupy) in the same run, and for patterns keeping "
                                   "half the rows (16:32, 2:4) torch's semi-structured 2:4 of the same shape and "
                                   "dtype (its refusal recorded where it does not run). CUDA events, warm-up, "
                                   "median of --reps runs, L2 warm (the NM-SpMM paper's method).")
    p.add_argument("--suite", default="paper6", help="paper6 (default), decode, odd, or a FILE of MxNxK lines")
    p.add_argument("--patterns", default=",".join(PAPER_PATTERNS), help="comma-separated n:m (default the paper's)")
    p.add_argument("--vector", type=int, help="vector length V (default 32, or the V of a pattern written n:mxV)")
    p.add_argument("--a-major", choices=("row", "col"), default="row",
                   help="A's memory order: row-major (default) or column-major, as NM-SpMM stores it")
    add_dtype_arg(p)
    add_db_arg(p)
    p.add_argument("--tune-topk", type=positive_int, default=24, metavar="K",
                   help="schedules the model-topk search measures for a problem the database lacks (default 24)")
    p.add_argument("--candidates", type=positive_int, default=3, metavar="N",
                   help="time the database's N best schedules (ranked with L2 flushed) under the benchmark's "
                        "own conditions (L2 warm) and report the fastest; all N are in the JSON (default 3)")
    p.add_argument("--reps", type=at_least(20), default=30, help="timed runs, median reported (default 30, at least 20)")
    p.add_argument("--host-time", action="store_true",
                   help="also measure the host time per call (us) of nmgen's torch op (torch.ops.nmgen.spmm_out, "
                        "what NMLinear runs) eager and under CUDA-graph replay, beside torch.mm's of the same "
                        "shape and dtype (needs torch; A row-major)")
    add_output_arg(p, "--json", metavar="FILE", help="write the results as JSON, rewritten after every row "
                                                     "(\"complete\": false until the run ends: a run killed or "
                                                     "interrupted keeps the rows it measured)")
    add_output_arg(p, "--plot", metavar="FILE.png", help="plot speedup per shape and sparsity beside the ideal")
    add_output_arg(p, "--markdown", metavar="FILE.md", help="write a short markdown table of the results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def suite_shapes(suite: str) -> list[tuple[int, int, int]]:
    """The shapes of a named suite or of a file of `MxNxK` lines; NMGenError, one line, otherwise."""
    from ..bench import read_suite
    if suite not in SUITES:
        if not os.path.exists(suite):
            raise NMGenError(f"--suite {suite!r} is neither {', '.join(SUITES)} nor an existing file of MxNxK lines")
        read_text(suite, "--suite")          # one line for a directory, a binary or an unreadable file
    try:
        shapes = read_suite(suite)
    except NMGenError as e:
        raise NMGenError(f"--suite {suite}: {e}") from None
    if not shapes:
        raise NMGenError(f"--suite {suite} lists no shapes; write one MxNxK a line")
    return shapes


def host_time_probe():
    """nmgen.torch.overhead.spmm_host_time, or NMGenError (one line) where torch is not installed."""
    try:
        from ..torch.overhead import spmm_host_time
    except ImportError as e:
        raise NMGenError(f"--host-time measures nmgen's torch op and needs torch: {e}; or leave --host-time "
                         f"out") from None
    return spmm_host_time


def host_times(spmm_host_time, p, B) -> dict:
    """A row's host_us: nmgen's op and torch.mm, host us per call eager and replayed, GPU us per call."""
    t = spmm_host_time(B, p.M, allow_tf32=p.dtype == "tf32")
    return {"nmgen_eager": t["nmgen_op"]["eager_us"], "nmgen_graph": t["nmgen_op"]["graph_us"],
            "nmgen_gpu": t["nmgen_op"]["gpu_us"], "torch_mm_eager": t["torch_mm"]["eager_us"],
            "torch_mm_graph": t["torch_mm"]["graph_us"], "torch_mm_gpu": t["torch_mm"]["gpu_us"],
            "launches_per_call": t["launches_per_call"], "schedule": t["schedule"]}


def check_plot(path: str) -> None:
    """NMGenError unless matplotlib is there and writes files like `path` (asked before benchmarking)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise NMGenError("--plot needs matplotlib (pip install -e '.[plot]' in an nmgen checkout, or pip install matplotlib)") from None
    ext = os.path.splitext(path)[1][1:].lower()
    kinds = Figure().canvas.get_supported_filetypes()
    if ext not in kinds:
        raise NMGenError(f"--plot {path}: matplotlib cannot write .{ext} files; name a .png, .pdf or .svg file")


def run(args):
    import numpy as np
    from ..api import compile, current_device
    from ..bench import (ODD_PAIRS, bytes_moved, copy_bandwidth, measure_cublas, measure_kernel,
                         measure_semi_structured, problem_of, random_nm, row, summarize, today)
    from ..checking import stored
    from ..cublas import baseline, baseline_title
    from ..search.choose import recorded_best, recorded_top
    from ..search.tuner import Tuner
    # every argument is checked before the GPU is asked for, so bad ones are reported as such
    shapes = suite_shapes(args.suite)
    patterns = [x.strip() for x in args.patterns.split(",") if x.strip()]
    if not patterns:
        raise NMGenError(f"--patterns {args.patterns!r} lists no pattern; give comma-separated n:m, e.g. 8:32,4:32")
    problems = {}
    for shape in shapes:
        for pat in patterns:
            try:
                problems[shape, pat] = problem_of(shape, pat, args.vector, args.a_major, args.dtype)
                check_tensor_core_vector(args.dtype, problems[shape, pat].pattern.vector)
            except NMGenError as e:
                vec = "" if args.vector is None else f" and --vector {args.vector}"
                raise NMGenError(f"--suite {args.suite} shape {'x'.join(map(str, shape))} with pattern {pat}{vec}: "
                                 f"{e}") from None
    if args.plot:
        check_plot(args.plot)
    spmm_host_time = host_time_probe() if args.host_time else None
    from ..codegen.ptxas import check_ptxas
    check_ptxas()
    open_writable = db_for_writing(args.db)   # a problem the database lacks is tuned into it
    dev = current_device()
    if dev is None:
        raise CudaUnavailable("no GPU here: benchmarks need one")
    db = open_writable()
    rng = np.random.default_rng(0)
    # the bytes floor of the memory-bound problems (M <= DECODE_M), in whichever suite lists them
    bw = copy_bandwidth() if any(M <= DECODE_M for M, _, _ in shapes) else None
    rows, lib, semi_libs, unrun = [], None, set(), []
    title = baseline_title(args.dtype)

    def results(complete: bool) -> dict:
        return {"device": dev.name, "date": today(), "suite": args.suite, "a_major": args.a_major,
                "dtype": args.dtype, "baseline": baseline(args.dtype), "cublas": lib,
                "semi_structured_2_4": sorted(semi_libs), "l2": "warm", "reps": args.reps,
                "device_info": dev.to_dict(), "summary": summarize(rows), "rows": rows, "unrun": unrun,
                "complete": complete}

    def save(data: dict) -> None:
        # a file is replaced after every row; a device or pipe (e.g. /dev/stdout) gets one document, at the end
        if args.json and (data["complete"] or not is_device(os.path.realpath(args.json))):
            with atomic_output(args.json) as f:
                json.dump(data, f, indent=1)
    for shape in shapes:
        cublas_ms, lib = measure_cublas(*shape, reps=args.reps, rng=rng, dtype=args.dtype)
        # torch's 2:4 beside the patterns of the same density only: it depends on the shape and dtype alone
        semi = None
        if any(problems[shape, pat].pattern.density == 0.5 for pat in patterns):
            semi = measure_semi_structured(*shape, reps=args.reps, rng=rng, dtype=args.dtype)
            semi_libs.add(semi[1])
        for pat in patterns:
            p = problems[shape, pat]
            # A and the weights in the dtype (tf32: float32, rounded by the kernel as the reference does)
            A, B = stored(p, rng.standard_normal((p.M, p.K), dtype=np.float32), random_nm(p, rng))
            if recorded_best(p, dev, db) is None:
                Tuner(p, dev, db, B, progress=not args.quiet, rng=rng).run("model-topk", topk=args.tune_topk)
            # the tuner ranks with L2 flushed; this benchmark (like the anchors) runs L2 warm
            timed = []
            for s in recorded_top(p, dev, db, args.candidates):
                k = compile(p, schedule=s, B=B)
                timed.append((k, *measure_kernel(k, A, B, reps=args.reps, rng=rng)))
            if not timed:                  # the tuner measured no schedule that ran correctly: nothing to time
                unrun.append({"problem": p.to_dict(), "why": f"no schedule of {p} ran correctly on {dev.name}; "
                                                              f"`nmgen db show` lists what the tuner recorded"})
                print(f"FAIL {unrun[-1]['why']}", file=sys.stderr, flush=True)
                save(results(complete=False))
                continue
            k, t, err = min(timed, key=lambda x: x[1].median_ms)
            r = row(p, k, t, err, cublas_ms, args.suite, semi if p.pattern.density == 0.5 else None)
            r["candidates"] = [{"schedule": c.schedule.to_dict(), "ms": ct.median_ms, "rel_err": cv.rel_err,
                                "check": "pass" if cv.ok else "FAIL"} for c, ct, cv in timed]
            if not all(cv.ok for _, _, cv in timed):
                r["check"] = "FAIL"                                # a failing candidate fails the row
            if spmm_host_time:
                r["host_us"] = host_times(spmm_host_time, p, B)
            if bw and p.M <= DECODE_M:
                r["copy_bandwidth"] = bw
                r["bytes_ms"] = bytes_moved(p) / bw * 1e3
                r["time_over_bytes"] = r["ms"] / r["bytes_ms"]
            rows.append(r)
            print(_line(r), flush=True)
            save(results(complete=False))
    for odd, aligned in ODD_PAIRS.items():
        for r in rows:
            if (r["M"], r["N"], r["K"]) == odd:
                ref = [q for q in rows if (q["M"], q["N"], q["K"]) == aligned and q["pattern"] == r["pattern"]]
                if ref:
                    r["fraction_of_aligned_eff"] = r["tflops_eff"] / ref[0]["tflops_eff"]
    summary = summarize(rows)
    bad = [r for r in rows if r["check"] != "pass"]
    print(f"\n{dev.name}, {today()}, {option_name(args.dtype)}, {title}: {lib}; L2 warm, median of {args.reps} runs")
    for pat, s in summary.items():
        ss = s.get("geomean_speedup_vs_semi_structured_2_4")
        print(f"  {pat}: geomean speedup over {title} {s['geomean_speedup']:.2f} (ideal {s['ideal']:.2f}, "
              f"{s['shapes']} shapes)" + (f"; over torch's semi-structured 2:4 {ss:.2f}" if ss else ""))
    for what in sorted(semi_libs):
        print(f"  torch's semi-structured 2:4: {what}")
    if bad:
        print(f"  {len(bad)} kernel(s) FAILED the float64 check", file=sys.stderr)
    if unrun:
        print(f"  {len(unrun)} problem(s) without a schedule that ran correctly", file=sys.stderr)
    data = results(complete=True)
    save(data)
    if args.markdown:
        from ..bench import markdown
        with atomic_output(args.markdown) as f:
            f.write(markdown(data))
    if args.plot:
        plot(rows, args.plot, f"{args.suite}, A {args.a_major}-major, {option_name(args.dtype)}, on {dev.name}, "
                              f"{today()}", title)
    return 1 if bad or unrun else 0


def _line(r) -> str:
    sp = f"{r['speedup_vs_cublas']:5.2f}x" if r["speedup_vs_cublas"] else "   - "
    extra = f"  {r['time_over_bytes']:.2f}x bytes-time" if "time_over_bytes" in r else ""
    if "semi_structured_2_4_ms" in r:
        extra += f"  torch 2:4 {r['semi_structured_2_4_ms']:.4f} ms ({r['speedup_vs_semi_structured_2_4']:.2f}x)"
    elif "semi_structured_2_4_error" in r:
        extra += "  torch 2:4 refused"
    if "host_us" in r:
        h = r["host_us"]
        extra += (f"  host us/call: nmgen {h['nmgen_eager']:.1f} eager, {h['nmgen_graph']:.2f} replayed; "
                  f"torch.mm {h['torch_mm_eager']:.1f}, {h['torch_mm_graph']:.2f}")
    return (f"{r['M']:>5}x{r['N']:<5}x{r['K']:<5} {r['pattern']:>5}  {r['ms']:8.4f} ms  "
            f"{r['tflops_dense']:6.1f} TF/s dense  {r['tflops_eff']:5.1f} eff  cuBLAS {r['cublas_ms'] or 0:8.4f} ms  "
            f"{sp} (ideal {r['ideal_speedup']:.2f})  err {r['rel_err']:.1e} {r['check']}{extra}")


def plot(rows, path, title, baseline="cuBLAS FP32"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NMGenError("--plot needs matplotlib (pip install -e '.[plot]' in an nmgen checkout, or pip install matplotlib)") from None
    shapes = sorted({(r["M"], r["N"], r["K"]) for r in rows})
    pats = sorted({r["pattern"] for r in rows}, key=lambda s: -int(s.split(":")[0]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4.2))
    width = 0.8 / len(pats)
    for i, pat in enumerate(pats):
        ys = [next((r["speedup_vs_cublas"] or 0 for r in rows if (r["M"], r["N"], r["K"]) == s
                    and r["pattern"] == pat), 0) for s in shapes]
        xs = [j + (i - (len(pats) - 1) / 2) * width for j in range(len(shapes))]
        n, m = (int(x) for x in pat.split(":"))
        ideal = m / n
        bars = ax.bar(xs, ys, width, label=f"{pat} (ideal {ideal:.2f}x)")
        ax.hlines(ideal, -0.5, len(shapes) - 0.5, colors=bars.patches[0].get_facecolor(), linestyles="dashed", lw=1)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(["x".join(map(str, s)) for s in shapes], rotation=20, fontsize=8)
    ax.set_ylabel(f"speedup over {baseline}")
    ax.set_title(title + " (dashed: ideal 1/(1-s))", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path, binary=True) as f:
        fig.savefig(f, dpi=120, format=os.path.splitext(path)[1][1:].lower())
