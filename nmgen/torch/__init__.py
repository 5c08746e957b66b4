"""nmgen for PyTorch: N:M-sparse linear layers running nmgen's kernels on torch's CUDA streams.

    import nmgen.torch as nmt
    report = nmt.sparsify(model, "8:32", 32, exclude="lm_head")   # nn.Linear -> NMLinear, in place
    print(report)
    with torch.inference_mode():
        y = model(x)                                              # CUDA tensors, f32 / bf16 / f16
    nmt.save(model, "model.nm.safetensors")                       # compressed weights, no pickle

Contents:
  NMLinear            an inference-only nn.Linear with an n:m (vector V) sparse weight, stored
                      compressed (values, indices buffers); NMLinear.from_linear(linear, pattern, V)
  sparsify            replace every fitting nn.Linear of a model in place; returns a SparsifyReport
  save, load          a sparsified model's state (compressed weights too) as safetensors
  spmm                C = A @ B for a compressed B given as tensors (the op below, eager or compiled)
  torch.ops.nmgen.spmm / spmm_out
                      the registered operator: torch.compile(fullgraph=True) and CUDA graphs see
                      only tensors and ints

Needs torch>=2.4 and safetensors (`pip install -e '.[torch]'` in an nmgen checkout, as the README
installs nmgen); importing this module without torch raises ImportError saying so. The rest of nmgen never imports torch at module level.
"""
INSTALL = "pip install -e '.[torch]' in an nmgen checkout (the README's install, with the torch extra)"

try:
    import torch as _torch
except ImportError as _e:   # torch missing, or a broken install
    raise ImportError(f"nmgen.torch needs PyTorch (torch>=2.4) and safetensors: {INSTALL} ({_e})") from None

_version = tuple(int(x) for x in _torch.__version__.split("+")[0].split(".")[:2] if x.isdigit())
if _version < (2, 4):
    raise ImportError(f"nmgen.torch needs torch>=2.4 (torch.library.register_fake), found {_torch.__version__}: "
                      f"{INSTALL}")

from .ops import spmm, to_tensors  # noqa: E402 - registers torch.ops.nmgen.*
from .linear import NMLinear  # noqa: E402
from .sparsify import SparsifyReport, sparsify  # noqa: E402
from .io import load, save  # noqa: E402

__all__ = ["NMLinear", "SparsifyReport", "load", "save", "sparsify", "spmm", "to_tensors"]
