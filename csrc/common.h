// Shared argument checks for the ATen-side wrappers (CPU and CUDA), defined once in checks.cpp.
// Out of line on purpose: on the GPU machine (torch 2.11) a TORCH_CHECK thrown from
// check_patch_labels_args crashed the process (not reproducible on this CPU machine, torch 2.14).
// The suspect, not confirmed, is the inline copy emitted in two translation units.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <string>
#include <tuple>

#include "variant.h"

namespace ct_kernels {

// Per-patch histograms live on chip in the CUDA kernel; the CPU kernel keeps the same limit
// so that both backends accept the same inputs (ct_kernels._native.MAX_CLASSES).
constexpr int64_t kMaxClasses = 1024;

void check_patch_labels_args(const at::Tensor& mask, int64_t ph, int64_t pw, int64_t num_classes);

int parse_variant(const std::string& v);

// saved tensors of supcon_forward (acc = float64 for float64 input, float32 otherwise):
//   npos    (M,)   int32  |P_i| after mining
//   stats   (M, 2) acc    supcon: [lse over A_i, 0]; infonce: [lse over N_i, W_i] with
//                         W_i = (1/|P_i|) sum_{p in P_i} sigmoid(L_i - s_ip)
//   thr_val (M, 2) acc    mining thresholds [positive side, negative side] (s values)
//   thr_col (M, 2) int64  their columns; membership of j in row i's mined set:
//                         positives: s_ij < tv || (s_ij == tv && j <= tc)
//                         negatives: s_ij > tv || (s_ij == tv && j <= tc)
//                         no mining on a side: tv = +inf (pos) / -inf (neg), tc = M.
void check_supcon_args(const at::Tensor& u, const at::Tensor& labels, int64_t kp, int64_t kn);

// Anchor slice of the supcon ops: rows [row_start, row_start + count) of u are the anchors, every
// row a column (row_count -1: to the end). Forward outputs and dU have `count` rows; the backward's
// saved tensors and grad_rows cover all M rows (zeros, npos 0, for rows that were never anchors).
// Returns count after checking the slice lies inside [0, M).
int64_t anchor_count(int64_t M, int64_t row_start, int64_t row_count);

// The forward's outputs for R anchor rows, as documented above, on u's device (acc: the
// accumulation type): (loss, npos, stats, thr_val, thr_col), uninitialised.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_outputs(
    int64_t R, const at::Tensor& u, at::ScalarType acc);

// The backward's saved tensors and grad_rows as both kernels read them: checked to cover all M
// rows and to be on u's device, contiguous, npos int32, thr_col int64, the others in the accumulation type.
struct SavedRows {
  at::Tensor npos, stats, thr_val, thr_col, grad_rows;
};
SavedRows saved_rows(const at::Tensor& u, at::ScalarType acc, const at::Tensor& npos, const at::Tensor& stats,
                     const at::Tensor& thr_val, const at::Tensor& thr_col, const at::Tensor& grad_rows);

inline at::ScalarType acc_type_of(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ct_kernels
