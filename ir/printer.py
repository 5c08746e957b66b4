"""Readable text for a kernel IR: what `nmgen ptx --ir` and error reports show."""
from __future__ import annotations

from .nodes import (Barrier, Commit, Copy, For, If, Kernel, Let, LoadFragments, LoadList, ReduceSlices, SparseMMA,
                    SplitKReduce, StoreAcc, Wait, ZeroAcc)


def format_kernel(k: Kernel) -> str:
    lay = k.layout
    out = [f"kernel {k.name}  grid=({k.grid[0]}, {k.grid[1]}, {k.grid[2]})  block={k.threads}  "
           f"smem={k.smem_bytes} B" + ("  [C zeroed first: split-K]" if k.zero_output else "")]
    for p in k.params:
        out.append(f"  param {p.name}: {p.dtype}[{p.rows}, {p.cols}]{'' if p.readonly else ' (written)'}"
                   + (f"  # {p.doc}" if p.doc else ""))
    for b in k.shared:
        out.append(f"  shared {b.name}: {b.dtype}[{b.stages}, {b.rows}, {b.pitch}] @ {b.offset}"
                   + (f"  # {b.doc}" if b.doc else ""))
    if lay.instr.is_mma:
        tiles = (f"{lay.acc_count} f32 per thread; warp {lay.warp_m}x{lay.warp_n} = {lay.tiles_m}x{lay.tiles_n} "
                 f"{lay.instr.ptx} tiles")
    else:
        tiles = (f"f32[{lay.thread_m}, {lay.thread_n}] per thread; warp {lay.warp_m}x{lay.warp_n}, "
                 f"lanes {lay.lanes_m}x{lay.lanes_n}")
    out.append(f"  regs acc: {tiles}, index unit {lay.unit} col(s), {len(lay.groups)} look-up(s) per kept row, "
               f"{k.idx_bits}-bit indices" + (" (byte offsets)" if k.idx_bits == 32 else ""))
    _body(k.body, out, 1, lay)
    return "\n".join(out)


def _rows_note(o) -> str:
    return ((f" of {o.share} per slice of warps" if o.slices > 1 else f" of {o.kept}")
            + (f"  (indices: byte offsets, {o.offsets} per A row)" if o.offsets else ""))


def _step_name(o) -> str:
    return "kept row" if o.step == 1 else f"step (of {o.step} kept rows)"


def _body(body, out, depth, lay):
    pad = "  " * depth
    for st in body:
        if isinstance(st, Let):
            out.append(f"{pad}let {st.var} = {st.value}")
        elif isinstance(st, For):
            out.append(f"{pad}for {st.var} in [{st.start}, {st.stop}):")
            _body(st.body, out, depth + 1, lay)
        elif isinstance(st, If):
            out.append(f"{pad}if {st.cond}:")
            _body(st.body, out, depth + 1, lay)
        elif isinstance(st, Copy):
            p = st.plan
            cols = f"columns in registers {st.row_list}" if st.row_list else f"{st.col0} : +{p.cols}"
            bounds = "".join(f" zero-fill {n}>={b}" for n, b in (("row", st.bound_rows), ("col", st.bound_cols))
                             if b is not None)
            out.append(f"{pad}cp.async {st.dst}[{st.stage}] <- {st.src}[{st.row0} : +{p.rows}, {cols}]"
                       f"{' transposed' if p.transpose else ''} {p.width}B x{p.iterations}/thread{bounds}")
        elif isinstance(st, LoadList):
            out.append(f"{pad}{st.dst} <- {st.src}[{st.offset} + column of each copy slot]  "
                       f"({st.plan.iterations} registers/thread, prefetched)")
        elif isinstance(st, Commit):
            out.append(f"{pad}cp.async.commit_group")
        elif isinstance(st, Wait):
            out.append(f"{pad}cp.async.wait_group {st.pending}")
        elif isinstance(st, Barrier):
            out.append(f"{pad}barrier")
        elif isinstance(st, ZeroAcc):
            out.append(f"{pad}acc = 0")
        elif isinstance(st, LoadFragments):
            out.append(f"{pad}{st.dst} <- fragments of {_step_name(st.ops)} {st.step} of {st.ops.a}/{st.ops.b}[{st.stage}]"
                       + _rows_note(st.ops))
        elif isinstance(st, SparseMMA):
            o, rows = st.ops, st.steps
            name = _step_name(o)
            span = f"{name}s {rows.start}..{rows.stop - 1}" if len(rows) > 1 else f"{name} {rows.start}"
            out.append(f"{pad}acc += {o.a}[{st.stage}][{o.idx}[{st.stage}][i, unit]] * {o.b}[{st.stage}][i]  for {span}"
                       + (f" (row {rows.start} from {st.head})" if st.head else "") + _rows_note(o))
        elif isinstance(st, ReduceSlices):
            out.append(f"{pad}slices 1.. -> {st.buf}; barrier; slice 0: acc += {st.buf}[each]")
        elif isinstance(st, SplitKReduce):
            out.append(f"{pad}fence; barrier; count the block in {st.counts}[{st.tile}]; the block that counts "
                       f"{st.splits}: {st.dst}[{st.row0} : +{st.rows}, {st.col0} : +{st.cols}] = "
                       f"round({st.work}[same]); {st.work}[same] = 0; {st.counts}[{st.tile}] = 0")
        elif isinstance(st, StoreAcc):
            out.append(f"{pad}{'atomic-add' if st.atomic else 'store'} acc -> {st.dst}[{st.row0} : +{lay.block_m}, "
                       f"{st.col0} : +{lay.block_n}]"
                       + ("  (slice 0)" if lay.warps_k > 1 else ""))
        else:
            out.append(f"{pad}{st!r}")
