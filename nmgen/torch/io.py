"""Saving and loading a sparsified model as safetensors (tensors and a string header: no pickle).

The file holds the model's whole state_dict: every NMLinear's compressed weight (values, indices,
nm_config, bias) and every other tensor (embeddings, norms, dense layers). Its header metadata
says which modules are NMLinear and how:

    "format":        "nmgen.torch/1"
    "nmgen.layers":  JSON {qualified name: {"n", "m", "vector", "in_features", "out_features",
                                            "bias": bool, "dtype": "bf16"}}
    "nmgen.aliases": JSON {state_dict key: key it shares its tensor with} (tied weights, which
                     safetensors stores once)

Every layer field is required; an unknown field (or "nmgen.*" key), or a value of the wrong kind,
is refused as a damaged file or one from a newer nmgen, not ignored. save refuses user metadata
that would take one of these keys.

What the loader needs: the model's dense architecture, built the usual way (random or meta
weights: a model built under `torch.device("meta")` is loaded with assign=True, no memory spent
on the dense weights). `load` replaces each module the header names by an empty NMLinear of the
recorded pattern (an nn.Linear there is expected; an NMLinear already there must agree) and then
loads every tensor. Sparsifying the fresh model with the same pattern first also works. What the
file's header tells (layers, tensor names and shapes, nm_config) is checked against the model
before any tensor is loaded, and a failed load puts back every module it replaced: the model is
left as it was.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import NMGenError, ShapeError
from ..files import is_device, new_version, reading, writing
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


# the header keys save writes; user metadata may not take them (nor anything else under "nmgen.")
RESERVED = ("format", "nmgen.")
# every field of a layer's entry in "nmgen.layers", with what it must be
FIELDS = {"n": "a positive integer", "m": "a positive integer", "vector": "a positive integer",
          "in_features": "a positive integer", "out_features": "a positive integer", "bias": "true or false",
          "dtype": "one of " + ", ".join(repr(k) for k in TORCH_DTYPES)}
DAMAGED = "the file is damaged or was written by a newer nmgen"


def _shown(value) -> str:
    """' ' + repr(value) where it is short (a model's repr is pages long), else ''."""
    text = repr(value)
    return f" {text}" if len(text) <= 60 and "\n" not in text else ""


def _path(path, func: str) -> str:
    """`path` as a str; TypeError naming the argument for None or another non-path."""
    try:
        return os.fsdecode(path)
    except TypeError:
        raise TypeError(f"nmgen.torch.{func}: path must be a file name (str or os.PathLike), got "
                        f"{type(path).__name__}{_shown(path)}") from None


def save(model: nn.Module, path, *, metadata: dict[str, str] | None = None, overwrite: bool = False) -> None:
    """Write `model`'s state (NMLinear layers compressed) to `path` as safetensors, with the header
    described in this module's docstring (and `metadata`, strings, added to it). Tensors that share
    memory (tied weights) are stored once. An existing file is replaced only with overwrite=True,
    and then atomically: a failed save leaves it as it was.

    Raises TypeError for a model that is not an nn.Module, a path that is not a file name, or
    metadata that is not a dict; ShapeError for metadata that is not str -> str or takes one of
    nmgen's keys ("format", "nmgen.*") and a model with tensors on the meta device (no data);
    FileError (an OSError) for a path that exists (without overwrite=True) or cannot be written
    (naming the file and why)."""
    st = _safetensors()
    if not isinstance(model, nn.Module):
        raise TypeError(f"nmgen.torch.save needs the model (an nn.Module), got {type(model).__name__}: pass the "
                        f"model itself (its NMLinear layers are what the header records), not its state_dict")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"nmgen.torch.save: metadata must be a dict of str -> str, got {type(metadata).__name__}")
    extra = dict(metadata or {})
    for k, v in extra.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ShapeError(f"metadata[{k!r}] = {v!r} ({type(k).__name__} -> {type(v).__name__}): metadata must map "
                             f"str to str (the safetensors header holds text); convert it, e.g. with json.dumps")
        if k == RESERVED[0] or k.startswith(RESERVED[1]):
            raise ShapeError(f"metadata key {k!r} is nmgen's own (\"format\" and \"nmgen.*\" describe the layers "
                             f"to load): rename it, e.g. 'user.{k}'")
    path = _path(path, "save")
    with writing(path, _safetensors_errors(), overwrite=overwrite):
        tensors, aliases = _tensors_of(model)
        header = {**extra, "format": FORMAT, "nmgen.layers": json.dumps(layers_of(model)),
                  "nmgen.aliases": json.dumps(aliases)}
        target = os.path.realpath(path)    # through a symlink, as writing to `path` would
        if is_device(target):
            # a device or pipe (/dev/null) is written through: save_file would rename a file over it
            with open(target, "wb") as f:
                f.write(st.save(tensors, metadata=header))
        else:
            with new_version(target) as tmp:
                st.save_file(tensors, tmp, metadata=header)


def _tensors_of(model: nn.Module) -> tuple[dict, dict]:
    """The tensors to store ({name: tensor}, each storage once) and {alias: name} for tied ones."""
    tensors, aliases, seen, storages = {}, {}, {}, {}
    state = model.state_dict()
    odd = [k for k, t in state.items() if not isinstance(t, torch.Tensor)]
    if odd:
        raise ShapeError(f"the model's state_dict holds a {type(state[odd[0]]).__name__} at {odd[0]!r}, not a "
                         f"tensor (a module's get_extra_state?): safetensors stores tensors only")
    meta = [k for k, t in state.items() if t.is_meta]
    if meta:   # checked here: safetensors would fail with "Cannot copy out of meta tensor"
        raise ShapeError(f"{len(meta)} of the model's tensors are on the meta device, with no data ({meta[0]!r} "
                         f"first): load or initialise the weights (model.to_empty(device=...) then fill them) "
                         f"before saving")
    for name, t in state.items():
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
    return tensors, aliases


def read_header(path) -> dict[str, str]:
    """The safetensors header metadata of `path` (strings); {} if it has none. Raises TypeError for
    a path that is not a file name, FileError (an OSError) for a file that cannot be read,
    ShapeError for one that is not safetensors."""
    return _contents(_path(path, "read_header"))[0]


def _contents(path: str) -> tuple[dict[str, str], dict[str, list[int]], dict[str, list[int]]]:
    """What `path` holds, without reading its tensors' data: its header metadata, {name: shape} of
    every tensor, and the values of its (small) nm_config tensors."""
    _safetensors()
    from safetensors import safe_open
    with reading(path, WHAT, _safetensors_errors()), safe_open(path, framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        configs = {k: [int(v) for v in f.get_tensor(k).reshape(-1).tolist()] for k in shapes
                   if k.rpartition(".")[2] == "nm_config"}
        return dict(f.metadata() or {}), shapes, configs


def _device(device) -> str:
    """The `device` argument of load as the string safetensors reads to, checked first, so that a
    bad one is reported as the argument it is (not as a damaged file, or torch's pin_memory)."""
    if device is None:
        return "cpu"
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise TypeError(f"nmgen.torch.load: device must be a str, int or torch.device, got "
                        f"{type(device).__name__}{_shown(device)}")
    hint = "give 'cpu' (the default), 'cuda' or 'cuda:N', or a torch.device"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ShapeError(f"nmgen.torch.load: device={device!r} is not a device torch can use ({e}); {hint}") from None
    if dev.type == "meta":
        raise ShapeError(f"nmgen.torch.load: device={device!r} holds no data, so the file's tensors cannot be read "
                         f"there; to spend no memory on the dense weights build the model under "
                         f"torch.device('meta') and load with device='cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ShapeError(f"nmgen.torch.load: device={device!r} but CUDA is not available here "
                             f"(torch.cuda.is_available() is False); leave device=None to read to the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ShapeError(f"nmgen.torch.load: device={device!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s); {hint}")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        if not callable(getattr(backend, "is_available", None)) or not backend.is_available():
            raise ShapeError(f"nmgen.torch.load: device={device!r} is not available here; {hint}")
    return str(dev)


def load(model_or_factory, path, *, strict: bool = True, device=None) -> nn.Module:
    """Load a file written by `save` into a model and return it.

    model_or_factory: the model (its dense architecture; nn.Linear layers where the file has
    NMLinear ones are replaced in place), or a callable returning one. device: where the file's
    tensors are read to (default: CPU; load_state_dict then copies them to the model's device).
    strict: as in load_state_dict. Every recorded layer, and the names and shapes of the file's
    tensors, are checked against the model before any tensor is loaded; on any failure the modules
    replaced are put back and the model is left as it was.

    Raises TypeError for a model_or_factory that is neither an nn.Module nor a callable returning
    one, a path that is not a file name, or a device of another type; FileError (an OSError) for a
    file that cannot be read; ShapeError for a device that is not one torch has here (meta
    included), a file that was not written by `save`
    with this format or has a damaged header (a missing, unknown or invalid field, naming the layer
    and field), and a model that lacks a recorded layer or has it in another shape or pattern, or
    whose tensors do not match the file's (strict: names; always: shapes)."""
    st = _safetensors()
    # the arguments first, before a factory builds a model or the file is read
    if not isinstance(model_or_factory, nn.Module) and not callable(model_or_factory):
        raise TypeError(f"nmgen.torch.load(model_or_factory, path): model_or_factory must be an nn.Module or a "
                        f"callable returning one, got {type(model_or_factory).__name__}{_shown(model_or_factory)}")
    path = _path(path, "load")
    where = _device(device)
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise ShapeError(f"load needs an nn.Module or a callable returning one, got {type(model).__name__}")
    header, shapes, configs = _contents(path)
    if header.get("format") != FORMAT:
        raise ShapeError(f"{path} was not written by nmgen.torch.save (its header's format is "
                         f"{header.get('format')!r}, expected {FORMAT!r})")
    layers, aliases = _parsed(header, path)
    plan = _plan(model, layers, path)          # every layer checked against the model: nothing changed yet
    undo = _swap(model, plan)
    try:
        # what load_state_dict would refuse only after copying the other tensors in place
        _check_tensors(model, shapes, configs, aliases, strict, path)
        with reading(path, WHAT, _safetensors_errors()):
            state = st.load_file(path, device=where)
        for alias, original in aliases.items():
            state[alias] = state[original]
        on_meta = any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
        model.load_state_dict(state, strict=strict, assign=on_meta)
        if on_meta:
            _retie(model, aliases)
    except BaseException:
        undo()
        raise
    return model


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make each alias the same Parameter as its original again: load_state_dict(assign=True) wraps
    every assigned tensor in a Parameter of its own, so tied weights (an embedding and the output
    layer) would share memory but not identity, and come apart at the next .to()."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for alias, original in aliases.items():
        if alias in params and original in params and params[alias] is not params[original]:
            owner, _, leaf = alias.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, params[original])


def _parsed(header: dict[str, str], path: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The header's layers and aliases, every field checked: an entry nmgen does not know is
    refused, not ignored (a file from a newer nmgen may mean something this one cannot do)."""
    try:
        layers = json.loads(header["nmgen.layers"])
        aliases = json.loads(header.get("nmgen.aliases", "{}"))
    except (KeyError, ValueError) as e:
        raise ShapeError(f"{path}: its nmgen header is damaged ({type(e).__name__}: {e})") from None
    unknown = sorted(k for k in header if k.startswith("nmgen.") and k not in ("nmgen.layers", "nmgen.aliases"))
    if unknown:
        raise ShapeError(f"{path}: its header has the unknown nmgen field {unknown[0]!r} ({DAMAGED})")
    if not isinstance(layers, dict):
        raise ShapeError(f"{path}: its nmgen.layers is {type(layers).__name__}, not a JSON object ({DAMAGED})")
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in aliases.items()):
        raise ShapeError(f"{path}: its nmgen.aliases is not a JSON object of names ({DAMAGED})")
    for name, cfg in layers.items():
        if not isinstance(cfg, dict):
            raise ShapeError(f"{path}: layer {name!r} is recorded as {cfg!r}, not a JSON object ({DAMAGED})")
        missing = [f for f in FIELDS if f not in cfg]
        if missing:
            raise ShapeError(f"{path}: layer {name!r} lacks the field {missing[0]!r} ({DAMAGED})")
        extra = sorted(set(cfg) - set(FIELDS))
        if extra:
            raise ShapeError(f"{path}: layer {name!r} has the unknown field {extra[0]!r} ({DAMAGED})")
        for field, want in FIELDS.items():
            v = cfg[field]
            if field == "bias":
                ok = isinstance(v, bool)
            elif field == "dtype":
                ok = isinstance(v, str) and v in TORCH_DTYPES
            else:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
            if not ok:
                raise ShapeError(f"{path}: layer {name!r} has {field}={v!r}, expected {want} ({DAMAGED})")
    return layers, aliases


def _plan(model: nn.Module, layers: dict[str, dict], path: str) -> list[tuple[nn.Module, NMLinear]]:
    """[(module, the NMLinear to put in its place)] for every recorded layer, each checked against
    the model and built; an NMLinear already there that agrees is kept (no entry)."""
    plan, new = [], {}             # new: id(module) -> its NMLinear (a Linear recorded under two names)
    for name, cfg in layers.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ShapeError(f"{path} holds a sparse layer {name!r} that the model lacks: build the same "
                             f"architecture the file was saved from") from None
        mod = new.get(id(mod), mod)
        shape = (cfg["in_features"], cfg["out_features"])
        want = (cfg["n"], cfg["m"], cfg["vector"]) + shape
        if isinstance(mod, NMLinear):
            have = (mod.n, mod.m, mod.vector, mod.in_features, mod.out_features)
            if have != want:
                raise ShapeError(f"{name}: the model's NMLinear is {have[3]}->{have[4]} {have[0]}:{have[1]} "
                                 f"V={have[2]} but {path} holds {shape[0]}->{shape[1]} {want[0]}:{want[1]} V={want[2]}")
            continue
        if not isinstance(mod, nn.Linear) or (mod.in_features, mod.out_features) != shape:
            raise ShapeError(f"{name}: {path} holds an NMLinear {shape[0]}->{shape[1]} there, but the model has "
                             f"{type(mod).__name__}" + (f" {mod.in_features}->{mod.out_features}"
                                                        if isinstance(mod, nn.Linear) else ""))
        if mod is model:
            raise ShapeError(f"{path} holds a single NMLinear {shape[0]}->{shape[1]} and the model is that "
                             f"nn.Linear itself, which cannot be replaced in place: load into "
                             f"NMLinear({shape[0]}, {shape[1]}, \"{want[0]}:{want[1]}\", {want[2]}) instead")
        try:
            layer = NMLinear(shape[0], shape[1], (want[0], want[1]), want[2], bias=cfg["bias"],
                             dtype=TORCH_DTYPES[cfg["dtype"]], device=mod.weight.device)
        except NMGenError as e:
            raise ShapeError(f"{path}: layer {name!r}: {e} ({DAMAGED})") from None
        new[id(mod)] = layer
        plan.append((mod, layer))
    return plan


def _swap(model: nn.Module, plan: list[tuple[nn.Module, NMLinear]]):
    """Put each planned NMLinear in its module's place, under every name that module is registered
    under; returns a function that puts the originals back (the model exactly as it was)."""
    done = []
    replace = {id(mod): layer for mod, layer in plan}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if id(m) in replace and name:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            done.append((owner, child, m))
            setattr(owner, child, replace[id(m)])

    def undo():
        for owner, child, m in reversed(done):
            setattr(owner, child, m)
    return undo


def _check_tensors(model: nn.Module, shapes: dict[str, list[int]], configs: dict[str, list[int]],
                   aliases: dict[str, str], strict: bool, path: str) -> None:
    """The file's tensors against the (swapped) model, from the header alone: aliases of tensors
    the file has, the same names (strict), the same shapes, and each NMLinear's nm_config."""
    for alias, original in aliases.items():
        if original not in shapes:
            raise ShapeError(f"{path}: {alias} is recorded as sharing {original}, which the file lacks ({DAMAGED})")
    held = {**shapes, **{alias: shapes[original] for alias, original in aliases.items()}}
    ours = model.state_dict(keep_vars=True)
    if strict:
        missing = [k for k in ours if k not in held]
        unexpected = [k for k in held if k not in ours]
        why = []
        if missing:
            why.append(f"the model has {len(missing)} tensor(s) the file lacks ({', '.join(missing[:3])})")
        if unexpected:
            why.append(f"the file has {len(unexpected)} tensor(s) the model lacks ({', '.join(unexpected[:3])})")
        if why:
            why = "; ".join(why)
            raise ShapeError(f"{path} does not match the model: {why}; build the architecture the file was saved "
                             f"from, or pass strict=False")
    for k, t in ours.items():
        if k in held and list(t.shape) != held[k]:
            raise ShapeError(f"{path}: {k} is {tuple(held[k])} in the file but {tuple(t.shape)} in the model; build "
                             f"the architecture the file was saved from")
    for name, m in model.named_modules(remove_duplicate=False):
        key = f"{name}.nm_config" if name else "nm_config"
        theirs = configs.get(aliases.get(key, key))
        if isinstance(m, NMLinear) and theirs is not None and theirs != m.config():
            raise ShapeError(f"{path}: {key} holds {theirs} but its header records the layer as {m.config()} "
                             f"({DAMAGED})")


__all__ = ["layers_of", "load", "read_header", "save"]
