"""nmgen ptx: print or write the generated PTX (and ptxas's resource report)."""
from __future__ import annotations

import sys

from .common import (add_db_arg, add_output_arg, add_problem_args, add_schedule_arg, atomic_output, problem_from,
                     schedule_from)


def register(sub):
    p = sub.add_parser("ptx", help="print or write the PTX of a kernel",
                       description="Generate the kernel for a problem and print (or write) its PTX.")
    add_problem_args(p)
    p.add_argument("--arch", default="sm_90", choices=("sm_80", "sm_86", "sm_89", "sm_90"),
                   help="target architecture (default sm_90)")
    add_schedule_arg(p)
    add_output_arg(p, "-o", "--output", metavar="FILE", help="write the PTX here instead of standard output")
    p.add_argument("--resources", action="store_true",
                   help="add ptxas's report: registers, spills, stack frame, shared memory")
    p.add_argument("--ir", action="store_true", help="also show the kernel IR (as PTX comments)")
    add_db_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..api import compile, current_device
    from ..ir.device import for_arch
    from ..search.choose import chosen, open_db
    problem = problem_from(args)
    given = schedule_from(args, problem, for_arch(args.arch))
    if given is None:       # what spmm would run here: the database's best for this GPU, else the model's
        gpu = current_device()
        dev = gpu if gpu is not None and gpu.arch == args.arch else for_arch(args.arch)
        given, source = chosen(problem, dev, None, open_db(args.db, create=False) if args.db else None)
    else:
        source = "--schedule"
    k = compile(problem, schedule=given, arch=args.arch)
    text = k.ptx
    notes = [f"nmgen: {problem}  schedule {k.schedule.to_json()}", f"nmgen: schedule from {source}",
             f"nmgen: launch grid {k.ir.grid}, {k.ir.threads} threads, {k.smem_bytes} B dynamic shared memory"]
    # the launch contract: the .entry's u64 parameters are these arrays' addresses, in this order
    notes += [f"nmgen: param_{i} {p.name}: {p.dtype} ({p.rows}, {p.cols}), {p.doc}" for i, p in enumerate(k.ir.params)]
    notes.append("nmgen: the weight arrays (B's values and indices, a \"rows\" schedule's A row lists) are laid out "
                 "by nmgen.ir.operands.prepare for this schedule; nmgen.prepared.PreparedSpMM launches the kernel")
    if args.ir:
        notes += k.ir_text().splitlines()
    if args.resources:
        notes.append(f"ptxas {args.arch}: {k.resources.summary()}")
    text = text.rstrip("\n") + "\n" + "".join(f"// {n}\n" for n in notes)
    if args.output:
        with atomic_output(args.output) as f:
            f.write(text)
        if args.resources:
            print(f"{k.name}: {k.resources.summary()}, {k.smem_bytes} B dynamic shared memory")
    else:
        sys.stdout.write(text)
    return 0
