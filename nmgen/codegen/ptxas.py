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
    """The ptxas to run: $NMGEN_PTXAS (CompileError if it names no executable file), else the
    pinned wheel's, else the one on PATH; None where there is none."""
    env = os.environ.get("NMGEN_PTXAS")
    if env:
        if not os.path.isfile(env):
            raise CompileError(f"NMGEN_PTXAS={env} does not exist (or is not a file); point it at CUDA's ptxas "
                               f"or unset it")
        if not os.access(env, os.X_OK):
            raise CompileError(f"NMGEN_PTXAS={env} is not executable; point it at CUDA's ptxas or unset it")
        return env
    try:  # the pinned wheel first: its version matches what the tests expect
        from cuda.pathfinder import find_nvidia_binary_utility
        found = find_nvidia_binary_utility("ptxas")
        if found:
            return str(found)
    except Exception:  # noqa: BLE001 - pathfinder missing or broken: fall back to PATH
        pass
    return shutil.which("ptxas")


def ptxas_timeout() -> float:
    """Seconds one ptxas run may take: $NMGEN_PTXAS_TIMEOUT, default 300 (the largest kernels here
    assemble in a few seconds; a ptxas that hangs must not hang nmgen)."""
    env = os.environ.get("NMGEN_PTXAS_TIMEOUT", "300")
    try:
        t = float(env)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise CompileError(f"NMGEN_PTXAS_TIMEOUT={env!r} is not a positive number of seconds; set it to one (e.g. 300) "
                           f"or unset it")
    return t


def _run(args: list[str]) -> subprocess.CompletedProcess:
    """Run ptxas (no input from the terminal); CompileError, naming it, if it cannot be started or
    does not finish within ptxas_timeout() seconds."""
    timeout = ptxas_timeout()
    try:
        return subprocess.run(args, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompileError(f"ptxas {args[0]} did not finish in {timeout:g} s and was stopped; check that it is CUDA's "
                           f"ptxas, or allow it longer with NMGEN_PTXAS_TIMEOUT=SECONDS") from None
    except OSError as e:
        raise CompileError(f"cannot run ptxas {args[0]} ({e.strerror or e}); point NMGEN_PTXAS at CUDA's ptxas "
                           f"or install the test extra (pip install 'nmgen[test]')") from None


def ptxas_version() -> str:
    """ptxas's version (e.g. 13.0.88); "none" without one, "unknown" if it does not say."""
    try:
        exe = find_ptxas()
        if not exe:
            return "none"
        out = _run([exe, "--version"]).stdout
    except CompileError:
        return "unknown"
    m = re.search(r"V(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def check_ptxas() -> None:
    """CompileError unless $NMGEN_PTXAS, where set, is a ptxas that runs and reports its version:
    asked before a search or benchmark, so that a wrong one is not taken for every kernel failing."""
    env = os.environ.get("NMGEN_PTXAS")
    if not env:
        return
    out = _run([find_ptxas(), "--version"])
    if out.returncode or not re.search(r"V(\d+\.\d+\.\d+)", out.stdout):
        raise CompileError(f"NMGEN_PTXAS={env} is not CUDA's ptxas (`{env} --version` does not give a ptxas "
                           f"version); point it at CUDA's ptxas or unset it")


def assemble(ptx: str, arch: str, kernel: str | None = None) -> Resources:
    """Run `ptxas -v` on `ptx`; raise CompileError with its log on failure."""
    return assemble_cubin(ptx, arch, kernel)[0]


def assemble_cubin(ptx: str, arch: str, kernel: str | None = None) -> tuple[Resources, bytes]:
    """ptxas's report and the cubin (loaded without a driver JIT); CompileError on failure,
    including a ptxas that cannot run or that writes no cubin."""
    exe = find_ptxas()
    if not exe:
        raise CompileError("ptxas was not found: install the test extra (pip install 'nmgen[test]'), "
                           "put CUDA's ptxas on PATH or set NMGEN_PTXAS")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = os.path.join(d, "k.cubin")
        r = _run([exe, f"-arch={arch}", "-v", "-O3", src, "-o", out])
        log = r.stdout + r.stderr
        if r.returncode and not log.strip():
            raise CompileError(_silent_failure(exe, r.returncode))
        if r.returncode:
            raise CompileError(f"ptxas rejected the PTX{' of ' + kernel if kernel else ''} for {arch}:\n{log.strip()}")
        try:
            with open(out, "rb") as f:
                cubin = f.read()
        except OSError:
            cubin = b""
        if not cubin:
            raise CompileError(f"{exe} exited without error but wrote no cubin for {arch}; it is not CUDA's ptxas: "
                               f"point NMGEN_PTXAS at CUDA's ptxas or unset it")
    return parse_report(log), cubin


def _silent_failure(exe: str, returncode: int) -> str:
    """What to say of a ptxas that failed without a word: no PTX was judged, so the PTX is not blamed."""
    how = f"exited with status {returncode}" if returncode > 0 else f"was killed by signal {-returncode}"
    if os.environ.get("NMGEN_PTXAS"):
        return f"ptxas at {exe} {how} and printed nothing: is NMGEN_PTXAS a ptxas? point it at CUDA's ptxas or unset it"
    return (f"ptxas at {exe} {how} and printed nothing; reinstall the test extra (pip install 'nmgen[test]') or "
            f"set NMGEN_PTXAS to CUDA's ptxas")


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
