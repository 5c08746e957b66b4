"""Development probe: how fast can an SM pull bytes from L2 into shared memory, by cp.async (each
thread 16-byte copies, cp.async groups) and by the bulk copy engine (cp.async.bulk, completion on an
mbarrier), at several pipeline depths and copy sizes? No arithmetic: a pipeline of 32 KB chunks
read from an L2-resident buffer, every thread waiting for each chunk and a barrier before its
stage is refilled (the structure of nmgen's kernels without their multiply-adds).

    python scripts/probes/l2_copy_rate.py [--json OUT]

Prints TB/s over all SMs and bytes per SM and clock (the chip's SM clock from the driver).
"""
import argparse
import json
import sys

CHUNK = 32 * 1024          # bytes a block copies per pipeline step
THREADS = 256
SRC_BYTES = 32 << 20       # L2-resident (the H200's L2 is 50 MB)


def _entry(name: str, regs32: str, preds: str) -> str:
    """PTX up to a kernel's body: its three parameters (source, iterations, chunk mask) loaded into
    %base, %iters and %mask; %t, %cta and %sm hold the thread, the block and the shared window's base."""
    return f"""
.version 8.1
.target sm_90
.address_size 64
.extern .shared .align 128 .b8 smem[];
.visible .entry {name}(.param .u64 p_src, .param .u64 p_iters, .param .u64 p_mask)
{{
  .reg .b64 %base, %src, %off;
  .reg .b32 %t, %cta, %it, %iters, %mask, %chunk, %stage, %dst, %next, %sm{regs32};
  .reg .pred %p{preds};
  ld.param.u64 %base, [p_src];
  ld.param.u64 %off, [p_iters]; cvt.u32.u64 %iters, %off;
  ld.param.u64 %off, [p_mask]; cvt.u32.u64 %mask, %off;
  mov.u32 %t, %tid.x;
  mov.u32 %cta, %ctaid.x;
  mov.u32 %sm, smem;"""


def _chunk_src(step: str) -> str:
    """PTX: %src <- the chunk this block copies at pipeline step `step` (a register), chunks taken
    in turn by the blocks and wrapped around the source buffer (%mask)."""
    return (f"mad.lo.u32 %chunk, %cta, %iters, {step}; and.b32 %chunk, %chunk, %mask;\n"
            f"  mul.wide.u32 %off, %chunk, {CHUNK}; add.u64 %src, %base, %off;")


def cp_async_ptx(stages: int) -> str:
    per_thread = CHUNK // 16 // THREADS
    issue = []
    for j in range(per_thread):
        issue.append(f"cp.async.cg.shared.global [%dst+{j * THREADS * 16}], [%src+{j * THREADS * 16}], 16;")
    issue = "\n    ".join(issue)
    return _entry("cp_async_rate", "", "") + f"""
  mov.u32 %it, 0;
PRO:
  setp.ge.u32 %p, %it, {stages - 1};
  @%p bra LOOP0;
  {_chunk_src("%it")}
  mul.wide.u32 %off, %t, 16; add.u64 %src, %src, %off;
  mul.lo.u32 %dst, %it, {CHUNK}; add.u32 %dst, %dst, %sm; mad.lo.u32 %dst, %t, 16, %dst;
  {issue}
  cp.async.commit_group;
  add.u32 %it, %it, 1;
  bra PRO;
LOOP0:
  mov.u32 %it, 0;
LOOP:
  setp.ge.u32 %p, %it, %iters;
  @%p bra DONE;
  cp.async.wait_group {stages - 2};
  bar.sync 0;
  add.u32 %next, %it, {stages - 1};
  setp.ge.u32 %p, %next, %iters;
  @%p bra COMMIT;
  {_chunk_src("%next")}
  mul.wide.u32 %off, %t, 16; add.u64 %src, %src, %off;
  rem.u32 %stage, %next, {stages};
  mul.lo.u32 %dst, %stage, {CHUNK}; add.u32 %dst, %dst, %sm; mad.lo.u32 %dst, %t, 16, %dst;
  {issue}
COMMIT:
  cp.async.commit_group;
  add.u32 %it, %it, 1;
  bra LOOP;
DONE:
  cp.async.wait_group 0;
  ret;
}}
"""


def bulk_ptx(stages: int, pieces: int) -> str:
    piece = CHUNK // pieces
    bars = stages * CHUNK          # the mbarriers after the stages
    issue = f"""
  // thread 0 expects the chunk's bytes; lanes < {pieces} copy a piece each
  setp.ne.u32 %p, %t, 0;
  @%p bra NOEXPECT_%L;
  mbarrier.arrive.expect_tx.shared::cta.b64 _, [%bar], {CHUNK};
NOEXPECT_%L:
  setp.ge.u32 %p, %t, {pieces};
  @%p bra NOCOPY_%L;
  mul.wide.u32 %off, %t, {piece}; add.u64 %src, %src, %off;
  mad.lo.u32 %dst, %t, {piece}, %dst;
  cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%dst], [%src], {piece}, [%bar];
NOCOPY_%L:"""
    return _entry("bulk_rate", ", %bar, %par", ", %q") + f"""
  setp.ne.u32 %p, %t, 0;
  @%p bra INITED;
  mov.u32 %it, 0;
INIT:
  mad.lo.u32 %bar, %it, 8, %sm; add.u32 %bar, %bar, {bars};
  mbarrier.init.shared::cta.b64 [%bar], 1;
  add.u32 %it, %it, 1;
  setp.lt.u32 %q, %it, {stages};
  @%q bra INIT;
  fence.mbarrier_init.release.cluster;
INITED:
  bar.sync 0;
  mov.u32 %it, 0;
PRO:
  setp.ge.u32 %p, %it, {stages - 1};
  @%p bra LOOP0;
  {_chunk_src("%it")}
  mul.lo.u32 %dst, %it, {CHUNK}; add.u32 %dst, %dst, %sm;
  mad.lo.u32 %bar, %it, 8, %sm; add.u32 %bar, %bar, {bars};
  {issue.replace('%L', 'P')}
  add.u32 %it, %it, 1;
  bra PRO;
LOOP0:
  mov.u32 %it, 0;
LOOP:
  setp.ge.u32 %p, %it, %iters;
  @%p bra DONE;
  rem.u32 %stage, %it, {stages};
  mad.lo.u32 %bar, %stage, 8, %sm; add.u32 %bar, %bar, {bars};
  div.u32 %par, %it, {stages}; and.b32 %par, %par, 1;
WAIT:
  mbarrier.try_wait.parity.shared::cta.b64 %q, [%bar], %par;
  @!%q bra WAIT;
  bar.sync 0;
  add.u32 %next, %it, {stages - 1};
  setp.ge.u32 %p, %next, %iters;
  @%p bra NEXT;
  {_chunk_src("%next")}
  rem.u32 %stage, %next, {stages};
  mul.lo.u32 %dst, %stage, {CHUNK}; add.u32 %dst, %dst, %sm;
  mad.lo.u32 %bar, %stage, 8, %sm; add.u32 %bar, %bar, {bars};
  {issue.replace('%L', 'L')}
NEXT:
  add.u32 %it, %it, 1;
  bra LOOP;
DONE:
  ret;
}}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--iters", type=int, default=400)
    args = ap.parse_args()
    from nmgen.codegen.ptxas import assemble_cubin
    from nmgen.runtime.driver import device_info, driver, init
    from nmgen.runtime.memory import DeviceBuffer, synchronize
    from nmgen.runtime.module import load
    from nmgen.runtime.timing import time_gpu
    init()
    dev = device_info(0)
    clock_hz = driver().cuDeviceGetAttribute(driver().CUdevice_attribute.CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 0)[1] * 1e3
    src = DeviceBuffer(SRC_BYTES)
    mask = SRC_BYTES // CHUNK - 1
    rows = []
    variants = [("cp.async", s, None) for s in (3, 4, 6)] + \
               [("bulk", s, p) for s in (3, 4, 6) for p in (1, 4, 32)]
    for kind, stages, pieces in variants:
        ptx = cp_async_ptx(stages) if kind == "cp.async" else bulk_ptx(stages, pieces)
        name = "cp_async_rate" if kind == "cp.async" else "bulk_rate"
        smem = stages * CHUNK + 8 * stages
        k = load(assemble_cubin(ptx, "sm_90")[1], name, smem)
        for per_sm in (1, 2) if smem * 2 <= 227 * 1024 else (1,):
            grid = dev.sms * per_sm
            iters = args.iters // per_sm
            run = lambda: k.launch((grid, 1, 1), THREADS, [src.ptr, iters, mask])   # noqa: E731
            run()
            synchronize(0, name)
            t = time_gpu(run, 0, 5, 20).median_ms * 1e-3
            nbytes = grid * iters * CHUNK
            row = {"copy": kind, "stages": stages, "pieces": pieces, "blocks_per_sm": per_sm,
                   "tb_s": nbytes / t / 1e12, "bytes_per_sm_clk": nbytes / t / dev.sms / clock_hz}
            rows.append(row)
            what = f"{kind} s{stages}" + (f" {pieces}x{CHUNK // pieces // 1024}KB" if pieces else "")
            print(f"{what:22s} {per_sm} block/SM: {row['tb_s']:5.2f} TB/s  {row['bytes_per_sm_clk']:5.1f} B/SM/clk",
                  flush=True)
    print(f"device: {dev.name}, SM clock {clock_hz / 1e6:.0f} MHz (driver's maximum)")
    if args.json:
        json.dump({"device": dev.name, "rows": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
