// Fused SupCon / per-positive InfoNCE on CPU: tiled, O(N*D) memory, deterministic.
//
// Rows are split into square blocks of kBlock rows; tile (I, J) of s = inv_temp * U_I U_J^T is
// always computed in a canonical orientation (the lower block index as the GEMM's left operand,
// and within a diagonal tile the upper-triangle element), so s_ij and s_ji are the same bits in
// every pass: the mining thresholds found in the forward decide membership identically in the
// backward, for (i, j) and for (j, i).
//
// Anchors are the rows a0 .. a1 of U (one rank's rows, or a batch before its memory-bank rows);
// every row is a column. Only the row blocks that meet [a0, a1) run, with the whole-batch block
// grid, so the tiles (and the bits of s) are those of a whole-batch call.
// forward, per row block (parallel): unmined SupCon merges each tile into per-row online
// statistics (one kBlock x kBlock tile held a task); InfoNCE and mining take the block's rows of s
// (kBlock x M, recomputed per tile with at::mm) -> per-row mining thresholds (k-th key by
// bisection, then the column) -> loss terms.
// backward, per row block (parallel): for each column block J, recompute the tile, form
// H_ij = G_ij + G_ji from the saved per-row statistics of i and j (all M rows), and
// dU_I += H U_J (at::mm); no atomics, one writer per row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CT_HAVE_X86_SIMD 1
#endif

namespace ct_kernels {
namespace {

constexpr int64_t kBlock = 256;
constexpr int64_t kRowsBudget = int64_t(256) << 20;  // bytes of forward row buffers at once

template <typename T>
inline T softplus(T x) {  // log(1 + exp(x)), stable
  return x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

template <typename T>
inline T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

// Per-row mining thresholds; see csrc/common.h for the membership rule.
template <typename T>
struct Thr {
  T pv, nv;
  int64_t pc, nc;
};

// Thresholds that keep every candidate (no mining on either side).
template <typename T>
Thr<T> all_candidates(int64_t M) {
  const T inf = std::numeric_limits<T>::infinity();
  return Thr<T>{inf, -inf, M, M};
}

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

bool cpu_has_avx() {
#ifdef CT_HAVE_X86_SIMD
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") != 0;
  }();
  return has;
#else
  return false;
#endif
}

void transpose_scaled(const float* p, int64_t ldp, float* S, int64_t lds, int64_t rows, int64_t cols, float it) {
#ifdef CT_HAVE_X86_SIMD
  if (cpu_has_avx()) return transpose_scaled_avx(p, ldp, S, lds, rows, cols, it);
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

// Canonical tile: S[a * ld + b] = s(r0(I) + a, r0(J) + b).
template <typename T>
void canonical_tile(const Problem<T>& P, int64_t I, int64_t J, T* S, int64_t ld) {
  const int64_t ri = P.r0(I), ni = P.r1(I) - ri, rj = P.r0(J), nj = P.r1(J) - rj;
  const T it = P.inv_temp;
  if (I < J) {
    at::Tensor t = at::mm(P.U.slice(0, ri, ri + ni), P.U.slice(0, rj, rj + nj).t());
    copy_scaled(t.const_data_ptr<T>(), nj, S, ld, ni, nj, it);
  } else if (I > J) {
    at::Tensor t = at::mm(P.U.slice(0, rj, rj + nj), P.U.slice(0, ri, ri + ni).t());  // nj x ni
    transpose_scaled(t.const_data_ptr<T>(), ni, S, ld, ni, nj, it);
  } else {
    // upper triangle (a <= b) from the product's rows; each row's part left of the diagonal is
    // the transposed copy of the column above it. 8 rows a band: the band's columns through its
    // diagonal block transposed, then each row from its diagonal on rewritten from its own row
    at::Tensor t = at::mm(P.U.slice(0, ri, ri + ni), P.U.slice(0, ri, ri + ni).t());
    const T* p = t.const_data_ptr<T>();
    for (int64_t a0 = 0; a0 < ni; a0 += 8) {
      const int64_t na = std::min<int64_t>(8, ni - a0);
      transpose_scaled(p + a0, ni, S + a0 * ld, ld, na, a0 + na, it);
      for (int64_t a = a0; a < a0 + na; ++a)
        copy_scaled(p + a * ni + a, ni, S + a * ld + a, ld, int64_t(1), ni - a, it);
    }
  }
}

template <typename T>
inline bool in_pos(const Thr<T>& t, T s, int64_t j) {
  return s < t.pv || (s == t.pv && j <= t.pc);
}
template <typename T>
inline bool in_neg(const Thr<T>& t, T s, int64_t j) {
  return s > t.nv || (s == t.nv && j <= t.nc);
}

// The k-th candidate of a side is found on integer keys that order like the values: bisection
// from the top bit, each step one vectorized count over the candidates (32 counts for float;
// nth_element took ~25 us for a row's 3400 negatives, the counts ~5 us).
#define CT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

template <typename T> struct KeyOf;
template <> struct KeyOf<float> { using U = uint32_t; };
template <> struct KeyOf<double> { using U = uint64_t; };

// key(a) < key(b) iff a < b, for values that are not NaN; -0.0 and 0.0 (equal) get one key.
template <typename T>
__attribute__((always_inline)) inline typename KeyOf<T>::U order_key(T x) {
  using U = typename KeyOf<T>::U;
  constexpr U kSign = U(1) << (8 * sizeof(U) - 1);
  x = x + T(0);  // -0.0 + 0.0 == +0.0
  U u;
  std::memcpy(&u, &x, sizeof(u));
  return (u & kSign) ? ~u : (u | kSign);
}
template <typename T>
T key_value(typename KeyOf<T>::U key) {
  using U = typename KeyOf<T>::U;
  constexpr U kSign = U(1) << (8 * sizeof(U) - 1);
  const U u = (key & kSign) ? (key & ~kSign) : ~key;
  T x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// The k-th largest of keys[0 .. n) (1 <= k <= n): the largest t with #{key >= t} >= k. Also the
// number of keys strictly above it.
template <typename U>
__attribute__((always_inline)) inline U kth_largest(const U* __restrict keys, int64_t n, int64_t k,
                                                    int64_t& above) {
  U t = 0;
  for (int b = 8 * sizeof(U) - 1; b >= 0; --b) {
    const U c = t | (U(1) << b);
    int32_t cnt = 0;  // n < 2^31 (M is checked); 32-bit lanes count twice as many keys a step
#pragma omp simd reduction(+ : cnt)
    for (int64_t q = 0; q < n; ++q) cnt += static_cast<int32_t>(keys[q] >= c);
    if (cnt >= k) t = c;
  }
  int32_t a = 0;
#pragma omp simd reduction(+ : a)
  for (int64_t q = 0; q < n; ++q) a += static_cast<int32_t>(keys[q] > t);
  above = a;
  return t;
}
CT_CLONES uint32_t kth_largest_key(const uint32_t* keys, int64_t n, int64_t k, int64_t& above) {
  return kth_largest(keys, n, k, above);
}
uint64_t kth_largest_key(const uint64_t* keys, int64_t n, int64_t k, int64_t& above) {
  return kth_largest(keys, n, k, above);
}

// Compaction of a row's candidate keys, one read of the row: positives (same class, not i)
// complemented, negatives (another valid class) as they are. GCC leaves this loop scalar (a
// compaction does not vectorize), and it was ~3/4 of the mined forward's extra time at N = 4096.
// AVX-512 compresses 16 columns in a register and stores all 16 lanes (the memory form of
// vpcompressd is microcoded and slow on AMD Zen 4); AVX2 permutes 8 columns by a table indexed
// by their mask. Full-width stores write past the kept keys: both key buffers carry
// kCompactSlack entries of slack past M.
constexpr int64_t kCompactSlack = 16;

enum class Compaction { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Columns j0 .. M of the scalar loop, appended at npk / nnk. Branch-free: every key is written,
// the count says if it stays.
template <typename T>
__attribute__((always_inline)) inline void compact_keys_from(const T* srow, const int32_t* cls, int64_t j0, int64_t M,
                                                             int64_t i, typename KeyOf<T>::U* pkeys,
                                                             typename KeyOf<T>::U* nkeys, int64_t& npk, int64_t& nnk) {
  const int32_t ci = cls[i];
  for (int64_t j = j0; j < M; ++j) {
    const auto key = order_key(srow[j]);
    const int32_t c = cls[j];
    pkeys[npk] = ~key;
    npk += static_cast<int64_t>((j != i) & (c == ci));
    nkeys[nnk] = key;
    nnk += static_cast<int64_t>((c != ci) & (c >= 0));
  }
}

#ifdef CT_HAVE_X86_SIMD
__attribute__((target("avx512f"))) void compact_keys_avx512(const float* srow, const int32_t* cls, int64_t M,
                                                             int64_t i, uint32_t* pkeys, uint32_t* nkeys,
                                                             int64_t& npk_out, int64_t& nnk_out) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i anchor_class = _mm512_set1_epi32(cls[i]);
  const __m512i anchor_row = _mm512_set1_epi32(static_cast<int32_t>(i));  // M < 2^31 is checked
  const __m512i sign = _mm512_set1_epi32(INT32_MIN);
  const __m512i ones = _mm512_set1_epi32(-1);
  const __m512i zero = _mm512_setzero_si512();
  int64_t npk = 0, nnk = 0;
  for (int64_t j = 0; j < M; j += 16) {
    const __mmask16 in = M - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (M - j)) - 1u);
    // order_key, 16 at a time: +0.0 folds -0.0; a negative value's key is ~bits, else bits | sign
    const __m512i u = _mm512_castps_si512(_mm512_add_ps(_mm512_maskz_loadu_ps(in, srow + j), _mm512_setzero_ps()));
    const __m512i key = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31), sign));
    const __m512i c = _mm512_maskz_loadu_epi32(in, cls + j);
    const __mmask16 same = _mm512_mask_cmpeq_epi32_mask(in, c, anchor_class);
    const __mmask16 self = _mm512_cmpeq_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j))),
                                                   anchor_row);
    const __mmask16 valid = _mm512_mask_cmpge_epi32_mask(in, c, zero);
    const __mmask16 pos = same & static_cast<__mmask16>(~self);
    const __mmask16 neg = valid & static_cast<__mmask16>(~same);
    _mm512_storeu_si512(pkeys + npk, _mm512_maskz_compress_epi32(pos, _mm512_xor_si512(key, ones)));
    npk += __builtin_popcount(pos);
    _mm512_storeu_si512(nkeys + nnk, _mm512_maskz_compress_epi32(neg, key));
    nnk += __builtin_popcount(neg);
  }
  npk_out = npk;
  nnk_out = nnk;
}

// For each 8-bit lane mask: the indices of its set lanes, packed low, one byte each.
constexpr std::array<uint64_t, 256> make_compress_table() {
  std::array<uint64_t, 256> table{};
  for (int m = 0; m < 256; ++m) {
    uint64_t packed = 0;
    int out = 0;
    for (int b = 0; b < 8; ++b)
      if (m & (1 << b)) packed |= uint64_t(b) << (8 * out++);
    table[m] = packed;
  }
  return table;
}
constexpr std::array<uint64_t, 256> kCompressTable = make_compress_table();

__attribute__((target("avx2"))) void compact_keys_avx2(const float* srow, const int32_t* cls, int64_t M, int64_t i,
                                                        uint32_t* pkeys, uint32_t* nkeys, int64_t& npk_out,
                                                        int64_t& nnk_out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i anchor_class = _mm256_set1_epi32(cls[i]);
  const __m256i anchor_row = _mm256_set1_epi32(static_cast<int32_t>(i));
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);
  const __m256i ones = _mm256_set1_epi32(-1);
  int64_t npk = 0, nnk = 0, j = 0;
  for (; j + 8 <= M; j += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_add_ps(_mm256_loadu_ps(srow + j), _mm256_setzero_ps()));
    const __m256i key = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), sign));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cls + j));
    const __m256i same = _mm256_cmpeq_epi32(c, anchor_class);
    const __m256i self = _mm256_cmpeq_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int32_t>(j))),
                                            anchor_row);
    const __m256i valid = _mm256_cmpgt_epi32(c, ones);  // c >= 0
    const int pos = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(self, same)));
    const int neg = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(same, valid)));
    const __m256i ppos = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kCompressTable[pos])));
    const __m256i pneg = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kCompressTable[neg])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pkeys + npk),
                        _mm256_permutevar8x32_epi32(_mm256_xor_si256(key, ones), ppos));
    npk += __builtin_popcount(pos);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(nkeys + nnk), _mm256_permutevar8x32_epi32(key, pneg));
    nnk += __builtin_popcount(neg);
  }
  compact_keys_from(srow, cls, j, M, i, pkeys, nkeys, npk, nnk);
  npk_out = npk;
  nnk_out = nnk;
}
#endif

// The fastest compaction this CPU runs, found once per process. CT_KERNELS_CPU_MINING_ISA =
// scalar | avx2 | avx512 picks a path instead (tests run each one; comparisons); a path the CPU
// lacks, or another value, is an error. Called before the parallel region, so it throws there.
Compaction compaction_path() {
  static const Compaction best = [] {
#ifdef CT_HAVE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Compaction::kAvx512;
    if (__builtin_cpu_supports("avx2")) return Compaction::kAvx2;
#endif
    return Compaction::kScalar;
  }();
  const char* env = std::getenv("CT_KERNELS_CPU_MINING_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  const Compaction asked = want == "scalar" ? Compaction::kScalar
                           : want == "avx2" ? Compaction::kAvx2
                           : want == "avx512" ? Compaction::kAvx512
                                              : Compaction(-1);
  TORCH_CHECK(asked != Compaction(-1), "CT_KERNELS_CPU_MINING_ISA must be scalar, avx2 or avx512 (or unset), got '",
              want, "'");
  TORCH_CHECK(static_cast<int>(asked) <= static_cast<int>(best), "CT_KERNELS_CPU_MINING_ISA=", want,
              ": this CPU (or this build) does not support it");
  return asked;
}

void compact_keys(Compaction path, const float* srow, const int32_t* cls, int64_t M, int64_t i, uint32_t* pkeys,
                  uint32_t* nkeys, int64_t& npk, int64_t& nnk) {
#ifdef CT_HAVE_X86_SIMD
  if (path == Compaction::kAvx512) return compact_keys_avx512(srow, cls, M, i, pkeys, nkeys, npk, nnk);
  if (path == Compaction::kAvx2) return compact_keys_avx2(srow, cls, M, i, pkeys, nkeys, npk, nnk);
#endif
  npk = nnk = 0;
  compact_keys_from(srow, cls, 0, M, i, pkeys, nkeys, npk, nnk);
}
void compact_keys(Compaction, const double* srow, const int32_t* cls, int64_t M, int64_t i, uint64_t* pkeys,
                  uint64_t* nkeys, int64_t& npk, int64_t& nnk) {
  npk = nnk = 0;
  compact_keys_from(srow, cls, 0, M, i, pkeys, nkeys, npk, nnk);
}

// Mining thresholds of row i from its full row of s (length M): the k-th candidate in the order
// (value, column) -- value ascending for positives, descending for negatives. The k-th key gives
// the value v; the column is the (k - #strictly better)-th candidate equal to v. Positives take
// complemented keys, so that the k-th largest key is the k-th smallest value.
template <typename T>
Thr<T> find_thresholds(const Problem<T>& P, int64_t i, const T* srow, const int32_t* cls,
                       std::vector<typename KeyOf<T>::U>& keys, Compaction path) {
  Thr<T> t = all_candidates<T>(P.M);
  const int32_t ci = cls[i];
  keys.resize(static_cast<size_t>(2 * (P.M + kCompactSlack)));
  auto* pkeys = keys.data();
  auto* nkeys = keys.data() + P.M + kCompactSlack;
  int64_t npk = 0, nnk = 0;
  compact_keys(path, srow, cls, P.M, i, pkeys, nkeys, npk, nnk);
  for (int side = 0; side < 2; ++side) {
    const int64_t k = side == 0 ? P.kp : P.kn, n = side == 0 ? npk : nnk;
    if (k <= 0 || n <= k) continue;  // not mined, or every candidate is kept
    auto cand = [&](int64_t j) {
      return side == 0 ? (j != i && cls[j] == ci) : (cls[j] != ci && cls[j] >= 0);
    };
    int64_t better = 0;
    const auto kth = kth_largest_key(side == 0 ? pkeys : nkeys, n, k, better);
    const T v = key_value<T>(side == 0 ? ~kth : kth);
    int64_t need = k - better, col = P.M;  // 1 <= need <= #equal
    for (int64_t j = 0; j < P.M; ++j)
      if (srow[j] == v && cand(j) && --need == 0) {
        col = j;
        break;
      }
    if (side == 0) {
      t.pv = v;
      t.pc = col;
    } else {
      t.nv = v;
      t.nc = col;
    }
  }
  return t;
}

// ------------------------------------------------------------------------------------------
// Branch-free row loops: written so the compiler vectorizes them (omp simd), compiled in AVX-512
// / AVX2 / baseline clones chosen at load time. float uses a Cephes-style exp (about 1 ulp);
// double uses std::exp. Every helper the loops call is always_inline: GCC does not inline a
// plain inline function into a target_clones clone (its arch differs), and one call per
// element keeps the loop scalar. Counts add a bool converted to int, not `b ? 1 : 0`: GCC 12
// if-converts the latter only with AVX-512's masks, leaving the AVX2 clone scalar.

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

// Per-row data in flat arrays (index j), for the row loops.
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

template <typename T>
struct Anchor {
  int32_t i, ci;
  T tpv, tnv;
  int32_t tpc, tnc;
  T lse, w, g, gnp;
};

// The forward's anchor row i with its thresholds (backward statistics unused).
template <typename T>
Anchor<T> forward_anchor(int64_t i, int32_t ci, const Thr<T>& t) {
  return Anchor<T>{static_cast<int32_t>(i), ci, t.pv, t.nv, static_cast<int32_t>(t.pc), static_cast<int32_t>(t.nc),
                   T(0), T(0), T(0), T(0)};
}

// The forward's outputs, row o of the call's anchors: loss, |P|, (lse, InfoNCE weight), thresholds.
template <typename T>
struct ForwardOut {
  T* loss;
  int32_t* npos;
  T* stats;
  T* thr_val;
  int64_t* thr_col;
  void store(int64_t o, T li, int64_t np, T st0, T st1, const Thr<T>& t) const {
    loss[o] = li;
    npos[o] = static_cast<int32_t>(np);
    stats[2 * o] = st0;
    stats[2 * o + 1] = st1;
    thr_val[2 * o] = t.pv;
    thr_val[2 * o + 1] = t.nv;
    thr_col[2 * o] = t.pc;
    thr_col[2 * o + 1] = t.nc;
  }
};

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

// Dense class ids (int32), -1 for ignored rows: equality of labels == equality of ids.
std::vector<int32_t> dense_classes(const int64_t* y, int64_t M, int64_t ignore) {
  std::vector<int64_t> vals;
  vals.reserve(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i)
    if (y[i] != ignore) vals.push_back(y[i]);
  std::sort(vals.begin(), vals.end());
  vals.erase(std::unique(vals.begin(), vals.end()), vals.end());
  std::vector<int32_t> cls(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i)
    cls[i] = y[i] == ignore ? -1
                            : static_cast<int32_t>(std::lower_bound(vals.begin(), vals.end(), y[i]) -
                                                   vals.begin());
  return cls;
}

// Unmined SupCon needs no whole row of s: each row's log-sum-exp (online max), positive sum and
// count are merged tile by tile, so a task holds one kBlock x kBlock tile instead of its block's
// rows (kBlock x M), every row block can run at once whatever M, and the tile stays in cache.
// Mining (thresholds over the whole row) and InfoNCE (the negatives' log-sum-exp before the
// positive terms) keep the row buffer of forward_impl.
template <typename T>
void forward_supcon_streamed(const Problem<T>& P, const std::vector<int32_t>& cls, const ForwardOut<T>& out) {
  const T inf = std::numeric_limits<T>::infinity();
  const Thr<T> all = all_candidates<T>(P.M);
  at::parallel_for(P.b_lo, P.b_hi, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> S(static_cast<size_t>(kBlock * kBlock));
    std::vector<T> mx(kBlock), sum(kBlock), psum(kBlock);
    std::vector<int64_t> np(kBlock);
    for (int64_t I = b0; I < b1; ++I) {
      const int64_t ri = P.r0(I), ni = P.r1(I) - ri;
      std::fill(mx.begin(), mx.end(), -inf);
      std::fill(sum.begin(), sum.end(), T(0));
      std::fill(psum.begin(), psum.end(), T(0));
      std::fill(np.begin(), np.end(), int64_t(0));
      bool any_anchor = false;
      for (int64_t a = 0; a < ni; ++a) any_anchor |= P.anchor(ri + a);
      for (int64_t J = 0; any_anchor && J < P.nb; ++J) {
        const int64_t rj = P.r0(J), nj = P.r1(J) - rj;
        canonical_tile(P, I, J, S.data(), nj);
        for (int64_t a = 0; a < ni; ++a) {
          const int64_t i = ri + a;
          if (!P.anchor(i)) continue;
          const Anchor<T> an = forward_anchor(i, cls[i], all);
          const T* s = S.data() + a * nj;
          T cmx, cpsum;
          int64_t cnp;
          row_max_f(s, static_cast<int32_t>(nj), static_cast<int32_t>(rj), an, cls.data() + rj, 0, cmx, cnp, cpsum);
          np[a] += cnp;
          psum[a] += cpsum;
          if (!(cmx > -inf)) continue;  // no member in this tile
          const T m_new = std::max(mx[a], cmx);
          const T carried = mx[a] > -inf ? sum[a] * std::exp(mx[a] - m_new) : T(0);
          sum[a] = carried + row_sumexp_f(s, static_cast<int32_t>(nj), static_cast<int32_t>(rj), an, cls.data() + rj,
                                          0, m_new);
          mx[a] = m_new;
        }
      }
      for (int64_t a = 0; a < ni; ++a) {
        const int64_t i = ri + a;
        if (i < P.a0 || i >= P.a1) continue;
        const int64_t o = i - P.a0;  // outputs hold the anchor rows only
        const bool anchor = P.valid(i);
        const T st0 = anchor && mx[a] > -inf ? mx[a] + std::log(sum[a]) : -inf;
        const int64_t n = anchor ? np[a] : 0;
        out.store(o, n > 0 ? st0 - psum[a] / static_cast<T>(n) : T(0), n, st0, T(0), all);
      }
    }
  });
}

template <typename T>
void forward_impl(const Problem<T>& P, T* loss, int32_t* npos_out, T* stats, T* thr_val,
                  int64_t* thr_col) {
  const T inf = std::numeric_limits<T>::infinity();
  const int64_t M = P.M;
  const std::vector<int32_t> cls = dense_classes(P.y, M, P.ignore);
  const ForwardOut<T> out{loss, npos_out, stats, thr_val, thr_col};
  if (P.variant == kSupCon && P.kp == 0 && P.kn == 0) return forward_supcon_streamed(P, cls, out);
  // Each task holds its block's rows of s (kBlock x M). With one task a thread that is
  // threads x kBlock x M: N x N once threads x kBlock reaches N (64 threads at N = 16384). The
  // grain caps the tasks that run at once to what kRowsBudget holds.
  const int64_t row_elems = std::min(kBlock, M) * M;
  const int64_t row_bytes = std::max<int64_t>(1, row_elems * static_cast<int64_t>(sizeof(T)));
  const int64_t live = std::max<int64_t>(1, kRowsBudget / row_bytes);
  const int64_t grain = std::max<int64_t>(1, (P.b_hi - P.b_lo + live - 1) / live);
  const Compaction path = P.kp > 0 || P.kn > 0 ? compaction_path() : Compaction::kScalar;
  at::parallel_for(P.b_lo, P.b_hi, grain, [&](int64_t b0, int64_t b1) {
    std::vector<T> R(static_cast<size_t>(row_elems));
    std::vector<typename KeyOf<T>::U> scratch;
    for (int64_t I = b0; I < b1; ++I) {
      const int64_t ri = P.r0(I), ni = P.r1(I) - ri;
      bool any_valid = false;
      for (int64_t a = 0; a < ni; ++a) any_valid |= P.anchor(ri + a);
      if (any_valid)
        for (int64_t J = 0; J < P.nb; ++J) canonical_tile(P, I, J, R.data() + P.r0(J), M);
      for (int64_t a = 0; a < ni; ++a) {
        const int64_t i = ri + a;
        if (i < P.a0 || i >= P.a1) continue;
        const int64_t o = i - P.a0;  // outputs hold the anchor rows only
        Thr<T> t = all_candidates<T>(M);
        T st0 = -inf, st1 = 0, li = 0;
        int64_t np = 0;
        if (P.valid(i)) {
          const T* s = R.data() + a * M;
          if (P.kp > 0 || P.kn > 0) t = find_thresholds(P, i, s, cls.data(), scratch, path);
          const Anchor<T> an = forward_anchor(i, cls[i], t);
          const int mode = P.variant == kSupCon ? 0 : 1;
          T mx, psum;
          row_max_f(s, static_cast<int32_t>(M), 0, an, cls.data(), mode, mx, np, psum);
          if (mx > -inf) st0 = mx + std::log(row_sumexp_f(s, static_cast<int32_t>(M), 0, an, cls.data(), mode, mx));
          if (P.variant == kSupCon) {
            if (np > 0) li = st0 - psum / static_cast<T>(np);
          } else {
            np = 0;
            T lsum = 0, wsum = 0;
            const int32_t ci = cls[i];
            for (int64_t j = 0; j < M; ++j) {
              if (j == i || cls[j] != ci || !in_pos(t, s[j], j)) continue;
              ++np;
              const T x = st0 - s[j];  // -inf without negatives: term 0, weight 0
              lsum += softplus(x);
              wsum += sigmoid(x);
            }
            if (np > 0) {
              li = lsum / static_cast<T>(np);
              st1 = wsum / static_cast<T>(np);
            }
          }
        }
        out.store(o, li, np, st0, st1, t);
      }
    }
  });
}

template <typename T>
void backward_impl(const Problem<T>& P, const int32_t* npos, const T* stats, const T* thr_val,
                   const int64_t* thr_col, const T* grad_rows, at::Tensor& dU) {
  const int64_t M = P.M, D = P.D;
  const std::vector<int32_t> cls = dense_classes(P.y, M, P.ignore);
  std::vector<T> tpv(M), tnv(M), lse(M), w(M), g(M), gnp(M);
  std::vector<int32_t> tpc(M), tnc(M), act(M);
  for (int64_t i = 0; i < M; ++i) {
    act[i] = (P.valid(i) && npos[i] > 0) ? 1 : 0;
    tpv[i] = thr_val[2 * i];
    tnv[i] = thr_val[2 * i + 1];
    tpc[i] = static_cast<int32_t>(std::min<int64_t>(thr_col[2 * i], M));
    tnc[i] = static_cast<int32_t>(std::min<int64_t>(thr_col[2 * i + 1], M));
    lse[i] = act[i] ? stats[2 * i] : T(0);
    w[i] = act[i] ? stats[2 * i + 1] : T(0);
    g[i] = act[i] ? grad_rows[i] : T(0);
    gnp[i] = act[i] ? g[i] / static_cast<T>(npos[i]) : T(0);
  }
  const Cols<T> C{cls.data(), tpv.data(), tnv.data(), tpc.data(), tnc.data(),
                  lse.data(), w.data(), g.data(), gnp.data(), act.data()};
  T* du = dU.data_ptr<T>();
  std::vector<uint8_t> mismatch(static_cast<size_t>(P.nb), 0);
  at::parallel_for(P.b_lo, P.b_hi, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> S(static_cast<size_t>(kBlock * kBlock));
    for (int64_t I = b0; I < b1; ++I) {
      const int64_t ri = P.r0(I), ni = P.r1(I) - ri;
      bool row_valid = false, row_active = false;
      for (int64_t a = 0; a < ni; ++a) {
        row_valid |= P.anchor(ri + a);
        row_active |= P.anchor(ri + a) && act[ri + a] != 0;
      }
      if (!row_valid) continue;
      at::Tensor acc = at::zeros({ni, D}, P.U.options());
      std::vector<int32_t> seen(static_cast<size_t>(ni), 0);
      for (int64_t J = 0; J < P.nb; ++J) {
        const int64_t rj = P.r0(J), nj = P.r1(J) - rj;
        bool col_active = false;
        for (int64_t b = 0; b < nj && !col_active; ++b) col_active = act[rj + b] != 0;
        if (!col_active && !row_active) continue;
        canonical_tile(P, I, J, S.data(), nj);
        at::Tensor H = at::empty({ni, nj}, P.U.options());
        T* h = H.data_ptr<T>();
        for (int64_t a = 0; a < ni; ++a) {
          const int64_t i = ri + a;
          T* hrow = h + a * nj;
          if (!P.anchor(i)) {
            std::fill(hrow, hrow + nj, T(0));
            continue;
          }
          Anchor<T> an{static_cast<int32_t>(i), cls[i], tpv[i], tnv[i], tpc[i], tnc[i],
                       lse[i], w[i], g[i], gnp[i]};
          row_grad_f(S.data() + a * nj, hrow, static_cast<int32_t>(nj), static_cast<int32_t>(rj), an,
                     act[i] != 0, C, P.variant, seen[a]);
        }
        acc.addmm_(H, P.U.slice(0, rj, rj + nj));
      }
      for (int64_t a = 0; a < ni; ++a)
        if (P.anchor(ri + a) && act[ri + a] && seen[a] != npos[ri + a]) mismatch[I] = 1;
      acc.mul_(P.inv_temp);
      // the block's rows inside the anchor slice; du holds the slice's rows only
      const int64_t lo = std::max(ri, P.a0), hi = std::min(ri + ni, P.a1);
      std::copy(acc.const_data_ptr<T>() + (lo - ri) * D, acc.const_data_ptr<T>() + (hi - ri) * D,
                du + (lo - P.a0) * D);
    }
  });
  for (auto m : mismatch)
    TORCH_CHECK(!m, "supcon_backward: the positive sets recomputed in backward differ from the "
                    "forward's (saved tensors do not belong to these inputs?)");
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& labels, int64_t ignore_index,
                        double inv_temp, const std::string& variant, int64_t kp, int64_t kn,
                        int64_t a0, int64_t a1) {
  TORCH_CHECK(u.size(0) < (int64_t(1) << 31), "supcon (CPU kernel): too many rows (M >= 2^31)");
  Problem<T> P;
  P.U = u.detach().to(acc_type_of(u.scalar_type())).contiguous();
  P.M = u.size(0);
  P.D = u.size(1);
  P.nb = (P.M + kBlock - 1) / kBlock;
  P.a0 = a0;
  P.a1 = a1;
  P.b_lo = a0 / kBlock;
  P.b_hi = a1 > a0 ? (a1 + kBlock - 1) / kBlock : P.b_lo;
  P.y = labels.const_data_ptr<int64_t>();
  P.ignore = ignore_index;
  P.inv_temp = static_cast<T>(inv_temp);
  P.variant = parse_variant(variant);
  P.kp = kp;
  P.kn = kn;
  return P;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_forward_cpu(
    const at::Tensor& u, const at::Tensor& labels_in, int64_t ignore_index, double inv_temp,
    c10::string_view variant, int64_t kp, int64_t kn, bool allow_tf32, int64_t row_start,
    int64_t row_count) {
  (void)allow_tf32;
  check_supcon_args(u, labels_in, kp, kn);
  TORCH_CHECK(u.device().is_cpu(), "supcon_forward (CPU kernel): u must be on CPU");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t R = anchor_count(u.size(0), row_start, row_count);
  const auto acc = acc_type_of(u.scalar_type());
  auto out = forward_outputs(R, u, acc);
  // named references, not a structured binding: the dispatch lambdas capture them (C++17)
  at::Tensor &loss = std::get<0>(out), &npos = std::get<1>(out), &stats = std::get<2>(out),
             &thr_val = std::get<3>(out), &thr_col = std::get<4>(out);
  const std::string var(variant);
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_forward_cpu", [&] {
    auto P = make_problem<scalar_t>(u, labels, ignore_index, inv_temp, var, kp, kn, row_start, row_start + R);
    forward_impl<scalar_t>(P, loss.data_ptr<scalar_t>(), npos.data_ptr<int32_t>(),
                           stats.data_ptr<scalar_t>(), thr_val.data_ptr<scalar_t>(),
                           thr_col.data_ptr<int64_t>());
  });
  return out;
}

at::Tensor supcon_backward_cpu(const at::Tensor& u, const at::Tensor& labels_in,
                               int64_t ignore_index, double inv_temp, c10::string_view variant,
                               int64_t kp, int64_t kn, bool allow_tf32, const at::Tensor& npos_in,
                               const at::Tensor& stats_in, const at::Tensor& thr_val_in,
                               const at::Tensor& thr_col_in, const at::Tensor& grad_rows_in,
                               int64_t row_start, int64_t row_count) {
  (void)allow_tf32;
  check_supcon_args(u, labels_in, kp, kn);
  TORCH_CHECK(u.device().is_cpu(), "supcon_backward (CPU kernel): u must be on CPU");
  const int64_t M = u.size(0), D = u.size(1);
  const int64_t count = anchor_count(M, row_start, row_count);
  const auto acc = acc_type_of(u.scalar_type());
  const SavedRows sv = saved_rows(u, acc, npos_in, stats_in, thr_val_in, thr_col_in, grad_rows_in);
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor dU = at::zeros({count, D}, u.options().dtype(acc));
  const std::string var(variant);
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_backward_cpu", [&] {
    auto P = make_problem<scalar_t>(u, labels, ignore_index, inv_temp, var, kp, kn, row_start,
                                    row_start + count);
    backward_impl<scalar_t>(P, sv.npos.const_data_ptr<int32_t>(), sv.stats.const_data_ptr<scalar_t>(),
                            sv.thr_val.const_data_ptr<scalar_t>(), sv.thr_col.const_data_ptr<int64_t>(),
                            sv.grad_rows.const_data_ptr<scalar_t>(), dU);
  });
  return dU.to(u.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CPU, m) {
  m.impl("supcon_forward", &supcon_forward_cpu);
  m.impl("supcon_backward", &supcon_backward_cpu);
}

}  // namespace ct_kernels
