// Fused SupCon / per-positive InfoNCE on CPU: tiled, O(N*D) memory, deterministic. The drivers
// and the registered ops; the parts they call:
//   cpu/tiles      canonical tiles of s = inv_temp * U U^T (at::mm per tile, the same bits of
//                  s_ij and s_ji in every pass)
//   cpu/mining     per-row mining thresholds from a row of s
//   cpu/row_loops  vectorized per-element loops over one anchor row of a tile
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
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/mining.h"
#include "cpu/row_loops.h"
#include "cpu/tiles.h"

namespace ct_kernels::cpu {
namespace {

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
    MiningScratch scratch;
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
          if (P.kp > 0 || P.kn > 0) t = find_thresholds(M, P.kp, P.kn, i, s, cls.data(), scratch, path);
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

// Before anything is allocated: labels.contiguous() or the outputs of an expanded 2^31-row u
// would take gigabytes before a later check said no.
void check_cpu_rows(const at::Tensor& u, const char* op) {
  TORCH_CHECK(u.device().is_cpu(), op, " (CPU kernel): u must be on CPU");
  TORCH_CHECK(u.size(0) < (int64_t(1) << 31), op, " (CPU kernel): too many rows (M >= 2^31)");
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& labels, int64_t ignore_index,
                        double inv_temp, const std::string& variant, int64_t kp, int64_t kn,
                        int64_t a0, int64_t a1) {
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
  check_cpu_rows(u, "supcon_forward");
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
  check_cpu_rows(u, "supcon_backward");
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

}  // namespace ct_kernels::cpu
