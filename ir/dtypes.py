"""The element types nmgen computes with: storage, the multiply-accumulate instruction they run on,
and rounding to them (for the float64 reference, which multiplies the inputs as the kernel sees them).

  f32   float32 storage, FFMA on the CUDA cores (round to nearest)
  tf32  float32 storage, tensor cores (mma m16n8k8 .tf32): the kernel rounds its operands to TF32
        (10 mantissa bits) to nearest, ties away from zero (cvt.rna.tf32.f32), as torch's allow_tf32
  bf16  bfloat16 storage, tensor cores (mma m16n8k16 .bf16)
  f16   float16 storage, tensor cores (mma m16n8k16 .f16)
Every one accumulates in float32. numpy has no bfloat16: ml_dtypes provides it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import ShapeError


@dataclass(frozen=True)
class DType:
    name: str            # nmgen's name: f32, tf32, bf16, f16
    storage: np.dtype    # numpy dtype of the values in memory
    compute: str         # "ffma" (CUDA cores) or "mma" (tensor cores)
    torch: str           # the torch dtype of the values in memory

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize

    def __str__(self):
        return self.name


DTYPES = {
    "f32": DType("f32", np.dtype(np.float32), "ffma", "float32"),
    "tf32": DType("tf32", np.dtype(np.float32), "mma", "float32"),
    "bf16": DType("bf16", np.dtype(ml_dtypes.bfloat16), "mma", "bfloat16"),
    "f16": DType("f16", np.dtype(np.float16), "mma", "float16"),
}
# Stored output dtypes: C is f32, bf16 or f16 (tf32 is a way of computing, not a storage type)
OUTPUT_DTYPES = ("f32", "bf16", "f16")
ALIASES = {"float32": "f32", "fp32": "f32", "float": "f32", "tf32": "tf32", "bfloat16": "bf16", "bf16": "bf16",
           "float16": "f16", "fp16": "f16", "half": "f16", "f16": "f16", "f32": "f32"}


def dtype(name) -> DType:
    """The DType `name` names: nmgen's names ("f32", "tf32", "bf16", "f16"), their usual spellings
    ("float16", "fp16", "half", ...), anything numpy takes as one of the stored types (numpy.float16,
    numpy.dtype("<f2"), "e", ml_dtypes.bfloat16, ...) and torch dtypes (torch.bfloat16, ...).
    ShapeError naming the supported ones for anything else."""
    if isinstance(name, DType):
        return name
    if isinstance(name, str) or (type(name).__module__ == "torch" and str(name).startswith("torch.")):
        key = str(name).strip().lower().replace("torch.", "")
        if key in ALIASES:
            return DTYPES[ALIASES[key]]
    np_dtype = None
    if name is not None:                # np.dtype(None) is float64: None names no dtype here
        try:
            np_dtype = np.dtype(str(name).replace("torch.", "") if type(name).__module__ == "torch" else name)
        except (TypeError, ValueError):
            pass
    stored = storage_name(np_dtype) if np_dtype is not None else None
    if stored is not None:
        return DTYPES[stored]
    shown = (repr(name) if not isinstance(name, type) else name.__qualname__ if name.__module__ == "builtins"
             else f"{name.__module__}.{name.__qualname__}")
    if np_dtype is not None and str(np_dtype) not in shown:
        shown += f" ({np_dtype})"
    raise ShapeError(f"dtype {shown} is not supported: nmgen computes with f32 (float32), tf32 (float32 operands "
                     f"rounded to TF32), bf16 (bfloat16) and f16 (float16); pass one of those names, numpy.float32, "
                     f"ml_dtypes.bfloat16, numpy.float16 or a torch dtype of these")


def output_dtype(name) -> str:
    """nmgen's name of the stored dtype `name` names for C (f32, bf16, f16; spellings as `dtype`
    takes them). ShapeError naming the output dtypes for anything else, tf32 included (a way of
    computing: its products accumulate into an f32 C)."""
    try:
        d = dtype(name).name
    except ShapeError:
        d = None
    if d not in OUTPUT_DTYPES:
        why = " (tf32 is a way of computing from float32 inputs; its C is f32)" if d == "tf32" else ""
        raise ShapeError(f"output dtype {name!r} is not one of {', '.join(OUTPUT_DTYPES)}{why}: C holds float32, "
                         f"bfloat16 or float16; pass one of those names, numpy.float32, ml_dtypes.bfloat16, "
                         f"numpy.float16 or a torch dtype of these")
    return d


def storage_name(np_dtype) -> str | None:
    """nmgen's name of a numpy dtype of stored values (f32, bf16, f16), or None."""
    d = np.dtype(np_dtype)
    for name in OUTPUT_DTYPES:
        if DTYPES[name].storage == d:
            return name
    return None


def out_of_range(what: str, biggest: float, storage) -> ShapeError:
    """The error for finite values (|value| up to `biggest`) that the numpy dtype `storage` cannot
    hold: they would become infinite."""
    storage = np.dtype(storage)
    top = float(ml_dtypes.finfo(storage).max)
    wider = [n for n in ("bf16", "f32") if float(ml_dtypes.finfo(DTYPES[n].storage).max) > top * 1.01]
    fix = "scale them" + (f" or use {' / '.join(wider)}" if wider else "")
    return ShapeError(f"{what}: |value| up to {biggest:.4g} exceeds {storage.name}'s largest finite {top:.6g}: {fix}")


def cast_finite(x: np.ndarray, storage, what: str) -> np.ndarray:
    """`x` rounded (to nearest) to the numpy dtype `storage`, or `x` itself when it already is.
    ShapeError, without numpy's overflow warning, when finite values lie beyond the target's range
    (they would become infinite); `what` names them ("the weights", "A"). A UserWarning, with the
    count, when non-zero values are too small for the target and round to 0. NaN or infinity
    already in `x` are left for the caller to report."""
    storage = np.dtype(storage)
    if x.dtype == storage:
        return x
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        y = x.astype(storage)
    lost = ~np.isfinite(y.astype(np.float32, copy=False)) & np.isfinite(x)
    if lost.any():
        raise out_of_range(what, float(np.abs(x[np.isfinite(x)]).max()), storage)
    flushed = (y == 0) & (x != 0) & np.isfinite(x)
    if flushed.any():       # below half the smallest subnormal: rounded to zero, said rather than silent
        small = float(np.abs(x[flushed]).max())
        wider = " or use bf16 / f32" if storage == np.float16 else ""      # bfloat16 has float32's exponent
        warnings.warn(f"{what}: {int(flushed.sum())} non-zero values of {x.size} (|value| up to {small:.3g}) are "
                      f"too small for {storage.name} and became 0; scale them{wider}", UserWarning, stacklevel=3)
    return y


def round_tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 explicit mantissa bits), to nearest with ties away from
    zero: what cvt.rna.tf32.f32 gives (PTX ISA, cvt). Returns float32 (the low 13 bits zero)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits.astype(np.uint64) + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return np.where(finite, rounded, bits).view(np.float32)


def as_computed(x: np.ndarray, dt) -> np.ndarray:
    """The values the multiply sees: `x` stored as `dt`, and for tf32 rounded to TF32 (float32)."""
    dt = dtype(dt)
    x = np.asarray(x)
    if dt.name == "tf32":
        return round_tf32(x.astype(np.float32))
    return x.astype(dt.storage)
