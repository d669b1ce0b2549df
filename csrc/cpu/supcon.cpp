// Fused SupCon / per-positive InfoNCE on CPU: tiled, O(N*D) memory, deterministic.
//
// Rows are split into square blocks of kBlock rows; tile (I, J) of s = inv_temp * U_I U_J^T is
// always computed in a canonical orientation (the lower block index as the GEMM's left operand,
// and within a diagonal tile the upper-triangle element), so s_ij and s_ji are the same bits in
// every pass: the mining thresholds found in the forward decide membership identically in the
// backward, for (i, j) and for (j, i).
//
// forward, per row block (parallel): the block's rows of s (kBlock x M, recomputed per tile
// with at::mm) -> per-row mining thresholds (nth_element on (value, column)) -> loss terms.
// backward, per row block (parallel): for each column block J, recompute the tile, form
// H_ij = G_ij + G_ji from the saved per-row statistics of i and j, and dU_I += H U_J (at::mm);
// no atomics, one writer per row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"

namespace ct_kernels {
namespace {

constexpr int64_t kBlock = 256;

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

template <typename T>
struct Problem {
  int64_t M = 0, D = 0, nb = 0;
  const int64_t* y = nullptr;
  int64_t ignore = 0;
  T inv_temp = 0;
  int variant = 0;
  int64_t kp = 0, kn = 0;
  at::Tensor U;  // (M, D) acc dtype, contiguous, no grad

  bool valid(int64_t i) const { return y[i] != ignore; }
  int64_t r0(int64_t I) const { return I * kBlock; }
  int64_t r1(int64_t I) const { return std::min(M, (I + 1) * kBlock); }
};

// Canonical tile: S[a * ld + b] = s(r0(I) + a, r0(J) + b).
template <typename T>
void canonical_tile(const Problem<T>& P, int64_t I, int64_t J, T* S, int64_t ld) {
  const int64_t ri = P.r0(I), ni = P.r1(I) - ri, rj = P.r0(J), nj = P.r1(J) - rj;
  const T it = P.inv_temp;
  if (I < J) {
    at::Tensor t = at::mm(P.U.slice(0, ri, ri + ni), P.U.slice(0, rj, rj + nj).t());
    const T* p = t.const_data_ptr<T>();
    for (int64_t a = 0; a < ni; ++a)
      for (int64_t b = 0; b < nj; ++b) S[a * ld + b] = p[a * nj + b] * it;
  } else if (I > J) {
    at::Tensor t = at::mm(P.U.slice(0, rj, rj + nj), P.U.slice(0, ri, ri + ni).t());  // nj x ni
    const T* p = t.const_data_ptr<T>();
    for (int64_t a = 0; a < ni; ++a)
      for (int64_t b = 0; b < nj; ++b) S[a * ld + b] = p[b * ni + a] * it;
  } else {
    at::Tensor t = at::mm(P.U.slice(0, ri, ri + ni), P.U.slice(0, ri, ri + ni).t());
    const T* p = t.const_data_ptr<T>();
    for (int64_t a = 0; a < ni; ++a)
      for (int64_t b = 0; b < nj; ++b) S[a * ld + b] = (a <= b ? p[a * ni + b] : p[b * ni + a]) * it;
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

// Mining thresholds of row i from its full row of s (length M).
template <typename T>
Thr<T> find_thresholds(const Problem<T>& P, int64_t i, const T* srow,
                       std::vector<std::pair<T, int64_t>>& scratch) {
  const T inf = std::numeric_limits<T>::infinity();
  Thr<T> t{inf, -inf, P.M, P.M};
  const int64_t yi = P.y[i];
  if (P.kp > 0) {
    scratch.clear();
    for (int64_t j = 0; j < P.M; ++j)
      if (j != i && P.y[j] == yi) scratch.emplace_back(srow[j], j);
    if (static_cast<int64_t>(scratch.size()) > P.kp) {
      auto cmp = [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
        return a.first < b.first || (a.first == b.first && a.second < b.second);
      };
      std::nth_element(scratch.begin(), scratch.begin() + (P.kp - 1), scratch.end(), cmp);
      t.pv = scratch[P.kp - 1].first;
      t.pc = scratch[P.kp - 1].second;
    }
  }
  if (P.kn > 0) {
    scratch.clear();
    for (int64_t j = 0; j < P.M; ++j)
      if (P.y[j] != yi && P.valid(j)) scratch.emplace_back(srow[j], j);
    if (static_cast<int64_t>(scratch.size()) > P.kn) {
      auto cmp = [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      };
      std::nth_element(scratch.begin(), scratch.begin() + (P.kn - 1), scratch.end(), cmp);
      t.nv = scratch[P.kn - 1].first;
      t.nc = scratch[P.kn - 1].second;
    }
  }
  return t;
}

template <typename T>
void forward_impl(const Problem<T>& P, T* loss, int32_t* npos_out, T* stats, T* thr_val,
                  int64_t* thr_col) {
  const T inf = std::numeric_limits<T>::infinity();
  const int64_t M = P.M;
  at::parallel_for(0, P.nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> R(static_cast<size_t>(std::min(kBlock, M) * M));
    std::vector<std::pair<T, int64_t>> scratch;
    for (int64_t I = b0; I < b1; ++I) {
      const int64_t ri = P.r0(I), ni = P.r1(I) - ri;
      bool any_valid = false;
      for (int64_t a = 0; a < ni; ++a) any_valid |= P.valid(ri + a);
      if (any_valid)
        for (int64_t J = 0; J < P.nb; ++J) canonical_tile(P, I, J, R.data() + P.r0(J), M);
      for (int64_t a = 0; a < ni; ++a) {
        const int64_t i = ri + a;
        Thr<T> t{inf, -inf, M, M};
        T st0 = -inf, st1 = 0, li = 0;
        int64_t np = 0;
        if (P.valid(i)) {
          const T* s = R.data() + a * M;
          t = find_thresholds(P, i, s, scratch);
          const int64_t yi = P.y[i];
          if (P.variant == kSupCon) {
            T mx = -inf, psum = 0;
            for (int64_t j = 0; j < M; ++j) {
              if (j == i || !P.valid(j)) continue;
              if (P.y[j] == yi) {
                if (!in_pos(t, s[j], j)) continue;
                ++np;
                psum += s[j];
              } else if (!in_neg(t, s[j], j)) {
                continue;
              }
              mx = std::max(mx, s[j]);
            }
            T sum = 0;
            if (mx > -inf) {
              for (int64_t j = 0; j < M; ++j) {
                if (j == i || !P.valid(j)) continue;
                const bool mem = P.y[j] == yi ? in_pos(t, s[j], j) : in_neg(t, s[j], j);
                if (mem) sum += std::exp(s[j] - mx);
              }
              st0 = mx + std::log(sum);
            }
            if (np > 0) li = st0 - psum / static_cast<T>(np);
          } else {
            T mx = -inf;  // negative log-sum-exp first
            for (int64_t j = 0; j < M; ++j)
              if (j != i && P.valid(j) && P.y[j] != yi && in_neg(t, s[j], j)) mx = std::max(mx, s[j]);
            if (mx > -inf) {
              T sum = 0;
              for (int64_t j = 0; j < M; ++j)
                if (j != i && P.valid(j) && P.y[j] != yi && in_neg(t, s[j], j))
                  sum += std::exp(s[j] - mx);
              st0 = mx + std::log(sum);
            }
            T lsum = 0, wsum = 0;
            for (int64_t j = 0; j < M; ++j) {
              if (j == i || P.y[j] != yi || !in_pos(t, s[j], j)) continue;
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
        loss[i] = li;
        npos_out[i] = static_cast<int32_t>(np);
        stats[2 * i] = st0;
        stats[2 * i + 1] = st1;
        thr_val[2 * i] = t.pv;
        thr_val[2 * i + 1] = t.nv;
        thr_col[2 * i] = t.pc;
        thr_col[2 * i + 1] = t.nc;
      }
    }
  });
}

// Per-row state used in the backward (anchor side).
template <typename T>
struct RowG {
  Thr<T> t;
  T lse;    // supcon: lse over A; infonce: lse over N
  T w;      // infonce weight W_i
  T g;      // upstream grad_rows_i (0 when the row has no positive)
  T g_np;   // g / |P_i|
  int64_t y;
  bool active;  // valid and |P_i| > 0
};

// dl_i/ds_ij * g_i for anchor i (row state r), column j, value s (0 if j not in A_i).
template <typename T>
inline T grad_entry(const RowG<T>& r, int variant, int64_t yj, bool valid_j, int64_t j, T s,
                    bool& pos_member) {
  pos_member = false;
  if (!valid_j) return T(0);
  if (yj == r.y) {
    if (!in_pos(r.t, s, j)) return T(0);
    pos_member = true;
    if (variant == kSupCon) return r.g * std::exp(s - r.lse) - r.g_np;
    return -r.g_np * sigmoid(r.lse - s);
  }
  if (!in_neg(r.t, s, j)) return T(0);
  if (variant == kSupCon) return r.g * std::exp(s - r.lse);
  return r.g * r.w * std::exp(s - r.lse);
}

template <typename T>
void backward_impl(const Problem<T>& P, const int32_t* npos, const T* stats, const T* thr_val,
                   const int64_t* thr_col, const T* grad_rows, at::Tensor& dU) {
  const int64_t M = P.M, D = P.D;
  std::vector<RowG<T>> rows(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) {
    RowG<T>& r = rows[i];
    r.t = Thr<T>{thr_val[2 * i], thr_val[2 * i + 1], thr_col[2 * i], thr_col[2 * i + 1]};
    r.lse = stats[2 * i];
    r.w = stats[2 * i + 1];
    r.y = P.y[i];
    r.active = P.valid(i) && npos[i] > 0;
    r.g = r.active ? grad_rows[i] : T(0);
    r.g_np = r.active ? r.g / static_cast<T>(npos[i]) : T(0);
  }
  std::vector<uint8_t> mismatch(static_cast<size_t>(P.nb), 0);
  T* du = dU.data_ptr<T>();
  at::parallel_for(0, P.nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> S(static_cast<size_t>(kBlock * kBlock));
    for (int64_t I = b0; I < b1; ++I) {
      const int64_t ri = P.r0(I), ni = P.r1(I) - ri;
      bool any_active = false;
      for (int64_t a = 0; a < ni; ++a) any_active |= P.valid(ri + a);
      if (!any_active) continue;
      at::Tensor acc = at::zeros({ni, D}, P.U.options());
      std::vector<int64_t> count(static_cast<size_t>(ni), 0);
      for (int64_t J = 0; J < P.nb; ++J) {
        const int64_t rj = P.r0(J), nj = P.r1(J) - rj;
        bool col_active = false;  // some j in J with an active row, or active rows in I
        for (int64_t b = 0; b < nj && !col_active; ++b) col_active = rows[rj + b].active;
        bool row_active = false;
        for (int64_t a = 0; a < ni && !row_active; ++a) row_active = rows[ri + a].active;
        if (!col_active && !row_active) continue;
        canonical_tile(P, I, J, S.data(), nj);
        at::Tensor H = at::empty({ni, nj}, P.U.options());
        T* h = H.data_ptr<T>();
        for (int64_t a = 0; a < ni; ++a) {
          const int64_t i = ri + a;
          const RowG<T>& ra = rows[i];
          const bool vi = P.valid(i);
          T* hrow = h + a * nj;
          const T* srow = S.data() + a * nj;
          if (!vi) {
            std::fill(hrow, hrow + nj, T(0));
            continue;
          }
          for (int64_t b = 0; b < nj; ++b) {
            const int64_t j = rj + b;
            if (j == i) {
              hrow[b] = T(0);
              continue;
            }
            const T s = srow[b];
            const RowG<T>& rb = rows[j];
            bool pm_ij = false, pm_ji = false;
            T v = T(0);
            const bool vj = P.valid(j);
            if (ra.active) {
              v += grad_entry(ra, P.variant, rb.y, vj, j, s, pm_ij);
              count[a] += pm_ij;
            }
            if (rb.active) v += grad_entry(rb, P.variant, ra.y, vi, i, s, pm_ji);
            hrow[b] = v;
          }
        }
        acc.addmm_(H, P.U.slice(0, rj, rj + nj));
      }
      for (int64_t a = 0; a < ni; ++a)
        if (rows[ri + a].active && count[a] != npos[ri + a]) mismatch[I] = 1;
      acc.mul_(P.inv_temp);
      std::copy(acc.const_data_ptr<T>(), acc.const_data_ptr<T>() + ni * D, du + ri * D);
    }
  });
  for (auto m : mismatch)
    TORCH_CHECK(!m, "supcon_backward: the positive sets recomputed in backward differ from the "
                    "forward's (saved tensors do not belong to these inputs?)");
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& labels, int64_t ignore_index,
                        double inv_temp, const std::string& variant, int64_t kp, int64_t kn) {
  Problem<T> P;
  P.U = u.detach().to(acc_type_of(u.scalar_type())).contiguous();
  P.M = u.size(0);
  P.D = u.size(1);
  P.nb = (P.M + kBlock - 1) / kBlock;
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
    c10::string_view variant, int64_t kp, int64_t kn, bool allow_tf32) {
  (void)allow_tf32;
  check_supcon_args(u, labels_in, kp, kn);
  TORCH_CHECK(u.device().is_cpu(), "supcon_forward (CPU kernel): u must be on CPU");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t M = u.size(0);
  const auto acc = acc_type_of(u.scalar_type());
  auto opts = u.options().dtype(acc);
  at::Tensor loss = at::empty({M}, opts), stats = at::empty({M, 2}, opts),
             thr_val = at::empty({M, 2}, opts);
  at::Tensor npos = at::empty({M}, u.options().dtype(at::kInt));
  at::Tensor thr_col = at::empty({M, 2}, u.options().dtype(at::kLong));
  const std::string var(variant);
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_forward_cpu", [&] {
    auto P = make_problem<scalar_t>(u, labels, ignore_index, inv_temp, var, kp, kn);
    forward_impl<scalar_t>(P, loss.data_ptr<scalar_t>(), npos.data_ptr<int32_t>(),
                           stats.data_ptr<scalar_t>(), thr_val.data_ptr<scalar_t>(),
                           thr_col.data_ptr<int64_t>());
  });
  return {loss, npos, stats, thr_val, thr_col};
}

at::Tensor supcon_backward_cpu(const at::Tensor& u, const at::Tensor& labels_in,
                               int64_t ignore_index, double inv_temp, c10::string_view variant,
                               int64_t kp, int64_t kn, bool allow_tf32, const at::Tensor& npos_in,
                               const at::Tensor& stats_in, const at::Tensor& thr_val_in,
                               const at::Tensor& thr_col_in, const at::Tensor& grad_rows_in) {
  (void)allow_tf32;
  check_supcon_args(u, labels_in, kp, kn);
  TORCH_CHECK(u.device().is_cpu(), "supcon_backward (CPU kernel): u must be on CPU");
  const int64_t M = u.size(0), D = u.size(1);
  const auto acc = acc_type_of(u.scalar_type());
  TORCH_CHECK(npos_in.numel() == M && stats_in.numel() == 2 * M && thr_val_in.numel() == 2 * M &&
                  thr_col_in.numel() == 2 * M && grad_rows_in.numel() == M,
              "supcon_backward: saved tensors / grad_rows do not match u's row count");
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor npos = npos_in.to(at::kInt).contiguous();
  const at::Tensor stats = stats_in.to(acc).contiguous();
  const at::Tensor thr_val = thr_val_in.to(acc).contiguous();
  const at::Tensor thr_col = thr_col_in.to(at::kLong).contiguous();
  const at::Tensor grad_rows = grad_rows_in.detach().to(acc).contiguous();
  at::Tensor dU = at::zeros({M, D}, u.options().dtype(acc));
  const std::string var(variant);
  AT_DISPATCH_FLOATING_TYPES(acc, "supcon_backward_cpu", [&] {
    auto P = make_problem<scalar_t>(u, labels, ignore_index, inv_temp, var, kp, kn);
    backward_impl<scalar_t>(P, npos.const_data_ptr<int32_t>(), stats.const_data_ptr<scalar_t>(),
                            thr_val.const_data_ptr<scalar_t>(), thr_col.const_data_ptr<int64_t>(),
                            grad_rows.const_data_ptr<scalar_t>(), dU);
  });
  return dU.to(u.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ct_kernels, CPU, m) {
  m.impl("supcon_forward", &supcon_forward_cpu);
  m.impl("supcon_backward", &supcon_backward_cpu);
}

}  // namespace ct_kernels
