"""Errors raised below the CUDA layer. Each message says what was wrong, with the value, and what to do."""


class NMGenError(Exception):
    """Base class of every error nmgen raises on purpose."""


class PatternError(NMGenError, ValueError):
    """An N:M pattern, or a matrix that does not follow one."""


class ShapeError(NMGenError, ValueError):
    """Operand shapes, dtypes or layouts that do not fit the operation."""


class FileError(NMGenError, OSError):
    """A file nmgen was asked to read or write that it cannot: missing, a directory, not
    permitted, full, or existing where nothing may be replaced without asking."""


class ScheduleError(NMGenError, ValueError):
    """A schedule that cannot run for this problem on this device; the message lists every reason."""


class HazardError(NMGenError, RuntimeError):
    """The interpreter saw a kernel read or overwrite shared memory without the copy/barrier order
    that makes it safe on a GPU (a race that would give wrong answers there)."""
