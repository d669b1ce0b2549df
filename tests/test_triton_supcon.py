"""Triton SupCon / InfoNCE kernels against the dense float64 reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1):
float32 / float64 only there, small sizes. On a GPU the same tests run on CUDA tensors, plus the
reduced-precision ones (tf32, bf16, fp16) under the rule: error vs float64 at most 2x the error
of PyTorch doing the same computation at that precision, plus a small floor.
"""
import os

import pytest
import torch

from cpu_backends import needs_fp64_dot
from ct_kernels import triton_ops as T
from ct_kernels.precision import FP32_3XTF32_ENV, FP32_3XTF32_TOLERANCE as TOL_3XTF32, fp32_matmul_precision
from ct_kernels.reference import supcon_rows_reference
from ct_kernels.selfcheck import rel_err

pytestmark = pytest.mark.skipif(not T.AVAILABLE, reason=f"triton unavailable: {T.UNAVAILABLE_REASON}")

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Correctness tests on a GPU use the first candidate configuration; timing every candidate for
# every new (D, dtype, N) key would only slow the run. test_autotune_on_gpu covers the tuner.
os.environ.setdefault("CT_KERNELS_TRITON_AUTOTUNE", "0")
IGNORE = -1
TEMP = 0.1
NO_HALF_ON_CPU = "the Triton interpreter mis-computes bf16/fp16 tl.dot; reduced precision runs on GPUs only"


def set_fp32_mode(monkeypatch, prec):
    """"3xtf32": float32 without tf32 as split3 dots; any other name: the exact default."""
    if prec == "3xtf32":
        monkeypatch.setenv(FP32_3XTF32_ENV, "1")
    else:
        monkeypatch.delenv(FP32_3XTF32_ENV, raising=False)


def make_batch(m, d, n_classes, dtype=torch.float32, ignore_every=0, seed=0, normalize=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (m,), generator=g)
    if ignore_every:
        labels[::ignore_every] = IGNORE
    u = torch.nn.functional.normalize(z, dim=1) if normalize else z
    u[labels == IGNORE] = 0  # what the autograd Function hands the kernels
    return u.to(dtype).to(DEV), labels.to(DEV)


def exact_batch(m, d, n_classes, ignore_every=0, seed=0):
    """Entries in {-1, -1/2, 0, 1/2, 1} / 8: exact in bf16 / fp16 / tf32, every product and sum of a
    dot exact in float32 (D up to a few hundred), so tensor cores give s bit for bit and the
    mining selection, ties included, equals the float64 reference's."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(-2, 3, (m, d), generator=g).double() / 16
    labels = torch.randint(0, n_classes, (m,), generator=g)
    if ignore_every:
        labels[::ignore_every] = IGNORE
    u[labels == IGNORE] = 0
    return u.float().to(DEV), labels.to(DEV)


def reference(u, labels, variant, kp, kn, grad_rows, temp=TEMP):
    """float64 loss rows, npos and d(sum grad_rows * l)/du from autograd of the dense reference."""
    u64 = u.detach().double().requires_grad_()
    rows, npos = supcon_rows_reference(u64, labels, labels != IGNORE, temp, variant, kp or None, kn or None)
    (rows * grad_rows.double()).sum().backward()
    return rows.detach(), npos, u64.grad


def run(u, labels, variant, kp, kn, grad_rows, temp=TEMP, tf32=False):
    loss, npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / temp, variant, kp, kn, tf32)
    du = T.supcon_backward(u, labels, IGNORE, 1.0 / temp, variant, kp, kn, tf32, saved, grad_rows)
    return loss, npos, du


def check(u, labels, variant, kp, kn, tol, seed=1, temp=TEMP, tf32=False):
    g = torch.Generator().manual_seed(seed)
    grad_rows = torch.randn(u.shape[0], generator=g, dtype=torch.float64).to(DEV)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    loss, npos, du = run(u, labels, variant, kp, kn, grad_rows.to(acc), temp, tf32)
    ref_rows, ref_npos, ref_du = reference(u, labels, variant, kp, kn, grad_rows, temp)
    assert loss.dtype == acc and npos.dtype == torch.int32 and du.dtype == u.dtype and du.shape == u.shape
    assert torch.isfinite(loss).all() and torch.isfinite(du).all()
    assert torch.equal(npos.long().cpu(), ref_npos.long().cpu())
    assert (loss[ref_npos == 0] == 0).all()
    assert rel_err(loss, ref_rows) <= tol, rel_err(loss, ref_rows)
    assert rel_err(du, ref_du) <= tol, rel_err(du, ref_du)


MINING = [(0, 0), (3, 2), (1, 1), (0, 4), (5, 0), (60, 60)]  # 60: more than any row has


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", MINING)
def test_matches_reference_fp32(variant, kp, kn):
    u, labels = make_batch(37, 19, 3, ignore_every=6, seed=kp * 7 + kn)
    check(u, labels, variant, kp, kn, tol=1e-5)


@needs_fp64_dot
@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (2, 3)])
@pytest.mark.parametrize("m,d", [(1, 1), (2, 3), (16, 16), (50, 40)])
def test_shapes_fp64(variant, kp, kn, m, d):
    u, labels = make_batch(m, d, 2, dtype=torch.float64, seed=m + d)
    check(u, labels, variant, kp, kn, tol=1e-10)


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_large_d(variant):
    # one 16-row block under the interpreter (D=1030: 33 chunks of the D loop, a ragged last one)
    u, labels = make_batch(12 if INTERPRETED else 300, 1030 if INTERPRETED else 1024, 3, seed=3)
    check(u, labels, variant, 2, 3, tol=1e-5)


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (2, 2)])
def test_one_class(variant, kp, kn):
    u, labels = make_batch(21, 7, 1, ignore_every=5, seed=4)
    check(u, labels, variant, kp, kn, tol=1e-5)


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (1, 3)])
def test_no_positives(variant, kp, kn):
    u, _ = make_batch(19, 5, 2, seed=5)
    labels = torch.arange(19, device=DEV)
    loss, npos, du = run(u, labels, variant, kp, kn, torch.ones(19, device=DEV))
    assert (loss == 0).all() and (npos == 0).all() and (du == 0).all()


def class_run_batch(runs, d, seed, ignored=3):
    """Rows in shuffled order whose classes, sorted, make runs of the given lengths (plus
    `ignored` ignored rows, which sort first): with 16-wide tiles, runs of 17, 15, 1, 16 put
    class boundaries one column into a tile, at a tile's end and inside one tile."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((ignored,), IGNORE)] + [torch.full((n,), c) for c, n in enumerate(runs)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    u = torch.nn.functional.normalize(torch.randn(labels.numel(), d, generator=g, dtype=torch.float64), dim=1)
    u[labels == IGNORE] = 0
    return u.to(DEV), labels.to(DEV)


@pytest.mark.parametrize("runs,ignored", [((17, 15, 1, 16), 0), ((14, 17, 15, 1, 16), 2), ((1, 1, 30), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float64, marks=needs_fp64_dot)])
def test_infonce_class_runs_at_tile_edges(monkeypatch, runs, ignored, dtype):
    """Unmined infonce takes the rows in class runs and visits only the tiles of a block's runs
    (supcon_kernels, CLASS_RUNS): runs that end one column into a tile, or start at a tile's last
    column, must still be visited, and the caller's row order must come back."""
    monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", "16,16,32,32,1,1")
    u, labels = class_run_batch(runs, 5, seed=sum(runs) + ignored, ignored=ignored)
    u = u.to(dtype)
    check(u, labels, "infonce", 0, 0, tol=1e-10 if dtype == torch.float64 else 1e-5)
    grad_rows = torch.randn(u.shape[0], dtype=u.dtype if dtype == torch.float64 else torch.float32).to(DEV)
    runs_on = run(u, labels, "infonce", 0, 0, grad_rows)
    monkeypatch.setenv("CT_KERNELS_TRITON_CLASS_RUNS", "0")  # the A/B switch: the caller's order
    runs_off = run(u, labels, "infonce", 0, 0, grad_rows)
    for on, off in zip(runs_on, runs_off):
        assert rel_err(on, off) <= (1e-12 if dtype == torch.float64 else 1e-6)


def test_class_runs_only_where_exact(monkeypatch):
    """Class runs are taken for unmined infonce over a whole batch, and never for supcon, mining
    (ties go to the lower column of the caller's order) or an anchor slice (one contiguous run of
    rows); CT_KERNELS_TRITON_CLASS_RUNS=0 turns them off."""
    u, labels = make_batch(20, 4, 3)
    def taken(variant="infonce", kp=0, kn=0, start=0, count=None):
        return T.supcon._Call(u, labels, IGNORE, 10.0, variant, kp, kn, False, start, count).order is not None
    assert taken()
    assert not taken("supcon") and not taken(kp=2) and not taken(kn=3) and not taken(start=4)
    assert not taken(count=12)
    monkeypatch.setenv("CT_KERNELS_TRITON_CLASS_RUNS", "0")
    assert not taken()


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_all_ignored(variant):
    u = torch.zeros(9, 4, device=DEV)
    labels = torch.full((9,), IGNORE, device=DEV)
    loss, npos, du = run(u, labels, variant, 2, 2, torch.ones(9, device=DEV))
    assert (loss == 0).all() and (npos == 0).all() and (du == 0).all()


@pytest.mark.skipif(not CUDA, reason="the tensor cores' accumulation is what this checks")
@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_split3_large_batch(monkeypatch, variant):
    """float32 as 3xTF32 (opt-in) where the native mma path measured dU 2.6e-5 of float64's norm
    on an H200 (4099 rows, D = 128, mean-reduction weights): each column tile's products go to a
    fresh accumulator, added to dU in IEEE float32, so the truncating tensor-core accumulation
    does not grow with the batch."""
    set_fp32_mode(monkeypatch, "3xtf32")
    u, labels = make_batch(4099, 128, 6, ignore_every=9, seed=40)
    grad_rows = torch.full((4099,), 1.0 / 4099, dtype=torch.float64, device=DEV)
    loss, npos, du = run(u, labels, variant, 0, 0, grad_rows.float())
    ref_rows, ref_npos, ref_du = reference(u, labels, variant, 0, 0, grad_rows)
    assert torch.equal(npos.long(), ref_npos.long())
    assert rel_err(loss, ref_rows) <= TOL_3XTF32 and rel_err(du, ref_du) <= TOL_3XTF32, (
        rel_err(loss, ref_rows), rel_err(du, ref_du))


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_unnormalized_large_similarities(variant):
    """normalize=False rows: |s| far beyond 1/T, the online max must keep exp finite.

    Ill-conditioned (large s, GPU exp/log are approximate): the project's tolerance rule, at
    most 2x the error of PyTorch's dense fp32 computation (no tf32) vs float64, plus a floor."""
    u, labels = make_batch(29, 6, 3, seed=6, normalize=False)
    u = u * 4
    grad_rows = torch.randn(29, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV)
    loss, npos, du = run(u, labels, variant, 0, 0, grad_rows.float())
    ref_rows, ref_npos, ref_du = reference(u, labels, variant, 0, 0, grad_rows)
    t_rows, t_du = torch_same_precision(u, labels, variant, grad_rows, False)
    assert torch.isfinite(loss).all() and torch.isfinite(du).all()
    assert torch.equal(npos.long().cpu(), ref_npos.long().cpu())
    floor = 2e-6
    assert rel_err(loss, ref_rows) <= 2 * rel_err(t_rows, ref_rows) + floor
    assert rel_err(du, ref_du) <= 2 * rel_err(t_du, ref_du) + floor


# Interpreter-sized configurations (bm, bn, bd, bdo, warps, stages) that take every code path
# at D=19: row block loaded once with a one-pass backward and bm != bn; loaded once with a
# D-chunked backward; the D-chunked similarity. Mined calls run them with bn = bm. float32
# without tf32 ("ieee", exact) and with tf32 (exact fp32 dots in the interpreter) take every path;
# split3 (CT_KERNELS_FP32_3XTF32=1) streams its row blocks, so it takes the D-chunked ones.
FORCED = ["32,16,32,32,1,1", "16,32,32,8,1,1", "16,16,8,8,1,1"]


@pytest.mark.skipif(CUDA, reason="interpreter-sized configurations; test_every_gpu_candidate on GPUs")
@pytest.mark.parametrize("cfg", FORCED)
@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (3, 2)])
@pytest.mark.parametrize("prec", ["fp32", "3xtf32", "tf32"])
def test_forced_configs(monkeypatch, cfg, variant, kp, kn, prec):
    monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", cfg)
    set_fp32_mode(monkeypatch, prec)
    tf32 = prec == "tf32"
    u, labels = make_batch(37, 19, 3, ignore_every=6, seed=21)
    check(u, labels, variant, kp, kn, tol=1e-5, tf32=tf32)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("prec", ["bf16", "tf32", "fp32", "3xtf32"])
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 0, 0), ("infonce", 0, 0), ("supcon", 8, 16)])
def test_every_gpu_candidate(monkeypatch, prec, variant, kp, kn):
    """Each configuration the tuner may pick compiles and is correct (reduced-precision rule;
    fp32, tf32 off: within 1e-5 of float64; 3xTF32 within TOL_3XTF32)."""
    from ct_kernels.triton_ops import tuning
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    mined = kp > 0 or kn > 0
    # mined: rows exact in bf16 / tf32 with exact dot products, so the selection is the float64
    # reference's and the gradient can be held to the rule (random rows: near-ties select apart)
    u, labels = (exact_batch if mined else make_batch)(700, 96, 6, ignore_every=9, seed=22)
    u = u.to(dtype)
    grad_rows = torch.randn(700, device=DEV)
    set_fp32_mode(monkeypatch, prec)
    cands = tuning.gpu_candidates(96, dtype, mined, T.supcon._dot_precision(dtype, prec == "tf32"))
    ref_rows, ref_npos, ref_du = reference(u, labels, variant, kp, kn, grad_rows)
    t_rows, t_du = torch_same_precision(u, labels, variant, grad_rows, prec == "tf32", kp, kn)
    for cfg in cands:
        monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", ",".join(str(x) for x in cfg))
        loss, npos, du = run(u, labels, variant, kp, kn, grad_rows, tf32=prec == "tf32")
        assert torch.isfinite(loss).all() and torch.isfinite(du.float()).all(), cfg
        assert torch.equal(npos.long(), ref_npos.long()), cfg
        if prec in ("fp32", "3xtf32"):
            tol = 1e-5 if prec == "fp32" else TOL_3XTF32
            assert rel_err(loss, ref_rows) <= tol and rel_err(du, ref_du) <= tol, cfg
        else:
            assert rel_err(loss, ref_rows) <= 2 * rel_err(t_rows, ref_rows) + 1e-3, cfg
            assert rel_err(du, ref_du) <= 2 * rel_err(t_du, ref_du) + 1e-3, cfg


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(1, 1), (3, 4), (2, 0)])
def test_mining_exact_ties_go_to_lower_column(variant, kp, kn):
    """Small-integer rows make every s exact in float32, so ties are real ties for both sides."""
    u, labels = _tied_batch(33)
    check(u, labels, variant, kp, kn, tol=1e-5, temp=1.0)


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_mined_tie_in_a_column_of_untied_rows(monkeypatch, variant):
    """Rows 0 and 1 are equal, so every other-class row j has s_j0 == s_j1; kn is chosen so that
    row 16's kn-th hardest negative is that tie (column 0 kept, column 1 not). Rows 0-15 have no
    tied threshold, row 16 has: the backward of the block 0-15 must test column 16's side of
    the tile with the tie-break (supcon_kernels: untied rows AND untied columns)."""
    from ct_kernels.triton_ops._topk import BIG_COL  # needs triton: inside the (skippable) test
    monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", "16,16,32,32,1,1")
    g = torch.Generator().manual_seed(11)
    u = torch.nn.functional.normalize(torch.randn(32, 6, generator=g, dtype=torch.float64), dim=1)
    u[1] = u[0]
    labels = torch.tensor([0] * 16 + [1] * 16)
    s16 = (u[16] @ u[:16].T).float()
    kn = int((s16 > s16[0]).sum()) + 1  # the rank of the tied pair (column 0 first)
    u, labels = u.float().to(DEV), labels.to(DEV)
    _loss, _npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / TEMP, variant, 0, kn, False)
    col_neg = saved[6].cpu()
    assert col_neg[16] == 0 and (col_neg[:16] == BIG_COL.value).all(), col_neg  # tied, and untied rows
    check(u, labels, variant, 0, kn, tol=1e-5)


@pytest.mark.parametrize("prec", ["fp32", "bf16", "tf32"])
@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 3, 5), ("infonce", 2, 4), ("supcon", 0, 6)])
def test_one_compare_masks_are_bitwise_the_tiebreak(monkeypatch, prec, data, variant, kp, kn):
    """Untied thresholds (column BIG_COL) make the tie-break test one compare; the kernels take
    it per sweep / tile, and CT_KERNELS_TRITON_MINED_MASKS=tiebreak never does: same bits."""
    if prec != "fp32" and not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    u, labels = _tied_batch(40) if data == "ties" else make_batch(40, 9, 3, ignore_every=7, seed=kp + kn)
    u = u.to(torch.bfloat16) if prec == "bf16" else u
    grad_rows = torch.randn(40, generator=torch.Generator().manual_seed(2)).to(DEV)
    out = {}
    for masks in ("fast", "tiebreak"):
        monkeypatch.setenv("CT_KERNELS_TRITON_MINED_MASKS", masks)
        out[masks] = run(u, labels, variant, kp, kn, grad_rows, tf32=prec == "tf32")
    for fast, tiebreak in zip(out["fast"], out["tiebreak"]):
        assert torch.equal(fast, tiebreak)


@pytest.mark.parametrize("kp,kn", [(3, 15), (5, 13), (7, 11), (4, 14), (6, 12)])
def test_mining_k_at_the_member_counts(kp, kn):
    """Classes of 5, 7 and 9 rows and 2 ignored ones: |P| = 4, 6, 8 and |N| = 16, 14, 12, so each
    k is one below, at or one above some row's count. The counting select takes those counts from
    the labels (_select.member_counts): one too few would select every member where k of them
    are wanted."""
    g = torch.Generator().manual_seed(kp * 31 + kn)
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 9 + [IGNORE] * 2)
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    u = torch.nn.functional.normalize(torch.randn(labels.numel(), 6, generator=g, dtype=torch.float64), dim=1)
    u[labels == IGNORE] = 0
    # temperature 1: the easiest negative, the one a wrong count adds, still weighs in the loss
    check(u.float().to(DEV), labels.to(DEV), "supcon", kp, kn, tol=1e-5, temp=1.0)


def _tied_batch(m, seed=7):
    """Small-integer rows drawn from 6 distinct ones: every s exact in float32, many real ties."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-2, 3, (6, 5), generator=g).double()
    u = base[torch.randint(0, 6, (m,), generator=g)]
    labels = torch.randint(0, 3, (m,), generator=g)
    labels[::8] = IGNORE
    u[labels == IGNORE] = 0
    return u.float().to(DEV), labels.to(DEV)


def _thresholds(monkeypatch, u, labels, kp, kn, counting, tf32=False):
    """(thr_pos, col_pos, thr_neg, col_neg) the forward saves, found by the float32 counting select
    or (CT_KERNELS_TRITON_MINING=merge) by the top-k merge."""
    if counting:
        monkeypatch.delenv("CT_KERNELS_TRITON_MINING", raising=False)
    else:
        monkeypatch.setenv("CT_KERNELS_TRITON_MINING", "merge")
    _loss, _npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / TEMP, "supcon", kp, kn, tf32)
    return saved[3:]


@pytest.mark.parametrize("count", ["edges", "packed"])  # CT_KERNELS_TRITON_SELECT_COUNT (A/B)
@pytest.mark.parametrize("prec", ["fp32", "bf16", "tf32"])
@pytest.mark.parametrize("gather_slots", [2, 64])
@pytest.mark.parametrize("data", ["random", "ties", "one class"])
@pytest.mark.parametrize("kp,kn", [(1, 1), (9, 2)])
def test_counting_select_equals_topk_merge(monkeypatch, prec, gather_slots, data, kp, kn, count):
    """The counting select (stats, search passes, collect, sort) of float32 tiles picks bitwise
    the (value, column) pairs of the top-k merge on the same tiles. gather_slots=2 makes rows
    search until at most 2 members are left inside their interval (down to one value and a
    column search under ties), 64 collects most rows at once. bf16 / tf32 tiles (tensor-core
    dots): on GPUs only."""
    from ct_kernels.triton_ops import supcon as S
    if prec != "fp32" and not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    monkeypatch.setattr(S, "GATHER_SLOTS", gather_slots)
    monkeypatch.setenv("CT_KERNELS_TRITON_SELECT_COUNT", count)
    if data == "ties":
        u, labels = _tied_batch(70)
    else:
        u, labels = make_batch(70 if INTERPRETED else 1500, 11, 1 if data == "one class" else 3, ignore_every=9,
                               seed=kp + 10 * kn)
    if prec == "bf16":
        u = u.to(torch.bfloat16)
    new = _thresholds(monkeypatch, u, labels, kp, kn, counting=True, tf32=prec == "tf32")
    ref = _thresholds(monkeypatch, u, labels, kp, kn, counting=False, tf32=prec == "tf32")
    for a, b, name in zip(new, ref, ("thr_pos", "col_pos", "thr_neg", "col_neg")):
        assert torch.equal(a, b), (name, (a != b).nonzero().flatten().tolist()[:5])


@pytest.mark.parametrize("count", ["edges", "packed"])
@pytest.mark.parametrize("gather_slots", [8, 64])
def test_counting_select_k_above_the_slots(monkeypatch, gather_slots, count):
    """k larger than the collect buffer: the buffer holds the interval's members only and the
    sort picks the (k - #above)-th of them."""
    from ct_kernels.triton_ops import supcon as S
    monkeypatch.setattr(S, "GATHER_SLOTS", gather_slots)
    monkeypatch.setenv("CT_KERNELS_TRITON_SELECT_COUNT", count)
    u, labels = make_batch(260, 9, 3, ignore_every=11, seed=13)
    new = _thresholds(monkeypatch, u, labels, 50, 120, counting=True)
    ref = _thresholds(monkeypatch, u, labels, 50, 120, counting=False)
    for a, b, name in zip(new, ref, ("thr_pos", "col_pos", "thr_neg", "col_neg")):
        assert torch.equal(a, b), (name, (a != b).nonzero().flatten().tolist()[:5])


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_counting_select_searches_at_default_width(variant):
    """More members per row than the 64 collect slots: rows search first."""
    u, labels = make_batch(200 if INTERPRETED else 3000, 24, 4, ignore_every=7, seed=12)
    check(u, labels, variant, 3, 5, tol=1e-5)


@pytest.mark.parametrize("prec", ["fp32", "bf16", "tf32"])
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 3, 5), ("infonce", 2, 0), ("supcon", 0, 4)])
def test_mined_backward_tile_reuse_is_bitwise_the_recompute(monkeypatch, prec, variant, kp, kn):
    """CT_KERNELS_TRITON_MINED_BWD=reuse reads s_ji from the tile (i, j): exact only if tl.dot gives
    s_ij and s_ji the same bits. Any bit of difference shows in dU (exp(s - lse) and the masks use
    them), so bitwise-equal dU here is the evidence for switching the default on a GPU."""
    if prec == "bf16" and not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    u, labels = make_batch(70 if INTERPRETED else 2000, 40, 4, ignore_every=9, seed=31)
    if prec == "bf16":
        u = u.to(torch.bfloat16)
    tf32 = prec == "tf32"
    grad_rows = torch.randn(u.shape[0], generator=torch.Generator().manual_seed(2)).to(DEV)
    _loss, _npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, tf32)
    du = {}
    for mode in ("recompute", "reuse"):
        monkeypatch.setenv("CT_KERNELS_TRITON_MINED_BWD", mode)
        du[mode] = T.supcon_backward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, tf32, saved, grad_rows)
    assert torch.equal(du["recompute"], du["reuse"]), (du["recompute"] - du["reuse"]).abs().max().item()


@pytest.mark.skipif(not CUDA, reason="the interpreter ignores num_warps")
@pytest.mark.parametrize("prec", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 3, 5), ("infonce", 0, 4)])
def test_mined_backward_warps_keep_bits(monkeypatch, prec, variant, kp, kn):
    """A tuner candidate runs the mined backward with other warps than the forward / select
    (Config.bwd_warps): only exact if the warp count does not change a bit of s (the thresholds
    are tested on those bits), so dU must be bitwise the same."""
    from ct_kernels.triton_ops import tuning
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    u, labels = make_batch(2000, 96, 5, ignore_every=9, seed=33)
    u = u.to(dtype)
    tf32 = prec == "tf32"
    grad_rows = torch.randn(u.shape[0], generator=torch.Generator().manual_seed(4)).to(DEV)
    base = tuning.gpu_candidates(96, dtype, True, T.supcon._dot_precision(dtype, tf32))[0]
    monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", ",".join(map(str, base)))  # the forward's tiles too
    _loss, _npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, tf32)
    du = []
    for warps in (base.num_warps, 4 if base.num_warps != 4 else 8):
        monkeypatch.setenv("CT_KERNELS_TRITON_CONFIG", ",".join(map(str, base._replace(bwd_warps=warps))))
        du.append(T.supcon_backward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, tf32, saved, grad_rows))
    assert torch.equal(du[0], du[1]), (du[0] - du[1]).abs().max().item()


@pytest.mark.parametrize("prec,expected", [("3xtf32", False), ("fp32", True), ("tf32", True)])
def test_tile_reuse_is_never_taken_for_split3(monkeypatch, prec, expected):
    """split3 tiles (float32 without tf32 under CT_KERNELS_FP32_3XTF32=1) differ between (i, j)
    and (j, i) in the last bit, so the switch is ignored for them; tf32 and exact float32 tiles
    (one product a chunk) may take it."""
    monkeypatch.setenv("CT_KERNELS_TRITON_MINED_BWD", "reuse")
    set_fp32_mode(monkeypatch, prec)
    tf32 = prec == "tf32"
    u, labels = make_batch(20, 8, 3)
    call = T.supcon._Call(u.cpu(), labels.cpu(), IGNORE, 1.0 / TEMP, "supcon", 2, 2, tf32)
    assert call.reuses_tile() is expected


def test_tf32_split_parts():
    """hi and lo are tf32 values (low 13 bits zero), hi rounds to nearest, hi + lo is u to 2^-21."""
    from ct_kernels.triton_ops.supcon import tf32_split
    u = torch.randn(50, 7, generator=torch.Generator().manual_seed(3))
    u[0, 0] = 1.0 + 2.0 ** -11  # a tie: rounds away from zero
    hl = tf32_split(u)
    hi, lo = hl[:, :7], hl[:, 7:]
    for part in (hi, lo):
        assert torch.all(part.view(torch.int32) & 0x1FFF == 0)
    assert hi[0, 0].item() == 1.0 + 2.0 ** -10
    assert torch.all((hi - u).abs() <= u.abs() * 2.0 ** -11)
    assert torch.all((hi + lo - u).abs() <= u.abs() * 2.0 ** -21)
    # NaN bit patterns that the integer rounding would wrap to 0, Inf, and the largest floats
    # (which would round up to Inf) are left as they are
    odd = torch.tensor([-1, 0x7FFFFFFF, 0x7F800000, 0x7F7FFFFF], dtype=torch.int32).view(torch.float32)
    hi = tf32_split(odd[None, :])[0, :4]
    assert torch.isnan(hi[:2]).all() and hi[2].item() == float("inf") and hi[3].item() == odd[3].item()


def test_dot_precision_per_input(monkeypatch):
    """float32 without tf32 is exact ("ieee") unless 3xTF32 is asked for, tf32 only when PyTorch
    allows it."""
    from ct_kernels.triton_ops.supcon import _dot_precision
    monkeypatch.delenv(FP32_3XTF32_ENV, raising=False)
    assert _dot_precision(torch.float32, allow_tf32=False) == "ieee"
    monkeypatch.setenv(FP32_3XTF32_ENV, "1")
    assert _dot_precision(torch.float32, allow_tf32=False) == "split3"
    assert _dot_precision(torch.float32, allow_tf32=True) == "tf32"
    assert _dot_precision(torch.float64, allow_tf32=True) == "ieee"


def test_non_contiguous_input():
    u, labels = make_batch(23, 24, 3, seed=8)
    check(u[:, ::2], labels, "supcon", 2, 2, tol=1e-5)


def test_deterministic():
    u, labels = make_batch(40, 9, 3, seed=9)
    g = torch.randn(40, device=DEV)
    a = run(u, labels, "supcon", 3, 3, g)
    b = run(u, labels, "supcon", 3, 3, g)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@needs_fp64_dot
@pytest.mark.parametrize("name,kp,kn", [("hard_positives", T.MAX_HARD_K + 1, 0),
                                        ("hard_negatives", 0, T.MAX_HARD_K + 1), ("hard_negatives", 0, -1)])
def test_k_above_the_merge_limit_raises_for_float64(name, kp, kn):
    # 300 rows: a k of M - 1 or more keeps every candidate and is not mined at all (no limit then)
    u, labels = make_batch(300, 3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        T.supcon_forward(u, labels, IGNORE, 10.0, "supcon", kp, kn, False)


@needs_fp64_dot
def test_k_at_the_merge_limit():
    """k = MAX_HARD_K where the merge must drop candidates on both sides: the 280 rows of class 0
    have 279 positives, the 20 of class 1 have 280 negatives."""
    u, labels = make_batch(300, 5, 2, dtype=torch.float64, seed=10)
    labels = torch.where(torch.arange(300, device=labels.device) % 15 == 7, 1, 0)
    check(u, labels, "infonce", T.MAX_HARD_K, T.MAX_HARD_K, tol=1e-10)


def test_k_above_the_merge_limit_float32():
    """The counting select has no k limit: k = 300 of 330 rows' candidates, and beyond them."""
    u, labels = make_batch(330 if INTERPRETED else 3000, 6, 1, seed=14)
    check(u, labels, "supcon", 300, 0, tol=1e-5)
    u, labels = make_batch(40, 5, 2, seed=10)
    check(u, labels, "infonce", 1000, 1000, tol=1e-5)


class _TritonRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, labels, variant, kp, kn):
        loss, npos, saved = T.supcon_forward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, False)
        ctx.save_for_backward(u, labels, *saved)
        ctx.args = (variant, kp, kn)
        return loss

    @staticmethod
    def backward(ctx, grad_rows):
        u, labels, *saved = ctx.saved_tensors
        variant, kp, kn = ctx.args
        du = T.supcon_backward(u, labels, IGNORE, 1.0 / TEMP, variant, kp, kn, False, tuple(saved),
                               grad_rows.contiguous())
        return du, None, None, None, None


@needs_fp64_dot
@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (2, 3)])
def test_gradcheck_fp64(variant, kp, kn):
    u, labels = make_batch(11, 5, 2, dtype=torch.float64, ignore_every=4, seed=11)
    u.requires_grad_()
    # mined forwards are slow in the interpreter: check random directions there (fast_mode)
    fast = INTERPRETED and kp > 0
    assert torch.autograd.gradcheck(lambda x: _TritonRows.apply(x, labels, variant, kp, kn), (u,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@needs_fp64_dot
def test_through_public_api_if_present():
    ct = pytest.importorskip("ct_kernels")
    if not hasattr(ct, "supcon_loss"):
        pytest.skip("ct_kernels.supcon_loss not there yet")
    z, labels = make_batch(30, 8, 3, dtype=torch.float64, ignore_every=7, seed=12, normalize=False)
    z1 = z.clone().requires_grad_()
    z2 = z.clone().requires_grad_()
    a = ct.supcon_loss(z1, labels, TEMP, hard_positives=3, hard_negatives=4, backend="triton")
    b = ct.supcon_loss(z2, labels, TEMP, hard_positives=3, hard_negatives=4, backend="torch")
    a.backward()
    b.backward()
    assert rel_err(a.detach(), b.detach()) < 1e-10 and rel_err(z1.grad, z2.grad) < 1e-10


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_autotune_on_gpu(monkeypatch):
    from ct_kernels.triton_ops import tuning
    monkeypatch.setenv("CT_KERNELS_TRITON_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "_CACHE", {})
    u, labels = make_batch(3000, 128, 10, dtype=torch.float32, seed=17)
    check(u.to(torch.bfloat16).float(), labels, "supcon", 0, 0, tol=1e-5)
    check(u, labels, "infonce", 16, 16, tol=1e-5)
    assert len(tuning._CACHE) == 2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kp,kn", [(0, 0), (8, 8)])
def test_untimed_pick_on_a_card_with_99_kb(monkeypatch, kp, kn):
    # What an RTX 4090 / L40S (99 KB of shared memory a block) meets, on an H100: Triton told the
    # card has 99 KB refuses the larger candidates at launch (OutOfResources, before they run);
    # the untimed pick takes the first that launches and the loss is right. D = 200 (padded to
    # 256, whose first candidates need 108-198 KB) specializes kernels no other test launched,
    # so Triton checks each one's shared memory afresh.
    from triton.runtime import driver
    from ct_kernels.triton_ops import tuning
    utils = driver.active.utils
    real = utils.get_device_properties
    monkeypatch.setattr(utils, "get_device_properties", lambda dev: {**real(dev), "max_shared_mem": 101376})
    monkeypatch.setattr(tuning, "_CACHE", {})
    u, labels = exact_batch(333, 200, 5, ignore_every=7, seed=23)
    check(u.to(torch.bfloat16), labels, "supcon", kp, kn, tol=1e-2)
    (taken,) = tuning._CACHE.values()
    assert taken != tuning.gpu_candidates(200, torch.bfloat16, kp > 0)[0]


# --- memory: nothing N x N -------------------------------------------------------------------

def test_no_n_by_n_allocation_cpu_record():
    """Record every tensor the backend creates (forward + backward, mined): none is M x M."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.sizes.append((t.numel(), str(func)))
            return out

    m = 384  # M*M = 147k elements would stand out among O(M*D) = 1.5k ones
    u, labels = make_batch(m, 4, 4, seed=13)
    grad_rows = torch.ones(m, device=DEV)
    rec = Record()
    with rec:
        run(u, labels, "supcon", 4, 4, grad_rows)
        run(u, labels, "infonce", 0, 0, grad_rows)
    assert rec.sizes, "the dispatch mode saw no tensor at all"
    biggest = max(rec.sizes)
    assert biggest[0] < m * m // 8, biggest


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 0, 0), ("infonce", 0, 0), ("supcon", 64, 64)])
def test_no_n_by_n_allocation_cuda_peak(variant, kp, kn):
    m, d = 16384, 64
    u, labels = make_batch(m, d, 10, seed=14)
    grad_rows = torch.ones(m, device=DEV)
    run(u, labels, variant, kp, kn, grad_rows)  # compile / tune outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run(u, labels, variant, kp, kn, grad_rows)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # O(M*D + M*slots): U's float32 split (2 M D floats), dU, the counting select's collect slots
    # (2 sides x M x 64 x 8 bytes), row vectors; an M x M float32 matrix would be 1 GiB
    slots = 2 * m * T.supcon.GATHER_SLOTS * 8 if kp or kn else 0
    assert extra < 8 * m * d * 4 + slots + (1 << 20), extra


# --- reduced precision (GPU only) ------------------------------------------------------------

def torch_same_precision(u, labels, variant, grad_rows, allow_tf32, kp=0, kn=0):
    """PyTorch at the kernel's precision: s = U U^T in u's dtype (tf32 if asked), fp32 softmax."""
    uu = u.detach().clone().requires_grad_()
    with fp32_matmul_precision(allow_tf32):
        rows, _ = supcon_rows_reference(uu, labels, labels != IGNORE, TEMP, variant, kp or None, kn or None,
                                        half_matmul=True)
    (rows * grad_rows.float()).sum().backward()
    return rows.detach(), uu.grad


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("prec", ["tf32", "bf16", "fp16"])
def test_reduced_precision_within_2x_of_torch(variant, prec):
    if not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    dtype = {"tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    u, labels = make_batch(1000, 96, 8, ignore_every=9, seed=15)
    u = u.to(dtype)
    grad_rows = torch.randn(1000, device=DEV)
    loss, npos, du = run(u, labels, variant, 0, 0, grad_rows, tf32=prec == "tf32")
    ref_rows, _, ref_du = reference(u, labels, variant, 0, 0, grad_rows)
    t_rows, t_du = torch_same_precision(u, labels, variant, grad_rows, prec == "tf32")
    assert torch.isfinite(loss).all() and torch.isfinite(du.float()).all()
    floor = 1e-3
    assert rel_err(loss, ref_rows) <= 2 * rel_err(t_rows, ref_rows) + floor
    assert rel_err(du, ref_du) <= 2 * rel_err(t_du, ref_du) + floor


def test_half_weight_scale_is_undone_exactly(monkeypatch):
    """The 16-bit backward's power-of-two weight scale, forced onto float32 (where the interpreter
    computes): applied to the weights and divided out of dU, the result is bitwise the unscaled one."""
    from ct_kernels.triton_ops import supcon as S
    u, labels = make_batch(45, 12, 3, ignore_every=7, seed=18)
    grad_rows = torch.full((45,), 1e-6, device=DEV)
    for variant in ("supcon", "infonce"):
        plain = run(u, labels, variant, 0, 0, grad_rows)[2]
        with monkeypatch.context() as mp:
            mp.setattr(S, "SCALED_H_DTYPES", (torch.float32,))
            scaled = run(u, labels, variant, 0, 0, grad_rows)[2]
        assert torch.equal(scaled, plain) and plain.abs().max() > 0


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_fp16_backward_with_mean_reduction_weights(variant):
    """reduction="mean" on a large batch: grad_rows ~ 1/M and softmax weights ~ 1/M put the weights
    H near 1/M^2, at or below fp16's smallest subnormal without the backward's power-of-two scale."""
    if not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    m = 4099
    u, labels = make_batch(m, 64, 6, seed=17)
    u = u.to(torch.float16)
    grad_rows = torch.full((m,), 1.0 / m, device=DEV)
    loss, npos, du = run(u, labels, variant, 0, 0, grad_rows)
    _, _, ref_du = reference(u, labels, variant, 0, 0, grad_rows)
    assert rel_err(du, ref_du) < 2e-2


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_reduced_precision_mining_runs(prec):
    if not CUDA:
        pytest.skip(NO_HALF_ON_CPU)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    u, labels = make_batch(700, 64, 6, seed=16)
    grad_rows = torch.randn(700, device=DEV)
    loss, npos, du = run(u.to(dtype), labels, "supcon", 8, 16, grad_rows)
    ref_rows, ref_npos, _ = reference(u, labels, "supcon", 8, 16, grad_rows)
    assert torch.isfinite(loss).all() and torch.isfinite(du.float()).all()
    assert torch.equal(npos.long(), ref_npos.long())  # min(k, |P_i|) whatever the selection
    assert rel_err(loss, ref_rows) < 2e-2


def test_compiled_forward_and_backward_match_eager():
    """torch.compile (inductor) checks the custom ops' outputs against their fake kernels' sizes
    and strides at run time: dU must be (R, D) contiguous, also on the split3 path (float32 with
    tf32 off, the only float32 path the public API takes on CPU tensors)."""
    import ct_kernels as ct
    u, labels = make_batch(70, 12, 3, ignore_every=7, seed=5)

    def loss_fn(x):
        return ct.supcon_loss(x, labels, TEMP, backend="triton", hard_negatives=4)

    out = []
    for f in (loss_fn, torch.compile(loss_fn, fullgraph=True)):
        x = u.detach().clone().requires_grad_()
        loss = f(x)
        loss.backward()
        out.append((loss.detach(), x.grad))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-6, atol=1e-7)
