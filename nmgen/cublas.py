"""The baselines every benchmark reports beside nmgen, in the same run, of the same shape and dtype:

  cuBLAS dense GEMM, through torch or cupy:
    f32        FP32 without TF32 (the NM-SpMM paper's baseline): torch fp32_precision "ieee"
               (allow_tf32 False before torch 2.9), cupy with CUPY_TF32=0
    tf32       float32 operands on the TF32 tensor cores: torch fp32_precision "tf32" (allow_tf32)
    bf16, f16  that dtype in and out, fp32 accumulation (torch's defaults otherwise)
  torch's semi-structured 2:4 sparse GEMM (torch.sparse.to_sparse_semi_structured, cuSPARSELt or
  CUTLASS, as torch chooses), for patterns keeping half the rows: the weight 2:4-pruned along K,
  timed as F.linear(A, W) the way torch documents it.

torch's TF32 setting is global: each baseline sets it only while it runs (`precision`) and puts
back what it found.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

# how the summary names the baseline of each dtype
TITLES = {"f32": "FP32", "tf32": "TF32", "bf16": "BF16", "f16": "FP16"}


def baseline(dtype: str) -> str:
    """The baseline's id in the JSON rows: cublas_fp32, cublas_tf32, cublas_bf16, cublas_fp16."""
    return f"cublas_{TITLES[dtype].lower()}"


def baseline_title(dtype: str) -> str:
    """The baseline's name in tables and summaries: "cuBLAS BF16"."""
    return f"cuBLAS {TITLES[dtype]}"


@dataclass
class DenseGemm:
    library: str           # "torch x.y (cuBLAS BF16)" / "cupy x.y (cuBLAS FP32)"
    run: object            # () -> None, enqueues C = A @ B on `stream`
    stream: int
    precision: object = field(default=contextlib.nullcontext)   # () -> context under which `run` is timed
    out: object = None     # what `run` writes (C), for checking it


def torch_fp32_precision(torch, tf32: bool):
    """A context manager: torch's float32 matmuls on the TF32 tensor cores (`tf32`) or in IEEE FP32
    inside it, torch's own setting (fp32_precision, or allow_tf32 before torch 2.9) restored after."""
    m = torch.backends.cuda.matmul

    @contextlib.contextmanager
    def setting():
        name = "fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32"
        old = getattr(m, name)
        setattr(m, name, ("tf32" if tf32 else "ieee") if name == "fp32_precision" else tf32)
        try:
            yield
        finally:
            setattr(m, name, old)
    return setting


def _torch_cuda():
    """torch, where it is installed with a usable GPU; else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_tensor(torch, x: np.ndarray, dtype: str):
    """A CUDA tensor of the float32 values `x` in `dtype`'s storage (float32 for tf32)."""
    from .ir.dtypes import DTYPES
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(getattr(torch, DTYPES[dtype].torch)).cuda()


def dense_gemm(M: int, N: int, K: int, rng, dtype: str = "f32") -> DenseGemm | None:
    """A prepared dense GEMM C (M x N) = A (M x K) @ B (K x N) of `dtype` (nmgen's name: f32, tf32,
    bf16, f16), normal values; None when no library here runs it (`why_no_gemm` says why)."""
    torch = _torch_cuda()
    if torch is not None:
        A = _torch_tensor(torch, rng.standard_normal((M, K), dtype=np.float32), dtype)
        B = _torch_tensor(torch, rng.standard_normal((K, N), dtype=np.float32), dtype)
        C = torch.empty((M, N), dtype=A.dtype, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream
        precision = torch_fp32_precision(torch, dtype == "tf32") if A.dtype == torch.float32 else contextlib.nullcontext
        return DenseGemm(f"torch {torch.__version__} ({baseline_title(dtype)})", lambda: torch.matmul(A, B, out=C),
                         stream, precision, C)
    if dtype not in ("f32", "f16"):        # cupy has no bfloat16, and reads CUPY_TF32 once, at import
        return None
    try:
        import cupy
        import os
        os.environ.setdefault("CUPY_TF32", "0")
    except ImportError:
        return None
    dt = cupy.float32 if dtype == "f32" else cupy.float16
    A = cupy.asarray(rng.standard_normal((M, K), dtype=np.float32)).astype(dt)
    B = cupy.asarray(rng.standard_normal((K, N), dtype=np.float32)).astype(dt)
    C = cupy.empty((M, N), dtype=dt)
    return DenseGemm(f"cupy {cupy.__version__} ({baseline_title(dtype)})", lambda: cupy.matmul(A, B, out=C),
                     cupy.cuda.get_current_stream().ptr, out=C)


def why_no_gemm(dtype: str) -> str:
    """Why `dense_gemm` gave None for `dtype`."""
    if dtype in ("f32", "f16"):
        return f"neither torch nor cupy (with a GPU) is installed: no {baseline_title(dtype)} baseline"
    return f"torch (with a GPU) is not installed: no {baseline_title(dtype)} baseline (cupy has none)"


def prune_2_4(W: np.ndarray) -> np.ndarray:
    """W (rows x K, K a multiple of 4) with the 2 smallest-magnitude of every 4 consecutive elements
    of each row zeroed: element-wise 2:4 along K, the pattern torch's semi-structured format holds."""
    g = W.reshape(W.shape[0], -1, 4)
    drop = np.argsort(np.abs(g), axis=-1, kind="stable")[..., :2]
    out = g.copy()
    np.put_along_axis(out, drop, 0, axis=-1)
    return out.reshape(W.shape)


# Largest ||F.linear(A, W_sparse) - F.linear(A, W)|| / ||F.linear(A, W)|| the semi-structured result
# may show before it is reported wrong instead of timed: far above bf16 rounding (~2^-8), far below
# the ~1 of a wrong product
SEMI_STRUCTURED_TOLERANCE = 0.05


def semi_structured_2_4(M: int, N: int, K: int, rng, dtype: str = "f32") -> DenseGemm | str:
    """torch's semi-structured 2:4 product of the same shape and dtype: C (M x N) = A (M x K) @ W.T,
    W (N x K) 2:4-pruned along K, converted with torch.sparse.to_sparse_semi_structured, run as
    F.linear(A, W) (torch's documented use: the sparse weight of a linear layer). Run once and
    compared with the dense product first. The reason, as text, where it cannot be timed: no torch,
    or torch refusing this GPU, dtype or shape (its message), or a wrong result."""
    torch = _torch_cuda()
    if torch is None:
        return "torch (with a GPU) is not installed"
    if K % 4:
        return f"K={K} is no multiple of 4"
    try:
        import torch.nn.functional as F
        from torch.sparse import to_sparse_semi_structured
        W = _torch_tensor(torch, prune_2_4(rng.standard_normal((N, K), dtype=np.float32)), dtype)
        A = _torch_tensor(torch, rng.standard_normal((M, K), dtype=np.float32), dtype)
        precision = torch_fp32_precision(torch, dtype == "tf32") if A.dtype == torch.float32 else contextlib.nullcontext
        with precision():
            Ws = to_sparse_semi_structured(W)
            got = F.linear(A, Ws).float()
            want = F.linear(A, W).float()
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - torch refuses with RuntimeError, NotImplementedError, ValueError...
        return f"{type(e).__name__}: {_first_line(e)}"
    err = float(torch.linalg.norm(got - want) / max(float(torch.linalg.norm(want)), 1e-30))
    if not err <= SEMI_STRUCTURED_TOLERANCE:
        return f"wrong result: relative error {err:.2e} against the dense product"
    return DenseGemm(f"torch {torch.__version__} semi-structured 2:4 ({type(Ws).__name__})",
                     lambda: F.linear(A, Ws), torch.cuda.current_stream().cuda_stream, precision)


def _first_line(e: Exception) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
