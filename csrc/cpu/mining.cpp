// Per-row mining thresholds on CPU (see mining.h). The k-th candidate of a side is found on
// integer keys that order like the values: the row's candidates are compacted into a key buffer
// (one read of the row), then bisected from the top bit, each step one vectorized count over the
// candidates (32 counts for float; nth_element took ~25 us for a row's 3400 negatives, the counts
// ~5 us).
#include "cpu/mining.h"

#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/isa.h"

namespace ct_kernels::cpu {
namespace {

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
    // (the sign lanes by a compare: GCC 12's _mm512_srai_epi32 warns -Wmaybe-uninitialized)
    const __mmask16 negative = _mm512_cmplt_epi32_mask(u, zero);
    const __m512i key = _mm512_xor_si512(u, _mm512_mask_mov_epi32(sign, negative, ones));
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

}  // namespace

// The fastest compaction this CPU runs, found once per process; CT_KERNELS_CPU_MINING_ISA picks
// another (tests run each one; comparisons). Called before the parallel region, so it throws there.
Compaction compaction_path() {
  const CpuFeatures& cpu = cpu_features();
  const Compaction best = cpu.avx512f ? Compaction::kAvx512 : cpu.avx2 ? Compaction::kAvx2 : Compaction::kScalar;
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

namespace {

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

// The key buffer of T in a thread's scratch.
template <typename T>
std::vector<typename KeyOf<T>::U>& keys_of(MiningScratch& scratch);
template <>
std::vector<uint32_t>& keys_of<float>(MiningScratch& scratch) { return scratch.keys32; }
template <>
std::vector<uint64_t>& keys_of<double>(MiningScratch& scratch) { return scratch.keys64; }

}  // namespace

// The k-th candidate in the order (value, column) -- value ascending for positives, descending
// for negatives: the k-th key gives the value v; the column is the (k - #strictly better)-th
// candidate equal to v. Positives take complemented keys, so that the k-th largest key is the
// k-th smallest value.
template <typename T>
Thr<T> find_thresholds(int64_t M, int64_t kp, int64_t kn, int64_t i, const T* srow, const int32_t* cls,
                       MiningScratch& scratch, Compaction path) {
  Thr<T> t = all_candidates<T>(M);
  const int32_t ci = cls[i];
  auto& keys = keys_of<T>(scratch);
  keys.resize(static_cast<size_t>(2 * (M + kCompactSlack)));
  auto* pkeys = keys.data();
  auto* nkeys = keys.data() + M + kCompactSlack;
  int64_t npk = 0, nnk = 0;
  compact_keys(path, srow, cls, M, i, pkeys, nkeys, npk, nnk);
  for (int side = 0; side < 2; ++side) {
    const int64_t k = side == 0 ? kp : kn, n = side == 0 ? npk : nnk;
    if (k <= 0 || n <= k) continue;  // not mined, or every candidate is kept
    auto cand = [&](int64_t j) {
      return side == 0 ? (j != i && cls[j] == ci) : (cls[j] != ci && cls[j] >= 0);
    };
    int64_t better = 0;
    const auto kth = kth_largest_key(side == 0 ? pkeys : nkeys, n, k, better);
    const T v = key_value<T>(side == 0 ? ~kth : kth);
    int64_t need = k - better, col = M;  // 1 <= need <= #equal
    for (int64_t j = 0; j < M; ++j)
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

template Thr<float> find_thresholds<float>(int64_t, int64_t, int64_t, int64_t, const float*, const int32_t*,
                                           MiningScratch&, Compaction);
template Thr<double> find_thresholds<double>(int64_t, int64_t, int64_t, int64_t, const double*, const int32_t*,
                                             MiningScratch&, Compaction);

}  // namespace ct_kernels::cpu
