// Fused SupCon / per-positive InfoNCE on CUDA: exact FMA tiles (fp32 / fp64) and WMMA tensor-core
// tiles (bf16 / fp16 / tf32), with hard mining. Here the launch sequences of the forward and
// backward (the exported launchers in supcon_kernels.cu choose the tile policy); the device code:
//   supcon_tiles.cuh     tiles of s and the tile policies (Fma<T>, Tc<In>)
//   supcon_select.cuh    mining thresholds by radix select
//   supcon_loss.cuh      the loss passes
//   supcon_backward.cuh  the backward pass
//
// Every kernel is row-stationary: a CTA owns BM rows and streams all column tiles, so per-row
// results have one writer (no atomics on results, deterministic).
//
// Anchor slice [lo, hi): the forward's per-row arrays (scratch, thresholds, outputs) hold row i
// of U at index i - lo. The row-block kernels run on the whole-batch grid up to hi and blocks
// that do not meet the slice return at once, so every tile is the one a whole-batch call
// computes, and the block index stays blockIdx.x (an offset block index held in a register cost
// the tensor-core kernels 30-55 registers in sm_90 compiles).
//
// The exported launchers are in supcon_kernels.cu. Headers so that tests/emu can run the kernels
// on a CPU (CT_KERNELS_WARP_EMULATION: the CUDA headers are replaced by tests/emu/warp_emu.h,
// which provides the few intrinsics, WMMA and atomics used here).
#pragma once
#include "supcon_backward.cuh"
#include "supcon_loss.cuh"
#include "supcon_select.cuh"
#include "supcon_tiles.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

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
