// The argument checks declared in common.h: one definition, so that the unwind information of
// every throwing check lives in one translation unit.
#include "common.h"

namespace ct_kernels {

void check_patch_labels_args(const at::Tensor& mask, int64_t ph, int64_t pw, int64_t num_classes) {
  TORCH_CHECK(mask.dim() == 3, "patch_labels: mask must be 3-D (B, H, W), got ", mask.dim(),
              " dims");
  auto st = mask.scalar_type();
  TORCH_CHECK(st == at::kByte || st == at::kChar || st == at::kShort || st == at::kInt ||
                  st == at::kLong || st == at::kBool,
              "patch_labels: mask must be an integer or bool tensor, got ", st);
  TORCH_CHECK(ph > 0 && pw > 0, "patch_labels: patch size must be positive, got (", ph, ", ", pw,
              ")");
  TORCH_CHECK(mask.size(1) % ph == 0 && mask.size(2) % pw == 0, "patch_labels: H, W = (",
              mask.size(1), ", ", mask.size(2), ") must be divisible by the patch size (", ph,
              ", ", pw, ")");
  TORCH_CHECK(num_classes >= 1 && num_classes <= kMaxClasses,
              "patch_labels: num_classes must be in [1, ", kMaxClasses,
              "] for the native backend, got num_classes=", num_classes);
  TORCH_CHECK(ph * pw <= (int64_t(1) << 30), "patch_labels: patch area too large");
}

int parse_variant(const std::string& v) {
  if (v == "supcon") return kSupCon;
  if (v == "infonce") return kInfoNCE;
  TORCH_CHECK(false, "supcon: variant must be 'supcon' or 'infonce', got '", v, "'");
  return -1;
}

void check_supcon_args(const at::Tensor& u, const at::Tensor& labels, int64_t kp, int64_t kn) {
  TORCH_CHECK(u.dim() == 2, "supcon: u must be 2-D (M, D), got ", u.dim(), " dims");
  auto st = u.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "supcon: u must be float32/float64/float16/bfloat16, got ", st);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == u.size(0),
              "supcon: labels must be (M,) with M = u.size(0)");
  TORCH_CHECK(labels.scalar_type() == at::kLong, "supcon: labels must be int64");
  TORCH_CHECK(labels.device() == u.device(), "supcon: labels and u must be on the same device");
  TORCH_CHECK(kp >= 0 && kn >= 0, "supcon: kp, kn must be >= 0 (0 = all)");
}

int64_t anchor_count(int64_t M, int64_t row_start, int64_t row_count) {
  const int64_t count = row_count < 0 ? M - row_start : row_count;
  // count <= M - row_start, not row_start + count <= M: that sum can overflow
  TORCH_CHECK(row_start >= 0 && row_start <= M && count >= 0 && count <= M - row_start,
              "supcon: anchor rows [", row_start, ", ", row_start, " + ", count,
              ") must lie inside the ", M, " rows of u");
  return count;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_outputs(
    int64_t R, const at::Tensor& u, at::ScalarType acc) {
  const auto opts = u.options().dtype(acc);
  return {at::empty({R}, opts), at::empty({R}, opts.dtype(at::kInt)), at::empty({R, 2}, opts),
          at::empty({R, 2}, opts), at::empty({R, 2}, opts.dtype(at::kLong))};
}

SavedRows saved_rows(const at::Tensor& u, at::ScalarType acc, const at::Tensor& npos, const at::Tensor& stats,
                     const at::Tensor& thr_val, const at::Tensor& thr_col, const at::Tensor& grad_rows) {
  const int64_t M = u.size(0);
  TORCH_CHECK(npos.numel() == M && stats.numel() == 2 * M && thr_val.numel() == 2 * M &&
                  thr_col.numel() == 2 * M && grad_rows.numel() == M,
              "supcon_backward: saved tensors / grad_rows must cover u's ", M, " rows");
  // the kernels take their pointers as they are: a tensor on another device would be read as if
  // it were on u's (on CUDA: an illegal address, which ends the process's CUDA context)
  for (const at::Tensor* t : {&npos, &stats, &thr_val, &thr_col, &grad_rows})
    TORCH_CHECK(t->device() == u.device(), "supcon_backward: saved tensors and grad_rows must be on u's device (",
                u.device(), "), got one on ", t->device());
  return {npos.to(at::kInt).contiguous(), stats.to(acc).contiguous(), thr_val.to(acc).contiguous(),
          thr_col.to(at::kLong).contiguous(), grad_rows.detach().to(acc).contiguous()};
}

}  // namespace ct_kernels
