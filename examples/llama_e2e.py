#!/usr/bin/env python3
"""End to end: a LLaMA-architecture decoder with every projection n:m sparse (nmgen.torch), against
the same model dense, in the same dtype and the same run.

The model is transformers' LlamaForCausalLM built from a LlamaConfig with seeded random weights
(nothing is downloaded): by default hidden 4096, intermediate 14336, 32 heads, 8 KV heads, 4 layers,
vocabulary 32000. Each pattern (--patterns, V = --vector) sparsifies q, k, v, o, gate, up and down
of every layer by magnitude (nmgen.torch.sparsify); embeddings, norms and lm_head stay dense.

Reported per pattern (and batch), everything timed with CUDA events after warm-up, medians of --reps:
  max_logit_rel_err  max |logits(sparse) - logits(masked dense)| / max |logits(masked dense)| over a
                     --prompt-token prompt (batch 1, no cache). "Masked dense" is the dense model
                     with each projection's weight replaced by NMLinear.to_dense(): the same pruned
                     weights, multiplied by cuBLAS. top1_agree: positions whose argmax agrees.
  tokens_per_s       greedy decoding with a static KV cache: a --prompt-token prefill (eager), then
                     one decode step captured in a CUDA graph (for both models), replayed --gen times
                     back to back; the span of those replays is timed; tokens/s = batch * gen / span.
  prefill_ms         one forward of --prefill tokens, batch 1, no cache, eager (the last position's
                     logits, as generation needs).
  *_bytes            the projections' weights (dense: out x in elements; sparse: values + indices),
                     and every tensor of the model.

    python examples/llama_e2e.py --json llama.json                      # bf16, 16:32 8:32 4:32, V=32
    python examples/llama_e2e.py --dtype f32 --patterns 8:32 --json f32.json
    python examples/llama_e2e.py --tiny                                 # a small model: a smoke run

Needs a CUDA GPU, torch, transformers (not an nmgen dependency) and nmgen[torch].
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

PROJECTIONS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]
DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
WARMUP_STEPS = 3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--patterns", default="16:32,8:32,4:32", help="comma-separated n:m patterns (default %(default)s)")
    ap.add_argument("--vector", type=int, default=32, help="V, output features sharing kept rows (default 32)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="both models' dtype (default bf16)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batches", default="1,16", help="decode batch sizes (default %(default)s)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens before decoding (default 128)")
    ap.add_argument("--gen", type=int, default=64, help="decode steps timed (default 64)")
    ap.add_argument("--prefill", type=int, default=2048, help="tokens of the timed prefill (default 2048)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true",
                    help="a small model (hidden 256, intermediate 512, 4 heads, 2 KV heads, 2 layers, vocab 1000, "
                         "prefill 256): checks the script, measures nothing of interest")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.tiny:
        args.hidden, args.intermediate, args.heads, args.kv_heads = 256, 512, 4, 2
        args.layers, args.vocab, args.prefill = 2, 1000, 256
    args.patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    return args


# ---- the model ---------------------------------------------------------------------------------------------
def build_dense(args, torch, transformers):
    cfg = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                                   num_hidden_layers=args.layers, vocab_size=args.vocab,
                                   max_position_embeddings=max(4096, args.prefill, args.prompt + args.gen + 8),
                                   attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg)
    return model.to(getattr(torch, DTYPES[args.dtype])).eval()


def masked_dense(dense, sparse, replaced, torch):
    """The dense model with each sparsified projection's weight replaced by its pruned dense form."""
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for name in replaced:
            masked.get_submodule(name).weight.copy_(sparse.get_submodule(name).to_dense())
    return masked


def tensor_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def projection_bytes(model, names, torch) -> int:
    total = 0
    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
        else:
            total += mod.weight_nbytes()
    return total


# ---- running it: explicit positions and 4-D masks (transformers inspects no values; graphs capture) -----------
class Runner:
    """Forwards of one model with explicit position ids, a 4-D boolean causal mask (True = attend)
    and, for decoding, a transformers StaticCache (its tensors updated in place)."""

    def __init__(self, model, torch, transformers):
        self.model, self.torch, self.transformers = model, torch, transformers
        params = inspect.signature(model.forward).parameters
        self.takes_cache_position = "cache_position" in params
        self.takes_logits_to_keep = "logits_to_keep" in params

    def logits(self, ids, positions, kv_len, cache=None, last_only=False):
        """Logits (B, L, vocab), or (B, 1, vocab) of the last position with last_only (where the
        model can skip the others: transformers' logits_to_keep)."""
        torch = self.torch
        kv = torch.arange(kv_len, device=ids.device)
        mask = kv[None, None, None, :] <= positions[:, None, :, None]            # (B, 1, L, kv_len)
        kw = dict(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=cache is not None)
        if cache is not None:
            kw["past_key_values"] = cache
            if self.takes_cache_position:            # transformers versions whose caches index by it
                kw["cache_position"] = positions[0]
        if last_only and self.takes_logits_to_keep:
            kw["logits_to_keep"] = 1
        logits = self.model(**kw).logits
        return logits[:, -1:] if last_only else logits

    def full(self, ids, last_only=False):
        """Logits of a whole sequence without a cache."""
        B, L = ids.shape
        positions = self.torch.arange(L, device=ids.device).expand(B, L)
        return self.logits(ids, positions, L, last_only=last_only)

    def static_cache(self, batch: int, max_len: int):
        StaticCache = self.transformers.StaticCache
        cfg = self.model.config
        params = inspect.signature(StaticCache.__init__).parameters
        kw = dict(config=cfg, max_cache_len=max_len)
        if "max_batch_size" in params:               # older signatures allocate up front
            kw.update(max_batch_size=batch, device=self.model.device, dtype=self.model.dtype)
        return StaticCache(**{k: v for k, v in kw.items() if k in params or "kwargs" in params})


class GraphDecoder:
    """Greedy decoding of `batch` sequences: a `prompt`-token prefill (eager), then a decode step
    captured in a CUDA graph. The graph reads and writes static tensors: the last token, its
    position (advanced by the graph), the cache."""

    def __init__(self, runner: Runner, batch: int, prompt: int, gen: int, vocab: int, seed: int, device="cuda"):
        torch = runner.torch
        self.r, self.torch, self.prompt, self.gen, self.device = runner, torch, prompt, gen, device
        self.max_len = prompt + gen + WARMUP_STEPS + 1
        self.cache = runner.static_cache(batch, self.max_len)
        g = torch.Generator(device=device).manual_seed(seed)
        self.prompt_ids = torch.randint(0, vocab, (batch, prompt), device=device, generator=g)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.graph = None

    def prefill(self):
        torch = self.torch
        self.cache.reset()
        B, P = self.prompt_ids.shape
        positions = torch.arange(P, device=self.device).expand(B, P)
        logits = self.r.logits(self.prompt_ids, positions, self.max_len, self.cache, last_only=True)
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.position.fill_(P)
        return logits

    def step(self):
        logits = self.r.logits(self.token, self.position, self.max_len, self.cache)
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.position.add_(1)
        return logits

    def capture(self):
        """Prefill, warm-up steps on a side stream (they compile and prepare nmgen's kernels for
        this batch), then capture one step."""
        torch = self.torch
        self.prefill()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def time_ms(self, reps: int) -> float:
        """Median over `reps` of the span of `gen` graph replays after a fresh prefill, per step (ms)."""
        torch = self.torch
        spans = []
        for _ in range(reps):
            self.prefill()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.gen):
                self.graph.replay()
            end.record()
            end.synchronize()
            spans.append(start.elapsed_time(end) / self.gen)
        return statistics.median(spans)


def decode_step_ms(runner, batch, args, torch) -> float:
    dec = GraphDecoder(runner, batch, args.prompt, args.gen, args.vocab, args.seed + batch)
    dec.capture()
    ms = dec.time_ms(args.reps)
    del dec
    torch.cuda.empty_cache()
    return ms


def prefill_ms(runner, args, torch) -> float:
    g = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (1, args.prefill), device="cuda", generator=g)
    for _ in range(2):
        runner.full(ids, last_only=True)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.full(ids, last_only=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def logit_error(sparse_runner, masked_runner, args, torch) -> tuple[float, float]:
    g = torch.Generator(device="cuda").manual_seed(args.seed + 2)
    ids = torch.randint(0, args.vocab, (1, args.prompt), device="cuda", generator=g)
    ls = sparse_runner.full(ids).float()
    lm = masked_runner.full(ids).float()
    err = ((ls - lm).abs().max() / lm.abs().max()).item()
    agree = (ls.argmax(-1) == lm.argmax(-1)).float().mean().item()
    return err, agree


# ---- the run ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
        import transformers
        import nmgen
        import nmgen.torch as nmt
    except ImportError as e:
        print(f"llama_e2e needs torch, transformers and nmgen[torch]: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("llama_e2e needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    print(f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, nmgen {nmgen.__version__}; "
          f"{args.dtype}, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"{args.heads}/{args.kv_heads} heads, vocab {args.vocab}", flush=True)
    torch.set_grad_enabled(False)            # inference: NMLinear refuses inputs autograd would record
    dense = build_dense(args, torch, transformers)
    dense_run = Runner(dense, torch, transformers)
    t = time.perf_counter()
    dense_decode = {b: decode_step_ms(dense_run, b, args, torch) for b in args.batches}
    dense_prefill = prefill_ms(dense_run, args, torch)
    print(f"dense: decode step {', '.join(f'B={b} {ms:.3f} ms' for b, ms in dense_decode.items())}; prefill "
          f"{args.prefill} tokens {dense_prefill:.2f} ms ({time.perf_counter() - t:.0f} s)", flush=True)
    dense_bytes = tensor_bytes(dense)
    rows = []
    for pattern in args.patterns:
        rows.extend(run_pattern(pattern, args, dense, dense_decode, dense_prefill, dense_bytes, torch, transformers,
                                nmt))
    print_table(rows, args)
    if args.json:
        result = {"device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "host": platform.node(), "torch": torch.__version__, "transformers": transformers.__version__,
                  "nmgen": nmgen.__version__, "dtype": args.dtype, "vector": args.vector,
                  "model": {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                            "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab},
                  "method": {"decode": f"prefill {args.prompt} tokens (eager), one greedy decode step with a static KV "
                                       f"cache captured in a CUDA graph, {args.gen} replays timed as one span with "
                                       f"CUDA events; median of {args.reps}; tokens/s = batch * {args.gen} / span",
                             "prefill": f"one forward of {args.prefill} tokens, batch 1, no cache, eager, the "
                                        f"last position's logits; CUDA events after 2 warm-ups; median of "
                                        f"{args.reps}",
                             "attention": "SDPA with an explicit 4-D causal mask in both models (transformers "
                                          "then reads no tensor values: nothing synchronises, graphs capture)",
                             "max_logit_rel_err": "max |logits(sparse) - logits(masked dense)| / max |logits(masked "
                                                  f"dense)| over a {args.prompt}-token prompt, batch 1"},
                  "rows": rows}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in rows) else 1


def run_pattern(pattern, args, dense, dense_decode, dense_prefill, dense_bytes, torch, transformers, nmt) -> list:
    base = {"pattern": pattern, "vector": args.vector, "dtype": args.dtype}
    try:
        with torch.no_grad():
            t = time.perf_counter()
            sparse = copy.deepcopy(dense)
            report = nmt.sparsify(sparse, pattern, args.vector, include=PROJECTIONS)
            sparsify_s = time.perf_counter() - t
            if report.skipped or not report.replaced:
                raise RuntimeError(f"sparsify left projections dense: {report}")
            sparse_run = Runner(sparse, torch, transformers)
            masked = masked_dense(dense, sparse, report.replaced, torch)
            t = time.perf_counter()
            err, agree = logit_error(sparse_run, Runner(masked, torch, transformers), args, torch)
            first_call_s = time.perf_counter() - t           # includes compiling M = prompt kernels
            del masked
            torch.cuda.empty_cache()
            decode = {b: decode_step_ms(sparse_run, b, args, torch) for b in args.batches}
            prefill = prefill_ms(sparse_run, args, torch)
            common = dict(base, max_logit_rel_err=err, top1_agree=agree, prefill_ms=prefill,
                          dense_prefill_ms=dense_prefill, prefill_speedup=dense_prefill / prefill,
                          proj_weight_bytes=projection_bytes(sparse, report.replaced, torch),
                          dense_proj_weight_bytes=projection_bytes(dense, report.replaced, torch),
                          model_bytes=tensor_bytes(sparse), dense_model_bytes=dense_bytes,
                          sparsify_s=sparsify_s, first_forward_s=first_call_s)
            rows = []
            for b in args.batches:
                rows.append(dict(common, batch=b, decode_step_ms=decode[b], dense_decode_step_ms=dense_decode[b],
                                 tokens_per_s=b * 1e3 / decode[b], dense_tokens_per_s=b * 1e3 / dense_decode[b],
                                 decode_speedup=dense_decode[b] / decode[b]))
            print(f"{pattern}: logits rel. err {err:.3g} (top-1 agree {agree:.1%}), decode "
                  f"{', '.join(f'B={b} {decode[b]:.3f} ms' for b in args.batches)}, prefill {prefill:.2f} ms "
                  f"(sparsify {sparsify_s:.0f} s, first forward {first_call_s:.0f} s)", flush=True)
            del sparse
            torch.cuda.empty_cache()
            return rows
    except Exception as e:  # noqa: BLE001 - one pattern's failure is reported, the others still run
        import traceback
        traceback.print_exc()
        print(f"{pattern}: FAILED: {type(e).__name__}: {e}", flush=True)
        return [dict(base, batch=b, error=f"{type(e).__name__}: {e}") for b in args.batches]


def print_table(rows, args):
    head = (f"{'pattern':>8} {'batch':>5} {'tok/s':>9} {'dense':>9} {'x':>6} {'prefill ms':>10} {'dense':>8} {'x':>6} "
            f"{'logit err':>9} {'top1':>6} {'proj MB':>8} {'dense':>8}")
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['pattern']:>8} {r['batch']:>5}  FAILED: {r['error'][:80]}")
            continue
        print(f"{r['pattern']:>8} {r['batch']:>5} {r['tokens_per_s']:>9.1f} {r['dense_tokens_per_s']:>9.1f} "
              f"{r['decode_speedup']:>6.2f} {r['prefill_ms']:>10.2f} {r['dense_prefill_ms']:>8.2f} "
              f"{r['prefill_speedup']:>6.2f} {r['max_logit_rel_err']:>9.2e} {r['top1_agree']:>6.1%} "
              f"{r['proj_weight_bytes'] / 2**20:>8.1f} {r['dense_proj_weight_bytes'] / 2**20:>8.1f}")
    print(f"({args.dtype}, V={args.vector}; decode: {args.gen} CUDA-graph steps after a {args.prompt}-token prompt; "
          f"prefill: {args.prefill} tokens, batch 1; x: dense time / sparse time)")


if __name__ == "__main__":
    sys.exit(main())
