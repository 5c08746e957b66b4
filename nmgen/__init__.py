"""nmgen: generated N:M-sparse matrix-multiplication kernels for NVIDIA GPUs.

    B_nm = nmgen.NMMatrix.from_dense(W, "8:32", vector=32, prune_first=True)
    C = nmgen.spmm(A, B_nm)               # numpy in/out, or torch/cupy CUDA arrays in place

Importing nmgen needs neither a GPU nor a CUDA driver; code generation (llvmlite) and the CUDA
runtime load on first use.
"""
import os as _os

# In a source checkout ir/, search/ and db/ sit beside nmgen/ and install as nmgen.ir, nmgen.search
# and nmgen.db; make them importable under those names without installing.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "ir")) and _os.path.isfile(_os.path.join(_root, "pyproject.toml")):
    __path__.append(_root)

__version__ = "0.1.0"

from .errors import (CompileError, CudaError, CudaUnavailable, FileError, HazardError, NMGenError,  # noqa: E402
                     PatternError, ScheduleError, ShapeError)
from .format import NMMatrix, compress, pad_k, prune  # noqa: E402
from .ir.problem import Pattern, Problem  # noqa: E402
from .ir.schedule import Schedule  # noqa: E402
from .reference import spmm_reference  # noqa: E402

_LAZY = {"spmm": "api", "compile": "api", "Kernel": "api", "default_schedule": "api"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nmgen' has no attribute {name!r}")


__all__ = ["CompileError", "CudaError", "CudaUnavailable", "FileError", "HazardError", "Kernel", "NMGenError",
           "NMMatrix", "Pattern", "PatternError", "Problem", "Schedule", "ScheduleError", "ShapeError", "compile",
           "compress", "default_schedule", "pad_k", "prune", "spmm", "spmm_reference"]
