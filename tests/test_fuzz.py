"""The fuzzer's CPU tier: random problems and schedules through the interpreter (a fresh seed each
run, printed), and the fuzzer's own mechanics."""
import json
import shlex
import subprocess
import sys

import numpy as np

from nmgen import fuzz
from nmgen.ir.device import for_arch
from nmgen.ir.validate import problems

H100 = for_arch("sm_90")


def test_interpreted_fuzz_has_no_failures(tmp_path):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"fuzz seed {seed}")
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, "-m", "nmgen.cli", "fuzz", "--interpret", "--cases", "150", "--seed", str(seed),
                        "--quiet", "--json", str(out)], capture_output=True, text=True)
    s = json.loads(out.read_text())
    assert r.returncode == 0 and s["failures"] == 0, r.stdout + r.stderr
    assert s["cases"] >= 140
    kinds = s["counts"]
    for key, values in (("split_k", "True"), ("sliced_k", "True"), ("a_load", "rows"), ("prefetch", "True"),
                        ("refill_row", "True"), ("a_major", "col"), ("empty_batch", "True")):
        assert kinds[key].get(values, 0) > 0, (key, kinds)


def test_drawn_cases_are_valid_and_varied():
    rng = np.random.default_rng(0)
    cases = [fuzz.draw_case(rng, H100, fuzz.GPU_LIMITS, ("numpy", "torch")) for _ in range(300)]
    for c in cases:
        assert c.M * c.N * c.K <= fuzz.GPU_LIMITS.macs and c.K % c.pattern.m == 0
        if c.schedule is not None:
            assert problems(c.problem, c.schedule, H100) == []
    assert any(c.M == 0 for c in cases) and any(c.M == 1 for c in cases)
    assert any(c.pattern.m == 64 for c in cases) and any(c.pattern.vector == 128 for c in cases)
    assert any(c.K // c.pattern.m % 2 == 1 and c.K // c.pattern.m > 1 for c in cases)
    assert any(c.N % 8 for c in cases) and {c.array for c in cases} == {"numpy", "torch"}
    assert any(c.schedule is None for c in cases)
    assert any(c.schedule and c.schedule.split_k > 1 and fuzz_uneven(c) for c in cases)


def fuzz_uneven(c):
    from nmgen.ir.operands import geometry
    return geometry(c.problem, c.schedule).T % c.schedule.split_k != 0


def test_a_failure_is_reported_with_a_command_that_replays_it(monkeypatch):
    """A deliberately broken interpreter result fails, and its command names the case's schedule and seed."""
    import nmgen.checking as checking
    real = checking.run_interpreter
    monkeypatch.setattr(checking, "run_interpreter", lambda *a: real(*a) * np.float32(1.001))
    seen = []
    outs = fuzz.fuzz(5, 3, H100, interpret=True, progress=False, on_failure=seen.append)
    failed = [o for o in outs if not o.ok and o.case.M]
    assert failed and len(seen) == len([o for o in outs if not o.ok])
    line = failed[0].case.command(interpret=True)
    args = shlex.split(line)
    assert args[:2] == ["nmgen", "check"] and "--seed" in args and "--interpret" in args
    assert str(failed[0].case.seed) in args
