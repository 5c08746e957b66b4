"""nmgen search: fill the tuning database for the shapes you care about."""
from __future__ import annotations

import json
import sys

from ..errors import CudaUnavailable, NMGenError
from ..ir.problem import Pattern, Problem, parse_shape
from .common import (add_db_arg, add_problem_args, at_least, check_tensor_core_vector, db_for_writing, positive_int,
                     problem_from, read_text)


def register(sub):
    p = sub.add_parser("search", help="tune schedules for problems and record them in the tuning database",
                       description="Enumerate the schedule space, rank it with the performance model, measure "
                                   "(exhaustively or the model's top k) and record every result in the tuning "
                                   "database; nmgen.spmm then runs the best without measuring. A search that was "
                                   "stopped resumes where it stopped.")
    add_problem_args(p, required=False)
    p.add_argument("--shapes", metavar="FILE", help="tune every problem listed, one `MxNxK n:m V` (or n:mxV) a "
                                                    "line (in --dtype, with --a-major and --out-dtype), instead of "
                                                    "--shape")
    p.add_argument("--strategy", choices=("exhaustive", "model-topk"), default="model-topk",
                   help="measure the whole space, or only the model's best k (default)")
    p.add_argument("--topk", type=positive_int, metavar="K",
                   help="schedule families model-topk measures, one schedule each (a family: schedules "
                        "differing only in stages, loop form or tail split; the model's best-predicted one is "
                        "measured and the refinements try the others next to the winners; default 10%% of the "
                        "space, each loop form counted once; --dry-run shows 10), then the best-predicted "
                        "schedule of each kernel kind they lack (mma.sync, wgmma, wgmma with A from shared "
                        "memory; --dry-run marks it +)")
    p.add_argument("--budget", type=positive_int, metavar="N", help="measure at most N schedules in this run")
    p.add_argument("--refine", type=at_least(0), default=2, metavar="R",
                   help="rounds of local search after the ranked schedules: one step from the best two "
                        "(the other loop form, the copies after a tile's first rows, a register bound, bigger "
                        "blocks, a short last wave's tiles split along K or not, on the tensor cores a K tile "
                        "twice as deep); 0 for none (default 2)")
    add_db_arg(p)
    p.add_argument("--reps", type=positive_int, default=20, help="timed runs per schedule, median reported (default 20)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: rank by the model, check the top schedules' PTX with ptxas, record nothing "
                        "(columns: the model's time in us, the level it says bounds the kernel - issue, L1, "
                        "tensor, L2 or DRAM - ptxas's registers per thread and its spills in bytes, stores "
                        "and loads)")
    p.add_argument("--arch", default="sm_90", choices=("sm_80", "sm_86", "sm_89", "sm_90"),
                   help="architecture for --dry-run without a GPU (default sm_90)")
    p.add_argument("--json", action="store_true", help="print only the results, as JSON, on standard output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def problems_from(args) -> list[Problem]:
    if args.shapes and (args.shape or args.pattern or args.vector is not None):
        given = " ".join(f"{o} {v}" for o, v in (("--shape", args.shape), ("--pattern", args.pattern),
                                                 ("--vector", args.vector)) if v is not None)
        raise NMGenError(f"{given} and --shapes {args.shapes} both name problems; give one problem with "
                         f"--shape/--pattern/--vector or a file of them with --shapes (V on each line), not both")
    if args.shapes:
        out = []
        for no, line in enumerate(read_text(args.shapes, "--shapes").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                out.append(_problem_of_line(line, args.a_major, args.dtype, args.out_dtype))
            except NMGenError as e:
                raise NMGenError(f"{args.shapes}:{no}: {e}") from None
        if not out:
            raise NMGenError(f"--shapes {args.shapes} lists no problems; write one `MxNxK n:m V` a line")
        return out
    if not (args.shape and args.pattern):
        raise NMGenError("give --shape and --pattern (and --vector), or --shapes FILE")
    return [problem_from(args)]


def _problem_of_line(line: str, a_major: str, dtype: str = "f32", c_dtype: str | None = None) -> Problem:
    """The problem of a --shapes line `MxNxK n:m [V]`, or `MxNxK n:mxV` as nmgen prints problems (A's
    order and the dtypes: the options')."""
    parts = line.split()
    if len(parts) not in (2, 3):
        raise NMGenError(f"expected `MxNxK n:m V` (or `MxNxK n:mxV`), got {line!r}")
    try:
        V = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise NMGenError(f"vector length V={parts[2]!r} is not an integer (line {line!r})") from None
    M, N, K = parse_shape(parts[0])
    pattern = Pattern.parse(parts[1], V)              # "8:32x32": the pattern with its vector length
    check_tensor_core_vector(dtype, pattern.vector)
    return Problem(M, N, K, pattern, dtype, a_major, c_dtype)


def run(args):
    from ..codegen.ptxas import check_ptxas
    problems = problems_from(args)
    check_ptxas()
    if args.dry_run:
        return dry_run(args, problems)
    open_writable = db_for_writing(args.db)   # before the GPU: a bad --db is reported as such
    from ..api import current_device
    dev = current_device()
    if dev is None:
        raise CudaUnavailable("no GPU here: measuring needs one; `nmgen search --dry-run` ranks the schedules by "
                              "the model and assembles them with ptxas without a GPU")
    db = open_writable()
    from ..search.tuner import Tuner
    out = []
    for p in problems:
        tuner = Tuner(p, dev, db, reps=args.reps, progress=not args.quiet)
        tuner.run(args.strategy, args.topk, args.budget, refine=args.refine)
        rows = db.rows(*tuner.keys[:2], status="ok", toolchain_key=tuner.keys[2])
        out.append((p, rows, len(db.recorded(*tuner.keys))))
    if args.json:
        json.dump([{"problem": p.to_dict(), "recorded": n, "best": rows[:10]} for p, rows, n in out], sys.stdout, indent=1)
        print()
        return 0
    for p, rows, n in out:
        print_table(p, rows, n, dev.name, args)
    return 0


def print_table(p: Problem, rows, recorded: int, device: str, args):
    from ..ir.schedule import Schedule
    print(f"\n{p} on {device}: {recorded} schedules recorded, {len(rows)} ran correctly")
    if not rows:
        return
    print(f"{'#':>3} {'measured us':>12} {'TF/s dense':>10} {'model us':>9}  schedule")
    for i, r in enumerate(rows[:10], 1):
        tf = p.flops_dense / (r["median_us"] * 1e-6) / 1e12
        model = f"{r['model_us']:9.1f}" if r["model_us"] is not None else f"{'-':>9}"
        print(f"{i:>3} {r['median_us']:12.1f} {tf:10.1f} {model}  {Schedule.from_json(r['schedule']).short()}")
    from ..checking import command
    print(f"reproduce the best: {command(p, Schedule.from_json(rows[0]['schedule']), None)}")


def dry_run(args, problems):
    """Rank each problem's space by the model and check the PTX of the best families' schedules (what
    model-topk would measure first) with ptxas; nothing is measured or recorded. With --json only the JSON goes to standard output."""
    import numpy as np

    from ..api import Kernel, current_device
    from ..ir.device import for_arch
    from ..ir.validate import validate
    from ..search import model
    from ..search.space import space_to_search
    from ..search.tuner import best_families, kind_leaders
    dev = current_device() or for_arch(args.arch)
    k = args.topk or 10
    results = []
    rng = np.random.default_rng(0)
    for p in problems:
        a_rows = random_rows_lengths(p, rng)   # random weights size the "rows" strategy's lists, as the tuner's do
        ranked = sorted(((s, model.predict(p, s, dev, None, a_rows(s))) for s in space_to_search(p, dev)),
                        key=lambda x: x[1].time_us)
        top = best_families(ranked, k)
        # model-topk measures these too (marked +); exhaustive measures everything anyway
        leaders = kind_leaders(ranked, top) if args.strategy == "model-topk" else []
        if not args.json:
            what = ("family" if k == 1 else f"{k} families" if len(top) >= k
                    else f"{len(top)} families (all the space holds)")
            order = (f"exhaustive measures them all, best-predicted first; the model's best {what}"
                     if args.strategy == "exhaustive"
                     else f"the model's best {what}, what model-topk measures first")
            print(f"\n{p} on {dev.name}: {len(ranked)} schedules in the space; {order} (nothing measured here)")
            if leaders:
                print("  (+: the best-predicted schedule of a kernel kind the best families lack, "
                      "measured next, within --budget)")
            print(f"{'#':>3} {'model us':>9} {'bound':>8} {'regs':>5} {'spills':>7}  schedule")
        for i, (s, pr) in enumerate(top + leaders, 1):
            validate(p, s, dev, a_rows(s))
            r = Kernel(p, s, dev.arch, a_rows(s)).resources            # ptxas validates the PTX
            # a kernel that spills is still measured (the tuner records its spills): shown, not refused
            spills = r.spill_stores + r.spill_loads
            if not args.json:
                rank = i if i <= len(top) else "+"
                print(f"{rank:>3} {pr.time_us:9.1f} {pr.bound:>8} {r.registers:5d} "
                      f"{f'{spills} B' if spills else '-':>7}  {s.short()}", flush=True)
            # rank: the family's place in the model's order; null for a kind's best beyond them ("+")
            results.append({"problem": p.to_dict(), "rank": i if i <= len(top) else None,
                            "kind_leader": i > len(top), "schedule": s.to_dict(), "model_us": pr.time_us,
                            "bound": pr.bound, "registers": r.registers, "spill_bytes": spills,
                            "device": dev.name, "arch": dev.arch})
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    return 0


SAMPLE_ELEMENTS = 1 << 24       # kept weights of the sample that sizes the "rows" lists of a large problem


def random_rows_lengths(p: Problem, rng):
    """schedule -> the "rows" strategy's list length (None for other strategies) for random weights
    of `p`, in bounded memory: the weights themselves where they are small, else a sample of the
    same pattern: up to 4096 columns and enough windows for SAMPLE_ELEMENTS kept weights. Every
    list is one (K tile, block column)'s; the sample has fewer of them, so its longest is a little
    shorter than the full matrix's (the model's ranking, not a kernel's correctness, uses it)."""
    from ..bench import random_nm
    from ..search.space import rows_lengths
    if p.kept_rows * p.N <= SAMPLE_ELEMENTS:
        return rows_lengths(p, random_nm(p, rng))
    n, m = p.pattern.n, p.pattern.m
    N = min(p.N, 4096)
    windows = min(p.windows, max(1, SAMPLE_ELEMENTS // (n * N)))
    sample = Problem(1, N, windows * m, p.pattern, p.dtype, p.a_major, p.c_dtype)
    return rows_lengths(sample, random_nm(sample, rng))
