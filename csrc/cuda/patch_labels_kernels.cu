// Patch-majority labels on CUDA: one block per patch, one read of the mask, histogram in
// shared memory, label and purity written once, out-of-range pixels counted into `bad`. Byte
// masks go to the word kernel of patch_labels_words.cuh where it serves them.
#include <climits>

#include "patch_labels_kernels.h"
#include "patch_labels_words.cuh"

namespace ct_kernels {
namespace cuda {
namespace {

__device__ __forceinline__ bool better(int cnt_a, int cls_a, int cnt_b, int cls_b) {
  return cnt_a > cnt_b || (cnt_a == cnt_b && cls_a < cls_b);
}

template <typename T>
__global__ void patch_labels_kernel(const T* __restrict__ mask, int64_t H, int64_t W, int ph,
                                    int pw, int64_t gh, int64_t gw, int C, int64_t ignore,
                                    int64_t* __restrict__ labels, float* __restrict__ purity,
                                    int* __restrict__ bad) {
  extern __shared__ int hist[];
  __shared__ int red_cnt[32], red_cls[32], red_bad[32];
  const int64_t patch = blockIdx.x;
  const int64_t gx = patch % gw, gy = (patch / gw) % gh, b = patch / (gw * gh);
  for (int c = threadIdx.x; c < C; c += blockDim.x) hist[c] = 0;
  __syncthreads();
  const T* base = mask + (b * H + gy * ph) * W + gx * pw;
  const int area = ph * pw;
  int nbad = 0;
  for (int idx = threadIdx.x; idx < area; idx += blockDim.x) {
    const int r = idx / pw, c = idx - r * pw;
    const int64_t v = static_cast<int64_t>(base[static_cast<int64_t>(r) * W + c]);
    if (v == ignore) continue;
    if (v < 0 || v >= C) {
      ++nbad;
      continue;
    }
    atomicAdd(&hist[v], 1);
  }
  __syncthreads();
  int best = 0, cls = INT_MAX;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int h = hist[c];
    if (h > best) {  // classes visited in increasing order: ties keep the smaller one
      best = h;
      cls = c;
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const int ob = __shfl_down_sync(0xffffffffu, best, off);
    const int oc = __shfl_down_sync(0xffffffffu, cls, off);
    nbad += __shfl_down_sync(0xffffffffu, nbad, off);
    if (better(ob, oc, best, cls)) {
      best = ob;
      cls = oc;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    red_cnt[warp] = best;
    red_cls[warp] = cls;
    red_bad[warp] = nbad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nwarps; ++w) {
      if (better(red_cnt[w], red_cls[w], best, cls)) {
        best = red_cnt[w];
        cls = red_cls[w];
      }
      nbad += red_bad[w];
    }
    labels[patch] = best > 0 ? static_cast<int64_t>(cls) : ignore;
    purity[patch] = static_cast<float>(best) / static_cast<float>(area);
    if (nbad) add_bad_pixels(bad, nbad);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_patch_labels(const T* mask, int64_t B, int64_t H, int64_t W, int ph, int pw,
                                int num_classes, int64_t ignore_index, int64_t* labels,
                                float* purity, int* bad, cudaStream_t stream) {
  const int64_t gh = H / ph, gw = W / pw, npatch = B * gh * gw;
  if (npatch == 0) return cudaSuccess;
  if (npatch > INT_MAX) return cudaErrorInvalidValue;
  const int area = ph * pw;
  int threads = area >= 256 ? 256 : ((area + 31) / 32) * 32;
  if (threads < 32) threads = 32;
  const size_t smem = static_cast<size_t>(num_classes) * sizeof(int);
  patch_labels_kernel<T><<<static_cast<unsigned>(npatch), threads, smem, stream>>>(
      mask, H, W, ph, pw, gh, gw, num_classes, ignore_index, labels, purity, bad);
  return cudaGetLastError();
}

bool patch_labels_bytes_supported(const void* mask, int ph, int pw, int num_classes) {
  return reinterpret_cast<uintptr_t>(mask) % 4 == 0 && words_kernel_takes(ph, pw, num_classes);
}

cudaError_t launch_patch_labels_bytes(const void* mask, int64_t B, int64_t H, int64_t W, int ph, int pw,
                                      int num_classes, int ignore_byte, int64_t ignore_index,
                                      int64_t* labels, float* purity, int* bad, cudaStream_t stream) {
  return launch_patch_labels_words(static_cast<const uint32_t*>(mask), B, H, W, ph, pw, num_classes,
                                   ignore_byte, ignore_index, labels, purity, bad, stream);
}

#define CT_INSTANTIATE(T)                                                                     \
  template cudaError_t launch_patch_labels<T>(const T*, int64_t, int64_t, int64_t, int, int, \
                                              int, int64_t, int64_t*, float*, int*,          \
                                              cudaStream_t);
CT_INSTANTIATE(uint8_t)
CT_INSTANTIATE(int8_t)
CT_INSTANTIATE(int16_t)
CT_INSTANTIATE(int32_t)
CT_INSTANTIATE(int64_t)
#undef CT_INSTANTIATE

}  // namespace cuda
}  // namespace ct_kernels
