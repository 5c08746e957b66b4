"""Measure schedules and record them: the tuner.

  candidates   the space (search.space), ranked by the model (search.model); "exhaustive" measures
               all of it, "model-topk" the model's best k families (schedules the model can tell apart: see
               best_families; default 10% of the space) plus the
               best-predicted schedule of each kernel kind missing from them (kind_leaders) and the
               recorded bests of nearby problems (search.neighbours); `budget` caps
               how many are measured in this run; anything already recorded for this problem,
               device and toolchain is skipped (failures are never retried; a killed search resumes)
  compile      in parallel worker processes: IR -> PTX -> ptxas -> cubin (no CUDA in the workers)
  inputs       A and B of the problem's dtype (bf16, f16: their storage; tf32: float32 values of
               TF32), A in the kernel's layout, C of the problem's C dtype
  check        once per candidate: the output, poisoned with NaN first, against the float64
               reference on reference.check_rows, every element within the error bound of its sum
               on FFMA or the tensor cores and of C's rounding (reference.Expected)
  time         CUDA events, warm-up, median of `reps` runs, L2 flushed before each run
  refine       then one step from the best two measured (search.refine: the other loop form, the
               copies after a tile's first rows, a register bound, bigger blocks), again while a
               round finds something faster
  record       immediately, one row per candidate, with how it was measured; the final top few are
               measured once more and the database keeps the better median
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..ir.device import Device
from ..ir.problem import Problem
from ..ir.schedule import Schedule
from . import model
from .space import family, rows_lengths, space_to_search

log = logging.getLogger("nmgen.search")


@dataclass
class Result:
    schedule: Schedule
    status: str
    median_us: float | None = None
    model_us: float | None = None
    registers: int | None = None
    rel_err: float | None = None
    error: str | None = None
    record: dict = field(default_factory=dict)


def compile_worker(problem_dict: dict, schedule_json: str, arch: str, a_rows: int | None):
    """Runs in a worker process: (ptx, cubin, resources dict) or (None, None, error text)."""
    from ..codegen import arch_of, assemble_cubin, generate_ptx
    from ..ir import build
    try:
        problem, s = Problem.from_dict(problem_dict), Schedule.from_json(schedule_json)
        kernel = build(problem, s, a_rows)
        ptx = generate_ptx(kernel, arch)
        try:
            res, cubin = assemble_cubin(ptx, arch_of(kernel, arch))
            return ptx, cubin, res.to_dict()
        except Exception as e:  # noqa: BLE001 - no ptxas here: the driver JIT-compiles the PTX
            if "not found" in str(e):
                return ptx, None, None
            raise
    except Exception as e:  # noqa: BLE001 - any failure is recorded as this candidate's compile_error
        return None, None, f"{type(e).__name__}: {e}"


def best_families(ranked, k: int) -> list:
    """The best-ranked member of each of the `k` best families (search.space.family) of `ranked`
    ((schedule, prediction), best first): schedules that differ only in pipeline depth and loop form
    tie in the model (FFMA, tf32) or differ by its measured factors alone (16-bit tensor cores), and
    k of them would measure about one kernel k times over; the refinements then try the winners'
    other depths and forms."""
    out, seen = [], set()
    for s, p in ranked:
        f = family(s)
        if f not in seen:
            seen.add(f)
            out.append((s, p))
            if len(out) == k:
                break
    return out


def kind_leaders(ranked, chosen) -> list:
    """The best-ranked (schedule, prediction) of each pipeline kind (search.model.pipeline_kind: FFMA
    or mma.sync, wgmma with A in registers, wgmma with A from shared memory) of `ranked` that has no
    schedule among `chosen`. The model's factors for the kinds were fitted apart (the third on 29
    kernels), so a bias between kinds could otherwise keep a whole kind out of model-topk's
    measurements: one measurement each bounds that risk."""
    have = {model.pipeline_kind(s) for s, _ in chosen}
    out = []
    for s, p in ranked:
        kind = model.pipeline_kind(s)
        if kind not in have:
            have.add(kind)
            out.append((s, p))
    return out


def default_topk(ranked) -> int:
    """model-topk's default: 10% of the space's schedules, at least 8, each loop form counted once
    (the 16-bit space lists both forms of a schedule, which the default must not double)."""
    return max(8, sum(1 for s, _ in ranked if not s.prefetch) // 10)


class Tuner:
    def __init__(self, problem: Problem, device: Device, db, B=None, *, reps: int = 20, warmup: int = 5,
                 workers: int | None = None, progress: bool = True, rng=None, measure=None, compile_fn=None):
        """`measure(schedule, prediction, compiled) -> Result` and `compile_fn` default to the GPU and
        the worker-process compiler; `workers=0` compiles in this process."""
        from ..checking import stored_weights
        from ..format import NMMatrix
        self.problem, self.device, self.db = problem, device, db
        self.rng = rng or np.random.default_rng()
        if B is None:
            B = NMMatrix.from_dense(self.rng.standard_normal((problem.K, problem.N), dtype=np.float32),
                                    problem.pattern, prune_first=True)
        self.B = stored_weights(problem, B)           # the weights in the problem's dtype
        self.reps, self.warmup, self.progress = reps, warmup, progress
        self.workers = max(1, min(16, (os.cpu_count() or 2) - 1)) if workers is None else workers
        self.measure = measure or self._measure_gpu
        self.compile_fn = compile_fn or compile_worker
        from ..toolchain import toolchain_fields
        self.toolchain = toolchain_fields(device.arch, device.driver)
        self.keys = (problem.key(), device.key(), self.toolchain["toolchain_key"])
        self.a_rows = rows_lengths(problem, self.B)   # schedule -> compacted list length ("rows")

    # ---- which schedules ---------------------------------------------------------------------------
    def ranked(self) -> list[tuple[Schedule, model.Prediction]]:
        space = space_to_search(self.problem, self.device)
        scored = [(s, model.predict(self.problem, s, self.device, None, self.a_rows(s))) for s in space]
        scored.sort(key=lambda x: x[1].time_us)
        return scored

    def plan(self, strategy: str = "model-topk", topk: int | None = None, budget: int | None = None):
        """(candidates to measure now, size of the space, number already recorded)."""
        ranked = self.ranked()
        if strategy == "exhaustive":
            chosen = ranked
        elif strategy == "model-topk":
            chosen = best_families(ranked, max(1, topk or default_topk(ranked)))
            chosen += kind_leaders(ranked, chosen)
            chosen += self._neighbours(ranked, {s.hash() for s, _ in chosen})
        else:
            raise ValueError(f"unknown strategy {strategy!r}; use exhaustive or model-topk")
        done = self.db.recorded(*self.keys)
        todo = [(s, p) for s, p in chosen if s.hash() not in done]
        if budget is not None:
            todo = todo[:budget]
        return todo, len(ranked), len(chosen) - len([1 for s, _ in chosen if s.hash() not in done])

    def _neighbours(self, ranked, chosen: set[str]):
        """(schedule, prediction) of the space that won on nearby recorded problems, not yet chosen."""
        from .neighbours import neighbour_schedules
        by_hash = {s.hash(): (s, p) for s, p in ranked}
        records = self.db.bests_by_problem(self.keys[1], self.keys[2])
        picks = [s.hash() for s in neighbour_schedules(self.problem, records)]   # distinct already
        return [by_hash[h] for h in picks if h in by_hash and h not in chosen]

    # ---- measuring ---------------------------------------------------------------------------------
    def run(self, strategy: str = "model-topk", topk: int | None = None, budget: int | None = None,
            remeasure: int = 3, refine: int = 2) -> list[Result]:
        todo, space, skipped = self.plan(strategy, topk, budget)
        log.info("%s: space %d, %d to measure, %d already recorded", self.problem, space, len(todo), skipped)
        results = self._measure_all(todo)
        for _ in range(refine):
            left = None if budget is None else budget - len(results)
            if left is not None and left <= 0:
                break
            before = self._best_rows(1)
            more = self._measure_all(self._refinements(top=2)[:left])
            results += more
            after = self._best_rows(1)
            if not more or before and after[0]["median_us"] >= before[0]["median_us"]:
                break                          # a round that found nothing faster ends the local search
        self._remeasure(remeasure)
        return results

    def _measure_all(self, todo) -> list[Result]:
        results = []
        for s, pred, compiled in self._compiled(todo):
            r = self.measure(s, pred, compiled)
            self.db.record(r.record)          # now: a killed search loses nothing it measured
            results.append(r)
        return results

    def _refinements(self, top: int):
        """(schedule, prediction) one step from each of the `top` best recorded, not yet recorded."""
        from .refine import refinements
        seen = set(self.db.recorded(*self.keys))
        out = []
        for r in self._best_rows(top):
            for c in refinements(self.problem, Schedule.from_json(r["schedule"]), self.device, r.get("registers"),
                                 self.a_rows):
                if c.hash() not in seen:
                    seen.add(c.hash())
                    out.append((c, model.predict(self.problem, c, self.device, None, self.a_rows(c))))
        return out

    def _best_rows(self, top: int) -> list[dict]:
        """The `top` fastest successful records of this problem on this device and toolchain."""
        return self.db.rows(self.keys[0], self.keys[1], status="ok", toolchain_key=self.keys[2])[:top]

    def _compiled(self, todo):
        """Yield (schedule, prediction, (ptx, cubin, resources|error)) in model order, compiling ahead."""
        from tqdm import tqdm
        args = [(self.problem.to_dict(), s.to_json(), self.device.arch, self.a_rows(s)) for s, _ in todo]
        bar = tqdm(total=len(todo), desc=f"tuning {self.problem}", unit="schedule", disable=not self.progress,
                   leave=True, dynamic_ncols=True)
        try:
            if self.workers == 0:
                for (s, pred), a in zip(todo, args):
                    yield s, pred, self.compile_fn(*a)
                    bar.update(1)
                return
            with ProcessPoolExecutor(self.workers) as pool:
                futures = [pool.submit(self.compile_fn, *a) for a in args]
                try:
                    for (s, pred), fut in zip(todo, futures):
                        yield s, pred, fut.result()
                        bar.update(1)
                finally:
                    for f in futures:
                        f.cancel()
        finally:
            bar.close()

    def _prepare_inputs(self):
        """A (M x K, normal values of the problem's dtype) on the GPU in the kernel's layout, C's
        buffer of the problem's C dtype, and the float64 reference of the checked rows."""
        from ..api import kernel_a_layout
        from ..checking import computed
        from ..ir.build import storage
        from ..ir.dtypes import DTYPES, as_computed
        from ..reference import Expected, check_rows
        from ..runtime.memory import DeviceBuffer
        from ..runtime.timing import L2Flush
        p = self.problem
        A = as_computed(self.rng.standard_normal((p.M, p.K), dtype=np.float32), p.dtype)
        self.A = A.astype(DTYPES[storage(p)].storage)         # what spmm would be given: bf16, f16 or float32
        compute = DTYPES[p.dtype].compute
        self.expected = Expected(*computed(p, self.A, self.B), check_rows(p.M, self.rng), compute=compute,
                                 out_dtype=p.c_dtype)
        self.a_dev = DeviceBuffer.from_array(kernel_a_layout(self.A, p))
        self.c_dev = DeviceBuffer(p.M * p.N * DTYPES[p.c_dtype].itemsize)
        self.flush = L2Flush(self.device.l2_bytes)

    def base_record(self, s: Schedule, pred) -> dict:
        p, d = self.problem, self.device
        return {"problem_key": self.keys[0], "schedule_hash": s.hash(), "device_key": self.keys[1],
                "M": p.M, "N": p.N, "K": p.K, "keep_n": p.pattern.n, "window_m": p.pattern.m,
                "vector": p.pattern.vector, "schedule": s.to_json(), "device_name": d.name,
                "cc": f"{d.cc[0]}.{d.cc[1]}", "sms": d.sms, "model_us": pred.time_us if pred else None,
                **self.toolchain}

    def _measure_gpu(self, s: Schedule, pred, compiled) -> Result:
        from ..errors import CudaError
        if not hasattr(self, "a_dev"):
            self._prepare_inputs()
        rec = self.base_record(s, pred)
        ptx, cubin, res = compiled
        if ptx is None:
            rec.update(status="compile_error", error=str(res)[:2000])
            return Result(s, "compile_error", model_us=rec["model_us"], error=rec["error"], record=rec)
        from ..api import Kernel, device_operands
        from ..codegen import Resources
        import hashlib
        resources = Resources(**res, log="") if isinstance(res, dict) else None
        k = Kernel(self.problem, s, self.device.arch, self.a_rows(s), ptx=ptx, cubin=cubin, resources=resources)
        rec.update(ptx_hash=hashlib.sha256(ptx.encode()).hexdigest()[:16], smem_bytes=k.smem_bytes)
        if resources is not None:
            rec.update(registers=resources.registers, spill_bytes=resources.spill_stores + resources.spill_loads)
        try:
            ops = device_operands(self.B, self.problem, s)
            v = self._check(k, ops)
            err = v.rel_err
            if not v.ok:
                rec.update(status="wrong_result", rel_err=None if err != err else err, error=v.summary())
                return Result(s, "wrong_result", model_us=rec["model_us"], rel_err=err, error=rec["error"], record=rec)
            from ..runtime.timing import time_gpu
            t = time_gpu(lambda: k.launch(self.a_dev.ptr, ops, self.c_dev.ptr), 0, self.warmup, self.reps, self.flush)
        except CudaError as e:
            rec.update(status="launch_error", error=str(e)[:2000])
            if e.code in ("CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED", "CUDA_ERROR_MISALIGNED_ADDRESS"):
                self.db.record(rec)   # the context is lost: nothing more can run in this process
                raise
            return Result(s, "launch_error", model_us=rec["model_us"], error=rec["error"], record=rec)
        rec.update(status="ok", rel_err=err, median_us=t.median_ms * 1e3, mean_us=t.mean_ms * 1e3,
                   min_us=t.min_ms * 1e3, max_us=t.max_ms * 1e3, reps=t.reps, warmup=t.warmup, l2=t.l2)
        return Result(s, "ok", median_us=rec["median_us"], model_us=rec["model_us"], rel_err=err,
                      registers=rec.get("registers"), record=rec)

    def _check(self, k, ops):
        """Verdict (nmgen.reference) of one launch of `k` into a NaN-poisoned C of the C dtype."""
        from ..api import poison
        from ..ir.dtypes import DTYPES
        from ..runtime.memory import download, synchronize
        p = self.problem
        poison(self.c_dev.ptr, p.M * p.N, p.c_dtype)             # NaN: an unwritten element fails
        k.launch(self.a_dev.ptr, ops, self.c_dev.ptr)
        synchronize(0, k.name)
        C = download(np.empty((p.M, p.N), DTYPES[p.c_dtype].storage), self.c_dev.ptr).astype(np.float32)
        if not np.isfinite(C).all():          # any element never written, not only the sampled rows
            C = np.full_like(C, np.nan)
        return self.expected.check(C)

    def _remeasure(self, top: int):
        """Measure the best few recorded schedules once more (the database keeps the better median)."""
        if top <= 0:
            return
        rows = self._best_rows(top)
        if not rows:
            return
        if not hasattr(self, "a_dev"):
            self._prepare_inputs()
        from ..api import Kernel, device_operands
        from ..runtime.timing import time_gpu
        for r in rows:
            s = Schedule.from_json(r["schedule"])
            k = Kernel(self.problem, s, self.device.arch, self.a_rows(s))
            ops = device_operands(self.B, self.problem, s)
            t = time_gpu(lambda: k.launch(self.a_dev.ptr, ops, self.c_dev.ptr), 0, self.warmup, 2 * self.reps,
                         self.flush)
            self.db.record(dict(r, median_us=t.median_ms * 1e3, mean_us=t.mean_ms * 1e3, min_us=t.min_ms * 1e3,
                                max_us=t.max_ms * 1e3, reps=t.reps, warmup=t.warmup, l2=t.l2,
                                measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
