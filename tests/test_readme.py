"""The README's usage example runs as written (torch backend on CPU when nothing is built)."""
import re
from pathlib import Path

import pytest

pytest.importorskip("timm")


def test_readme_usage_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Usage with a timm ViT\s+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    loss = scope["loss"]
    assert loss.item() > 0 and scope["criterion"].last_num_patches > 0


def test_readme_memory_bank_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Contrast rows beyond the batch: a memory bank\s+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    zc, yc = scope["bank"].contrast()
    assert zc.shape[0] == yc.shape[0] > 0 and scope["z"].grad is not None and scope["loss"].item() > 0
