// Launchers of the fused SupCon / InfoNCE CUDA kernels (CUDA headers only: no torch includes).
// T is the accumulation type (float for float32/bf16/fp16 inputs, converted by the caller;
// double for float64). All pointers are device pointers of contiguous arrays.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ct_kernels {
namespace cuda {

// Scratch for the per-row mining selection: 2 * M entries each (index 2 * i + side).
struct SelectScratch {
  uint64_t* prefix_v;
  uint32_t* prefix_c;
  int64_t* rem;
  int32_t* flag;
};

// variant: 0 supcon, 1 infonce. Writes loss (M), npos (M), stats (M x 2), thr_val (M x 2),
// thr_col (M x 2); see csrc/common.h for their meaning.
template <typename T>
cudaError_t launch_supcon_forward(const T* u, const int64_t* labels, int64_t M, int64_t D,
                                  int64_t ignore_index, T inv_temp, int variant, int64_t kp,
                                  int64_t kn, SelectScratch scratch, T* loss, int32_t* npos,
                                  T* stats, T* thr_val, int64_t* thr_col, cudaStream_t stream);

// dU (M x D, zeroed by the caller) += sum_j (G_ij + G_ji) u_j   (the caller scales by inv_temp).
template <typename T>
cudaError_t launch_supcon_backward(const T* u, const int64_t* labels, int64_t M, int64_t D,
                                   int64_t ignore_index, T inv_temp, int variant,
                                   const int32_t* npos, const T* stats, const T* thr_val,
                                   const int64_t* thr_col, const T* grad_rows, T* dU,
                                   cudaStream_t stream);

// Tensor-core path (WMMA, float accumulation): u in bf16 / fp16, or float32 read as tf32.
enum InKind : int { kInBf16 = 0, kInFp16 = 1, kInTf32 = 2 };
constexpr int kTcTileRows = 64;  // dU_padded has round_up(M, 64) rows

cudaError_t launch_supcon_forward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                     int64_t D, int64_t ignore_index, float inv_temp, int variant,
                                     int64_t kp, int64_t kn, SelectScratch scratch, float* loss,
                                     int32_t* npos, float* stats, float* thr_val,
                                     int64_t* thr_col, cudaStream_t stream);

// dU_padded: (round_up(M, 64) x Dp) float32, zeroed, Dp = round_up(D, 16); the caller slices
// [:M, :D] and scales by inv_temp.
cudaError_t launch_supcon_backward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                      int64_t D, int64_t ignore_index, float inv_temp,
                                      int variant, const int32_t* npos, const float* stats,
                                      const float* thr_val, const int64_t* thr_col,
                                      const float* grad_rows, float* dU_padded, int64_t Dp,
                                      cudaStream_t stream);

}  // namespace cuda
}  // namespace ct_kernels
