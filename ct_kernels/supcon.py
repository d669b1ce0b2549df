"""``supcon_loss``: argument checks, backend dispatch, and the autograd Function that every fused
backend shares (the kernels follow the contract in ``backends.py``)."""
from __future__ import annotations

import numbers

import torch

from . import backends, precision
from .normalize import normalize_rows
from .patch import INT64_MAX, as_int, check_integer_labels, check_label_value
from .reference import supcon_rows_reference

VARIANTS = ("supcon", "infonce")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_k(name: str, k) -> int:
    """Hard-mining k: None means every candidate (kernel code 0); otherwise an int >= 1 (k above the
    candidates keeps them all; int64's range is what the operators take)."""
    if k is None:
        return 0
    k = as_int(name, k, "None or a positive int")
    if not 0 < k <= INT64_MAX:
        raise ValueError(f"{name} must be None or an int in [1, 2**63 - 1], got {k}")
    return k


def check_loss_options(temperature, variant: str, hard_positives, hard_negatives, reduction: str = "mean",
                       backend: str = "auto") -> tuple[int, int]:
    """Validate the options shared by supcon_loss and ContrastivePatchLoss; returns (kp, kn)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        hint = " (a tensor would be read back to the host each step: pass float(t))" if isinstance(
            temperature, torch.Tensor) else ""
        raise TypeError(f"temperature must be a real number (Python or NumPy), got {type(temperature).__name__}{hint}")
    temperature = float(temperature)
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if 1.0 / temperature > FLOAT32_MAX:  # the kernels take 1 / temperature as a float32
        raise ValueError(f"temperature must be at least 1 / {FLOAT32_MAX:.4g} (its inverse a finite float32), "
                         f"got {temperature}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    backends.check_backend_name(backend)
    return _check_k("hard_positives", hard_positives), _check_k("hard_negatives", hard_negatives)


def _check_inputs(z: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (M, D), got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise TypeError(f"z must be float32, float64, bfloat16 or float16, got {z.dtype}")
    if z.shape[1] == 0:
        raise ValueError("z must have at least one feature column (D >= 1)")
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be 1-D with z.shape[0]={z.shape[0]} entries, got shape {tuple(labels.shape)}")
    check_integer_labels(labels)
    if labels.device != z.device:
        raise ValueError(f"labels must be on z's device ({z.device}), got {labels.device}")


_FIRST_ORDER = ("the fused backends of supcon_loss (native, triton) give first derivatives only; for a "
                "second derivative (backward with create_graph=True) use backend='torch'")


class _FusedSupCon(torch.autograd.Function):
    """Row losses from a fused backend; the mining selection is a constant for autograd.

    The anchors are the rows of ``u``; ``uc`` (or None) are extra contrast rows (a memory bank):
    columns only, so the kernels run m x (m + K) tiles and ``uc`` gets no gradient."""

    @staticmethod
    def forward(ctx, u, labels, uc, yc, kernels, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
        m, u_in = u.shape[0], u
        # a copy, not the caller's tensor: saving that would fail for an inference-mode tensor and
        # make an in-place change of the labels before backward an error (O(M))
        labels = labels.clone() if uc is None else torch.cat([labels, yc])
        if uc is not None:
            u = torch.cat([u, uc])
        loss_rows, npos, saved = kernels.supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn,
                                                        allow_tf32, 0, m)
        # u_in only to reach z's graph under create_graph (first_order_only); the same tensor as
        # u without extra contrast rows
        ctx.save_for_backward(u, labels, u_in, *saved)
        ctx.args = (kernels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, m)
        ctx.mark_non_differentiable(npos)
        return loss_rows, npos

    @staticmethod
    def backward(ctx, grad_rows, _grad_npos):
        u, labels, u_in, *saved = ctx.saved_tensors
        kernels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, m = ctx.args
        total = u.shape[0]
        grad = grad_rows.contiguous()
        if total > m:  # memory-bank rows: never anchors (npos 0, weight 0)
            grad = torch.cat([grad, grad.new_zeros(total - m)])
        du = kernels.supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32,
                                     backends.place_rows(tuple(saved), 0, total), grad, 0, m)
        du = backends.first_order_only(du, u_in, _FIRST_ORDER)
        return du, None, None, None, None, None, None, None, None, None, None


def _reduce(rows: torch.Tensor, npos: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    n_anchors = (npos > 0).sum()
    # `where`, not a division guarded by a host-side check: no sync, and a batch without
    # positives gives an exact 0.0 that stays connected to z (zero gradient, never NaN).
    return torch.where(n_anchors > 0, total / n_anchors.clamp(min=1).to(total.dtype), total * 0)


def backend_for(device="cpu", backend: str = "auto", op: str = "supcon_loss", dtype=torch.float32) -> str:
    """Name of the backend that ``backend`` resolves to for ``dtype`` tensors on ``device``."""
    device = torch.device(device)
    tf32 = dtype == torch.float32 and device.type == "cuda" and precision.fp32_matmul_allows_tf32()
    return backends.resolve(backend, device, op, dtype, tf32)[0]


def _prepared_rows(z: torch.Tensor, labels: torch.Tensor, ignore_index: int, normalize: bool):
    """(u, int64 labels): ignored rows zeroed, then normalised if asked."""
    labels = labels.to(torch.int64)
    valid = labels != ignore_index
    # Zero ignored rows before normalising: an Inf/NaN there can then reach neither the
    # similarity of valid rows nor, through 0 * NaN, the gradient.
    z = torch.where(valid[:, None], z, torch.zeros((), dtype=z.dtype, device=z.device))
    return (normalize_rows(z) if normalize else z), labels


def _check_contrast(contrast, z: torch.Tensor):
    if contrast is None:
        return None
    if not isinstance(contrast, (tuple, list)) or len(contrast) != 2:
        raise TypeError("contrast must be a pair (zc, yc) of extra contrast rows and their labels")
    zc, yc = contrast
    try:
        _check_inputs(zc, yc)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"contrast (zc, yc): {exc}") from None
    if zc.shape[1] != z.shape[1] or zc.device != z.device:
        raise ValueError(f"contrast rows zc must be (K, {z.shape[1]}) on {z.device}, got {tuple(zc.shape)} on {zc.device}")
    return zc.detach().to(z.dtype), yc


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, *, variant: str = "supcon",
                hard_positives: int | None = None, hard_negatives: int | None = None, ignore_index: int = -1,
                normalize: bool = True, reduction: str = "mean", backend: str = "auto",
                process_group=None, contrast=None) -> torch.Tensor:
    """Supervised contrastive (SupCon) or per-positive InfoNCE loss over the rows of ``z``.

    For the rows V whose label is not ``ignore_index``: s_ij = <u_i, u_j> / temperature with
    u = z / ||z|| (``normalize=True``). Anchor i contrasts A_i = V without i; its positives are
    P_i = {p in A_i : y_p = y_i}, its negatives N_i = A_i without P_i.

    * ``variant="supcon"`` (Khosla et al.; pytorch-metric-learning's ``SupConLoss`` on batches
      with a negative pair): l_i = -mean_{p in P_i} s_ip + log sum_{a in A_i} exp(s_ia).
    * ``variant="infonce"`` (per positive, as ContrastiveSeg):
      l_i = mean_{p in P_i} [-s_ip + log(exp(s_ip) + sum_{n in N_i} exp(s_in))].
    * ``hard_positives=kp`` keeps the kp positives of lowest s_ip, ``hard_negatives=kn`` the kn
      negatives of highest s_in (ties to the lower column, i.e. row, index); A_i becomes P_i + N_i. The
      selection is a constant for autograd.

    Nothing of size N x N is stored: the fused backends stream the similarity matrix in tiles.

    Args:
        z: (M, D) float32, bfloat16, float16 or float64 rows (any strides).
        labels: (M,) integer class of each row; rows equal to ``ignore_index`` take no part.
        temperature: T > 0.
        variant: ``"supcon"`` or ``"infonce"``.
        hard_positives, hard_negatives: k of hard mining per anchor (None: all).
        ignore_index: label of the rows to leave out.
        normalize: L2-normalise the rows first (the loss assumes it; False for rows you normalised;
            then rows with max ||z||^2 / T past float32's range give NaN, as PyTorch would).
        reduction: ``"mean"`` over the anchors that have a positive, ``"sum"``, or ``"none"``
            (per row, 0.0 for rows without a loss). A batch without any positive pair gives 0.0,
            still connected to ``z`` (zero gradient).
        backend: ``"auto"``, ``"triton"``, ``"native"`` or ``"torch"`` (``CT_KERNELS_BACKEND``
            overrides ``"auto"``). A backend that is asked for and missing raises and says what to
            install.
        process_group: torch.distributed group: local anchors against every rank's rows, scaled so
            that DDP's gradient averaging gives the single-process gradient of the whole batch; log
            the mean over ranks. Every rank of the group runs the loss and its backward (both
            gather), with rows of the same width and dtype.
        contrast: ``(zc, yc)`` detached extra rows (a memory bank, ``ct_kernels.MemoryBank``):
            columns only, never anchors, no gradient. With ``process_group`` give every rank the
            same ones (a bank updated with gathered rows); the result is then the single-process
            loss of the concatenated batch with that bank.

    Returns:
        The loss: float32 for bfloat16/float16 rows, else z's dtype. Under ``torch.autocast``
        the rows keep the dtype they come in; accumulation is float32.
    """
    kp, kn = check_loss_options(temperature, variant, hard_positives, hard_negatives, reduction, backend)
    ignore_index = check_label_value("ignore_index", ignore_index)
    _check_inputs(z, labels)
    if process_group is not None:
        from .distributed import check_group
        check_group(process_group)
    extra = _check_contrast(contrast, z)
    tf32 = z.dtype == torch.float32 and z.is_cuda and precision.fp32_matmul_allows_tf32()
    name, kernels = backends.resolve(backend, z.device, "supcon_loss", z.dtype, tf32)

    # autocast would move normalize / the reference's matmul to another dtype behind the kernels' back
    with torch.autocast(z.device.type, enabled=False):
        u, labels = _prepared_rows(z, labels, ignore_index, normalize)
        uc = yc = None
        if extra is not None:
            uc, yc = _prepared_rows(extra[0], extra[1], ignore_index, normalize)
        finite = [u] if uc is None else [u, uc]
        in_range = None if normalize else _similarities_in_range(finite, 1.0 / float(temperature))

        if process_group is not None:
            from .distributed import gathered_rows
            # ok comes back combined over the ranks: a non-finite row anywhere makes every loss NaN
            rows, npos, anchors, world, ok = gathered_rows(
                u.contiguous(), labels.contiguous(), uc, yc, _inputs_ok(finite, in_range), kernels, process_group,
                ignore_index, 1.0 / float(temperature), variant, kp, kn, tf32)
            return _reduce_distributed(_poison(rows, ok), anchors, world, reduction)
        if kernels is None:
            u_all = u if uc is None else torch.cat([u, uc])
            labels_all = labels if yc is None else torch.cat([labels, yc])
            rows, npos = supcon_rows_reference(u_all, labels_all, labels_all != ignore_index, float(temperature),
                                               variant, kp or None, kn or None, 0, u.shape[0])
        else:
            _check_no_functorch(name)
            rows, npos = _FusedSupCon.apply(u.contiguous(), labels.contiguous(),
                                            None if uc is None else uc.contiguous(), yc, kernels,
                                            ignore_index, 1.0 / float(temperature), variant, kp, kn, tf32)
        # every backend alike, even in a batch whose loss would not read the non-finite row (no
        # anchor with a positive): a NaN loss, not 0.0 over a NaN gradient
        rows = _poison(rows, _inputs_ok(finite, in_range))
        return _reduce(rows, npos, reduction)


def _inputs_ok(inputs: list[torch.Tensor], in_range: torch.Tensor | None = None) -> torch.Tensor:
    """0-d bool: every valid row finite and, with normalize=False, ``in_range``
    (``_similarities_in_range``). Checked on device, no sync; ignored rows were zeroed before and
    cannot make it False. With process_group every rank's flag is combined (distributed.py)."""
    return torch.stack([_finite(t.detach()) for t in inputs] + ([] if in_range is None else [in_range])).all()


def _poison(rows: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The kernels' online max / masked sums can step over a NaN; PyTorch's dense loss would not.
    Where an input row is not finite (``_inputs_ok``) every row is NaN, as it would be there.
    Applied to the dense reference too, so that a batch without positives reports such a row as
    every backend does."""
    return torch.where(ok, rows, torch.full((), float("nan"), dtype=rows.dtype, device=rows.device))


def _similarities_in_range(inputs: list[torch.Tensor], inv_temp: float) -> torch.Tensor:
    """normalize=False: whether every |s_ij| <= max ||u||^2 / T stays inside the float32 the
    kernels compute s in (float64 for float64 rows). Past it an overflowing s made one backend's
    loss -inf or 0.0 where PyTorch's dense loss gives NaN (which it does even when only a masked
    self-similarity overflows): every backend now gives NaN (O(M) on device, no sync)."""
    acc = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
    norms = torch.cat([torch.linalg.vector_norm(t.detach(), dim=1, dtype=acc) for t in inputs])
    if norms.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=norms.device)
    top = norms.amax()
    return top * top * inv_temp <= torch.finfo(acc).max


def _check_no_functorch(name: str) -> None:
    """torch.func transforms (grad, vjp, jacrev, vmap) need a setup_context / vmap rule, which the
    fused backends' Function does not define: say which backend does work, before PyTorch's
    generic error. (Not under torch.compile, which traces the Function itself.)"""
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        raise RuntimeError(f"supcon_loss with backend={name!r} does not support torch.func transforms (grad, vjp, "
                           "jacrev, vmap); use backend='torch' inside them")


def _finite(t: torch.Tensor) -> torch.Tensor:
    """Whether every element is finite, as a 0-d bool tensor: from the min and max, which NaN and
    +-Inf reach. (torch.isfinite(t).all() makes N x D temporaries: |t| and three bool masks, 80
    MiB at N = 131072, D = 128 in bf16, the step's largest buffers after the normalisation.)"""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)  # unpacked: torch 2.5's dynamo cannot iterate aminmax's result
    return torch.isfinite(torch.stack([lo, hi])).all()


def _reduce_distributed(rows: torch.Tensor, anchors: torch.Tensor, world: int, reduction: str) -> torch.Tensor:
    """DESIGN.md's scaling: DDP's gradient averaging then reproduces single-process training, and the
    mean over ranks of the returned values is the global loss."""
    if reduction == "none":
        return rows
    total = rows.sum() * world
    if reduction == "sum":
        return total
    return torch.where(anchors > 0, total / anchors.clamp(min=1).to(total.dtype), total * 0)
