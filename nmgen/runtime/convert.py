"""fp32 -> bf16 / f16 conversion of a whole array on the GPU: the last step of a split-K product
with a 16-bit C, whose partial sums are added atomically into an fp32 workspace first.

Hand-written PTX (ISA 8.0, sm_80: the driver JIT compiles it for the GPU that runs it), a grid-stride
loop of one element a thread and step, rounding to nearest (cvt.rn). Memory-bound: 6 bytes an element.
"""
from __future__ import annotations

from .driver import check, driver
from .module import load

NAMES = {"bf16": "nmgen_f32_to_bf16", "f16": "nmgen_f32_to_f16"}
THREADS = 256


def _ptx(name: str, cvt: str) -> str:
    return f"""\
.version 8.0
.target sm_80
.address_size 64

// dst[i] = {cvt}(src[i]) for i < n, a grid-stride loop
.visible .entry {name}(.param .u64 src, .param .u64 dst, .param .u64 n)
{{
    .reg .u64   %src, %dst, %n, %i, %step, %a;
    .reg .u32   %t, %c, %nt, %nc;
    .reg .f32   %x;
    .reg .b16   %h;
    .reg .pred  %more;
    ld.param.u64    %src, [src];
    ld.param.u64    %dst, [dst];
    ld.param.u64    %n, [n];
    mov.u32         %t, %tid.x;
    mov.u32         %c, %ctaid.x;
    mov.u32         %nt, %ntid.x;
    mov.u32         %nc, %nctaid.x;
    mul.wide.u32    %i, %c, %nt;
    cvt.u64.u32     %a, %t;
    add.u64         %i, %i, %a;
    mul.wide.u32    %step, %nc, %nt;
LOOP:
    setp.lt.u64     %more, %i, %n;
    @!%more bra     DONE;
    shl.b64         %a, %i, 2;
    add.u64         %a, %a, %src;
    ld.global.f32   %x, [%a];
    {cvt}    %h, %x;
    shl.b64         %a, %i, 1;
    add.u64         %a, %a, %dst;
    st.global.b16   [%a], %h;
    add.u64         %i, %i, %step;
    bra             LOOP;
DONE:
    ret;
}}
"""


PTX = {"bf16": _ptx(NAMES["bf16"], "cvt.rn.bf16.f32"), "f16": _ptx(NAMES["f16"], "cvt.rn.f16.f32")}


def convert(src: int, dst: int, count: int, dtype: str, stream: int = 0, device: int = 0) -> None:
    """Enqueue on `stream`: `count` fp32 values at device address `src` rounded to `dtype` ("bf16"
    or "f16") at `dst`."""
    if count <= 0:
        return
    blocks = min(-(-count // THREADS), 8 * 1024)
    load(PTX[dtype], NAMES[dtype], 0, device).launch((blocks, 1, 1), THREADS, [src, dst, count], stream)


def memset16(ptr: int, count: int, value: int, stream: int = 0) -> None:
    """Enqueue `count` 16-bit stores of `value` at `ptr` (a NaN poison for a 16-bit C)."""
    check(driver().cuMemsetD16Async(ptr, value, count, stream), "cuMemsetD16Async")
