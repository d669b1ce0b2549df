// Vectorized row loops of the CPU kernels (declared in row_loops.h).
//
// Branch-free row loops: written so the compiler vectorizes them (omp simd), compiled in AVX-512
// / AVX2 / baseline clones chosen at load time. float uses a Cephes-style exp (about 1 ulp);
// double uses std::exp. Every helper the loops call is always_inline: GCC does not inline a
// plain inline function into a target_clones clone (its arch differs), and one call per
// element keeps the loop scalar. Counts add a bool converted to int, not `b ? 1 : 0`: GCC 12
// if-converts the latter only with AVX-512's masks, leaving the AVX2 clone scalar. Each loop
// writes out its own membership lines (same class, valid, the two threshold tests): one
// always_inline helper returning them as a struct of two bools left all three loops scalar in
// every clone (GCC 12; test_float_row_loops_are_vectorized_without_calls fails on it).

#include "cpu/row_loops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/isa.h"
#include "variant.h"

namespace ct_kernels::cpu {
namespace {

__attribute__((always_inline)) inline float fexp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline double fexp(double x) { return std::exp(x); }

// Mined-set membership of column j for a row with threshold (tv, tc) (see common.h): a positive
// is below the threshold or tied with it at a column not after it; a negative is above it or tied.
template <typename T>
__attribute__((always_inline)) inline bool mined_low(T v, T tv, int32_t j, int32_t tc) {
  return (v < tv) | ((v == tv) & (j <= tc));
}
template <typename T>
__attribute__((always_inline)) inline bool mined_high(T v, T tv, int32_t j, int32_t tc) {
  return (v > tv) | ((v == tv) & (j <= tc));
}

// Row loops over the n columns j0 .. j0 + n of anchor a's row (s and cls point at column j0).
// kMode 0: members of A_i (positives and negatives); kMode 1: negatives only.
// Returns max over members, and |P_i| and the sum of s over P_i.
template <typename T, int kMode>
__attribute__((always_inline)) inline void row_max(const T* __restrict s, int32_t n, int32_t j0, const Anchor<T>& a,
                                                   const int32_t* __restrict cls, T& mx_out,
                                                   int64_t& np_out, T& psum_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int32_t ai = a.i, ci = a.ci, tpc = a.tpc, tnc = a.tnc;
  const T tpv = a.tpv, tnv = a.tnv;
  T mx = ninf, psum = 0;
  int32_t np = 0;
#pragma omp simd reduction(max : mx) reduction(+ : psum, np)
  for (int32_t b = 0; b < n; ++b) {
    const int32_t j = j0 + b;
    const int32_t c = cls[b];
    const T v = s[b];
    const bool same = c == ci;
    const bool ok = (c >= 0) & (j != ai);
    const bool mp = mined_low(v, tpv, j, tpc);
    const bool mn = mined_high(v, tnv, j, tnc);
    const bool pos = ok & same & mp;
    const bool neg = ok & !same & mn;
    const bool mem = kMode == 0 ? (pos | neg) : neg;
    mx = std::max(mx, mem ? v : ninf);
    psum += pos ? v : T(0);
    np += static_cast<int32_t>(pos);
  }
  mx_out = mx;
  np_out = np;
  psum_out = psum;
}

template <typename T, int kMode>
__attribute__((always_inline)) inline T row_sumexp(const T* __restrict s, int32_t n, int32_t j0, const Anchor<T>& a,
                                                   const int32_t* __restrict cls, T mx) {
  const int32_t ai = a.i, ci = a.ci, tpc = a.tpc, tnc = a.tnc;
  const T tpv = a.tpv, tnv = a.tnv;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int32_t b = 0; b < n; ++b) {
    const int32_t j = j0 + b;
    const int32_t c = cls[b];
    const T v = s[b];
    const bool same = c == ci;
    const bool ok = (c >= 0) & (j != ai);
    const bool mp = mined_low(v, tpv, j, tpc);
    const bool mn = mined_high(v, tnv, j, tnc);
    const bool mem = kMode == 0 ? ok & ((same & mp) | (!same & mn)) : ok & !same & mn;
    const T e = fexp(v - mx);
    sum += mem ? e : T(0);
  }
  return sum;
}

// H row for anchor i over columns j0 .. j0 + n: G_ij + G_ji (anchor i valid).
template <typename T, int kVariant>
__attribute__((always_inline)) inline void row_grad(const T* __restrict s, T* __restrict h, int32_t n,
                                                    int32_t j0, const Anchor<T>& a, bool act_i,
                                                    const Cols<T>& C, int32_t& npos_seen) {
  const int32_t* __restrict cls = C.cls + j0;
  const T* __restrict tpv = C.tpv + j0;
  const T* __restrict tnv = C.tnv + j0;
  const int32_t* __restrict tpc = C.tpc + j0;
  const int32_t* __restrict tnc = C.tnc + j0;
  const T* __restrict lse = C.lse + j0;
  const T* __restrict w = C.w + j0;
  const T* __restrict g = C.g + j0;
  const T* __restrict gnp = C.gnp + j0;
  const int32_t* __restrict act = C.act + j0;
  const int32_t i = a.i, ci = a.ci, atpc = a.tpc, atnc = a.tnc;
  const T atpv = a.tpv, atnv = a.tnv, alse = a.lse, ag = a.g, agnp = a.gnp, agw = a.g * a.w;
  int32_t cnt = 0;
#pragma omp simd reduction(+ : cnt)
  for (int32_t b = 0; b < n; ++b) {
    const int32_t j = j0 + b;
    const int32_t c = cls[b];
    const T v = s[b];
    const bool same = c == ci;
    const bool ok = (c >= 0) & (j != i);
    // anchor i, column j
    const bool mpi = mined_low(v, atpv, j, atpc);
    const bool mni = mined_high(v, atnv, j, atnc);
    const bool memi = ok & act_i & ((same & mpi) | (!same & mni));  // no ?: on bools: it blocks vectorization
    const T ei = fexp(v - alse);
    T gi;
    if (kVariant == kSupCon) gi = ag * ei - (same ? agnp : T(0));
    else gi = same ? -agnp / (T(1) + ei) : agw * ei;
    // anchor j, column i
    const bool mpj = mined_low(v, tpv[b], i, tpc[b]);
    const bool mnj = mined_high(v, tnv[b], i, tnc[b]);
    const bool memj = ok & (act[b] != 0) & ((same & mpj) | (!same & mnj));
    const T ej = fexp(v - lse[b]);
    T gj;
    if (kVariant == kSupCon) gj = g[b] * ej - (same ? gnp[b] : T(0));
    else gj = same ? -gnp[b] / (T(1) + ej) : g[b] * w[b] * ej;
    h[b] = (memi ? gi : T(0)) + (memj ? gj : T(0));
    cnt += static_cast<int32_t>(memi & same);
  }
  npos_seen += cnt;
}

}  // namespace

CT_CLONES void row_max_f(const float* s, int32_t n, int32_t j0, const Anchor<float>& a, const int32_t* cls,
                         int mode, float& mx, int64_t& np, float& psum) {
  if (mode == 0) row_max<float, 0>(s, n, j0, a, cls, mx, np, psum);
  else row_max<float, 1>(s, n, j0, a, cls, mx, np, psum);
}
void row_max_f(const double* s, int32_t n, int32_t j0, const Anchor<double>& a, const int32_t* cls, int mode,
               double& mx, int64_t& np, double& psum) {
  if (mode == 0) row_max<double, 0>(s, n, j0, a, cls, mx, np, psum);
  else row_max<double, 1>(s, n, j0, a, cls, mx, np, psum);
}
CT_CLONES float row_sumexp_f(const float* s, int32_t n, int32_t j0, const Anchor<float>& a, const int32_t* cls,
                             int mode, float mx) {
  return mode == 0 ? row_sumexp<float, 0>(s, n, j0, a, cls, mx) : row_sumexp<float, 1>(s, n, j0, a, cls, mx);
}
double row_sumexp_f(const double* s, int32_t n, int32_t j0, const Anchor<double>& a, const int32_t* cls, int mode,
                    double mx) {
  return mode == 0 ? row_sumexp<double, 0>(s, n, j0, a, cls, mx) : row_sumexp<double, 1>(s, n, j0, a, cls, mx);
}
CT_CLONES void row_grad_f(const float* s, float* h, int32_t n, int32_t j0, const Anchor<float>& a, bool act_i,
                          const Cols<float>& C, int variant, int32_t& npos_seen) {
  if (variant == kSupCon) row_grad<float, kSupCon>(s, h, n, j0, a, act_i, C, npos_seen);
  else row_grad<float, kInfoNCE>(s, h, n, j0, a, act_i, C, npos_seen);
}
void row_grad_f(const double* s, double* h, int32_t n, int32_t j0, const Anchor<double>& a, bool act_i,
                const Cols<double>& C, int variant, int32_t& npos_seen) {
  if (variant == kSupCon) row_grad<double, kSupCon>(s, h, n, j0, a, act_i, C, npos_seen);
  else row_grad<double, kInfoNCE>(s, h, n, j0, a, act_i, C, npos_seen);
}

}  // namespace ct_kernels::cpu
