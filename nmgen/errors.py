"""Every error nmgen raises on purpose derives from NMGenError."""
from .ir.errors import FileError, HazardError, NMGenError, PatternError, ScheduleError, ShapeError


class CudaUnavailable(NMGenError, RuntimeError):
    """No CUDA driver or GPU where one is needed."""


class CudaError(NMGenError, RuntimeError):
    """A CUDA driver call failed; the message names the CUDA error and the kernel or call."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class CompileError(NMGenError, RuntimeError):
    """Code generation or PTX assembly failed."""


__all__ = ["CompileError", "CudaError", "CudaUnavailable", "FileError", "HazardError", "NMGenError", "PatternError",
           "ScheduleError", "ShapeError"]
