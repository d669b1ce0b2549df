// The CPU kernels' per-element work: loops over one anchor row's columns within a tile of s
// (masks, exponentials, the softmax gradient), vectorized and compiled for AVX-512 / AVX2 /
// baseline x86-64 (row_loops.cpp). Overloads for float and double.
#pragma once
#include <cstdint>

namespace ct_kernels::cpu {

// Per-column data in flat arrays (index j), for the backward's row loops.
template <typename T>
struct Cols {
  const int32_t* cls;  // dense class id, -1 for ignored rows
  const T* tpv;
  const T* tnv;
  const int32_t* tpc;
  const int32_t* tnc;
  const T* lse;   // backward: 0 for inactive rows
  const T* w;
  const T* g;
  const T* gnp;
  const int32_t* act;
};

// Anchor row i: dense class, mining thresholds (see common.h), and the backward's statistics.
template <typename T>
struct Anchor {
  int32_t i, ci;
  T tpv, tnv;
  int32_t tpc, tnc;
  T lse, w, g, gnp;
};

// Row loops over the n columns j0 .. j0 + n of anchor a's row (s and cls point at column j0).
// mode 0: the members of A_i (positives and negatives); mode 1: the negatives only.
// row_max_f: the max of s over the members, |P_i| and the sum of s over P_i in these columns.
void row_max_f(const float* s, int32_t n, int32_t j0, const Anchor<float>& a, const int32_t* cls, int mode,
               float& mx, int64_t& np, float& psum);
void row_max_f(const double* s, int32_t n, int32_t j0, const Anchor<double>& a, const int32_t* cls, int mode,
               double& mx, int64_t& np, double& psum);
// row_sumexp_f: the sum of exp(s - mx) over the members.
float row_sumexp_f(const float* s, int32_t n, int32_t j0, const Anchor<float>& a, const int32_t* cls, int mode,
                   float mx);
double row_sumexp_f(const double* s, int32_t n, int32_t j0, const Anchor<double>& a, const int32_t* cls, int mode,
                    double mx);
// row_grad_f: h[b] = G_ij + G_ji for j = j0 + b (act_i: row i has positives), counting into
// npos_seen the positives of i met, which the caller checks against the forward's |P_i|.
void row_grad_f(const float* s, float* h, int32_t n, int32_t j0, const Anchor<float>& a, bool act_i,
                const Cols<float>& C, int variant, int32_t& npos_seen);
void row_grad_f(const double* s, double* h, int32_t n, int32_t j0, const Anchor<double>& a, bool act_i,
                const Cols<double>& C, int variant, int32_t& npos_seen);

}  // namespace ct_kernels::cpu
