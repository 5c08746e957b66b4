"""nmgen.torch.save / load / read_header (nmgen/torch/io.py) on the CPU with torch (skipped, saying
so, where it is absent): a failed load leaves the model as it was; save replaces an existing file
only with overwrite=True, atomically, and writes a pipe through; wrong arguments, metadata that
collides with nmgen's header and damaged headers are one clear error each. The round trips
themselves are in tests/test_torch.py."""
import json
import os
import stat

import pytest

from nmgen import FileError, ShapeError

# tests/test_torch.py's idiom (pytest.importorskip at module level) skips the whole module, which alone exits 5
# ("no tests collected"); a skip mark on every test says the same and exits 0
try:
    import torch
    import safetensors
except ImportError as e:
    MISSING = (f"{e.name or 'torch'} is not installed (pip install -e '.[torch]'): nmgen.torch's "
               f"save / load tests need torch and safetensors")
else:
    MISSING = None
    nn = torch.nn
    import nmgen.torch as nmt
    from nmgen.torch.linear import NMLinear
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

DAMAGED = r"\(the file is damaged or was written by a newer nmgen\)"


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def shared(norm=16, extra=0):
    """Two 16->16 layers, one registered under two names, a norm, and `extra` more modules."""
    model = nn.Module()
    model.a = nn.Linear(16, 16)
    model.b = model.a
    model.c = nn.Linear(16, 16)
    model.norm = nn.LayerNorm(norm)
    model.more = nn.ModuleList(nn.Linear(16, 3) for _ in range(extra))
    return model


def sparse(model):
    nmt.sparsify(model, "2:4", 4)
    return model


def saved(tmp_path, model=None, name="m.safetensors"):
    path = tmp_path / name
    nmt.save(sparse(model if model is not None else shared()), path)
    return path


def rewrite(path, layers=None, header=None, tensors=None):
    """Write `path` again with its header, its "nmgen.layers" or its tensors changed by the functions given."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if layers:
        entries = json.loads(meta["nmgen.layers"])
        layers(entries)
        meta["nmgen.layers"] = json.dumps(entries)
    if header:
        header(meta)
    if tensors:
        tensors(state)
    os.unlink(path)
    save_file(state, str(path), metadata=meta)


def snapshot(model):
    return (list(model.named_modules(remove_duplicate=False)),
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model, before):
    modules, state = before
    assert [(n, id(m)) for n, m in model.named_modules(remove_duplicate=False)] == [(n, id(m)) for n, m in modules]
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert now[k].dtype == state[k].dtype and torch.equal(now[k], state[k]), k


# ---- a failed load changes nothing ----------------------------------------------------------------------------
def _nm_config_changed(state):
    state["c.nm_config"] = state["c.nm_config"].clone()
    state["c.nm_config"][1] = 1                                  # 1:4 where the header says 2:4


def _pair(out=16):
    return nn.Sequential(nn.Linear(16, 16), nn.Linear(16, out))


@pytest.mark.parametrize("source,target,strict,damage,match", [
    # a recorded layer the model has in another shape: found before any module is replaced
    (_pair, lambda: _pair(12), True, None,
     r"^1: .*m\.safetensors holds an NMLinear 16->16 there, but the model has Linear 16->12$"),
    # the layers fit, the dense tensors do not: found from the file's header before load_state_dict copies
    (shared, lambda: shared(extra=1), True, None,
     r"m\.safetensors does not match the model: the model has 2 tensor\(s\) the file lacks \(more\.0\.weight, "
     r"more\.0\.bias\); build the architecture .* or pass strict=False$"),
    (shared, lambda: shared(norm=12), False, None,
     r"m\.safetensors: norm\.weight is \(16,\) in the file but \(12,\) in the model"),
    # the header and an nm_config tensor disagree
    (shared, shared, True, _nm_config_changed,
     r"m\.safetensors: c\.nm_config holds \[.*\] but its header records the layer as \[.*\] " + DAMAGED),
], ids=["layer", "missing-tensors", "tensor-shape", "nm_config"])
def test_a_failed_load_leaves_the_model_as_it_was(tmp_path, source, target, strict, damage, match):
    path = saved(tmp_path, source())
    if damage:
        rewrite(path, tensors=damage)
    model = target()
    before = snapshot(model)
    with pytest.raises(ShapeError, match=match):
        nmt.load(model, path, strict=strict)
    assert_unchanged(model, before)
    assert not any(isinstance(m, NMLinear) for m in model.modules())


def test_a_failed_load_into_a_meta_skeleton_leaves_it_as_it_was(tmp_path):
    path = saved(tmp_path)
    with torch.device("meta"):
        skeleton = shared(extra=1)
    before = list(skeleton.named_modules(remove_duplicate=False))
    with pytest.raises(ShapeError, match="the model has 2 tensor"):
        nmt.load(skeleton, path)
    assert [(n, id(m)) for n, m in skeleton.named_modules(remove_duplicate=False)] == [(n, id(m)) for n, m in before]
    assert skeleton.a is skeleton.b and type(skeleton.a) is nn.Linear and skeleton.a.weight.is_meta
    loaded = nmt.load(shared(), path)                    # the right architecture still loads, sharing kept
    assert isinstance(loaded.a, NMLinear) and loaded.a is loaded.b


# ---- overwriting ----------------------------------------------------------------------------------------------
def test_save_replaces_an_existing_file_only_with_overwrite(tmp_path):
    path = saved(tmp_path)
    first = path.read_bytes()
    other = sparse(shared())
    with pytest.raises(FileError, match=f"^{path} already exists; pass overwrite=True to replace it, or give another "
                                         f"file$"):
        nmt.save(other, path)
    assert path.read_bytes() == first
    os.chmod(path, 0o640)
    nmt.save(other, path, overwrite=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640             # a replaced file keeps its permissions
    assert os.listdir(tmp_path) == ["m.safetensors"]
    loaded = nmt.load(shared(), path)
    assert torch.equal(loaded.c.values, other.c.values)


def test_a_new_file_gets_the_umasks_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = saved(tmp_path)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644              # not the owner-only 0600 of a temporary file


def test_a_failed_overwrite_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import safetensors.torch as st
    path = saved(tmp_path)
    first = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a fi")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(st, "save_file", fail)
    with pytest.raises(FileError, match=r"cannot write .*m\.safetensors: Error while serializing: .*No space left"):
        nmt.save(sparse(shared()), path, overwrite=True)
    assert path.read_bytes() == first and os.listdir(tmp_path) == ["m.safetensors"]   # no temporary file left


def test_save_writes_through_a_pipe_instead_of_replacing_it(tmp_path):
    from safetensors.torch import load as from_bytes
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)       # a reader, so that opening it to write does not block
    try:
        nmt.save(nn.Linear(4, 2), fifo)                       # not a regular file: no overwrite=True needed
        data = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(from_bytes(data)) == ["bias", "weight"]


# ---- arguments --------------------------------------------------------------------------------------------------
def test_wrong_arguments_are_one_clear_error_each(tmp_path):
    path = tmp_path / "m.safetensors"
    model = sparse(shared())
    with pytest.raises(TypeError, match=r"^nmgen\.torch\.save: path must be a file name \(str or os\.PathLike\), "
                                        r"got NoneType None$"):
        nmt.save(model, None)
    with pytest.raises(TypeError, match=r"^nmgen\.torch\.save needs the model \(an nn\.Module\), got dict: pass the "
                                        r"model itself .*not its state_dict$"):
        nmt.save(dict(model.state_dict()), path)
    with torch.device("meta"):
        skeleton = shared()
    with pytest.raises(ShapeError, match=r"^8 of the model's tensors are on the meta device, with no data "
                                         r"\('a\.weight' first\): load or initialise the weights"):
        nmt.save(skeleton, path)
    assert not path.exists()
    nmt.save(model, path)
    for call, name in ((lambda: nmt.load(shared(), None), "load"), (lambda: nmt.io.read_header(None), "read_header")):
        with pytest.raises(TypeError, match=rf"^nmgen\.torch\.{name}: path must be a file name .*got NoneType None$"):
            call()
    with pytest.raises(TypeError, match=r"model_or_factory must be an nn\.Module or a callable returning one, got "
                                        r"PosixPath"):
        nmt.load(path, shared())                              # the arguments swapped


@pytest.mark.parametrize("device,error,match", [
    ("xyz", ShapeError, r"^nmgen\.torch\.load: device='xyz' is not a device torch can use \(.*\); give 'cpu'"),
    ("meta", ShapeError, r"^nmgen\.torch\.load: device='meta' holds no data, .*build the model under "
                         r"torch\.device\('meta'\)"),
    ("cuda", ShapeError, r"^nmgen\.torch\.load: device='cuda' but CUDA is not available here .*leave device=None"),
    (1.5, TypeError, r"^nmgen\.torch\.load: device must be a str, int or torch\.device, got float 1\.5$"),
])
def test_load_checks_the_device_argument_first(tmp_path, monkeypatch, device, error, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = saved(tmp_path)
    model = shared()
    before = snapshot(model)
    for where in (path, tmp_path / "missing.safetensors"):   # the argument is reported, not the file
        with pytest.raises(error, match=match):
            nmt.load(model, where, device=device)
    assert_unchanged(model, before)
    assert isinstance(nmt.load(shared(), path, device=torch.device("cpu")).c, NMLinear)


@pytest.mark.parametrize("metadata,error,match", [
    ({"format": "pt"}, ShapeError, r"^metadata key 'format' is nmgen's own .*rename it, e\.g\. 'user\.format'$"),
    ({"nmgen.layers": "{}"}, ShapeError, r"^metadata key 'nmgen\.layers' is nmgen's own"),
    ({"nmgen.mine": "x"}, ShapeError, r"^metadata key 'nmgen\.mine' is nmgen's own"),
    ({"step": 1000}, ShapeError, r"^metadata\['step'\] = 1000 \(str -> int\): metadata must map str to str"),
    ({1: "x"}, ShapeError, r"^metadata\[1\] = 'x' \(int -> str\): metadata must map str to str"),
    ([("a", "b")], TypeError, r"^nmgen\.torch\.save: metadata must be a dict of str -> str, got list$"),
])
def test_save_refuses_metadata_it_would_lose_or_cannot_store(tmp_path, metadata, error, match):
    path = tmp_path / "m.safetensors"
    with pytest.raises(error, match=match):
        nmt.save(sparse(shared()), path, metadata=metadata)
    assert not path.exists()


# ---- damaged or newer headers -------------------------------------------------------------------------------
def _set(field, value):
    def change(layers):
        layers["c"][field] = value
    return change


def _drop(field):
    def change(layers):
        del layers["c"][field]
    return change


@pytest.mark.parametrize("layers,header,match", [
    (_set("dtype", "f64"), None, r"layer 'c' has dtype='f64', expected one of 'f32', 'bf16', 'f16' "),
    (_set("n", "2"), None, r"layer 'c' has n='2', expected a positive integer "),
    (_set("n", True), None, r"layer 'c' has n=True, expected a positive integer "),
    (_set("vector", 0), None, r"layer 'c' has vector=0, expected a positive integer "),
    (_set("bias", "yes"), None, r"layer 'c' has bias='yes', expected true or false "),
    (_set("n", 5), None, r"layer 'c': .*5.*4.* "),                     # 5:4, which NMLinear refuses
    (_set("scale", 0.5), None, r"layer 'c' has the unknown field 'scale' "),
    (_drop("n"), None, r"layer 'c' lacks the field 'n' "),
    (None, lambda h: h.update({"nmgen.future": "1"}), r"its header has the unknown nmgen field 'nmgen\.future' "),
    (None, lambda h: h.update({"nmgen.layers": "[]"}), r"its nmgen\.layers is list, not a JSON object "),
])
def test_load_refuses_a_header_field_it_does_not_know(tmp_path, layers, header, match):
    path = saved(tmp_path)
    rewrite(path, layers=layers, header=header)
    model = shared()
    before = snapshot(model)
    with pytest.raises(ShapeError, match=r"m\.safetensors: " + match + DAMAGED + "$"):
        nmt.load(model, path)
    assert_unchanged(model, before)


def test_a_meta_skeleton_gets_its_tied_weights_back_tied(tmp_path):
    """load_state_dict(assign=True) wraps each tensor in a Parameter of its own: an embedding and
    an output layer tied in the saved model must come back as one Parameter, not two that merely
    share memory (a later .to() would split them, doubling the embedding)."""
    def build():
        model = nn.Module()
        model.emb = nn.Embedding(32, 16)
        model.body = nn.Linear(16, 16)
        model.head = nn.Linear(16, 32, bias=False)
        model.head.weight = model.emb.weight
        return model

    model = build()
    nmt.sparsify(model, "2:4", 4)
    path = tmp_path / "tied.safetensors"
    nmt.save(model, path)
    for make in (build, lambda: build().to("meta")):
        loaded = nmt.load(make, path)
        assert loaded.head.weight is loaded.emb.weight and not loaded.emb.weight.is_meta
        assert torch.equal(loaded.emb.weight, model.emb.weight) and isinstance(loaded.body, NMLinear)
