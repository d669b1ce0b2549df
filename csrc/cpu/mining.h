// Per-row hard-mining thresholds of the CPU kernels: for each mined side of row i, the k-th
// candidate in the order (value, column), found from the row of s. See csrc/common.h for the
// membership rule the thresholds define.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

namespace ct_kernels::cpu {

// Row i's thresholds: positives kept are s < pv or (s == pv and j <= pc); negatives kept are
// s > nv or (s == nv and j <= nc).
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
inline bool in_pos(const Thr<T>& t, T s, int64_t j) {
  return s < t.pv || (s == t.pv && j <= t.pc);
}

// How a row's candidate keys are gathered: the widest path the CPU runs, or the one that
// CT_KERNELS_CPU_MINING_ISA (scalar | avx2 | avx512) asks for. Throws for an unknown value or a
// path the CPU lacks: call it before a parallel region.
enum class Compaction { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
Compaction compaction_path();

// Reusable per-thread buffers of find_thresholds.
struct MiningScratch {
  std::vector<uint32_t> keys32;
  std::vector<uint64_t> keys64;
};

// The thresholds of anchor row i (not ignored) from its full row of s (srow, length M), cls the
// dense class ids (-1 for ignored rows); kp / kn = 0 leaves that side unmined (float, double).
template <typename T>
Thr<T> find_thresholds(int64_t M, int64_t kp, int64_t kn, int64_t i, const T* srow, const int32_t* cls,
                       MiningScratch& scratch, Compaction path);

}  // namespace ct_kernels::cpu
