// Backward of the FMA / WMMA SupCon kernels: one row-stationary pass that recomputes each tile,
// forms H_ij = G_ij + G_ji from the forward's per-row statistics of i and j, and accumulates
// dU_I += H U_J (FMA tiles, or tensor cores with dU in registers for D <= 128).
#pragma once
#include "supcon_tiles.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

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

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
