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

// Byte masks (uint8, int8, bool as uint8) in the word kernel (patch_labels_words.cuh: four pixels
// to an int32, a thread a patch) where it serves them: patch rows of 2..32 words, at most 64 words
// a patch, at most 16 classes, the mask's base 4-byte aligned. ignore_byte: ignore_index as a
// byte of the mask's dtype, -1 when none can equal it.
bool patch_labels_bytes_supported(const void* mask, int ph, int pw, int num_classes);
cudaError_t launch_patch_labels_bytes(const void* mask, int64_t B, int64_t H, int64_t W, int ph, int pw,
                                      int num_classes, int ignore_byte, int64_t ignore_index,
                                      int64_t* labels, float* purity, int* bad, cudaStream_t stream);

}  // namespace cuda
}  // namespace ct_kernels
