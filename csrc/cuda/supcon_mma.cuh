// Fused SupCon / per-positive InfoNCE, forward and backward, on mma.sync tensor cores (bf16 / fp16,
// float32 as tf32, or float32 as 3xTF32 when tf32 is off), without hard mining, for D <= 128. The layout of flash attention 2: each
// warp owns 16 (forward: or 32) anchor rows, holds their U fragments in registers for the whole
// sweep, and keeps its 16 x BN tiles of s (and of the gradient weights H) in the mma accumulators, so the masked
// log-sum-exp and H never leave registers; column tiles of U stream through shared memory, the
// next one loading (cp.async) while the current one is used. The backward multiplies H by the
// same shared tile (H's accumulator fragments are the A operand of the next product).
//
// Plain CUDA C++ except the primitives of warp_mma.cuh, so tests/emu runs these kernels on a CPU.
// Per-row outputs as the FMA / WMMA kernels of supcon_kernels.cu (see csrc/common.h); the mined
// loss stays on those, whose selection and loss passes share one tile routine.
#pragma once
#include <cstdint>

#include "launch.cuh"
#include "supcon_kernels.h"
#ifndef CT_KERNELS_WARP_EMULATION
#include "warp_mma.cuh"
#endif

namespace ct_kernels {
namespace cuda {
namespace mma_path {

using namespace warp;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
// Anchor rows per CTA: each warp owns MT m-tiles of 16 rows. MT = 2 (flash attention 2's choice at
// head dim 128) lets every staged B fragment serve two m-tiles, half the shared-memory reads per
// product, for 255 registers instead of 92 in the forward (sm_90, D = 128); the launcher takes
// either, the host picks MT = 1 unless told otherwise. The backward, with dU accumulators, MT = 1.
template <int MT>
__host__ __device__ constexpr int block_rows() {
  return 16 * MT * kWarps;
}
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// kTf32x3: float32 without tf32, as three tf32 products of hi / lo splits (a_hi b_lo + a_lo b_hi +
// a_hi b_hi, the lo x lo term dropped): an fp32 dot's accuracy on tensor cores.
enum Prec : int { kBf16 = 0, kFp16 = 1, kTf32 = 2, kTf32x3 = 3 };

// Bits: how U's elements are stored and staged (raw bit copies). K: the mma's k. BN: columns per
// tile (tf32 tiles are half as wide: same bytes). PAD: elements after each staged row (16 bytes:
// fragment loads and ldmatrix rows fall on distinct banks).
template <int P>
struct Tr {
  using Bits = uint16_t;
  static constexpr int K = 16, BN = 64, PAD = 8;
};
template <>
struct Tr<kTf32> {
  using Bits = uint32_t;
  static constexpr int K = 8, BN = 32, PAD = 4;
};
template <>
struct Tr<kTf32x3> : Tr<kTf32> {};

template <int P>
constexpr bool k32 = P == kTf32 || P == kTf32x3;  // 32-bit elements, m16n8k8

// A float as it enters a fragment register: tf32 (rounded) or, for the 3xTF32 split, as is.
template <int P>
__device__ __forceinline__ uint32_t op32(float x) {
  if constexpr (P == kTf32x3) return float_to_bits(x);
  else return to_tf32(x);
}

// Operands as the mma instructions take them: the fragment registers, or for kTf32x3 their
// hi / lo tf32 splits (made once per fragment, then used for every product it enters).
template <int P, int N>
struct Op {
  uint32_t r[N];
};
template <int N>
struct Op<kTf32x3, N> {
  uint32_t hi[N], lo[N];
};
template <int P, int N>
__device__ __forceinline__ Op<P, N> prep(const uint32_t (&x)[N]) {
  Op<P, N> o;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (P == kTf32x3) {
      uint32_t raw = x[i];
      opaque(raw);  // split here, every time: not hoisted out of the column sweep
      const float v = bits_to_float(raw);
      o.hi[i] = to_tf32(v);
      // exact difference, rounded to tf32. The mask: cvt's tf32 result leaves its low 13 bits
      // unspecified (PTX ISA; CUTLASS clears them too); ptxas emits it anyway, so it is free.
      o.lo[i] = to_tf32(v - bits_to_float(o.hi[i] & 0xffffe000u));
    } else {
      o.r[i] = x[i];
    }
  }
  return o;
}
template <int P>
__device__ __forceinline__ void mma(float (&d)[4], const Op<P, 4>& a, const Op<P, 2>& b) {
  if constexpr (P == kBf16) mma_bf16_16816(d, a.r, b.r);
  else if constexpr (P == kFp16) mma_f16_16816(d, a.r, b.r);
  else if constexpr (P == kTf32) mma_tf32_1688(d, a.r, b.r);
  else {  // small terms first
    mma_tf32_1688(d, a.lo, b.hi);
    mma_tf32_1688(d, a.hi, b.lo);
    mma_tf32_1688(d, a.hi, b.hi);
  }
}

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A fragment of the 16 rows from row0 of a staged tile, k-step ks.
template <int P, int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const typename Tr<P>::Bits* s, int row0, int ks) {
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  if constexpr (k32<P>) {
    const uint32_t* r0 = s + (row0 + g) * LD + ks * 8 + t;
    const uint32_t* r1 = r0 + 8 * LD;
    a[0] = op32<P>(bits_to_float(r0[0]));
    a[1] = op32<P>(bits_to_float(r1[0]));
    a[2] = op32<P>(bits_to_float(r0[4]));
    a[3] = op32<P>(bits_to_float(r1[4]));
  } else {
    const uint16_t* r0 = s + (row0 + g) * LD + ks * 16 + 2 * t;
    const uint16_t* r1 = r0 + 8 * LD;
    a[0] = ld32(r0);
    a[1] = ld32(r1);
    a[2] = ld32(r0 + 8);
    a[3] = ld32(r1 + 8);
  }
}

// B fragment of s = A B^T: B's columns n0 .. n0 + 8 are staged rows (k contiguous), k-step ks.
template <int P, int LD>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[2], const typename Tr<P>::Bits* s, int n0, int ks) {
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  if constexpr (k32<P>) {
    const uint32_t* r = s + (n0 + g) * LD + ks * 8 + t;
    b[0] = op32<P>(bits_to_float(r[0]));
    b[1] = op32<P>(bits_to_float(r[4]));
  } else {
    const uint16_t* r = s + (n0 + g) * LD + ks * 16 + 2 * t;
    b[0] = ld32(r);
    b[1] = ld32(r + 8);
  }
}

// B fragment of dU += H V: V's rows k0 .. k0 + K are staged rows, its columns n0 .. n0 + 8.
// tf32: k permuted within the chunk (logical t <-> staged row 2t, t + 4 <-> 2t + 1) to match
// h_fragment, which then needs no shuffles; the sum over k does not depend on its order.
template <int P, int LD>
__device__ __forceinline__ void load_b_cols(uint32_t (&b)[2], const typename Tr<P>::Bits* s, int k0, int n0) {
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  if constexpr (k32<P>) {
    const uint32_t* c = s + (k0 + 2 * t) * LD + n0 + g;
    b[0] = op32<P>(bits_to_float(c[0]));
    b[1] = op32<P>(bits_to_float(c[LD]));
  } else {
    ldsm_x2_trans(b, s + (k0 + (lane & 15)) * LD + n0);
  }
}

// A fragment of H's columns kc * K .. from the accumulator tiles h[n-tile][4] (FA2's reuse: the
// accumulator layout of two adjacent n-tiles is the A layout of one k16 step).
template <int P, int NT>
__device__ __forceinline__ void h_fragment(uint32_t (&a)[4], const float (&h)[NT][4], int kc) {
  if constexpr (k32<P>) {
    a[0] = op32<P>(h[kc][0]);
    a[1] = op32<P>(h[kc][2]);
    a[2] = op32<P>(h[kc][1]);
    a[3] = op32<P>(h[kc][3]);
  } else {
    const float(&x)[4] = h[2 * kc];
    const float(&z)[4] = h[2 * kc + 1];
    if constexpr (P == kBf16) {
      a[0] = pack_bf16x2(x[0], x[1]);
      a[1] = pack_bf16x2(x[2], x[3]);
      a[2] = pack_bf16x2(z[0], z[1]);
      a[3] = pack_bf16x2(z[2], z[3]);
    } else {
      a[0] = pack_f16x2(x[0], x[1]);
      a[1] = pack_f16x2(x[2], x[3]);
      a[2] = pack_f16x2(z[0], z[1]);
      a[3] = pack_f16x2(z[2], z[3]);
    }
  }
}

// Stage rows row0 .. row0 + rows of U (columns :DP, zero past M and D) into s (ld LD): cp.async
// in 16-byte pieces when every piece lies wholly inside or outside D (vec), else plain copies.
template <int P, int DP>
__device__ __forceinline__ void stage_rows(typename Tr<P>::Bits* s, int rows, const typename Tr<P>::Bits* U,
                                           int64_t M, int64_t D, int64_t row0, bool vec) {
  using Bits = typename Tr<P>::Bits;
  constexpr int LD = DP + Tr<P>::PAD, VEC = 16 / static_cast<int>(sizeof(Bits)), CH = DP / VEC;
  for (int e = static_cast<int>(threadIdx.x); e < rows * CH; e += kThreads) {
    const int r = e / CH, c = (e % CH) * VEC;
    const int64_t gr = row0 + r;
    Bits* dst = s + r * LD + c;
    if (vec) {
      const bool full = gr < M && c < D;
      cp_async_16(dst, full ? U + gr * D + c : U, full);
    } else {
      for (int v = 0; v < VEC; ++v) dst[v] = (gr < M && c + v < D) ? U[gr * D + c + v] : Bits(0);
    }
  }
}

__device__ __forceinline__ float softplus(float x) {  // log(1 + exp(x)), no overflow
  return x > 0.f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}
__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

// Per-lane log-sum-exp state in base 2 (m: running max, sum: sum of exp2(x - m)); merge of two.
__device__ __forceinline__ void lse2_merge(float& m, float& sum, float m2, float sum2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;
  sum = (m == -INFINITY ? 0.f : sum * exp2f(m - mm)) + (m2 == -INFINITY ? 0.f : sum2 * exp2f(m2 - mm));
  m = mm;
}

// Class ids of a column tile (cls: the caller's int32 relabelling, -1 for ignored rows; one
// compare per element instead of two int64 ones), -1 past M so those columns fail every test.
template <int BN>
__device__ __forceinline__ void stage_classes(int32_t* cs, const int32_t* cls, int64_t M, int64_t c0) {
  for (int b = static_cast<int>(threadIdx.x); b < BN; b += kThreads) cs[b] = c0 + b < M ? cls[c0 + b] : -1;
}

// Whether stage_rows may use 16-byte copies: whole pieces inside or outside D, aligned base.
template <int P>
__device__ __forceinline__ bool stage_vectorizable(const typename Tr<P>::Bits* U, int64_t D) {
  return D % (16 / static_cast<int64_t>(sizeof(typename Tr<P>::Bits))) == 0 &&
         (reinterpret_cast<uintptr_t>(U) & 15u) == 0;
}

// The anchor rows of this lane: q = 2 mt + r is row g + 8 r of the warp's m-tile mt. Index, class
// id, and whether the row is an anchor here (inside [r0, hi) and not ignored; a row that is not
// has class -2, equal to no column's).
template <int MT>
struct LaneRows {
  int64_t i[2 * MT];
  int32_t c[2 * MT];
  bool ok[2 * MT];
};
template <int MT>
__device__ __forceinline__ LaneRows<MT> lane_rows(int64_t r0, int64_t hi, const int32_t* cls) {
  const int warp = static_cast<int>(threadIdx.x >> 5), g = lane_id() >> 2;
  LaneRows<MT> lr;
#pragma unroll
  for (int q = 0; q < 2 * MT; ++q) {
    lr.i[q] = r0 + 16 * (MT * warp + q / 2) + g + 8 * (q % 2);
    lr.ok[q] = lr.i[q] < hi && cls[lr.i[q]] >= 0;
    lr.c[q] = lr.ok[q] ? cls[lr.i[q]] : -2;
  }
  return lr;
}

// Per tile, the column of each lane row's self pair (i - c0) when the tile holds it, else -1: the
// element loops, unrolled, then exclude j == i by comparing that number with a constant.
template <int BN, int MT>
__device__ __forceinline__ void self_columns(int (&sc)[2 * MT], const LaneRows<MT>& lr, int64_t c0) {
#pragma unroll
  for (int q = 0; q < 2 * MT; ++q) {
    const int64_t d = lr.i[q] - c0;
    sc[q] = d >= 0 && d < BN ? static_cast<int>(d) : -1;
  }
}

// The warp's anchor rows as A fragments (registers), staged through the (not yet used) two tile
// buffers, 2 BN rows at a time.
template <int P, int DP, int MT>
__device__ __forceinline__ void load_row_block(uint32_t (&a)[MT][DP / Tr<P>::K][4], typename Tr<P>::Bits* tiles,
                                               const typename Tr<P>::Bits* U, int64_t M, int64_t D, int64_t r0,
                                               bool vec) {
  constexpr int LD = DP + Tr<P>::PAD, BM = block_rows<MT>(), STAGE = 2 * Tr<P>::BN;
  const int warp = static_cast<int>(threadIdx.x >> 5);
#pragma unroll
  for (int base = 0; base < BM; base += STAGE) {
    stage_rows<P, DP>(tiles, BM - base < STAGE ? BM - base : STAGE, U, M, D, r0 + base, vec);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row0 = 16 * (MT * warp + mt) - base;  // warp-uniform
      if (row0 >= 0 && row0 < STAGE) {
#pragma unroll
        for (int ks = 0; ks < DP / Tr<P>::K; ++ks) load_a<P, LD>(a[mt][ks], tiles, row0, ks);
      }
    }
    __syncthreads();  // fragments read before the buffers are staged again
  }
}

// acc[mt] = (U rows of the warp's m-tile mt) x (tile rows)^T, raw dot products; each B fragment
// read from shared memory serves the MT m-tiles.
template <int P, int DP, int MT>
__device__ __forceinline__ void s_tile(float (&acc)[MT][Tr<P>::BN / 8][4], const uint32_t (&a)[MT][DP / Tr<P>::K][4],
                                       const typename Tr<P>::Bits* tile) {
  constexpr int LD = DP + Tr<P>::PAD, NT = Tr<P>::BN / 8;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < DP / Tr<P>::K; ++ks) {
    Op<P, 4> ap[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ap[mt] = prep<P>(a[mt][ks]);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint32_t b[2];
      load_b_rows<P, LD>(b, tile, 8 * nt, ks);
      const Op<P, 2> bp = prep<P>(b);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma<P>(acc[mt][nt], ap[mt], bp);
    }
  }
}

// The column sweep of every kernel here: stage(b, c0) fills buffer b with the tile from column c0
// (cp.async for U, plain stores for per-column data), body(b, c0) uses it. Tile t + 1 loads while
// tile t is used; one barrier a tile (it also tells that buffer t - 1 is free again).
template <int BN, typename Stage, typename Body>
__device__ __forceinline__ void sweep_columns(int64_t M, Stage&& stage, Body&& body) {
  const int64_t ntiles = (M + BN - 1) / BN;
  stage(0, int64_t(0));
  cp_async_commit();
  for (int64_t tt = 0; tt < ntiles; ++tt) {
    const int buf = static_cast<int>(tt & 1);
    cp_async_wait_all();
    __syncthreads();
    if (tt + 1 < ntiles) stage(buf ^ 1, (tt + 1) * BN);
    cp_async_commit();
    body(buf, tt * BN);
  }
  cp_async_wait_all();
}

// PHASE 0: supcon (lse over A_i, positive sums). 1: infonce, lse over the negatives N_i.
// 2: infonce positive terms, reading L_i = stats[2 o] of phase 1. Anchors: rows [lo, hi), in
// blocks of block_rows<MT>(). A lane's rows q = 2 mt + r (see lane_rows); accumulator element e
// of n-tile nt belongs to its row 2 mt + (e >> 1).
template <int P, int DP, int PHASE, int MT>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const typename Tr<P>::Bits* __restrict__ U, const int32_t* __restrict__ cls, int64_t M, int64_t lo,
                   int64_t hi, int64_t D, float inv_temp, float* __restrict__ loss, int32_t* __restrict__ npos,
                   float* __restrict__ stats) {
  using Bits = typename Tr<P>::Bits;
  constexpr int BN = Tr<P>::BN, NT = BN / 8, LD = DP + Tr<P>::PAD, KS = DP / Tr<P>::K, Q = 2 * MT;
  __shared__ __align__(16) Bits tiles[2][BN * LD];
  __shared__ int32_t ys[2][BN];
  const int t = lane_id() & 3;
  const int64_t r0 = lo + static_cast<int64_t>(blockIdx.x) * block_rows<MT>();
  const bool vec = stage_vectorizable<P>(U, D);
  uint32_t a[MT][KS][4];
  load_row_block<P, DP, MT>(a, &tiles[0][0], U, M, D, r0, vec);

  const LaneRows<MT> rows = lane_rows<MT>(r0, hi, cls);
  const int64_t(&ir)[Q] = rows.i;
  const int32_t(&cr)[Q] = rows.c;
  const bool(&ok)[Q] = rows.ok;
  float L[Q], m[Q], sum[Q], a1[Q], a2[Q];
  int np[Q];
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    L[q] = PHASE == 2 && ok[q] ? stats[2 * (ir[q] - lo)] : 0.f;
    m[q] = -INFINITY;
    sum[q] = a1[q] = a2[q] = 0.f;
    np[q] = 0;
  }
  const float scale2 = inv_temp * kLog2e;

  auto stage = [&](int b, int64_t c0) {
    stage_rows<P, DP>(tiles[b], BN, U, M, D, c0, vec);
    stage_classes<BN>(ys[b], cls, M, c0);
  };
  // Rows that are not anchors here are computed like the others (their results are not written):
  // no per-element row test.
  sweep_columns<BN>(M, stage, [&](int buf, int64_t c0) {
    float acc[MT][NT][4];
    s_tile<P, DP, MT>(acc, a, tiles[buf]);
    float tmax[Q];
    int sc[Q];
#pragma unroll
    for (int q = 0; q < Q; ++q) tmax[q] = -INFINITY;
    self_columns<BN, MT>(sc, rows, c0);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int q = 2 * mt + (e >> 1), jj = 8 * nt + 2 * t + (e & 1);
          float& x = acc[mt][nt][e];
          const int32_t cj = ys[buf][jj];
          const bool valid = cj >= 0 && jj != sc[q];
          const bool pos = valid && cj == cr[q];
          if (PHASE == 2) {
            if (pos) {
              const float z = L[q] - x * inv_temp;
              a1[q] += softplus(z);
              a2[q] += sigmoid(z);
              ++np[q];
            }
          } else {
            if (PHASE == 0 && pos) {
              a1[q] += x;
              ++np[q];
            }
            const bool in_lse = PHASE == 0 ? valid : valid && !pos;
            x = in_lse ? x * scale2 : -INFINITY;
            tmax[q] = fmaxf(tmax[q], x);
          }
        }
    if (PHASE != 2) {
      float mu[Q];  // the max to subtract: 0 while a row has no member (then every x is -inf)
#pragma unroll
      for (int q = 0; q < Q; ++q) {
        const float mn = fmaxf(m[q], tmax[q]);
        if (mn > m[q]) {  // exp2(-inf - mn) = 0 covers m = -inf
          sum[q] *= fast_exp2(m[q] - mn);
          m[q] = mn;
        }
        mu[q] = m[q] == -INFINITY ? 0.f : m[q];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int q = 2 * mt + (e >> 1);
            sum[q] += fast_exp2(acc[mt][nt][e] - mu[q]);  // -inf -> 0
          }
    }
  });

  // the four lanes of a row group hold disjoint columns of the same rows: fixed-order merge
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1)
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[q], off);
      const float s2 = __shfl_xor_sync(0xffffffffu, sum[q], off);
      lse2_merge(m[q], sum[q], m2, s2);
      a1[q] += __shfl_xor_sync(0xffffffffu, a1[q], off);
      a2[q] += __shfl_xor_sync(0xffffffffu, a2[q], off);
      np[q] += __shfl_xor_sync(0xffffffffu, np[q], off);
    }
  if (t != 0) return;
#pragma unroll
  for (int r = 0; r < Q; ++r) {
    if (ir[r] >= hi) continue;
    const int64_t o = ir[r] - lo;
    if (!ok[r]) {
      loss[o] = 0.f;
      npos[o] = 0;
      stats[2 * o] = -INFINITY;
      stats[2 * o + 1] = 0.f;
      continue;
    }
    const float lse = m[r] == -INFINITY ? -INFINITY : (m[r] + log2f(sum[r])) * kLn2;
    if (PHASE == 0) {
      stats[2 * o] = lse;
      stats[2 * o + 1] = 0.f;
      loss[o] = np[r] > 0 ? lse - a1[r] * inv_temp / static_cast<float>(np[r]) : 0.f;
      npos[o] = np[r];
    } else if (PHASE == 1) {
      stats[2 * o] = lse;
    } else {
      loss[o] = np[r] > 0 ? a1[r] / static_cast<float>(np[r]) : 0.f;
      stats[2 * o + 1] = np[r] > 0 ? a2[r] / static_cast<float>(np[r]) : 0.f;
      npos[o] = np[r];
    }
  }
}

// Per-row statistics as the backward reads them, for anchor i and for column j alike. Rows that
// are not active (ignored, or no positive) get lse2 = +inf and zero weights: every term is 0.
struct RowStat {
  float lse2;  // log-sum-exp in base 2 units (supcon: over A_i; infonce: over N_i)
  float g;     // upstream weight g_i
  float gnp;   // g_i / |P_i|
  float w;     // infonce: W_i
};

__device__ __forceinline__ RowStat row_stat(int64_t i, int64_t M, const int32_t* cls, const int32_t* npos,
                                            const float* stats, const float* grad_rows) {
  RowStat s{INFINITY, 0.f, 0.f, 0.f};
  if (i < M && cls[i] >= 0 && npos[i] > 0) {
    s.lse2 = stats[2 * i] * kLog2e;
    s.g = grad_rows[i];
    s.gnp = s.g / static_cast<float>(npos[i]);
    s.w = stats[2 * i + 1];
  }
  return s;
}

// g_i * dl_i / ds_ij for anchor i (statistics r) and a valid column j; p = exp(s_ij - lse_i).
template <int VARIANT>
__device__ __forceinline__ float grad_term(const RowStat& r, bool pos, float p) {
  if (VARIANT == 0) return r.g * p - (pos ? r.gnp : 0.f);
  return pos ? -r.gnp / (1.f + p) : r.g * r.w * p;  // infonce: sigmoid(L - s) = 1 / (1 + p)
}

// dU rows [lo, hi) (float32, (hi - lo) x D, written once) = sum_j (G_ij + G_ji) u_j; the caller
// scales by inv_temp. VARIANT 0 supcon, 1 infonce. Statistics cover all M rows.
// H is rounded to the operand type: for 16-bit inputs the caller scales grad_rows by a power of
// two that keeps it in range and divides it out of dU (csrc/cuda/supcon.cpp, half_weight_scale).
template <int P, int DP, int VARIANT>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const typename Tr<P>::Bits* __restrict__ U, const int32_t* __restrict__ cls, int64_t M, int64_t lo,
                    int64_t hi, int64_t D, float inv_temp, const int32_t* __restrict__ npos,
                    const float* __restrict__ stats, const float* __restrict__ grad_rows, float* __restrict__ dU) {
  using Bits = typename Tr<P>::Bits;
  constexpr int BN = Tr<P>::BN, NT = BN / 8, LD = DP + Tr<P>::PAD, KS = DP / Tr<P>::K, K = Tr<P>::K;
  constexpr int DT = DP / 8;  // n-tiles of dU
  __shared__ __align__(16) Bits tiles[2][BN * LD];
  __shared__ int32_t ys[2][BN];
  __shared__ RowStat cs[2][BN];
  const int t = lane_id() & 3;
  const int64_t r0 = lo + static_cast<int64_t>(blockIdx.x) * block_rows<1>();
  const bool vec = stage_vectorizable<P>(U, D);
  uint32_t a[1][KS][4];  // one m-tile a warp: the dU accumulators take the registers
  load_row_block<P, DP, 1>(a, &tiles[0][0], U, M, D, r0, vec);

  const LaneRows<1> rows = lane_rows<1>(r0, hi, cls);
  const int64_t(&ir)[2] = rows.i;
  const int32_t(&cr)[2] = rows.c;
  const bool(&vi)[2] = rows.ok;
  RowStat rs[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) rs[r] = row_stat(ir[r] < hi ? ir[r] : M, M, cls, npos, stats, grad_rows);
  const float scale2 = inv_temp * kLog2e;
  float du[DT][4];
#pragma unroll
  for (int n = 0; n < DT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) du[n][e] = 0.f;

  auto stage = [&](int b, int64_t c0) {
    stage_rows<P, DP>(tiles[b], BN, U, M, D, c0, vec);
    stage_classes<BN>(ys[b], cls, M, c0);
    for (int j = static_cast<int>(threadIdx.x); j < BN; j += kThreads)
      cs[b][j] = row_stat(c0 + j, M, cls, npos, stats, grad_rows);
  };
  sweep_columns<BN>(M, stage, [&](int buf, int64_t c0) {
    float hm[1][NT][4];
    s_tile<P, DP, 1>(hm, a, tiles[buf]);
    float(&h)[NT][4] = hm[0];
    int sc[2];
    self_columns<BN, 1>(sc, rows, c0);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, jj = 8 * nt + 2 * t + (e & 1);
        const int32_t cj = ys[buf][jj];
        const bool valid = vi[r] && cj >= 0 && jj != sc[r];
        const bool pos = cj == cr[r];
        const RowStat& sj = cs[buf][jj];
        const float x2 = h[nt][e] * scale2;
        const float term = grad_term<VARIANT>(rs[r], pos, fast_exp2(x2 - rs[r].lse2)) +
                           grad_term<VARIANT>(sj, pos, fast_exp2(x2 - sj.lse2));
        h[nt][e] = valid ? term : 0.f;
      }
#pragma unroll
    for (int kc = 0; kc < BN / K; ++kc) {
      uint32_t ha[4];
      h_fragment<P, NT>(ha, h, kc);
      const Op<P, 4> hp = prep<P>(ha);
#pragma unroll
      for (int n = 0; n < DT; ++n) {
        uint32_t b[2];
        load_b_cols<P, LD>(b, tiles[buf], kc * K, 8 * n);
        mma<P>(du[n], hp, prep<P>(b));
      }
    }
  });
#pragma unroll
  for (int n = 0; n < DT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >> 1;
      const int64_t col = 8 * n + 2 * t + (e & 1);
      if (ir[r] < hi && col < D) dU[(ir[r] - lo) * D + col] = du[n][e];
    }
}

// Launch sequences for the anchor rows rs (the launchers in supcon_mma_kernels.cu dispatch on the
// input type, D and the rows per warp). Infonce: phase 1, then phase 2.
template <int MT>
inline unsigned row_blocks(RowSlice rs) {
  constexpr int BM = block_rows<MT>();
  return static_cast<unsigned>((rs.hi - rs.lo + BM - 1) / BM);
}

template <int P, int DP, int MT>
cudaError_t forward_rows(const void* u, const int32_t* cls, int64_t M, RowSlice rs, int64_t D, float inv_temp,
                         int variant, float* loss, int32_t* npos, float* stats, cudaStream_t stream) {
  using Bits = typename Tr<P>::Bits;
  const auto* U = static_cast<const Bits*>(u);
  const unsigned nb = row_blocks<MT>(rs);
  const int first = variant == 0 ? 0 : 1, last = variant == 0 ? 0 : 2;  // infonce: phase 1, then 2
  for (int phase = first; phase <= last; ++phase) {
    auto* kernel = phase == 0 ? forward_kernel<P, DP, 0, MT> : phase == 1 ? forward_kernel<P, DP, 1, MT>
                                                                          : forward_kernel<P, DP, 2, MT>;
    CT_LAUNCH(kernel, nb, kThreads, stream, U, cls, M, rs.lo, rs.hi, D, inv_temp, loss, npos, stats);
    const cudaError_t err = CT_LAST_ERROR();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <int P, int DP>
cudaError_t backward_rows(const void* u, const int32_t* cls, int64_t M, RowSlice rs, int64_t D, float inv_temp,
                          int variant, const int32_t* npos, const float* stats, const float* grad_rows, float* dU,
                          cudaStream_t stream) {
  using Bits = typename Tr<P>::Bits;
  const auto* U = static_cast<const Bits*>(u);
  auto* kernel = variant == 0 ? backward_kernel<P, DP, 0> : backward_kernel<P, DP, 1>;
  CT_LAUNCH(kernel, row_blocks<1>(rs), kThreads, stream, U, cls, M, rs.lo, rs.hi, D, inv_temp, npos, stats, grad_rows,
            dU);
  return CT_LAST_ERROR();
}

}  // namespace mma_path
}  // namespace cuda
}  // namespace ct_kernels
