"""The operator torch sees: torch.ops.nmgen.spmm (functional) and torch.ops.nmgen.spmm_out.

    nmgen::spmm(Tensor a, Tensor values, Tensor indices, int n, int m, int vector,
                bool allow_tf32=False) -> Tensor
    nmgen::spmm_out(Tensor a, Tensor values, Tensor indices, int n, int m, int vector,
                    bool allow_tf32, Tensor(a!) out) -> ()

C (M, N) = a (M, K) @ B, with B the n:m (vector V) sparse K x N weight given compressed as in
nmgen.format: `values` (K*n/m, N) of a's dtype (float32, bfloat16, float16) and `indices`
(K*n/m, ceil(N/V)) integers (each kept row's position in its window of m rows). C holds a's dtype
(spmm) or out's (spmm_out: float32, bfloat16 or float16). float32 runs on FFMA, or on TF32 tensor
cores with allow_tf32; bfloat16 and float16 on tensor cores; sums in float32.

Only tensors and ints cross the op boundary, so torch.compile(fullgraph=True) traces it (the fake
implementation gives the output's shape, dtype and device) and CUDA graphs capture its launches.
The CUDA implementation runs nmgen.torch.kernels: the kernel for each M is compiled and bound on
first use (not while capturing a CUDA graph); later calls launch it on torch's current stream,
allocating only the output. Inference only: there is no autograd formula.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ShapeError
from ..format import _pattern
from . import kernels
from .kernels import check_weights, weights_for

_SCHEMA = "Tensor a, Tensor values, Tensor indices, int n, int m, int vector"


def _define():
    lib = torch.library.Library("nmgen", "DEF")   # kept alive by the module: the registrations live with it
    lib.define(f"spmm({_SCHEMA}, bool allow_tf32=False) -> Tensor")
    lib.define(f"spmm_out({_SCHEMA}, bool allow_tf32, Tensor(a!) out) -> ()")
    lib.impl("spmm", spmm_cuda, "CUDA")
    lib.impl("spmm_out", spmm_out_cuda, "CUDA")
    lib.impl("spmm", _on_cpu, "CPU")
    lib.impl("spmm_out", _on_cpu_out, "CPU")
    torch.library.register_fake("nmgen::spmm", spmm_fake, lib=lib)
    torch.library.register_fake("nmgen::spmm_out", spmm_out_fake, lib=lib)
    return lib


# ---- CUDA ----------------------------------------------------------------------------------------
def spmm_cuda(a: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, n: int, m: int, vector: int,
              allow_tf32: bool = False) -> torch.Tensor:
    """The CUDA implementation of nmgen::spmm (NMLinear calls it directly in eager mode, skipping
    the dispatcher): a new (M, N) tensor of a's dtype."""
    w = weights_for(values, indices, n, m, vector)
    if a.dim() != 2 or a.shape[1] != w.K or a.dtype is not w.dtype or a.get_device() != w.device:
        _refuse_a(a, w)
    out = a.new_empty((a.shape[0], w.N))
    if a.shape[0]:
        w.run(a, out, allow_tf32)
    return out


def linear_eager(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, n: int, m: int, vector: int,
                 allow_tf32: bool, K: int) -> torch.Tensor:
    """x (..., K) @ B -> (..., N) for an x whose dtype and last dimension the caller has checked
    (NMLinear's eager path): no reshapes (views cost microseconds), one allocation."""
    w = weights_for(values, indices, n, m, vector)
    if x.get_device() != w.device:
        _refuse_a(x.reshape(-1, K), w)
    out = x.new_empty(x.shape[:-1] + (w.N,))
    M = x.numel() // K
    if M:
        w.run(x, out, allow_tf32, M)
    return out


def spmm_out_cuda(a, values, indices, n: int, m: int, vector: int, allow_tf32: bool, out: torch.Tensor) -> None:
    """The CUDA implementation of nmgen::spmm_out: writes `out` (M, N), float32 / bfloat16 / float16."""
    w = weights_for(values, indices, n, m, vector)
    if a.dim() != 2 or a.shape[1] != w.K or a.dtype is not w.dtype or a.get_device() != w.device:
        _refuse_a(a, w)
    _check_out(a, out, w.N)
    if not a.shape[0]:
        return
    if out.is_contiguous():
        w.run(a, out, allow_tf32)
    else:       # a strided view: compute into a compact buffer, then copy into it
        tmp = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        w.run(a, tmp, allow_tf32)
        out.copy_(tmp)


def _refuse_a(a: torch.Tensor, w) -> None:
    if a.dim() != 2:
        raise ShapeError(f"a must be a 2-D (M, K) matrix, got shape {tuple(a.shape)}; reshape it "
                         f"(x.reshape(-1, {w.K})) or use NMLinear, which takes any leading dimensions")
    if a.shape[1] != w.K:
        raise ShapeError(f"a is {tuple(a.shape)} but the weight has K={w.K} rows (in_features): a's last "
                         f"dimension must be {w.K}")
    if a.dtype is not w.dtype:
        raise ShapeError(f"a holds {a.dtype} but the weight holds {w.dtype}: the product runs in one dtype; "
                         f"convert the input (x.to({w.dtype})) or the weights (module.to({a.dtype}))")
    raise ShapeError(f"a is on {a.device} but the weight on cuda:{w.device}: move one of them")


def _check_out(a: torch.Tensor, out: torch.Tensor, N: int) -> None:
    """ShapeError unless `out` is an (M, N) float32 / bfloat16 / float16 tensor on a's device that
    does not overlap a. On every call of the op: integer comparisons only, spans of contiguous
    tensors from their byte counts."""
    M = a.shape[0]
    if (out.dim() != 2 or out.shape[0] != M or out.shape[1] != N or out.dtype not in kernels.NM_DTYPES
            or out.get_device() != a.get_device()):
        raise ShapeError(f"out must be a ({M}, {N}) float32, bfloat16 or float16 tensor on {a.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if M and N and a.shape[1]:
        a0, a1 = _span(a)
        o0, o1 = _span(out)
        if a0 < o1 and o0 < a1:
            raise ShapeError(f"out overlaps a (bytes [{o0:#x}, {o1:#x}) and [{a0:#x}, {a1:#x})): the kernel reads "
                             f"a while it writes out; pass a separate output tensor")


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the bytes a (non-empty, non-negatively strided) tensor's elements lie in."""
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + t.nbytes
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def _on_cpu(a, values, *args):
    raise ShapeError(f"nmgen::spmm runs on CUDA tensors; got a on {a.device} and values on {values.device}: "
                     f"move the model and the inputs to the GPU (model.cuda(), x.cuda())")


def _on_cpu_out(a, values, *args):
    _on_cpu(a, values)


# ---- fake (meta): shapes, dtype and device for torch.compile -------------------------------------------
def spmm_fake(a, values, indices, n: int, m: int, vector: int, allow_tf32: bool = False) -> torch.Tensor:
    K, N = check_weights(values, indices, n, m, vector)
    torch._check(a.dim() == 2, lambda: f"nmgen::spmm: a must be 2-D (M, K), got {a.dim()}-D")
    torch._check(a.shape[1] == K, lambda: f"nmgen::spmm: a has {a.shape[1]} columns but the weight has K={K} rows "
                                          f"(in_features): the input's last dimension must be {K}")
    torch._check(a.dtype == values.dtype, lambda: f"nmgen::spmm: a holds {a.dtype} but the weight {values.dtype}: "
                                                  f"convert the input (x.to({values.dtype})) or the weights")
    return a.new_empty((a.shape[0], N))


def spmm_out_fake(a, values, indices, n: int, m: int, vector: int, allow_tf32: bool, out) -> None:
    spmm_fake(a, values, indices, n, m, vector, allow_tf32)
    return None


# ---- the Python face ------------------------------------------------------------------------------
def spmm(a: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, pattern, vector: int | None = None, *,
         out: torch.Tensor | None = None, allow_tf32: bool = False) -> torch.Tensor:
    """C = a @ B for a dense a (M, K) CUDA tensor and a compressed n:m weight B (K x N) given as
    `values` (K*n/m, N) and `indices` (K*n/m, ceil(N/V)) tensors on a's GPU (`to_tensors` makes
    them from an NMMatrix). `pattern` "n:m", (n, m) or a nmgen.Pattern; `vector` V (default: the
    Pattern's, or 1).

    Returns a new (M, N) tensor of a's dtype, or writes `out` (float32, bfloat16 or float16, not
    overlapping a) and returns it. Runs on torch's current stream; nothing is synchronised after
    the first call for an M. Raises ShapeError / PatternError for inputs that do not fit."""
    p = _pattern(pattern, vector)
    if out is None:
        return torch.ops.nmgen.spmm(a, values, indices, p.n, p.m, p.vector, allow_tf32)
    torch.ops.nmgen.spmm_out(a, values, indices, p.n, p.m, p.vector, allow_tf32, out)
    return out


def to_tensors(B, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) torch tensors of an NMMatrix, on `device` (default CPU): values in B's dtype
    (float32, bfloat16 or float16), indices uint8 (m <= 256) or int32."""
    values = values_tensor(B.values)
    ix = B.indices.astype(np.uint8 if B.pattern.m <= 256 else np.int32)
    indices = torch.from_numpy(np.array(ix, copy=True))
    return values.to(device), indices.to(device)


def values_tensor(v: np.ndarray) -> torch.Tensor:
    """A torch copy of a numpy float32 / float16 / bfloat16 (ml_dtypes) array."""
    from ..ir.dtypes import storage_name
    name = storage_name(v.dtype)
    if name == "bf16":
        return torch.from_numpy(np.array(v.view(np.int16), copy=True)).view(torch.bfloat16)
    if name is None:
        raise ShapeError(f"values hold {v.dtype}; nmgen stores float32, bfloat16 or float16")
    return torch.from_numpy(np.array(v, copy=True))


_LIB = _define()
