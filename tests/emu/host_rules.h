// What the ATen side of the CUDA ops (csrc/cuda/supcon.cpp) does around the kernels, for the
// emulator drivers: the int32 relabelling of the mma.sync path and the 16-bit weight scale.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace emu_host {

// class_ids: index of the first equal label in sorted order, -1 for ignored rows.
inline std::vector<int32_t> class_ids(const std::vector<int64_t>& y, int64_t ignore) {
  std::vector<int64_t> sorted(y);
  std::sort(sorted.begin(), sorted.end());
  std::vector<int32_t> cls(y.size());
  for (size_t i = 0; i < y.size(); ++i)
    cls[i] = y[i] == ignore ? -1
                            : static_cast<int32_t>(std::lower_bound(sorted.begin(), sorted.end(), y[i]) - sorted.begin());
  return cls;
}

// half_weight_scale: 2^floor(log2(min(M, 2^14) / max|g|)), exponent clamped to [-100, 100], 1 where
// g is all zero or not finite. The host multiplies grad_rows by it and divides dU by it.
template <typename T>
inline double half_weight_scale(const std::vector<T>& grad, int64_t M) {
  double gmax = 0.0;
  for (T g : grad) gmax = std::max(gmax, std::fabs(static_cast<double>(g)));
  if (!(gmax > 0.0) || !std::isfinite(gmax)) return 1.0;
  const double lim = std::min<double>(static_cast<double>(std::max<int64_t>(M, 1)), 16384.0);
  return std::exp2(std::clamp(std::floor(std::log2(lim / static_cast<float>(gmax))), -100.0, 100.0));
}

}  // namespace emu_host
