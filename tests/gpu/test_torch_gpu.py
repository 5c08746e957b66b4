"""nmgen.torch on the GPU: the operator (opcheck), NMLinear against the float64 reference for every
dtype and odd shape, state round trips, a small transformers LLaMA, torch.compile(fullgraph=True),
CUDA graphs, streams, and the host time of a launch (printed for the record: run with -s).

Needs torch with CUDA (skipped, saying so, without); transformers for the LLaMA tests."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[torch]' to run the torch "
                                            "GPU tests")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA here (a CPU-only build, or no GPU visible to torch)", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import nmgen.torch as nmt  # noqa: E402
from nmgen.torch.overhead import eager_and_replayed, host_us as _host_us  # noqa: E402
from nmgen import NMMatrix, ShapeError  # noqa: E402
from nmgen.arrays import to_numpy  # noqa: E402
from nmgen.ir.dtypes import round_tf32  # noqa: E402
from nmgen.reference import compare  # noqa: E402
from nmgen.torch import NMLinear, kernels  # noqa: E402

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_ID = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def make_layer(in_f, out_f, pattern, V, dtype, bias=True, scale=1.0):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, scale)
        if bias:
            lin.bias.normal_()
    return NMLinear.from_linear(lin, pattern, V, dtype=dtype).to(DEV)


def verdict(y, x, layer, allow_tf32=False):
    """nmgen.reference.compare of NMLinear's product (without bias) with float64."""
    K, N = layer.in_features, layer.out_features
    A, C = to_numpy(x.reshape(-1, K)), to_numpy(y.reshape(-1, N))
    B = layer.to_nmmatrix()
    compute = "ffma" if layer.dtype == torch.float32 and not allow_tf32 else "mma"
    if allow_tf32:
        A, B = round_tf32(A), NMMatrix(round_tf32(B.values), B.indices, B.pattern, B.shape)
    return compare(C, A, B, compute=compute, out_dtype=DT_ID[y.dtype])


# ---- the operator ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("M", [1, 17])
@pytest.mark.parametrize("K,N", [(256, 96), (4096, 256)], ids=["256x96", "4096x256-splitK"])
def test_opcheck(dtype, M, K, N):
    layer = make_layer(K, N, "8:32", 32, dtype)
    a = torch.randn(M, K, device=DEV).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)   # split-K: any order
    torch.library.opcheck(torch.ops.nmgen.spmm.default, (a, layer.values, layer.indices, 8, 32, 32, False), **tol)
    out = torch.empty(M, N, device=DEV, dtype=dtype)
    torch.library.opcheck(torch.ops.nmgen.spmm_out.default,
                          (a, layer.values, layer.indices, 8, 32, 32, False, out), **tol)


def test_functional_spmm_and_out_dtypes():
    layer = make_layer(256, 96, "8:32", 32, torch.bfloat16, bias=False)
    a = torch.randn(5, 256, device=DEV).to(torch.bfloat16)
    with torch.inference_mode():
        y = nmt.spmm(a, layer.values, layer.indices, "8:32", 32)
        out = torch.full((5, 96), float("nan"), device=DEV)          # float32 C of a bfloat16 product
        assert nmt.spmm(a, layer.values, layer.indices, "8:32", 32, out=out) is out
    torch.cuda.synchronize()
    assert y.dtype == torch.bfloat16 and (v := verdict(y, a, layer)), v.summary()
    assert (v := verdict(out, a, layer)), v.summary()


# ---- NMLinear against float64 ------------------------------------------------------------------------------
# (in_features, out_features, pattern, V, bias): in = m (one window), 3 windows, outputs not a
# multiple of V; V = 1 (element-wise) only in float32 (the tensor cores need V % 8 == 0)
CASES = [(32, 44, "8:32", 8, True), (96, 100, "16:32", 32, False), (96, 70, "4:8", 16, True),
         (64, 30, "2:4", 1, True)]
INPUTS = [(), (1,), (17,), (0,), (2, 3)]        # leading dims: 1-D input, M = 1, 17, 0, a 3-D input


# every dtype with every case it takes (16-bit ones: V a multiple of 8; NMLinear refuses the rest)
LINEAR_CASES = [(d, c) for d in DTYPES for c in CASES if d == torch.float32 or c[3] % 8 == 0]


@pytest.mark.parametrize("lead", INPUTS, ids=lambda s: "lead" + "x".join(map(str, s)))
@pytest.mark.parametrize("dtype,case", LINEAR_CASES,
                         ids=[DT_ID[d] + "-%dx%d_%s_V%d_bias%d" % c for d, c in LINEAR_CASES])
def test_linear_matches_float64(dtype, case, lead):
    in_f, out_f, pattern, V, bias = case
    layer = make_layer(in_f, out_f, pattern, V, dtype, bias)
    x = torch.randn(*lead, in_f, device=DEV).to(dtype)
    with torch.inference_mode():
        y = layer(x)
        W = layer.to_dense()
        ref = F.linear(x, W, layer.bias)                      # the masked weight, dense
        if bias:
            nobias = copy.deepcopy(layer)
            nobias.bias = None
            y0 = nobias(x)
    torch.cuda.synchronize()
    assert y.shape == (*lead, out_f) and y.dtype == dtype and y.device.type == "cuda"
    if bias:
        torch.testing.assert_close(y, y0 + layer.bias)        # the bias added once, in the output dtype
        y = y0
    assert (v := verdict(y, x, layer)), v.summary()
    if x.numel():
        d = (ref.float() - (y + layer.bias if bias else y).float()).abs().max().item()
        print(f"\n{DT_ID[dtype]} {case} lead {lead}: max |NMLinear - F.linear(masked W)| = {d:.3g}")


def test_tf32_is_opt_in():
    layer = make_layer(256, 96, "8:32", 32, torch.float32, bias=False)
    x = torch.randn(9, 256, device=DEV)
    layer.allow_tf32 = True
    with torch.inference_mode():
        y = layer(x)
    assert (v := verdict(y, x, layer, allow_tf32=True)), v.summary()


def test_split_k_16_bit_calls_in_a_row_each_right():
    """A split-K bf16 product sums into the stream's shared workspace, which no memset clears
    between calls (the kernel's reduction leaves it zeroed): five calls in a row, two layers of
    different N on the same workspace, each against float64. (K = 4096: the model's choice for these
    layers is split-K 16; at K = 2048 it is a single split since split-K's cost was refitted.)"""
    from nmgen.torch import kernels
    layers = [make_layer(4096, N, "8:32", 32, torch.bfloat16, bias=False) for N in (256, 96)]
    x = torch.randn(1, 4096, device=DEV).to(torch.bfloat16)
    with torch.inference_mode():
        ys = [layer(x) for _ in range(5) for layer in layers]
    torch.cuda.synchronize()
    p = kernels.weights_for(layers[0].values, layers[0].indices, 8, 32, 32).prepared[(1, False, torch.bfloat16)]
    assert p.workspace_bytes and p.core.launches == 1, "not a split-K kernel with a 16-bit C: it tests nothing"
    for i, y in enumerate(ys):
        assert (v := verdict(y, x, layers[i % 2])), (i, v.summary())


def test_m_varies_and_kernels_are_kept():
    layer = make_layer(128, 64, "8:32", 32, torch.bfloat16)
    with torch.inference_mode():
        for M in (3, 1, 0, 3, 33):
            x = torch.randn(M, 128, device=DEV).to(torch.bfloat16)
            y = layer(x)
            assert y.shape == (M, 64)
    entry = kernels._entries[id(layer.values)]
    assert sorted(k[0] for k in entry.prepared) == [1, 3, 33]        # M = 0 prepares nothing


def test_errors_on_gpu():
    layer = make_layer(64, 32, "8:32", 32, torch.bfloat16)
    x = torch.randn(4, 64, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="NMLinear is inference-only"):
        layer(x.requires_grad_())
    with torch.no_grad():
        with pytest.raises(ShapeError, match="holds torch.bfloat16 weights but the input is torch.float32"):
            layer(torch.randn(4, 64, device=DEV))
        with pytest.raises(ShapeError, match="NMLinear runs on CUDA tensors"):
            layer(torch.randn(4, 64, dtype=torch.bfloat16))
        with pytest.raises(ShapeError, match=r"expects inputs of shape \(\.\.\., 64\)"):
            layer(torch.randn(4, 65, device=DEV, dtype=torch.bfloat16))


# ---- state ----------------------------------------------------------------------------------------------------
def test_state_dict_and_safetensors_round_trips(tmp_path):
    model = nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64)).to(DEV, torch.bfloat16)
    nmt.sparsify(model, "8:32", 32)
    x = torch.randn(7, 128, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = model(x)
    again = nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64)).to(DEV, torch.bfloat16)
    nmt.sparsify(again, "8:32", 32)                       # other random weights, same structure
    again.load_state_dict(model.state_dict())
    path = tmp_path / "model.safetensors"
    nmt.save(model, path)
    loaded = nmt.load(lambda: nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64)).to(DEV, torch.bfloat16),
                      path)
    with torch.inference_mode():
        torch.testing.assert_close(again(x), y)
        torch.testing.assert_close(loaded(x), y)


def test_load_state_dict_in_place_prepares_afresh():
    layer = make_layer(128, 64, "8:32", 32, torch.float32, bias=False)
    other = make_layer(128, 64, "8:32", 32, torch.float32, bias=False)
    x = torch.randn(5, 128, device=DEV)
    with torch.no_grad():
        layer(x)                                          # prepared for the old weights
        layer.load_state_dict(other.state_dict())         # copied in place
        y = layer(x)
    assert (v := verdict(y, x, other)), v.summary()


# ---- a small transformers LLaMA ---------------------------------------------------------------------------------
def tiny_llama(dtype):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (not an nmgen "
                                                              "dependency): pip install transformers")
    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=1000,
                                   max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(DEV, dtype).eval()


def causal(ids):
    """Explicit position ids and a 4-D causal mask for a batch of token ids: transformers then
    inspects no tensor values (nothing synchronises, so CUDA graphs capture the forward)."""
    B, L = ids.shape
    positions = torch.arange(L, device=ids.device).expand(B, L)
    mask = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril().expand(B, 1, L, L)
    return dict(position_ids=positions, attention_mask=mask, use_cache=False)


PROJECTIONS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]


def sparse_and_masked(dense, pattern="8:32", V=32):
    sparse, masked = copy.deepcopy(dense), copy.deepcopy(dense)
    report = nmt.sparsify(sparse, pattern, V, include=PROJECTIONS)
    with torch.no_grad():
        for name in report.replaced:
            masked.get_submodule(name).weight.copy_(sparse.get_submodule(name).to_dense())
    return sparse, masked, report


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["f32", "bf16"])
def test_tiny_llama_logits_match_the_masked_dense_model(dtype, bound):
    dense = tiny_llama(dtype)
    sparse, masked, report = sparse_and_masked(dense)
    assert len(report.replaced) == 14 and not report.skipped, report
    ids = torch.randint(0, 1000, (2, 16), device=DEV)
    with torch.inference_mode():
        ls = sparse(ids, **causal(ids)).logits.float()
        lm = masked(ids, **causal(ids)).logits.float()
        ld = dense(ids, **causal(ids)).logits.float()
    err = ((ls - lm).abs().max() / lm.abs().max()).item()
    print(f"\ntiny LLaMA {DT_ID[dtype]} 8:32 V=32: max |logits - masked dense| / max |masked dense| = {err:.3g} "
          f"(the unpruned model differs by {((ld - lm).abs().max() / lm.abs().max()).item():.3g})")
    assert err < bound


# ---- torch.compile and CUDA graphs ------------------------------------------------------------------------------
def small_model(dtype):
    # the last layer (K = 4096, N = 256) runs split-K at M = 1 and 16 (the model's choice)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 4096), nn.GELU(),
                          nn.Linear(4096, 256, bias=False)).to(DEV, dtype)
    nmt.sparsify(model, "8:32", 32)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DT_ID.get)
def test_compile_fullgraph_equals_eager(dtype):
    model = small_model(dtype)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        for M in (1, 8, 13):                              # M changes: recompiles (dynamic shapes), no breaks
            x = torch.randn(M, 256, device=DEV).to(dtype)
            tol = {} if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)   # inductor fuses bias + GELU
            torch.testing.assert_close(compiled(x), model(x), **tol)


def test_compile_fullgraph_tiny_llama():
    dense = tiny_llama(torch.float32)
    sparse, _, _ = sparse_and_masked(dense)
    compiled = torch.compile(sparse, fullgraph=True)
    ids = torch.randint(0, 1000, (1, 12), device=DEV)
    with torch.inference_mode():
        eager = sparse(ids, **causal(ids)).logits
        got = compiled(ids, **causal(ids)).logits
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)


def capture(fn, *static_inputs):
    """A CUDA graph of fn(*static_inputs) after a warm-up on a side stream (which compiles and
    prepares nmgen's kernels for these shapes); returns (graph, static output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


@pytest.mark.parametrize("dtype,M", [(torch.float32, 4), (torch.bfloat16, 1), (torch.bfloat16, 16)],
                         ids=["f32-M4", "bf16-M1", "bf16-M16"])
def test_cuda_graph_replay_equals_eager(dtype, M):
    """bf16 at M = 1 and 16 runs a split-K kernel with a 16-bit C (small_model's last layer): its
    reduction in the kernel, on a workspace that stays zeroed between calls, captured too."""
    model = small_model(dtype)
    static_x = torch.zeros(M, 256, device=DEV, dtype=dtype)
    with torch.inference_mode():
        graph, static_y = capture(model, static_x)
        for _ in range(3):
            x = torch.randn(M, 256, device=DEV).to(dtype)
            static_x.copy_(x)
            graph.replay()
            tol = 1e-5 if dtype == torch.float32 else 3e-2           # split-K atomics add in any order
            torch.testing.assert_close(static_y, model(x), rtol=tol, atol=tol)


def test_capture_without_warm_up_says_so():
    layer = make_layer(256, 96, "8:32", 32, torch.bfloat16)
    x = torch.randn(3, 256, device=DEV, dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="run the model once with the same batch shape "
                                                                   "before capturing"):
        with torch.cuda.graph(graph, stream=stream):
            layer(x)


def test_tiny_llama_cuda_graph_equals_eager():
    dense = tiny_llama(torch.bfloat16)
    sparse, _, _ = sparse_and_masked(dense)
    ids = torch.randint(0, 1000, (2, 8), device=DEV)
    kw = causal(ids)
    with torch.inference_mode():
        graph, static = capture(lambda i: sparse(i, **kw).logits, ids)
        ids.copy_(torch.randint(0, 1000, (2, 8), device=DEV))
        graph.replay()
        torch.testing.assert_close(static, sparse(ids, **kw).logits, rtol=3e-2, atol=3e-2)


# ---- streams ----------------------------------------------------------------------------------------------------
def test_runs_on_the_current_stream():
    """A producer writes x on one stream after a long sleep; the consumer stream waits for its
    event and runs NMLinear. Launched anywhere but the consumer stream, the kernel would read x
    before it is written (zeros: the output would be the bias alone)."""
    layer = make_layer(256, 96, "8:32", 32, torch.float32)
    src = torch.randn(5, 256, device=DEV)
    x = torch.zeros(5, 256, device=DEV)
    with torch.inference_mode():
        layer(src)                                          # prepared outside the race
        producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(producer):
            torch.cuda._sleep(200_000_000)                  # ~0.1 s of GPU time
            x.copy_(src)
            ready = torch.cuda.Event()
            ready.record(producer)
        consumer.wait_event(ready)
        with torch.cuda.stream(consumer):
            y = layer(x)
            done = torch.cuda.Event()
            done.record(consumer)
        done.synchronize()
        torch.testing.assert_close(y, layer(src))


# ---- host time per call (printed; the benchmark reports it) ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=DT_ID.get)
def test_host_time_per_call(dtype):
    """1x4096x4096 8:32 V=32: host time of one call, eager through NMLinear and the op, against
    F.linear, nmgen.spmm with torch tensors, and a CUDA graph of 100 calls replayed."""
    import nmgen
    layer = make_layer(4096, 4096, "8:32", 32, dtype, bias=False, scale=0.02)
    x = torch.randn(1, 4096, device=DEV).to(dtype)
    W = layer.to_dense()
    B = layer.to_nmmatrix()
    C = torch.empty(1, 4096, device=DEV, dtype=dtype)
    v, i = layer.values, layer.indices
    rows = {}
    with torch.inference_mode():
        layer_times = eager_and_replayed(lambda: layer(x), graph_calls=100)
        rows["NMLinear eager"] = layer_times["eager_us"]
        rows["torch.ops.nmgen.spmm"] = _host_us(lambda: torch.ops.nmgen.spmm(x, v, i, 8, 32, 32, False))
        rows["nmgen.torch.spmm(out=)"] = _host_us(lambda: nmt.spmm(x, v, i, "8:32", 32, out=C))
        rows["torch F.linear (dense)"] = _host_us(lambda: F.linear(x, W))
        rows["nmgen.spmm(A, B, out=C)"] = _host_us(lambda: nmgen.spmm(x, B, out=C), calls=50)
        rows["CUDA graph replay, per call"] = layer_times["graph_us"]
        gpu_us = layer_times["gpu_us"]
    print(f"\nhost time per call, 1x4096x4096 8:32 V=32 {DT_ID[dtype]} "
          f"({torch.cuda.get_device_name()}, torch {torch.__version__}); GPU time per call {gpu_us:.1f} us")
    for what, us in rows.items():
        print(f"  {what:<30} {us:8.1f} us")
    assert all(np.isfinite(list(rows.values())))


def test_spmm_host_time_reports_the_op_and_torch_mm():
    """nmgen.torch.overhead (what `nmgen bench --host-time` reports): eager host time per call
    above the replayed one for both, GPU time positive, the op's schedule and driver calls named."""
    from nmgen.bench import problem_of, random_nm
    from nmgen.torch.overhead import spmm_host_time
    p = problem_of((1, 1024, 1024), "8:32", 32, "row", "bf16")
    t = spmm_host_time(random_nm(p, np.random.default_rng(3)).astype("bf16"), 1, graph_calls=20)
    for what in ("nmgen_op", "torch_mm"):
        r = t[what]
        assert 0 < r["graph_us"] < r["eager_us"] < 10_000 and r["gpu_us"] > 0, (what, r)
    assert t["launches_per_call"] in (1, 2, 3) and t["schedule"]["block_n"] > 0
