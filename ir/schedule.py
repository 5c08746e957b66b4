"""How the work is blocked and pipelined: a frozen, JSON-round-trippable value with a canonical hash.

Blocking is hierarchical. A thread block computes a block_m x block_n tile of C; it is split into
warp tiles (warp_m x warp_n), each warp's 32 lanes into thread tiles (thread_m x thread_n) held in
registers - on the CUDA cores (FFMA, float32). On the tensor cores (bf16, f16, tf32) the warp tile
is a grid of the mma instruction's 16 x 8 tiles, whose fragments fix which lane holds what:
thread_m = thread_n = 0 there ("tiled by the instruction"), and every "kept row" count below is
in instruction steps of k kept rows (16, or 8 for tf32) instead of single rows. Along K the block walks "K tiles" of `k_windows` pattern windows (k_windows * m rows of
A's K dimension, k_windows * n kept rows of B), streamed through a `stages`-deep cp.async pipeline
in shared memory. `split_k` splits the K tiles over gridDim.z and reduces with atomic adds.
`tail_tiles` and `tail_split` split only the grid's last output tiles along K: a grid whose last
wave is short (160 tiles on 132 SMs: the second wave 28 tiles) runs the first tiles whole and the
last `tail_tiles` each in `tail_split` blocks of 1/tail_split of the K tiles (the data-parallel plus
split-K form of stream-K), so the last wave is as many short blocks as the GPU holds; their fp32
sums meet in a workspace of the tail's tiles, the last part of each storing C.
`warps_k` splits each K tile's kept rows among that many warps of the block instead (sliced K): every
warp tile of C is computed by warps_k warps, each over its share of the rows, and the partial sums
are added through shared memory once at the end. It gives a grid too small to fill the GPU more
warps per SM without split-K's zeroing and atomics.

A sits in shared memory transposed, [k][m] ("km": a thread reads its rows of one K row as vectors;
the copy transposes element by element), or as in global memory, [m][k] ("mk": 16-byte copies,
a quarter of the L1 cost per byte, and one scalar read per row and kept row). A is brought in
one of two ways (NM-SpMM's two strategies):
  "window": every K row of the tile's windows is copied and the kernel gathers by index from shared memory;
  "rows":   only the K rows some vector of this block-column keeps are copied (listed offline per
            block-column and K tile), and the indices are renumbered into that compacted list;
  "gather": (tensor cores) each index unit's own kept rows are copied, in order, into a shared A of
            (units x kept rows): the gather happens in the copy, so fragments are read from
            consecutive rows (ldmatrix without bank conflicts) and no index is loaded at all.
With wgmma and "gather" (A column-major), `wgmma_a_smem` has the tensor cores read A from that
shared tile too, through a matrix descriptor (laid out with wgmma's 128-byte swizzle), instead of
from A fragments a warpgroup first loads into registers: with no registers to protect, a K tile's
group stays in flight while the next tile's is issued.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from .errors import ScheduleError

A_LOADS = ("window", "rows", "gather")
# what the lowest value of a field means, for the out-of-range message
_MEANING = {"stages": " (a pipeline holds the tile being multiplied and the next)", "split_k": " (1: no split)",
            "warps_k": " (1: one warp per warp tile)", "raster": " (1: plain order)", "a_pad": " (0: no padding)",
            "tail_split": " (1: no split)", "tail_tiles": " (0: no tail)"}
A_SMEM = ("km", "mk")
OMITTED_AT_DEFAULT = {"tail_tiles": 0, "tail_split": 1, "wgmma_a_smem": 0}


@dataclass(frozen=True)
class Schedule:
    block_m: int = 128
    block_n: int = 128
    warp_m: int = 64
    warp_n: int = 32
    thread_m: int = 8         # 0 with thread_n = 0: the warp tile is tiled by the mma instruction
    thread_n: int = 8
    k_windows: int = 1        # pattern windows per K tile
    stages: int = 3           # shared-memory pipeline depth (cp.async groups in flight + 1)
    split_k: int = 1          # K tiles split over gridDim.z, reduced by atomic add into a zeroed C
    a_load: str = "window"    # "window" | "rows" | "gather" (see module docstring)
    a_smem: str = "km"        # "km" | "mk": shared A layout (see module docstring)
    b_copy_bytes: int = 16    # cp.async width for the B values / index tiles: 4, 8 or 16
    a_pad: int = 4            # floats of padding per shared A row (4 keeps the transposing copy conflict-free)
    raster: int = 8           # block rows walked together before the next block column (L2 reuse); 1 = plain order
    min_blocks: int = 1       # launch-bounds hint: blocks per SM the register allocation must allow (0 = none)
    warps_k: int = 1          # warps sharing each warp tile, each taking 1/warps_k of a K tile's kept rows
    prefetch: int = 0         # 1: a K tile's first fragments load before the previous tile's last FMAs (0: after its barrier)
    refill_row: int = 0       # plain loop: kept rows multiplied after the barrier before the next copies are issued
    wgmma: int = 0            # 1 (sm_90, bf16/f16): warpgroup mma; warp_m x warp_n is then a warpgroup's tile
    tail_tiles: int = 0       # the grid's last output tiles (block order) split along K; 0: none
    tail_split: int = 1       # blocks each tail tile's K tiles are split over (fp32 sums in a workspace)
    wgmma_a_smem: int = 0     # 1 (wgmma, "gather"): A read from shared memory through a descriptor too; a K
                              # tile's group then stays in flight while the next is issued

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("a_load", "a_smem"):
                allowed = A_LOADS if f.name == "a_load" else A_SMEM
                if v not in allowed:
                    raise ScheduleError(f"{f.name}={_as_json(v)} must be one of {', '.join(allowed)}")
            elif not isinstance(v, int) or isinstance(v, bool):
                raise ScheduleError(f"schedule field {f.name}={_as_json(v)} ({_json_type(v)}) must be an integer")
            elif v < (lo := 0 if f.name in ("a_pad", "min_blocks", "prefetch", "refill_row", "thread_m", "thread_n",
                                             "wgmma", "tail_tiles", "wgmma_a_smem") else 2 if f.name == "stages" else 1):
                raise ScheduleError(f"schedule field {f.name}={v} is out of range: it must be at least {lo}"
                                    + _MEANING.get(f.name, ""))

    # ---- derived shape of the thread hierarchy --------------------------------------------------
    @property
    def warps_m(self) -> int: return self.block_m // self.warp_m
    @property
    def warps_n(self) -> int: return self.block_n // self.warp_n
    @property
    def warps(self) -> int: return self.warps_m * self.warps_n * self.warps_k * (4 if self.wgmma else 1)
    @property
    def threads(self) -> int: return 32 * self.warps
    @property
    def mma(self) -> bool:
        """Tiled by a tensor-core instruction (no thread tile)."""
        return self.thread_m == 0 and self.thread_n == 0
    @property
    def lanes_m(self) -> int: return self.warp_m // self.thread_m if self.thread_m else 0
    @property
    def lanes_n(self) -> int: return self.warp_n // self.thread_n if self.thread_n else 0

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields; those added after schedules were first recorded (OMITTED_AT_DEFAULT) only off
        their defaults, so that a recorded schedule keeps its JSON, hash and kernel name."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in OMITTED_AT_DEFAULT or v != OMITTED_AT_DEFAULT[k]}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces. Its hash is the schedule's identity."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ScheduleError(f"unknown schedule field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @staticmethod
    def unique_fields(pairs) -> dict:
        """json's object_pairs_hook: the object's fields, ScheduleError when one is given twice (JSON
        would keep the last one silently)."""
        out = {}
        for k, v in pairs:
            if k in out:
                raise ScheduleError(f"schedule field {k!r} is given twice ({_as_json(out[k])} and {_as_json(v)}); "
                                    f"give it once")
            out[k] = v
        return out

    @staticmethod
    def fields_of_json(text: str) -> dict:
        """The fields a JSON object of schedule fields gives (not checked); ScheduleError if `text`
        is not JSON or not an object."""
        try:
            d = json.loads(text, object_pairs_hook=Schedule.unique_fields)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule is not valid JSON ({e.msg} at column {e.colno}): {text[:80]!r}; give a "
                                f"JSON object of schedule fields, e.g. '{{\"split_k\": 2}}'") from None
        if not isinstance(d, dict):
            raise ScheduleError(f"schedule JSON must be an object of fields, got {type(d).__name__}")
        return d

    @classmethod
    def from_json(cls, text: str) -> "Schedule":
        return cls.from_dict(cls.fields_of_json(text))

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **kw) -> "Schedule":
        return replace(self, **kw)

    def short(self) -> str:
        """One-line summary, e.g. `128x128 w64x32 t8x8 k1 s3 sk1 window`; fields off their defaults
        follow (wk2, mk, pf, rf1, mb2, tail28x4)."""
        tile = ("wgmma" if self.wgmma else "mma") if self.mma else f"t{self.thread_m}x{self.thread_n}"
        return (f"{self.block_m}x{self.block_n} w{self.warp_m}x{self.warp_n} {tile} "
                f"k{self.k_windows} s{self.stages} sk{self.split_k} {self.a_load}"
                + ("" if self.warps_k == 1 else f" wk{self.warps_k}")
                + ("" if self.a_smem == "km" else f" {self.a_smem}")
                + (" pf" if self.prefetch else "")
                + (" a-smem" if self.wgmma_a_smem else "")
                + (f" rf{self.refill_row}" if self.refill_row else "")
                + ("" if self.min_blocks == 1 else f" mb{self.min_blocks}")
                + (f" tail{self.tail_tiles}x{self.tail_split}" if self.tail_tiles else ""))


def _as_json(v) -> str:
    """A field's value as the JSON a user wrote it in (true, null, "3"), else as Python shows it."""
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _json_type(v) -> str:
    """What JSON calls a value's type (a schedule comes from JSON or a Python dict): "string" for
    "3", "boolean" for true, "null"; Python's name for what JSON has no name for."""
    names = {bool: "boolean", type(None): "null", str: "string", float: "number", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)
