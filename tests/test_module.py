"""ContrastivePatchLoss on real timm models, against supcon_loss on hand-picked patches."""
import pytest
import torch

import ct_kernels as ct
from cpu_backends import cpu_backends

timm = pytest.importorskip("timm")


def _mask(b, h, w, seed, classes=3, ignore=255):
    g = torch.Generator().manual_seed(seed)
    # blocky classes so that many patches are pure, plus ignored pixels
    coarse = torch.randint(0, classes, (b, h // 8, w // 8), generator=g)
    m = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    noise = torch.rand(b, h, w, generator=g)
    noise[:, h // 2:, :] = 0.5  # the lower half stays pure
    m[noise < 0.05] = (m[noise < 0.05] + 1) % classes
    m[noise > 0.97] = ignore
    m[0, :8, :8] = ignore  # an all-ignored patch
    return m


def _hand_picked(mask, ph, pw, classes, min_purity, ignore=255):
    """Row labels by a loop over patches: majority label, kept if count >= ceil(min_purity*area)."""
    b, h, w = mask.shape
    out = []
    for n in range(b):
        for r in range(h // ph):
            for c in range(w // pw):
                px = mask[n, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].reshape(-1)
                px = px[px != ignore]
                if px.numel() == 0:
                    out.append(-1)
                    continue
                counts = torch.bincount(px, minlength=classes)
                top = int(counts.max())
                need = -(-int(round(min_purity * 100)) * ph * pw // 100)
                out.append(int(counts.argmax()) if top >= need else -1)
    return torch.tensor(out)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             num_classes=0).eval()


@pytest.mark.parametrize("min_purity", [1.0, 0.75, 0.0])
def test_vit_tokens_equal_supcon_on_picked_patches(vit, min_purity):
    x = torch.randn(2, 3, 32, 32)
    mask = _mask(2, 32, 32, seed=1)
    tokens = vit.forward_features(x)  # (B, 1 + 16, 192)
    crit = ct.ContrastivePatchLoss.from_timm(vit, 3, min_purity=min_purity, backend="torch")
    assert crit.num_prefix_tokens == vit.num_prefix_tokens == 1
    loss = crit(tokens, mask)
    rows = tokens[:, 1:, :].reshape(-1, tokens.shape[-1])
    y = _hand_picked(mask, 8, 8, 3, min_purity)
    keep = y >= 0
    ref = ct.supcon_loss(rows[keep], y[keep], 0.1, backend="torch")
    torch.testing.assert_close(loss, ref)
    assert int(crit.last_num_patches) == int(keep.sum())
    assert crit.last_backend == "torch"


def test_feature_map_and_tokens_agree():
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(2, 16, 4, 6, generator=g, dtype=torch.float64)
    tokens = fmap.permute(0, 2, 3, 1).reshape(2, 24, 16)
    mask = _mask(2, 32, 48, seed=3)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch")
    torch.testing.assert_close(crit(fmap, mask), crit(tokens, mask))


def test_hierarchical_from_timm_and_stage_mean():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(2, 3))
    crit = ct.ContrastivePatchLoss.from_timm(model, 3, min_purity=0.5, backend="torch")
    assert crit.reductions == [(8, 8), (16, 16)]
    x = torch.randn(2, 3, 64, 64)
    mask = _mask(2, 64, 64, seed=4)
    feats = model(x)
    both = crit(feats, mask)
    singles = [crit(f, mask) for f in feats]
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2)
    # tokens of a stage, flattened: the grid comes from the model's reductions
    tok = feats[1].flatten(2).transpose(1, 2)
    torch.testing.assert_close(crit(tok, mask), singles[1])


def test_grid_inference_and_ambiguity():
    mask = torch.zeros(1, 30, 30, dtype=torch.int64)
    crit = ct.ContrastivePatchLoss(2, backend="torch")
    with pytest.raises(ValueError, match="grid="):
        crit(torch.randn(1, 6, 4), mask)          # (2,3), (3,2), (1,6)... : ambiguous
    with pytest.raises(ValueError, match="match no grid"):
        crit(torch.randn(1, 7, 4), mask)
    out = crit(torch.randn(1, 6, 4), mask, grid=(2, 3))
    assert out.item() > 0
    with pytest.raises(ValueError, match="grid"):
        crit(torch.randn(1, 6, 4), mask, grid=(3, 3))
    for bad in ((2.0, 3.0), (2, 3, 1), (2, True), "23"):  # floats, bools, wrong length: named, every input kind
        with pytest.raises(ValueError, match="grid must be None or"):
            crit(torch.randn(1, 6, 4), mask, grid=bad)
        with pytest.raises(ValueError, match="grid must be None or"):
            crit(torch.randn(1, 4, 2, 3), mask, grid=bad)
    wide = torch.zeros(1, 16, 32, dtype=torch.int64)
    assert crit(torch.randn(1, 8, 4), wide).item() > 0   # (2, 4) is the one grid of the mask's aspect


def test_bad_inputs_name_the_argument():
    crit = ct.ContrastivePatchLoss(3, backend="torch")
    feats = torch.randn(2, 16, 8)
    with pytest.raises(ValueError, match="mask"):
        crit(feats, torch.zeros(2, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask"):
        crit(feats, torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="batch size"):
        crit(feats, torch.zeros(3, 16, 16, dtype=torch.int64))
    bad = torch.zeros(2, 16, 16, dtype=torch.int64)
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="num_classes"):
        crit(feats, bad)
    neg = torch.zeros(2, 16, 16, dtype=torch.int64)
    neg[1, 5, 5] = -4
    with pytest.raises(ValueError, match="num_classes"):
        crit(feats, neg)
    for kwargs, err, match in [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(hard_positives=0), ValueError, "hard_positives"),
        (dict(hard_negatives=-3), ValueError, "hard_negatives"),
        (dict(hard_negatives=2.5), TypeError, "hard_negatives"),
        (dict(variant="triplet"), ValueError, "variant"),
        (dict(backend="cudnn"), ValueError, "backend"),
        (dict(min_purity=1.5), ValueError, "min_purity"),
        (dict(num_prefix_tokens=-1), ValueError, "num_prefix_tokens"),
    ]:
        with pytest.raises(err, match=match):
            ct.ContrastivePatchLoss(3, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        ct.ContrastivePatchLoss(0)


def test_projection_head_shapes():
    head = ct.ProjectionHead(16, 8)
    assert head(torch.randn(2, 5, 16)).shape == (2, 5, 8)
    fmap = torch.randn(2, 16, 3, 4)
    assert head(fmap).shape == (2, 8, 3, 4)
    # the same weights on the channels-last layout give the same projection, channels last
    nhwc = ct.ProjectionHead(16, 8, feature_format="NHWC")
    nhwc.load_state_dict(head.state_dict())
    torch.testing.assert_close(nhwc(fmap.permute(0, 2, 3, 1)), head(fmap).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="feature_format"):
        ct.ProjectionHead(16, 8, feature_format="NLC")


def _tiny_swin(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2,
                             embed_dim=16, depths=(1, 1), num_heads=(1, 2), **kwargs).eval()


def test_swin_channels_last_maps_from_timm():
    """timm's Swin gives (B, h, w, D) maps (output_fmt "NHWC"): from_timm reads them so, and the
    loss equals the (B, D, h, w) loss of the same maps."""
    x = torch.randn(2, 3, 32, 32)
    mask = _mask(2, 32, 32, seed=5)
    channels_first = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch")
    model = _tiny_swin(features_only=True, out_indices=(0, 1))
    crit = ct.ContrastivePatchLoss.from_timm(model, 3, min_purity=0.5, backend="torch")
    assert crit.feature_format == "NHWC" and crit.reductions == [(4, 4), (8, 8)]
    feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 8, 16), (2, 4, 4, 32)]
    loss = crit(feats, mask)
    assert loss.item() > 0
    torch.testing.assert_close(loss, channels_first([f.permute(0, 3, 1, 2) for f in feats], mask))
    # the whole model's forward_features: its last stage, channels last too
    full = _tiny_swin(num_classes=0)
    crit_full = ct.ContrastivePatchLoss.from_timm(full, 3, min_purity=0.5, backend="torch")
    assert crit_full.feature_format == "NHWC"
    f = full.forward_features(x)
    torch.testing.assert_close(crit_full(f, mask), channels_first(f.permute(0, 3, 1, 2), mask))
    # channels-first models keep the default
    assert ct.ContrastivePatchLoss.from_timm(timm.create_model("resnet18", features_only=True), 3).feature_format == "NCHW"


@pytest.mark.parametrize("name, kwargs, prefix, size", [
    ("vit_small_patch14_reg4_dinov2", {}, 5, 14),        # register tokens
    ("deit_tiny_distilled_patch16_224", {}, 2, 16),      # class and distillation tokens
    ("xcit_nano_12_p16_224", {}, 1, 16),                 # patch_size an int
    ("vit_medium_patch16_gap_256", {}, 0, 16),           # no class token
])
def test_from_timm_vit_family_prefix_and_patch(name, kwargs, prefix, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=4 * size, depth=1, **kwargs).eval()
    crit = ct.ContrastivePatchLoss.from_timm(model, 3, min_purity=0.5, backend="torch")
    assert crit.num_prefix_tokens == prefix and crit.reductions == [(size, size)]
    mask = _mask(2, 4 * size, 4 * size, seed=6)
    tokens = model.forward_features(torch.randn(2, 3, 4 * size, 4 * size))
    assert tokens.shape[1] == prefix + 16
    rows = tokens[:, prefix:].reshape(-1, tokens.shape[-1])
    loss = crit(tokens, mask)
    assert loss.item() > 0
    torch.testing.assert_close(loss, channels_first_loss(rows, mask, 4, 4))


def test_padded_images_need_the_mask_padded():
    """A ViT that pads images to whole patches (timm's dynamic_img_pad) makes a grid the mask does
    not divide: the error says to pad the mask with ignore_index, and the padded mask works."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1,
                            dynamic_img_size=True, dynamic_img_pad=True).eval()
    crit = ct.ContrastivePatchLoss.from_timm(vit, 3, min_purity=0.5, backend="torch")
    tokens = vit.forward_features(torch.randn(2, 3, 40, 40))  # padded to 48 x 48: 3 x 3 patches
    mask = _mask(2, 48, 48, seed=8)[:, :40, :40]
    with pytest.raises(ValueError, match="padded with ignore_index"):
        crit(tokens, mask)
    padded = torch.nn.functional.pad(mask, (0, 8, 0, 8), value=255)
    assert crit(tokens, padded).item() > 0


def channels_first_loss(rows, mask, h, w):
    """The loss of (B*h*w, D) patch rows given as a (B, D, h, w) map."""
    b = mask.shape[0]
    fmap = rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch")(fmap, mask)


def test_repr_shows_the_settings():
    crit = ct.ContrastivePatchLoss(6, temperature=0.07, hard_negatives=64, backend="torch", feature_format="NHWC")
    text = repr(crit)
    for part in ("num_classes=6", "temperature=0.07", "variant='supcon'", "hard_negatives=64", "backend='torch'",
                 "feature_format='NHWC'"):
        assert part in text, text
    assert "hard_positives" not in text and "mining" not in text  # defaults left out
    assert "MemoryBank(num_classes=3, size_per_class=8, dim=16" in repr(ct.MemoryBank(3, 8, 16))


def test_feature_format_errors():
    with pytest.raises(ValueError, match="feature_format"):
        ct.ContrastivePatchLoss(3, feature_format="channels_last")
    mask = torch.zeros(1, 32, 32, dtype=torch.int64)
    # a (B, h, w, D) map read as (B, D, h, w): (h, w) = (8, 24) does not divide 32 x 32, and the
    # error says which layout was assumed and what to pass
    with pytest.raises(ValueError, match="feature_format='NHWC'"):
        ct.ContrastivePatchLoss(3, backend="torch")(torch.randn(1, 8, 8, 24), mask)
    with pytest.raises(ValueError, match="feature_format='NCHW'"):
        ct.ContrastivePatchLoss(3, backend="torch", feature_format="NHWC")(torch.randn(1, 24, 8, 8), mask)


def test_map_errors_say_what_is_wrong():
    mask = torch.zeros(2, 50, 50, dtype=torch.int64)
    # a CNN's 13 x 13 map of a 50 x 50 image: not a layout question, so no layout hint
    with pytest.raises(ValueError, match="not a multiple of the model's stride") as err:
        ct.ContrastivePatchLoss(3, backend="torch")(torch.randn(2, 8, 13, 13), mask)
    assert "NHWC" not in str(err.value)
    crit = ct.ContrastivePatchLoss(3, backend="torch")
    with pytest.raises(ValueError, match=r"\(M, D\) go to ct_kernels.supcon_loss"):  # not "batch size 32"
        crit(torch.randn(32, 8), mask)
    with pytest.raises(ValueError, match="logits are read only with mining='confidence'"):
        crit(torch.randn(2, 8, 5, 5), mask, logits=torch.randn(2, 3, 50, 50))
    conf = ct.ContrastivePatchLoss(3, backend="torch", mining="confidence")
    with pytest.raises(ValueError, match=r"logits must be \(B, num_classes, H', W'\) = \(2, 3"):
        conf(torch.randn(2, 8, 5, 5), mask, logits=torch.randn(1, 3, 50, 50))
    np = pytest.importorskip("numpy")
    tokens, blocks = torch.randn(2, 25, 8), _mask(2, 40, 40, seed=2)
    assert torch.equal(crit(tokens, blocks, grid=(np.int64(5), np.int64(5))), crit(tokens, blocks, grid=(5, 5)))


def test_tokens_without_prefix_are_named():
    crit = ct.ContrastivePatchLoss(3, backend="torch", num_prefix_tokens=1)
    crit.reductions = [(8, 8)]
    with pytest.raises(ValueError, match="num_prefix_tokens=0"):  # forward_intermediates' NLC tokens
        crit(torch.randn(2, 16, 8), _mask(2, 32, 32, seed=3))
    assert torch.isfinite(crit(torch.randn(2, 17, 8), _mask(2, 32, 32, seed=3)))


def test_projection_head_names_the_layout():
    head = ct.ProjectionHead(32, 16)
    assert head(torch.randn(2, 32, 4, 4)).shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="pass feature_format='NHWC'"):  # a Swin map
        head(torch.randn(2, 4, 4, 32))
    with pytest.raises(ValueError, match=r"in_dim=32.*got 8 features"):
        head(torch.randn(2, 5, 8))


def test_map_layout_is_checked_against_the_model():
    """A Swin stage-0 map from forward_intermediates (NCHW) given to a criterion that from_timm set
    to NHWC: (B, 32, 16, 16) read as NHWC divides a 64 x 64 mask (2 x 4 pixel patches) and gave a
    wrong loss; the model's square reductions rule it out."""
    crit = ct.ContrastivePatchLoss(3, backend="torch", feature_format="NHWC")
    crit.reductions = [(4, 4), (8, 8)]
    mask = _mask(2, 64, 64, seed=4)
    with pytest.raises(ValueError, match=r"2 x 4 pixel patches.*feature_format='NCHW' its grid would be \(16, 16\)"):
        crit(torch.randn(2, 32, 16, 16), mask)
    assert torch.isfinite(crit(torch.randn(2, 16, 16, 32), mask))  # the NHWC map it expects


def test_from_timm_rejects_other_models():
    with pytest.raises(TypeError, match="from_timm"):
        ct.ContrastivePatchLoss.from_timm(torch.nn.Linear(3, 3), 3)


def test_confidence_mining_module_matches_function():
    from ct_kernels.confidence import confidence_supcon, patch_confidence
    g = torch.Generator().manual_seed(5)
    fmap = torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64)
    mask = _mask(2, 32, 32, seed=6)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch", mining="confidence",
                                   confidence_fraction=0.5, min_per_class=2, max_per_class=6)
    with pytest.raises(ValueError, match="logits"):
        crit(fmap, mask)
    got = crit(fmap, mask, logits=logits)
    rows = fmap.permute(0, 2, 3, 1).reshape(-1, 8)
    y = _hand_picked(mask, 4, 4, 3, 0.5)
    conf = patch_confidence(logits, (32, 32), 4, 4)
    ref = confidence_supcon(rows, y, conf, 3, lambda z, t, reduction: ct.supcon_loss(
        z, t, 0.1, backend="torch", reduction=reduction), 0.5, 6, 2)
    torch.testing.assert_close(got, ref)
    assert got.item() > 0
    with pytest.raises(ValueError, match="mining"):
        ct.ContrastivePatchLoss(3, mining="random")
    with pytest.raises(ValueError, match="hard_positives"):
        ct.ContrastivePatchLoss(3, mining="confidence", hard_positives=8)
    with pytest.raises(ValueError, match="process_group"):
        ct.ContrastivePatchLoss(3, mining="confidence", process_group=object())


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_torch_compile_with_dynamic_shapes_follows_the_image_size(backend):
    """Multi-scale training, or validation at another size through the same compiled criterion:
    the patch size becomes symbolic (min_purity's pixel count once failed to format it)."""
    if backend not in cpu_backends():
        pytest.skip(f"backend {backend!r} does not run on CPU tensors in this session")
    torch._dynamo.reset()
    crit = ct.ContrastivePatchLoss(3, min_purity=0.7, backend=backend, num_prefix_tokens=1)
    compiled = torch.compile(crit, dynamic=True)
    for side in (16, 24):
        tokens = torch.randn(2, 1 + (side // 4) ** 2, 8, generator=torch.Generator().manual_seed(side))
        mask = _mask(2, side, side, seed=side)
        torch.testing.assert_close(compiled(tokens, mask), crit(tokens, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
def test_torch_compile_fullgraph_matches_eager(backend):
    """The fused backends are torch.library custom ops with fake kernels: no graph break."""
    if backend not in cpu_backends():
        pytest.skip(f"backend {backend!r} does not run on CPU tensors in this session")
    torch._dynamo.reset()
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend=backend, hard_negatives=4)
    g = torch.Generator().manual_seed(9)
    fmap = torch.randn(2, 16, 4, 4, generator=g, requires_grad=True)
    mask = _mask(2, 16, 16, seed=9)
    eager = crit(fmap, mask)
    eager.backward()
    grad_eager, fmap.grad = fmap.grad.clone(), None
    out = torch.compile(crit, fullgraph=True)(fmap, mask)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fmap.grad, grad_eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", cpu_backends())
def test_memory_bank_in_the_module(backend):
    """Each step: the loss of supcon_loss with the bank as it was before the step, then the step's
    kept rows pushed into the bank (checked against a bank fed by hand)."""
    torch.manual_seed(0)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend=backend, hard_negatives=5,
                                   memory_bank=ct.MemoryBank(3, 8, 16, dtype=torch.float64))
    shadow = ct.MemoryBank(3, 8, 16, dtype=torch.float64)
    for step in range(3):
        fmap = torch.randn(2, 16, 4, 4, dtype=torch.float64, requires_grad=True)
        mask = _mask(2, 16, 16, seed=step)
        loss = crit(fmap, mask)
        rows = fmap.detach().permute(0, 2, 3, 1).reshape(-1, 16).clone().requires_grad_()
        labels = crit._row_labels(mask, 4, 4)
        ref = ct.supcon_loss(rows, labels, 0.1, hard_negatives=5, backend="torch", contrast=shadow.contrast())
        torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
        loss.backward()
        ref.backward()
        torch.testing.assert_close(fmap.grad.permute(0, 2, 3, 1).reshape(-1, 16), rows.grad, rtol=1e-8, atol=1e-12)
        shadow.update(rows.detach(), labels)
        torch.testing.assert_close(crit.memory_bank.store, shadow.store)
    assert int(crit.memory_bank.filled.sum()) > 0 and "memory_bank.store" in crit.state_dict()


def test_memory_bank_is_left_alone_in_eval_mode():
    # a validation loss must not push validation patches into the bank (BatchNorm's rule)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch", memory_bank=ct.MemoryBank(3, 8, 16))
    crit(torch.randn(2, 16, 4, 4), _mask(2, 16, 16, seed=0))
    before = {k: v.clone() for k, v in crit.state_dict().items()}
    fmap, mask = torch.randn(2, 16, 4, 4), _mask(2, 16, 16, seed=1)
    in_eval = crit.eval()(fmap, mask)
    for k, v in crit.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(crit.train()(fmap, mask), in_eval)  # the same loss, and now an update
    assert not torch.equal(crit.memory_bank.store, before["memory_bank.store"])


def test_memory_bank_bad_uses():
    bank = ct.MemoryBank(3, 4, 16)
    with pytest.raises(TypeError, match="memory_bank"):
        ct.ContrastivePatchLoss(3, memory_bank=object())
    with pytest.raises(ValueError, match="memory_bank holds 3 classes"):
        ct.ContrastivePatchLoss(4, memory_bank=bank)
    with pytest.raises(ValueError, match="memory_bank"):
        ct.ContrastivePatchLoss(3, mining="confidence", memory_bank=bank)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, memory_bank=bank, backend="torch")
    mask = _mask(2, 16, 16, seed=1)
    with pytest.raises(ValueError, match="memory_bank serves one feature stage"):
        crit([torch.randn(2, 16, 4, 4)] * 2, mask)
    with pytest.raises(ValueError, match=r"memory_bank holds \(16,\) rows"):
        crit(torch.randn(2, 8, 4, 4), mask)


def test_memory_bank_module_compiles_fullgraph():
    """The bank's update and contrast have fixed shapes and no host reads: no graph break."""
    torch._dynamo.reset()
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch", memory_bank=ct.MemoryBank(3, 8, 16))
    twin = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch", memory_bank=ct.MemoryBank(3, 8, 16))
    compiled = torch.compile(crit, fullgraph=True)
    for step in range(2):
        fmap = torch.randn(2, 16, 4, 4)
        mask = _mask(2, 16, 16, seed=step)
        torch.testing.assert_close(compiled(fmap, mask), twin(fmap, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(crit.memory_bank.store, twin.memory_bank.store)
