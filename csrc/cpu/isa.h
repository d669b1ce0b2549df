// x86-64 SIMD paths of the CPU kernels. They are compiled with per-function target attributes
// (the rest of the build stays baseline x86-64) and taken only where the running CPU has them.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CT_HAVE_X86_SIMD 1
#endif

// A float loop compiled three times (AVX-512, AVX2, baseline), the widest the CPU runs chosen
// when the library loads. GCC inlines into a clone only helpers marked always_inline.
// target_clones needs x86-64 and ELF's ifunc (glibc): elsewhere (aarch64, e.g. a Grace Hopper
// host) the loops are compiled once, for the baseline of the target.
#if defined(CT_HAVE_X86_SIMD) && defined(__ELF__) && defined(__linux__)
#define CT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CT_CLONES
#endif

namespace ct_kernels::cpu {

struct CpuFeatures {
  bool avx = false, avx2 = false, avx512f = false;
};

// What the running CPU supports, read once per process (all false where this build has no x86 paths).
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#ifdef CT_HAVE_X86_SIMD
    __builtin_cpu_init();
    f.avx = __builtin_cpu_supports("avx") != 0;
    f.avx2 = __builtin_cpu_supports("avx2") != 0;
    f.avx512f = __builtin_cpu_supports("avx512f") != 0;
#endif
    return f;
  }();
  return features;
}

}  // namespace ct_kernels::cpu
