"""ptxas as a checker: assemble PTX for an architecture and read its resource report.

ptxas is not needed to run kernels (the driver JIT-compiles PTX); it validates PTX on machines
without a GPU (CI) and reports registers, spills and shared memory. Found on PATH, through
$NMGEN_PTXAS, or in the pinned `nvidia-cuda-nvcc` wheel (the `test` extra) via cuda.pathfinder.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache

from ..errors import CompileError


@dataclass(frozen=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared_static: int
    barriers: int
    log: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("log")
        return d

    def summary(self) -> str:
        return (f"{self.registers} registers, {self.stack_frame} B stack frame, "
                f"{self.spill_stores} B spill stores, {self.spill_loads} B spill loads, "
                f"{self.shared_static} B static shared memory, {self.barriers} barrier(s)")


@lru_cache(maxsize=1)
def find_ptxas() -> str | None:
    env = os.environ.get("NMGEN_PTXAS")
    if env:
        return env
    try:  # the pinned wheel first: its version matches what the tests expect
        from cuda.pathfinder import find_nvidia_binary_utility
        found = find_nvidia_binary_utility("ptxas")
        if found:
            return str(found)
    except Exception:  # noqa: BLE001 - pathfinder missing or broken: fall back to PATH
        pass
    return shutil.which("ptxas")


def ptxas_version() -> str:
    exe = find_ptxas()
    if not exe:
        return "none"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"V(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def assemble(ptx: str, arch: str, kernel: str | None = None) -> Resources:
    """Run `ptxas -v` on `ptx`; raise CompileError with its log on failure."""
    return assemble_cubin(ptx, arch, kernel)[0]


def assemble_cubin(ptx: str, arch: str, kernel: str | None = None) -> tuple[Resources, bytes]:
    """ptxas's report and the cubin (loaded without a driver JIT); CompileError on failure."""
    exe = find_ptxas()
    if not exe:
        raise CompileError("ptxas was not found: install the test extra (pip install 'nmgen[test]'), "
                           "put CUDA's ptxas on PATH or set NMGEN_PTXAS")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = os.path.join(d, "k.cubin")
        r = subprocess.run([exe, f"-arch={arch}", "-v", "-O3", src, "-o", out], capture_output=True, text=True)
        log = r.stdout + r.stderr
        if r.returncode:
            raise CompileError(f"ptxas rejected the PTX{' of ' + kernel if kernel else ''} for {arch}:\n{log.strip()}")
        with open(out, "rb") as f:
            cubin = f.read()
    return parse_report(log), cubin


def parse_report(log: str) -> Resources:
    def num(pat, default=0):
        m = re.search(pat, log)
        return int(m.group(1)) if m else default
    return Resources(
        registers=num(r"Used (\d+) registers"),
        spill_stores=num(r"(\d+) bytes spill stores"),
        spill_loads=num(r"(\d+) bytes spill loads"),
        stack_frame=num(r"(\d+) bytes stack frame"),
        shared_static=num(r"(\d+) bytes smem"),
        barriers=num(r"used (\d+) barriers"),
        log=log,
    )
