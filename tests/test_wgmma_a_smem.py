"""wgmma with A read from shared memory (Schedule.wgmma_a_smem): the 128-byte swizzled A tile the
copies write and the descriptor reads, the pipeline that keeps one group in flight, the validity
rules, and the PTX through ptxas; on the CPU, against float64."""
import dataclasses

import numpy as np
import pytest

from nmgen import Pattern, Problem, Schedule
from nmgen.checking import kernel_a, random_inputs, run_interpreter
from nmgen.ir import build, for_arch, interpret, validate
from nmgen.ir.nodes import Shared
from nmgen.ir.operands import prepare
from nmgen.ir.validate import problems
from nmgen.reference import compare

H100 = for_arch("sm_90")
SS = dict(thread_m=0, thread_n=0, a_pad=0, a_load="gather", wgmma=1, wgmma_a_smem=1)


def check(problem, schedule, rng):
    A, B = random_inputs(problem, rng)
    validate(problem, schedule, H100)
    v = compare(run_interpreter(problem, schedule, A, B), A, B, compute="mma", out_dtype=problem.c_dtype)
    assert v.ok, v.summary()


CASES = [  # (M, N, K, n, m, V, dtype, c_dtype, schedule fields)
    (64, 64, 128, 16, 32, 32, "bf16", None, dict(block_m=64, block_n=64, warp_m=64, warp_n=64, k_windows=1, stages=3)),
    # M = 70: A's leading dimension takes 4-byte copies, two a 16-byte chunk of the swizzled tile
    (70, 100, 256, 4, 32, 16, "bf16", None, dict(block_m=64, block_n=64, warp_m=64, warp_n=64, k_windows=4, stages=3)),
    (130, 96, 640, 12, 32, 32, "f16", "f32", dict(block_m=128, block_n=64, warp_m=64, warp_n=64, k_windows=2, stages=4)),
    # 256 columns one unit (one m64n256k16 a step), two 64-row atoms a slab, a last K tile short
    (100, 300, 448, 8, 32, 256, "bf16", None, dict(block_m=128, block_n=256, warp_m=64, warp_n=256, k_windows=2,
                                                   stages=5)),
    (100, 96, 288, 12, 32, 32, "f16", "bf16", dict(block_m=128, block_n=64, warp_m=128, warp_n=32, k_windows=4,
                                                   split_k=2, stages=3)),
    (200, 136, 640, 8, 32, 32, "bf16", "bf16", dict(block_m=64, block_n=128, warp_m=64, warp_n=128, k_windows=2,
                                                    stages=4, tail_tiles=3, tail_split=3)),
    (17, 100, 320, 8, 32, 32, "bf16", None, dict(block_m=256, block_n=32, warp_m=64, warp_n=32, k_windows=2,
                                                 stages=6)),
]


@pytest.mark.parametrize("M,N,K,n,m,V,dtype,c_dtype,fields", CASES)
def test_interpreter_matches_float64(rng, M, N, K, n, m, V, dtype, c_dtype, fields):
    check(Problem(M, N, K, Pattern(n, m, V), dtype, "col", c_dtype), Schedule(**SS, **fields), rng)


def test_the_swizzled_layout_is_a_bijection_without_bank_conflicts():
    """Every element of a stage once; 8 consecutive 16-byte chunks of a row (what 8 threads of a
    copy store in one shared-memory phase) in 8 distinct bank groups; and the rule wgmma reads by
    (the interpreter's decode, written from the PTX ISA) finds each element where the copies put it."""
    buf = Shared("As", "bf16", 1, 32, 128, 0, swizzled=True)
    r, c = np.meshgrid(np.arange(32), np.arange(128), indexing="ij")
    at = buf.element(r, c)
    assert sorted(at.ravel().tolist()) == list(range(32 * 128))
    for row in range(32):
        for first in range(0, 128, 64):
            groups = {int(buf.element(row, first + 8 * q)) * 2 // 16 % 8 for q in range(8)}
            assert len(groups) == 8
    byte = 2 * (r // 8 * 8 * 128) + (c % 8) * 2 + (c // 8 % 8) * 16 + (c // 64) * 1024 + (r % 8) * 128
    assert (at * 2 == byte ^ (((byte >> 7) & 7) << 4)).all()


def test_the_a_descriptor_convention_is_the_isas(rng, monkeypatch):
    """LBO between 64-row atoms, SBO between slabs of 8 K rows (PTX ISA, M-major, 128-byte swizzle):
    the interpreter decodes descriptors by that rule and computes a wrong C with the two swapped
    (as the H200 did, 2026-12-02: benchmarks/2026-12-02-h200-wgmma-a-smem)."""
    import nmgen.ir.operands as operands
    p = Problem(128, 64, 128, Pattern(16, 32, 32), "bf16", "col")    # slabs of 2 KB: SBO != LBO
    s = Schedule(**SS, block_m=128, block_n=64, warp_m=64, warp_n=64, k_windows=1, stages=3)
    A, B = random_inputs(p, rng)
    assert compare(run_interpreter(p, s, A, B), A, B, compute="mma", out_dtype="bf16")
    monkeypatch.setattr(operands, "WGMMA_A_SWAP", True)
    assert not compare(run_interpreter(p, s, A, B), A, B, compute="mma", out_dtype="bf16")


def _without(body, kind):
    """`body` with every statement of type `kind` taken out, loops and branches included."""
    out = []
    for st in body:
        if isinstance(st, kind):
            continue
        if hasattr(st, "body"):
            st = dataclasses.replace(st, body=_without(st.body, kind))
        out.append(st)
    return tuple(out)


def _arrays(p, s, rng):
    A, B = random_inputs(p, rng)
    ops = prepare(p, s, B.values, B.indices)
    return {"A": kernel_a(p, A), "Bv": ops.bv, "Arows": ops.arows}


def test_a_group_left_in_flight_fails_on_the_cpu(rng):
    """The pipeline keeps one group in flight (MmaWait 1); the wait for the last one before the
    epilogue, and the refills' distance (S-2 tiles ahead, not S-1), are what keep it correct."""
    from nmgen.ir import HazardError, nodes
    p = Problem(64, 64, 256, Pattern(16, 32, 32), "bf16", "col")
    s = Schedule(**SS, block_m=64, block_n=64, warp_m=64, warp_n=64, k_windows=1, stages=3)
    k = build(p, s)
    arrays = _arrays(p, s, rng)
    # no wait after the loop: the epilogue reads accumulators a group still writes
    body = tuple(st for st in k.body if not isinstance(st, nodes.MmaWait))
    with pytest.raises(HazardError, match="in flight"):
        interpret(dataclasses.replace(k, body=body), arrays)
    # no wait in the loop: a refill lands in a stage an unretired group still reads
    with pytest.raises(HazardError, match="still reads it|in flight"):
        interpret(dataclasses.replace(k, body=_without(k.body, nodes.MmaWait)), arrays)


@pytest.mark.parametrize("fields,words", [
    (dict(wgmma=0, thread_m=0, thread_n=0, wgmma_a_smem=1), "give wgmma=1"),
    (dict(SS, a_load="rows"), "a_load='rows' (needs 'gather')"),
    (dict(SS, a_pad=8), "a_pad=0"),
    (dict(SS, stages=2), "stages >= 3"),
    (dict(SS, wgmma_a_smem=2), "must be 0"),
])
def test_what_keeps_a_schedule_off_it_is_said(fields, words):
    p = Problem(128, 128, 256, Pattern(8, 32, 32), "bf16", "col")
    s = Schedule(**{**dict(block_m=64, block_n=64, warp_m=64, warp_n=64, k_windows=2, stages=3), **fields})
    assert words in " ".join(problems(p, s, H100))


def test_row_major_a_is_refused():
    p = Problem(128, 128, 256, Pattern(8, 32, 32), "bf16", "row")
    s = Schedule(**SS, block_m=64, block_n=64, warp_m=64, warp_n=64, k_windows=2, stages=3)
    assert "a_major='row' (needs 'col')" in " ".join(problems(p, s, H100))


def test_the_field_keeps_recorded_schedules_as_they_were():
    """Off by default and left out of the JSON then: a recorded schedule keeps its hash."""
    s = Schedule(thread_m=0, thread_n=0, wgmma=1)
    assert "wgmma_a_smem" not in s.to_json()
    on = s.replace(wgmma_a_smem=1)
    assert '"wgmma_a_smem":1' in on.to_json() and on.hash() != s.hash()
    assert Schedule.from_json(on.to_json()) == on and "a-smem" in on.short()


def test_schedules_assemble_for_sm_90a_without_spills_or_serialized_wgmma():
    from nmgen.codegen import arch_of, assemble, generate_ptx
    for shape, pattern, fields in (((4096, 4096, 4096), (24, 32, 256), dict(block_m=128, block_n=256, warp_m=64,
                                                                           warp_n=256, k_windows=2, stages=4)),
                                   ((4095, 4096, 4096), (8, 32, 32), dict(block_m=128, block_n=128, warp_m=64,
                                                                         warp_n=128, k_windows=2, stages=5)),
                                   ((4096, 4096, 4096), (4, 32, 32), dict(block_m=256, block_n=32, warp_m=64,
                                                                         warp_n=32, k_windows=8, stages=4))):
        p = Problem(*shape, Pattern(*pattern), "bf16", "col")
        s = Schedule(**SS, **fields)
        validate(p, s, H100)
        k = build(p, s)
        ptx = generate_ptx(k, "sm_90")
        assert ".align 1024" in ptx and ", p, 1, 1, 1, 0;" in ptx     # swizzle-aligned; imm-trans-a 1
        r = assemble(ptx, arch_of(k, "sm_90"))
        assert r.spill_stores == 0 and r.stack_frame == 0 and "serialized" not in r.log, (p, s.short(), r.log)
