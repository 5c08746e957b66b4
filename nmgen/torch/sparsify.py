"""sparsify: replace a model's nn.Linear layers by NMLinear in place, and say what it did."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from ..errors import ShapeError
from ..format import _pattern
from ..ir.problem import Pattern
from . import kernels
from .linear import NMLinear, _module_dtype, tensor_core_vector_problem


@dataclass
class SparsifyReport:
    """What `sparsify` did. Counts cover the replaced layers' weights and biases ("layers") and
    every distinct parameter and buffer of the model ("model"); bytes as stored (values and
    indices after, the dense weight before)."""
    pattern: Pattern
    replaced: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (name, why)
    layer_params_before: int = 0
    layer_params_after: int = 0        # kept weight values + biases
    layer_bytes_before: int = 0
    layer_bytes_after: int = 0         # values + indices + biases
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    def __str__(self) -> str:
        p = self.pattern
        lines = [f"nmgen.torch.sparsify: {p.n}:{p.m} V={p.vector} ({p.sparsity:.1%} sparse): {len(self.replaced)} "
                 f"layers replaced, {len(self.skipped)} skipped"]
        if self.replaced:
            lines.append(f"  replaced layers: {_mb(self.layer_bytes_before)} -> {_mb(self.layer_bytes_after)} "
                         f"({_ratio(self.layer_bytes_after, self.layer_bytes_before)}), parameters "
                         f"{self.layer_params_before:,} -> {self.layer_params_after:,}")
        lines.append(f"  model: {_mb(self.model_bytes_before)} -> {_mb(self.model_bytes_after)} "
                     f"({_ratio(self.model_bytes_after, self.model_bytes_before)})")
        for name in self.replaced:
            lines.append(f"  + {name}")
        for name, why in self.skipped:
            lines.append(f"  - {name}: {why}")
        return "\n".join(lines)


def _mb(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1%}" if b else "-"


def _matcher(spec, what: str):
    """A predicate (name, module) -> bool from None, a glob, a list of globs or a callable."""
    if spec is None:
        return None
    if callable(spec):
        return lambda name, mod: bool(spec(name, mod))
    globs = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(g, str) for g in globs):
        raise ShapeError(f"{what} must be a name glob ('*.q_proj'), a list of globs or a callable (name, module) -> "
                         f"bool, got {spec!r}")
    return lambda name, mod: any(fnmatch.fnmatchcase(name, g) for g in globs)


def _why_not(name: str, mod: nn.Linear, p: Pattern, dtype) -> str | None:
    """Why this Linear cannot become an NMLinear, or None."""
    if not name:
        return "the model itself is an nn.Linear: use NMLinear.from_linear(model, ...)"
    if type(mod) is not nn.Linear:
        return f"a subclass of nn.Linear ({type(mod).__name__}): its users may read .weight directly"
    K, N = mod.in_features, mod.out_features
    if K < p.m:
        return f"in_features={K} is smaller than the window m={p.m}"
    if K % p.m:
        return f"in_features={K} is not a multiple of m={p.m}"
    if N < p.vector:
        return f"out_features={N} is smaller than one vector (V={p.vector})"
    if mod.weight.device.type == "meta":
        return "its weight is on the meta device (no values to prune)"
    if dtype is None and kernels.dtype_name(mod.weight.dtype) is None:
        return f"its weight is {mod.weight.dtype}; pass dtype= (torch.float32, bfloat16 or float16)"
    return tensor_core_vector_problem(dtype or mod.weight.dtype, p)


def _tensor_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def sparsify(model: nn.Module, pattern, vector: int | None = None, *, include=None, exclude=None, dtype=None,
             allow_tf32: bool = False) -> SparsifyReport:
    """Replace every fitting nn.Linear in `model` (in place) by an NMLinear pruned to `pattern`
    ("n:m", (n, m) or a Pattern) with vectors of `vector` output features (default 1), by
    magnitude (NMLinear.from_linear). Returns a SparsifyReport (print it).

    A layer fits when it is a plain nn.Linear with in_features a multiple of m (at least m),
    out_features at least V, real (not meta) weights, and a float32 / bfloat16 / float16 weight
    (or `dtype` given); others are left as they are and listed with the reason.
    include / exclude: which layers to consider, by qualified name (model.named_modules()): a glob
    ("*.mlp.*", "lm_head"), a list of globs, or a callable (name, module) -> bool; default all,
    none excluded. dtype: the NMLinear layers' dtype (default: each layer's own).
    A Linear registered under several names is replaced by one NMLinear everywhere."""
    p = _pattern(pattern, vector)
    if dtype is not None:
        dtype = _module_dtype(dtype)
    inc, exc = _matcher(include, "include"), _matcher(exclude, "exclude")
    report = SparsifyReport(p, model_bytes_before=_tensor_bytes(model))
    chosen: dict[int, tuple[nn.Linear, list[str]]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if not isinstance(mod, nn.Linear):
            continue
        if id(mod) in chosen:
            chosen[id(mod)][1].append(name)
            continue
        if inc is not None and not inc(name, mod):
            continue            # not asked for: not reported either (models have many such layers)
        if exc is not None and exc(name, mod):
            report.skipped.append((name, "excluded"))
            continue
        why = _why_not(name, mod, p, dtype)
        if why:
            report.skipped.append((name, why))
            continue
        chosen[id(mod)] = (mod, [name])
    for key in list(chosen):        # one at a time, each dense layer dropped once replaced (peak memory)
        mod, names = chosen.pop(key)
        layer = NMLinear.from_linear(mod, p, mask=None, dtype=dtype, allow_tf32=allow_tf32)
        bias = 0 if mod.bias is None else mod.bias.numel()
        report.layer_params_before += mod.weight.numel() + bias
        report.layer_bytes_before += mod.weight.numel() * mod.weight.element_size() + bias * mod.weight.element_size()
        report.layer_params_after += layer.values.numel() + bias
        report.layer_bytes_after += layer.weight_nbytes() + bias * layer.values.element_size()
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            report.replaced.append(name)
    report.model_bytes_after = _tensor_bytes(model)
    return report


__all__ = ["SparsifyReport", "sparsify"]
