// Tiles of s = inv_temp * U U^T for the FMA / WMMA SupCon kernels (supcon_passes.cuh has the
// whole plan): block sizes, the exact FMA tile (fp32 / fp64), the WMMA tensor-core tile (bf16 /
// fp16 / tf32), the two tile policies the kernels are templated on, the order keys of the radix
// select and the per-row mining thresholds.
//
// The tile of s_ij = inv_temp * <u_i, u_j> is computed by one routine per policy, so s_ij and s_ji
// are the same bits in every pass and every tile position (FMA: fma(u_ik, u_jk, acc) over k in
// increasing order, exact in its two factors' order; tensor cores: a canonical orientation).
// That is what lets the mining thresholds (value, column) found once decide membership
// identically in the loss pass and, for both (i, j) and (j, i), in the backward.
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

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
