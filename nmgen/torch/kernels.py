"""Prepared kernels per compressed weight: made on first use for each M, found again in about a
microsecond, launched on torch's current stream with one driver call.

A compressed weight is two CUDA tensors, `values` (W, N) and `indices` (W, ceil(N/V)) (the
NMMatrix format, nmgen.format), plus the pattern (n, m, V). `weights_for` finds its entry by the
identity of the values tensor (a weak reference: the entry goes with the tensor) and checks that
neither tensor was replaced or changed in place since (data pointers, version counters): after
`load_state_dict` (an in-place copy) the next call prepares afresh. An entry holds:

  - the NMMatrix (host copy of the weights; read once from the GPU, which synchronises),
  - per (M, allow_tf32, C dtype) a `Prepared`: the compiled kernel bound to the weights' layout
    for its schedule (nmgen.prepared.PreparedSpMM),
  - per layout (schedules of several M may share one) the laid-out weights as torch CUDA
    tensors (uint8), so their memory is torch's and counted by torch.cuda.memory_allocated.

Preparing compiles, uploads and synchronises: it is refused while a CUDA graph is being captured
(run the model once with that batch size first). Launching allocates only what the caller passes
(the output), except in three rare cases: an A of an odd 16-bit row length or misaligned (copied
to the kernel's pitch), and the fp32 scratch of a split-K kernel with a 16-bit C (one per
(GPU, stream), reused; a temporary of the graph's memory pool while capturing).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

from ..errors import ShapeError
from ..ir.operands import layout_key
from ..ir.problem import Pattern, ceil_div

NM_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
DEVICE_TYPES = ("cuda",)        # where the weights may live (the CPU tests add "cpu", with an emulated GPU)
TORCH_DTYPES = {v: k for k, v in NM_DTYPES.items()}

_entries: dict[int, "Weights"] = {}       # id(values tensor) -> entry
_lock = threading.RLock()
_workspaces: dict[tuple[int, int], torch.Tensor] = {}   # (device, stream) -> fp32 scratch (uint8 bytes)


def dtype_name(dt: torch.dtype) -> str | None:
    """nmgen's name ("f32", "bf16", "f16") of a torch dtype, or None."""
    return NM_DTYPES.get(dt)


# ---- torch's stream and capture state, at the lowest cost torch offers ------------------------------
def _raw_stream_slow(device: int) -> int:
    return torch.cuda.current_stream(device).cuda_stream


current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or _raw_stream_slow


_is_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)


def capturing() -> bool:
    """Whether torch's current CUDA stream is being captured into a CUDA graph."""
    if not torch.cuda.is_initialized():
        return False
    return bool(_is_capturing()) if _is_capturing is not None else torch.cuda.is_current_stream_capturing()


def refuse_while_capturing(what: str) -> None:
    if capturing():
        raise RuntimeError(f"nmgen: {what} compiles a kernel and copies the weights (synchronising the GPU), "
                           f"which cannot happen while a CUDA graph is captured; run the model once with the same "
                           f"batch shape before capturing (a warm-up call prepares the kernel)")


# ---- checking the compressed weight --------------------------------------------------------------
def check_weights(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, vector: int) -> tuple[int, int]:
    """(K, N) of a compressed weight after checking its tensors against the pattern; ShapeError or
    PatternError (from Pattern) saying what is wrong otherwise. Works on any device, meta too."""
    p = Pattern(n, m, vector)
    if values.dim() != 2 or indices.dim() != 2:
        raise ShapeError(f"values and indices must be 2-D (W, N) and (W, ceil(N/V)), got shapes "
                         f"{tuple(values.shape)} and {tuple(indices.shape)}")
    W, N = values.shape
    if dtype_name(values.dtype) is None:
        raise ShapeError(f"values hold {values.dtype}; nmgen computes with torch.float32, torch.bfloat16 or "
                         f"torch.float16")
    if indices.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        raise ShapeError(f"indices hold {indices.dtype}; they must be integers (uint8, int16, int32 or int64)")
    if W < 1 or W % p.n or N < 1:
        raise ShapeError(f"values {tuple(values.shape)} must have a positive multiple of n={p.n} rows (K*n/m kept "
                         f"rows) and at least one column")
    if tuple(indices.shape) != (W, ceil_div(N, p.vector)):
        raise ShapeError(f"indices {tuple(indices.shape)} must be ({W}, {ceil_div(N, p.vector)}) for values "
                         f"{tuple(values.shape)} with vectors of V={p.vector} columns")
    if values.device != indices.device:
        raise ShapeError(f"values are on {values.device} but indices on {indices.device}: move both (module.to)")
    return W // p.n * p.m, N


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    from ..arrays import to_numpy
    return to_numpy(t)


# ---- the cache -----------------------------------------------------------------------------------
def weights_for(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, vector: int) -> "Weights":
    """The entry of this compressed weight, made (checked, read to the host) when there is none or
    the tensors were replaced or changed in place since."""
    e = _entries.get(id(values))
    if e is not None and e.matches(values, indices, n, m, vector):
        return e
    with _lock:
        e = _entries.get(id(values))
        if e is not None and e.matches(values, indices, n, m, vector):
            return e
        e = Weights(values, indices, n, m, vector)
        _entries[id(values)] = e
        return e


def _forget(key: int, entry_ref):
    def callback(_):
        with _lock:
            if _entries.get(key) is entry_ref():
                _entries.pop(key, None)
    return callback


def clear() -> None:
    """Drop every prepared kernel and laid-out weight (they are made again on the next call)."""
    with _lock:
        _entries.clear()
        _workspaces.clear()


class Prepared:
    """One (M, allow_tf32, C dtype) of one weight: the bound kernel and what a call needs to check."""

    __slots__ = ("core", "operands", "a_alignment", "c_alignment", "pad_to", "workspace_bytes")

    def __init__(self, core, operands: dict):
        self.core, self.operands = core, operands       # operands: the laid-out weights (kept alive)
        self.a_alignment, self.c_alignment = core.a_alignment, core.c_alignment
        self.pad_to = core.lda if core.lda != core.K else 0
        self.workspace_bytes = core.workspace_bytes


class Weights:
    """A compressed weight on one GPU and its prepared kernels (see the module's docstring)."""

    def __init__(self, values: torch.Tensor, indices: torch.Tensor, n: int, m: int, vector: int):
        self.K, self.N = check_weights(values, indices, n, m, vector)
        if values.device.type not in DEVICE_TYPES:
            raise ShapeError(f"the weights are on {values.device}; nmgen's kernels run on CUDA tensors "
                             f"(module.cuda() or .to('cuda'))")
        refuse_while_capturing(f"reading the {self.K}x{self.N} {n}:{m} weights for the first time")
        from ..format import NMMatrix
        self.pattern_key = (n, m, vector)
        self.device = values.get_device()
        self.dtype = values.dtype
        ix = _to_numpy(indices)
        ix = ix.astype(np.uint8 if m <= 256 else np.uint16, copy=False)
        # NMMatrix checks the indices (in [0, m), increasing per window) and the values (finite)
        self.nm = NMMatrix(_to_numpy(values), ix, Pattern(n, m, vector), (self.K, self.N))
        self._values = weakref.ref(values, _forget(id(values), weakref.ref(self)))
        self._indices = weakref.ref(indices)
        self._ptrs = (values.data_ptr(), indices.data_ptr())
        self._tracked = not (values.is_inference() or indices.is_inference())
        self._versions = (values._version, indices._version) if self._tracked else None
        self.prepared: dict = {}       # (M, allow_tf32, C dtype) -> Prepared
        self.layouts: dict = {}        # nmgen.ir.operands.layout_key -> {"Bv": tensor, ...}

    def matches(self, values, indices, n, m, vector) -> bool:
        """Whether this entry still describes these tensors: the same objects, storage and contents
        (version counters; tensors made in inference mode have none and are trusted)."""
        return (self._values() is values and self._indices() is indices
                and (values.data_ptr(), indices.data_ptr()) == self._ptrs and (n, m, vector) == self.pattern_key
                and (not self._tracked or (values._version, indices._version) == self._versions))

    # ---- preparing ----
    def prepare(self, M: int, allow_tf32: bool, c_dtype: torch.dtype) -> Prepared:
        """The kernel for an (M, K) A and a C of `c_dtype`, compiled and bound on first use."""
        key = (M, allow_tf32, c_dtype)
        p = self.prepared.get(key)
        if p is not None:
            return p
        with _lock:
            p = self.prepared.get(key)
            if p is None:
                p = self.prepared[key] = self._prepare(M, allow_tf32, c_dtype)
        return p

    def _prepare(self, M: int, allow_tf32: bool, c_dtype: torch.dtype) -> Prepared:
        from .. import api
        from ..prepared import PreparedSpMM
        refuse_while_capturing(f"preparing the kernel for M={M} ({M}x{self.N}x{self.K} {self.nm.pattern})")
        storage = self.nm.dtype
        compute = api.compute_dtype(storage, allow_tf32, self.nm.pattern.vector)
        c_name = dtype_name(c_dtype)
        if c_name is None:
            raise ShapeError(f"the output holds {c_dtype}; nmgen writes torch.float32, torch.bfloat16 or torch.float16")
        with _on_device(self.device):    # module loading makes the GPU's primary context current
            k = api.compile((M, self.N, self.K), self.nm.pattern, B=self.nm, device=self.device, dtype=compute,
                            c_dtype=c_name)
            layout = layout_key(k.problem, k.schedule)
            ops = self.layouts.get(layout)
            if ops is None:
                host = api.host_operands(self.nm, k.problem, k.schedule)
                ops = self.layouts[layout] = {name: _upload(a, self.device) for name, a in
                                              (("Bv", host.bv), ("Bi", host.bi), ("Arows", host.arows))
                                              if a is not None}
            core = PreparedSpMM(k, {name: t.data_ptr() for name, t in ops.items()}, self.device)
        return Prepared(core, ops)

    # ---- launching ----
    def run(self, a: torch.Tensor, c: torch.Tensor, allow_tf32: bool = False, M: int | None = None) -> None:
        """Enqueue c = a @ B on torch's current stream of the weights' GPU. `a` (M, K) of the
        weights' dtype and `c` (M, N), M >= 1, on that GPU, checked by the caller; `c` must not
        overlap `a` (the caller's output). With `M` given, `a` (..., K) and `c` (..., N) may have
        any leading dimensions holding M rows, `c` contiguous. Nothing is synchronised."""
        if M is None:
            M = a.shape[0]
        p = self.prepared.get((M, allow_tf32, c.dtype)) or self.prepare(M, allow_tf32, c.dtype)
        stream = current_stream(self.device)
        a_ptr = a.data_ptr()
        if p.pad_to or a_ptr % p.a_alignment or not a.is_contiguous():
            a = _pitched(a.reshape(M, self.K), p.pad_to or self.K)   # referenced until the launch is enqueued
            a_ptr = a.data_ptr()
        c_ptr = c.data_ptr()
        if c_ptr % p.c_alignment:
            tmp = torch.empty_like(c, memory_format=torch.contiguous_format)
            self._launch(p, a_ptr, tmp.data_ptr(), stream)
            c.copy_(tmp)
            return
        self._launch(p, a_ptr, c_ptr, stream)

    def _launch(self, p: Prepared, a_ptr: int, c_ptr: int, stream: int) -> None:
        if p.workspace_bytes:
            ws, zeroed = workspace(self.device, stream, p.workspace_bytes)
            p.core.launch(a_ptr, c_ptr, stream, ws.data_ptr(), zeroed)
        else:
            p.core.launch(a_ptr, c_ptr, stream)

    def layout_bytes(self) -> int:
        """Bytes of the laid-out weights this entry holds on the GPU (all layouts)."""
        return sum(t.numel() * t.element_size() for ops in self.layouts.values() for t in ops.values())


def _on_device(device: int):
    """torch's current GPU set to `device` for the block (its context is the one nmgen loads into)."""
    import contextlib
    return torch.cuda.device(device) if device >= 0 else contextlib.nullcontext()


def torch_device(device: int) -> torch.device:
    """torch's device of a CUDA ordinal (-1, torch's get_device() of a CPU tensor: the CPU)."""
    return torch.device("cuda", device) if device >= 0 else torch.device("cpu")


def _upload(a: np.ndarray, device: int) -> torch.Tensor:
    """A host array's bytes as a uint8 CUDA tensor (torch's memory)."""
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy()
    return torch.from_numpy(raw).to(device=torch_device(device))


def _pitched(a: torch.Tensor, lda: int) -> torch.Tensor:
    """A row-major copy of `a` (M, K) in a fresh (aligned) buffer with rows of `lda` elements."""
    M, K = a.shape
    if lda == K:
        return a.clone(memory_format=torch.contiguous_format)
    buf = torch.zeros((M, lda), dtype=a.dtype, device=a.device)
    buf[:, :K] = a
    return buf


def workspace(device: int, stream: int, nbytes: int) -> tuple[torch.Tensor, bool]:
    """(scratch, zeroed): fp32 scratch of at least `nbytes` for kernels that reduce split parts
    themselves (split-K into a 16-bit C, a tail split) on (device, stream), and whether it holds
    zeros. Eager: one per stream, zeroed when made and reused by every such launch on it in stream
    order, each of which leaves it zeroed (nmgen.prepared: no memset per call). While a CUDA graph
    is being captured, a temporary from the graph's pool instead (not zeroed: the launch clears it;
    freed after it, as any other intermediate of the captured work), so graphs never share scratch
    with eager work."""
    if capturing():
        return torch.empty(nbytes, dtype=torch.uint8, device=torch_device(device)), False
    key = (device, stream)
    ws = _workspaces.get(key)
    if ws is None or ws.numel() < nbytes:
        size = max(nbytes, 2 * ws.numel()) if ws is not None else nbytes
        ws = _workspaces[key] = torch.zeros(size, dtype=torch.uint8, device=torch_device(device))
    return ws, True
