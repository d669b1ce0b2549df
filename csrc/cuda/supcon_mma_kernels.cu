// Launchers of the mma.sync SupCon kernels (supcon_mma.cuh): template dispatch on the input type
// and the padded width DP, launch checks. CUDA headers only.
#include "supcon_kernels.h"
#include "supcon_mma.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

// rows_per_warp 16 or 32 (MT 1 or 2)
template <int P, int DP>
cudaError_t forward(const void* u, const int32_t* cls, int64_t M, RowSlice rs, int64_t D, float inv_temp, int variant,
                    float* loss, int32_t* npos, float* stats, int rows_per_warp, cudaStream_t stream) {
  if (rows_per_warp == 32)
    return mma_path::forward_rows<P, DP, 2>(u, cls, M, rs, D, inv_temp, variant, loss, npos, stats, stream);
  if (rows_per_warp == 16)
    return mma_path::forward_rows<P, DP, 1>(u, cls, M, rs, D, inv_temp, variant, loss, npos, stats, stream);
  return cudaErrorInvalidValue;
}

// One table for both directions: Op's instantiation for (in_kind, D); cudaErrorInvalidValue for
// a kind without one.
template <template <int, int> class Op, typename... Args>
cudaError_t dispatch(int in_kind, int64_t D, Args... args) {
  const bool narrow = D <= 64;
  switch (in_kind) {
    case kInBf16:
      return narrow ? Op<mma_path::kBf16, 64>::run(args...) : Op<mma_path::kBf16, 128>::run(args...);
    case kInFp16:
      return narrow ? Op<mma_path::kFp16, 64>::run(args...) : Op<mma_path::kFp16, 128>::run(args...);
    case kInTf32:
      return narrow ? Op<mma_path::kTf32, 64>::run(args...) : Op<mma_path::kTf32, 128>::run(args...);
    case kInTf32x3:
      return narrow ? Op<mma_path::kTf32x3, 64>::run(args...) : Op<mma_path::kTf32x3, 128>::run(args...);
    default:
      return cudaErrorInvalidValue;
  }
}

template <int P, int DP>
struct Fwd {
  template <typename... A>
  static cudaError_t run(A... a) { return forward<P, DP>(a...); }
};
template <int P, int DP>
struct Bwd {
  template <typename... A>
  static cudaError_t run(A... a) { return mma_path::backward_rows<P, DP>(a...); }
};

}  // namespace

bool supcon_mma_supported(int in_kind, int64_t D) {
  return (in_kind == kInBf16 || in_kind == kInFp16 || in_kind == kInTf32 || in_kind == kInTf32x3) && D >= 1 &&
         D <= kMmaMaxD;
}

cudaError_t launch_supcon_forward_mma(int in_kind, const void* u, const int32_t* cls, int64_t M, RowSlice rows,
                                      int64_t D, float inv_temp, int variant, float* loss, int32_t* npos, float* stats,
                                      int rows_per_warp, cudaStream_t stream) {
  if (!supcon_mma_supported(in_kind, D) || !slice_fits(M, rows)) return cudaErrorInvalidValue;
  if (rows.hi == rows.lo) return cudaSuccess;
  return dispatch<Fwd>(in_kind, D, u, cls, M, rows, D, inv_temp, variant, loss, npos, stats, rows_per_warp, stream);
}

cudaError_t launch_supcon_backward_mma(int in_kind, const void* u, const int32_t* cls, int64_t M, RowSlice rows,
                                       int64_t D, float inv_temp, int variant, const int32_t* npos, const float* stats,
                                       const float* grad_rows, float* dU, cudaStream_t stream) {
  if (!supcon_mma_supported(in_kind, D) || !slice_fits(M, rows)) return cudaErrorInvalidValue;
  if (rows.hi == rows.lo) return cudaSuccess;
  return dispatch<Bwd>(in_kind, D, u, cls, M, rows, D, inv_temp, variant, npos, stats, grad_rows, dU, stream);
}

}  // namespace cuda
}  // namespace ct_kernels
