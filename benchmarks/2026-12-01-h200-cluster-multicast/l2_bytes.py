"""L2 -> SM bytes per second of a bench's kernels (section 1 of README.md): what each block tile
copies per K tile (A: its "rows" list's expected length, the whole windows, or each unit's gathered
rows; B: the kept values), times tiles and K tiles, over the measured time.

    python l2_bytes.py BENCH.json...   (nmgen bench --json output)
"""
import json
import math
import sys


def l2_bytes(M, N, K, n, m, V, s):
    BM, BN, kw = s["block_m"], s["block_n"], s["k_windows"]
    KR, units = kw * n, BN // V
    if s["a_load"] == "window":
        a_rows = kw * m
    elif s["a_load"] == "rows":         # rows some unit keeps: 1 - P(no unit of the block keeps it)
        a_rows = kw * m * (1 - (1 - n / m) ** units)
    else:                               # gather: each unit's own kept rows
        a_rows = KR * units
    per_tile = 2 * (BM * a_rows + KR * BN)          # 16-bit values
    tiles = math.ceil(M / BM) * math.ceil(N / BN)
    return tiles * math.ceil(K / (kw * m)) * per_tile


for path in sys.argv[1:]:
    d = json.load(open(path))
    for r in d["rows"] if isinstance(d, dict) else d:
        n, m = map(int, r["pattern"].split(":"))
        us = r["ms"] * 1e3
        tb_s = l2_bytes(r["M"], r["N"], r["K"], n, m, r["vector"], r["schedule"]) / us / 1e6
        print(f"{r['M']}x{r['N']}x{r['K']} {r['pattern']:5s} {us:8.1f} us  {tb_s:5.2f} TB/s from L2")
