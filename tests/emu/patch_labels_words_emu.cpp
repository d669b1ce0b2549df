// Driver of the byte-mask patch-label kernel (csrc/cuda/patch_labels_words.cuh) under the CPU
// emulator, through its launch, for tests/test_native_patch_labels_emu.py.
// Input file: int64 B, H, W, ph, pw, num_classes, ignore_byte, ignore_index; then the mask's
// B * H * W bytes. Output file: int64 labels[npatch], float32 purity[npatch], int32 bad.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "warp_emu.h"
#include "../../csrc/cuda/patch_labels_words.cuh"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 2;
  int64_t h[8];
  if (std::fread(h, 8, 8, in) != 8) return 2;
  const int64_t B = h[0], H = h[1], W = h[2], ph = h[3], pw = h[4];
  if (!ct_kernels::cuda::words_kernel_takes(static_cast<int>(ph), static_cast<int>(pw), static_cast<int>(h[5])))
    return 3;
  std::vector<uint32_t> words(static_cast<size_t>(B * H * W / 4));
  if (std::fread(words.data(), 1, static_cast<size_t>(B * H * W), in) != static_cast<size_t>(B * H * W)) return 2;
  const int64_t npatch = B * (H / ph) * (W / pw);
  std::vector<int64_t> labels(npatch);
  std::vector<float> purity(npatch);
  int bad = 0;
  const int err = ct_kernels::cuda::launch_patch_labels_words(
      words.data(), B, H, W, static_cast<int>(ph), static_cast<int>(pw), static_cast<int>(h[5]),
      static_cast<int>(h[6]), h[7], labels.data(), purity.data(), &bad, nullptr);
  if (err) return 4;
  std::fwrite(labels.data(), 8, labels.size(), out);
  std::fwrite(purity.data(), 4, purity.size(), out);
  std::fwrite(&bad, 4, 1, out);
  std::fclose(out);
  return 0;
}
