"""nmgen check: run the kernel that would run on fresh random inputs and compare with float64."""
from __future__ import annotations

import numpy as np

from ..errors import NMGenError
from .common import add_db_arg, add_problem_args, add_schedule_arg, at_least, problem_from, schedule_from

# The CPU interpreter runs every block in numpy: it checks small problems. Refused beyond these.
INTERPRETER_SECONDS = 120
INTERPRETER_BYTES = 2 << 30


def register(sub):
    p = sub.add_parser("check", help="run a kernel on random data and compare with float64",
                       description="Build random inputs of --dtype (A normal; B of the pattern, normal values at "
                                   "random kept rows; both rounded to the dtype), run the kernel that nmgen.spmm would "
                                   "run (the tuning database's best or the model's choice; or --schedule) on the GPU "
                                   "or in the CPU interpreter, and compare every checked element of C with a float64 "
                                   "reference of the same inputs, within the error bound of its K-long fp32 sum on "
                                   "FFMA or the tensor cores and of C's rounding to --out-dtype (nmgen.reference). "
                                   "Exits 1 on FAIL (an element over its bound, or never written).")
    add_problem_args(p)
    add_schedule_arg(p)
    p.add_argument("--interpret", action="store_true",
                   help="run the kernel IR in the CPU interpreter instead of the GPU (needed on a machine without "
                        f"one; small shapes: it refuses runs past {INTERPRETER_SECONDS} s or "
                        f"{INTERPRETER_BYTES >> 30} GB)")
    p.add_argument("--arch", choices=("sm_80", "sm_86", "sm_89", "sm_90"), default=None,
                   help="with --interpret: the GPU the schedule is chosen and judged for (its shared memory, "
                        "registers, instructions; default this machine's GPU, else sm_90). A GPU run uses the "
                        "GPU's own")
    p.add_argument("--array", choices=("numpy", "torch"), default="numpy",
                   help="GPU run: numpy arrays (copied in and out, default) or torch CUDA tensors used in place")
    p.add_argument("--seed", type=at_least(0), default=None,
                   help="random seed of the inputs (default: fresh; the seed used is printed)")
    add_db_arg(p)
    p.set_defaults(run=run)


def run(args):
    from ..api import current_device
    from ..checking import random_inputs, run_gpu, run_interpreter, verdict
    from ..ir.device import for_arch
    problem = problem_from(args)
    if args.interpret and args.array != "numpy":
        raise NMGenError(f"--array {args.array} passes GPU tensors; the CPU interpreter (--interpret) takes numpy "
                         f"arrays: leave out one of the two")
    if args.arch and not args.interpret:
        raise NMGenError(f"--arch {args.arch} chooses the GPU the CPU interpreter judges schedules for; a GPU run "
                         f"uses the GPU's own: add --interpret, or leave out --arch")
    from ..search.choose import open_db
    gpu = current_device()
    typical = for_arch(args.arch or "sm_90")        # the GPU judged for without one (or as --arch asks)
    judge = typical if args.arch else gpu or typical
    given = schedule_from(args, problem, judge)     # a bad --schedule is reported as such
    # the database is read only for the schedule (as in ptx); a missing --db is reported before "no GPU"
    db = open_db(args.db, create=False) if args.db and given is None else None
    if not args.interpret and gpu is None:
        from ..errors import CudaUnavailable
        if given is not None:       # a schedule that cannot run says so before "no GPU"
            from ..ir import validate
            from ..ir.operands import geometry
            from ..ir.problem import ceil_div
            # "rows" lists are sized by the weights: judged at the shortest any weights give (each unit's
            # kept rows), so that only a schedule no weights let run is refused here
            g = geometry(problem, given)
            validate(problem, given, typical,
                     min(g.a_rows, ceil_div(g.kept, 8) * 8) if given.a_load == "rows" else None)
        line, same = interpreter_command(problem, given, args.seed)
        if same and given is not None and given.a_load == "rows":
            # the interpreter would run it on its own weights: judge the schedule on them (seeded, so
            # that the command below meets the very lists judged here)
            seed = args.seed if args.seed is not None else fresh_seed()
            _, B = random_inputs(problem, np.random.default_rng(seed))
            validate_on(problem, given, typical, B)
            line, _ = interpreter_command(problem, given, seed)
        if args.db:
            import shlex
            line += f" --db {shlex.quote(args.db)}"
        dropped = "; your --schedule is for this shape and is left out" if given is not None else ""
        raise CudaUnavailable(f"no GPU here: `{line}` checks {'this problem' if same else 'the same pattern'} on the "
                              f"CPU{'' if same else f' (the interpreter runs small shapes{dropped})'}")
    dev = judge
    seed = args.seed if args.seed is not None else fresh_seed()
    rng = np.random.default_rng(seed)
    if args.interpret:   # before any input exists: the operands alone can exceed the memory bound (the
        # time is judged once the schedule is known: a bound for every schedule would refuse what runs)
        from ..ir.interpret import estimate_cost
        within_interpreter_limits(problem, None, estimate_cost(problem)[1], seed)
    A, B = random_inputs(problem, rng)
    if given is None:
        from ..search.choose import chosen
        schedule, source = chosen(problem, dev, B, db)
    else:
        schedule, source = given, "--schedule"
    if args.interpret:
        validate_on(problem, schedule, dev, B)
        seconds, nbytes = estimate_cost(problem, schedule)
        within_interpreter_limits(problem, seconds, nbytes, seed)
        print(f"CPU interpreter: about {max(seconds, 0.1):.1f} s and {max(nbytes / 2**20, 1):.0f} MB at most", flush=True)
        C, where = run_interpreter(problem, schedule, A, B), "CPU interpreter"
    else:
        from ..api import compile
        from ..checking import stored_weights
        B_run = stored_weights(problem, B)                 # the weights in the problem's dtype
        C = run_gpu(compile(problem, schedule=schedule, B=B_run), A, B_run, args.array)
        where = f"{dev.name} ({args.array})"
    v = verdict(problem, C, A, B, rng)
    print(f"{problem}  schedule {schedule.short()}  on {where}  seed {seed}")
    print(f"schedule from {source}")
    print(f"{v.summary()}: {'PASS' if v.ok else 'FAIL'}")
    return 0 if v.ok else 1


def fresh_seed() -> int:
    """A seed for inputs the user did not seed (printed, so that a run can be replayed)."""
    return int(np.random.SeedSequence().entropy % 2**32)


def validate_on(problem, schedule, device, B) -> None:
    """ir.validate for `schedule` with these weights: a "rows" schedule's A lists are sized by B."""
    from ..ir import validate
    from ..ir.operands import rows_length
    validate(problem, schedule, device, rows_length(problem, schedule, B.indices))


def within_interpreter_limits(problem, seconds: float | None, nbytes: int, seed: int) -> None:
    """Refuse, before starting, a run the CPU interpreter cannot finish in its time and memory bounds
    (`seconds` None: judged on memory alone, before the schedule that decides the time is known)."""
    from ..checking import command
    if (seconds or 0.0) > INTERPRETER_SECONDS or nbytes > INTERPRETER_BYTES:
        need = f"about {seconds:.0f} s and " if seconds is not None else ""
        raise NMGenError(f"{problem} would take the CPU interpreter {need}{nbytes / 2**20:.0f} MB "
                         f"(limits {INTERPRETER_SECONDS} s, {INTERPRETER_BYTES >> 20} MB); check a smaller shape, "
                         f"e.g. `{command(smaller(problem), None, seed, interpret=True)}`, or run on a GPU")


def interpreter_command(problem, schedule, seed) -> tuple[str, bool]:
    """(the `nmgen check --interpret` line for a machine without a GPU, whether it is this very
    problem): the problem itself, with its schedule and seed, where the interpreter can run it
    (judged under `schedule`, else the heuristic's default), else `smaller(problem)`."""
    from ..checking import command
    from ..ir.device import for_arch
    from ..ir.interpret import estimate_cost
    from ..search.heuristic import default_schedule
    seconds, nbytes = estimate_cost(problem, schedule or default_schedule(problem, for_arch("sm_90")))
    if seconds <= INTERPRETER_SECONDS and nbytes <= INTERPRETER_BYTES:
        return command(problem, schedule, seed, interpret=True), True
    return command(smaller(problem), None, seed, interpret=True), False


def smaller(problem):
    """A problem of the same pattern, vector, A order and dtypes small enough for the CPU interpreter."""
    from ..ir.problem import Problem
    p = problem.pattern
    windows = min(problem.windows, max(1, -(-128 // p.m)))
    return Problem(min(problem.M, 33), min(problem.N, max(96, 2 * p.vector + 3)), windows * p.m, p, problem.dtype,
                   problem.a_major, problem.c_dtype)
