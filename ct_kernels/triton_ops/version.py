"""Which Triton releases these kernels run on (imported before the kernels, so an older Triton is
reported as a missing backend, not as a compile error on the first call).

Checked: 3.6 to 3.9 (interpreter suite and sm_80 / sm_90 compiles; 3.6 also on an H200), and 3.4
(torch 2.8's: the same checks, float64 apart). 3.1 (torch 2.5's) cannot build them (its frontend
rejects the kernels' tl.arange arguments; its interpreter lacks operations they use); 3.2 and 3.3
were not tried. 3.4's tl.dot has no float64 operands (3.5 added them): float64 then raises.
"""
from __future__ import annotations

import re

import triton

MIN_VERSION = (3, 4)
FP64_DOT_VERSION = (3, 5)


def parse(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '3.4.0' or '3.6.0+git1234'."""
    major, minor = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    return int(major), int(minor)


VERSION = parse(triton.__version__)
HAS_FP64_DOT = VERSION >= FP64_DOT_VERSION


def too_old_reason(version: tuple[int, int] = VERSION) -> str:
    """Why this Triton cannot run the kernels, or '' when it can."""
    if version >= MIN_VERSION:
        return ""
    return (f"Triton {triton.__version__} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]}, the oldest these kernels "
            "build with (torch pins its Triton: torch 2.8 brings 3.4, torch 2.11 brings 3.6); upgrade torch")


def fp64_missing_reason() -> str:
    """Why float64 cannot run on this Triton, or '' when it can."""
    if HAS_FP64_DOT:
        return ""
    return (f"the triton backend computes float64 with float64 tl.dot, which Triton {triton.__version__} lacks "
            f"({FP64_DOT_VERSION[0]}.{FP64_DOT_VERSION[1]} and newer have it): use backend='native' or 'torch' "
            "for float64, or upgrade torch and its Triton")
