"""The fuzzer: random problems under random schedules of the search space, each checked against
float64 (nmgen.checking), every failure reported with the `nmgen check` line that replays it.

A case draws (each choice independent, so that rare combinations come up):
  M        0 (an empty batch) in every EMPTY_EVERY-th case and now and then, else log-uniform from 1, with small and prime values favoured
  N        log-uniform from 1: rarely a multiple of the block tile or of V
  n:m, V   m up to 64 (odd m included), n from 1 to m, V from 1 to 128
  K        a whole number of windows, often odd
  A        row- or column-major; numpy arrays or torch tensors (GPU)
  dtype    one of `dtypes` (f32, tf32, bf16, f16); the tensor-core ones only where V is a multiple
           of 8 (else f32, or where f32 is not asked for, a V that is); C now and then in another
           output dtype than A's
  schedule nmgen's own choice now and then; else one of the search space's schedules for the
           problem (of its dtype: FFMA thread tiles or mma warp tiles), with some fields moved off
           the space (split-K up to the K tiles, uneven; a tail split of up to every tile; sliced K;
           the rotated loop; copies after the first rows; stages; register bounds; copy widths; A
           padding; rasterization), kept only if it still validates. A problem nmgen has no schedule for is drawn again.
On the GPU the kernels compile ahead in worker processes, as the tuner's do; on the CPU (CI) the
interpreter runs small cases.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .ir.device import Device
from .ir.problem import Pattern, Problem
from .ir.schedule import Schedule

WINDOWS_M = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 32, 32, 48, 64)
VECTORS = (1, 1, 2, 3, 4, 5, 8, 16, 32, 32, 64, 96, 128)
SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 31, 61, 127, 257, 509, 1021, 2039, 4093, 4099)
# every EMPTY_EVERY-th case is an empty batch, so that a run of that many covers one (by chance alone,
# 3% of cases, 150 cases missed it 13 times in 1000 seeds)
EMPTY_EVERY = 32
DTYPES = ("f32", "tf32", "bf16", "f16")       # what a case may multiply in (nmgen's names)
MMA_VECTORS = tuple(v for v in VECTORS if v % 8 == 0)     # the vectors the tensor cores take


@dataclass(frozen=True)
class Limits:
    """Largest M, N, K a case draws, and its cost bound (multiply-adds of the dense product)."""
    M: int
    N: int
    K: int
    macs: float


GPU_LIMITS = Limits(M=4099, N=3000, K=4096, macs=4e9)
CPU_LIMITS = Limits(M=40, N=260, K=512, macs=2e6)


@dataclass(frozen=True)
class Case:
    M: int
    N: int
    K: int
    pattern: Pattern
    a_major: str
    schedule: Schedule | None     # None: the schedule nmgen.spmm chooses
    seed: int                     # of the inputs (nmgen.checking.random_inputs)
    array: str = "numpy"
    dtype: str = "f32"            # A's and B's (ir.dtypes)
    c_dtype: str | None = None    # C's; None: A's storage dtype

    @property
    def problem(self) -> Problem | None:
        """None for an empty batch (M = 0): no kernel, spmm returns an empty C."""
        return Problem(self.M, self.N, self.K, self.pattern, self.dtype, self.a_major, self.c_dtype) if self.M else None

    @property
    def out_dtype(self) -> str:
        """C's dtype (the default made explicit)."""
        return self.c_dtype or ("f32" if self.dtype == "tf32" else self.dtype)

    def command(self, interpret: bool = False) -> str:
        from .checking import command
        if self.M == 0:
            return f"python -c \"{empty_batch_snippet(self)}\""
        return command(self.problem, self.schedule, self.seed, self.array, interpret)

    def to_dict(self) -> dict:
        return {"M": self.M, "N": self.N, "K": self.K, "pattern": str(self.pattern), "a_major": self.a_major,
                "schedule": self.schedule.to_dict() if self.schedule else None, "seed": self.seed, "array": self.array,
                "dtype": self.dtype, "c_dtype": self.c_dtype}


def _storage(dtype: str) -> str:
    return "f32" if dtype == "tf32" else dtype


def empty_batch_snippet(c: Case) -> str:
    p, store = c.pattern, _storage(c.dtype)
    tf32 = ", allow_tf32=True" if c.dtype == "tf32" else ""
    return ("import numpy as np, nmgen; from nmgen.bench import random_nm; from nmgen.ir.dtypes import DTYPES; "
            f"B = random_nm(nmgen.Problem(1, {c.N}, {c.K}, nmgen.Pattern({p.n}, {p.m}, {p.vector})), "
            f"np.random.default_rng({c.seed})).astype('{store}'); "
            f"print(nmgen.spmm(np.zeros((0, {c.K}), DTYPES['{store}'].storage), B{tf32}).shape)")


def _log_uniform(rng, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))))


def draw_dtypes(rng, V: int, dtypes=DTYPES) -> tuple[str, str | None, int]:
    """(dtype, C dtype or None for the default, V) of a case whose vector length was drawn as V:
    a tensor-core dtype needs V a multiple of 8, so with another V the case runs in f32, or where
    f32 is not among `dtypes`, draws a V of MMA_VECTORS instead. C takes another output dtype than
    A's a quarter of the time."""
    from .ir.dtypes import OUTPUT_DTYPES
    dtype = str(rng.choice(list(dtypes)))
    if dtype != "f32" and V % 8:
        if "f32" in dtypes:
            dtype = "f32"
        else:
            V = int(rng.choice(MMA_VECTORS))
    default = "f32" if dtype == "tf32" else dtype
    c_dtype = str(rng.choice([c for c in OUTPUT_DTYPES if c != default])) if rng.random() < 0.25 else None
    return dtype, c_dtype, V


def draw_case(rng, device: Device, limits: Limits, arrays=("numpy",), dtypes=DTYPES, empty_batch=False) -> Case:
    """One random case within `limits` whose schedule (when given) validates on `device`; its dtype
    one of `dtypes` (draw_dtypes); M = 0 when `empty_batch`, else now and then."""
    while True:
        m = int(rng.choice(WINDOWS_M))
        n = int(rng.integers(1, m + 1))
        dtype, c_dtype, V = draw_dtypes(rng, int(rng.choice(VECTORS)), dtypes)
        windows = _log_uniform(rng, 1, max(1, limits.K // m))
        if rng.random() < 0.5 and windows > 1:
            windows -= 1 - windows % 2                      # an odd number of windows
        K = m * windows
        r = rng.random()
        M = (0 if r < 0.03 else int(rng.choice(SMALL_PRIMES[:8])) if r < 0.2 else
             int(rng.integers(1, 17)) if r < 0.35 else _log_uniform(rng, 1, limits.M))
        M = 0 if empty_batch else min(M, limits.M)
        N = _log_uniform(rng, 1, limits.N)
        if max(M, 1) * N * K > limits.macs:
            continue
        pattern, a_major = Pattern(n, m, V), ("row", "col")[int(rng.integers(2))]
        seed, array = int(rng.integers(2**32)), arrays[int(rng.integers(len(arrays)))]
        if M == 0:
            return Case(0, N, K, pattern, a_major, None, seed, array, dtype)
        problem = Problem(M, N, K, pattern, dtype, a_major, c_dtype)
        s = draw_schedule(rng, problem, device)
        if s is not False:
            return Case(M, N, K, pattern, a_major, s, seed, array, dtype, c_dtype)


def draw_schedule(rng, problem: Problem, device: Device):
    """A random schedule for `problem` (None: nmgen's choice), or False when nmgen has none: no
    schedule runs the problem (a row-major 16-bit A with K an odd number of elements has none), so
    nmgen's choice would be a ScheduleError, not a kernel to check."""
    from .errors import ScheduleError
    from .ir.operands import geometry
    from .ir.validate import problems
    from .search.heuristic import default_schedule
    from .search.space import sample_space
    if rng.random() < 0.15:
        try:
            default_schedule(problem, device)       # what nmgen's choice falls back to: none fits, none chosen
        except ScheduleError:
            return False
        return None
    s = sample_space(problem, device, rng)
    if s is None:
        return False
    g = geometry(problem, s)
    T, tiles = g.T, g.tiles_m * g.tiles_n
    moves = {
        "split_k": lambda: int(rng.integers(1, min(T, 16) + 1)),
        "warps_k": lambda: int(rng.choice((1, 2, 3, 4))),
        "prefetch": lambda: 1 - s.prefetch,
        "refill_row": lambda: int(rng.choice((1, 2, 3))),
        "stages": lambda: int(rng.integers(2, 6)),
        "min_blocks": lambda: int(rng.choice((0, 2, 3))),
        "b_copy_bytes": lambda: int(rng.choice((4, 8, 16))),
        "a_pad": lambda: int(rng.choice((0, 4, 8))),
        "raster": lambda: int(rng.choice((1, 3, 8, 32))),
        "k_windows": lambda: int(rng.integers(1, 5)),
        # the last tiles' K split over blocks, up to every tile (the tuner's tail split)
        "tail": lambda: dict(tail_tiles=int(rng.integers(1, tiles + 1)), tail_split=int(rng.integers(2, min(T, 8) + 1)),
                             split_k=1) if T > 1 else {},
    }
    for field in rng.permutation(list(moves)):
        if rng.random() < 0.3:
            move = moves[field]()
            moved = s.replace(**(move if isinstance(move, dict) else {field: move}))
            if not problems(problem, moved, device):
                s = moved
    return s


def compile_case(case_dict: dict, arch: str):
    """Worker process: (ptx, cubin, resources dict | error text) of a case's kernel. The "rows"
    strategy's list length comes from the case's own weights, drawn again from its seed."""
    from .checking import random_weights
    from .ir.operands import rows_length
    from .search.tuner import compile_worker
    case = case_from_dict(case_dict)
    p, s = case.problem, case.schedule
    a_rows = rows_length(p, s, random_weights(p, case.seed).indices) if s.a_load == "rows" else None
    return compile_worker(p.to_dict(), s.to_json(), arch, a_rows)


def case_from_dict(d: dict) -> Case:
    return Case(d["M"], d["N"], d["K"], Pattern.parse(d["pattern"].split("x")[0], int(d["pattern"].split("x")[1])),
                d["a_major"], Schedule.from_dict(d["schedule"]) if d["schedule"] else None, d["seed"], d["array"],
                d.get("dtype", "f32"), d.get("c_dtype"))


@dataclass
class Outcome:
    case: Case
    ok: bool
    detail: str
    schedule: Schedule | None = None     # what ran


def run_case(case: Case, device: Device, interpret: bool, compiled=None) -> Outcome:
    """Check one case (inputs of its dtype, from its seed) on the GPU (spmm with A and B stored in
    the dtype, as numpy arrays or torch tensors) or in the interpreter."""
    from .checking import random_inputs, run_gpu, run_interpreter, stored_weights, verdict
    rng = np.random.default_rng(case.seed)
    if case.M == 0:
        return _run_empty_batch(case, interpret)
    p = case.problem
    A, B = random_inputs(p, rng)
    if interpret:
        from .api import choose_schedule
        s = case.schedule or choose_schedule(p, device, B)
        C = run_interpreter(p, s, A, B)
    else:
        B_run = stored_weights(p, B)          # the weights in the dtype, as a user holds them
        k = _kernel(case, device, B_run, compiled)
        s = k.schedule
        C = run_gpu(k, A, B_run, case.array)
    v = verdict(p, C, A, B, rng)
    return Outcome(case, v.ok, v.summary(), s)


def _kernel(case: Case, device: Device, B, compiled):
    from .api import Kernel, compile
    if case.schedule is None or compiled is None:
        return compile(case.problem, schedule=case.schedule, B=B)
    ptx, cubin, res = compiled
    if ptx is None:
        from .errors import CompileError
        raise CompileError(str(res))
    from .codegen import Resources
    from .ir.operands import rows_length
    a_rows = rows_length(case.problem, case.schedule, B.indices)
    return Kernel(case.problem, case.schedule, device.arch, a_rows, ptx=ptx, cubin=cubin,
                  resources=Resources(**res, log="") if isinstance(res, dict) else None)


def _run_empty_batch(case: Case, interpret: bool) -> Outcome:
    """spmm of a (0, K) A of the case's dtype returns a (0, N) C of A's dtype and library,
    launching nothing."""
    from .api import spmm
    from .checking import random_weights, stored_weights
    from .ir.dtypes import DTYPES
    p = Problem(1, case.N, case.K, case.pattern, case.dtype)
    B = stored_weights(p, random_weights(p, case.seed))
    want = DTYPES[_storage(case.dtype)]
    A = np.zeros((0, case.K), want.storage)
    if case.array == "torch" and not interpret:
        import torch
        A = torch.zeros((0, case.K), dtype=getattr(torch, want.torch), device="cuda")
    C = spmm(A, B, allow_tf32=case.dtype == "tf32")
    shape, dtype = tuple(C.shape), str(C.dtype).replace("torch.", "")
    same_library = type(C).__module__.split(".")[0] == type(A).__module__.split(".")[0]
    ok = shape == (0, case.N) and dtype == want.torch and same_library
    return Outcome(case, ok, f"empty batch gave {type(C).__name__} {shape} {dtype}")


class Outcomes(list):
    """A fuzz run's outcomes, in order, and why fewer than the drawn cases ran: `skipped`, drawn
    cases too large for the interpreter (not run); `stopped`, what ended the run before its last
    case (the time limit, Ctrl-C, a CUDA error that left the context unusable), else None."""
    skipped: int = 0
    stopped: str | None = None


def fuzz(cases: int, seed: int, device: Device, *, interpret: bool, limits: Limits | None = None,
         arrays=("numpy",), dtypes=DTYPES, workers: int | None = None, progress: bool = True,
         on_failure=None, time_limit_s: float | None = None) -> Outcomes:
    """Draw and check `cases` cases of `dtypes` from `seed`; `on_failure(outcome)` is called as
    failures happen. Interpreted, a drawn case too large for the interpreter is skipped (counted).
    A launch that leaves the CUDA context unusable (an illegal address) ends the run: it is the
    last outcome, failed. After `time_limit_s` seconds (wall clock), or on Ctrl-C, no further case
    starts and the cases run so far are returned (the same seed draws the same cases, so a shorter
    run checks a prefix of a longer one)."""
    import time

    from tqdm import tqdm
    from .errors import CudaError
    rng = np.random.default_rng(seed)
    limits = limits or (CPU_LIMITS if interpret else GPU_LIMITS)
    drawn = [draw_case(rng, device, limits, arrays, dtypes, empty_batch=i % EMPTY_EVERY == EMPTY_EVERY - 1)
             for i in range(cases)]
    out = Outcomes()
    if interpret:
        fits = [c for c in drawn if c.M == 0 or _fits_interpreter(c)]
        out.skipped = len(drawn) - len(fits)
        drawn = fits
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    bar = tqdm(total=len(drawn), desc="fuzz", unit="case", disable=not progress, dynamic_ncols=True)
    try:
        for case, compiled in _compiled(drawn, device, interpret, workers):
            if deadline is not None and time.monotonic() > deadline:
                out.stopped = "the time limit"
                break
            try:
                o = run_case(case, device, interpret, compiled)
            except CudaError as e:
                o = Outcome(case, False, f"{type(e).__name__}: {e}")
                out.append(o)
                if on_failure:
                    on_failure(o)
                if e.code in ("CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_MISALIGNED_ADDRESS",
                              "CUDA_ERROR_ILLEGAL_INSTRUCTION"):
                    out.stopped = f"{e.code}, which leaves the GPU unusable"
                    break
                continue
            except Exception as e:  # noqa: BLE001 - any error of a case is its failure, reported, not a crash
                o = Outcome(case, False, f"{type(e).__name__}: {e}")
            out.append(o)
            if not o.ok and on_failure:
                on_failure(o)
            bar.update(1)
    except KeyboardInterrupt:
        out.stopped = "Ctrl-C"                # the cases run so far are the result
    finally:
        bar.close()
    return out


def _fits_interpreter(case: Case) -> bool:
    from .ir.interpret import estimate_cost
    from .ir.operands import geometry
    if case.schedule is None:
        return estimate_cost(case.problem)[0] < 0.5
    return estimate_cost(case.problem, case.schedule)[0] < 3.0 and geometry(case.problem, case.schedule).T < 200


def _compiled(drawn, device, interpret, workers):
    """(case, compiled or None) in order, the GPU cases' kernels compiled ahead in worker processes."""
    if interpret:
        for c in drawn:
            yield c, None
        return
    workers = workers if workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    todo = [c for c in drawn if c.schedule is not None and c.M]
    with ProcessPoolExecutor(workers) as pool:
        futures = {id(c): pool.submit(compile_case, c.to_dict(), device.arch) for c in todo}
        try:
            for c in drawn:
                f = futures.get(id(c))
                yield c, (f.result() if f else None)
        finally:
            for f in futures.values():
                f.cancel()


def summary(outcomes: list[Outcome], seed: int, device: Device, interpret: bool) -> dict:
    """Counts by kind of case, and every failure with its reproduction command."""
    def kinds(o: Outcome):
        c = o.case
        s = o.schedule or c.schedule
        k = {"dtype": c.dtype, "out_dtype": c.out_dtype, "a_major": c.a_major, "array": c.array,
             "empty_batch": c.M == 0}
        if s is not None:
            k.update(instruction=("wgmma a-smem" if s.wgmma_a_smem else "wgmma") if s.wgmma
                     else "mma" if s.thread_m == 0 else "ffma", split_k=s.split_k > 1,
                     tail_split=s.tail_tiles > 0, sliced_k=s.warps_k > 1, a_load=s.a_load, prefetch=bool(s.prefetch),
                     refill_row=bool(s.refill_row), stages=s.stages)
        return k
    counts: dict = {}
    for o in outcomes:
        for key, v in kinds(o).items():
            counts.setdefault(key, {}).setdefault(str(v), 0)
            counts[key][str(v)] += 1
    failed = [o for o in outcomes if not o.ok]
    return {"device": device.name, "where": "CPU interpreter" if interpret else device.name, "seed": seed,
            "cases": len(outcomes), "failures": len(failed), "skipped": getattr(outcomes, "skipped", 0),
            "stopped": getattr(outcomes, "stopped", None), "counts": counts,
            "failed": [{"case": o.case.to_dict(), "detail": o.detail, "reproduce": o.case.command(interpret)}
                       for o in failed]}

