"""nmgen check: run a kernel on fresh random data and compare with the float64 reference."""
from __future__ import annotations

import numpy as np

from ..errors import NMGenError
from .common import add_problem_args, add_schedule_arg, problem_from, schedule_from

TOLERANCE = 1e-5
INTERPRETER_LIMIT = 1 << 26    # multiply-adds of the dense product the interpreter accepts


def register(sub):
    p = sub.add_parser("check", help="run a kernel on random data and compare with float64",
                       description="Build random inputs (A normal, B pruned to the pattern), run the kernel on the "
                                   "GPU (or the CPU interpreter) and compare with a float64 reference. Exits 1 "
                                   f"on FAIL (relative error above {TOLERANCE:g}, or any unwritten element).")
    add_problem_args(p)
    add_schedule_arg(p)
    p.add_argument("--interpret", action="store_true", help="run the kernel IR in the CPU interpreter (no GPU)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    p.set_defaults(run=run)


def random_inputs(problem, rng):
    from ..format import NMMatrix
    A = rng.standard_normal((problem.M, problem.K), dtype=np.float32)
    dense = rng.standard_normal((problem.K, problem.N), dtype=np.float32)
    return A, NMMatrix.from_dense(dense, problem.pattern, prune_first=True)


def run(args):
    from ..reference import relative_error, spmm_reference
    problem = problem_from(args)
    rng = np.random.default_rng(args.seed)
    if args.interpret:
        from ..ir.device import for_arch
        if problem.M * problem.N * problem.K > INTERPRETER_LIMIT:
            raise NMGenError(f"{problem} is too large for the CPU interpreter (M*N*K > {INTERPRETER_LIMIT}); "
                             f"it checks tiny problems: use a smaller shape, or run on the GPU without --interpret")
        dev = for_arch("sm_90")
    else:
        from ..api import current_device
        from ..errors import CudaUnavailable
        dev = current_device()
        if dev is None:
            raise CudaUnavailable("no GPU here: run `nmgen check --interpret` to check the kernel on the CPU")
    A, B = random_inputs(problem, rng)
    schedule = schedule_from(args, problem, dev)
    if args.interpret:
        from ..api import host_operands
        from ..ir import build, interpret, validate
        from ..search.heuristic import default_schedule
        schedule = schedule or default_schedule(problem, dev)
        ops = host_operands(B, problem, schedule)
        validate(problem, schedule, dev, ops.geometry.a_rows)
        kernel = build(problem, schedule, ops.geometry.a_rows)
        arrays = {"A": np.ascontiguousarray(A.T) if problem.a_major == "col" else A, "Bv": ops.bv, "Bi": ops.bi}
        if ops.arows is not None:
            arrays["Arows"] = ops.arows
        C = interpret(kernel, arrays)
        where = "CPU interpreter"
    else:
        from ..api import compile, spmm
        k = compile(problem, schedule=schedule, B=B)
        schedule = k.schedule
        C = spmm(np.asfortranarray(A) if problem.a_major == "col" else A, B, kernel=k)
        where = dev.name
    err = relative_error(C, spmm_reference(A, B))
    ok = err < TOLERANCE
    print(f"{problem}  schedule {schedule.short()}  on {where}")
    print(f"relative error {err:.3e} (tolerance {TOLERANCE:g}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1
