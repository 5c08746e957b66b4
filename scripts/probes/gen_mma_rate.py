"""Generates mma_rate.cu: the issue rate of the tensor-core instructions nmgen can use on an H200,
measured alone (no memory traffic): wgmma m64nNk16 bf16 with A from registers (RS) or shared
memory (SS) for N = 8..256, and mma.sync m16n8k16 bf16. Each kernel chains `per_group`
instructions a group, keeps one group in flight (wait_group 1) and reports MAC/clk/SM.
Build:  python3 scripts/probes/gen_mma_rate.py > /tmp/mma_rate.cu &&
        nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o scripts/probes/mma_rate /tmp/mma_rate.cu
Values in the operands are garbage: only the rate is measured."""
import sys

NS = (8, 16, 32, 64, 128, 256)


def wgmma_kernel(n, rs, wgs, sets):
    acc = n // 2
    outs = ",".join(f"%{i}" for i in range(acc))
    cons = ",".join(['"+f"(d[%d])' % i for i in range(acc)])
    if rs:
        a_ops = "{%%%d,%%%d,%%%d,%%%d}" % (acc, acc + 1, acc + 2, acc + 3)
        desc = f"%{acc + 4}"
        ins = '"r"(a[s][0]),"r"(a[s][1]),"r"(a[s][2]),"r"(a[s][3]),"l"(db)'
        text = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{outs}}}, {a_ops}, {desc}, 1, 1, 1, 0;"
    else:
        text = (f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{outs}}}, %{acc}, %{acc + 1}, 1, 1, 1, 0, 0;")
        ins = '"l"(da + s * 2),"l"(db)'
    name = f"wg_{'rs' if rs else 'ss'}_n{n}_w{wgs}_s{sets}"
    return name, f"""
extern "C" __global__ void __launch_bounds__({128 * wgs}, 1) {name}(int iters, float *out) {{
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned base = (unsigned)__cvta_generic_to_shared(smem);
  unsigned long long db = ((base >> 4) & 0x3FFF) | (8ull << 16) | (64ull << 32);
  unsigned long long da = db + (4096 >> 4);   // A 4 KB past B (descriptor address field: bytes >> 4)
  float d[{acc}];
  for (int i = 0; i < {acc}; ++i) d[i] = 0.f;
  unsigned a[{sets}][4];
  for (int s = 0; s < {sets}; ++s) for (int i = 0; i < 4; ++i) a[s][i] = threadIdx.x * 7 + s * 3 + i;
  for (int it = 0; it < iters; ++it) {{
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    #pragma unroll
    for (int j = 0; j < 8; ++j) {{
      const int s = j % {sets};
      asm volatile("{text}" : {cons} : {ins});
    }}
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
  }}
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  float s = 0; for (int i = 0; i < {acc}; ++i) s += d[i];
  if (s == 1234.5f) out[threadIdx.x] = s;
}}
"""


def mma_sync_kernel(warps, tiles):
    # each warp: `tiles` independent m16n8k16 accumulators, A and B fixed registers
    name = f"mma_sync_w{warps}_t{tiles}"
    return name, f"""
extern "C" __global__ void __launch_bounds__({32 * warps}, 1) {name}(int iters, float *out) {{
  float d[{tiles}][4];
  for (int t = 0; t < {tiles}; ++t) for (int i = 0; i < 4; ++i) d[t][i] = 0.f;
  unsigned a0 = threadIdx.x, a1 = a0 * 3, a2 = a0 * 5, a3 = a0 * 7, b0 = a0 * 11, b1 = a0 * 13;
  for (int it = 0; it < iters; ++it) {{
    #pragma unroll
    for (int t = 0; t < {tiles}; ++t)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};"
                   : "+f"(d[t][0]), "+f"(d[t][1]), "+f"(d[t][2]), "+f"(d[t][3])
                   : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }}
  float s = 0; for (int t = 0; t < {tiles}; ++t) for (int i = 0; i < 4; ++i) s += d[t][i];
  if (s == 1234.5f) out[threadIdx.x] = s;
}}
"""


def main():
    kernels = []   # (name, source, threads, macs per block per iteration)
    for rs in (1, 0):
        for n in NS:
            for wgs in (1, 2, 3):
                for sets in ((1, 4) if rs else (1,)):
                    if n == 256 and wgs == 3:
                        continue
                    name, src = wgmma_kernel(n, rs, wgs, sets)
                    kernels.append((name, src, 128 * wgs, 8 * 64 * n * 16 * wgs))
    for warps in (4, 8, 16):
        for tiles in (4, 8):
            name, src = mma_sync_kernel(warps, tiles)
            kernels.append((name, src, 32 * warps, tiles * 16 * 8 * 16 * warps))
    out = ["#include <cstdio>\n#include <cuda_runtime.h>\n"] + [k[1] for k in kernels]
    out.append("""
template <class F> void run(const char *name, F f, int threads, double macs_per_iter, int sms, int clk_khz, float *buf) {
  cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536);
  int iters = 4000;
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  f<<<sms, threads, 65536>>>(10, buf);
  cudaEventRecord(e0);
  for (int r = 0; r < 5; ++r) f<<<sms, threads, 65536>>>(iters, buf);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1);
  cudaError_t err = cudaGetLastError();
  double clk = ms / 5 * 1e-3 * clk_khz * 1e3;
  printf("%-22s %8.1f MAC/clk/SM  %7.1f TF/s  %s\\n", name, macs_per_iter * iters / clk, 2 * macs_per_iter * iters * sms / (ms / 5 * 1e-3) / 1e12,
         err == cudaSuccess ? "" : cudaGetErrorString(err));
}
int main() {
  cudaDeviceProp p; cudaGetDeviceProperties(&p, 0);
  int clk; cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
  printf("%s, %d SMs, clock %d kHz (the MAC/clk figures assume it)\\n", p.name, p.multiProcessorCount, clk);
  float *buf; cudaMalloc(&buf, 4096 * 4);
""")
    for name, _, threads, macs in kernels:
        out.append(f'  run("{name}", {name}, {threads}, {macs}.0, p.multiProcessorCount, clk, buf);\n')
    out.append("  return 0;\n}\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
