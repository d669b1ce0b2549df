// ATen side of the CUDA patch-label op: checks, outputs, current stream, launch check.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"
#include "cuda/patch_labels_kernels.h"

namespace ct_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_labels_cuda(const at::Tensor& mask_in,
                                                                 int64_t ph, int64_t pw,
                                                                 int64_t num_classes,
                                                                 int64_t ignore_index) {
  check_patch_labels_args(mask_in, ph, pw, num_classes);
  TORCH_CHECK(mask_in.is_cuda(), "patch_labels (CUDA kernel): mask must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(mask_in.device());
  at::Tensor mask = mask_in.contiguous();
  if (mask.scalar_type() == at::kBool) mask = mask.view(at::kByte);
  const int64_t B = mask.size(0), H = mask.size(1), W = mask.size(2);
  TORCH_CHECK(B * (H / ph) * (W / pw) <= INT32_MAX, "patch_labels: too many patches");
  auto labels = at::empty({B, H / ph, W / pw}, mask.options().dtype(at::kLong));
  auto purity = at::empty({B, H / ph, W / pw}, mask.options().dtype(at::kFloat));
  auto bad = at::zeros({1}, mask.options().dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  if (mask.element_size() == 1 &&
      cuda::patch_labels_bytes_supported(mask.const_data_ptr(), static_cast<int>(ph), static_cast<int>(pw),
                                         static_cast<int>(num_classes))) {
    // ignore_index as a byte of the mask's dtype (uint8 0..255, int8 -128..127), -1 when none holds it
    const bool is_u8 = mask.scalar_type() == at::kByte;
    const int64_t lo = is_u8 ? 0 : -128, hi = is_u8 ? 255 : 127;
    const int ignore_byte = ignore_index >= lo && ignore_index <= hi ? static_cast<int>(ignore_index & 0xFF) : -1;
    C10_CUDA_CHECK(cuda::launch_patch_labels_bytes(
        mask.const_data_ptr(), B, H, W, static_cast<int>(ph), static_cast<int>(pw),
        static_cast<int>(num_classes), ignore_byte, ignore_index, labels.data_ptr<int64_t>(),
        purity.data_ptr<float>(), bad.data_ptr<int>(), stream));
    return {labels, purity, bad};
  }
  AT_DISPATCH_INTEGRAL_TYPES(mask.scalar_type(), "patch_labels_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_patch_labels<scalar_t>(
        mask.const_data_ptr<scalar_t>(), B, H, W, static_cast<int>(ph), static_cast<int>(pw),
        static_cast<int>(num_classes), ignore_index, labels.data_ptr<int64_t>(),
        purity.data_ptr<float>(), bad.data_ptr<int>(), stream));
  });
  return {labels, purity, bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CUDA, m) { m.impl("patch_labels", &patch_labels_cuda); }

}  // namespace ct_kernels
