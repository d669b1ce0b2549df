// Loss passes of the FMA / WMMA SupCon kernels: row-stationary, masks from labels and the
// mining thresholds, online log-sum-exp, per-row loss and statistics written once.
#pragma once
#include "supcon_tiles.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

// phase 0: supcon; 1: infonce negative log-sum-exp; 2: infonce positive terms.

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

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
