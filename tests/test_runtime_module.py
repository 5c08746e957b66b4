"""nmgen.runtime.module.load without a GPU: the driver replaced by a recorder."""
import types

import pytest

from nmgen.runtime import module


class FakeDriver:
    """What load calls on cuda.bindings.driver, recorded; every call succeeds."""
    CUresult = types.SimpleNamespace(CUDA_SUCCESS=0)
    CUfunction_attribute = types.SimpleNamespace(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES="max_smem",
                                                 CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT="carveout")

    def __init__(self):
        self.calls = []

    def cuModuleLoadData(self, data):
        self.calls.append(("load", data))
        return 0, f"module{len(self.calls)}"

    def cuModuleGetFunction(self, mod, name):
        self.calls.append(("function", mod, name))
        return 0, (mod, name)

    def cuFuncSetAttribute(self, fn, attr, value):
        self.calls.append(("attribute", fn, attr, value))
        return (0,)


@pytest.fixture
def fake_driver(monkeypatch):
    drv = FakeDriver()
    monkeypatch.setattr(module, "driver", lambda: drv)
    monkeypatch.setattr(module, "check", lambda result, what: result[1] if len(result) > 1 else None)
    monkeypatch.setattr(module, "use_device", lambda device: None)
    monkeypatch.setattr(module, "_cache", {})
    return drv


def test_one_image_with_two_kernels_gives_each_its_own(fake_driver):
    """A cubin holding two kernels (scripts/probes/ws_gemm.py builds one): loading the second by name
    returns the second, not the first one cached for the same image (2026-12-02: it returned the
    first, whose launch with the second's block size then deadlocked)."""
    image = b"\x7fELF two kernels"
    a = module.load(image, "first", 1024)
    b = module.load(image, "second", 1024)
    assert (a.name, b.name) == ("first", "second") and a.function != b.function
    assert module.load(image, "first", 1024) is a                          # cached per name
    big = module.load(image, "first", 100 * 1024)                          # opted into more shared memory
    assert big is not a and big.smem == 100 * 1024
    assert ("attribute", big.function, "max_smem", 100 * 1024) in fake_driver.calls
