"""nmgen.torch on the CPU with torch (skipped, saying so, where it is absent; the install message
without torch is tests/test_torch_install.py): NMLinear from a Linear and its mask checks,
state_dict and safetensors round trips, sparsify's report, the fake (meta) kernel, tracing with
torch.export(strict) as torch.compile(fullgraph=True) does, and the launch path itself on an
emulated GPU (tests/fake_torch_gpu.py: the kernels run in nmgen's interpreter on CPU tensors),
opcheck, torch.compile and a tiny LLaMA included."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- with torch ----------------------------------------------------------------------------------------
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]'): nmgen.torch's "
                                            "CPU tests need it")
nn = torch.nn
nmt = pytest.importorskip("nmgen.torch")
from nmgen import FileError, NMMatrix, PatternError, ShapeError  # noqa: E402
from nmgen.torch import kernels  # noqa: E402
from nmgen.torch.linear import NMLinear  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def linear(in_f, out_f, bias=True, dtype=torch.float32):
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


# ---- NMLinear from a Linear -------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern,V", [("2:8", 4), ("8:32", 32), ("1:4", 1)])
def test_from_linear_prunes_by_magnitude(pattern, V):
    import nmgen
    lin = linear(64, 40)
    layer = NMLinear.from_linear(lin, pattern, V)
    W = lin.weight.detach()
    expect = torch.from_numpy(nmgen.prune(W.numpy().T, pattern, V).T.copy())
    assert torch.equal(layer.to_dense(), expect)
    assert torch.equal(layer.bias, lin.bias.detach()) and not layer.bias.requires_grad
    assert layer.values.shape == (64 // int(pattern.split(":")[1]) * int(pattern.split(":")[0]), 40)
    assert layer.indices.dtype == torch.uint8 and layer.dtype == torch.float32


@pytest.mark.parametrize("pattern,V,out_f", [("2:8", 4, 42), ("8:32", 32, 70), ("3:4", 1, 5)])
def test_torch_pruning_is_nmgen_prune_with_ties(pattern, V, out_f):
    """Small integer weights tie often (and whole rows are zero): the kept rows are nmgen.prune's,
    ties to the lower row; outputs that are no multiple of V form a partial last vector."""
    import nmgen
    lin = linear(64, out_f)
    with torch.no_grad():
        lin.weight.copy_(torch.randint(-2, 3, lin.weight.shape).float())
        lin.weight[:, 8:16] = 0
    layer = NMLinear.from_linear(lin, pattern, V)
    expect = nmgen.compress(nmgen.prune(lin.weight.detach().numpy().T, pattern, V), pattern, V)
    assert torch.equal(layer.to_dense(), torch.from_numpy(expect.to_dense().T.copy()))
    assert np.array_equal(layer.indices.numpy(), expect.indices)


def test_from_linear_with_a_mask_keeps_exactly_the_mask():
    lin = linear(16, 12, bias=False)
    mask = torch.zeros(12, 16, dtype=torch.bool)
    mask[:, [1, 6, 8, 15]] = True           # 2 of every window of 8 inputs, the same for every output
    mask[4:8, 1] = False                    # a group of V=4 outputs may keep fewer
    layer = NMLinear.from_linear(lin, "2:8", 4, mask=mask)
    assert layer.bias is None
    assert torch.equal(layer.to_dense(), lin.weight.detach() * mask)


def test_mask_errors_say_what_is_wrong():
    lin = linear(16, 12)
    bad = torch.zeros(12, 16, dtype=torch.bool)
    bad[0, 8:11] = True                     # 3 kept in window 1 for outputs 0..3
    with pytest.raises(PatternError, match=r"output features 0..3 keep 3 of the input features 8..15 \(window 1\)"):
        NMLinear.from_linear(lin, "2:8", 4, mask=bad)
    split = torch.zeros(12, 16, dtype=torch.bool)
    split[4, 0] = split[5, 1] = split[6, 2] = True     # 1 row each, but 3 in the group of outputs 4..7
    with pytest.raises(PatternError, match="output features 4..7 keep 3"):
        NMLinear.from_linear(lin, "2:8", 4, mask=split)
    with pytest.raises(ShapeError, match=r"mask has shape \(16, 12\) but the weight is \(12, 16\)"):
        NMLinear.from_linear(lin, "2:8", 4, mask=torch.ones(16, 12, dtype=torch.bool))
    with pytest.raises(ShapeError, match="mask must be boolean"):
        NMLinear.from_linear(lin, "2:8", 4, mask=torch.ones(12, 16))


def test_from_linear_errors():
    with pytest.raises(ShapeError, match="in_features=20 is not a multiple of the pattern window m=8"):
        NMLinear.from_linear(linear(20, 8), "2:8", 4)
    with pytest.raises(ShapeError, match="not torch.float64: pass dtype=torch.float32"):
        NMLinear.from_linear(linear(16, 8, dtype=torch.float64), "2:8", 4)
    with pytest.raises(ShapeError, match="tensor cores, whose 8-column tiles need V a multiple of 8, got V=4"):
        NMLinear.from_linear(linear(16, 8), "2:8", 4, dtype=torch.bfloat16)
    with pytest.raises(ShapeError, match="takes a torch.nn.Linear"):
        NMLinear.from_linear(nn.Conv1d(4, 4, 1), "2:8", 4)
    with pytest.raises(PatternError):
        NMLinear.from_linear(linear(16, 8), "9:8", 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bf16", "f16", torch.float32])
def test_dtype_conversion_rounds_the_kept_values(dtype):
    lin = linear(32, 16)
    layer = NMLinear.from_linear(lin, "8:32", 8, dtype=dtype)
    want = kernels.TORCH_DTYPES[{"bf16": "bf16", "f16": "f16"}.get(dtype, None)] if isinstance(dtype, str) else dtype
    assert layer.dtype == want and layer.bias.dtype == want
    ref = NMLinear.from_linear(lin, "8:32", 8).to_dense().to(want)
    assert torch.equal(layer.to_dense(), ref)


def test_extra_repr():
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8, dtype=torch.bfloat16)
    text = repr(layer)
    for part in ("in_features=64", "out_features=40", "pattern=8:32", "V=8", "sparsity=75.0%", "dtype=bfloat16",
                 "bias=True"):
        assert part in text, text


def test_forward_refuses_with_a_reason():
    layer = NMLinear.from_linear(linear(16, 8), "2:8", 4)
    with pytest.raises(RuntimeError, match=r"NMLinear is inference-only; wrap the call in torch.no_grad\(\) / "
                                           r"torch.inference_mode\(\)"):
        layer(torch.randn(2, 16, requires_grad=True))
    with torch.no_grad(), pytest.raises(ShapeError, match="NMLinear runs on CUDA tensors, got an input on cpu"):
        layer(torch.randn(2, 16, requires_grad=True))
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    layer_cuda = _fake_cuda(layer, mode)
    with mode:      # traced: the op's fake kernel says it (torch._check's RuntimeError)
        with pytest.raises(RuntimeError, match=r"a holds torch.float16 but the weight torch.float32: convert the "
                                               r"input \(x.to\(torch.float32\)\)"):
            layer_cuda(torch.empty(2, 16, dtype=torch.float16, device="cuda"))
        with pytest.raises(RuntimeError, match=r"a has 8 columns but the weight has K=16 rows \(in_features\): the "
                                               r"input's last dimension must be 16"):
            layer_cuda(torch.empty(2, 8, device="cuda"))
    with pytest.raises(ShapeError, match="NMLinear runs on CUDA tensors"):
        layer(torch.empty(2, 8))                                  # eager: NMLinear's own words


# ---- state ---------------------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8, dtype=torch.float16)
    sd = layer.state_dict()
    assert set(sd) == {"values", "indices", "nm_config", "bias"}
    assert sd["values"].shape == (16, 40) and sd["values"].dtype == torch.float16
    assert sd["indices"].shape == (16, 5) and sd["indices"].dtype == torch.uint8
    assert sd["nm_config"].tolist() == [1, 8, 32, 8, 64, 40]
    empty = NMLinear(64, 40, "8:32", 8, dtype=torch.float16)
    assert not torch.equal(empty.to_dense(), layer.to_dense())
    empty.load_state_dict(sd)
    assert torch.equal(empty.to_dense(), layer.to_dense()) and torch.equal(empty.bias, layer.bias)
    other = NMLinear(64, 40, "4:32", 8, dtype=torch.float16)
    with pytest.raises(ShapeError, match="the state holds an NMLinear 64->40 8:32 V=8 .* but this module is "
                                         "64->40 4:32 V=8"):
        other.load_state_dict(sd)


def test_to_nmmatrix_and_from_matrix():
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8)
    B = layer.to_nmmatrix()
    assert isinstance(B, NMMatrix) and B.shape == (64, 40)
    assert np.array_equal(B.to_dense(), layer.to_dense().numpy().T)
    again = NMLinear.from_matrix(B.astype("bf16"), bias=layer.bias)
    assert again.dtype == torch.bfloat16 and again.bias.dtype == torch.bfloat16 and again.vector == 8
    assert torch.equal(again.to_dense(), layer.to_dense().to(torch.bfloat16))


# ---- sparsify ------------------------------------------------------------------------------------------------
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64, bias=False)
        self.tiny = nn.Linear(16, 64)           # in_features < m
        self.odd = nn.Linear(72, 64)            # not a multiple of m
        self.narrow = nn.Linear(64, 4)          # fewer outputs than one vector
        self.head = nn.Linear(64, 96)
        self.attn = nn.MultiheadAttention(64, 2)   # out_proj: a subclass of Linear
        self.shared = self.up                   # one Linear under two names


def test_sparsify_replaces_what_fits_and_says_why_not():
    model = Small()
    up_dense = NMLinear.from_linear(model.up, "8:32", 8).to_dense()
    report = nmt.sparsify(model, "8:32", 8, exclude="head")
    assert isinstance(model.up, NMLinear) and model.shared is model.up and isinstance(model.down, NMLinear)
    assert torch.equal(model.up.to_dense(), up_dense)
    assert sorted(report.replaced) == ["down", "shared", "up"]
    why = dict(report.skipped)
    assert why["tiny"] == "in_features=16 is smaller than the window m=32"
    assert why["odd"] == "in_features=72 is not a multiple of m=32"
    assert why["narrow"] == "out_features=4 is smaller than one vector (V=8): too small to gain"
    assert why["head"] == "excluded"
    assert why["attn.out_proj"].startswith("a subclass of nn.Linear (NonDynamicallyQuantizableLinear)")
    assert type(model.head) is nn.Linear and type(model.tiny) is nn.Linear
    weights = 64 * 128 + 128 * 64
    assert report.layer_params_before == weights + 128
    assert report.layer_params_after == weights // 4 + 128
    assert report.layer_bytes_before == 4 * (weights + 128)
    assert report.layer_bytes_after == 4 * (weights // 4 + 128) + 16 * 16 + 32 * 8     # values, bias, indices
    assert report.model_bytes_after < report.model_bytes_before
    text = str(report)
    assert report.replaced_layers == 2
    assert "8:32 V=8 (75.0% sparse): 2 layers replaced (under 3 names)" in text and "- tiny: in_features=16" in text


def test_sparsify_include_globs_and_callables():
    model = Small()
    report = nmt.sparsify(model, "8:32", 8, include=["up", "d*"])
    assert sorted(report.replaced) == ["down", "shared", "up"] and report.skipped == []
    model = Small()
    report = nmt.sparsify(model, "8:32", 8, include=lambda name, mod: mod.out_features == 96)
    assert report.replaced == ["head"]
    with pytest.raises(ShapeError, match="include must be a name glob"):
        nmt.sparsify(Small(), "8:32", 8, include=[3])


def test_sparsify_in_bfloat16_needs_tensor_core_vectors():
    model = Small()
    report = nmt.sparsify(model, "8:32", 4, dtype=torch.bfloat16, include=["up", "down"])
    assert report.replaced == [] and all("multiple of 8" in why for _, why in report.skipped)
    report = nmt.sparsify(model, "8:32", 32, dtype=torch.bfloat16, include=["up", "down"])
    assert sorted(report.replaced) == ["down", "shared", "up"] and model.up.dtype == torch.bfloat16


def test_sparsify_checks_every_weight_before_replacing_any():
    """A damaged weight in the second layer: the error names it and the first layer is still the
    user's nn.Linear (not half a model converted)."""
    model = nn.Sequential(*[linear(16, 16) for _ in range(3)])
    before = [layer.weight for layer in model]
    model[1].weight.data[2, 3] = float("inf")
    with pytest.raises(ShapeError, match=r"layer '1': the weight holds 1 NaN or infinite value\(s\), the first inf "
                                         r"at \[2, 3\].*nothing was replaced"):
        nmt.sparsify(model, "2:4")
    assert all(type(layer) is nn.Linear for layer in model) and [layer.weight for layer in model] == before
    big = linear(32, 16)
    big.weight.data[0, 0] = 1e6                     # beyond float16
    model = nn.Sequential(linear(32, 16), big)
    with pytest.raises(ShapeError, match=r"layer '1': the weight: \|value\| up to 1e\+06 exceeds float16"):
        nmt.sparsify(model, "2:4", 8, dtype=torch.float16)
    assert all(type(layer) is nn.Linear for layer in model)


def test_from_linear_refuses_nan_even_where_pruning_would_drop_it():
    layer = linear(16, 8)
    layer.weight.data[:, :4] = torch.tensor([9.0, 8.0, 0.0, 0.0])      # window 0 keeps inputs 0 and 1
    layer.weight.data[5, 3] = float("nan")                              # in a row pruning drops
    with pytest.raises(ShapeError, match=r"1 NaN or infinite value\(s\), the first nan at \[5, 3\]"):
        NMLinear.from_linear(layer, "2:4")


def test_sparsify_skips_tied_weights_and_reports_existing_nmlinear():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.body = linear(64, 64)
            self.head = linear(64, 100, bias=False)
            self.head.weight = self.emb.weight          # tied, as language models' output layers often are

    model = Tied()
    report = nmt.sparsify(model, "2:4")
    assert report.replaced == ["body"] and type(model.head) is nn.Linear
    assert dict(report.skipped)["head"].startswith("its weight is tied to emb.weight")
    assert report.model_bytes_after < report.model_bytes_before
    again = nmt.sparsify(model, "1:4")
    assert again.replaced == [] and dict(again.skipped)["body"] == "already an NMLinear (2:4 V=1)"


def test_sparsify_include_and_exclude_must_match_and_take_whole_subtrees():
    def stack():
        return nn.Sequential(nn.Sequential(linear(16, 16), linear(16, 16)), linear(16, 16))

    model = stack()
    assert nmt.sparsify(model, "2:4", include="0").replaced == ["0.0", "0.1"]     # everything under "0"
    model = stack()
    report = nmt.sparsify(model, "2:4", exclude=["0"])
    assert report.replaced == ["1"] and dict(report.skipped) == {"0.0": "excluded", "0.1": "excluded"}
    for spec, match in [("q_porj", r"include: 'q_porj' matches no module of the model .*nothing was changed"),
                        (["0", r"blocks\.\d+"], r"'blocks\\\\.\\\\d\+' matches no module"),
                        (5, r"include must be a name glob .* got 5 \(int\)"),
                        (__import__("re").compile("0"), r"include must be a name glob .*not regular expressions"),
                        (lambda name: True, r"must take two arguments \(name, module\)")]:
        model = stack()
        with pytest.raises(ShapeError, match=match):
            nmt.sparsify(model, "2:4", include=spec)
        assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    with pytest.raises(ShapeError, match="exclude: 'lm_head' matches no module"):
        nmt.sparsify(stack(), "2:4", exclude="lm_head")


def test_sparsify_report_counts_layers_and_sizes_readably():
    model = nn.Sequential(linear(64, 32))
    text = str(nmt.sparsify(model, "2:4", 8))
    assert "1 layer replaced, 0 skipped" in text
    assert "replaced layers: 8.1 KiB -> 4.2 KiB (52.3% of before)" in text, text     # 8320 B -> 4352 B


def test_mask_of_the_wrong_kind_is_refused_plainly():
    layer = linear(16, 8)
    with pytest.raises(ShapeError, match=r"mask must be a boolean tensor or array of the weight's shape \(8, 16\), "
                                         r"got str"):
        NMLinear.from_linear(layer, "2:4", mask="abc")
    with pytest.raises(ShapeError, match="mask is on the meta device"):
        NMLinear.from_linear(layer, "2:4", mask=torch.ones(8, 16, dtype=torch.bool, device="meta"))


def test_converting_to_a_dtype_nmlinear_cannot_compute_in_keeps_its_own():
    layer = NMLinear.from_linear(linear(16, 8), "2:4", 8)
    with pytest.warns(UserWarning, match="NMLinear keeps its float32 weights: .* not float64"):
        model = nn.Sequential(layer).double()
    assert layer.values.dtype == torch.float32 and layer.bias.dtype == torch.float32
    assert isinstance(layer.bias, nn.Parameter) and model[0] is layer
    layer.half()
    assert layer.values.dtype == torch.float16 and layer.bias.dtype == torch.float16
    narrow = NMLinear.from_linear(linear(16, 8), "2:4", 1)          # V=1: no tensor-core kernel
    with pytest.warns(UserWarning, match="NMLinear keeps its float32 weights: float16 runs on the tensor cores"):
        narrow.half()
    big = NMLinear.from_linear(linear(16, 8), "2:4", 8)
    with torch.no_grad():
        big.bias.fill_(1e6)
    with pytest.warns(UserWarning, match=r"its bias reach 1e\+06, beyond float16's 65504"):
        big.half()
    assert narrow.values.dtype == big.values.dtype == big.bias.dtype == torch.float32


# ---- safetensors ---------------------------------------------------------------------------------------------
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 64)
        self.body = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10, bias=False)
        self.head.weight = self.embed.weight     # tied


def _state_equal(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_save_and_load_rebuild_the_sparse_layers(tmp_path):
    model = Tied()
    nmt.sparsify(model, "8:32", 8, include="body", dtype=torch.float16)
    path = tmp_path / "m.safetensors"
    nmt.save(model, path, metadata={"note": "test"})
    header = nmt.io.read_header(path)
    assert header["note"] == "test" and header["format"] == "nmgen.torch/1"
    assert "head.weight" in header["nmgen.aliases"]
    fresh = nmt.load(Tied, path)                        # a factory of the dense architecture
    assert isinstance(fresh.body, NMLinear) and fresh.body.dtype == torch.float16
    _state_equal(model, fresh)
    assert fresh.head.weight.data_ptr() == fresh.embed.weight.data_ptr()   # still tied
    with torch.device("meta"):                          # no memory for the dense weights
        skeleton = Tied()
    loaded = nmt.load(skeleton, path)
    _state_equal(model, loaded)
    again = Tied()
    nmt.sparsify(again, "8:32", 8, include="body", dtype=torch.float16)   # already sparse: loaded into
    _state_equal(model, nmt.load(again, path))


def test_load_errors(tmp_path):
    model = Tied()
    nmt.sparsify(model, "8:32", 8, include="body")
    path = tmp_path / "m.safetensors"
    nmt.save(model, path)
    wrong = Tied()
    nmt.sparsify(wrong, "4:32", 8, include="body")
    with pytest.raises(ShapeError, match="body: the model's NMLinear is 64->64 4:32 V=8 but .* holds 64->64 8:32 V=8"):
        nmt.load(wrong, path)

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 64)
    with pytest.raises(ShapeError, match="holds a sparse layer 'body' that the model lacks"):
        nmt.load(Other(), path)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ShapeError, match="was not written by nmgen.torch.save"):
        nmt.load(Tied(), tmp_path / "plain.safetensors")


@pytest.mark.parametrize("name,error,match", [
    ("missing.safetensors", FileError, r"cannot read .*missing\.safetensors: No such file or directory$"),
    ("garbage.safetensors", ShapeError, r".*garbage\.safetensors is not a file written by nmgen.torch.save \(.*header"),
    ("", FileError, r"cannot read .*: it is a directory; give a file$"),
])
def test_load_of_a_missing_or_foreign_file_names_it(tmp_path, name, error, match):
    """A file that cannot be read is a FileError (an OSError); one that is not nmgen's a ShapeError."""
    (tmp_path / "garbage.safetensors").write_text("print('not a model')\n")
    for call in (lambda: nmt.load(Tied(), tmp_path / name), lambda: nmt.io.read_header(tmp_path / name)):
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("name,match", [
    ("", r"cannot write .*: it is a directory; give a file name$"),
    ("nodir/m.safetensors", r"cannot write .*nodir/m\.safetensors: the directory .*nodir does not exist; create it"),
    ("afile/m.safetensors", r"cannot write .*afile/m\.safetensors: .*afile is not a directory$"),
])
def test_save_to_a_place_it_cannot_write_names_it(tmp_path, name, match):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileError, match=match):
        nmt.save(Tied(), tmp_path / name)


def test_save_wraps_what_safetensors_raises(tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch as st

    def fail(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(st, "save_file", fail)
    with pytest.raises(FileError, match=r"cannot write .*m\.safetensors: Error while serializing: .*No space left"):
        nmt.save(Tied(), tmp_path / "m.safetensors")


def test_from_linear_refuses_weights_beyond_the_dtypes_range():
    layer = linear(64, 40)
    with torch.no_grad():
        layer.weight.mul_(1e6)
    top = float(layer.weight.detach().abs().max())     # the whole weight is checked, pruned entries too
    with pytest.raises(ShapeError, match=r"the weight: \|value\| up to " + f"{top:.4g}".replace("+", r"\+")
                                         + r" exceeds float16's largest finite 65504: scale them or use bf16 / f32"):
        NMLinear.from_linear(layer, "8:32", 8, dtype=torch.float16)
    assert torch.isfinite(NMLinear.from_linear(layer, "8:32", 8, dtype=torch.bfloat16).values).all()


def test_plain_safetensors_round_trip_of_the_compressed_tensors(tmp_path):
    from safetensors.torch import load_file, save_file
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8, dtype=torch.bfloat16)
    save_file(layer.state_dict(), str(tmp_path / "l.safetensors"))
    empty = NMLinear(64, 40, "8:32", 8, dtype=torch.bfloat16)
    empty.load_state_dict(load_file(str(tmp_path / "l.safetensors")))
    _state_equal(layer, empty)


# ---- the operator's fake (meta) implementation and tracing ---------------------------------------------------
def test_fake_kernel_gives_shape_dtype_device():
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8, dtype=torch.bfloat16)
    v, i = layer.values.to("meta"), layer.indices.to("meta")
    for M in (0, 1, 17):
        out = torch.ops.nmgen.spmm(torch.empty(M, 64, dtype=torch.bfloat16, device="meta"), v, i, 8, 32, 8)
        assert out.shape == (M, 40) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    with pytest.raises(Exception, match="a has 32 columns but the weight has K=64 rows"):
        torch.ops.nmgen.spmm(torch.empty(3, 32, dtype=torch.bfloat16, device="meta"), v, i, 8, 32, 8)
    with pytest.raises(Exception, match="a holds torch.float32 but the weight torch.bfloat16"):
        torch.ops.nmgen.spmm(torch.empty(3, 64, device="meta"), v, i, 8, 32, 8)
    with pytest.raises(ShapeError, match=r"indices \(16, 5\) must be \(16, 10\)"):
        torch.ops.nmgen.spmm(torch.empty(3, 64, dtype=torch.bfloat16, device="meta"), v, i, 8, 32, 4)


def test_op_on_cpu_tensors_says_move_to_gpu():
    layer = NMLinear.from_linear(linear(64, 40), "8:32", 8)
    with pytest.raises(ShapeError, match="nmgen::spmm runs on CUDA tensors"):
        torch.ops.nmgen.spmm(torch.randn(3, 64), layer.values, layer.indices, 8, 32, 8)


def _fake_cuda(module: nn.Module, mode) -> nn.Module:
    """A copy of `module` with every parameter and buffer an empty fake CUDA tensor of `mode` (a
    FakeTensorMode): tracing sees CUDA tensors on a machine without a GPU."""
    import copy
    module = copy.deepcopy(module)
    with mode:
        for mod in module.modules():
            for k, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[k] = torch.empty_like(b, device="cuda")
            for k, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[k] = nn.Parameter(torch.empty_like(p, device="cuda"), requires_grad=False)
    return module


def _export(model, *args):
    """torch.export in strict mode: dynamo traces the whole forward or fails (as fullgraph=True)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = _fake_cuda(model, mode)
    with mode:
        inputs = [torch.empty(a.shape, dtype=a.dtype, device="cuda") if a.is_floating_point() else
                  torch.zeros(a.shape, dtype=a.dtype, device="cuda") for a in args]
    with torch.no_grad():
        return torch.export.export(fake, tuple(inputs), strict=True)


def test_forward_traces_without_graph_breaks():
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64, bias=False))
    nmt.sparsify(model, "8:32", 32, dtype=torch.bfloat16)
    ep = _export(model, torch.empty(2, 5, 64, dtype=torch.bfloat16))
    code = ep.graph_module.code
    assert code.count("torch.ops.nmgen.spmm.default") == 2, code


def test_bias_and_state_and_arguments_are_checked():
    layer = linear(16, 8)
    with torch.no_grad():
        layer.bias[1] = 1e6
    with pytest.raises(ShapeError, match=r"the bias: \|value\| up to 1e\+06 exceeds float16"):
        NMLinear.from_linear(layer, "2:4", 8, dtype=torch.float16)
    with pytest.raises(ShapeError, match=r"layer '0': the bias: \|value\| up to 1e\+06"):
        nmt.sparsify(nn.Sequential(layer), "2:4", 8, dtype=torch.float16)
    with torch.no_grad():
        layer.bias[1] = float("nan")
    with pytest.raises(ShapeError, match=r"the bias holds 1 NaN or infinite value\(s\), the first nan at \[1\]"):
        NMLinear.from_linear(layer, "2:4")
    # a damaged state is refused before anything is copied
    good = NMLinear.from_linear(linear(16, 8), "2:4")
    before = good.indices.clone()
    for key, damage, match in [("indices", 255, r"indices\[0, 0\] = 255 is outside \[0, 4\)"),
                               ("indices", 0, r"the indices of window 0, vector 0 are not increasing"),
                               ("values", float("nan"), "values hold NaN or infinity")]:
        state = {k: v.clone() for k, v in good.state_dict().items()}
        state[key].fill_(damage)
        with pytest.raises(ShapeError, match="the state's compressed weight is damaged: " + match):
            good.load_state_dict(state)
        assert torch.equal(good.indices, before)
    with pytest.raises(TypeError, match="from_matrix takes an nmgen.NMMatrix, got ndarray"):
        NMLinear.from_matrix(np.zeros((16, 8)))
    with pytest.raises(ShapeError, match=r"bias has shape \(5,\); it must be \(8,\)"):
        NMLinear.from_matrix(good.to_nmmatrix(), bias=torch.zeros(5))
    with pytest.raises(TypeError, match="NMLinear takes a torch.Tensor .* got ndarray"):
        good(np.zeros((2, 16), np.float32))
    with pytest.raises(TypeError, match="sparsify takes the model .* got dict"):
        nmt.sparsify({"a": good}, "2:4")
    for spec in ("", []):
        with pytest.raises(ShapeError, match="names no module"):
            nmt.sparsify(nn.Sequential(linear(16, 8)), "2:4", include=spec)
    with pytest.raises(ShapeError, match=r"include\('0', module\) returned 'no' \(str\); it must return True or False"):
        nmt.sparsify(nn.Sequential(linear(16, 8)), "2:4", include=lambda name, mod: "no")
    with pytest.raises(ShapeError, match=r"no CUDA GPU on this machine|convert the input \(x.to\(torch.float32\)\)$"):
        good(torch.zeros(2, 16, dtype=torch.float64))


def test_compiled_forward_reports_bad_inputs_in_nmgens_words():
    """Under torch.compile(fullgraph=True) an input NMLinear cannot take gets nmgen's message, not
    Dynamo's "Unsupported: Observed exception" with the message in its debug context: the device
    from the op's CPU kernel at run time, dtype and K from its fake kernel while tracing."""
    model = nn.Sequential(NMLinear.from_linear(linear(16, 8), "2:4"))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad(), pytest.raises(ShapeError, match="runs on CUDA tensors; got a on cpu"):
        compiled(torch.randn(3, 16))
    torch._dynamo.reset()
    with torch.no_grad(), pytest.raises(Exception, match=r"a holds torch.float64 but the weight torch.float32: "
                                                         r"convert the input"):
        torch.compile(model, fullgraph=True, backend="eager")(torch.randn(3, 16, dtype=torch.float64))


# ---- the launch path on an emulated GPU ------------------------------------------------------------------------
@pytest.fixture
def emu(monkeypatch, tmp_path):
    import fake_gpu
    import fake_torch_gpu
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "tuning.db"))
    fake_gpu.install(monkeypatch)
    return fake_torch_gpu.install(monkeypatch)


def _rand_layer(in_f, out_f, pattern, V, dtype, bias=True):
    lin = linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.normal_()
        if bias:
            lin.bias.normal_()
    return NMLinear.from_linear(lin, pattern, V, dtype=dtype)


def _check_product(y, x, layer, compute):
    from nmgen.reference import compare
    from nmgen.torch.kernels import dtype_name
    from nmgen.arrays import to_numpy
    B = layer.to_nmmatrix()
    v = compare(to_numpy(y), to_numpy(x), B, compute=compute, out_dtype=dtype_name(y.dtype))
    assert v, v.summary()


def _spmm(layer, x, allow_tf32=False):
    from nmgen.torch.ops import spmm_cuda
    return spmm_cuda(x, layer.values, layer.indices, layer.n, layer.m, layer.vector, allow_tf32)


@pytest.mark.parametrize("dtype,pattern,V,compute", [(torch.float32, "2:8", 4, "ffma"),
                                                     (torch.bfloat16, "8:32", 32, "mma"),
                                                     (torch.float16, "4:8", 8, "mma")])
@pytest.mark.parametrize("M", [1, 3, 17])
def test_emulated_product(emu, dtype, pattern, V, compute, M):
    layer = _rand_layer(64, 40, pattern, V, dtype, bias=False)
    x = torch.randn(M, 64).to(dtype)
    y = _spmm(layer, x)
    assert y.shape == (M, 40) and y.dtype == dtype
    _check_product(y, x, layer, compute)
    assert emu.kernel_launches() and emu.calls[-1][0] == "launch"


@pytest.mark.parametrize("dtype,reduced", [(torch.float32, False), (torch.bfloat16, True)])
def test_emulated_split_k_zeroes_or_reduces_in_the_kernel(emu, dtype, reduced):
    """1x256x4096 runs split-K (the model's choice: 16 ways for fp32 and bf16). An fp32 C is zeroed
    before every launch. A 16-bit C is one launch: the kernel sums into the stream's shared workspace
    (zeroed when made) and leaves it zeroed, so no memset comes before the next call, and its
    product is right (not the sum of two)."""
    layer = _rand_layer(4096, 256, "8:32", 32, dtype, bias=False)
    x = torch.randn(1, 4096).to(dtype)
    compute = "ffma" if dtype == torch.float32 else "mma"
    for call in range(2):
        del emu.calls[:]
        y = _spmm(layer, x)
        _check_product(y, x, layer, compute)
        kinds = [c[0] if c[0] == "memset" else c[1] for c in emu.calls]
        if reduced:
            assert len(kinds) == 1 and kinds[0].startswith("nmspmm"), kinds
            ws = kernels._workspaces[(-1, 0)]
            assert len(kernels._workspaces) == 1 and not ws.any(), f"call {call}: the workspace is not left zeroed"
        else:
            assert kinds[0] == "memset" and kinds[1].startswith("nmspmm") and len(kinds) == 2, kinds


def test_emulated_cache_reuse_and_invalidation(emu, monkeypatch):
    import nmgen.api as api
    layer = _rand_layer(64, 40, "2:8", 4, torch.float32, bias=False)
    compiled = []
    real = api.compile
    monkeypatch.setattr(api, "compile", lambda *a, **k: compiled.append(a[0]) or real(*a, **k))
    x = torch.randn(5, 64)
    y1 = _spmm(layer, x)
    y2 = _spmm(layer, x)
    assert torch.equal(y1, y2) and len(compiled) == 1          # the second call prepared nothing
    _spmm(layer, torch.randn(2, 64))
    assert compiled == [(5, 40, 64), (2, 40, 64)]              # a new M: its own kernel
    other = _rand_layer(64, 40, "2:8", 4, torch.float32, bias=False)
    layer.load_state_dict(other.state_dict())                  # in place: version counters move
    y3 = _spmm(layer, x)
    _check_product(y3, x, other, "ffma")
    assert len(compiled) == 3


def test_emulated_odd_and_misaligned_a(emu):
    """A 16-bit A of odd row length is copied to an even pitch; a misaligned or strided A to an
    aligned buffer; out= into a strided view."""
    from nmgen.torch.ops import spmm_out_cuda
    layer = _rand_layer(9 * 8, 16, "4:8", 8, torch.bfloat16, bias=False)   # K = 72: even
    odd = _rand_layer(3 * 3, 16, "1:3", 8, torch.float32, bias=False)       # K = 9, f32
    for lay, dt, compute in ((layer, torch.bfloat16, "mma"), (odd, torch.float32, "ffma")):
        K = lay.in_features
        big = torch.randn(5 * K + 1).to(dt)
        x = big[1:].view(5, K)                                  # one element off the allocation's start
        _check_product(_spmm(lay, x), x, lay, compute)
        xt = torch.randn(K, 5).to(dt).t()                       # column-major view
        _check_product(_spmm(lay, xt), xt, lay, compute)
        out = torch.full((5, 32), float("nan"), dtype=dt)[:, ::2]   # strided out
        spmm_out_cuda(x, lay.values, lay.indices, lay.n, lay.m, lay.vector, False, out)
        _check_product(out, x, lay, compute)
    bf_odd = _rand_layer(5 * 3, 16, "2:3", 8, torch.bfloat16, bias=False)  # K = 15, 16-bit: pitch 16
    x = torch.randn(4, 15).to(torch.bfloat16)
    _check_product(_spmm(bf_odd, x), x, bf_odd, "mma")


def test_emulated_empty_batch_and_errors(emu):
    from nmgen.torch.ops import spmm_out_cuda
    layer = _rand_layer(64, 40, "2:8", 4, torch.float32, bias=False)
    y = _spmm(layer, torch.empty(0, 64))
    assert y.shape == (0, 40) and emu.calls == []
    with pytest.raises(ShapeError, match=r"a is \(3, 32\) but the weight has K=64 rows"):
        _spmm(layer, torch.randn(3, 32))
    with pytest.raises(ShapeError, match="a holds torch.float16 but the weight holds torch.float32"):
        _spmm(layer, torch.randn(3, 64).half())
    with pytest.raises(ShapeError, match="a must be a 2-D"):
        _spmm(layer, torch.randn(2, 3, 64))
    x = torch.randn(4, 64)
    with pytest.raises(ShapeError, match=r"out must be a \(4, 40\)"):
        spmm_out_cuda(x, layer.values, layer.indices, 2, 8, 4, False, torch.empty(4, 41))
    both = torch.zeros(4 * 64 + 4 * 40)
    with pytest.raises(ShapeError, match="out overlaps a"):
        spmm_out_cuda(both[:256].view(4, 64), layer.values, layer.indices, 2, 8, 4, False, both[200:360].view(4, 40))


def test_emulated_launch_error_names_the_kernel(emu, monkeypatch):
    from nmgen.errors import CudaError
    from nmgen.runtime import launch
    layer = _rand_layer(64, 40, "2:8", 4, torch.float32, bias=False)
    x = torch.randn(3, 64)
    _spmm(layer, x)                                     # prepared
    monkeypatch.setattr(launch, "error_name", lambda code: f"CUDA_ERROR_INVALID_VALUE ({code})")
    for p in kernels._entries[id(layer.values)].prepared.values():
        p.core._main._launch = lambda *args: (1,)
    with pytest.raises(CudaError, match=r"launching kernel nmspmm.* failed: CUDA_ERROR_INVALID_VALUE"):
        _spmm(layer, x)


# ---- the end-to-end benchmark's use of transformers ---------------------------------------------------------------
def test_e2e_benchmark_decoding_matches_a_full_forward():
    """examples/llama_e2e.py drives transformers with explicit positions, 4-D masks and a static
    cache (so CUDA graphs can capture a decode step): on the CPU, a prefill and teacher-forced
    decode steps must give the logits of one forward over the whole sequence."""
    import importlib.util
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not an nmgen "
                                                              "dependency): the benchmark's decoding test needs it")
    spec = importlib.util.spec_from_file_location("llama_e2e", os.path.join(ROOT, "examples", "llama_e2e.py"))
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    assert e2e.parse_args(["--tiny"]).hidden == 256
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                   attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).eval()
    runner = e2e.Runner(model, torch, transformers)
    B, P, G = 2, 5, 4
    with torch.no_grad():
        dec = e2e.GraphDecoder(runner, B, P, G, 100, seed=1, device="cpu")
        ids = torch.cat([dec.prompt_ids, torch.randint(0, 100, (B, G))], dim=1)
        full = runner.full(ids)
        torch.testing.assert_close(full, model(ids, use_cache=False).logits)
        for _ in range(2):                                  # the second time after cache.reset()
            torch.testing.assert_close(dec.prefill(), full[:, P - 1:P])
            torch.testing.assert_close(runner.full(ids, last_only=True), full[:, -1:])
            assert dec.position.tolist() == [[P]] * B
            assert torch.equal(dec.token[:, 0], full[:, P - 1].argmax(-1))       # greedy
            for g in range(G):
                dec.token.copy_(ids[:, P + g:P + g + 1])                            # teacher forcing
                logits = dec.step()
                torch.testing.assert_close(logits[:, 0], full[:, P + g], rtol=1e-4, atol=1e-5)


def test_emulated_eager_linear_takes_any_leading_dims(emu):
    """NMLinear's eager path (ops.linear_eager): no reshape of the input or the output; a
    non-contiguous input is copied; M = 0 launches nothing."""
    from nmgen.torch.ops import linear_eager
    layer = _rand_layer(64, 40, "8:32", 8, torch.bfloat16, bias=False)
    args = (layer.values, layer.indices, 8, 32, 8, False, 64)
    for x in (torch.randn(64), torch.randn(2, 3, 64), torch.randn(3, 64, 2).transpose(1, 2), torch.randn(5, 64)):
        x = x.to(torch.bfloat16)
        y = linear_eager(x, *args)
        assert y.shape == (*x.shape[:-1], 40) and y.is_contiguous()
        _check_product(y.reshape(-1, 40), x.reshape(-1, 64), layer, "mma")
    launches = len(emu.calls)
    assert linear_eager(torch.empty(2, 0, 64, dtype=torch.bfloat16), *args).shape == (2, 0, 40)
    assert len(emu.calls) == launches


@pytest.mark.filterwarnings("ignore:Warning only once for all operators")
def test_emulated_opcheck(emu):
    """torch.library.opcheck (schema, fake kernel, autograd registration, AOT dispatch with dynamic
    shapes) on the emulated GPU: the CUDA implementation stands in for the CPU refusal meanwhile."""
    from nmgen.torch.ops import spmm_cuda, spmm_out_cuda
    lib = torch.library.Library("nmgen", "IMPL")
    try:
        lib.impl("spmm", spmm_cuda, "CPU")
        lib.impl("spmm_out", spmm_out_cuda, "CPU")
    except RuntimeError as e:       # torch versions that refuse to override a Python kernel
        lib._destroy()
        pytest.skip(f"this torch cannot override the CPU kernel for the test ({e})")
    try:
        for dtype, pattern, V in ((torch.bfloat16, "8:32", 8), (torch.float32, "2:8", 4)):
            layer = _rand_layer(64, 40, pattern, V, dtype)
            p = layer.pattern
            a = torch.randn(5, 64).to(dtype)
            args = (a, layer.values, layer.indices, p.n, p.m, p.vector, False)
            torch.library.opcheck(torch.ops.nmgen.spmm.default, args)
            torch.library.opcheck(torch.ops.nmgen.spmm_out.default, args + (torch.empty(5, 40, dtype=dtype),))
    finally:
        lib._destroy()
    with pytest.raises(ShapeError, match="runs on CUDA tensors"):
        torch.ops.nmgen.spmm(a, layer.values, layer.indices, p.n, p.m, p.vector)


@pytest.fixture
def emu_cpu_layers(emu, monkeypatch):
    """The emulated GPU with NMLinear accepting CPU inputs and the op's CPU kernel replaced by its
    CUDA implementation: whole models run on the CPU through nmgen's launch path."""
    from nmgen.torch.ops import spmm_cuda, spmm_out_cuda
    lib = torch.library.Library("nmgen", "IMPL")
    try:
        lib.impl("spmm", spmm_cuda, "CPU")
        lib.impl("spmm_out", spmm_out_cuda, "CPU")
    except RuntimeError as e:
        lib._destroy()
        pytest.skip(f"this torch cannot override the CPU kernel for the test ({e})")
    refuse = NMLinear._refuse

    def refuse_but_cpu(self, x):
        if x.is_cuda or x.device.type != "cpu":
            refuse(self, x)
        if x.dtype != self.values.dtype or x.shape[-1] != self.in_features or (
                x.requires_grad and torch.is_grad_enabled()):
            refuse(self, x)
    monkeypatch.setattr(NMLinear, "_refuse", refuse_but_cpu)
    src = NMLinear._eager
    import inspect
    import textwrap
    namespace = {}
    exec(textwrap.dedent(inspect.getsource(src)).replace("not x.is_cuda", "x.device.type != 'cpu'"),
         vars(sys.modules[NMLinear.__module__]), namespace)
    monkeypatch.setattr(NMLinear, "_eager", namespace["_eager"])
    yield emu
    lib._destroy()


@pytest.mark.filterwarnings("ignore:Warning only once for all operators")
def test_emulated_compile_fullgraph_matches_eager(emu_cpu_layers):
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64, bias=False))
    nmt.sparsify(model, "8:32", 32, dtype=torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for shape in ((3, 64), (2, 5, 64), (7, 64)):
            x = torch.randn(shape).to(torch.bfloat16)
            torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.filterwarnings("ignore:Warning only once for all operators")
def test_emulated_tiny_llama_matches_its_masked_dense_model(emu_cpu_layers):
    import copy
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not an nmgen "
                                                              "dependency): the LLaMA test needs it")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                   attn_implementation="sdpa")
    dense = transformers.LlamaForCausalLM(cfg).eval()
    sparse, masked = copy.deepcopy(dense), copy.deepcopy(dense)
    report = nmt.sparsify(sparse, "16:32", 16, include=["*_proj"])
    assert len(report.replaced) == 14 and not report.skipped, report
    with torch.no_grad():
        for name in report.replaced:
            masked.get_submodule(name).weight.copy_(sparse.get_submodule(name).to_dense())
        ids = torch.randint(0, 100, (2, 9))
        ls = sparse(ids, use_cache=False).logits
        lm = masked(ids, use_cache=False).logits
    assert ((ls - lm).abs().max() / lm.abs().max()).item() < 1e-4
