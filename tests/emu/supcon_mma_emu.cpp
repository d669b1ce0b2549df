// Driver of the mma.sync SupCon kernels under the CPU warp emulator (tests/test_native_mma_emu.py).
// Input file (driver_io.h): int64 kind (0 bf16, 1 fp16, 2 tf32, 3 float32 as 3xTF32), variant, M, D,
// lo, hi, ignore, DP, forward rows per warp (16 or 32); double inv_temp; int64 labels[M]; U bits
// [M * D] (uint16 or uint32); float grad_rows[M].
// Output file: the forward over all rows (loss[M], npos[M] int32, stats[2M]), the forward over the
// anchor slice [lo, hi) (loss, npos, stats), and the backward's dU of the slice ((hi - lo) x D,
// unscaled by inv_temp), computed from the all-row statistics as supcon_backward uses them.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "driver_io.h"
#include "host_rules.h"
#include "warp_emu.h"
#include "../../csrc/cuda/supcon_mma.cuh"

namespace mp = ct_kernels::cuda::mma_path;

struct Args : emu_io::Common {
  int64_t dp, rows;
};

template <int P, int DP, int MT>
static void run(const Args& a, const std::vector<int64_t>& y, const void* u, const std::vector<float>& grad,
                FILE* out) {
  const std::vector<int32_t> cls = emu_host::class_ids(y, a.ignore);
  const float it = static_cast<float>(a.inv_temp);
  auto forward = [&](int64_t lo, int64_t hi, std::vector<float>& loss, std::vector<int32_t>& npos,
                     std::vector<float>& stats) {
    const int64_t R = hi - lo;
    loss.assign(R, -7.f);
    npos.assign(R, -7);
    stats.assign(2 * R, -7.f);
    const int err = mp::forward_rows<P, DP, MT>(u, cls.data(), a.M, ct_kernels::cuda::RowSlice{lo, hi}, a.D, it,
                                                static_cast<int>(a.variant), loss.data(), npos.data(), stats.data(),
                                                nullptr);
    if (err != cudaSuccess) std::exit(3);
  };
  std::vector<float> loss_f, stats_f, loss_s, stats_s;
  std::vector<int32_t> npos_f, npos_s;
  forward(0, a.M, loss_f, npos_f, stats_f);
  forward(a.lo, a.hi, loss_s, npos_s, stats_s);

  // 16-bit inputs: the host's weight scale, applied to grad_rows before the kernel and divided out
  // of dU after, as supcon_backward_cuda does
  const float hs = a.kind <= 1 ? static_cast<float>(emu_host::half_weight_scale(grad, a.M)) : 1.f;
  std::vector<float> grad_s(grad);
  for (float& g : grad_s) g *= hs;
  const int64_t R = a.hi - a.lo;
  std::vector<float> dU(R * a.D, -7.f);
  const int err = mp::backward_rows<P, DP>(u, cls.data(), a.M, ct_kernels::cuda::RowSlice{a.lo, a.hi}, a.D, it,
                                           static_cast<int>(a.variant), npos_f.data(), stats_f.data(), grad_s.data(),
                                           dU.data(), nullptr);
  if (err != cudaSuccess) std::exit(3);
  std::fwrite(loss_f.data(), 4, loss_f.size(), out);
  std::fwrite(npos_f.data(), 4, npos_f.size(), out);
  std::fwrite(stats_f.data(), 4, stats_f.size(), out);
  std::fwrite(loss_s.data(), 4, loss_s.size(), out);
  std::fwrite(npos_s.data(), 4, npos_s.size(), out);
  std::fwrite(stats_s.data(), 4, stats_s.size(), out);
  for (float& x : dU) x /= hs;
  std::fwrite(dU.data(), 4, dU.size(), out);
}

int main(int argc, char** argv) {
  FILE *in, *out;
  const emu_io::Input inp = emu_io::read_input(argc, argv, [](int64_t k) -> size_t { return k >= 2 ? 4 : 2; }, &in, &out);
  const Args a{emu_io::common_of(inp), inp.head[7], inp.head[8]};
  const std::vector<int64_t>& y = inp.labels;
  const std::vector<unsigned char>& u = inp.u;
  std::vector<float> grad(a.M);
  emu_io::read_into(in, grad.data(), grad.size());
  std::fclose(in);
  // every (type, width, rows per warp) instantiation the launcher has
  auto go = [&](auto p_tag, auto dp_tag) {
    constexpr int P = decltype(p_tag)::value, DP = decltype(dp_tag)::value;
    if (a.rows == 32) run<P, DP, 2>(a, y, u.data(), grad, out);
    else run<P, DP, 1>(a, y, u.data(), grad, out);
  };
  auto by_width = [&](auto p_tag) {
    if (a.dp == 128) go(p_tag, std::integral_constant<int, 128>{});
    else go(p_tag, std::integral_constant<int, 64>{});
  };
  switch (a.kind) {
    case 0:
      by_width(std::integral_constant<int, mp::kBf16>{});
      break;
    case 1:
      by_width(std::integral_constant<int, mp::kFp16>{});
      break;
    case 2:
      by_width(std::integral_constant<int, mp::kTf32>{});
      break;
    default:
      by_width(std::integral_constant<int, mp::kTf32x3>{});
  }
  std::fclose(out);
  return 0;
}
