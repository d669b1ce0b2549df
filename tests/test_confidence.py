"""Confidence-based selection (ct_kernels.confidence) against a brute-force, loop-based
implementation of the paper's rule written here independently."""
import math

import pytest
import torch

import ct_kernels as ct
from ct_kernels.confidence import (confidence_supcon, kept_patch_labels, patch_confidence,
                                   select_confidence_rows)


# ---------------------------------------------------------------- brute force -------------------

def brute_supcon_rows(z, y, temperature):
    """Per-row SupCon l_i with Python loops (DESIGN.md, variant supcon, no mining), float64."""
    u = [zi / max(float(zi.norm()), 1e-12) for zi in z.double()]
    m = len(u)
    out = []
    for i in range(m):
        pos = [j for j in range(m) if j != i and int(y[j]) == int(y[i])]
        if not pos:
            out.append(0.0)
            continue
        s = [float(u[i] @ u[j]) / temperature for j in range(m)]
        lse = math.log(sum(math.exp(s[j]) for j in range(m) if j != i))
        out.append(lse - sum(s[p] for p in pos) / len(pos))
    return out


def brute_selection(labels, conf, num_classes, fraction, max_per_class, min_per_class):
    labels = [int(v) for v in labels]
    conf = conf.tolist()
    sel = {}
    for c in range(num_classes):
        members = [r for r, lab in enumerate(labels) if lab == c]
        others = [r for r, lab in enumerate(labels) if lab != -1 and lab != c]
        k = min(math.floor(len(members) * fraction), max_per_class)
        if k < min_per_class:
            continue
        anchors = sorted(members, key=lambda r: (-conf[r][c], r))[:k]
        hard_pos = sorted(members, key=lambda r: (conf[r][c], r))[:k]
        hard_neg = sorted(others, key=lambda r: (-conf[r][c], r))[:k]
        sel[c] = (anchors, hard_pos, hard_neg)
    return sel


def brute_confidence_loss(z, labels, conf, num_classes, temperature, fraction, max_per_class, min_per_class):
    sel = brute_selection(labels, conf, num_classes, fraction, max_per_class, min_per_class)
    if not sel:
        return 0.0
    total = []
    for c, (anchors, hard_pos, hard_neg) in sel.items():
        rows = sorted(set(anchors) | set(hard_pos) | set(hard_neg))
        per_row = brute_supcon_rows(z[rows], labels[rows], temperature)
        vals = [per_row[i] for i, r in enumerate(rows) if r in set(anchors)]
        total.append(sum(vals) / len(vals))
    return sum(total) / len(total)


def ref_loss_fn(temperature):
    import ct_kernels
    return lambda z, y, reduction: ct_kernels.supcon_loss(z, y, temperature, backend="torch", reduction=reduction)


def _case(seed, r=300, c=6, d=8, quantize=False, left_out=0.2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, d, generator=g, dtype=torch.float64)
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])[:c]
    labels = torch.multinomial(p, r, replacement=True, generator=g)
    labels[torch.rand(r, generator=g) < left_out] = -1
    conf = torch.rand(r, c, generator=g)
    if quantize:  # many exact ties: the lower row index must win
        conf = (conf * 4).floor() / 4
    conf = conf / conf.sum(1, keepdim=True)
    return z, labels, conf


# ---------------------------------------------------------------- tests -------------------------

@pytest.mark.parametrize("seed,quantize,fraction,max_pc,min_pc", [
    (0, False, 0.4, 128, 10),
    (1, True, 0.4, 128, 10),
    (2, True, 0.4, 12, 3),      # max_per_class binds
    (3, False, 0.7, 128, 5),    # anchors and hard positives overlap
    (4, True, 1.0, 20, 1),
])
def test_selection_matches_brute_force(seed, quantize, fraction, max_pc, min_pc):
    z, labels, conf = _case(seed, quantize=quantize)
    got = select_confidence_rows(labels, conf, 6, fraction, max_pc, min_pc)
    want = brute_selection(labels, conf, 6, fraction, max_pc, min_pc)
    assert [c for c, *_ in got] == sorted(want)
    assert want, "the case should select at least one class"
    for c, a, hp, hn in got:
        wa, whp, whn = want[c]
        assert a.tolist() == wa
        assert hp.tolist() == whp
        assert hn.tolist() == whn


@pytest.mark.parametrize("seed,quantize,fraction,max_pc,min_pc", [
    (0, False, 0.4, 128, 10),
    (1, True, 0.4, 16, 10),
    (3, False, 0.7, 20, 5),
])
def test_loss_matches_brute_force(seed, quantize, fraction, max_pc, min_pc):
    z, labels, conf = _case(seed, r=160, quantize=quantize)
    t = 0.2
    got = confidence_supcon(z, labels, conf, 6, ref_loss_fn(t), fraction, max_pc, min_pc)
    want = brute_confidence_loss(z, labels, conf, 6, t, fraction, max_pc, min_pc)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_no_class_qualifies_gives_connected_zero():
    z = torch.randn(20, 4, requires_grad=True)
    labels = torch.arange(20) % 6
    conf = torch.full((20, 6), 1 / 6)
    loss = confidence_supcon(z, labels, conf, 6, ref_loss_fn(0.1))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_gradient_flows_only_through_selected_rows():
    z, labels, conf = _case(5, r=200)
    z = z.clone().requires_grad_(True)
    loss = confidence_supcon(z, labels, conf, 6, ref_loss_fn(0.1), 0.4, 128, 10)
    loss.backward()
    sel = select_confidence_rows(labels, conf, 6, 0.4, 128, 10)
    used = torch.unique(torch.cat([torch.cat([a, p, n]) for _, a, p, n in sel]))
    touched = torch.nonzero(z.grad.abs().sum(1) > 0).squeeze(1)
    assert touched.numel() > 0 and set(touched.tolist()) <= set(used.tolist())
    assert (labels[touched] != -1).all()


@pytest.mark.parametrize("seed,quantize", [(0, False), (1, True)])
def test_gradient_matches_brute_force(seed, quantize):
    """The loss's gradient against autograd through tests/brute.py's loops on the brute selection."""
    from brute import brute_rows
    z, labels, conf = _case(seed, r=160, quantize=quantize)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    confidence_supcon(z1, labels, conf, 6, ref_loss_fn(0.2), 0.4, 16, 5).backward()
    per_class = []
    for anchors, hard_pos, hard_neg in brute_selection(labels, conf, 6, 0.4, 16, 5).values():
        rows = sorted(set(anchors) | set(hard_pos) | set(hard_neg))
        row_loss = brute_rows(z2[rows], labels[rows], 0.2)
        per_class.append(sum(row_loss[i] for i, r in enumerate(rows) if r in anchors) / len(anchors))
    assert len(per_class) > 1
    (sum(per_class) / len(per_class)).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


def test_invalid_arguments():
    z, labels, conf = _case(0)
    with pytest.raises(ValueError, match="confidence_fraction must be in"):
        confidence_supcon(z, labels, conf, 6, ref_loss_fn(0.1), confidence_fraction=0.0)
    with pytest.raises(ValueError, match="z must be"):
        confidence_supcon(z, labels[:-1], conf, 6, ref_loss_fn(0.1))


def test_patch_confidence_brute_force():
    g = torch.Generator().manual_seed(0)
    b, c, h_img, w_img, ph, pw = 2, 3, 8, 12, 4, 3
    logits = torch.randn(b, c, 4, 6, generator=g)
    got = patch_confidence(logits, (h_img, w_img), ph, pw)
    up = torch.nn.functional.interpolate(logits, size=(h_img, w_img), mode="bilinear", align_corners=False)
    prob = up.softmax(1)
    rows = []
    for bi in range(b):
        for r in range(h_img // ph):
            for col in range(w_img // pw):
                block = prob[bi, :, r * ph:(r + 1) * ph, col * pw:(col + 1) * pw]
                rows.append(block.reshape(c, -1).mean(1))
    want = torch.stack(rows)
    assert got.shape == (b * (h_img // ph) * (w_img // pw), c)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(got.shape[0]))
    # logits already at mask resolution: no resize
    same = patch_confidence(up, (h_img, w_img), ph, pw)
    torch.testing.assert_close(same, want)
    with pytest.raises(ValueError):
        patch_confidence(logits, (h_img, w_img), 5, pw)


def test_kept_patch_labels():
    mask = torch.zeros(1, 4, 4, dtype=torch.int64)
    mask[0, 0, 0] = 1          # patch (0,0): 3 of 4 are class 0
    mask[0, 0:2, 2:4] = 255    # patch (0,1): all ignored
    mask[0, 2:4, 0:2] = 2      # patch (1,0): pure 2
    labels = kept_patch_labels(mask, 2, 2, 3, min_purity=1.0, backend="torch")
    assert labels.tolist() == [-1, -1, 2, 0]
    labels = kept_patch_labels(mask, 2, 2, 3, min_purity=0.75, backend="torch")
    assert labels.tolist() == [0, -1, 2, 0]


def test_confidence_selection_checks_its_labels_and_limits():
    from ct_kernels.confidence import select_confidence_rows
    conf = torch.rand(4, 3)
    # a label of 5 was clamped into class 2, which then qualified with no anchor: a NaN loss
    with pytest.raises(ValueError, match=r"labels must be -1 \(left out\) or a class"):
        select_confidence_rows(torch.tensor([0, 5, 1, 1]), conf, 3, 1.0, 128, 1)
    with pytest.raises(ValueError, match="min_per_class=10 > max_per_class=5"):
        select_confidence_rows(torch.tensor([0, 0, 1, 1]), conf, 3, 1.0, 5, 10)
    with pytest.raises(ValueError, match="min_per_class=10 > max_per_class=5"):
        ct.ContrastivePatchLoss(3, mining="confidence", max_per_class=5, min_per_class=10)
    # no class qualifies: 0.0 in the loss's dtype (float32 for bf16 rows), as when one does
    z = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    fn = lambda zz, yy, reduction: ct.supcon_loss(zz, yy, 0.1, reduction=reduction, backend="torch")  # noqa: E731
    out = confidence_supcon(z, torch.tensor([0, -1, 1, -1]), conf, 3, fn, 1.0, 128, 2)
    assert out.dtype == torch.float32 and out.item() == 0.0
    out.backward()
    assert z.grad is not None and not z.grad.any()
