// Patch-majority labels on CPU: parallel over patches, one read of the mask per patch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <tuple>
#include <vector>

#include "common.h"

namespace ct_kernels {
namespace {

template <typename T>
void patch_labels_cpu_impl(const T* mask, int64_t B, int64_t H, int64_t W, int64_t ph,
                           int64_t pw, int64_t C, int64_t ignore, int64_t* labels, float* purity,
                           int64_t* bad_total) {
  const int64_t gh = H / ph, gw = W / pw, npatch = B * gh * gw;
  const float area = static_cast<float>(ph * pw);
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, npatch, 16, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> hist(static_cast<size_t>(C), 0);
    int64_t local_bad = 0;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t gx = p % gw, gy = (p / gw) % gh, b = p / (gw * gh);
      const T* base = mask + (b * H + gy * ph) * W + gx * pw;
      // (best, arg) stays (max count, smallest class with that count) after every increment.
      int32_t best = 0;
      int64_t arg = -1;
      for (int64_t r = 0; r < ph; ++r) {
        const T* row = base + r * W;
        for (int64_t c = 0; c < pw; ++c) {
          const int64_t v = static_cast<int64_t>(row[c]);
          if (v == ignore) continue;
          if (v < 0 || v >= C) {
            ++local_bad;
            continue;
          }
          const int32_t h = ++hist[v];
          if (h > best || (h == best && v < arg)) {
            best = h;
            arg = v;
          }
        }
      }
      labels[p] = best > 0 ? arg : ignore;
      purity[p] = static_cast<float>(best) / area;  // as the reference: count / area
      // reset only the touched bins
      for (int64_t r = 0; r < ph; ++r) {
        const T* row = base + r * W;
        for (int64_t c = 0; c < pw; ++c) {
          const int64_t v = static_cast<int64_t>(row[c]);
          if (v >= 0 && v < C) hist[v] = 0;
        }
      }
    }
    bad.fetch_add(local_bad, std::memory_order_relaxed);
  });
  *bad_total = bad.load();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_labels_cpu(const at::Tensor& mask_in,
                                                                int64_t ph, int64_t pw,
                                                                int64_t num_classes,
                                                                int64_t ignore_index) {
  check_patch_labels_args(mask_in, ph, pw, num_classes);
  TORCH_CHECK(mask_in.device().is_cpu(), "patch_labels (CPU kernel): mask must be on CPU");
  at::Tensor mask = mask_in.contiguous();
  if (mask.scalar_type() == at::kBool) mask = mask.view(at::kByte);
  const int64_t B = mask.size(0), H = mask.size(1), W = mask.size(2);
  auto labels = at::empty({B, H / ph, W / pw}, mask.options().dtype(at::kLong));
  auto purity = at::empty({B, H / ph, W / pw}, mask.options().dtype(at::kFloat));
  int64_t bad = 0;
  AT_DISPATCH_INTEGRAL_TYPES(mask.scalar_type(), "patch_labels_cpu", [&] {
    patch_labels_cpu_impl<scalar_t>(mask.const_data_ptr<scalar_t>(), B, H, W, ph, pw,
                                    num_classes, ignore_index, labels.data_ptr<int64_t>(),
                                    purity.data_ptr<float>(), &bad);
  });
  auto bad_t = at::full({1}, static_cast<int32_t>(std::min<int64_t>(bad, INT32_MAX)),
                        mask.options().dtype(at::kInt));
  return {labels, purity, bad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CPU, m) { m.impl("patch_labels", &patch_labels_cpu); }

}  // namespace ct_kernels
