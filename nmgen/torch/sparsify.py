"""sparsify: replace a model's nn.Linear layers by NMLinear in place, and say what it did."""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..errors import ShapeError
from ..format import _pattern
from ..ir.problem import Pattern
from . import kernels
from .linear import NMLinear, _module_dtype, check_weight, tensor_core_vector_problem


@dataclass
class SparsifyReport:
    """What `sparsify` did. Counts cover the replaced layers' weights and biases ("layers") and
    every distinct parameter and buffer of the model ("model"); bytes as stored (values and
    indices after, the dense weight before)."""
    pattern: Pattern
    replaced: list[str] = field(default_factory=list)                # qualified names (a shared layer: each)
    replaced_layers: int = 0                                         # distinct modules replaced
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (name, why)
    layer_params_before: int = 0
    layer_params_after: int = 0        # kept weight values + biases
    layer_bytes_before: int = 0
    layer_bytes_after: int = 0         # values + indices + biases
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    def __str__(self) -> str:
        p = self.pattern
        names = "" if len(self.replaced) == self.replaced_layers else f" (under {len(self.replaced)} names)"
        lines = [f"nmgen.torch.sparsify: {p.n}:{p.m} V={p.vector} ({p.sparsity:.1%} sparse): "
                 f"{_count(self.replaced_layers, 'layer')} replaced{names}, {len(self.skipped)} skipped"]
        if self.replaced:
            lines.append(f"  replaced layers: {_size(self.layer_bytes_before)} -> {_size(self.layer_bytes_after)} "
                         f"({_ratio(self.layer_bytes_after, self.layer_bytes_before)}), parameters "
                         f"{self.layer_params_before:,} -> {self.layer_params_after:,}")
        lines.append(f"  model: {_size(self.model_bytes_before)} -> {_size(self.model_bytes_after)} "
                     f"({_ratio(self.model_bytes_after, self.model_bytes_before)})")
        for name in self.replaced:
            lines.append(f"  + {name}")
        for name, why in self.skipped:
            lines.append(f"  - {name}: {why}")
        return "\n".join(lines)


def _size(b: int) -> str:
    """Bytes in the largest binary unit that keeps the figure >= 1 (a small model is not "0.0 MiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:,.1f} {unit}"
    return f"{b} B"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1%} of before" if b else "-"


def _count(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


def _matcher(spec, what: str):
    """A predicate (name, module) -> bool from None, a glob, a list of globs or a callable, and the
    globs (to check each matches something). A glob matches a module's qualified name or the name
    of a module it lies under ("encoder" takes every layer of model.encoder)."""
    if spec is None:
        return None, []
    if callable(spec) and not isinstance(spec, str):
        try:
            inspect.signature(spec).bind("name", None)
        except TypeError:
            raise ShapeError(f"{what}={spec!r} must take two arguments (name, module) and return a bool") from None
        except ValueError:      # a builtin without a signature: called as it is
            pass
        def call(name, mod):
            answer = spec(name, mod)
            if not isinstance(answer, (bool, np.bool_)):
                raise ShapeError(f"{what}({name!r}, module) returned {answer!r} ({type(answer).__name__}); it must "
                                 f"return True or False")
            return bool(answer)
        return call, []
    globs = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple, set, frozenset)) else None
    if globs is not None and (not globs or "" in globs):
        raise ShapeError(f"{what}={spec!r} names no module: give globs of qualified names ('*.q_proj'), or leave "
                         f"{what} out (None) for {'every layer' if what == 'include' else 'none'}")
    if globs is None or not all(isinstance(g, str) for g in globs):
        raise ShapeError(f"{what} must be a name glob ('*.q_proj'), a list of globs or a callable (name, module) -> "
                         f"bool, got {spec!r} ({type(spec).__name__}); globs are fnmatch patterns, not regular "
                         f"expressions")
    return (lambda name, mod: any(fnmatch.fnmatchcase(prefix, g) for prefix in _prefixes(name) for g in globs)), globs


def _prefixes(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b", "a.b.c"]: the module and the modules it lies under."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _check_globs_match(globs: list[str], what: str, names: list[str]) -> None:
    """ShapeError for a glob that matches no module of the model (a typo would otherwise sparsify
    nothing, or everything, without a word)."""
    unmatched = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
    if unmatched:
        some = [n for n in names if n][:6]
        raise ShapeError(f"{what}: {', '.join(repr(g) for g in unmatched)} matches no module of the model (globs "
                         f"are fnmatch patterns over qualified names, e.g. '*.q_proj'; the model's modules include "
                         f"{', '.join(some)}{', ...' if len(names) > 7 else ''}); nothing was changed")


def _why_not(name: str, mod: nn.Linear, p: Pattern, dtype, tied: str | None) -> str | None:
    """Why this Linear cannot become an NMLinear, or None. `tied`: another name of its weight
    outside this Linear (a weight tied to an embedding, say), or None."""
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
        return f"out_features={N} is smaller than one vector (V={p.vector}): too small to gain"
    if mod.weight.device.type == "meta":
        return "its weight is on the meta device (no values to prune)"
    if tied:
        return (f"its weight is tied to {tied}: the other user keeps the dense tensor, so a compressed copy would "
                f"add memory, not save it")
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
    ("*.mlp.*", "lm_head"; it also takes every layer under a module it names: "layers.0"), a list
    of globs, or a callable (name, module) -> bool; default all, none excluded. A glob that
    matches no module raises ShapeError. dtype: the NMLinear layers' dtype (default: each
    layer's own).
    A Linear registered under several names is replaced by one NMLinear everywhere; one whose
    weight is tied to another module's (an embedding) is skipped; NMLinear layers already there
    are listed as skipped.

    Raises ShapeError / PatternError for a bad pattern, dtype or include/exclude, and ShapeError
    naming the layer when a chosen layer's weight holds NaN or infinity or values beyond the
    dtype's range: every chosen weight is checked before any layer is replaced, so the model is
    then left as it was."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify takes the model (an nn.Module), got {type(model).__name__}: it replaces the "
                        f"model's nn.Linear modules in place")
    p = _pattern(pattern, vector)
    if dtype is not None:
        dtype = _module_dtype(dtype)
    (inc, inc_globs), (exc, exc_globs) = _matcher(include, "include"), _matcher(exclude, "exclude")
    modules = list(model.named_modules(remove_duplicate=False))
    names = [name for name, _ in modules]
    _check_globs_match(inc_globs, "include", names)
    _check_globs_match(exc_globs, "exclude", names)
    aliases: dict[int, list[str]] = {}          # id(module) -> its qualified names
    for name, mod in modules:
        aliases.setdefault(id(mod), []).append(name)
    weight_names: dict[int, list[str]] = {}
    for pname, t in model.named_parameters(remove_duplicate=False):
        weight_names.setdefault(id(t), []).append(pname)
    report = SparsifyReport(p, model_bytes_before=_tensor_bytes(model))
    chosen: dict[int, tuple[nn.Linear, list[str]]] = {}
    for name, mod in modules:
        if isinstance(mod, NMLinear):
            if inc is None or inc(name, mod):
                report.skipped.append((name, f"already an NMLinear ({mod.n}:{mod.m} V={mod.vector})"))
            continue
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
        own = {f"{a}.weight" if a else "weight" for a in aliases[id(mod)]}
        tied = [w for w in weight_names.get(id(mod.weight), []) if w not in own]
        why = _why_not(name, mod, p, dtype, tied[0] if tied else None)
        if why:
            report.skipped.append((name, why))
            continue
        chosen[id(mod)] = (mod, [name])
    # every weight checked before any layer is replaced: a refusal leaves the model as it was
    for mod, names_of in chosen.values():
        try:
            check_weight(mod.weight, dtype or mod.weight.dtype)
            if mod.bias is not None:
                check_weight(mod.bias[None], dtype or mod.weight.dtype, "the bias")
        except ShapeError as e:
            raise ShapeError(f"sparsify: layer {names_of[0]!r}: {e}; nothing was replaced (exclude the layer, "
                             f"or fix its weights)") from None
    for key in list(chosen):        # one at a time, each dense layer dropped once replaced (peak memory)
        mod, names_of = chosen.pop(key)
        try:
            layer = NMLinear.from_linear(mod, p, mask=None, dtype=dtype, allow_tf32=allow_tf32)
        except Exception as e:   # e.g. out of memory after the checks: say where it stopped
            e.add_note(f"nmgen.torch.sparsify stopped at layer {names_of[0]!r}; replaced before it: "
                       f"{', '.join(report.replaced) or 'none'}")
            raise
        bias = 0 if mod.bias is None else mod.bias.numel()
        report.layer_params_before += mod.weight.numel() + bias
        report.layer_bytes_before += mod.weight.numel() * mod.weight.element_size() + bias * mod.weight.element_size()
        report.layer_params_after += layer.values.numel() + bias
        report.layer_bytes_after += layer.weight_nbytes() + bias * layer.values.element_size()
        report.replaced_layers += 1
        for name in names_of:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            report.replaced.append(name)
    report.model_bytes_after = _tensor_bytes(model)
    return report


__all__ = ["SparsifyReport", "sparsify"]
