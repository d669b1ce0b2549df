// Fused SupCon / per-positive InfoNCE on CUDA: exact FMA tiles (fp32 / fp64) and WMMA tensor-core
// tiles (bf16 / fp16 / tf32), with hard mining.
//
// Every kernel is row-stationary: a CTA owns BM rows and streams all column tiles, so per-row
// results have one writer (no atomics on results, deterministic). The tile of
// s_ij = inv_temp * <u_i, u_j> is computed by one routine (s_tile) that accumulates
// fma(u_ik, u_jk, acc) over k in increasing order: fma is exact in its two factors' order, so
// s_ij and s_ji are the same bits in every pass and every tile position. That is what lets the
// mining thresholds (value, column) found once decide membership identically in the loss pass
// and, for both (i, j) and (j, i), in the backward.
//
// Mining thresholds: an MSD radix select (4-bit digits) per row and side on the order key
// (value key, then column among exact ties, run only for rows that still have ties): each level
// is one pass over the tiles with per-row histograms in shared memory, O(M) state in global.
//
// The kernels and their device code; the launchers are in supcon_kernels.cu. A header so that
// tests/emu can run them on a CPU (CT_KERNELS_WARP_EMULATION: the CUDA headers are replaced by
// tests/emu/warp_emu.h, which provides the few intrinsics, WMMA and atomics used here).
#pragma once
#include <cstdint>
#include <type_traits>

#ifndef CT_KERNELS_WARP_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include "launch.cuh"
#include "supcon_kernels.h"

namespace ct_kernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Cfg;
template <>
struct Cfg<float> {
  static constexpr int BM = 64, BN = 64, BK = 16;
  static constexpr int NV = 8;  // 4-bit digits of the 32-bit value key
};
template <>
struct Cfg<double> {
  static constexpr int BM = 32, BN = 32, BK = 16;
  static constexpr int NV = 16;  // 4-bit digits of the 64-bit value key
};
constexpr int NC = 8;  // 4-bit digits of the 32-bit column

__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

// acc[i][j] += a[i] * b[j]: one k-step of the FMA tiles' register-blocked products (S = U U^T and
// dU = H U share it)
template <typename T, int TM, int TN>
__device__ __forceinline__ void fma_outer(T (&acc)[TM][TN], const T (&a)[TM], const T (&b)[TN]) {
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = fma_(a[i], b[j], acc[i][j]);
}
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

template <typename T>
__device__ __forceinline__ T inf_();
template <>
__device__ __forceinline__ float inf_<float>() {
  return __int_as_float(0x7f800000);
}
template <>
__device__ __forceinline__ double inf_<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

template <typename T>
__device__ __forceinline__ T softplus_(T x) {  // log(1 + exp(x))
  return x > T(0) ? x + log1p_(exp_(-x)) : log1p_(exp_(x));
}
template <typename T>
__device__ __forceinline__ T sigmoid_(T x) {
  if (x >= T(0)) return T(1) / (T(1) + exp_(-x));
  const T e = exp_(x);
  return e / (T(1) + e);
}

// Order keys: ascending unsigned order == ascending value order (side 0, positives, kp
// smallest) or descending value order (side 1, negatives, kn largest). s is never -0 here.
__device__ __forceinline__ uint64_t order_key(float s, int side) {
  const uint32_t bits = __float_as_uint(s);
  uint32_t asc = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return side ? static_cast<uint64_t>(~asc) : static_cast<uint64_t>(asc);
}
__device__ __forceinline__ uint64_t order_key(double s, int side) {
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(s));
  const uint64_t sign = 0x8000000000000000ull;
  uint64_t asc = (bits & sign) ? ~bits : (bits | sign);
  return side ? ~asc : asc;
}
template <typename T>
__device__ __forceinline__ T key_value(uint64_t key, int side);
template <>
__device__ __forceinline__ float key_value<float>(uint64_t key, int side) {
  uint32_t asc = static_cast<uint32_t>(key);
  if (side) asc = ~asc;
  const uint32_t bits = (asc & 0x80000000u) ? (asc ^ 0x80000000u) : ~asc;
  return __uint_as_float(bits);
}
template <>
__device__ __forceinline__ double key_value<double>(uint64_t key, int side) {
  uint64_t asc = side ? ~key : key;
  const uint64_t sign = 0x8000000000000000ull;
  const uint64_t bits = (asc & sign) ? (asc ^ sign) : ~asc;
  return __longlong_as_double(static_cast<long long>(bits));
}

template <typename T>
struct SMem {
  T As[Cfg<T>::BK][Cfg<T>::BM];
  T Bs[Cfg<T>::BK][Cfg<T>::BN];
  T Ss[Cfg<T>::BM][Cfg<T>::BN + 1];
};

// sm.Ss[a][b] = s(r0 + a, c0 + b) (rows / columns past M hold values that are never used).
// Starts with a barrier, so the caller may still be reading Ss from the previous tile.
template <typename T>
__device__ void s_tile(const T* __restrict__ U, int64_t M, int64_t D, int64_t r0, int64_t c0,
                       T inv_temp, SMem<T>& sm) {
  constexpr int BM = Cfg<T>::BM, BN = Cfg<T>::BN, BK = Cfg<T>::BK;
  constexpr int TM = BM / 16, TN = BN / 16;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  __syncthreads();
  for (int64_t k0 = 0; k0 < D; k0 += BK) {
    for (int e = tid; e < BM * BK; e += kThreads) {
      const int r = e / BK, kk = e % BK;
      const int64_t gr = r0 + r, gk = k0 + kk;
      sm.As[kk][r] = (gr < M && gk < D) ? U[gr * D + gk] : T(0);
    }
    for (int e = tid; e < BN * BK; e += kThreads) {
      const int c = e / BK, kk = e % BK;
      const int64_t gc = c0 + c, gk = k0 + kk;
      sm.Bs[kk][c] = (gc < M && gk < D) ? U[gc * D + gk] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = sm.As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = sm.Bs[kk][tx * TN + j];
      fma_outer(acc, a, b);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      T s = mul_rn(acc[i][j], inv_temp);
      if (s == T(0)) s = T(0);  // -0 -> +0: one key per value
      sm.Ss[ty * TM + i][tx * TN + j] = s;
    }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// Tile policies. Fma<T>: exact FMA tiles (float / double), U in T. Tc<In>: tensor cores (WMMA)
// with float accumulation, U in In (bf16 / fp16, or float read as tf32). Tensor-core tiles are
// computed in a canonical orientation (the lower block index as the left operand, the diagonal
// tile symmetrised from its upper triangle), so s_ij and s_ji are the same bits there too.

template <typename T>
struct Fma {
  using Acc = T;
  using In = T;
  static constexpr int BM = Cfg<T>::BM, BN = Cfg<T>::BN, NV = Cfg<T>::NV;
  using Smem = SMem<T>;
  __device__ static void tile(const In* U, int64_t M, int64_t D, int64_t I, int64_t J, Acc inv_temp,
                              Smem& sm) {
    s_tile<T>(U, M, D, I * BM, J * BN, inv_temp, sm);
  }
};

namespace wmma = nvcuda::wmma;

template <typename In>
struct TcTraits;
template <>
struct TcTraits<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int K = 16, BK = 32, BKP = 40;
  static constexpr bool kTf32 = false;
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct TcTraits<__half> {
  using Frag = __half;
  static constexpr int K = 16, BK = 32, BKP = 40;
  static constexpr bool kTf32 = false;
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct TcTraits<float> {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  using Frag = float;  // unused below sm_80
#else
  using Frag = wmma::precision::tf32;
#endif
  static constexpr int K = 8, BK = 16, BKP = 20;
  static constexpr bool kTf32 = true;
  __device__ static float from_float(float x) { return x; }
};

constexpr int kTcTile = 64;  // BM == BN: square tiles on one grid for the canonical orientation
static_assert(kDuRows % kTcTile == 0 && kDuRows % Cfg<float>::BM == 0 && kDuRows % Cfg<double>::BM == 0,
              "dU buffers hold whole row blocks");
constexpr int kSsLd = kTcTile + 4;

template <typename In>
struct SMemTC {
  alignas(128) In As[kTcTile][TcTraits<In>::BKP];
  alignas(128) In Bs[kTcTile][TcTraits<In>::BKP];
  alignas(128) float Ss[kTcTile][kSsLd];
};

template <typename In>
__device__ __forceinline__ In zero_in() {
  return TcTraits<In>::from_float(0.0f);
}

template <typename In>
__device__ void s_tile_tc(const In* __restrict__ U, int64_t M, int64_t D, int64_t I, int64_t J,
                          float inv_temp, SMemTC<In>& sm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 / tf32 WMMA needs sm_80+; the host side never selects this path there
#else
  using Tr = TcTraits<In>;
  constexpr int BK = Tr::BK, BKP = Tr::BKP, K = Tr::K;
  const int tid = threadIdx.x, warp = tid / 32;
  const bool swap = I > J;
  const int64_t ra = (swap ? J : I) * kTcTile, rb = (swap ? I : J) * kTcTile;
  const int rm = warp / 2, cn0 = (warp % 2) * 2;
  constexpr int VEC = 16 / sizeof(In);
  static_assert(BK % VEC == 0 && (BKP * sizeof(In)) % 16 == 0, "16-byte staging");
  const bool vec_ok = D % VEC == 0 && (reinterpret_cast<uintptr_t>(U) & 15u) == 0;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  __syncthreads();
  for (int64_t k0 = 0; k0 < D; k0 += BK) {
    if (vec_ok) {  // 16-byte loads: VEC elements, wholly inside or outside [0, D)
      for (int e = tid; e < kTcTile * (BK / VEC); e += kThreads) {
        const int r = e / (BK / VEC), kk = (e % (BK / VEC)) * VEC;
        const int64_t gk = k0 + kk;
        const int64_t ga = ra + r, gb = rb + r;
        uint4 va = make_uint4(0u, 0u, 0u, 0u), vb = make_uint4(0u, 0u, 0u, 0u);
        if (ga < M && gk < D) va = *reinterpret_cast<const uint4*>(U + ga * D + gk);
        if (gb < M && gk < D) vb = *reinterpret_cast<const uint4*>(U + gb * D + gk);
        *reinterpret_cast<uint4*>(&sm.As[r][kk]) = va;
        *reinterpret_cast<uint4*>(&sm.Bs[r][kk]) = vb;
      }
    } else {
      for (int e = tid; e < kTcTile * BK; e += kThreads) {
        const int r = e / BK, kk = e % BK;
        const int64_t gk = k0 + kk;
        const int64_t ga = ra + r, gb = rb + r;
        sm.As[r][kk] = (ga < M && gk < D) ? U[ga * D + gk] : zero_in<In>();
        sm.Bs[r][kk] = (gb < M && gk < D) ? U[gb * D + gk] : zero_in<In>();
      }
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += K) {
      wmma::fragment<wmma::matrix_a, 16, 16, K, typename Tr::Frag, wmma::row_major> a;
      wmma::load_matrix_sync(a, &sm.As[16 * rm][ks], BKP);
      if constexpr (Tr::kTf32) {
#pragma unroll
        for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
      }
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        wmma::fragment<wmma::matrix_b, 16, 16, K, typename Tr::Frag, wmma::col_major> b;
        wmma::load_matrix_sync(b, &sm.Bs[16 * (cn0 + t)][ks], BKP);  // B(k, n) = Bs[n][k]
        if constexpr (Tr::kTf32) {
#pragma unroll
          for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
        }
        wmma::mma_sync(acc[t], a, b, acc[t]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int e = 0; e < acc[t].num_elements; ++e) {
      float v = __fmul_rn(acc[t].x[e], inv_temp);
      if (v == 0.0f) v = 0.0f;  // -0 -> +0
      acc[t].x[e] = v;
    }
    if (!swap)
      wmma::store_matrix_sync(&sm.Ss[16 * rm][16 * (cn0 + t)], acc[t], kSsLd, wmma::mem_row_major);
    else  // the tile of (J, I): write it transposed
      wmma::store_matrix_sync(&sm.Ss[16 * (cn0 + t)][16 * rm], acc[t], kSsLd, wmma::mem_col_major);
  }
  __syncthreads();
  if (I == J) {
    for (int e = tid; e < kTcTile * kTcTile; e += kThreads) {
      const int a = e / kTcTile, b = e % kTcTile;
      if (a > b) sm.Ss[a][b] = sm.Ss[b][a];
    }
    __syncthreads();
  }
#endif
}

template <typename In_>
struct Tc {
  using Acc = float;
  using In = In_;
  static constexpr int BM = kTcTile, BN = kTcTile, NV = 8;
  using Smem = SMemTC<In>;
  __device__ static void tile(const In* U, int64_t M, int64_t D, int64_t I, int64_t J, float inv_temp,
                              Smem& sm) {
    s_tile_tc<In>(U, M, D, I, J, inv_temp, sm);
  }
};

template <typename T>
struct Thr {
  T pv, nv;
  int64_t pc, nc;
};
template <typename T>
__device__ __forceinline__ bool in_pos(const Thr<T>& t, T s, int64_t j) {
  return s < t.pv || (s == t.pv && j <= t.pc);
}
template <typename T>
__device__ __forceinline__ bool in_neg(const Thr<T>& t, T s, int64_t j) {
  return s > t.nv || (s == t.nv && j <= t.nc);
}
template <typename T>
__device__ __forceinline__ Thr<T> load_thr(const T* thr_val, const int64_t* thr_col, int64_t i) {
  return Thr<T>{thr_val[2 * i], thr_val[2 * i + 1], thr_col[2 * i], thr_col[2 * i + 1]};
}

// ---------------------------------------------------------------------------------------------
// mining selection.  flag: 0 value levels, 1 column levels, 2 no mining on this side (all),
// 3 done by value (all ties at the threshold value are in: column = M), 4 done by column.

// Anchor slice [lo, hi): the forward's per-row arrays (scratch, thresholds, outputs) hold row i
// of U at index i - lo. The row-block kernels run on the whole-batch grid up to hi and blocks
// that do not meet the slice return at once, so every tile is the one a whole-batch call
// computes, and the block index stays blockIdx.x (an offset block index held in a register cost
// the tensor-core kernels 30-55 registers in sm_90 compiles).
__global__ void select_init_kernel(const int64_t* __restrict__ y, int64_t lo, int64_t count,
                                   int64_t ignore, int64_t kp, int64_t kn, SelectScratch st) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= 2 * count) return;
  const int64_t i = lo + idx / 2;
  const int side = static_cast<int>(idx % 2);
  const int64_t k = side ? kn : kp;
  st.prefix_v[idx] = 0;
  st.prefix_c[idx] = 0;
  st.rem[idx] = k;
  st.flag[idx] = (y[i] == ignore || k <= 0) ? 2 : 0;
}

template <typename P>
__global__ void __launch_bounds__(kThreads)
    select_level_kernel(const typename P::In* __restrict__ U, const int64_t* __restrict__ y,
                        int64_t M, int64_t lo, int64_t hi, int64_t D, int64_t ignore,
                        typename P::Acc inv_temp, int level, SelectScratch st) {
  constexpr int BM = P::BM, BN = P::BN, NV = P::NV;
  constexpr int TPR = kThreads / BM;
  __shared__ typename P::Smem sm;
  __shared__ int hist[BM][2][16];
  __shared__ int any_active;
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  if (r0 + BM <= lo) return;  // uniform: before the slice
  if (tid == 0) any_active = 0;
  for (int e = tid; e < BM * 2 * 16; e += kThreads) (&hist[0][0][0])[e] = 0;
  __syncthreads();
  if (tid < 2 * BM) {
    const int64_t i = r0 + tid / 2;
    if (i >= lo && i < hi) {
      const int fl = st.flag[2 * (i - lo) + tid % 2];
      if (fl == 0 || fl == 1) atomicOr(&any_active, 1);
    }
  }
  __syncthreads();
  if (!any_active) return;  // uniform over the CTA

  const int row = tid / TPR, sub = tid % TPR;
  const int64_t i = r0 + row;
  const bool row_ok = i >= lo && i < hi && y[i] != ignore;
  const int64_t yi = row_ok ? y[i] : 0;
  int fl[2] = {2, 2};
  uint64_t pv[2] = {0, 0};
  uint32_t pc[2] = {0, 0};
  if (row_ok) {
    for (int side = 0; side < 2; ++side) {
      fl[side] = st.flag[2 * (i - lo) + side];
      pv[side] = st.prefix_v[2 * (i - lo) + side];
      pc[side] = st.prefix_c[2 * (i - lo) + side];
    }
  }
  const bool work = row_ok && (fl[0] <= 1 || fl[1] <= 1);
  for (int64_t c0 = 0; c0 < M; c0 += BN) {
    P::tile(U, M, D, blockIdx.x, c0 / BN, inv_temp, sm);
    if (work) {
      for (int b = sub; b < BN; b += TPR) {
        const int64_t j = c0 + b;
        if (j >= M) break;
        if (j == i) continue;
        const int64_t yj = y[j];
        if (yj == ignore) continue;
        const int side = (yj == yi) ? 0 : 1;
        const int f = fl[side];
        if (f > 1) continue;
        const uint64_t key = order_key(sm.Ss[row][b], side);
        int digit;
        if (f == 0) {
          const int shift = 4 * (NV - 1 - level);
          if (level > 0 && (key >> (shift + 4)) != pv[side]) continue;
          digit = static_cast<int>((key >> shift) & 15u);
        } else {
          if (key != pv[side]) continue;
          const int lc = level - NV;
          const int shift = 4 * (NC - 1 - lc);
          const uint32_t col = static_cast<uint32_t>(j);
          if (lc > 0 && (col >> (shift + 4)) != pc[side]) continue;
          digit = static_cast<int>((col >> shift) & 15u);
        }
        atomicAdd(&hist[row][side][digit], 1);
      }
    }
  }
  __syncthreads();
  if (tid < 2 * BM) {
    const int r = tid / 2, side = tid % 2;
    const int64_t ii = r0 + r;
    if (ii >= lo && ii < hi) {
      const int64_t idx = 2 * (ii - lo) + side;
      const int f = st.flag[idx];
      const int* h = hist[r][side];
      int64_t rm = st.rem[idx];
      bool done = false;
      if (f == 0 && level == 0) {
        int64_t total = 0;
        for (int d = 0; d < 16; ++d) total += h[d];
        if (total <= rm) {  // k covers every candidate: no mining on this side
          st.flag[idx] = 2;
          done = true;
        }
      }
      if (!done && (f == 0 || f == 1)) {
        int64_t cum = 0;
        int d = 0;
        for (; d < 15; ++d) {
          if (cum + h[d] >= rm) break;
          cum += h[d];
        }
        rm -= cum;
        st.rem[idx] = rm;
        if (f == 0) {
          st.prefix_v[idx] = (st.prefix_v[idx] << 4) | static_cast<uint64_t>(d);
          if (level == NV - 1) st.flag[idx] = (h[d] == rm) ? 3 : 1;
        } else {
          st.prefix_c[idx] = (st.prefix_c[idx] << 4) | static_cast<uint32_t>(d);
          if (level == NV + NC - 1) st.flag[idx] = 4;
        }
      }
    }
  }
}

template <typename T>
__global__ void select_finalize_kernel(int64_t count, int64_t M, SelectScratch st, T* thr_val,
                                       int64_t* thr_col) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= 2 * count) return;
  const int side = static_cast<int>(idx % 2);
  const int f = st.flag[idx];
  if (f == 3 || f == 4) {
    thr_val[idx] = key_value<T>(st.prefix_v[idx], side);
    thr_col[idx] = f == 4 ? static_cast<int64_t>(st.prefix_c[idx]) : M;
  } else {  // 2 (no mining); 0/1 cannot remain after the last level
    thr_val[idx] = side ? -inf_<T>() : inf_<T>();
    thr_col[idx] = M;
  }
}

// ---------------------------------------------------------------------------------------------
// loss passes. phase 0: supcon; 1: infonce negative log-sum-exp; 2: infonce positive terms.

template <typename T>
__device__ __forceinline__ void lse_add(T& m, T& sum, T s) {
  if (s > m) {
    sum = sum * exp_(m - s) + T(1);  // m = -inf, sum = 0 at start: 0 * 0 + 1
    m = s;
  } else {
    sum += exp_(s - m);
  }
}
template <typename T>
__device__ __forceinline__ void lse_merge(T& m, T& sum, T m2, T sum2) {
  const T mm = m > m2 ? m : m2;
  if (mm == -inf_<T>()) return;
  const T a = (m == -inf_<T>()) ? T(0) : sum * exp_(m - mm);
  const T b = (m2 == -inf_<T>()) ? T(0) : sum2 * exp_(m2 - mm);
  m = mm;
  sum = a + b;
}

template <typename P>
__global__ void __launch_bounds__(kThreads)
    loss_kernel(const typename P::In* __restrict__ U, const int64_t* __restrict__ y, int64_t M,
                int64_t lo, int64_t hi, int64_t D, int64_t ignore, typename P::Acc inv_temp, int phase,
                const typename P::Acc* __restrict__ thr_val, const int64_t* __restrict__ thr_col,
                typename P::Acc* __restrict__ stats, typename P::Acc* __restrict__ loss,
                int32_t* __restrict__ npos) {
  using T = typename P::Acc;
  constexpr int BM = P::BM, BN = P::BN;
  constexpr int TPR = kThreads / BM;
  __shared__ typename P::Smem sm;
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  if (r0 + BM <= lo) return;  // uniform: before the slice
  const int row = tid / TPR, sub = tid % TPR;
  const int64_t i = r0 + row;
  const bool in_slice = i >= lo && i < hi;
  const int64_t o = i - lo;  // row i's index in the per-row arrays
  const bool row_ok = in_slice && y[i] != ignore;
  const int64_t yi = row_ok ? y[i] : 0;
  const T inf = inf_<T>();
  Thr<T> t{inf, -inf, M, M};
  T L = -inf;
  if (row_ok) {
    t = load_thr(thr_val, thr_col, o);
    if (phase == 2) L = stats[2 * o];
  }
  T m = -inf, sum = T(0), a1 = T(0), a2 = T(0);
  int64_t np = 0;
  for (int64_t c0 = 0; c0 < M; c0 += BN) {
    P::tile(U, M, D, blockIdx.x, c0 / BN, inv_temp, sm);
    if (!row_ok) continue;
    for (int b = sub; b < BN; b += TPR) {
      const int64_t j = c0 + b;
      if (j >= M) break;
      if (j == i) continue;
      const int64_t yj = y[j];
      if (yj == ignore) continue;
      const T s = sm.Ss[row][b];
      if (yj == yi) {
        if (!in_pos(t, s, j)) continue;
        if (phase == 0) {
          ++np;
          a1 += s;
          lse_add(m, sum, s);
        } else if (phase == 2) {
          ++np;
          const T x = L - s;
          a1 += softplus_(x);
          a2 += sigmoid_(x);
        }
      } else {
        if (!in_neg(t, s, j)) continue;
        if (phase <= 1) lse_add(m, sum, s);
      }
    }
  }
  // combine the TPR partial results of each row (consecutive lanes), fixed butterfly order
#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const T sum2 = __shfl_xor_sync(0xffffffffu, sum, off);
    lse_merge(m, sum, m2, sum2);
    a1 += __shfl_xor_sync(0xffffffffu, a1, off);
    a2 += __shfl_xor_sync(0xffffffffu, a2, off);
    np += __shfl_xor_sync(0xffffffffu, np, off);
  }
  if (sub != 0 || !in_slice) return;
  const T lse = (m == -inf) ? -inf : m + log_(sum);
  if (!row_ok) {
    loss[o] = T(0);
    npos[o] = 0;
    stats[2 * o] = -inf;
    stats[2 * o + 1] = T(0);
    return;
  }
  if (phase == 0) {
    stats[2 * o] = lse;
    stats[2 * o + 1] = T(0);
    loss[o] = np > 0 ? lse - a1 / static_cast<T>(np) : T(0);
    npos[o] = static_cast<int32_t>(np);
  } else if (phase == 1) {
    stats[2 * o] = lse;
  } else {
    loss[o] = np > 0 ? a1 / static_cast<T>(np) : T(0);
    stats[2 * o + 1] = np > 0 ? a2 / static_cast<T>(np) : T(0);
    npos[o] = static_cast<int32_t>(np);
  }
}

// ---------------------------------------------------------------------------------------------
// backward

template <typename T>
struct RowG {
  Thr<T> t;
  T lse, w, g, g_np;
  int64_t y;
  int active;  // valid and |P| > 0
};

template <typename T>
__device__ __forceinline__ RowG<T> load_rowg(int64_t i, int64_t M, const int64_t* y,
                                             int64_t ignore, const int32_t* npos, const T* stats,
                                             const T* thr_val, const int64_t* thr_col,
                                             const T* grad_rows) {
  RowG<T> r;
  const T inf = inf_<T>();
  r.t = Thr<T>{inf, -inf, M, M};
  r.lse = T(0);
  r.w = T(0);
  r.g = T(0);
  r.g_np = T(0);
  r.y = 0;
  r.active = 0;
  if (i < M) {
    r.y = y[i];
    const int32_t np = npos[i];
    if (r.y != ignore && np > 0) {
      r.active = 1;
      r.t = load_thr(thr_val, thr_col, i);
      r.lse = stats[2 * i];
      r.w = stats[2 * i + 1];
      r.g = grad_rows[i];
      r.g_np = r.g / static_cast<T>(np);
    }
  }
  return r;
}

// g_i * dl_i/ds_ij for an active anchor i (state r) and a valid column j != i with label yj.
template <typename T>
__device__ __forceinline__ T grad_entry(const RowG<T>& r, int variant, int64_t yj, int64_t j,
                                        T s) {
  if (yj == r.y) {
    if (!in_pos(r.t, s, j)) return T(0);
    if (variant == 0) return r.g * exp_(s - r.lse) - r.g_np;
    return -r.g_np * sigmoid_(r.lse - s);
  }
  if (!in_neg(r.t, s, j)) return T(0);
  if (variant == 0) return r.g * exp_(s - r.lse);
  return r.g * r.w * exp_(s - r.lse);
}

// dU rows r0_out .. += H (BM x BN, in sm.Ss) @ U[c0:c0+BN, :] with FMA (Fma policy); r0_out
// counts from the buffer's first row (kDuRows blocks: every row of the block exists).
template <typename T>
__device__ void du_product_fma(const T* __restrict__ U, int64_t M, int64_t D, int64_t r0_out,
                               int64_t c0, SMem<T>& sm, T* __restrict__ dU) {
  constexpr int BM = Cfg<T>::BM, BN = Cfg<T>::BN, BK = Cfg<T>::BK;
  constexpr int TM = BM / 16, TN = BN / 16;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  for (int64_t d0 = 0; d0 < D; d0 += BN) {
    T acc[TM][TN];
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TN; ++b) acc[a][b] = T(0);
    for (int b0 = 0; b0 < BN; b0 += BK) {
      for (int e = tid; e < BK * BN; e += kThreads) {
        const int kk = e / BN, dd = e % BN;
        const int64_t gc = c0 + b0 + kk, gd = d0 + dd;
        sm.Bs[kk][dd] = (gc < M && gd < D) ? U[gc * D + gd] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        T av[TM], bv[TN];
#pragma unroll
        for (int a = 0; a < TM; ++a) av[a] = sm.Ss[ty * TM + a][b0 + kk];
#pragma unroll
        for (int b = 0; b < TN; ++b) bv[b] = sm.Bs[kk][tx * TN + b];
        fma_outer(acc, av, bv);
      }
      __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int64_t gr = r0_out + ty * TM + a;
#pragma unroll
      for (int b = 0; b < TN; ++b) {
        const int64_t gd = d0 + tx * TN + b;
        if (gd < D) dU[gr * D + gd] += acc[a][b];
      }
    }
  }
}

// Extra shared memory of the tensor-core backward: H in the input type (16-bit types; tf32
// reads H from Ss) and a K-slice of U_J.
template <typename In>
struct BwdTC {
  static constexpr int kVsLd = 2 * kTcTile + (TcTraits<In>::kTf32 ? 4 : 8);  // up to 128 columns
  static constexpr int kHsRows = TcTraits<In>::kTf32 ? 1 : kTcTile;
  alignas(128) In Hs[kHsRows][kTcTile + 8];
  alignas(128) In Vs[TcTraits<In>::K][kVsLd];
};

#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
// Steps shared by the two tensor-core dU products below.
template <typename In>
using HFrag = wmma::fragment<wmma::matrix_a, 16, 16, TcTraits<In>::K, typename TcTraits<In>::Frag,
                             wmma::row_major>;
template <typename In>
using DuFrag = wmma::fragment<wmma::accumulator, 16, 16, TcTraits<In>::K, float>;

// ex.Vs = U[row0 .. row0 + K, d0 .. d0 + WIDTH), zero outside M x D; 16-byte loads where allowed.
template <typename In, int WIDTH>
__device__ __forceinline__ void stage_u_rows(const In* __restrict__ U, int64_t M, int64_t D,
                                             int64_t row0, int64_t d0, bool vec_ok, BwdTC<In>& ex) {
  constexpr int K = TcTraits<In>::K, VEC = 16 / sizeof(In);
  const int tid = threadIdx.x;
  if (vec_ok) {
    for (int e = tid; e < K * (WIDTH / VEC); e += kThreads) {
      const int kk = e / (WIDTH / VEC), dd = (e % (WIDTH / VEC)) * VEC;
      const int64_t gc = row0 + kk, gd = d0 + dd;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (gc < M && gd < D) v = *reinterpret_cast<const uint4*>(U + gc * D + gd);
      *reinterpret_cast<uint4*>(&ex.Vs[kk][dd]) = v;
    }
  } else {
    for (int e = tid; e < K * WIDTH; e += kThreads) {
      const int kk = e / WIDTH, dd = e % WIDTH;
      const int64_t gc = row0 + kk, gd = d0 + dd;
      ex.Vs[kk][dd] = (gc < M && gd < D) ? U[gc * D + gd] : zero_in<In>();
    }
  }
}

// Rows 16 rm .. of H, columns b0 .. b0 + K: from Ss rounded to tf32, or from Hs (16-bit types).
template <typename In>
__device__ __forceinline__ void load_h_fragment(HFrag<In>& a, SMemTC<In>& sm, BwdTC<In>& ex, int rm,
                                                int b0) {
  if constexpr (TcTraits<In>::kTf32) {
    wmma::load_matrix_sync(a, &sm.Ss[16 * rm][b0], kSsLd);
#pragma unroll
    for (int e = 0; e < a.num_elements; ++e) a.x[e] = wmma::__float_to_tf32(a.x[e]);
  } else {
    wmma::load_matrix_sync(a, &ex.Hs[16 * rm][b0], kTcTile + 8);
  }
}

// acc += a @ ex.Vs[:, col .. col + 16)
template <typename In>
__device__ __forceinline__ void mma_staged(DuFrag<In>& acc, const HFrag<In>& a, BwdTC<In>& ex, int col) {
  wmma::fragment<wmma::matrix_b, 16, 16, TcTraits<In>::K, typename TcTraits<In>::Frag, wmma::row_major> b;
  wmma::load_matrix_sync(b, &ex.Vs[0][col], BwdTC<In>::kVsLd);
  if constexpr (TcTraits<In>::kTf32) {
#pragma unroll
    for (int e = 0; e < b.num_elements; ++e) b.x[e] = wmma::__float_to_tf32(b.x[e]);
  }
  wmma::mma_sync(acc, a, b, acc);
}
#endif

// dU (padded to the tile grid, ld = Dp) rows r0.. += H @ U[c0:c0+64, :] on tensor cores, r0
// counted from the slice's first row block; each warp owns two 16 x 16 output fragments per
// 64-column chunk (RMW in global).
template <typename In>
__device__ void du_product_tc(const In* __restrict__ U, int64_t M, int64_t D, int64_t Dp,
                              int64_t r0, int64_t c0, SMemTC<In>& sm, BwdTC<In>& ex,
                              float* __restrict__ dU) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int K = TcTraits<In>::K;
  const int tid = threadIdx.x, warp = tid / 32;
  const int rm = warp / 2, cn0 = (warp % 2) * 2;
  constexpr int VEC = 16 / sizeof(In);
  static_assert((BwdTC<In>::kVsLd * sizeof(In)) % 16 == 0, "16-byte staging");
  const bool vec_ok = D % VEC == 0 && (reinterpret_cast<uintptr_t>(U) & 15u) == 0;
  for (int64_t d0 = 0; d0 < Dp; d0 += kTcTile) {
    DuFrag<In> acc[2];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int64_t gd = d0 + 16 * (cn0 + t);
      if (gd < Dp)
        wmma::load_matrix_sync(acc[t], dU + (r0 + 16 * rm) * Dp + gd, static_cast<unsigned>(Dp),
                               wmma::mem_row_major);
    }
    for (int b0 = 0; b0 < kTcTile; b0 += K) {
      __syncthreads();  // Vs readers of the previous slice are done
      stage_u_rows<In, kTcTile>(U, M, D, c0 + b0, d0, vec_ok, ex);
      __syncthreads();
      HFrag<In> a;
      load_h_fragment<In>(a, sm, ex, rm, b0);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        if (d0 + 16 * (cn0 + t) >= Dp) continue;  // warp-uniform
        mma_staged<In>(acc[t], a, ex, 16 * (cn0 + t));
      }
    }
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int64_t gd = d0 + 16 * (cn0 + t);
      if (gd < Dp)
        wmma::store_matrix_sync(dU + (r0 + 16 * rm) * Dp + gd, acc[t], static_cast<unsigned>(Dp),
                                wmma::mem_row_major);
    }
  }
#endif
}

// Register-resident dU for Dp <= 128: each warp keeps four 16 x 16 accumulators (rows
// 16 * (warp / 2), columns 64 * (warp % 2) + 16 t) for the whole column sweep; stored once.
constexpr int kRegMaxD = 2 * kTcTile;

template <typename In>
struct TcAcc {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  float f[4];  // unused below sm_80
#else
  DuFrag<In> f[4];
#endif
};

template <typename In>
__device__ void du_accumulate_tc(const In* __restrict__ U, int64_t M, int64_t D, int64_t Dp,
                                 int64_t c0, SMemTC<In>& sm, BwdTC<In>& ex, TcAcc<In>& acc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int K = TcTraits<In>::K;
  constexpr int VEC = 16 / sizeof(In);
  const int warp = threadIdx.x / 32;
  const int rm = warp / 2, cbase = (warp % 2) * kTcTile;
  const bool vec_ok = D % VEC == 0 && (reinterpret_cast<uintptr_t>(U) & 15u) == 0;
  for (int b0 = 0; b0 < kTcTile; b0 += K) {
    __syncthreads();  // Vs readers of the previous slice are done
    stage_u_rows<In, kRegMaxD>(U, M, D, c0 + b0, 0, vec_ok, ex);
    __syncthreads();
    HFrag<In> a;
    load_h_fragment<In>(a, sm, ex, rm, b0);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int gd = cbase + 16 * t;
      if (gd >= Dp) continue;  // warp-uniform
      mma_staged<In>(acc.f[t], a, ex, gd);
    }
  }
#endif
}

template <typename In>
__device__ void du_init_tc(TcAcc<In>& acc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
#pragma unroll
  for (int t = 0; t < 4; ++t) wmma::fill_fragment(acc.f[t], 0.0f);
#endif
}

template <typename In>
__device__ void du_store_tc(int64_t Dp, int64_t r0, TcAcc<In>& acc, float* __restrict__ dU) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  const int warp = threadIdx.x / 32;
  const int rm = warp / 2, cbase = (warp % 2) * kTcTile;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const int gd = cbase + 16 * t;
    if (gd < Dp)
      wmma::store_matrix_sync(dU + (r0 + 16 * rm) * Dp + gd, acc.f[t], static_cast<unsigned>(Dp),
                              wmma::mem_row_major);
  }
#endif
}

template <typename T>
struct FmaBwd {};

// H is staged in the 16-bit input type for the tensor-core product (tf32 reads it from Ss).
template <typename In>
struct StagesH : std::false_type {};
template <>
struct StagesH<__nv_bfloat16> : std::true_type {};
template <>
struct StagesH<__half> : std::true_type {};

template <typename P, bool kTC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const typename P::In* __restrict__ U, const int64_t* __restrict__ y, int64_t M,
                    int64_t lo, int64_t hi, int64_t D, int64_t Dp, int64_t ignore,
                    typename P::Acc inv_temp, int variant,
                    const int32_t* __restrict__ npos, const typename P::Acc* __restrict__ stats,
                    const typename P::Acc* __restrict__ thr_val, const int64_t* __restrict__ thr_col,
                    const typename P::Acc* __restrict__ grad_rows, typename P::Acc* __restrict__ dU) {
  using T = typename P::Acc;
  using In = typename P::In;
  constexpr int BM = P::BM, BN = P::BN;
  constexpr int TPR = kThreads / BM;
  __shared__ typename P::Smem sm;
  __shared__ RowG<T> cols[BN];
  using Extra = typename std::conditional<kTC, BwdTC<In>, FmaBwd<T>>::type;
  __shared__ Extra ex;
  typename std::conditional<kTC, TcAcc<In>, FmaBwd<T>>::type racc;
  const bool in_reg = kTC && Dp <= kRegMaxD;  // uniform
  if constexpr (kTC) {
    if (in_reg) du_init_tc<In>(racc);
  }
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  if (r0 + BM <= lo) return;  // uniform: before the slice
  const int64_t r0_out = r0 - lo / kDuRows * kDuRows;  // this block's first row in dU
  const int row = tid / TPR, sub = tid % TPR;
  const int64_t i = r0 + row;
  // statistics of every row (all M): row i as anchor here, rows j as anchors in G_ji
  const RowG<T> ri = load_rowg(i, M, y, ignore, npos, stats, thr_val, thr_col, grad_rows);
  const bool vi = i >= lo && i < hi && ri.y != ignore;
  for (int64_t c0 = 0; c0 < M; c0 += BN) {
    __syncthreads();  // previous tile's readers of cols / Ss / Hs are done
    if (tid < BN)
      cols[tid] = load_rowg(c0 + tid, M, y, ignore, npos, stats, thr_val, thr_col, grad_rows);
    P::tile(U, M, D, blockIdx.x, c0 / BN, inv_temp, sm);  // begins and ends with a barrier
    for (int b = sub; b < BN; b += TPR) {
      const int64_t j = c0 + b;
      T h = T(0);
      if (vi && j < M && j != i) {
        const RowG<T>& rj = cols[b];
        if (rj.y != ignore) {
          const T s = sm.Ss[row][b];
          if (ri.active) h += grad_entry(ri, variant, rj.y, j, s);
          if (rj.active) h += grad_entry(rj, variant, ri.y, i, s);
        }
      }
      if constexpr (kTC && StagesH<In>::value) {
        ex.Hs[row][b] = TcTraits<In>::from_float(h);
      } else {
        sm.Ss[row][b] = h;
      }
    }
    __syncthreads();
    if constexpr (kTC) {
      if (in_reg) du_accumulate_tc<In>(U, M, D, Dp, c0, sm, ex, racc);
      else du_product_tc<In>(U, M, D, Dp, r0_out, c0, sm, ex, dU);
    } else {
      du_product_fma<T>(U, M, D, r0_out, c0, sm, dU);
    }
  }
  if constexpr (kTC) {
    if (in_reg) du_store_tc<In>(Dp, r0_out, racc, dU);
  }
}

inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

// Launch sequences (the exported launchers in supcon_kernels.cu choose the tile policy).
namespace {

// Grid of the row-block kernels for the anchor rows [lo, hi): the whole-batch blocks up to hi
// (those before lo return at once).
inline unsigned slice_blocks(int64_t hi, int BM) {
  return static_cast<unsigned>((hi + BM - 1) / BM);
}

template <typename P>
cudaError_t forward_impl(const typename P::In* u, const int64_t* labels, int64_t M, RowSlice rs,
                         int64_t D, int64_t ignore_index, typename P::Acc inv_temp, int variant,
                         int64_t kp, int64_t kn, SelectScratch st, typename P::Acc* loss,
                         int32_t* npos, typename P::Acc* stats, typename P::Acc* thr_val,
                         int64_t* thr_col, cudaStream_t stream) {
  using T = typename P::Acc;
  if (!slice_fits(M, rs)) return cudaErrorInvalidValue;
  const int64_t count = rs.hi - rs.lo;
  if (count == 0) return cudaSuccess;
  const unsigned nb = slice_blocks(rs.hi, P::BM);
  cudaError_t err;
  CT_LAUNCH(select_init_kernel, blocks_for(2 * count, 256), 256, stream, labels, rs.lo, count, ignore_index, kp, kn,
            st);
  if ((err = CT_LAST_ERROR()) != cudaSuccess) return err;
  if (kp > 0 || kn > 0) {
    auto* level_kernel = select_level_kernel<P>;
    for (int level = 0; level < P::NV + NC; ++level) {
      CT_LAUNCH(level_kernel, nb, kThreads, stream, u, labels, M, rs.lo, rs.hi, D, ignore_index, inv_temp, level, st);
      if ((err = CT_LAST_ERROR()) != cudaSuccess) return err;
    }
  }
  auto* finalize_kernel = select_finalize_kernel<T>;
  CT_LAUNCH(finalize_kernel, blocks_for(2 * count, 256), 256, stream, count, M, st, thr_val, thr_col);
  if ((err = CT_LAST_ERROR()) != cudaSuccess) return err;
  auto* loss_pass = loss_kernel<P>;
  const int first = variant == 0 ? 0 : 1, last = variant == 0 ? 0 : 2;  // infonce: 1 then 2
  for (int phase = first; phase <= last; ++phase) {
    CT_LAUNCH(loss_pass, nb, kThreads, stream, u, labels, M, rs.lo, rs.hi, D, ignore_index, inv_temp, phase, thr_val,
              thr_col, stats, loss, npos);
    if ((err = CT_LAST_ERROR()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename P, bool kTC>
cudaError_t backward_impl(const typename P::In* u, const int64_t* labels, int64_t M, RowSlice rs,
                          int64_t D, int64_t Dp, int64_t ignore_index, typename P::Acc inv_temp,
                          int variant, const int32_t* npos, const typename P::Acc* stats,
                          const typename P::Acc* thr_val, const int64_t* thr_col,
                          const typename P::Acc* grad_rows, typename P::Acc* dU,
                          cudaStream_t stream) {
  if (!slice_fits(M, rs)) return cudaErrorInvalidValue;
  if (rs.hi == rs.lo) return cudaSuccess;
  const unsigned nb = slice_blocks(rs.hi, P::BM);
  auto* kernel = backward_kernel<P, kTC>;
  CT_LAUNCH(kernel, nb, kThreads, stream, u, labels, M, rs.lo, rs.hi, D, Dp, ignore_index, inv_temp, variant, npos,
            stats, thr_val, thr_col, grad_rows, dU);
  return CT_LAST_ERROR();
}

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
