// Launchers of the patch-label CUDA kernel (CUDA headers only: no torch includes).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ct_kernels {
namespace cuda {

// mask: contiguous (B, H, W); labels int64 / purity float32: (B, H/ph, W/pw); bad: one int32
// (zeroed by the caller), incremented by the count of pixels outside [0, C) other than ignore.
template <typename T>
cudaError_t launch_patch_labels(const T* mask, int64_t B, int64_t H, int64_t W, int ph, int pw,
                                int num_classes, int64_t ignore_index, int64_t* labels,
                                float* purity, int* bad, cudaStream_t stream);

}  // namespace cuda
}  // namespace ct_kernels
