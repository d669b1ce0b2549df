// ATen side of the CUDA supcon ops: checks, dtype handling (half types accumulate in float32),
// outputs and scratch, PyTorch's current stream, launch checks. No host synchronisation.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

#include "common.h"
#include "cuda/supcon_kernels.h"

namespace ct_kernels {
namespace {

// Tensor-core path for bf16 / fp16 inputs, and for float32 when allow_tf32; exact FMA tiles
// otherwise (float32 without tf32, float64). CT_KERNELS_NATIVE_TC=0 forces the FMA path (for
// checks); forward and backward must run under the same setting.
bool tc_forced_off() {
  const char* env = std::getenv("CT_KERNELS_NATIVE_TC");
  return env != nullptr && std::strcmp(env, "0") == 0;
}

int tc_kind(const at::Tensor& u, bool allow_tf32) {
  if (tc_forced_off()) return -1;
  if (at::cuda::getDeviceProperties(u.device().index())->major < 8) return -1;  // WMMA bf16/tf32: sm_80+
  switch (u.scalar_type()) {
    case at::kBFloat16:
      return cuda::kInBf16;
    case at::kHalf:
      return cuda::kInFp16;
    case at::kFloat:
      return allow_tf32 ? cuda::kInTf32 : -1;
    default:
      return -1;
  }
}

// float32 without tf32 as three tf32 products (3xTF32, the mma path only) instead of exact FMA
// tiles: opt-in with CT_KERNELS_FP32_3XTF32=1, as in the Triton backend (ct_kernels/precision.py,
// fp32_3xtf32: ~2.5x faster on an H200, but not float32's accuracy, and its error grows with N).
bool fp32_3xtf32() {
  const char* env = std::getenv("CT_KERNELS_FP32_3XTF32");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

// The mma path's input kind: the tensor-core kind, or for float32 without tf32 the 3xTF32 products
// where asked for; -1 where it does not apply (exact FMA tiles; CT_KERNELS_NATIVE_TC=0 included).
int mma_kind(const at::Tensor& u, int kind, bool allow_tf32) {
  if (tc_forced_off()) return -1;
  if (kind >= 0) return kind;
  if (u.scalar_type() == at::kFloat && !allow_tf32 && fp32_3xtf32() &&
      at::cuda::getDeviceProperties(u.device().index())->major >= 8)
    return cuda::kInTf32x3;
  return -1;
}

// The mma.sync kernels (supcon_mma.cuh: flash-attention-2 layout) for the unmined loss with D <= 128
// on tensor-core inputs: the default there since an H200 run (N = 32768, D = 128, bf16: 6.5 ms
// against 41 ms for the WMMA tiles; tf32: 11.3 against 60.6), clean under compute-sanitizer.
// CT_KERNELS_NATIVE_MMA=0 turns them off (the WMMA tiles, for A/B). Forward and backward decide
// alike from the same arguments; unmined, each may also run without the other (they share only
// the statistics).
bool use_mma(int kind, int64_t D, int64_t kp, int64_t kn) {
  const char* env = std::getenv("CT_KERNELS_NATIVE_MMA");
  const bool off = env != nullptr && std::strcmp(env, "0") == 0;
  return !off && kind >= 0 && kp <= 0 && kn <= 0 && cuda::supcon_mma_supported(kind, D);
}

// Rows per warp of the mma.sync forward: 16 (default) or 32 with CT_KERNELS_NATIVE_MMA_ROWS=32 (half
// the shared-memory reads per product, but 255 registers and a few spilled bytes in sm_90 compiles
// against 92: fewer warps resident), for the GPU A/B that decides between them.
int mma_rows_per_warp() {
  const char* env = std::getenv("CT_KERNELS_NATIVE_MMA_ROWS");
  return env != nullptr && std::strcmp(env, "32") == 0 ? 32 : 16;
}

// int32 class ids for the mma.sync kernels: the index of the first equal label in sorted order (equal
// exactly where the labels are), -1 for ignored rows. O(M log M) on the device, no host sync.
at::Tensor class_ids(const at::Tensor& labels, int64_t ignore_index) {
  const at::Tensor sorted = std::get<0>(labels.sort());
  const at::Tensor first = at::searchsorted(sorted, labels);
  return at::where(labels != ignore_index, first, at::full({}, -1, first.options())).to(at::kInt).contiguous();
}

// 16-bit inputs: the backward rounds the weights H to the input type for the tensor-core product,
// and with mean reduction H ~ 1 / M^2 underflows fp16 at the batch sizes this library is for. A
// power of two applied to grad_rows (so to H) and divided out of dU is exact. The rule of
// ct_kernels/precision.py half_weight_scale: 2^floor(log2(min(M, 2^14) / max|g|)), exponent
// clamped to [-100, 100], 1 where g is all zero or not finite. A device scalar: no host sync.
at::Tensor half_weight_scale(const at::Tensor& grad_rows, int64_t M) {
  const at::Tensor gmax = grad_rows.abs().max().to(at::kFloat);
  const double lim = static_cast<double>(std::min<int64_t>(std::max<int64_t>(M, 1), int64_t(1) << 14));
  const at::Tensor e = at::floor(at::log2(lim / gmax)).clamp(-100, 100);
  return at::where(at::isfinite(gmax) & (gmax > 0), at::exp2(e), at::ones_like(e));
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Anchors are the rows [row_start, row_start + count) of u (see common.h): the kernels run only the
// row blocks that meet them; per-row outputs have `count` rows.
ForwardOut supcon_forward_cuda(const at::Tensor& u_in, const at::Tensor& labels_in,
                               int64_t ignore_index, double inv_temp, c10::string_view variant,
                               int64_t kp, int64_t kn, bool allow_tf32, int64_t row_start,
                               int64_t row_count) {
  check_supcon_args(u_in, labels_in, kp, kn);
  TORCH_CHECK(u_in.is_cuda(), "supcon_forward (CUDA kernel): u must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(u_in.device());
  const int var = parse_variant(std::string(variant));
  const auto acc = acc_type_of(u_in.scalar_type());
  const int kind = tc_kind(u_in, allow_tf32);
  const at::Tensor u = kind >= 0 ? u_in.detach().contiguous() : u_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t M = u.size(0), D = u.size(1);
  TORCH_CHECK(M < (int64_t(1) << 31), "supcon_forward: too many rows (M >= 2^31)");
  const int64_t R = anchor_count(M, row_start, row_count);
  const cuda::RowSlice rows{row_start, row_start + R};
  auto out = forward_outputs(R, u, acc);
  // named references, not a structured binding: the dispatch lambdas capture them (C++17)
  at::Tensor &loss = std::get<0>(out), &npos = std::get<1>(out), &stats = std::get<2>(out),
             &thr_val = std::get<3>(out), &thr_col = std::get<4>(out);
  const auto opts = u.options();
  at::Tensor pv = at::empty({2 * R}, opts.dtype(at::kLong)), pc = at::empty({2 * R}, opts.dtype(at::kInt)),
             rem = at::empty({2 * R}, opts.dtype(at::kLong)), flag = at::empty({2 * R}, opts.dtype(at::kInt));
  cuda::SelectScratch st{reinterpret_cast<uint64_t*>(pv.data_ptr<int64_t>()),
                         reinterpret_cast<uint32_t*>(pc.data_ptr<int32_t>()), rem.data_ptr<int64_t>(),
                         flag.data_ptr<int32_t>()};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const int mkind = mma_kind(u_in, kind, allow_tf32);
  if (use_mma(mkind, D, kp, kn)) {
    const at::Tensor cls = class_ids(labels, ignore_index);
    C10_CUDA_CHECK(cuda::launch_supcon_forward_mma(mkind, u.const_data_ptr(), cls.const_data_ptr<int32_t>(), M, rows, D,
                                                   static_cast<float>(inv_temp), var, loss.data_ptr<float>(),
                                                   npos.data_ptr<int32_t>(), stats.data_ptr<float>(),
                                                   mma_rows_per_warp(), stream));
    thr_val.select(1, 0).fill_(std::numeric_limits<double>::infinity());  // no mining (common.h)
    thr_val.select(1, 1).fill_(-std::numeric_limits<double>::infinity());
    thr_col.fill_(M);
    return out;
  }
  if (kind >= 0) {
    C10_CUDA_CHECK(cuda::launch_supcon_forward_tc(
        kind, u.const_data_ptr(), labels.const_data_ptr<int64_t>(), M, rows, D, ignore_index,
        static_cast<float>(inv_temp), var, kp, kn, st, loss.data_ptr<float>(),
        npos.data_ptr<int32_t>(), stats.data_ptr<float>(), thr_val.data_ptr<float>(),
        thr_col.data_ptr<int64_t>(), stream));
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_forward_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_supcon_forward<scalar_t>(
        u.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), M, rows, D, ignore_index,
        static_cast<scalar_t>(inv_temp), var, kp, kn, st, loss.data_ptr<scalar_t>(),
        npos.data_ptr<int32_t>(), stats.data_ptr<scalar_t>(), thr_val.data_ptr<scalar_t>(),
        thr_col.data_ptr<int64_t>(), stream));
  });
  return out;
}

// The saved tensors and grad_rows cover all M rows; dU has the anchor slice's rows.
at::Tensor supcon_backward_cuda(const at::Tensor& u_in, const at::Tensor& labels_in,
                                int64_t ignore_index, double inv_temp, c10::string_view variant,
                                int64_t kp, int64_t kn, bool allow_tf32, const at::Tensor& npos_in,
                                const at::Tensor& stats_in, const at::Tensor& thr_val_in,
                                const at::Tensor& thr_col_in, const at::Tensor& grad_rows_in,
                                int64_t row_start, int64_t row_count) {
  check_supcon_args(u_in, labels_in, kp, kn);
  TORCH_CHECK(u_in.is_cuda(), "supcon_backward (CUDA kernel): u must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(u_in.device());
  const int var = parse_variant(std::string(variant));
  const auto acc = acc_type_of(u_in.scalar_type());
  const int kind = tc_kind(u_in, allow_tf32);
  const int64_t M = u_in.size(0), D = u_in.size(1);
  const SavedRows sv = saved_rows(u_in, acc, npos_in, stats_in, thr_val_in, thr_col_in, grad_rows_in);
  TORCH_CHECK(M < (int64_t(1) << 31), "supcon_backward: too many rows (M >= 2^31)");
  const int64_t R = anchor_count(M, row_start, row_count);
  const cuda::RowSlice rows{row_start, row_start + R};
  const at::Tensor u = kind >= 0 ? u_in.detach().contiguous() : u_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (R == 0) return at::zeros({0, D}, u_in.options());
  // whole kDuRows blocks around the slice (see supcon_kernels.h); rows lo .. hi kept below
  const int64_t T = cuda::kDuRows, base = row_start / T * T;
  const int64_t du_rows = (row_start + R + T - 1) / T * T - base;
  // tensor-core paths: 16-bit H gets the weight scale, undone with inv_temp on the fp32 result
  at::Tensor grad = sv.grad_rows, hs;
  if (kind == cuda::kInBf16 || kind == cuda::kInFp16) {
    hs = half_weight_scale(sv.grad_rows, M);
    grad = (sv.grad_rows * hs).contiguous();
  }
  auto scaled = [&](const at::Tensor& dU) {
    if (!hs.defined()) return (dU * inv_temp).to(u_in.scalar_type()).contiguous();
    // 16-bit inputs: scaled in place in the float32 buffer (one dU-sized temporary less at the
    // peak); the cast to the input type then makes the output
    return dU.mul_(inv_temp / hs).to(u_in.scalar_type()).contiguous();
  };
  const int mkind = mma_kind(u_in, kind, allow_tf32);
  if (use_mma(mkind, D, kp, kn)) {
    at::Tensor dU = at::empty({R, D}, u.options().dtype(at::kFloat));  // every element written
    const at::Tensor cls = class_ids(labels, ignore_index);
    C10_CUDA_CHECK(cuda::launch_supcon_backward_mma(
        mkind, u.const_data_ptr(), cls.const_data_ptr<int32_t>(), M, rows, D, static_cast<float>(inv_temp), var,
        sv.npos.const_data_ptr<int32_t>(), sv.stats.const_data_ptr<float>(), grad.const_data_ptr<float>(),
        dU.data_ptr<float>(), stream));
    return scaled(dU);
  }
  if (kind >= 0) {
    const int64_t Dp = (D + 15) / 16 * 16;
    at::Tensor dUp = at::zeros({du_rows, Dp}, u.options().dtype(at::kFloat));
    C10_CUDA_CHECK(cuda::launch_supcon_backward_tc(
        kind, u.const_data_ptr(), labels.const_data_ptr<int64_t>(), M, rows, D, ignore_index,
        static_cast<float>(inv_temp), var, sv.npos.const_data_ptr<int32_t>(),
        sv.stats.const_data_ptr<float>(), sv.thr_val.const_data_ptr<float>(),
        sv.thr_col.const_data_ptr<int64_t>(), grad.const_data_ptr<float>(),
        dUp.data_ptr<float>(), Dp, stream));
    return scaled(dUp.narrow(0, row_start - base, R).narrow(1, 0, D));
  }
  at::Tensor dU = at::zeros({du_rows, D}, u.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_backward_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_supcon_backward<scalar_t>(
        u.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), M, rows, D, ignore_index,
        static_cast<scalar_t>(inv_temp), var, sv.npos.const_data_ptr<int32_t>(),
        sv.stats.const_data_ptr<scalar_t>(), sv.thr_val.const_data_ptr<scalar_t>(),
        sv.thr_col.const_data_ptr<int64_t>(), sv.grad_rows.const_data_ptr<scalar_t>(),
        dU.data_ptr<scalar_t>(), stream));
  });
  return (dU.narrow(0, row_start - base, R) * inv_temp).to(u_in.scalar_type()).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CUDA, m) {
  m.impl("supcon_forward", &supcon_forward_cuda);
  m.impl("supcon_backward", &supcon_backward_cuda);
}

}  // namespace ct_kernels
