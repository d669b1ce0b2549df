// Launchers of the fused SupCon / InfoNCE CUDA kernels (CUDA headers only: no torch includes).
// T is the accumulation type (float for float32/bf16/fp16 inputs, converted by the caller;
// double for float64). All pointers are device pointers of contiguous arrays.
#pragma once
#ifndef CT_KERNELS_WARP_EMULATION  // tests/emu supplies the two types used here
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace ct_kernels {
namespace cuda {

// Anchor rows [lo, hi) of u (every row is a column). The forward's per-row outputs and scratch
// hold hi - lo rows (row i at i - lo); the backward reads the statistics of all M rows.
struct RowSlice {
  int64_t lo, hi;
};

// What every launcher accepts: 32-bit row indices, and a slice inside [0, M).
inline bool slice_fits(int64_t M, RowSlice rs) {
  return M < (int64_t(1) << 31) && rs.lo >= 0 && rs.hi <= M && rs.lo <= rs.hi;
}

// Scratch for the per-row mining selection: 2 * (hi - lo) entries each (index 2 * (i - lo) + side).
struct SelectScratch {
  uint64_t* prefix_v;
  uint32_t* prefix_c;
  int64_t* rem;
  int32_t* flag;
};

// variant: 0 supcon, 1 infonce. Writes, for the R = hi - lo anchor rows, loss (R), npos (R),
// stats (R x 2), thr_val (R x 2), thr_col (R x 2); see csrc/common.h for their meaning.
template <typename T>
cudaError_t launch_supcon_forward(const T* u, const int64_t* labels, int64_t M, RowSlice rows,
                                  int64_t D, int64_t ignore_index, T inv_temp, int variant,
                                  int64_t kp, int64_t kn, SelectScratch scratch, T* loss,
                                  int32_t* npos, T* stats, T* thr_val, int64_t* thr_col,
                                  cudaStream_t stream);

// dU buffers of the backward hold whole blocks of kDuRows rows: the rows
// floor(lo / kDuRows) * kDuRows .. ceil(hi / kDuRows) * kDuRows, so every row block of a kernel
// (64 or 32 rows) writes without a bounds test; the caller keeps rows lo .. hi.
constexpr int kDuRows = 64;

// dU (the kDuRows blocks above x D, zeroed by the caller) += sum_j (G_ij + G_ji) u_j for the
// anchor rows i (the caller scales by inv_temp); npos / stats / thr_* / grad_rows cover all M rows.
template <typename T>
cudaError_t launch_supcon_backward(const T* u, const int64_t* labels, int64_t M, RowSlice rows,
                                   int64_t D, int64_t ignore_index, T inv_temp, int variant,
                                   const int32_t* npos, const T* stats, const T* thr_val,
                                   const int64_t* thr_col, const T* grad_rows, T* dU,
                                   cudaStream_t stream);

// Tensor-core path (WMMA, float accumulation): u in bf16 / fp16, or float32 read as tf32.
// kInTf32x3: float32 without tf32 as three tf32 products (the mma.sync path only).
enum InKind : int { kInBf16 = 0, kInFp16 = 1, kInTf32 = 2, kInTf32x3 = 3 };

cudaError_t launch_supcon_forward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                     RowSlice rows, int64_t D, int64_t ignore_index,
                                     float inv_temp, int variant, int64_t kp, int64_t kn,
                                     SelectScratch scratch, float* loss, int32_t* npos,
                                     float* stats, float* thr_val, int64_t* thr_col,
                                     cudaStream_t stream);

// dU_padded: float32, zeroed, kDuRows blocks as above, Dp = round_up(D, 16) columns; the caller
// takes columns :D and scales by inv_temp.
cudaError_t launch_supcon_backward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                      RowSlice rows, int64_t D, int64_t ignore_index,
                                      float inv_temp, int variant, const int32_t* npos,
                                      const float* stats, const float* thr_val,
                                      const int64_t* thr_col, const float* grad_rows,
                                      float* dU_padded, int64_t Dp, cudaStream_t stream);

// mma.sync path (supcon_mma.cuh; sm_80+): the unmined loss for bf16 / fp16 / tf32 / 3xTF32 inputs
// and D <= kMmaMaxD. Rows are labelled by cls: int32 class ids, equal exactly where the labels are,
// -1 for ignored rows (the caller relabels). Forward: loss, npos, stats for the anchor rows
// (thresholds are the caller's: no mining). Backward: dU (float32, exactly the (hi - lo) x D
// anchor rows, every element written, unscaled by inv_temp).
constexpr int64_t kMmaMaxD = 128;
bool supcon_mma_supported(int in_kind, int64_t D);
// rows_per_warp: 16 or 32 (two m-tiles a warp: each staged B fragment serves both).
cudaError_t launch_supcon_forward_mma(int in_kind, const void* u, const int32_t* cls, int64_t M, RowSlice rows,
                                      int64_t D, float inv_temp, int variant, float* loss, int32_t* npos, float* stats,
                                      int rows_per_warp, cudaStream_t stream);
cudaError_t launch_supcon_backward_mma(int in_kind, const void* u, const int32_t* cls, int64_t M, RowSlice rows,
                                       int64_t D, float inv_temp, int variant, const int32_t* npos, const float* stats,
                                       const float* grad_rows, float* dU, cudaStream_t stream);

}  // namespace cuda
}  // namespace ct_kernels
