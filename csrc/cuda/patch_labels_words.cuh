// Patch-majority labels of byte masks (uint8, int8, bool), four pixels to a 32-bit word and a
// thread a patch: the CUDA twin of patch_labels_bytes_kernel in ct_kernels/triton_ops/
// patch_labels.py (the same cumulative counts). The general kernel (patch_labels_kernels.cu) gives
// a block to a patch and adds each pixel to a shared-memory histogram with an atomic.
//
// A thread keeps its patch (at most kMaxWords words) in registers. Per class threshold t and word:
// an add and a logic op give each byte's ">= t" bit, a multiply-high adds the four bits into a
// running count (at most 63 words a count: see HalfCounts). Class c holds ge_c - ge_{c+1}.
// A header, so that tests/emu can run the kernel and its launch on a CPU.
#pragma once
#include <cstdint>

#ifndef CT_KERNELS_WARP_EMULATION
#include <cuda_runtime.h>
#endif

#include "launch.cuh"

namespace ct_kernels {
namespace cuda {

constexpr int kWordsMaxClasses = 16;  // the count's cost is a pass over the words a class
constexpr int kMaxWords = 64;         // a patch's words in one thread's registers
constexpr int kWordsThreads = 128;

// Whether patch_labels_words serves a mask: patch rows of 2..32 words (4-byte aligned rows and
// base checked by the caller), a patch within kMaxWords, few classes.
inline bool words_kernel_takes(int ph, int pw, int num_classes) {
  const int pww = pw / 4;
  return pw % 4 == 0 && pww >= 2 && pww <= 32 && (pww & (pww - 1)) == 0 && ph * pww <= kMaxWords &&
         num_classes >= 1 && num_classes <= kWordsMaxClasses;
}

namespace words_detail {

constexpr uint32_t kLanes = 0x01010101u;
constexpr uint32_t kHigh = 0x80808080u;

// The high bit of each byte lane of w whose byte is >= t (0 <= t <= 256), wh = w | kHigh:
// (byte | 0x80) - t cannot borrow from the next lane for t <= 128 and its high bit says
// (byte & 0x7f) >= t; the byte's own high bit settles the rest. For t > 128 both must hold.
__device__ __forceinline__ uint32_t at_least(uint32_t w, uint32_t wh, int t) {
  return t <= 128 ? (((wh - static_cast<uint32_t>(t) * kLanes) | w) & kHigh)
                  : (((wh - static_cast<uint32_t>(t - 128) * kLanes) & w) & kHigh);
}

// The count of high bits set in lanes[] (a byte lane's mask each word). The 64-bit product of a
// lane mask with 0x02020202 holds the sum of its four high bits at bit 32, the partial sums of
// fewer lanes below it and those of the later lanes from bit 40 up: so the low byte of a sum of
// up to 63 multiply-highs is their count. The words go in two halves of 32.
struct HalfCounts {
  uint32_t half[2] = {0u, 0u};
  __device__ __forceinline__ void add(int i, uint32_t lanes) { half[i / 32] += __umulhi(lanes, 0x02020202u); }
  __device__ __forceinline__ int total() const {
    return static_cast<int>(half[0] & 0xFFu) + static_cast<int>(half[1] & 0xFFu);
  }
};

// Pixels of the patch whose byte is >= t, for a class threshold (1 <= t <= kWordsMaxClasses).
__device__ __forceinline__ int count_at_least(const uint32_t (&w)[kMaxWords], int t) {
  const uint32_t sub = static_cast<uint32_t>(t) * kLanes;
  HalfCounts c;
#pragma unroll
  for (int i = 0; i < kMaxWords; ++i) c.add(i, (((w[i] | kHigh) - sub) | w[i]) & kHigh);
  return c.total();
}

// Bad pixels when the ignore byte ig is >= C: a byte >= C other than ig. (With ig < C, or none,
// every byte >= C is bad: the class loop's ge_C.)
__device__ __forceinline__ int count_bad(const uint32_t (&w)[kMaxWords], int C, int ig) {
  HalfCounts c;
#pragma unroll
  for (int i = 0; i < kMaxWords; ++i) {
    const uint32_t wh = w[i] | kHigh;
    c.add(i, at_least(w[i], wh, C) & ((at_least(w[i], wh, ig) ^ kHigh) | at_least(w[i], wh, ig + 1)));
  }
  return c.total();
}

}  // namespace words_detail

// Adds n to *bad, saturating at INT_MAX (a count past 2^31 stays there, as the CPU kernel's).
__device__ __forceinline__ void add_bad_pixels(int* bad, int n) {
  int seen = *bad;
  for (;;) {
    const int want = seen > 0x7fffffff - n ? 0x7fffffff : seen + n;
    const int prev = atomicCAS(bad, seen, want);
    if (prev == seen) break;
    seen = prev;
  }
}

namespace {  // each translation unit that includes this its own kernel (one does, and tests/emu)

// words: the mask as (rows, W4) int32 words; a patch is ph rows of pww words; patches numbered
// (b * gh + gy) * gw + gx. ig: ignore_index as a byte of the mask's dtype, -1 when none can equal it.
__global__ void __launch_bounds__(kWordsThreads)
patch_labels_words_kernel(const uint32_t* __restrict__ words, int64_t W4, int ph, int pww_log2, bool vec4,
                          int64_t gw, int64_t npatch, int C, int ig, int64_t ignore_index,
                          int64_t* __restrict__ labels, float* __restrict__ purity, int* __restrict__ bad) {
  const int64_t patch = static_cast<int64_t>(blockIdx.x) * kWordsThreads + threadIdx.x;
  if (patch >= npatch) return;
  const int64_t gx = patch % gw, prow = patch / gw;  // prow = b * gh + gy
  const int pww = 1 << pww_log2, n = ph << pww_log2;
  const uint32_t* base = words + prow * ph * W4 + gx * pww;
  uint32_t w[kMaxWords];
  if (vec4) {  // rows of 4, 8, ... words at 16-byte aligned addresses: one 16-byte load each 4
#pragma unroll
    for (int i = 0; i < kMaxWords; i += 4) {
      const uint4 v = i < n ? *reinterpret_cast<const uint4*>(base + (i >> pww_log2) * W4 + (i & (pww - 1)))
                            : uint4{0u, 0u, 0u, 0u};
      w[i] = v.x;
      w[i + 1] = v.y;
      w[i + 2] = v.z;
      w[i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kMaxWords; ++i)  // words past the patch read 0: no threshold >= 1 counts them
      w[i] = i < n ? base[(i >> pww_log2) * W4 + (i & (pww - 1))] : 0u;
  }
  const int area = n * 4;
  int prev = area, best_n = 0, best_c = 0;  // prev: ge_0
  for (int t = 1; t <= C; ++t) {
    const int ge = words_detail::count_at_least(w, t);
    const int cnt = prev - ge;  // class t - 1
    if (t - 1 != ig && cnt > best_n) {  // strict: ties keep the smaller class
      best_n = cnt;
      best_c = t - 1;
    }
    prev = ge;
  }
  labels[patch] = best_n > 0 ? static_cast<int64_t>(best_c) : ignore_index;
  purity[patch] = static_cast<float>(best_n) / static_cast<float>(area);  // IEEE division
  // prev is now ge_C: the bytes >= C, the bad ones and any ignored ones >= C. The ignored ones
  // are taken out by a second count only where there are any (a clean patch skips it).
  const int nbad = ig >= C && prev > 0 ? words_detail::count_bad(w, C, ig) : prev;
  if (nbad) add_bad_pixels(bad, nbad);
}

// The launch of patch_labels_words_kernel (the caller checked words_kernel_takes and that the
// mask's bytes and rows are 4-byte aligned).
inline cudaError_t launch_patch_labels_words(const uint32_t* words, int64_t B, int64_t H, int64_t W, int ph,
                                             int pw, int num_classes, int ignore_byte, int64_t ignore_index,
                                             int64_t* labels, float* purity, int* bad, cudaStream_t stream) {
  const int64_t gh = H / ph, gw = W / pw, npatch = B * gh * gw;
  if (npatch == 0) return cudaSuccess;
  const int64_t blocks = (npatch + kWordsThreads - 1) / kWordsThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  int pww_log2 = 0;
  while ((1 << pww_log2) < pw / 4) ++pww_log2;
  const bool vec4 = pw % 16 == 0 && W % 16 == 0 && reinterpret_cast<uintptr_t>(words) % 16 == 0;
  CT_LAUNCH(patch_labels_words_kernel, static_cast<unsigned>(blocks), kWordsThreads, stream, words, W / 4, ph,
            pww_log2, vec4, gw, npatch, num_classes, ignore_byte, ignore_index, labels, purity, bad);
  return CT_LAST_ERROR();
}

}  // namespace

}  // namespace cuda
}  // namespace ct_kernels
