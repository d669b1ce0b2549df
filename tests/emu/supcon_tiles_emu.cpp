// Driver of the FMA / WMMA SupCon kernels (csrc/cuda/supcon_passes.cuh: mining by radix select,
// anchor slices) under the CPU warp emulator, through their own launch sequences (forward_impl,
// backward_impl), for tests/test_native_tiles_emu.py.
// Input file: int64 kind (0 bf16, 1 fp16, 2 tf32: WMMA; 3 fp32, 4 fp64: FMA), variant, M, D, lo, hi,
// ignore, kp, kn; double inv_temp; int64 labels[M]; U bits[M * D] (2, 4 or 8 bytes an element);
// double grad_rows[M].
// Output file (float64 throughout, int64 for counts and columns): the forward over all rows (loss,
// npos, stats, thr_val, thr_col), over the anchor slice [lo, hi) (loss, npos, stats), and the
// backward's dU of the slice ((hi - lo) x D, unscaled by inv_temp) from the all-row statistics, as
// csrc/cuda/supcon.cpp calls them (16-bit weight scale and dU buffers of whole 64-row blocks).
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "driver_io.h"
#include "host_rules.h"
#include "warp_emu.h"
#include "../../csrc/cuda/supcon_passes.cuh"

namespace cu = ct_kernels::cuda;

struct Args : emu_io::Common {
  int64_t kp, kn;
};

template <typename T>
static void put(FILE* out, const std::vector<T>& v) {
  for (const T& x : v) {
    if constexpr (std::is_floating_point_v<T>) {
      const double d = static_cast<double>(x);
      std::fwrite(&d, 8, 1, out);
    } else {
      const int64_t i = static_cast<int64_t>(x);
      std::fwrite(&i, 8, 1, out);
    }
  }
}

struct Scratch {
  std::vector<uint64_t> pv;
  std::vector<uint32_t> pc;
  std::vector<int64_t> rem;
  std::vector<int32_t> flag;
  explicit Scratch(int64_t r) : pv(2 * r), pc(2 * r), rem(2 * r), flag(2 * r) {}
  cu::SelectScratch view() { return {pv.data(), pc.data(), rem.data(), flag.data()}; }
};

// P: the tile policy (Fma<T> or Tc<In>); TC: tensor-core backward (dU in padded float buffers).
template <typename P, bool TC>
static void run(const Args& a, const std::vector<int64_t>& y, const void* u, const std::vector<double>& grad_in,
                FILE* out) {
  using T = typename P::Acc;
  using In = typename P::In;
  const auto* U = static_cast<const In*>(u);
  const T it = static_cast<T>(a.inv_temp);
  struct Fwd {
    std::vector<T> loss, stats, thr_val;
    std::vector<int32_t> npos;
    std::vector<int64_t> thr_col;
  };
  auto forward = [&](int64_t lo, int64_t hi) {
    const int64_t r = hi - lo;
    Fwd f{std::vector<T>(r, T(-7)), std::vector<T>(2 * r, T(-7)), std::vector<T>(2 * r, T(-7)),
          std::vector<int32_t>(r, -7), std::vector<int64_t>(2 * r, -7)};
    Scratch st(r);
    const int err = cu::forward_impl<P>(U, y.data(), a.M, cu::RowSlice{lo, hi}, a.D, a.ignore, it,
                                        static_cast<int>(a.variant), a.kp, a.kn, st.view(), f.loss.data(),
                                        f.npos.data(), f.stats.data(), f.thr_val.data(), f.thr_col.data(), nullptr);
    if (err != cudaSuccess) std::exit(3);
    return f;
  };
  const Fwd full = forward(0, a.M), part = forward(a.lo, a.hi);

  // the backward as supcon_backward_cuda runs it
  const double hs = TC && a.kind != 2 ? emu_host::half_weight_scale(grad_in, a.M) : 1.0;
  std::vector<T> grad(a.M);
  for (int64_t i = 0; i < a.M; ++i) grad[i] = static_cast<T>(grad_in[i] * hs);
  const int64_t R = a.hi - a.lo, B = cu::kDuRows, base = a.lo / B * B;
  const int64_t du_rows = (a.hi + B - 1) / B * B - base, Dp = TC ? (a.D + 15) / 16 * 16 : a.D;
  std::vector<T> dUp(du_rows * Dp, T(0));
  const int err = cu::backward_impl<P, TC>(U, y.data(), a.M, cu::RowSlice{a.lo, a.hi}, a.D, Dp, a.ignore, it,
                                           static_cast<int>(a.variant), full.npos.data(), full.stats.data(),
                                           full.thr_val.data(), full.thr_col.data(), grad.data(), dUp.data(), nullptr);
  if (err != cudaSuccess) std::exit(3);
  std::vector<T> dU(R * a.D);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t d = 0; d < a.D; ++d) dU[i * a.D + d] = static_cast<T>(dUp[(a.lo - base + i) * Dp + d] / hs);

  put(out, full.loss), put(out, full.npos), put(out, full.stats), put(out, full.thr_val), put(out, full.thr_col);
  put(out, part.loss), put(out, part.npos), put(out, part.stats);
  put(out, dU);
}

int main(int argc, char** argv) {
  FILE *in, *out;
  const emu_io::Input inp = emu_io::read_input(argc, argv, [](int64_t k) -> size_t { return k <= 1 ? 2 : k == 4 ? 8 : 4; }, &in, &out);
  const Args a{emu_io::common_of(inp), inp.head[7], inp.head[8]};
  const std::vector<int64_t>& y = inp.labels;
  const std::vector<unsigned char>& u = inp.u;
  std::vector<double> grad(a.M);
  emu_io::read_into(in, grad.data(), grad.size());
  std::fclose(in);
  switch (a.kind) {
    case 0:
      run<cu::Tc<__nv_bfloat16>, true>(a, y, u.data(), grad, out);
      break;
    case 1:
      run<cu::Tc<__half>, true>(a, y, u.data(), grad, out);
      break;
    case 2:
      run<cu::Tc<float>, true>(a, y, u.data(), grad, out);
      break;
    case 3:
      run<cu::Fma<float>, false>(a, y, u.data(), grad, out);
      break;
    default:
      run<cu::Fma<double>, false>(a, y, u.data(), grad, out);
  }
  std::fclose(out);
  return 0;
}
