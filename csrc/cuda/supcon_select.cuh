// Hard-mining thresholds of the FMA / WMMA SupCon kernels: an MSD radix select (4-bit digits)
// per row and side on the order key (value key, then column among exact ties, run only for rows
// that still have ties); each level is one pass over the tiles with per-row histograms in shared
// memory, O(M) state in global (SelectScratch).
#pragma once
#include "supcon_tiles.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

// Per row and side, flag: 0 value levels, 1 column levels, 2 no mining on this side (all),
// 3 done by value (all ties at the threshold value are in: column = M), 4 done by column.
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

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
