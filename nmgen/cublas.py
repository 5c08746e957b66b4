"""cuBLAS FP32 (no TF32) dense GEMM of the same shape, through torch or cupy: the baseline every
benchmark reports beside nmgen, in the same run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DenseGemm:
    library: str           # "torch x.y (cuBLAS)" / "cupy x.y (cuBLAS)"
    run: object            # () -> None, enqueues C = A @ B on `stream`
    stream: int


def dense_gemm(M: int, N: int, K: int, rng) -> DenseGemm | None:
    """A prepared FP32 GEMM, or None when neither torch nor cupy (with CUDA) is installed."""
    try:
        import torch
        if torch.cuda.is_available():
            if hasattr(torch.backends.cuda.matmul, "fp32_precision"):   # the paper's baseline: true FP32
                torch.backends.cuda.matmul.fp32_precision = "ieee"
            else:
                torch.backends.cuda.matmul.allow_tf32 = False
            A = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32)).cuda()
            B = torch.from_numpy(rng.standard_normal((K, N), dtype=np.float32)).cuda()
            C = torch.empty((M, N), device="cuda")
            stream = torch.cuda.current_stream().cuda_stream
            return DenseGemm(f"torch {torch.__version__} (cuBLAS FP32)", lambda: torch.matmul(A, B, out=C), stream)
    except ImportError:
        pass
    try:
        import cupy
        import os
        os.environ.setdefault("CUPY_TF32", "0")
        A = cupy.asarray(rng.standard_normal((M, K), dtype=np.float32))
        B = cupy.asarray(rng.standard_normal((K, N), dtype=np.float32))
        C = cupy.empty((M, N), dtype=cupy.float32)
        return DenseGemm(f"cupy {cupy.__version__} (cuBLAS FP32)", lambda: cupy.matmul(A, B, out=C),
                         cupy.cuda.get_current_stream().ptr)
    except ImportError:
        return None
