// Canonical tiles of s (see tiles.h): one at::mm per tile (BLAS speed), then a scaled copy into
// the tile buffer, transposed for tiles below the diagonal.
#include "cpu/tiles.h"

#include <ATen/ops/mm.h>

#include "cpu/isa.h"

namespace ct_kernels::cpu {
namespace {

// S[x * lds + y] = p[y * ldp + x] * it for x < rows, y < cols: a scaled transposed copy. Element
// by element it was a strided gather per value (~70 % of the tile copies' time, ~5 % of a step at
// N = 4096); AVX transposes 8 x 8 blocks in registers. The same products and one rounding each,
// so the bits are those of the plain loop.
template <typename T>
void transpose_scaled_from(const T* p, int64_t ldp, T* S, int64_t lds, int64_t x0, int64_t rows, int64_t y0,
                           int64_t cols, T it) {
  for (int64_t x = x0; x < rows; ++x)
    for (int64_t y = y0; y < cols; ++y) S[x * lds + y] = p[y * ldp + x] * it;
}

#ifdef CT_HAVE_X86_SIMD
__attribute__((target("avx"))) void transpose_scaled_avx(const float* p, int64_t ldp, float* S, int64_t lds,
                                                         int64_t rows, int64_t cols, float it) {
  const __m256 scale = _mm256_set1_ps(it);
  int64_t x0 = 0;
  for (; x0 + 8 <= rows; x0 += 8) {
    int64_t y0 = 0;
    for (; y0 + 8 <= cols; y0 += 8) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_mul_ps(_mm256_loadu_ps(p + (y0 + k) * ldp + x0), scale);
      __m256 t[8], u[8];
      for (int k = 0; k < 4; ++k) {  // pairs of rows interleaved
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
      }
      for (int k = 0; k < 2; ++k) {  // quads of rows, within each 128-bit half
        u[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int k = 0; k < 4; ++k) {  // halves: rows 0-3 from the low lanes, 4-7 from the high
        _mm256_storeu_ps(S + (x0 + k) * lds + y0, _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
        _mm256_storeu_ps(S + (x0 + 4 + k) * lds + y0, _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
      }
    }
    transpose_scaled_from(p, ldp, S, lds, x0, x0 + 8, y0, cols, it);
  }
  transpose_scaled_from(p, ldp, S, lds, x0, rows, int64_t(0), cols, it);
}
#endif

void transpose_scaled(const float* p, int64_t ldp, float* S, int64_t lds, int64_t rows, int64_t cols, float it) {
#ifdef CT_HAVE_X86_SIMD
  if (cpu_features().avx) return transpose_scaled_avx(p, ldp, S, lds, rows, cols, it);
#endif
  transpose_scaled_from(p, ldp, S, lds, int64_t(0), rows, int64_t(0), cols, it);
}
void transpose_scaled(const double* p, int64_t ldp, double* S, int64_t lds, int64_t rows, int64_t cols, double it) {
  transpose_scaled_from(p, ldp, S, lds, int64_t(0), rows, int64_t(0), cols, it);
}

// S[a * lds + b] = p[a * ldp + b] * it
template <typename T>
void copy_scaled(const T* p, int64_t ldp, T* S, int64_t lds, int64_t rows, int64_t cols, T it) {
  for (int64_t a = 0; a < rows; ++a)
    for (int64_t b = 0; b < cols; ++b) S[a * lds + b] = p[a * ldp + b] * it;
}

}  // namespace

// A block's rows as a GEMM operand: at least kMinRows of them where the matrix has that many, the
// block's own rows last. A trailing block of 1 or 2 rows made at::mm take another BLAS path whose
// sums round differently (a float64 row and its exact copy then had s_i,a != s_i,b, and mining
// broke their tie away from the lower column); widened to the rows before it, every operand is a
// GEMM panel and each s_ij the same bits whichever tile holds it. Returns the first row used.
constexpr int64_t kMinRows = 16;
inline int64_t operand_start(int64_t r, int64_t n) { return r + n - std::min(r + n, std::max(n, kMinRows)); }

template <typename T>
void canonical_tile(const Problem<T>& P, int64_t I, int64_t J, T* S, int64_t ld) {
  const int64_t ri = P.r0(I), ni = P.r1(I) - ri, rj = P.r0(J), nj = P.r1(J) - rj;
  const int64_t li = operand_start(ri, ni), lj = operand_start(rj, nj);
  const int64_t wi = ri + ni - li, wj = rj + nj - lj;  // operand rows; the block's are the last ones
  const T it = P.inv_temp;
  if (I < J) {
    at::Tensor t = at::mm(P.U.slice(0, li, ri + ni), P.U.slice(0, lj, rj + nj).t());  // wi x wj
    copy_scaled(t.const_data_ptr<T>() + (ri - li) * wj + (rj - lj), wj, S, ld, ni, nj, it);
  } else if (I > J) {
    at::Tensor t = at::mm(P.U.slice(0, lj, rj + nj), P.U.slice(0, li, ri + ni).t());  // wj x wi
    transpose_scaled(t.const_data_ptr<T>() + (rj - lj) * wi + (ri - li), wi, S, ld, ni, nj, it);
  } else {
    // upper triangle (a <= b) from the product's rows; each row's part left of the diagonal is
    // the transposed copy of the column above it. 8 rows a band: the band's columns through its
    // diagonal block transposed, then each row from its diagonal on rewritten from its own row
    at::Tensor t = at::mm(P.U.slice(0, li, ri + ni), P.U.slice(0, li, ri + ni).t());  // wi x wi
    const T* p = t.const_data_ptr<T>() + (ri - li) * wi + (ri - li);
    for (int64_t a0 = 0; a0 < ni; a0 += 8) {
      const int64_t na = std::min<int64_t>(8, ni - a0);
      transpose_scaled(p + a0, wi, S + a0 * ld, ld, na, a0 + na, it);
      for (int64_t a = a0; a < a0 + na; ++a)
        copy_scaled(p + a * wi + a, wi, S + a * ld + a, ld, int64_t(1), ni - a, it);
    }
  }
}

template void canonical_tile<float>(const Problem<float>&, int64_t, int64_t, float*, int64_t);
template void canonical_tile<double>(const Problem<double>&, int64_t, int64_t, double*, int64_t);

}  // namespace ct_kernels::cpu
