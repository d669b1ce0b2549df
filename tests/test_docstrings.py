"""The public API's docstrings name every parameter (help() is where users look first)."""
import inspect
import re

import pytest

import ct_kernels as ct


@pytest.mark.parametrize("fn, doc", [
    (ct.supcon_loss, ct.supcon_loss.__doc__),
    (ct.patch_labels, ct.patch_labels.__doc__),
    (ct.ContrastivePatchLoss.__init__, ct.ContrastivePatchLoss.__doc__),
    (ct.ContrastivePatchLoss.forward, ct.ContrastivePatchLoss.__doc__),
    (ct.MemoryBank.__init__, ct.MemoryBank.__doc__),
], ids=["supcon_loss", "patch_labels", "ContrastivePatchLoss", "ContrastivePatchLoss.forward", "MemoryBank"])
def test_every_parameter_is_documented(fn, doc):
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    missing = [p for p in names if not re.search(rf"\b{p}\b", doc or "")]
    assert not missing, f"{fn.__qualname__}: parameters missing from the docstring: {missing}"
