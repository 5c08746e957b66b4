"""A tail-split kernel through the launchers, without a GPU: Kernel.launch on the fake GPU and
PreparedSpMM on emulated driver calls. The workspace holds the tail's tiles only, its counts after
them (Kernel.work_words): three launches in a row give the right product and leave it zeroed, and
nothing is written past it (a guard area). Placing the counts at 4 * M * N, as split-K's full
workspace does, fails here."""
import types

import numpy as np
import pytest

import nmgen
import fake_gpu as fake
from nmgen.checking import kernel_a, random_inputs, run_gpu, stored_weights, verdict
from nmgen.ir.dtypes import DTYPES

SMALL = dict(block_m=32, block_n=64, warp_m=32, warp_n=32, thread_m=0, thread_n=0, a_pad=8)
WGMMA = dict(block_m=64, block_n=64, warp_m=64, warp_n=64, thread_m=0, thread_n=0, a_pad=8, wgmma=1)
CASES = {   # (problem, schedule fields): 16-bit and fp32 C, sliced K, wgmma; M and N off the tile
    "bf16": (nmgen.Problem(100, 330, 512, nmgen.Pattern(8, 32, 32), "bf16", "col"),
             dict(SMALL, k_windows=2, tail_tiles=5, tail_split=3)),
    "bf16-to-f32": (nmgen.Problem(100, 330, 512, nmgen.Pattern(8, 32, 32), "bf16", "col", c_dtype="f32"),
                    dict(SMALL, k_windows=2, tail_tiles=18, tail_split=4)),
    "sliced-k": (nmgen.Problem(70, 136, 512, nmgen.Pattern(4, 32, 8), "bf16", "col"),
                 dict(SMALL, warp_n=64, k_windows=8, warps_k=2, tail_tiles=3, tail_split=2)),
    "wgmma": (nmgen.Problem(100, 200, 384, nmgen.Pattern(8, 32, 32), "f16", "col"),
              dict(WGMMA, k_windows=2, tail_tiles=4, tail_split=3)),
}


@pytest.fixture(autouse=True)
def tmp_db(tmp_path, monkeypatch):
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))


@pytest.mark.parametrize("case", CASES)
def test_kernel_launch_places_the_counts_after_the_tails_sums(monkeypatch, case):
    gpu = fake.install(monkeypatch)
    p, fields = CASES[case]
    rng = np.random.default_rng(1)
    A, B = random_inputs(p, rng)
    B = stored_weights(p, B)
    k = nmgen.compile(p, schedule=nmgen.Schedule(**fields), B=B)
    assert k.ir.work_words == fields["tail_tiles"] * fields["block_m"] * fields["block_n"]
    for call in range(3):
        v = verdict(p, run_gpu(k, A, B), A, B, rng)
        assert v, (call, v.summary())
    ws = next(iter(k._workspaces.buffers.values()))
    assert not gpu.bytes(ws.ptr, 4 * k.ir.workspace_words).any()


@pytest.mark.parametrize("case", CASES)
def test_prepared_spmm_keeps_a_callers_workspace_zeroed_and_within_bounds(monkeypatch, case):
    fake.install(monkeypatch)
    import fake_torch_gpu as ftg
    import nmgen.api as api
    from nmgen.ir.operands import prepare
    from nmgen.prepared import PreparedSpMM
    from nmgen.runtime import launch
    emu = ftg.Emulator()
    loaded = {}

    def kernel_loaded(self, device=0):
        h = loaded.get(id(self))
        if h is None:
            h = loaded[id(self)] = emu.register(ftg.Kernel(self.ir))
        return types.SimpleNamespace(function=h, smem=self.ir.smem_bytes)
    monkeypatch.setattr(api.Kernel, "loaded", kernel_loaded)
    monkeypatch.setattr(launch, "_drv", ftg.driver_library(emu))
    monkeypatch.setattr(launch, "_STREAMS", {})
    p, fields = CASES[case]
    rng = np.random.default_rng(2)
    A, B = random_inputs(p, rng)
    Bs = stored_weights(p, B)
    s = nmgen.Schedule(**fields)
    k = nmgen.compile(p, schedule=s, B=Bs)
    ops = prepare(p, s, Bs.values, Bs.indices)
    keep = {name: np.ascontiguousarray(x) for name, x in (("Bv", ops.bv), ("Bi", ops.bi), ("Arows", ops.arows))
            if x is not None}
    prep = PreparedSpMM(k, {name: x.ctypes.data for name, x in keep.items()})
    a = kernel_a(p, A)
    words = prep.workspace_bytes // 4
    ws = np.zeros(words + 64, np.uint32)
    ws[words:] = 0xDEADBEEF                     # a guard after the workspace
    for call in range(3):
        C = np.full((p.M, p.N), np.nan, DTYPES[p.c_dtype].storage)
        prep.launch(a.ctypes.data, C.ctypes.data, 0, workspace=ws.ctypes.data, workspace_zeroed=True)
        v = verdict(p, C, A, B, rng)
        assert v, (call, v.summary())
        assert not ws[:words].any() and (ws[words:] == 0xDEADBEEF).all()
