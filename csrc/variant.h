// Variant codes of the supcon kernels (no torch includes: the CPU row loops and CUDA code use it).
#pragma once

namespace ct_kernels {

enum Variant : int { kSupCon = 0, kInfoNCE = 1 };

}  // namespace ct_kernels
