"""Development probe: measure a spread sample of the schedule space, to fit the model on this GPU.

    python scripts/probes/model_sample.py --db OUT.db [--per-problem 36] [--time-limit 420] PROBLEM...

PROBLEM: "MxNxK:n:m:dtype:a_major" (V = 32), e.g. 4096x4096x4096:16:32:bf16:col.

The tuner's model-topk measures the model's best k families; where the model misjudges a level, they
are all one kind of kernel, and the measurements teach nothing about the rest. This probe measures, per problem, the model's best --top "families" (every
schedule field except stages and the loop form) and a seeded random choice of the other families
in the model's best 40% (one member each, its stages at random), through the tuner's own compile, check and timing (L2
flushed, median of 20), into the database given (a GPU is needed). scripts/probes/fit_mma_model.py
then reads that database (or a JSON of its records) and fits the model's tensor-core constants.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


SAMPLED_SHARE = 0.4     # families beyond the model's best 40% are tiles too small for these problems


def sample(ranked, per_problem: int, rng, top: int = 8) -> list:
    from nmgen.search.space import family
    fams: dict[str, list] = {}
    for s, p in ranked:                          # ranked: fastest predicted first
        fams.setdefault(family(s), []).append((s, p))
    order = list(fams)
    best, rest = order[:top], order[top:max(top + 1, int(len(order) * SAMPLED_SHARE))]
    picks = [fams[f][0] for f in best]
    for i in rng.permutation(len(rest))[:max(0, per_problem - len(best))]:
        members = fams[rest[i]]
        picks.append(members[rng.integers(len(members))])
    return picks


def family_members(p, tuner, dev, n: int, have: set) -> list:
    """(schedule, prediction) of every member of the model's best `n` families not in `have`: each
    stage count of search.space.stage_choices, prefetch 0 and 1 where the schedule is valid."""
    from nmgen.ir.validate import problems
    from nmgen.search.model import predict
    from nmgen.search.space import stage_choices
    from nmgen.search.tuner import best_families
    out = []
    for s, _ in best_families(tuner.ranked(), n):
        for stages in stage_choices(p, s):
            for prefetch in (0, 1):
                c = s.replace(stages=stages, prefetch=prefetch)
                if c.hash() not in have and not problems(p, c, dev, tuner.a_rows(c)):
                    have.add(c.hash())
                    out.append((c, predict(p, c, dev, None, tuner.a_rows(c))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("problems", nargs="+")
    ap.add_argument("--db", required=True)
    ap.add_argument("--per-problem", type=int, default=36)
    ap.add_argument("--top", type=int, default=8, help="the model's best families, each measured")
    ap.add_argument("--prefetch-pairs", action="store_true",
                    help="also measure each sampled schedule's other loop form (prefetch), where valid")
    ap.add_argument("--members", type=int, default=0, metavar="N",
                    help="also measure every member of the model's best N families: each pipeline depth the "
                         "space offers, with both loop forms where valid (what the model cannot rank)")
    ap.add_argument("--time-limit", type=float, default=420.0, help="seconds; the problem under way then stops")
    args = ap.parse_args()
    from nmgen import Pattern, Problem
    from nmgen.db import TuningDB
    from nmgen.ir.problem import parse_shape
    from nmgen.runtime.driver import device_info, init
    from nmgen.search.tuner import Tuner
    from nmgen.errors import CudaUnavailable
    try:
        init()
    except CudaUnavailable as e:
        raise SystemExit(f"model_sample.py: {e}")
    dev = device_info(0)
    db = TuningDB(args.db)
    rng = np.random.default_rng(20261130)
    start = time.time()
    for spec in args.problems:
        shape, n, m, dtype, a_major = spec.split(":")
        M, N, K = parse_shape(shape)
        p = Problem(M, N, K, Pattern(int(n), int(m), 32), dtype, a_major, None)
        tuner = Tuner(p, dev, db, rng=np.random.default_rng(0), progress=False)
        todo = sample(tuner.ranked(), args.per_problem, rng, args.top)
        if args.members:
            todo += family_members(p, tuner, dev, args.members, {s.hash() for s, _ in todo})
        if args.prefetch_pairs:
            from nmgen.ir.validate import problems
            from nmgen.search.model import predict
            pairs = [s.replace(prefetch=1 - s.prefetch) for s, _ in todo]
            todo += [(s, predict(p, s, dev, None, tuner.a_rows(s))) for s in pairs
                     if not problems(p, s, dev, tuner.a_rows(s))]
        done = set(db.recorded(*tuner.keys))
        todo = [(s, pr) for s, pr in todo if s.hash() not in done]
        t0 = time.time()
        measured = []
        for s, pr, compiled in tuner._compiled(todo):
            if time.time() - start > args.time_limit:
                break
            r = tuner.measure(s, pr, compiled)
            db.record(r.record)
            measured.append(r)
        ok = sorted((r for r in measured if r.status == "ok"), key=lambda r: r.median_us)
        print(f"{p}: {len(measured)} measured in {time.time() - t0:.0f} s, "
              f"{len(ok)} ok; best {ok[0].median_us:.1f} us {ok[0].schedule.short()}" if ok else f"{p}: none ok",
              flush=True)
        if time.time() - start > args.time_limit:
            print("time limit reached", flush=True)
            break


if __name__ == "__main__":
    main()
