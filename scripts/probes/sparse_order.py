"""Development study: can general n:m weights run on the 2:4 sparse tensor cores after a reordering of K?

Hopper's wgmma.mma_async.sp (and mma.sp since sm_80) multiplies a first operand that keeps at most 2 of
every 4 consecutive K elements of each row, chosen by 2-bit metadata per row. nmgen's weights are n:m
with vector length V: in every window of m consecutive K rows, each unit of V columns keeps the same n
rows. Computed as C^T = W^T A^T, W^T is that first operand (one row per column of C), and A^T is read
densely from a shared tile that the block fills by copying A's K rows in any order it likes (A
column-major: one contiguous row of A a slot, as nmgen's "rows" copies already do). So a block of u
units may reorder its window's rows into *slots* (one order for all its columns) such that every 4
consecutive slots hold at most 2 kept rows of every unit; the metadata then points each column at
its kept rows. A slot may also repeat a row (one copy serving some units, the other the rest) or be
empty, at the price of more slots: the tensor cores take 32 slots in the time of 16 dense rows, so a
window costs slots / (2 m) of the dense product's time.

This script measures, on random weights, how many slots a window needs for u units (the block's
columns / V), with a local search (`order`): the fraction of windows that fit the lower bound and the
mean cost per window relative to dense. It needs only numpy and runs on the CPU:

    python scripts/probes/sparse_order.py [WINDOWS]      # default 300 windows per (pattern, u)

Lower bound on slots: every row some unit keeps appears once, and a unit with n kept rows needs
ceil(n / 2) groups of 4.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np

GROUP, PER_GROUP = 4, 2        # 2:4 - the sparse tensor cores' structure for 16-bit operands


def lower_bound(keep: np.ndarray) -> int:
    """Fewest slots a window with kept-row masks `keep` (u x m, bool) can need."""
    union = int(keep.any(0).sum())
    groups = max(math.ceil(union / GROUP), math.ceil(int(keep.sum(1).max()) / PER_GROUP))
    return GROUP * groups


def order(keep: np.ndarray, rng, sweeps: int = 3000, restarts: int = 6):
    """Slots for one window: (rows, serves), where rows[s] is the window row slot s copies (-1: an
    empty slot) and serves[s] the bool mask (u,) of the units that slot carries, such that every
    unit's kept rows are each served by exactly one slot and every group of 4 slots carries at most 2
    of any unit's. Starts at the lower bound; when a local search of random swaps fails, splits the
    row of the worst group that most units share into two slots (the units divided between them)
    and tries again with 4 more slots where needed."""
    u, m = keep.shape
    items = [keep[:, r].copy() for r in range(m) if keep[:, r].any()]    # (u,) masks, one per slot used
    rows = [r for r in range(m) if keep[:, r].any()]
    slots = max(lower_bound(keep), GROUP * math.ceil(len(items) / GROUP))
    while True:
        while len(items) < slots:
            items.append(np.zeros(u, bool))
            rows.append(-1)
        sig = np.stack(items).astype(np.int32)          # slots x u
        found, perm = _search(sig, rng, sweeps, restarts)
        if found:
            return np.asarray(rows)[perm], sig[perm].astype(bool)
        # split the busiest row of an overloaded group: the units of its signature go half to a new slot
        groups = perm.reshape(-1, GROUP)
        over = np.maximum(sig[groups].sum(1) - PER_GROUP, 0).sum(1)
        g = int(np.argmax(over))
        s = max(groups[g], key=lambda i: sig[i].sum())
        units = np.flatnonzero(sig[s])
        if len(units) < 2:          # every slot of the group serves one unit: cannot happen with room to move
            slots += GROUP
            continue
        moved = units[len(units) // 2:]
        items[s] = items[s].copy()
        items[s][moved] = False
        new = np.zeros(u, bool)
        new[moved] = True
        empty = next((i for i, r in enumerate(rows) if r == -1), None)
        if empty is None:
            items.append(new)
            rows.append(rows[s])
            slots = GROUP * math.ceil(len(items) / GROUP)
        else:
            items[empty], rows[empty] = new, rows[s]


def _search(sig: np.ndarray, rng, sweeps: int, restarts: int):
    """Random swaps of slots between groups, accepting those that do not raise the overflow (the sum
    over groups and units of max(0, count - 2)), now and then one that does; (True, order) at 0."""
    n = len(sig)
    g = n // GROUP
    best = None
    for _ in range(restarts):
        perm = rng.permutation(n)
        grp = perm.reshape(g, GROUP)
        cnt = sig[grp].sum(1)                           # groups x u
        cost = int(np.maximum(cnt - PER_GROUP, 0).sum())
        for _ in range(sweeps):
            if cost == 0:
                return True, grp.ravel()
            a, b = rng.integers(g, size=2)
            if a == b:
                continue
            i, j = rng.integers(GROUP, size=2)
            x, y = grp[a, i], grp[b, j]
            na, nb = cnt[a] - sig[x] + sig[y], cnt[b] - sig[y] + sig[x]
            d = int(np.maximum(na - PER_GROUP, 0).sum() + np.maximum(nb - PER_GROUP, 0).sum()
                    - np.maximum(cnt[a] - PER_GROUP, 0).sum() - np.maximum(cnt[b] - PER_GROUP, 0).sum())
            if d <= 0 or rng.random() < 0.02:
                grp[a, i], grp[b, j] = y, x
                cnt[a], cnt[b] = na, nb
                cost += d
        if best is None or cost < best[0]:
            best = (cost, grp.ravel().copy())
    return False, best[1]


def check(keep: np.ndarray, rows: np.ndarray, serves: np.ndarray) -> None:
    """Raises AssertionError unless (rows, serves) is a valid slot order for `keep`."""
    u, m = keep.shape
    assert len(rows) % GROUP == 0
    for x in range(u):
        got = sorted(int(r) for r, s in zip(rows, serves[:, x]) if s)
        assert got == sorted(np.flatnonzero(keep[x]).tolist()), (x, got)
    assert (serves[rows < 0] == 0).all()
    assert serves.reshape(-1, GROUP, u).sum(1).max() <= PER_GROUP


def study(windows: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for n, m in ((16, 32), (12, 32), (8, 32), (4, 32)):
        for u in (1, 2, 4, 8):
            slots, at_bound = [], 0
            for _ in range(windows):
                keep = np.zeros((u, m), bool)
                for x in range(u):
                    keep[x, rng.choice(m, n, replace=False)] = True
                rows, serves = order(keep, rng)
                check(keep, rows, serves)
                slots.append(len(rows))
                at_bound += len(rows) == lower_bound(keep)
            mean = float(np.mean(slots))
            row = {"pattern": f"{n}:{m}", "units": u, "windows": windows, "mean_slots": mean,
                   "max_slots": int(max(slots)), "at_lower_bound": at_bound / windows,
                   "time_vs_dense": mean / (2 * m), "speedup_limit": 2 * m / mean, "n:m limit": m / n}
            out.append(row)
            print(f"{n}:{m} u={u}: slots mean {mean:5.2f} max {max(slots)}, at the bound {at_bound / windows:6.1%}, "
                  f"tensor time {mean / (2 * m):.3f} of dense (limit {2 * m / mean:.2f}x; n:m limit {m / n:.2f}x)",
                  flush=True)
    return out


if __name__ == "__main__":
    rows = study(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    if len(sys.argv) > 2:
        json.dump(rows, open(sys.argv[2], "w"), indent=1)
