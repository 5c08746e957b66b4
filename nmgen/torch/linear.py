"""NMLinear: an inference-only nn.Linear whose weight is n:m sparse, stored compressed.

nn.Linear computes y = x @ W.T + b with W (out_features, in_features). nmgen's B is K x N with K
along the reduction, so B = W.T: K = in_features (a multiple of m), N = out_features. In every
window of m consecutive input features, n are kept, the same n for each group of V consecutive
output features.

State (all tensors, so state_dict() and safetensors hold it as is):
    values     (in_features*n/m, out_features)      float32 / bfloat16 / float16, the module's dtype
    indices    (in_features*n/m, ceil(out/V))       uint8 (int32 for m > 256)
    nm_config  [format, n, m, V, in, out]           int64 (checked on load_state_dict)
    bias       (out_features,) or absent            the module's dtype (a Parameter without grad)
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..errors import ShapeError
from ..format import NMMatrix, _pattern
from ..ir.problem import Pattern, ceil_div
from . import kernels
from .compress import compress_weight, compressed_problem
from .ops import linear_eager, to_tensors

FORMAT = 1      # nm_config[0]: the layout of NMLinear's state


class NMLinear(nn.Module):
    """y = x @ W.T + b for an n:m (vector V) sparse W, on nmgen's kernels. Inference only.

    Build it from a dense layer with `NMLinear.from_linear(linear, "8:32", 32)` (magnitude pruning,
    or a given mask), or empty (zero weights) with the constructor, to load a state_dict into.

    forward(x): x (..., in_features) CUDA tensor of the module's dtype (float32, bfloat16 or
    float16) -> (..., out_features) of the same dtype, on torch's current stream. Any leading
    dimensions, an empty batch too. Each number of rows M = x.numel() / in_features gets its own
    kernel, compiled on the first call with that M (about a second); later calls launch it with a
    few microseconds of host time. Raises (with what to do) for CPU tensors, another dtype, a wrong
    last dimension, and inputs that require grad while autograd records (no backward exists:
    call it under torch.no_grad() or torch.inference_mode()). float32 runs on FFMA unless
    `allow_tf32` (TF32 tensor cores, as torch's allow_tf32; an attribute, off by default)."""

    def __init__(self, in_features: int, out_features: int, pattern, vector: int | None = None, bias: bool = True, *,
                 dtype=None, device=None, allow_tf32: bool = False):
        super().__init__()
        p = _pattern(pattern, vector)
        _check_features(in_features, out_features, p)
        dtype = _module_dtype(dtype if dtype is not None else torch.get_default_dtype())
        _check_vector(dtype, p)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.n, self.m, self.vector = p.n, p.m, p.vector
        self.allow_tf32 = bool(allow_tf32)
        W, nv = self.in_features // p.m * p.n, ceil_div(self.out_features, p.vector)
        ix_dtype = torch.uint8 if p.m <= 256 else torch.int32
        # zero weights that are a valid n:m matrix: the first n rows of every window kept
        first = torch.arange(W, dtype=torch.int64) % p.n
        self.register_buffer("values", torch.zeros((W, self.out_features), dtype=dtype, device=device))
        self.register_buffer("indices", first[:, None].expand(W, nv).to(ix_dtype).contiguous().to(device))
        self.register_buffer("nm_config", torch.tensor(self.config(), dtype=torch.int64, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # ---- construction ----
    @classmethod
    def from_linear(cls, linear: nn.Linear, pattern, vector: int | None = None, *, mask=None, dtype=None,
                    allow_tf32: bool = False) -> "NMLinear":
        """An NMLinear holding `linear`'s weight pruned to `pattern` ("n:m", (n, m) or a Pattern)
        with vectors of `vector` output features (default 1), its bias copied; on linear's device.

        mask: None for magnitude pruning (nmgen.prune: in each window of m input features, keep the
        n with the largest L1 norm over each group of V outputs), or a boolean tensor / array of
        the weight's shape (out_features, in_features), True = kept, which must itself be n:m
        (PatternError naming the first window that keeps too many otherwise).
        dtype: the module's dtype (torch.float32, bfloat16 or float16, or "f32", "bf16", "f16");
        default: linear's. Raises ShapeError for in_features that are no multiple of m, weights
        of another dtype (e.g. float64) without `dtype`, and weights holding NaN or infinity or
        values beyond `dtype`'s range (check_weight)."""
        p = _pattern(pattern, vector)
        if not isinstance(linear, nn.Linear):
            raise ShapeError(f"from_linear takes a torch.nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach()
        out_f, in_f = W.shape
        _check_features(in_f, out_f, p)
        dtype = _module_dtype(dtype if dtype is not None else W.dtype)
        _check_vector(dtype, p)
        if W.device.type == "meta":
            raise ShapeError("linear's weight is on the meta device (no values to prune): build the layer with "
                             "real weights, or construct NMLinear(in, out, pattern, V) and load a state_dict")
        check_weight(W, dtype)          # before pruning, which would hide a NaN it drops
        bias = None if linear.bias is None else linear.bias.detach()
        if bias is not None:
            check_weight(bias[None], dtype, "the bias")
        values, indices = compress_weight(W, p, mask)          # on W's device (the GPU's, usually)
        return cls._assemble(values.to(dtype), indices, p, in_f, bias, allow_tf32)   # in range: check_weight

    @classmethod
    def from_matrix(cls, B: NMMatrix, bias=None, *, device=None, allow_tf32: bool = False) -> "NMLinear":
        """An NMLinear computing x @ B (+ bias) for an NMMatrix B (K x N = in x out) in B's dtype,
        on `device`."""
        if not isinstance(B, NMMatrix):
            raise TypeError(f"from_matrix takes an nmgen.NMMatrix, got {type(B).__name__}: make one with "
                            f"NMMatrix.from_dense(W.T, pattern, vector)")
        values, indices = to_tensors(B, device)
        if bias is not None:
            bias = torch.as_tensor(bias).detach().to(device)
            if tuple(bias.shape) != (B.N,):
                raise ShapeError(f"bias has shape {tuple(bias.shape)}; it must be ({B.N},), one value per output "
                                 f"feature (B's columns)")
        return cls._assemble(values, indices, B.pattern, B.K, bias, allow_tf32)

    @classmethod
    def _assemble(cls, values: torch.Tensor, indices: torch.Tensor, p: Pattern, in_features: int, bias,
                  allow_tf32: bool) -> "NMLinear":
        """An NMLinear holding these compressed tensors (on their device) and bias."""
        device = values.device
        layer = cls(in_features, values.shape[1], p, bias=bias is not None, dtype=values.dtype, device="meta",
                    allow_tf32=allow_tf32)
        layer.values = values.contiguous()
        layer.indices = indices.to(device=device, dtype=layer.indices.dtype).contiguous()
        layer.nm_config = torch.tensor(layer.config(), dtype=torch.int64, device=device)
        if bias is not None:
            b = bias.to(device=device, dtype=values.dtype).reshape(values.shape[1]).clone()
            layer.bias = nn.Parameter(b, requires_grad=False)
        return layer

    # ---- the computation ----
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(x) is torch.Tensor and not torch.compiler.is_compiling():
            return self._eager(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"NMLinear takes a torch.Tensor (..., {self.in_features}) on the GPU, got "
                            f"{type(x).__name__}: torch.as_tensor(x, device='cuda')")
        # traced (torch.compile, torch.export, FakeTensor, tensor subclasses): the registered op. Only
        # what the op cannot see is refused here: Dynamo reports an exception raised while tracing
        # as "Unsupported: Observed exception" with the message buried, while the op's fake kernel
        # (dtype, K) and its CPU kernel (device, at run time) give their messages as they are.
        if x.requires_grad and torch.is_grad_enabled():
            self._refuse(x)
        values = self.values
        if x.dim() < 1:
            self._refuse(x)
        a = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = torch.ops.nmgen.spmm(a, values, self.indices, self.n, self.m, self.vector, self.allow_tf32)
        if self.bias is not None:
            y = y + self.bias
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        """forward in eager mode: the op's CUDA implementation without the dispatcher, no reshapes,
        the module's tensors read from its dicts (nn.Module.__getattr__ costs ~1 us each)."""
        buffers = self._buffers
        values = buffers["values"]
        ndim = x.dim()
        if ndim < 1 or x.dtype != values.dtype or not x.is_cuda or x.shape[-1] != self.in_features or (
                x.requires_grad and torch.is_grad_enabled()):
            self._refuse(x)
        y = linear_eager(x, values, buffers["indices"], self.n, self.m, self.vector, self.allow_tf32,
                         self.in_features)
        bias = self._parameters["bias"]
        if bias is not None:
            y.add_(bias)
        return y

    def _refuse(self, x: torch.Tensor):
        """Raise what is wrong with an input forward refuses, and what to do."""
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("NMLinear is inference-only; wrap the call in torch.no_grad() / torch.inference_mode() "
                               "(the input requires grad and autograd is recording, but nmgen's kernels have no "
                               "backward)")
        if not x.is_cuda:
            there = "" if torch.cuda.is_available() else " (torch sees no CUDA GPU on this machine)"
            raise ShapeError(f"NMLinear runs on CUDA tensors, got an input on {x.device}: move the model and the "
                             f"input to the GPU (model.cuda(), x.cuda()){there}")
        if x.dtype != self.values.dtype:
            fix = f"convert the input (x.to({self.values.dtype}))"
            if self._cannot_compute_in(x.dtype, self.values, None) is None:
                fix += f" or the module (module.to({x.dtype}))"
            raise ShapeError(f"NMLinear holds {self.values.dtype} weights but the input is {x.dtype}: {fix}")
        raise ShapeError(f"NMLinear expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}")

    def config(self) -> list[int]:
        """[format, n, m, V, in_features, out_features]: what nm_config holds."""
        return [FORMAT, self.n, self.m, self.vector, self.in_features, self.out_features]

    # ---- views of the weight ----
    @property
    def pattern(self) -> Pattern:
        return Pattern(self.n, self.m, self.vector)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weight's entries not stored (1 - n/m)."""
        return 1.0 - self.n / self.m

    def to_nmmatrix(self) -> NMMatrix:
        """The weight B = W.T (in x out) as a host NMMatrix (copies the tensors to the host)."""
        ix = self.indices.cpu().numpy().astype(np.uint8 if self.m <= 256 else np.uint16)
        from ..arrays import to_numpy
        return NMMatrix(to_numpy(self.values), ix, self.pattern, (self.in_features, self.out_features))

    def to_dense(self) -> torch.Tensor:
        """The dense (out_features, in_features) weight with the pruned entries zero, in the module's
        dtype on its device: what an nn.Linear computing the same product holds."""
        W, N = self.values.shape
        window = torch.arange(W, device=self.values.device) // self.n
        cols = torch.arange(N, device=self.values.device) // self.vector
        rows = window[:, None] * self.m + self.indices.long()[:, cols]           # (W, N) input feature
        dense = torch.zeros((self.in_features, N), dtype=self.values.dtype, device=self.values.device)
        dense.scatter_(0, rows, self.values)
        return dense.t().contiguous()

    def weight_nbytes(self) -> int:
        """Bytes of the compressed weight (values and indices; not the bias)."""
        return self.values.numel() * self.values.element_size() + self.indices.numel() * self.indices.element_size()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, pattern={self.n}:{self.m}, "
                f"V={self.vector}, sparsity={self.sparsity:.1%}, dtype={str(self.values.dtype).replace('torch.', '')}, "
                f"bias={self.bias is not None}")

    # ---- conversions ----
    def _apply(self, fn, recurse=True):
        """nn.Module's conversion hook (.to, .cuda, .half, .double, ...). Devices always apply; a new
        dtype applies when the layer can compute in it: float32, bfloat16 or float16, V a multiple of
        8 for the 16-bit ones (tensor cores), and values and bias within its range. Otherwise the
        layer keeps its dtype (on the new device) with a warning saying why, so that a model's
        .double() or .half() never leaves a layer no kernel takes (or infinite weights); its
        forward then names the input's dtype to convert."""
        values, bias = self._buffers["values"], self._parameters.get("bias")
        old_bias_data = None if bias is None else bias.data
        result = super()._apply(fn, recurse)
        new = self._buffers["values"]
        why = None if new.dtype == values.dtype else self._cannot_compute_in(new.dtype, values, old_bias_data)
        if why:
            self._buffers["values"] = values.to(new.device)
            if bias is not None:
                restored = old_bias_data.to(new.device)
                if self._parameters["bias"] is bias:      # converted in place (param.data = ...)
                    bias.data = restored
                else:                                      # torch's overwrite-on-conversion mode
                    self._parameters["bias"] = nn.Parameter(restored, requires_grad=False)
            warnings.warn(f"NMLinear keeps its {_name(values.dtype)} weights: {why}", stacklevel=3)
        return result

    def _cannot_compute_in(self, dtype: torch.dtype, values: torch.Tensor, bias) -> str | None:
        """Why this layer cannot hold `values` and `bias` (the old ones) converted to `dtype`."""
        if dtype not in kernels.NM_DTYPES:
            return f"it computes in float32, bfloat16 or float16, not {_name(dtype)}"
        why = tensor_core_vector_problem(dtype, self.pattern)
        if why:
            return why
        top = torch.finfo(dtype).max
        for what, t in (("values", values), ("bias", bias)):
            biggest = float(t.detach().abs().max()) if t is not None and t.numel() and not t.is_meta else 0.0
            if biggest > top:
                return f"its {what} reach {biggest:.4g}, beyond {_name(dtype)}'s {top:.6g}"
        return None

    # ---- state ----
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "nm_config"
        if key in state_dict:
            theirs = [int(v) for v in torch.as_tensor(state_dict[key]).cpu().tolist()]
            ours = self.config()
            if theirs != ours:
                raise ShapeError(f"{prefix or 'NMLinear'}: the state holds an NMLinear {_describe(theirs)} but this "
                                 f"module is {_describe(ours)}; build the module with the checkpoint's pattern "
                                 f"(nmgen.torch.load rebuilds NMLinear layers from the file's metadata)")
        values, indices = state_dict.get(prefix + "values"), state_dict.get(prefix + "indices")
        if isinstance(values, torch.Tensor) and isinstance(indices, torch.Tensor) and not values.is_meta and (
                tuple(values.shape) == tuple(self.values.shape) and tuple(indices.shape) == tuple(self.indices.shape)):
            why = compressed_problem(values, indices, self.pattern)
            if why:     # refused before anything is copied: the module keeps its state
                raise ShapeError(f"{prefix or 'NMLinear'}: the state's compressed weight is damaged: {why}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _describe(cfg) -> str:
    if len(cfg) != 6:
        return f"with config {cfg}"
    f, n, m, v, i, o = cfg
    return f"{i}->{o} {n}:{m} V={v} (format {f})"


def check_weight(W: torch.Tensor, dtype: torch.dtype, what: str = "the weight") -> None:
    """ShapeError when a dense weight W (out_features, in_features) (or a bias, (1, out_features),
    `what` naming it) holds NaN or infinity anywhere (a damaged checkpoint: pruning would silently
    drop some of them), or finite values that `dtype` cannot hold (they would become infinite)."""
    W = W.detach()
    bad = ~torch.isfinite(W)
    if bool(bad.any()):
        r, c = (int(i) for i in torch.nonzero(bad)[0])
        where = f"[{r}, {c}] (output feature {r}, input feature {c})" if what == "the weight" else f"[{c}]"
        raise ShapeError(f"{what} holds {int(bad.sum())} NaN or infinite value(s), the first {float(W[r, c])} at "
                         f"{where}: fix the weights before pruning")
    if dtype != W.dtype and not bool(torch.isfinite(W.to(dtype)).all()):    # W finite: the cast overflowed
        from ..ir.dtypes import DTYPES, out_of_range
        raise out_of_range(what, float(W.abs().max()), DTYPES[kernels.dtype_name(dtype)].storage)


def _module_dtype(dtype) -> torch.dtype:
    from ..ir.dtypes import dtype as dtype_of
    if isinstance(dtype, torch.dtype):
        if dtype in kernels.NM_DTYPES:
            return dtype
        raise ShapeError(f"NMLinear computes in torch.float32, torch.bfloat16 or torch.float16, not {dtype}: pass "
                         f"dtype=torch.float32 (or bfloat16 / float16)")
    name = dtype_of(dtype).name
    if name not in kernels.TORCH_DTYPES:
        raise ShapeError(f"dtype {dtype!r}: NMLinear stores float32, bfloat16 or float16 (TF32 is a way of "
                         f"multiplying float32: pass allow_tf32=True)")
    return kernels.TORCH_DTYPES[name]


def _check_features(in_features, out_features, p: Pattern) -> None:
    if in_features < 1 or out_features < 1:
        raise ShapeError(f"in_features={in_features} and out_features={out_features} must be at least 1")
    if in_features % p.m:
        raise ShapeError(f"in_features={in_features} is not a multiple of the pattern window m={p.m}: the n:m "
                         f"windows run along the input features; choose a pattern whose m divides {in_features}")


def _check_vector(dtype: torch.dtype, p: Pattern) -> None:
    why = tensor_core_vector_problem(dtype, p)
    if why:
        raise ShapeError(why)


def tensor_core_vector_problem(dtype: torch.dtype, p: Pattern) -> str | None:
    """Why a 16-bit NMLinear cannot have this V (None when it can): bfloat16 and float16 run on the
    tensor cores, whose 8-column tiles must lie inside one vector of columns sharing kept rows."""
    if dtype is not torch.float32 and p.vector % 8:
        return (f"{str(dtype).replace('torch.', '')} runs on the tensor cores, whose 8-column tiles need V a multiple "
                f"of 8, got V={p.vector}: use V=8, 16 or 32, or dtype=torch.float32 (FFMA)")
    return None
