"""Development probe: fit the model's tensor-core constants (search/model.py, item 3b) to measurements.

    python scripts/probes/fit_mma_model.py benchmarks/2026-11-30-h200-model-fit/samples.json.gz
    python scripts/probes/fit_mma_model.py OUT.db          (model_sample.py's database itself)
    python scripts/probes/fit_mma_model.py A.json B.db ... (several, fitted together)

Reads the checked ("ok") records that scripts/probes/model_sample.py measured, recomputes the model's
per-tile terms for each (issue, L1 wavefronts, tensor cycles with the recorded registers, blocks per
SM, K tiles, the L2 and DRAM bytes), and fits

    tile_c = (hypot(T * tensor * W, I * issue / bps_used + L * l1 * W) + R / bps_used) * P[kind, stages, prefetch]
             * (Wg for wgmma kernels)
    time   = max(waves * tiles * tile_c / clock, L2 bytes / 5.5 TB/s, DRAM bytes / 4.3 TB/s) + 3 us
             (+ S x split-K's fitted costs)

where P is the pipeline factor of the kernel's kind (mma.sync, wgmma), depth and loop form, 1 at the
shallowest plain loop of each kind (search.model.PIPELINE_FACTOR; the other terms cannot tell depths
apart: they see them only through the blocks per SM shared memory allows). P is estimated first, from
the contrasts inside families alone (log time = family effect + member effect, least squares: a
family is a schedule but for its depth and loop form, measured at two or more of them); then the
other constants by least squares in log time, P fixed (Nelder-Mead; needs scipy, which nmgen itself
does not). It prints the
constants, then per problem: Spearman's rank correlation, and the measured best among the model's 4
best over the measured best, for the fitted formula, for it with that problem left out of the fit, and
for search.model.predict as it ships and as the tuner ranks (sliced K's reduction added, the device's
DRAM bandwidth, and the register estimate instead of ptxas's count: blocks per SM may differ); then "families": the same for what model-topk 4 measures first (the
best-predicted member of each of the 4 best-predicted families, search.tuner.best_families), fitted and
shipped (1.00: the tuner would have measured the winner before its refinements).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

CLOCK, L2_BW, DRAM_BW, LAUNCH_US = 1.98e9, 5.5e12, 4.3e12, 3.0
# (kind, stages, prefetch) (search.model.pipeline_kind) of the space's tensor-core schedules; the first of each kind is the unit
MEMBERS = [(0, 2, 0), (0, 2, 1), (0, 3, 0), (0, 3, 1), (0, 4, 0), (0, 4, 1), (1, 3, 0), (1, 4, 0), (1, 6, 0)]
UNIT = (0, 6)


def member_key(s) -> tuple[int, int, int]:
    """(kind, stages, prefetch) of schedule `s`: its PIPELINE_FACTOR key (search.model.pipeline_kind)."""
    from nmgen.search import model
    return model.pipeline_kind(s), s.stages, s.prefetch


def terms(records) -> dict:
    """Arrays of the model's terms, one entry per record."""
    from nmgen import Problem, Schedule
    from nmgen.checking import random_inputs, stored_weights
    from nmgen.ir.build import copy_plans
    from nmgen.ir.device import for_arch
    from nmgen.ir.layout import ComputeLayout
    from nmgen.ir.operands import colours_rows, geometry
    from nmgen.ir.problem import ceil_div
    from nmgen.ir.validate import shared_bytes
    from nmgen.search import model
    from nmgen.search.space import rows_lengths
    dev = for_arch("sm_90")
    lists, out = {}, []
    for r in records:
        p, s = Problem.from_key(r["problem_key"]), Schedule.from_json(r["schedule"])
        if r["problem_key"] not in lists:     # the "rows" lists' lengths for random weights, as the tuner's
            _, B = random_inputs(p, np.random.default_rng(0))
            lists[r["problem_key"]] = rows_lengths(p, stored_weights(p, B))
        a_rows = lists[r["problem_key"]](s)
        g, lay = geometry(p, s, a_rows), ComputeLayout.for_problem(p, s)
        a_plan, b_plan, i_plan = copy_plans(p, s, g)
        conflicts = model.GATHER_CONFLICTS["rows" if colours_rows(p, s) else "window"]
        issue, l1, tensor = model._mma_costs(s, g, lay, s.a_smem, dev, conflicts)
        issue += 1.5 * (a_plan.iterations + b_plan.iterations + i_plan.iterations) + 30
        l1 += (4 if a_plan.transpose else a_plan.width // 4) * a_plan.iterations + 4 * b_plan.iterations + i_plan.iterations
        bps = model.blocks_per_sm(s, dev, r["registers"], shared_bytes(p, s, a_rows))
        if s.tail_tiles:     # the fit's terms describe a grid of equal blocks: a tail split's are not
            raise SystemExit(f"fit_mma_model.py: {s.short()} ({r['problem_key']}) has a tail split, which this fit "
                             f"does not describe; leave tail schedules out of its samples")
        blocks = g.tiles_m * g.tiles_n * s.split_k
        pred = model.predict(p, s, dev, r["registers"], a_rows)
        # as the tuner and the untuned choice rank it: with the register estimate, before ptxas has run
        ranked = model.predict(p, s, dev, None, a_rows)
        key = member_key(s)
        if key not in MEMBERS:
            raise SystemExit(f"fit_mma_model.py: {s.short()} ({r['problem_key']}) is a (wgmma, stages, prefetch) "
                             f"= {key} outside MEMBERS; add it there to fit it")
        out.append(dict(member=MEMBERS.index(key), wgmma=s.wgmma, shipped=ranked.time_us, issue=issue, l1=l1, tensor=tensor, W=s.threads // 32, per_sm=min(bps, ceil_div(blocks, dev.sms)),
                        waves=ceil_div(blocks, dev.sms), tiles=ceil_div(g.T, s.split_k), split=s.split_k,
                        MN=p.M * p.N, l2=pred.l2_bytes, dram=pred.dram_bytes, us=r["median_us"]))
    return {k: np.array([o[k] for o in out], float) for k in out[0]}   # shipped: model.predict as the tuner ranks


def pipeline_factors(records) -> tuple[np.ndarray, list[int]]:
    """(factor of each MEMBERS entry, families measured at it): log time = family + member effects,
    by alternating means over the families measured at two or more members; each kind's first
    member is 1."""
    from nmgen import Schedule
    from nmgen.search.space import family
    fams: dict[tuple, dict] = {}
    for r in records:
        s = Schedule.from_json(r["schedule"])
        fams.setdefault((r["problem_key"], family(s)), {})[MEMBERS.index(member_key(s))] = \
            np.log(r["median_us"])
    fams = {k: v for k, v in fams.items() if len(v) > 1}
    b = np.zeros(len(MEMBERS))
    for _ in range(200):
        a = {k: np.mean([t - b[m] for m, t in v.items()]) for k, v in fams.items()}
        for m in range(len(MEMBERS)):
            res = [v[m] - a[k] for k, v in fams.items() if m in v]
            b[m] = np.mean(res) if res else 0.0
        for lo, hi in zip(UNIT, UNIT[1:] + (len(MEMBERS),)):
            b[lo:hi] -= b[lo]
    return np.exp(b), [sum(m in v for v in fams.values()) for m in range(len(MEMBERS))]


def predict(x, F):
    I, L, T, R, S, Wg = np.exp(x[:6])
    tile = np.hypot(T * F["tensor"] * F["W"], I * F["issue"] / F["per_sm"] + L * F["l1"] * F["W"]) + R / F["per_sm"]
    tile = tile * F["pipeline"] * np.where(F["wgmma"] > 0, Wg, 1.0)
    sm = F["waves"] * F["tiles"] * tile / CLOCK * 1e6
    t = np.maximum(np.maximum(sm, F["l2"] / L2_BW * 1e6), F["dram"] / DRAM_BW * 1e6) + LAUNCH_US
    return t + np.where(F["split"] > 1, S * (2.3 + 7.53 * F["MN"] * F["split"] * 1e-6), 0.0)


def fit(F, x0):
    from scipy.optimize import minimize
    loss = lambda x: np.mean((np.log(predict(x, F)) - np.log(F["us"])) ** 2)    # noqa: E731
    return minimize(loss, x0, method="Nelder-Mead", options=dict(maxiter=20000, maxfev=20000, xatol=1e-6, fatol=1e-9))


def top_families(us, predicted, schedules, k: int = 4) -> float:
    """What the tuner's model-topk k measures first (search.tuner.best_families): the best-predicted
    member of each of the k best-predicted families; its best over the measured best."""
    from nmgen.search.tuner import best_families
    first = [i for _, i in best_families([(schedules[i], i) for i in np.argsort(predicted)], k)]
    return us[first].min() / us.min()


def ranks(a):
    return np.argsort(np.argsort(a))


def load(path: str) -> list[dict]:
    """The records of a samples JSON ({"records": [...]}) or of a tuning database (.db)."""
    if path.endswith(".db"):
        import sqlite3
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("select * from results")]
    if path.endswith(".gz"):         # the committed samples are gzipped (the device tool carries 64 MiB)
        import gzip
        with gzip.open(path, "rt") as f:
            return json.load(f)["records"]
    return json.load(open(path))["records"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", nargs="+", help="samples JSON ({\"records\": [...]}) or model_sample.py's database (.db)")
    args = ap.parse_args()
    from nmgen import Schedule
    records = []
    for path in args.samples:
        try:
            records += [r for r in load(path) if r["status"] == "ok"]
        except (OSError, ValueError, KeyError) as e:
            ap.error(f"cannot read records from {path}: {e}")
    F, keys = terms(records), np.array([r["problem_key"] for r in records])
    P, counts = pipeline_factors(records)
    F["pipeline"] = P[F["member"].astype(int)]
    r = fit(F, np.log([4.0, 0.5, 1.5, 700.0, 1.0, 1.0]))
    names = ("MMA_ISSUE_LATENCY", "MMA_L1_WEIGHT", "MMA_TENSOR_WEIGHT", "MMA_RAMP_CYCLES", "MMA_SPLIT_FACTOR", "WGMMA_FACTOR (Wg)")
    print(f"{len(records)} records, {len(set(keys))} problems; mean squared log error {r.fun:.4f}")
    print("  " + ", ".join(f"{n} = {v:.3g}" for n, v in zip(names, np.exp(r.x))))
    print("  PIPELINE_FACTOR (wgmma, stages, prefetch): factor [families]: "
          + ", ".join(f"{m}: {f:.3f} [{c}]" for m, f, c in zip(MEMBERS, P, counts)))
    t = predict(r.x, F)
    schedules = np.array([Schedule.from_json(r["schedule"]) for r in records], dtype=object)
    print(f"{'problem':40s} {'n':>3s} {'rho':>5s} {'top-4 / best':>12s} {'left out':>9s} {'shipped':>8s} {'families':>8s} {'shipped':>8s}")
    for key in sorted(set(keys)):
        m = keys == key
        us, pr = F["us"][m], t[m]
        rest = {k: v[~m] for k, v in F.items()}
        lo = predict(fit(rest, r.x).x, {k: v[m] for k, v in F.items()})
        print(f"{key:40s} {m.sum():3d} {np.corrcoef(ranks(us), ranks(pr))[0, 1]:5.2f} "
              f"{us[np.argsort(pr)[:4]].min() / us.min():12.2f} {us[np.argsort(lo)[:4]].min() / us.min():9.2f} "
              f"{us[np.argsort(F['shipped'][m])[:4]].min() / us.min():8.2f} {top_families(us, pr, schedules[m]):8.2f} {top_families(us, F['shipped'][m], schedules[m]):8.2f}")


if __name__ == "__main__":
    main()
