// ATen side of the CUDA supcon ops: checks, dtype handling (half types accumulate in float32),
// outputs and scratch, PyTorch's current stream, launch checks. No host synchronisation.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common.h"
#include "cuda/supcon_kernels.h"

namespace ct_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_forward_cuda(
    const at::Tensor& u_in, const at::Tensor& labels_in, int64_t ignore_index, double inv_temp,
    c10::string_view variant, int64_t kp, int64_t kn, bool allow_tf32) {
  (void)allow_tf32;  // first version: exact fp32 FMA tiles (tf32 / tensor cores: TODO)
  check_supcon_args(u_in, labels_in, kp, kn);
  TORCH_CHECK(u_in.is_cuda(), "supcon_forward (CUDA kernel): u must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(u_in.device());
  const int var = parse_variant(std::string(variant));
  const auto acc = acc_type_of(u_in.scalar_type());
  const at::Tensor u = u_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t M = u.size(0), D = u.size(1);
  TORCH_CHECK(M < (int64_t(1) << 31), "supcon_forward: too many rows (M >= 2^31)");
  auto opts = u.options();
  at::Tensor loss = at::empty({M}, opts), stats = at::empty({M, 2}, opts),
             thr_val = at::empty({M, 2}, opts);
  at::Tensor npos = at::empty({M}, opts.dtype(at::kInt));
  at::Tensor thr_col = at::empty({M, 2}, opts.dtype(at::kLong));
  at::Tensor pv = at::empty({2 * M}, opts.dtype(at::kLong)), pc = at::empty({2 * M}, opts.dtype(at::kInt)),
             rem = at::empty({2 * M}, opts.dtype(at::kLong)), flag = at::empty({2 * M}, opts.dtype(at::kInt));
  cuda::SelectScratch st{reinterpret_cast<uint64_t*>(pv.data_ptr<int64_t>()),
                         reinterpret_cast<uint32_t*>(pc.data_ptr<int32_t>()), rem.data_ptr<int64_t>(),
                         flag.data_ptr<int32_t>()};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_forward_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_supcon_forward<scalar_t>(
        u.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), M, D, ignore_index,
        static_cast<scalar_t>(inv_temp), var, kp, kn, st, loss.data_ptr<scalar_t>(),
        npos.data_ptr<int32_t>(), stats.data_ptr<scalar_t>(), thr_val.data_ptr<scalar_t>(),
        thr_col.data_ptr<int64_t>(), stream));
  });
  return {loss, npos, stats, thr_val, thr_col};
}

at::Tensor supcon_backward_cuda(const at::Tensor& u_in, const at::Tensor& labels_in,
                                int64_t ignore_index, double inv_temp, c10::string_view variant,
                                int64_t kp, int64_t kn, bool allow_tf32, const at::Tensor& npos_in,
                                const at::Tensor& stats_in, const at::Tensor& thr_val_in,
                                const at::Tensor& thr_col_in, const at::Tensor& grad_rows_in) {
  (void)allow_tf32;
  check_supcon_args(u_in, labels_in, kp, kn);
  TORCH_CHECK(u_in.is_cuda(), "supcon_backward (CUDA kernel): u must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(u_in.device());
  const int var = parse_variant(std::string(variant));
  const auto acc = acc_type_of(u_in.scalar_type());
  const int64_t M = u_in.size(0), D = u_in.size(1);
  TORCH_CHECK(npos_in.numel() == M && stats_in.numel() == 2 * M && thr_val_in.numel() == 2 * M &&
                  thr_col_in.numel() == 2 * M && grad_rows_in.numel() == M,
              "supcon_backward: saved tensors / grad_rows do not match u's row count");
  TORCH_CHECK(M < (int64_t(1) << 31), "supcon_backward: too many rows (M >= 2^31)");
  const at::Tensor u = u_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor npos = npos_in.to(at::kInt).contiguous();
  const at::Tensor stats = stats_in.to(acc).contiguous();
  const at::Tensor thr_val = thr_val_in.to(acc).contiguous();
  const at::Tensor thr_col = thr_col_in.to(at::kLong).contiguous();
  const at::Tensor grad_rows = grad_rows_in.detach().to(acc).contiguous();
  at::Tensor dU = at::zeros({M, D}, u.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_backward_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_supcon_backward<scalar_t>(
        u.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), M, D, ignore_index,
        static_cast<scalar_t>(inv_temp), var, npos.const_data_ptr<int32_t>(),
        stats.const_data_ptr<scalar_t>(), thr_val.const_data_ptr<scalar_t>(),
        thr_col.const_data_ptr<int64_t>(), grad_rows.const_data_ptr<scalar_t>(),
        dU.data_ptr<scalar_t>(), stream));
  });
  dU.mul_(inv_temp);
  return dU.to(u_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CUDA, m) {
  m.impl("supcon_forward", &supcon_forward_cuda);
  m.impl("supcon_backward", &supcon_backward_cuda);
}

}  // namespace ct_kernels
