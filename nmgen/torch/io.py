"""Saving and loading a sparsified model as safetensors (tensors and a string header: no pickle).

The file holds the model's whole state_dict: every NMLinear's compressed weight (values, indices,
nm_config, bias) and every other tensor (embeddings, norms, dense layers). Its header metadata
says which modules are NMLinear and how:

    "format":        "nmgen.torch/1"
    "nmgen.layers":  JSON {qualified name: {"n", "m", "vector", "in_features", "out_features",
                                            "bias": bool, "dtype": "bf16"}}
    "nmgen.aliases": JSON {state_dict key: key it shares its tensor with} (tied weights, which
                     safetensors stores once)

What the loader needs: the model's dense architecture, built the usual way (random or meta
weights: a model built under `torch.device("meta")` is loaded with assign=True, no memory spent
on the dense weights). `load` replaces each module the header names by an empty NMLinear of the
recorded pattern (an nn.Linear there is expected; an NMLinear already there must agree) and then
loads every tensor. Sparsifying the fresh model with the same pattern first also works.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..errors import ShapeError
from ..files import reading, writing
from .kernels import dtype_name, TORCH_DTYPES
from .linear import NMLinear

FORMAT = "nmgen.torch/1"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:
        raise ImportError(f"nmgen.torch.save / load need safetensors: pip install safetensors ({e})") from None
    return st


def _safetensors_errors() -> tuple:
    """The exceptions safetensors raises for a malformed file or a failed write."""
    import safetensors
    return (safetensors.SafetensorError,)


WHAT = "a file written by nmgen.torch.save"


def layers_of(model: nn.Module) -> dict[str, dict]:
    """{name: config} of every NMLinear in `model` (what the file header records)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, NMLinear):
            out[name] = {"n": mod.n, "m": mod.m, "vector": mod.vector, "in_features": mod.in_features,
                         "out_features": mod.out_features, "bias": mod.bias is not None,
                         "dtype": dtype_name(mod.values.dtype)}
    return out


def save(model: nn.Module, path, *, metadata: dict[str, str] | None = None) -> None:
    """Write `model`'s state (NMLinear layers compressed) to `path` as safetensors, with the header
    described in this module's docstring (and `metadata`, strings, added to it). Tensors that share
    memory (tied weights) are stored once. Raises ShapeError for non-string metadata, or a path that
    cannot be written (naming the file and why)."""
    st = _safetensors()
    extra = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ShapeError("metadata must map strings to strings (the safetensors header holds text)")
    tensors, aliases, seen, storages = {}, {}, {}, {}
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        storage = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        if storage is not None and (storage in storages or not t.is_contiguous()
                                    or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone(memory_format=torch.contiguous_format)     # safetensors stores whole, unshared storages
        elif storage is not None:
            storages[storage] = name
        tensors[name] = t
    header = {**extra, "format": FORMAT, "nmgen.layers": json.dumps(layers_of(model)),
              "nmgen.aliases": json.dumps(aliases)}
    with writing(path, _safetensors_errors()):
        st.save_file(tensors, os.fspath(path), metadata=header)


def read_header(path) -> dict[str, str]:
    """The safetensors header metadata of `path` (strings); {} if it has none."""
    _safetensors()
    from safetensors import safe_open
    with reading(path, WHAT, _safetensors_errors()), safe_open(os.fspath(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load(model_or_factory, path, *, strict: bool = True, device=None) -> nn.Module:
    """Load a file written by `save` into a model and return it.

    model_or_factory: the model (its dense architecture; nn.Linear layers where the file has
    NMLinear ones are replaced in place), or a callable returning one. device: where the file's
    tensors are read to (default: CPU; load_state_dict then copies them to the model's device).
    strict: as in load_state_dict. Raises ShapeError when the file cannot be read, was not written by
    `save` with this format, or names a layer the model lacks or has in another shape or pattern."""
    st = _safetensors()
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise ShapeError(f"load needs an nn.Module or a callable returning one, got {type(model).__name__}")
    header = read_header(path)
    if header.get("format") != FORMAT:
        raise ShapeError(f"{path} was not written by nmgen.torch.save (its header's format is "
                         f"{header.get('format')!r}, expected {FORMAT!r})")
    try:
        layers = json.loads(header["nmgen.layers"])
        aliases = json.loads(header.get("nmgen.aliases", "{}"))
    except (KeyError, ValueError) as e:
        raise ShapeError(f"{path}: its nmgen header is damaged ({type(e).__name__}: {e})") from None
    for name, cfg in layers.items():
        _install(model, name, cfg, path)
    with reading(path, WHAT, _safetensors_errors()):
        state = st.load_file(os.fspath(path), device=str(device) if device is not None else "cpu")
    for alias, original in aliases.items():
        if original not in state:
            raise ShapeError(f"{path}: {alias} is recorded as sharing {original}, which the file lacks")
        state[alias] = state[original]
    on_meta = any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    model.load_state_dict(state, strict=strict, assign=on_meta)
    return model


def _install(model: nn.Module, name: str, cfg: dict, path) -> None:
    """Make module `name` an NMLinear of `cfg` (replacing an nn.Linear; checking an NMLinear)."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ShapeError(f"{path} holds a sparse layer {name!r} that the model lacks: build the same architecture "
                         f"the file was saved from") from None
    shape = (int(cfg["in_features"]), int(cfg["out_features"]))
    want = (int(cfg["n"]), int(cfg["m"]), int(cfg["vector"])) + shape
    if isinstance(mod, NMLinear):
        have = (mod.n, mod.m, mod.vector, mod.in_features, mod.out_features)
        if have != want:
            raise ShapeError(f"{name}: the model's NMLinear is {have[3]}->{have[4]} {have[0]}:{have[1]} V={have[2]} "
                             f"but {path} holds {shape[0]}->{shape[1]} {want[0]}:{want[1]} V={want[2]}")
        return
    if not isinstance(mod, nn.Linear) or (mod.in_features, mod.out_features) != shape:
        raise ShapeError(f"{name}: {path} holds an NMLinear {shape[0]}->{shape[1]} there, but the model has "
                         f"{type(mod).__name__}" + (f" {mod.in_features}->{mod.out_features}"
                                                    if isinstance(mod, nn.Linear) else ""))
    dtype = TORCH_DTYPES.get(cfg.get("dtype"), mod.weight.dtype)
    layer = NMLinear(shape[0], shape[1], (want[0], want[1]), want[2], bias=bool(cfg.get("bias", True)), dtype=dtype,
                     device=mod.weight.device)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)
    # every other name the same Linear is registered under gets the same layer
    for other, m in model.named_modules(remove_duplicate=False):
        if m is mod:
            p, _, c = other.rpartition(".")
            setattr(model.get_submodule(p) if p else model, c, layer)


__all__ = ["layers_of", "load", "read_header", "save"]
