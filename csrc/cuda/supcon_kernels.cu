// Launchers of the fused SupCon / InfoNCE CUDA kernels (FMA tiles for float32 / float64, WMMA
// tiles for bf16 / fp16 / tf32, mining by radix select): each picks the tile policy and runs the
// launch sequences of supcon_passes.cuh. CUDA headers only.
#include "supcon_passes.cuh"

namespace ct_kernels {
namespace cuda {


template <typename T>
cudaError_t launch_supcon_forward(const T* u, const int64_t* labels, int64_t M, RowSlice rows,
                                  int64_t D, int64_t ignore_index, T inv_temp, int variant,
                                  int64_t kp, int64_t kn, SelectScratch st, T* loss, int32_t* npos,
                                  T* stats, T* thr_val, int64_t* thr_col, cudaStream_t stream) {
  return forward_impl<Fma<T>>(u, labels, M, rows, D, ignore_index, inv_temp, variant, kp, kn, st,
                              loss, npos, stats, thr_val, thr_col, stream);
}

template <typename T>
cudaError_t launch_supcon_backward(const T* u, const int64_t* labels, int64_t M, RowSlice rows,
                                   int64_t D, int64_t ignore_index, T inv_temp, int variant,
                                   const int32_t* npos, const T* stats, const T* thr_val,
                                   const int64_t* thr_col, const T* grad_rows, T* dU,
                                   cudaStream_t stream) {
  return backward_impl<Fma<T>, false>(u, labels, M, rows, D, D, ignore_index, inv_temp, variant,
                                      npos, stats, thr_val, thr_col, grad_rows, dU, stream);
}

cudaError_t launch_supcon_forward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                     RowSlice rows, int64_t D, int64_t ignore_index,
                                     float inv_temp, int variant, int64_t kp, int64_t kn,
                                     SelectScratch st, float* loss, int32_t* npos, float* stats,
                                     float* thr_val, int64_t* thr_col, cudaStream_t stream) {
  switch (in_kind) {
    case kInBf16:
      return forward_impl<Tc<__nv_bfloat16>>(static_cast<const __nv_bfloat16*>(u), labels, M, rows,
                                             D, ignore_index, inv_temp, variant, kp, kn, st, loss,
                                             npos, stats, thr_val, thr_col, stream);
    case kInFp16:
      return forward_impl<Tc<__half>>(static_cast<const __half*>(u), labels, M, rows, D,
                                      ignore_index, inv_temp, variant, kp, kn, st, loss, npos,
                                      stats, thr_val, thr_col, stream);
    case kInTf32:
      return forward_impl<Tc<float>>(static_cast<const float*>(u), labels, M, rows, D,
                                     ignore_index, inv_temp, variant, kp, kn, st, loss, npos, stats,
                                     thr_val, thr_col, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_supcon_backward_tc(int in_kind, const void* u, const int64_t* labels, int64_t M,
                                      RowSlice rows, int64_t D, int64_t ignore_index,
                                      float inv_temp, int variant, const int32_t* npos,
                                      const float* stats, const float* thr_val,
                                      const int64_t* thr_col, const float* grad_rows,
                                      float* dU_padded, int64_t Dp, cudaStream_t stream) {
  if (Dp % 16 != 0 || Dp < D) return cudaErrorInvalidValue;
  switch (in_kind) {
    case kInBf16:
      return backward_impl<Tc<__nv_bfloat16>, true>(
          static_cast<const __nv_bfloat16*>(u), labels, M, rows, D, Dp, ignore_index, inv_temp,
          variant, npos, stats, thr_val, thr_col, grad_rows, dU_padded, stream);
    case kInFp16:
      return backward_impl<Tc<__half>, true>(static_cast<const __half*>(u), labels, M, rows, D, Dp,
                                             ignore_index, inv_temp, variant, npos, stats, thr_val,
                                             thr_col, grad_rows, dU_padded, stream);
    case kInTf32:
      return backward_impl<Tc<float>, true>(static_cast<const float*>(u), labels, M, rows, D, Dp,
                                            ignore_index, inv_temp, variant, npos, stats, thr_val,
                                            thr_col, grad_rows, dU_padded, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

#define CT_INSTANTIATE(T)                                                                       \
  template cudaError_t launch_supcon_forward<T>(const T*, const int64_t*, int64_t, RowSlice,   \
                                                int64_t, int64_t, T, int, int64_t, int64_t,    \
                                                SelectScratch, T*, int32_t*, T*, T*, int64_t*,  \
                                                cudaStream_t);                                  \
  template cudaError_t launch_supcon_backward<T>(const T*, const int64_t*, int64_t, RowSlice,  \
                                                 int64_t, int64_t, T, int, const int32_t*,      \
                                                 const T*, const T*, const int64_t*, const T*,  \
                                                 T*, cudaStream_t);
CT_INSTANTIATE(float)
CT_INSTANTIATE(double)
#undef CT_INSTANTIATE

}  // namespace cuda
}  // namespace ct_kernels
