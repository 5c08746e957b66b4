"""The timing hold kernel (runtime/hold.py) is valid PTX for every architecture nmgen targets: the
driver JIT compiles it on the GPU, ptxas here."""
import pytest

from nmgen.codegen import TARGETS
from nmgen.codegen.ptxas import assemble
from nmgen.runtime import hold


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_hold_kernel_assembles(arch):
    r = assemble(hold.PTX, arch, hold.NAME)
    assert r.spill_stores == 0 and r.stack_frame == 0
    assert "globaltimer" in hold.PTX and f".entry {hold.NAME}(" in hold.PTX
