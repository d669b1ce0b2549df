// The problem a CPU supcon call solves, and its tiles of s = inv_temp * U U^T.
//
// Rows are split into square blocks of kBlock rows; tile (I, J) is always computed in a canonical
// orientation (the lower block index as the GEMM's left operand, and within a diagonal tile the
// upper-triangle element), so s_ij and s_ji are the same bits in every pass: the mining
// thresholds found in the forward decide membership identically in the backward, for (i, j) and
// for (j, i).
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace ct_kernels::cpu {

constexpr int64_t kBlock = 256;

template <typename T>
struct Problem {
  int64_t M = 0, D = 0, nb = 0;
  int64_t a0 = 0, a1 = 0;  // anchor rows [a0, a1); row blocks b_lo .. b_hi meet them
  int64_t b_lo = 0, b_hi = 0;
  const int64_t* y = nullptr;
  int64_t ignore = 0;
  T inv_temp = 0;
  int variant = 0;
  int64_t kp = 0, kn = 0;
  at::Tensor U;  // (M, D) acc dtype, contiguous, no grad

  bool valid(int64_t i) const { return y[i] != ignore; }
  bool anchor(int64_t i) const { return i >= a0 && i < a1 && y[i] != ignore; }
  int64_t r0(int64_t I) const { return I * kBlock; }
  int64_t r1(int64_t I) const { return std::min(M, (I + 1) * kBlock); }
};

// S[a * ld + b] = s(r0(I) + a, r0(J) + b) for the rows of blocks I and J (float and double).
template <typename T>
void canonical_tile(const Problem<T>& P, int64_t I, int64_t J, T* S, int64_t ld);

}  // namespace ct_kernels::cpu
