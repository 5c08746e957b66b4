"""How good the model is, from measured records: the numbers the search is judged by.

  spearman     rank correlation between predicted and measured times (1 = same order)
  topk_gap     how much slower the best of the model's top k (10% of the measured schedules,
               at least one; one per family, as model-topk measures: search.tuner.best_families)
               is than the best of all of them: what `--strategy model-topk` would have lost
               against `exhaustive` on the same measurements, before its refinements
"""
from __future__ import annotations

import numpy as np

from ..ir.schedule import Schedule
from .tuner import best_families


def ranks(x) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):
        same = x == v
        if same.sum() > 1:
            r[same] = r[same].mean()
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def quality(rows: list[dict], fraction: float = 0.1) -> dict:
    """Model quality over the ok records of one problem/device/toolchain (with model_us)."""
    rows = [r for r in rows if r["status"] == "ok" and r.get("model_us") is not None and r.get("median_us")]
    if len(rows) < 3:
        return {"n": len(rows)}
    meas = np.array([r["median_us"] for r in rows])
    pred = np.array([r["model_us"] for r in rows])
    k = max(1, int(round(fraction * len(rows))))
    ranked = [(Schedule.from_json(rows[i]["schedule"]), i) for i in np.argsort(pred, kind="stable")]
    top = np.array([i for _, i in best_families(ranked, k)])      # the first of each family, k families
    best, best_top = meas.min(), meas[top].min()
    return {"n": len(rows), "spearman": spearman(pred, meas), "k": k, "best_us": float(best),
            "topk_best_us": float(best_top), "topk_gap": float(best_top / best - 1.0),
            "best_schedule": rows[int(meas.argmin())]["schedule"],
            "topk_schedule": rows[int(top[meas[top].argmin()])]["schedule"]}
