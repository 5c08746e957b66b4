"""nmgen fuzz: many random problems under random schedules, each checked against float64."""
from __future__ import annotations

import sys

from .common import add_output_arg, at_least, atomic_output, positive_int


def register(sub):
    p = sub.add_parser("fuzz", help="check many random problems and schedules against float64",
                       description="Draw random problems (M from 0 to thousands, N off every tile, K an odd number "
                                   "of windows, n:m with m up to 64, V from 1 to 128, both A layouts, every dtype: "
                                   "f32 on FFMA, tf32, bf16 and f16 on the tensor cores where V is a multiple of 8, "
                                   "C now and then in another dtype) under random "
                                   "schedules of the search space (split-K, tail split, sliced K, rows/window, "
                                   "the rotated loop, refill_row, stages), run each on the GPU (or the CPU "
                                   "interpreter) with C poisoned with NaN, and compare with float64 within the "
                                   "error bound of the sum. Every failure is printed with the `nmgen check` line "
                                   "that replays it. Exits 1 if any case fails.")
    p.add_argument("--cases", type=positive_int, default=100, help="cases to draw (default 100)")
    p.add_argument("--seed", type=at_least(0), default=0, help="seed of the case generator (default 0)")
    p.add_argument("--interpret", action="store_true", help="run the cases in the CPU interpreter (small sizes, no GPU)")
    p.add_argument("--arrays", default=None,
                   help="array libraries to pass the inputs as on the GPU, comma-separated (default numpy,torch, "
                        "torch where installed; the interpreter takes numpy only)")
    p.add_argument("--dtypes", default="f32,tf32,bf16,f16", metavar="LIST",
                   help="dtypes a case may take, comma-separated (fp32/f32, tf32, bf16, fp16/f16; default all four); "
                        "a case whose V is no multiple of 8 runs in f32 where it is listed")
    p.add_argument("--max-macs", type=float, default=None, metavar="X",
                   help="largest dense product M*N*K a case draws (default 4e9 on the GPU, 2e6 interpreted)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no case after this many seconds; the summary covers the cases run (Ctrl-C "
                        "does the same)")
    add_output_arg(p, "--json", metavar="FILE", help="write the summary (counts, failures with their commands) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args):
    from dataclasses import replace

    from .. import fuzz as fz
    from ..api import current_device
    from ..errors import CudaUnavailable, NMGenError
    from ..ir.device import for_arch
    given = args.arrays is not None
    arrays = tuple(a.strip() for a in (args.arrays or "numpy,torch").split(",") if a.strip())
    unknown = [a for a in arrays if a not in ("numpy", "torch")]
    if unknown or not arrays:
        raise NMGenError(f"--arrays {args.arrays!r}: choose from numpy, torch")
    if given and "torch" in arrays and args.interpret:
        raise NMGenError("--arrays torch with --interpret: the interpreter runs numpy arrays only; leave --arrays "
                         "out, or run on a GPU")
    dtypes = dtypes_of(args.dtypes)
    if args.max_macs is not None and not args.max_macs >= 1:
        raise NMGenError(f"--max-macs {args.max_macs} must be at least 1")
    gpu = None if args.interpret else current_device()
    if not args.interpret and gpu is None:
        raise CudaUnavailable("no GPU here: `nmgen fuzz --interpret` checks small cases in the CPU interpreter")
    if "torch" in arrays and not args.interpret:
        try:
            import torch  # noqa: F401
        except ImportError:
            if given:
                raise NMGenError("--arrays torch: torch is not installed (pip install torch), or leave it out "
                                 "of --arrays") from None
            arrays = ("numpy",)
            print("torch is not installed: numpy arrays only", file=sys.stderr)
    if args.interpret:
        arrays = ("numpy",)
    dev = gpu or for_arch("sm_90")
    limits = fz.CPU_LIMITS if args.interpret else fz.GPU_LIMITS
    if args.max_macs is not None:
        limits = replace(limits, macs=args.max_macs)

    def report(o):
        print(f"FAIL {o.detail}\n  reproduce: {o.case.command(args.interpret)}", file=sys.stderr, flush=True)

    if args.time_limit is not None and not args.time_limit > 0:
        raise NMGenError(f"--time-limit {args.time_limit} must be a positive number of seconds")
    outcomes = fz.fuzz(args.cases, args.seed, dev, interpret=args.interpret, limits=limits, arrays=arrays,
                       dtypes=dtypes, progress=not args.quiet, on_failure=report, time_limit_s=args.time_limit)
    s = fz.summary(outcomes, args.seed, dev, args.interpret)
    s["drawn"] = args.cases
    print(summary_line(s))
    for key, c in s["counts"].items():
        print(f"  {key:12s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if args.json:
        import json
        with atomic_output(args.json) as f:
            json.dump(s, f, indent=1)
    return 1 if s["failures"] else 0


def summary_line(s: dict) -> str:
    """The run in one line: cases run and failed, then drawn cases skipped as too large for the
    interpreter, and what stopped the run early (the time limit, Ctrl-C), each only where it happened."""
    line = f"{s['cases']} cases on {s['where']} (seed {s['seed']}): {s['failures']} failed"
    if s["skipped"]:
        n = s["skipped"]
        line += f"; {n} drawn case{'s' if n > 1 else ''} too large for the interpreter {'were' if n > 1 else 'was'} skipped"
    if s["stopped"]:
        line += f"; stopped by {s['stopped']} after {s['cases']} of {s['drawn'] - s['skipped']}"
    return line


def dtypes_of(text: str) -> tuple[str, ...]:
    """The --dtypes list as nmgen's names (f32, tf32, bf16, f16), each once; NMGenError, one line,
    for an unknown or empty one."""
    import argparse

    from ..errors import NMGenError
    from .common import dtype_arg
    out = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            name = dtype_arg(word)
        except argparse.ArgumentTypeError as e:
            raise NMGenError(f"--dtypes {text!r}: {e}") from None
        if name not in out:
            out.append(name)
    if not out:
        raise NMGenError(f"--dtypes {text!r} lists no dtype; give comma-separated fp32, tf32, bf16, fp16")
    return tuple(out)
