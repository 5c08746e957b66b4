"""nmgen.ir: problems, schedules, the tile-level kernel IR, its builder, checks and a CPU interpreter.

Pure Python and numpy: nothing here imports llvmlite or cuda.
"""
from .build import build
from .device import ARCHS, Device, for_arch
from .errors import HazardError, NMGenError, PatternError, ScheduleError, ShapeError
from .interpret import interpret
from .layout import ComputeLayout, CopyPlan
from .nodes import Kernel
from .operands import Operands, geometry, prepare
from .printer import format_kernel
from .problem import Pattern, Problem, parse_shape
from .schedule import Schedule
from .validate import problems, validate

__all__ = ["ARCHS", "ComputeLayout", "CopyPlan", "Device", "HazardError", "Kernel", "NMGenError", "Operands",
           "Pattern", "PatternError", "Problem", "Schedule", "ScheduleError", "ShapeError", "build", "for_arch",
           "format_kernel", "geometry", "interpret", "parse_shape", "prepare", "problems", "validate"]
