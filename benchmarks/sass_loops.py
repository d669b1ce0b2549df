"""Instructions a tile costs: the sm_90 SASS of each kernel one Triton step launches, cut into
its loops and, inside a loop, the two arms of each if / else. No GPU needed.

    python benchmarks/sass_loops.py [--dtype bf16] [--variant supcon] [--k 64] [--config 64,64,128,64,8,3]

The kernels are compiled as offline_compile.py compiles them (the host wrappers' own launches) and
disassembled with the nvdisasm that Triton's wheel carries. A column loop's body runs once per
tile; its instruction count per thread, over the tile elements a thread holds, is what issue-bound
kernels pay per element of s (the mined passes are: RESULTS.md, "what bounds"). Where a loop holds
an if / else, the arm taken at run time is the one to count (e.g. the mined backward's
one-compare masks for untied thresholds against the tie-break). Counts are static: a loop nested
in another shows inside it too. Barriers (BAR.SYNC) are counted apart: with 8 warps on a 64-row
tile every row reduction crosses the two warpgroups through shared memory, two barriers each.
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline_compile as oc  # noqa: E402

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def parse(sass: str) -> tuple[list[str], dict[str, int]]:
    """(instructions, label -> index of the instruction it precedes)."""
    instrs, labels = [], {}
    for line in sass.splitlines():
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = re.match(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            instrs.append(m.group(1))
    return instrs, labels


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def histogram(instrs: list[str], top: int = 6) -> str:
    return ", ".join(f"{op} {n}" for op, n in collections.Counter(map(opcode, instrs)).most_common(top))


def branch_target(ins: str, labels: dict[str, int]) -> int | None:
    m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", ins)
    return labels.get(m.group(1)) if m else None


def report(name: str, sass: str) -> None:
    instrs, labels = parse(sass)
    print(f"{name}: {len(instrs)} instructions")
    for end, ins in enumerate(instrs):
        start = branch_target(ins, labels)
        if start is None or start > end or end - start < 30:
            continue  # not a loop's back edge (or a short one)
        body = instrs[start:end + 1]
        bars = sum(1 for ins in body if opcode(ins) == "BAR")
        print(f"  loop [{start}, {end}]: {end - start + 1} a trip, {bars} barriers ({histogram(body)})")
        for i in range(start, end):
            join_else = branch_target(instrs[i], labels)
            if not instrs[i].startswith("@") or join_else is None or not i < join_else <= end:
                continue
            join = branch_target(instrs[join_else - 1], labels)  # the first arm's jump past the second
            if instrs[join_else - 1].startswith("@") or join is None or not join_else < join <= end:
                if join_else - i > 30:  # an if without else: a block the branch can skip
                    print(f"    if at {i}: skips a block of {join_else - 1 - i} instructions")
                continue
            print(f"    if / else at {i}: arms of {join_else - 1 - i} and {join - join_else} instructions, "
                  f"the rest of the trip {(end - start + 1) - (join - i - 1)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=list(oc.DTYPES), default="bf16")
    ap.add_argument("--variant", choices=["supcon", "infonce"], default="supcon")
    ap.add_argument("--k", type=int, default=64, help="hard_positives = hard_negatives (0: unmined)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--config", help="bm,bn,bd,bdo,warps,stages[,bwd_warps] (default: the first candidate)")
    ap.add_argument("--arch", type=int, default=90, choices=sorted(oc.MAX_SHARED))
    args = ap.parse_args()
    cfg = oc.tuning.parse_config(args.config) if args.config else None
    with oc.compiling_launches(args.arch) as launches:
        oc.supcon_step(args.dtype, args.d, args.variant, args.k, args.k, cfg)
    print(f"triton {triton.__version__}, sm_{args.arch}, {args.dtype}, D={args.d}, {args.variant}, k={args.k}")
    seen = set()
    with tempfile.TemporaryDirectory() as tmp:
        for launch in launches:
            if launch.kernel in seen:
                continue
            seen.add(launch.kernel)
            cubin = Path(tmp) / f"{launch.kernel}.cubin"
            cubin.write_bytes(launch.compiled.asm["cubin"])
            sass = subprocess.run([str(NVDISASM), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
            report(f"{launch.kernel} (warps {launch.compiled.metadata.num_warps})", sass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
