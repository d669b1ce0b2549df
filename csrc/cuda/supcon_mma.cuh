// Fused SupCon / per-positive InfoNCE, forward and backward, on mma.sync tensor cores (bf16 / fp16,
// or float32 as tf32), without hard mining, for D <= 128. The layout of flash attention 2: each
// warp owns 16 anchor rows, holds their U fragments in registers for the whole sweep, and keeps
// its 16 x BN tile of s (and of the gradient weights H) in the mma accumulators, so the masked
// log-sum-exp and H never leave registers; column tiles of U stream through shared memory, the
// next one loading (cp.async) while the current one is used. The backward multiplies H by the
// same shared tile (H's accumulator fragments are the A operand of the next product).
//
// Plain CUDA C++ except the primitives of warp_mma.cuh, so tests/emu runs these kernels on a CPU.
// Per-row outputs as the FMA / WMMA kernels of supcon_kernels.cu (see csrc/common.h); the mined
// loss stays on those, whose selection and loss passes share one tile routine.
#pragma once
#include <cstdint>

#ifndef CT_KERNELS_WARP_EMULATION
#include "warp_mma.cuh"
#endif

namespace ct_kernels {
namespace cuda {
namespace mma_path {

using namespace warp;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // anchor rows per CTA
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

enum Prec : int { kBf16 = 0, kFp16 = 1, kTf32 = 2 };

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

template <int P>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (P == kBf16) mma_bf16_16816(d, a, b);
  else if constexpr (P == kFp16) mma_f16_16816(d, a, b);
  else mma_tf32_1688(d, a, b);
}

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A fragment of the 16 rows from row0 of a staged tile, k-step ks.
template <int P, int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const typename Tr<P>::Bits* s, int row0, int ks) {
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  if constexpr (P == kTf32) {
    const uint32_t* r0 = s + (row0 + g) * LD + ks * 8 + t;
    const uint32_t* r1 = r0 + 8 * LD;
    a[0] = to_tf32(bits_to_float(r0[0]));
    a[1] = to_tf32(bits_to_float(r1[0]));
    a[2] = to_tf32(bits_to_float(r0[4]));
    a[3] = to_tf32(bits_to_float(r1[4]));
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
  if constexpr (P == kTf32) {
    const uint32_t* r = s + (n0 + g) * LD + ks * 8 + t;
    b[0] = to_tf32(bits_to_float(r[0]));
    b[1] = to_tf32(bits_to_float(r[4]));
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
  if constexpr (P == kTf32) {
    const uint32_t* c = s + (k0 + 2 * t) * LD + n0 + g;
    b[0] = to_tf32(bits_to_float(c[0]));
    b[1] = to_tf32(bits_to_float(c[LD]));
  } else {
    ldsm_x2_trans(b, s + (k0 + (lane & 15)) * LD + n0);
  }
}

// A fragment of H's columns kc * K .. from the accumulator tiles h[n-tile][4] (FA2's reuse: the
// accumulator layout of two adjacent n-tiles is the A layout of one k16 step).
template <int P, int NT>
__device__ __forceinline__ void h_fragment(uint32_t (&a)[4], const float (&h)[NT][4], int kc) {
  if constexpr (P == kTf32) {
    a[0] = to_tf32(h[kc][0]);
    a[1] = to_tf32(h[kc][2]);
    a[2] = to_tf32(h[kc][1]);
    a[3] = to_tf32(h[kc][3]);
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

// The two anchor rows of this lane (g and g + 8 of its warp's 16): index, class id, and whether
// the row is an anchor here (inside [r0, hi) and not ignored; a row that is not has class -2,
// equal to no column's).
struct LaneRows {
  int64_t i[2];
  int32_t c[2];
  bool ok[2];
};
__device__ __forceinline__ LaneRows lane_rows(int64_t r0, int64_t hi, const int32_t* cls) {
  const int warp = static_cast<int>(threadIdx.x >> 5), g = lane_id() >> 2;
  LaneRows lr;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lr.i[r] = r0 + 16 * warp + g + 8 * r;
    lr.ok[r] = lr.i[r] < hi && cls[lr.i[r]] >= 0;
    lr.c[r] = lr.ok[r] ? cls[lr.i[r]] : -2;
  }
  return lr;
}

// Per tile, the column of each lane row's self pair (i - c0) when the tile holds it, else -1: the
// element loops, unrolled, then exclude j == i by comparing that number with a constant.
template <int BN>
__device__ __forceinline__ void self_columns(int (&sc)[2], const LaneRows& lr, int64_t c0) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t d = lr.i[r] - c0;
    sc[r] = d >= 0 && d < BN ? static_cast<int>(d) : -1;
  }
}

// The warp's anchor rows as A fragments (registers), staged through the (not yet used) tile
// buffers: kBM rows fit in two column tiles.
template <int P, int DP>
__device__ __forceinline__ void load_row_block(uint32_t (&a)[DP / Tr<P>::K][4], typename Tr<P>::Bits* tiles,
                                               const typename Tr<P>::Bits* U, int64_t M, int64_t D, int64_t r0,
                                               bool vec) {
  constexpr int LD = DP + Tr<P>::PAD;
  static_assert(kBM <= 2 * Tr<P>::BN, "the row block is staged in the two tile buffers");
  stage_rows<P, DP>(tiles, kBM, U, M, D, r0, vec);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  const int warp = static_cast<int>(threadIdx.x >> 5);
#pragma unroll
  for (int ks = 0; ks < DP / Tr<P>::K; ++ks) load_a<P, LD>(a[ks], tiles, 16 * warp, ks);
  __syncthreads();  // every warp holds its fragments before tile 0 overwrites the buffers
}

// acc = (U rows of the warp) x (tile rows)^T, raw dot products.
template <int P, int DP>
__device__ __forceinline__ void s_tile(float (&acc)[Tr<P>::BN / 8][4], const uint32_t (&a)[DP / Tr<P>::K][4],
                                       const typename Tr<P>::Bits* tile) {
  constexpr int LD = DP + Tr<P>::PAD, NT = Tr<P>::BN / 8;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < DP / Tr<P>::K; ++ks)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint32_t b[2];
      load_b_rows<P, LD>(b, tile, 8 * nt, ks);
      mma<P>(acc[nt], a[ks], b);
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
// 2: infonce positive terms, reading L_i = stats[2 o] of phase 1. Anchors: rows [lo, hi).
template <int P, int DP, int PHASE>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const typename Tr<P>::Bits* __restrict__ U, const int32_t* __restrict__ cls, int64_t M, int64_t lo,
                   int64_t hi, int64_t D, float inv_temp, float* __restrict__ loss, int32_t* __restrict__ npos,
                   float* __restrict__ stats) {
  using Bits = typename Tr<P>::Bits;
  constexpr int BN = Tr<P>::BN, NT = BN / 8, LD = DP + Tr<P>::PAD, KS = DP / Tr<P>::K;
  __shared__ __align__(16) Bits tiles[2][BN * LD];
  __shared__ int32_t ys[2][BN];
  const int t = lane_id() & 3;
  const int64_t r0 = lo + static_cast<int64_t>(blockIdx.x) * kBM;
  const bool vec = stage_vectorizable<P>(U, D);
  uint32_t a[KS][4];
  load_row_block<P, DP>(a, &tiles[0][0], U, M, D, r0, vec);

  const LaneRows rows = lane_rows(r0, hi, cls);
  const int64_t(&ir)[2] = rows.i;
  const int32_t(&cr)[2] = rows.c;
  const bool(&ok)[2] = rows.ok;
  float L[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r)
    if (PHASE == 2 && ok[r]) L[r] = stats[2 * (ir[r] - lo)];
  const float scale2 = inv_temp * kLog2e;
  float m[2] = {-INFINITY, -INFINITY}, sum[2] = {0.f, 0.f}, a1[2] = {0.f, 0.f}, a2[2] = {0.f, 0.f};
  int np[2] = {0, 0};

  auto stage = [&](int b, int64_t c0) {
    stage_rows<P, DP>(tiles[b], BN, U, M, D, c0, vec);
    stage_classes<BN>(ys[b], cls, M, c0);
  };
  // Rows that are not anchors here are computed like the others (their results are not written):
  // no per-element row test.
  sweep_columns<BN>(M, stage, [&](int buf, int64_t c0) {
    float acc[NT][4];
    s_tile<P, DP>(acc, a, tiles[buf]);
    float tmax[2] = {-INFINITY, -INFINITY};
    int sc[2];
    self_columns<BN>(sc, rows, c0);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, jj = 8 * nt + 2 * t + (e & 1);
        const int32_t cj = ys[buf][jj];
        const bool valid = cj >= 0 && jj != sc[r];
        const bool pos = valid && cj == cr[r];
        if (PHASE == 2) {
          if (pos) {
            const float x = L[r] - acc[nt][e] * inv_temp;
            a1[r] += softplus(x);
            a2[r] += sigmoid(x);
            ++np[r];
          }
        } else {
          if (PHASE == 0 && pos) {
            a1[r] += acc[nt][e];
            ++np[r];
          }
          const bool in_lse = PHASE == 0 ? valid : valid && !pos;
          acc[nt][e] = in_lse ? acc[nt][e] * scale2 : -INFINITY;
          tmax[r] = fmaxf(tmax[r], acc[nt][e]);
        }
      }
    if (PHASE != 2) {
      float mu[2];  // the max to subtract: 0 while a row has no member (then every x is -inf)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float mn = fmaxf(m[r], tmax[r]);
        if (mn > m[r]) {  // exp2(-inf - mn) = 0 covers m = -inf
          sum[r] *= fast_exp2(m[r] - mn);
          m[r] = mn;
        }
        mu[r] = m[r] == -INFINITY ? 0.f : m[r];
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sum[e >> 1] += fast_exp2(acc[nt][e] - mu[e >> 1]);  // -inf -> 0
    }
  });

  // the four lanes of a row group hold disjoint columns of the same two rows: fixed-order merge
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[r], off);
      const float s2 = __shfl_xor_sync(0xffffffffu, sum[r], off);
      lse2_merge(m[r], sum[r], m2, s2);
      a1[r] += __shfl_xor_sync(0xffffffffu, a1[r], off);
      a2[r] += __shfl_xor_sync(0xffffffffu, a2[r], off);
      np[r] += __shfl_xor_sync(0xffffffffu, np[r], off);
    }
  if (t != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
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
  const int64_t r0 = lo + static_cast<int64_t>(blockIdx.x) * kBM;
  const bool vec = stage_vectorizable<P>(U, D);
  uint32_t a[KS][4];
  load_row_block<P, DP>(a, &tiles[0][0], U, M, D, r0, vec);

  const LaneRows rows = lane_rows(r0, hi, cls);
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
    float h[NT][4];
    s_tile<P, DP>(h, a, tiles[buf]);
    int sc[2];
    self_columns<BN>(sc, rows, c0);
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
#pragma unroll
      for (int n = 0; n < DT; ++n) {
        uint32_t b[2];
        load_b_cols<P, LD>(b, tiles[buf], kc * K, 8 * n);
        mma<P>(du[n], ha, b);
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

}  // namespace mma_path
}  // namespace cuda
}  // namespace ct_kernels
