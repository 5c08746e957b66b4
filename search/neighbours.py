"""Schedules that won on neighbouring problems: candidates the model may rank too low.

The model-topk tuner measures the model's best k. Where the model misjudges a shape (a partial last
tile, an odd grid), the schedule that won on a nearby tile-aligned shape is often still the best,
so the tuner also measures the recorded bests of the nearest problems with the same pattern, vector,
A order and dtypes (a bf16 problem's neighbours are bf16 problems): at most `problems` of them, each
within a factor of two in M, N and K.
"""
from __future__ import annotations

from math import log2

from ..ir.problem import Problem
from ..ir.schedule import Schedule

MAX_LOG2_DISTANCE = 1.0     # per dimension: 2x


def _problem_of(rec: dict) -> Problem | None:
    """The problem a database record was measured for, read from its key (sizes, pattern, dtype,
    C's dtype, A's order), or None where the key is no problem's."""
    from ..ir.errors import NMGenError
    try:
        return Problem.from_key(rec["problem_key"])
    except NMGenError:
        return None


def distance(a: Problem, b: Problem) -> float | None:
    """Sum of |log2| size ratios over M, N, K; None when the problems are not comparable."""
    if (a.pattern, a.a_major, a.dtype, a.c_dtype) != (b.pattern, b.a_major, b.dtype, b.c_dtype):
        return None
    d = [abs(log2(x / y)) for x, y in ((a.M, b.M), (a.N, b.N), (a.K, b.K))]
    return sum(d) if max(d) <= MAX_LOG2_DISTANCE else None


def neighbour_schedules(problem: Problem, records: list[dict], problems: int = 3) -> list[Schedule]:
    """Best schedules of the nearest `problems` recorded problems (records: TuningDB.bests_by_problem),
    nearest first, without repeats; the problem itself is left out."""
    near: dict[str, tuple[float, list[dict]]] = {}
    for rec in records:
        if rec["problem_key"] == problem.key():
            continue
        other = _problem_of(rec)
        d = distance(problem, other) if other else None
        if d is not None:
            near.setdefault(rec["problem_key"], (d, []))[1].append(rec)
    out, seen = [], set()
    for _, recs in sorted(near.values(), key=lambda x: x[0])[:problems]:
        for rec in sorted(recs, key=lambda r: r["median_us"]):
            s = Schedule.from_json(rec["schedule"])
            if s.hash() not in seen:
                seen.add(s.hash())
                out.append(s)
    return out
