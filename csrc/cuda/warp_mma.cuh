// Warp-level tensor-core and copy primitives (PTX) of the mma.sync SupCon kernels.
//
// Everything the kernels in supcon_mma.cuh do below plain CUDA C++ goes through this short list,
// so that tests/emu/warp_emu.h can supply the same functions on a CPU (one std::thread per CUDA
// thread) and the kernels' tiling, masks and reductions run in CI without a GPU. The fragment
// layouts are those of the PTX ISA ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k8"):
// groupID g = lane >> 2, threadID_in_group t = lane & 3; accumulators c0, c1 at (g, 2t + {0, 1}),
// c2, c3 at (g + 8, 2t + {0, 1}).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace ct_kernels {
namespace cuda {
namespace warp {

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x & 31u); }

// d += A * B, fp32 accumulation, one warp: A 16 x 16 (row-major fragment), B 16 x 8 (column-major)
// for bf16 / fp16; A 16 x 8, B 8 x 8 for tf32 (a / b hold tf32 bit patterns, see to_tf32). The
// host selects these paths on sm_80+ only.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define CT_MMA_SYNC(shape_types)                                                                  \
  asm volatile("mma.sync.aligned." shape_types " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#else
#define CT_MMA_SYNC(shape_types) __trap()
#endif
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CT_MMA_SYNC("m16n8k16.row.col.f32.bf16.bf16.f32");
}
__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CT_MMA_SYNC("m16n8k16.row.col.f32.f16.f16.f32");
}
__device__ __forceinline__ void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  CT_MMA_SYNC("m16n8k8.row.col.f32.tf32.tf32.f32");
}
#undef CT_MMA_SYNC

// Two 8 x 8 matrices of 16-bit elements, transposed: lanes 0-7 give the row addresses of the
// first, lanes 8-15 of the second (16-byte aligned shared memory). Lane (g, t) receives rows
// 2t, 2t + 1 of column g of each: the B fragment of m16n8k16 from a row-major [k][n] tile.
__device__ __forceinline__ void ldsm_x2_trans(uint32_t (&b)[2], const uint16_t* row_ptr) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(row_ptr));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(addr));
}

// 16-byte global -> shared copy that bypasses registers; full == false writes 16 zero bytes.
// Below sm_80 (built for such an arch, never run there: see above) a plain copy.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool full) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = full ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes));
#else
  *static_cast<uint4*>(smem) = full ? *static_cast<const uint4*>(gmem) : make_uint4(0u, 0u, 0u, 0u);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  return __float_as_uint(x);
#endif
}
__device__ __forceinline__ float bits_to_float(uint32_t b) { return __uint_as_float(b); }
__device__ __forceinline__ uint32_t float_to_bits(float x) { return __float_as_uint(x); }

// An empty asm that the compiler must assume changes v: what is computed from v afterwards is not
// hoisted out of the enclosing loop (the 3xTF32 splits of loop-invariant fragments would otherwise
// be kept for the whole sweep, in twice the registers).
__device__ __forceinline__ void opaque(uint32_t& v) { asm volatile("" : "+r"(v)); }

// 2^x on the special-function unit (what Triton's tl.exp2 emits): relative error ~2^-22,
// exp2(-inf) = +0, subnormal results flushed to zero.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as one register of 16-bit values, lo in the low half (the lower column index).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace warp
}  // namespace cuda
}  // namespace ct_kernels
