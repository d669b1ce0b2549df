"""Compile the Triton SupCon kernels for a GPU architecture without a GPU; report registers,
spills and shared memory per kernel and configuration (ptxas -v of the generated PTX).

    python benchmarks/offline_compile.py [--arch 90] [--d 128] [--dtype bf16|fp32]

Evidence for register budgets when no GPU is at hand (spills are a cost, not an error); the
timings still need the card (benchmarks/gpu_bench.py). Runs on the CPU machine with the Triton
wheel's bundled ptxas; TRITON_INTERPRET must not be set.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ct_kernels.triton_ops import supcon as S  # noqa: E402
from ct_kernels.triton_ops import supcon_kernels as K  # noqa: E402
from ct_kernels.triton_ops import tuning  # noqa: E402
from ct_kernels.triton_ops._select import select_sort_kernel  # noqa: E402

INT_ARGS = {"kp", "kn", "M", "R0", "R", "D", "stride", "k"}
DIVISIBLE_INTS = {"kp", "kn", "D", "stride"}
I32_PTRS = {"lab_ptr", "colp_ptr", "coln_ptr", "bcolp_ptr", "bcoln_ptr", "cntp_ptr", "cntn_ptr", "npos_ptr",
            "col_ptr", "bcol_ptr", "count_ptr"}


def ptxas_report(kernel, in_type: str, consts: dict, num_warps: int, num_stages: int, arch: int):
    """(registers, spill store bytes, spill load bytes, shared bytes) of one compile."""
    names = list(inspect.signature(kernel.fn).parameters)
    sig, cexp, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in consts:
            sig[name], cexp[(i,)] = "constexpr", consts[name]
            continue
        if name in INT_ARGS:
            sig[name] = "i32"
        elif name in ("u_ptr", "du_ptr"):
            sig[name] = in_type
        else:
            sig[name] = "*i32" if name in I32_PTRS else "*fp32"
        # what the JIT specializes at run time: 16-byte aligned tensors, and ints divisible by
        # 16 that are not do_not_specialize (D, the row stride, k at D = 128, k = 64)
        if not sig[name].startswith("i") or name in DIVISIBLE_INTS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, sig, cexp, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        res = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}{suffix}", str(ptx), "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    text = res.stdout + res.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    st, ld = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    return regs, st, ld, compiled.metadata.shared


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", choices=["bf16", "tf32", "fp32"], default="bf16",
                    help="tf32: float32 inputs with tf32 allowed; fp32: without (tf32x3 dots)")
    ap.add_argument("--k", type=int, default=64, help="hard_positives = hard_negatives for the mining kernels")
    args = ap.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    in_type = "*bf16" if args.dtype == "bf16" else "*fp32"
    prec = S._dot_precision(dtype, allow_tf32=args.dtype == "tf32")
    width = S.GATHER_SLOTS
    print(f"triton {triton.__version__}, sm_{args.arch}, D={args.d}, {args.dtype}, k={args.k}")
    print(f"{'kernel':<22} {'config (bm,bn,bd,bdo,warps,stages)':<36} regs  spill st/ld  shared")
    rows = []
    for mined in (False, True):
        for cfg in tuning.gpu_candidates(args.d, dtype, mined, prec == "tf32"):
            single = S.holds_row_block(dtype, prec, cfg.bd, args.d)
            common = dict(BD=cfg.bd, SINGLE_D=single, PREC=prec, ACC=tl.float32)
            bn = cfg.bm if mined else cfg.bn
            loss = dict(common, INFONCE=False, MINE_P=mined, MINE_N=mined, BM=cfg.bm, BN=bn)
            rows.append(("fwd" + (" mined" if mined else ""), cfg, K.supcon_fwd_kernel, loss))
            if not mined:
                rows.append(("fwd infonce", cfg, K.supcon_fwd_kernel, dict(loss, INFONCE=True)))
            bwd = dict(loss, BDO=cfg.bdo, ONE_PASS=single and cfg.bdo >= args.d, REUSE_TILE=False)
            rows.append(("bwd" + (" mined" if mined else ""), cfg, K.supcon_bwd_kernel, bwd))
            if mined:
                rows.append(("bwd mined, tile reuse", cfg, K.supcon_bwd_kernel, dict(bwd, REUSE_TILE=True)))
                rows.append(("select", cfg, K.supcon_select_kernel, dict(
                    common, MINE_P=True, MINE_N=True, C=width, NB=S.SELECT_BINS,
                    V_PASSES=S.SELECT_VALUE_PASSES, MAX_PASSES=S.select_passes(), BLOCK=cfg.bm)))
    for name, cfg, kernel, consts in rows:
        try:
            r = ptxas_report(kernel, in_type, consts, cfg.num_warps, cfg.num_stages, args.arch)
            print(f"{name:<22} {str(tuple(cfg)):<36} {r[0]:>4}  {r[1]:>5}/{r[2]:<5}  {r[3]}")
        except Exception as exc:  # a configuration the compiler rejects is a finding too
            print(f"{name:<22} {str(tuple(cfg)):<36} failed: {type(exc).__name__}: {str(exc)[:80]}")
    sb = max(1, 4096 // width)
    r = ptxas_report(select_sort_kernel, in_type,
                     dict(C=width, LOG_C=width.bit_length() - 1, SB=sb, NEGATE=True), 8, 1, args.arch)
    print(f"{'select sort':<22} {f'C={width}, {sb} rows':<36} {r[0]:>4}  {r[1]:>5}/{r[2]:<5}  {r[3]}")


if __name__ == "__main__":
    main()
